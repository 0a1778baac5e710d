#!/usr/bin/env bash
# Installs a built bundle for the current user: ~/.local/opt/focalchat, ~/.local/bin/focalchat, the desktop
# entry and the icon. Run it from the bundle (dist/focalchat/install.sh) or from packaging/ after a build.
# Uninstall: packaging/install.sh --uninstall
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ -x "$HERE/focalchat" ]; then BUNDLE="$HERE"; else BUNDLE="$HERE/../dist/focalchat"; fi
PREFIX="${PREFIX:-$HOME/.local}"
DATA="${XDG_DATA_HOME:-$HOME/.local/share}"
if [ "${1:-}" = "--uninstall" ]; then
  rm -rf "$PREFIX/opt/focalchat" "$PREFIX/bin/focalchat" "$DATA/applications/focalchat.desktop" \
         "$DATA/icons/hicolor/scalable/apps/focalchat.svg"
  echo "FocalChat removed"; exit 0
fi
[ -x "$BUNDLE/focalchat" ] || { echo "no bundle in $BUNDLE: run packaging/build.sh first" >&2; exit 2; }
mkdir -p "$PREFIX/opt" "$PREFIX/bin" "$DATA/applications" "$DATA/icons/hicolor/scalable/apps"
rm -rf "$PREFIX/opt/focalchat"
cp -a "$BUNDLE" "$PREFIX/opt/focalchat"
ln -sf "$PREFIX/opt/focalchat/focalchat" "$PREFIX/bin/focalchat"
ICON_SRC="$BUNDLE/focalchat.svg"; [ -f "$ICON_SRC" ] || ICON_SRC="$HERE/focalchat.svg"
DESK_SRC="$BUNDLE/focalchat.desktop"; [ -f "$DESK_SRC" ] || DESK_SRC="$HERE/focalchat.desktop"
cp "$ICON_SRC" "$DATA/icons/hicolor/scalable/apps/focalchat.svg"
sed "s|^Exec=.*|Exec=$PREFIX/bin/focalchat gui|; s|^TryExec=.*|TryExec=$PREFIX/bin/focalchat|" \
  "$DESK_SRC" >"$DATA/applications/focalchat.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database "$DATA/applications" || true
echo "FocalChat installed: $PREFIX/bin/focalchat (menu entry: FocalChat)"
