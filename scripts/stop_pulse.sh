#!/usr/bin/env bash
# Stops a PulseAudio started by scripts/start_pulse.sh: kills exactly the PIDs that start recorded
# (each checked to still run a command line naming that runtime dir, so a recycled PID is never hit).
#
# Usage:  scripts/stop_pulse.sh [--keep-dir] [RUNTIME_DIR]
#   RUNTIME_DIR defaults to $AUDIO_RUNTIME_DIR, then $XDG_RUNTIME_DIR (as exported by start_pulse.sh).
#   A runtime dir that start_pulse.sh created itself (mktemp) is removed afterwards unless --keep-dir.
# Idempotent: stopping twice, or stopping a dir where nothing runs, is fine (exit 0).
set -uo pipefail

keep=0
if [ "${1:-}" = "--keep-dir" ]; then keep=1; shift; fi
RUN="${1:-${AUDIO_RUNTIME_DIR:-${XDG_RUNTIME_DIR:-}}}"
log() { echo "[stop_pulse] $*" >&2; }

if [ -z "$RUN" ] || [ ! -d "$RUN" ]; then
  log "no runtime dir (${RUN:-unset}): nothing to stop"
  exit 0
fi
RUN="$(cd "$RUN" && pwd -P)"
PIDS="$RUN/focalchat-pulse.pids"
if [ ! -f "$PIDS" ]; then
  log "no $PIDS: nothing started by start_pulse.sh here"
  exit 0
fi

ours() {   # ours PID -> 0 if PID still runs a command line that mentions this runtime dir
  [ -n "${1:-}" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$RUN"
}

# keep-alive streams first, the daemon last (tac: reverse start order)
mapfile -t entries < <(tac "$PIDS")
victims=()
for e in "${entries[@]}"; do
  pid="${e##* }"
  if ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null && victims+=("$pid")
  fi
done
# wait up to 3 s for a clean exit, then SIGKILL the stragglers
for _ in $(seq 60); do
  left=()
  for pid in "${victims[@]}"; do ours "$pid" && left+=("$pid"); done
  [ "${#left[@]}" -eq 0 ] && break
  sleep 0.05
done
for pid in "${left[@]}"; do
  if ours "$pid"; then log "pid $pid ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null; fi
done

rm -f "$PIDS" "$RUN/pulse-native"
rm -rf "$RUN/pulse"
if [ "$keep" = 0 ] && [ -f "$RUN/.created-by-start_pulse" ]; then
  rm -rf "$RUN"
  log "stopped ${#victims[@]} process(es); removed $RUN"
else
  log "stopped ${#victims[@]} process(es) in $RUN"
fi
exit 0
