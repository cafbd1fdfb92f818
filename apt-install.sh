# apt-install.sh: sourced by the *-setup.sh scripts beside it, never run on its own.
#
# apt_install [--no-recommends] PACKAGE...
#   Installs the Debian packages with apt-get (through sudo when not root). While apt-get runs, a
#   policy-rc.d that exits 101 keeps packages from starting their services (openssh-server would
#   start sshd; containers and CI have no init to start it with), and is removed afterwards if
#   this function put it there. Concurrent installs (tests set up in parallel) wait on dpkg's own
#   lock for up to five minutes instead of failing.
apt_install() {
  local recommends=()
  if [ "${1:-}" = "--no-recommends" ]; then
    recommends=(--no-install-recommends)
    shift
  fi
  [ $# -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local status=0
  $sudo apt-get -o DPkg::Lock::Timeout=300 update -qq || status=$?
  if [ "$status" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
      "${recommends[@]}" "$@" >/dev/null || status=$?
  fi
  [ "$made_policy" -eq 0 ] || $sudo rm -f /usr/sbin/policy-rc.d
  return "$status"
}
