#!/usr/bin/env bash
# Starts the built app (dist/focalchat/focalchat) headless, lets it load its model and quit; fails on a
# non-zero exit, a timeout, or a fatal marker in its output. Usage: packaging/smoke_test.sh [BUNDLE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${1:-dist/focalchat}"
APP="$BUNDLE/focalchat"
[ -x "$APP" ] || { echo "no bundle at $APP: run packaging/build.sh first" >&2; exit 2; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
LOG="$TMP/log"
rc=0
# own session + timeout: a hung app is killed with its whole process group
QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 XDG_CONFIG_HOME="$TMP/config" XDG_DATA_HOME="$TMP/data" \
  timeout --kill-after=10 180 setsid "$APP" gui --smoke-test 150 >"$LOG" 2>&1 || rc=$?
if grep -E "Traceback|Fatal Python error|ModuleNotFoundError|ImportError|Segmentation fault|could not load the Qt platform" "$LOG"; then
  echo "smoke test FAILED: fatal marker in the output (rc=$rc)" >&2; cat "$LOG" >&2; exit 1
fi
if [ "$rc" -ne 0 ]; then
  echo "smoke test FAILED: exit status $rc" >&2; cat "$LOG" >&2; exit 1
fi
[ -f "$TMP/config/focalchat/settings.json" ] || { echo "smoke test FAILED: no settings written" >&2; exit 1; }
# the command line works from the bundle too
"$APP" --help >/dev/null
echo "smoke test passed: $APP started headless, loaded its model and exited cleanly"
