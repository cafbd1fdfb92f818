#!/usr/bin/env bash
# systemd/install.sh [--prefix DIR] [--enable] [--unit-dir DIR]
#
# Installs keywardd and keyward (already built, from ${CARGO_TARGET_DIR:-target}/release; built
# with `cargo build --release --bins` only when missing) into PREFIX/bin (default ~/.local), and
# the user units keywardd.socket and keywardd.service into --unit-dir (default
# ${XDG_CONFIG_HOME:-~/.config}/systemd/user), with ExecStart pointing at the installed
# keywardd. Prints the `systemctl --user enable --now keywardd.socket` step; runs it only with
# --enable. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
prefix="$HOME/.local"
unit_dir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
enable=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
    --unit-dir) unit_dir="${2:?--unit-dir needs a directory}"; shift 2 ;;
    --enable) enable=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
release="$target/release"
if [ ! -x "$release/keywardd" ] || [ ! -x "$release/keyward" ]; then
  echo "install.sh: building the release binaries in $target" >&2
  (cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --release --bins)
fi
bindir="$prefix/bin"
mkdir -p "$bindir" "$unit_dir"
install -m 0755 "$release/keywardd" "$bindir/keywardd"
install -m 0755 "$release/keyward" "$bindir/keyward"
install -m 0644 "$here/keywardd.socket" "$unit_dir/keywardd.socket"
sed "s|@BINDIR@|$bindir|g" "$here/keywardd.service" > "$unit_dir/keywardd.service.tmp"
chmod 0644 "$unit_dir/keywardd.service.tmp"
mv "$unit_dir/keywardd.service.tmp" "$unit_dir/keywardd.service"
echo "installed $bindir/keywardd, $bindir/keyward and the units in $unit_dir"
step="systemctl --user daemon-reload && systemctl --user enable --now keywardd.socket"
if [ "$enable" -eq 1 ]; then
  systemctl --user daemon-reload
  systemctl --user enable --now keywardd.socket
else
  echo "next: $step"
fi
echo 'then: export SSH_AUTH_SOCK="$XDG_RUNTIME_DIR/keyward/ssh.sock"'
