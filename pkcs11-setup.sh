#!/usr/bin/env bash
# pkcs11-setup.sh --install-only
#
# Installs what the PKCS#11 module's tests (tests/tests/pkcs11_module.rs) drive, with apt-get,
# when missing: p11tool (gnutls-bin), certutil/modutil (libnss3-tools), OpenSSL's PKCS#11 engine
# (libengine-pkcs11-openssl), ssh/ssh-keygen/sshd (openssh-client, openssh-server), p11-kit's
# server and client module (p11-kit, p11-kit-modules, for the benchmark), and what
# softhsm-setup.sh installs (SoftHSM2, pkcs11-tool). Idempotent. sshd is never started by the
# package: a policy-rc.d refusing service starts is in place while apt-get runs.
set -euo pipefail
case "${1:-}" in
  --install-only|"") ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "pkcs11-setup.sh: unknown argument: $1" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"
./softhsm-setup.sh --install-only

# shellcheck source=apt-install.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
need=()
command -v p11tool >/dev/null 2>&1 || need+=(gnutls-bin)
command -v certutil >/dev/null 2>&1 && command -v modutil >/dev/null 2>&1 || need+=(libnss3-tools)
ls /usr/lib/*/engines-3/pkcs11.so >/dev/null 2>&1 || need+=(libengine-pkcs11-openssl)
command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v p11-kit >/dev/null 2>&1 || need+=(p11-kit)
ls /usr/lib/*/pkcs11/p11-kit-client.so >/dev/null 2>&1 || need+=(p11-kit-modules)
command -v openssl >/dev/null 2>&1 || need+=(openssl)

if [ ${#need[@]} -gt 0 ]; then
  echo "pkcs11-setup: installing ${need[*]}" >&2
  apt_install --no-recommends "${need[@]}"
fi
