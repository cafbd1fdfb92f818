#!/usr/bin/env bash
# softhsm-setup.sh [--dir DIR] [--install-only] [--add-token LABEL]...
#
# Sets up a private SoftHSM2 development token for Keyward:
#   - installs softhsm2 and opensc with apt-get when they are missing, and what building and
#     testing Keyward needs (gcc, pkg-config, libpcsclite-dev, openssl); --install-only stops there;
#   - creates DIR/softhsm2.conf and an initialised token labelled `keyward` under DIR/tokens;
#   - writes DIR/keyward.toml, an agent config selecting module and token by PKCS#11 URI and
#     keeping the keystore under DIR, so one directory holds a whole dev setup;
#   - prints the lines to export.
# DIR defaults to ${XDG_DATA_HOME:-~/.local/share}/keyward/softhsm.
# PINs: KEYWARD_DEV_PIN / KEYWARD_DEV_SO_PIN, else the DEV-ONLY defaults 123456 / 12345678.
# --add-token LABEL (repeatable): also initialise a token LABEL in the same SoftHSM config, for
#   a second root (a backup token) of the same agent: SoftHSM reads SOFTHSM2_CONF once per
#   process, so every token one agent uses must live in one config. Its root URI is printed.
# Idempotent: a second run keeps the tokens and their keys.
set -euo pipefail

dir="${XDG_DATA_HOME:-$HOME/.local/share}/keyward/softhsm"
install_only=0
add_tokens=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="${2:?--dir needs a directory}"; shift 2 ;;
    --dir=*) dir="${1#--dir=}"; shift ;;
    --install-only) install_only=1; shift ;;
    --add-token) add_tokens+=("${2:?--add-token needs a label}"); shift 2 ;;
    --add-token=*) add_tokens+=("${1#--add-token=}"); shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "softhsm-setup.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

say() { echo "softhsm-setup: $*" >&2; }

find_module() {
  for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    [ -e "$m" ] && { echo "$m"; return 0; }
  done
  return 1
}

# shellcheck source=apt-install.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
need=()
command -v softhsm2-util >/dev/null 2>&1 && find_module >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
# Building keywardd: a C compiler (bundled SQLite, aws-lc), and libpcsclite through pkg-config
# for the YubiKey backend (pcsc-sys). The tests also use the openssl CLI as a peer.
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists libpcsclite 2>/dev/null || need+=(libpcsclite-dev)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The recovery crate is checked by independent implementations for Debian's /usr/bin/python3:
# its BIP39 words by python3-mnemonic, its derivation vectors by python3-cryptography
# (recovery/tests/python_check.rs fails, naming this script, without them).
/usr/bin/python3 -c 'import mnemonic' >/dev/null 2>&1 || need+=(python3-mnemonic)
/usr/bin/python3 -c 'import cryptography' >/dev/null 2>&1 || need+=(python3-cryptography)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} with apt-get"
  apt_install "${need[@]}"
fi
module=$(find_module) || { say "libsofthsm2.so not found after install"; exit 1; }
[ "$install_only" -eq 1 ] && { say "softhsm2, opensc and the build prerequisites are installed (module $module)"; exit 0; }

pin="${KEYWARD_DEV_PIN:-123456}"
so_pin="${KEYWARD_DEV_SO_PIN:-12345678}"
[ -n "${KEYWARD_DEV_PIN:-}" ] || say "using the DEV-ONLY default user PIN 123456 (set KEYWARD_DEV_PIN to choose)"
[ -n "${KEYWARD_DEV_SO_PIN:-}" ] || say "using the DEV-ONLY default SO PIN 12345678 (set KEYWARD_DEV_SO_PIN to choose)"

mkdir -p "$dir/tokens"
chmod 700 "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
cat > "$conf" <<CONF
# SoftHSM2 config for a Keyward dev token (written by softhsm-setup.sh)
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$conf"

# ensure_token LABEL: initialise a token LABEL unless the config has one.
ensure_token() {
  local label="$1" labels
  labels=$(softhsm2-util --show-slots 2>/dev/null | sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' | sed 's/[[:space:]]*$//')
  if printf '%s\n' "$labels" | grep -Fxq -- "$label"; then
    say "token \`$label\` exists in $dir/tokens: keeping it"
  else
    softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$pin" >/dev/null
    say "initialised token \`$label\` in $dir/tokens"
  fi
}
ensure_token keyward
for label in "${add_tokens[@]}"; do
  ensure_token "$label"
done

cat > "$dir/keyward.toml" <<TOML
# Keyward agent config for the SoftHSM dev token (written by softhsm-setup.sh)
keystore = "keystore.db"

[root]
kind = "pkcs11"
uri = "pkcs11:token=keyward;object=keyward-root?module-path=$module"

[root.env]
SOFTHSM2_CONF = "softhsm2.conf"
TOML

cat <<OUT
# Keyward dev token ready in $dir
export SOFTHSM2_CONF=$conf
export KEYWARD_CONFIG=$dir/keyward.toml
# start the agent:  keywardd --config $dir/keyward.toml
OUT
for label in "${add_tokens[@]}"; do
  echo "# token \`$label\` (same SOFTHSM2_CONF): uri = \"pkcs11:token=$label;object=keyward-root?module-path=$module\""
done
