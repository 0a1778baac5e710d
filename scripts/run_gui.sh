#!/usr/bin/env bash
# `make run`: opens the FocalChat window. Without a display (a server, CI) it runs under Xvfb; without a
# reachable PulseAudio it starts the private virtual one (scripts/start_pulse.sh: vmic_a/spk_a...) for the
# app's lifetime, so audio works everywhere. Extra arguments go to `focalchat gui`.
set -euo pipefail
cd "$(dirname "$0")/.."
started_pulse=""
cleanup() { if [ -n "$started_pulse" ]; then bash scripts/stop_pulse.sh "$started_pulse" >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
trap "exit 130" INT TERM
if command -v pactl >/dev/null 2>&1 && ! pactl info >/dev/null 2>&1; then
  echo "[run] no PulseAudio server reachable: starting private virtual devices" >&2
  exports="$(bash scripts/start_pulse.sh)"
  eval "$exports"
  started_pulse="$AUDIO_RUNTIME_DIR"
fi
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  echo "[run] no display: running under Xvfb (screen 1280x820)" >&2
  xvfb-run -a -s "-screen 0 1280x820x24" .venv/bin/focalchat gui "$@" &
  wait $!
else
  .venv/bin/focalchat gui "$@" &
  wait $!
fi
