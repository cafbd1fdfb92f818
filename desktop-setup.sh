#!/usr/bin/env bash
# desktop-setup.sh --install-only
#
# Installs what the desktop tests (tests/tests/desktop.rs) drive, with apt-get, when missing:
# systemd-analyze and systemd-socket-activate (systemd), udevadm (udev), pinentry-tty and
# pinentry-curses (the real Assuan pinentry programs), tmux (a terminal for them to draw on).
# Idempotent. Nothing is started: a policy-rc.d refusing service starts is in place while
# apt-get runs. The tests never skip when a program is missing: they fail and name this script.
set -euo pipefail
case "${1:-}" in
  --install-only|"") ;;
  -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
  *) echo "desktop-setup.sh: unknown argument: $1" >&2; exit 2 ;;
esac

# shellcheck source=apt-install.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
need=()
command -v systemd-analyze >/dev/null 2>&1 && command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v udevadm >/dev/null 2>&1 || need+=(udev)
command -v pinentry-tty >/dev/null 2>&1 || need+=(pinentry-tty)
command -v pinentry-curses >/dev/null 2>&1 || need+=(pinentry-curses)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# The keystore-mode test traces the agent's open() with strace (tests/tests/e2e/tamper.rs).
command -v strace >/dev/null 2>&1 || need+=(strace)

if [ ${#need[@]} -gt 0 ]; then
  echo "desktop-setup: installing ${need[*]}" >&2
  apt_install --no-recommends "${need[@]}"
fi
