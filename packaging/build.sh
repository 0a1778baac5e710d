#!/usr/bin/env bash
# Builds the desktop bundle: dist/focalchat/ (PyInstaller, one folder) and dist/focalchat-linux-x86_64.tar.gz.
# Builds in its own virtualenv (build/bundle-venv: the project with its `app` and `packaging` extras only, not
# editable, none of the dev/eval tools), so the bundle holds what the app needs and nothing else.
# Takes a few minutes and ~1.5 GB of disk (torch is most of it). Check the result with packaging/smoke_test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=build/bundle-venv
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q ".[app,packaging]"
rm -rf build/pyinstaller dist/focalchat
"$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
  --workpath build/pyinstaller --distpath dist packaging/focalchat.spec
cp packaging/focalchat.desktop packaging/focalchat.svg packaging/install.sh dist/focalchat/
tar -C dist -czf dist/focalchat-linux-"$(uname -m)".tar.gz focalchat
du -sh dist/focalchat dist/focalchat-linux-"$(uname -m)".tar.gz
echo "built dist/focalchat/focalchat; install with dist/focalchat/install.sh"
