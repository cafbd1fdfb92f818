#!/usr/bin/env bash
# ssh-setup.sh [--install-only]
#
# Installs what the SSH-agent tests need: OpenSSH's client tools (ssh, ssh-add, ssh-keygen,
# ssh-agent) and server (sshd), from Debian's packages, with apt-get, only when missing.
# Idempotent. The tests start their own sshd (as the test's user, on 127.0.0.1, in a temp
# directory); the package's own service is never started: a policy-rc.d that exits 101 keeps
# apt from starting sshd while the package installs (removed again afterwards).
# --install-only is accepted for symmetry with softhsm-setup.sh (installing is all this does).
set -euo pipefail

while [ $# -gt 0 ]; do
  case "$1" in
    --install-only) shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "ssh-setup.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

say() { echo "ssh-setup: $*" >&2; }

# shellcheck source=apt-install.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
need=()
for tool in ssh ssh-add ssh-keygen ssh-agent; do
  command -v "$tool" >/dev/null 2>&1 || { need+=(openssh-client); break; }
done
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} with apt-get"
  apt_install "${need[@]}"
fi
[ -x /usr/sbin/sshd ] || { say "/usr/sbin/sshd not found after install"; exit 1; }
say "OpenSSH $(ssh -V 2>&1) client and server are installed"
