#!/usr/bin/env bash
# Runs the test suite with the project's venv (set up by scripts/setup.sh).
# Extra arguments go to pytest, e.g. scripts/test.sh -k conformance
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
