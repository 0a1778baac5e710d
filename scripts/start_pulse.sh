#!/usr/bin/env bash
# Private, hardware-free PulseAudio for tests, CI and two-instance demos on one machine
# (Debian: pulseaudio pulseaudio-utils libasound2-plugins libportaudio2). See docs: platform-notes §2.4.
#
# For every peer P (default: "a b"):
#   spk_P        null sink = peer P's "speakers"      (record spk_P.monitor to hear what the app played)
#   micfeed_P    null sink that tests play speech into  (paplay --device=micfeed_P file.wav)
#   vmic_P       virtual microphone = remap of micfeed_P.monitor
# Peer "a" is the default sink/source. An app instance picks its peer with PULSE_SOURCE=vmic_P PULSE_SINK=spk_P.
# Sinks are mono float32; mic side at MIC_RATE (16000, the codec's rate: the capture path is bit-exact),
# speaker side at SPK_RATE (24000, the decoder's rate: bit-exact when the app plays at 24 kHz).
#
# Usage:   eval "$(scripts/start_pulse.sh)"     ... scripts/stop_pulse.sh
# Env:     AUDIO_RUNTIME_DIR  runtime dir (socket, pids, log, private HOME); default: a new mktemp dir.
#                             Unix socket paths are limited to 107 bytes: keep it short.
#          AUDIO_PEERS        peers to create (default "a b");  MIC_RATE / SPK_RATE as above
#          PULSE_WARMUP_S     max seconds spent warming up the capture path (default 3)
# Idempotent: with the same AUDIO_RUNTIME_DIR and a healthy server it only prints the exports again;
# a half-dead earlier start there is stopped first. Stdout carries only the export lines (and comments);
# progress and errors go to stderr. Runs as root (the daemon warns, harmlessly) and as a normal user.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS="${AUDIO_PEERS:-a b}"
MIC_RATE="${MIC_RATE:-16000}"
SPK_RATE="${SPK_RATE:-24000}"
WARMUP_S="${PULSE_WARMUP_S:-3}"

log() { echo "[start_pulse] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in pulseaudio pactl pacat parecord; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install pulseaudio pulseaudio-utils)"
done

created=0
if [ -n "${AUDIO_RUNTIME_DIR:-}" ]; then
  RUN="$AUDIO_RUNTIME_DIR"
  mkdir -p "$RUN"
else
  RUN="$(mktemp -d "${TMPDIR:-/tmp}/focalchat-pulse.XXXXXX")"
  created=1
fi
RUN="$(cd "$RUN" && pwd -P)"
chmod 700 "$RUN"            # libpulse insists on a private runtime dir owned by the user
SOCK="$RUN/pulse-native"
SERVER="unix:$SOCK"
PIDS="$RUN/focalchat-pulse.pids"
[ "${#SOCK}" -lt 108 ] || die "socket path too long (${#SOCK} > 107 bytes): $SOCK; use a shorter AUDIO_RUNTIME_DIR"

print_exports() {
  # PULSE_COOKIE: without it every client (also the ALSA plugin inside the app) creates ~/.config/pulse/cookie
  echo "export PULSE_SERVER=$SERVER XDG_RUNTIME_DIR=$RUN AUDIO_RUNTIME_DIR=$RUN PULSE_COOKIE=$RUN/home/.config/pulse/cookie"
  for p in $PEERS; do
    echo "# peer $p: PULSE_SOURCE=vmic_$p PULSE_SINK=spk_$p  (feed: paplay --device=micfeed_$p x.wav; hear: parecord --device=spk_$p.monitor)"
  done
}

# client env for our own pactl/pacat calls: never touch the caller's HOME or default server
export PULSE_SERVER="$SERVER" XDG_RUNTIME_DIR="$RUN" HOME="$RUN/home"
unset PULSE_SINK PULSE_SOURCE
mkdir -p "$HOME"

alive() {   # alive PID -> 0 if PID runs a command line that mentions this runtime dir (guards against PID reuse)
  [ -n "${1:-}" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$RUN"
}

# --- idempotency --------------------------------------------------------------------------------------
if [ -f "$PIDS" ]; then
  healthy=1
  while read -r _name pid; do alive "$pid" || healthy=0; done <"$PIDS"
  if [ "$healthy" = 1 ] && pactl info >/dev/null 2>&1; then
    log "already running in $RUN"
    print_exports
    exit 0
  fi
  log "stale or partial earlier start in $RUN: stopping it first"
  "$HERE/stop_pulse.sh" --keep-dir "$RUN" >&2 || true
fi
[ -S "$SOCK" ] && ! pactl info >/dev/null 2>&1 && rm -f "$SOCK"
if pactl info >/dev/null 2>&1; then
  die "a PulseAudio server not started by this script already listens on $SOCK"
fi

cleanup_on_error() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    log "start failed (rc=$rc); log: $RUN/pulse.log"
    [ -f "$RUN/pulse.log" ] && tail -n 20 "$RUN/pulse.log" >&2 || true
    if [ -f "$PIDS" ]; then "$HERE/stop_pulse.sh" --keep-dir "$RUN" >&2 || true; fi
    if [ "$created" = 1 ]; then rm -rf "$RUN"; fi
  fi
}
trap cleanup_on_error EXIT

t_start=$(date +%s%N)
: >"$PIDS"
[ "$created" = 1 ] && touch "$RUN/.created-by-start_pulse"

# --- daemon -------------------------------------------------------------------------------------------
# Not daemonized: started in its own session so that $! is its PID (no pid-file race) and a Ctrl-C in
# the caller's terminal does not reach it. -n: no default.pa, only the modules below (no ALSA/udev/D-Bus).
args=(
  -n --daemonize=no --system=no --fail=yes --exit-idle-time=-1 --use-pid-file=no
  --realtime=no --high-priority=no --no-cpu-limit=yes --disallow-exit=no
  --resample-method=soxr-hq --log-level=notice --log-target="file:$RUN/pulse.log"
  -L "module-native-protocol-unix auth-anonymous=1 socket=$SOCK"
)
for p in $PEERS; do
  args+=(
    -L "module-null-sink sink_name=spk_$p rate=$SPK_RATE channels=1 format=float32le sink_properties=device.description=Speaker_$p"
    -L "module-null-sink sink_name=micfeed_$p rate=$MIC_RATE channels=1 format=float32le sink_properties=device.description=MicFeed_$p"
    -L "module-remap-source source_name=vmic_$p master=micfeed_$p.monitor source_properties=device.description=VirtualMic_$p"
  )
done
setsid pulseaudio "${args[@]}" </dev/null >>"$RUN/pulse.log" 2>&1 &
echo "pulseaudio $!" >>"$PIDS"
daemon_pid=$!

ok=0
for _ in $(seq 100); do
  if pactl info >/dev/null 2>&1; then ok=1; break; fi
  kill -0 "$daemon_pid" 2>/dev/null || die "pulseaudio exited during start-up"
  sleep 0.05
done
[ "$ok" = 1 ] || die "pulseaudio did not answer on $SOCK within 5 s"

first=${PEERS%% *}
pactl set-default-sink "spk_$first" && pactl set-default-source "vmic_$first"

# --- keep-alive ---------------------------------------------------------------------------------------
# An idle null sink's monitor delivers (almost) no samples, which starves the virtual mic, and an idle
# sink waking up causes a long first callback gap: keep every sink busy with a silent stream.
# (pacat mixes zeros in: adding 0.0 in float32 leaves everything else bit-exact.)
keepalive() {   # keepalive SINK RATE
  setsid pacat --playback --server="$SERVER" --device="$1" --raw --format=float32le --rate="$2" --channels=1 \
    --latency-msec=20 --client-name="focalchat-keepalive-$1" </dev/zero >/dev/null 2>&1 &
  echo "keepalive_$1 $!" >>"$PIDS"
}
for p in $PEERS; do
  keepalive "micfeed_$p" "$MIC_RATE"
  keepalive "spk_$p" "$SPK_RATE"
done

# --- warm-up ------------------------------------------------------------------------------------------
# The first capture streams after start stall for ~1-2 s. Take that here: read from every virtual mic in
# parallel until 0.25 s of audio has arrived (bounded by PULSE_WARMUP_S), instead of a fixed sleep.
need=$((MIC_RATE / 4 * 4))   # 0.25 s of float32 mono, in bytes
wpids=()
for p in $PEERS; do
  ( timeout "$WARMUP_S" parecord --server="$SERVER" --device="vmic_$p" --raw --format=float32le \
      --rate="$MIC_RATE" --channels=1 --latency-msec=20 2>/dev/null | head -c "$need" >/dev/null ) &
  wpids+=($!)
done
for w in "${wpids[@]}"; do wait "$w" || true; done

# everything we started must still be alive
while read -r name pid; do alive "$pid" || die "$name (pid $pid) died during start-up"; done <"$PIDS"
for p in $PEERS; do
  pactl list short sources | grep -q "vmic_$p" || die "source vmic_$p missing"
done

trap - EXIT
log "PulseAudio up in $(( ($(date +%s%N) - t_start) / 1000000 )) ms: $RUN (peers: $PEERS; stop: scripts/stop_pulse.sh $RUN)"
print_exports
