#!/usr/bin/env bash
# vcard-setup.sh: run a software PIV card ("virtual YubiKey") behind the real PC/SC
# stack (pcscd + vsmartcard-vpcd) for Keyward's end-to-end tests.
#
#   vcard-setup.sh [--dir DIR] [--serial N] [--fresh] install|start|stop|status|check|card-start|card-stop
#
#   install     only install the missing Debian packages (libclang-dev for building
#               tools/piv-card, pcscd, vpcd, ...): CI runs it before it lints the card.
#   start       install missing Debian packages, build tools/piv-card, start pcscd
#               (foreground process, no systemd) with a vpcd reader named "Yubico ...",
#               start the card, wait until the reader shows it. Idempotent.
#   stop        stop the card and pcscd started by `start` (pid files in DIR). Idempotent.
#   status      show what is running and the PC/SC readers.
#   check       smoke test through the real stack: yubikey crate (examples/smoke.rs,
#               including card removal and reinsertion) and pkcs11-tool with ykcs11.
#               Overwrites the keys in slots 9a, 9c and 9d of the virtual card.
#   card-stop   stop only the card process ("remove" the card).
#   card-start  start only the card process ("insert" it again; same state dir).
#
#   --dir DIR   runtime directory [default: ${XDG_RUNTIME_DIR:-/tmp}/keyward-vcard]
#   --serial N  serial number the card reports [default: 5437251]
#   --fresh     with start/card-start: wipe the card's state first (blank card)
#
# Only one pcscd can run on a machine (its socket is fixed), so only one such
# setup, and one test suite using it, at a time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CARD_DIR="$REPO/tools/piv-card"
CARD_TARGET="${PIV_CARD_TARGET_DIR:-$CARD_DIR/target}"
CARD_BIN="$CARD_TARGET/release/piv-card"
DIR="${XDG_RUNTIME_DIR:-/tmp}/keyward-vcard"
SERIAL=5437251
FRESH=0
VPCD_PORT=35963
READER_NAME="Yubico YubiKey (Keyward virtual PIV)"
PACKAGES=(pcscd vsmartcard-vpcd libpcsclite-dev pkg-config libclang-dev opensc ykcs11 pcsc-tools)
PCSCD_SOCKET=/run/pcscd/pcscd.comm
DEFAULT_MGM_KEY=010203040506070801020304050607080102030405060708
SELF="$REPO/vcard-setup.sh"

say() { printf 'vcard: %s\n' "$*"; }
die() { printf 'vcard: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

CMD=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) [[ $# -ge 2 ]] || die "--dir needs a value"; DIR="$2"; shift 2 ;;
        --dir=*) DIR="${1#--dir=}"; shift ;;
        --serial) [[ $# -ge 2 ]] || die "--serial needs a value"; SERIAL="$2"; shift 2 ;;
        --serial=*) SERIAL="${1#--serial=}"; shift ;;
        --fresh) FRESH=1; shift ;;
        -h|--help|help) usage; exit 0 ;;
        install|start|stop|status|check|card-start|card-stop)
            [[ -z "$CMD" ]] || die "only one command, got '$CMD' and '$1'"; CMD="$1"; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n "$CMD" ]] || { usage >&2; die "no command given"; }
[[ "$SERIAL" =~ ^[0-9]+$ ]] || die "--serial must be a number, got '$SERIAL'"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

PCSCD_PID="$DIR/pcscd.pid"
CARD_PID="$DIR/card.pid"
STATE_DIR="$DIR/card-state"
CONF_DIR="$DIR/reader.conf.d"

ykcs11_module() {
    local m
    for m in /usr/lib/"$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || uname -m)-linux-gnu"/libykcs11.so \
             /usr/lib/*-linux-gnu/libykcs11.so /usr/lib/*-linux-gnu/libykcs11.so.2 /usr/lib/libykcs11.so; do
        [[ -e "$m" ]] && { echo "$m"; return 0; }
    done
    return 1
}

# pid from a pid file if that process is alive (and looks like the expected program).
live_pid() {
    local file="$1" name="$2" pid
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q "$name" "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

stop_pid_file() {
    local file="$1" name="$2" what="$3" pid i
    if pid="$(live_pid "$file" "$name")"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$what (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
        say "stopped $what (pid $pid)"
    else
        say "$what not running"
    fi
    rm -f "$file"
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then return 0; fi
    say "installing Debian packages: ${missing[*]}"
    [[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$DIR/apt.log" 2>&1 || { tail -20 "$DIR/apt.log" >&2; die "apt-get update failed (log: $DIR/apt.log)"; }
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$DIR/apt.log" 2>&1 \
        || { tail -20 "$DIR/apt.log" >&2; die "apt-get install failed (log: $DIR/apt.log)"; }
}

build_card() {
    command -v cargo >/dev/null || die "cargo not found"
    say "building tools/piv-card (release, target dir $CARD_TARGET)"
    local t0=$SECONDS
    cargo build --release --locked --quiet --manifest-path "$CARD_DIR/Cargo.toml" --target-dir "$CARD_TARGET" \
        || die "building tools/piv-card failed"
    say "piv-card built in $((SECONDS - t0)) s"
}

write_reader_conf() {
    local driver=/usr/lib/pcsc/drivers/serial/libifdvpcd.so
    [[ -e "$driver" ]] || driver="$(dpkg -L vsmartcard-vpcd 2>/dev/null | grep -m1 'libifdvpcd\.so$' || true)"
    [[ -n "$driver" && -e "$driver" ]] || die "vpcd driver libifdvpcd.so not found (is vsmartcard-vpcd installed?)"
    mkdir -p "$CONF_DIR"
    # Port in DEVICENAME/CHANNELID; vpcd also opens a second slot on port+1.
    # ykcs11 only looks at readers whose name contains "Yubico".
    cat >"$CONF_DIR/vpcd" <<EOF
# written by vcard-setup.sh
FRIENDLYNAME "$READER_NAME"
DEVICENAME   /dev/null:$(printf '0x%X' "$VPCD_PORT")
LIBPATH      $driver
CHANNELID    $(printf '0x%X' "$VPCD_PORT")
EOF
}

foreign_pcscd() {
    local ours="" p
    ours="$(live_pid "$PCSCD_PID" pcscd || true)"
    for p in $(pgrep -x pcscd || true); do
        [[ "$p" == "$ours" ]] || { echo "$p"; return 0; }
    done
    return 1
}

start_pcscd() {
    local pid
    if pid="$(live_pid "$PCSCD_PID" pcscd)"; then
        say "pcscd already running (pid $pid)"
        return 0
    fi
    if command -v systemctl >/dev/null && systemctl is-active --quiet pcscd.socket pcscd.service 2>/dev/null; then
        say "stopping systemd's pcscd.socket/pcscd.service"
        systemctl stop pcscd.socket pcscd.service || die "could not stop systemd pcscd"
    fi
    if pid="$(foreign_pcscd)"; then
        die "another pcscd (pid $pid, not started by this script) is running; stop it first (kill $pid), only one pcscd can run"
    fi
    write_reader_conf
    rm -f "$PCSCD_SOCKET" 2>/dev/null || true
    # pcscd -f: stay in the foreground, log to stdout; -c: our reader.conf.d directory.
    setsid pcscd --foreground --config "$CONF_DIR" >"$DIR/pcscd.log" 2>&1 </dev/null &
    echo $! >"$PCSCD_PID"
    local i
    for i in $(seq 1 100); do
        [[ -S "$PCSCD_SOCKET" ]] && break
        kill -0 "$(cat "$PCSCD_PID")" 2>/dev/null || { tail -20 "$DIR/pcscd.log" >&2; die "pcscd exited (log: $DIR/pcscd.log)"; }
        sleep 0.1
    done
    [[ -S "$PCSCD_SOCKET" ]] || die "pcscd did not create $PCSCD_SOCKET within 10 s (log: $DIR/pcscd.log)"
    say "started pcscd (pid $(cat "$PCSCD_PID"), log $DIR/pcscd.log)"
}

# Prints the line of `opensc-tool -l` for our reader ("N  Yes/No  name ...").
reader_line() {
    opensc-tool --list-readers 2>/dev/null | grep -F "$READER_NAME" | head -1 || true
}

card_present() {
    reader_line | awk '{print $2}' | grep -qx Yes
}

start_card() {
    local pid
    [[ -x "$CARD_BIN" ]] || die "$CARD_BIN missing; run '$SELF start' (it builds the card)"
    if [[ "$FRESH" -eq 1 ]] && live_pid "$CARD_PID" piv-card >/dev/null; then
        say "--fresh: stopping the running card first"
        stop_pid_file "$CARD_PID" piv-card card
    fi
    if pid="$(live_pid "$CARD_PID" piv-card)"; then
        local running_serial
        running_serial="$(tr '\0' '\n' <"/proc/$pid/cmdline" | grep -A1 -x -- --serial | tail -1 || true)"
        say "card already running (pid $pid, serial ${running_serial:-?})"
        if [[ -n "$running_serial" && "$running_serial" != "$SERIAL" ]]; then
            say "warning: it reports serial $running_serial, not $SERIAL; 'card-stop' then 'card-start --serial $SERIAL' to change it"
        fi
    else
        if [[ "$FRESH" -eq 1 ]]; then
            say "--fresh: wiping card state $STATE_DIR"
            rm -rf "$STATE_DIR"
        fi
        setsid "$CARD_BIN" --vpcd-port "$VPCD_PORT" --state "$STATE_DIR" --serial "$SERIAL" \
            >>"$DIR/card.log" 2>&1 </dev/null &
        echo $! >"$CARD_PID"
        say "started card (pid $(cat "$CARD_PID"), serial $SERIAL, state $STATE_DIR, log $DIR/card.log)"
    fi
    local i
    for i in $(seq 1 100); do
        card_present && { say "card present in reader: $(reader_line | sed 's/^ *[0-9]* *Yes *//')"; return 0; }
        kill -0 "$(cat "$CARD_PID")" 2>/dev/null || { tail -20 "$DIR/card.log" >&2; die "card process exited (log: $DIR/card.log)"; }
        sleep 0.1
    done
    tail -10 "$DIR/card.log" >&2
    die "reader did not show the card within 10 s (logs: $DIR/card.log, $DIR/pcscd.log)"
}

cmd_start() {
    install_packages
    build_card
    start_pcscd
    start_card
    say "ready. PC/SC reader \"$READER_NAME 00 00\", vpcd port $VPCD_PORT, serial $SERIAL"
    say "ykcs11 module: $(ykcs11_module || echo 'not found')"
    say "stop with: $SELF --dir $DIR stop"
}

cmd_status() {
    local pid rc=0
    if pid="$(live_pid "$PCSCD_PID" pcscd)"; then say "pcscd running (pid $pid)"; else say "pcscd not running"; rc=1; fi
    if pid="$(live_pid "$CARD_PID" piv-card)"; then say "card running (pid $pid)"; else say "card not running"; rc=1; fi
    if command -v opensc-tool >/dev/null && [[ -S "$PCSCD_SOCKET" ]]; then
        opensc-tool --list-readers 2>&1 | sed 's/^/  /' || true
    fi
    return $rc
}

cmd_check() {
    live_pid "$PCSCD_PID" pcscd >/dev/null || die "not started; run '$SELF --dir $DIR start' first"
    local module
    module="$(ykcs11_module)" || die "ykcs11 module not found (apt-get install ykcs11)"
    say "smoke test: yubikey crate through pcscd (tools/piv-card/examples/smoke.rs)"
    cargo run --release --locked --quiet --manifest-path "$CARD_DIR/Cargo.toml" --target-dir "$CARD_TARGET" \
        --example smoke -- --serial "$SERIAL" \
        --stop-cmd "$SELF --dir $DIR card-stop" --start-cmd "$SELF --dir $DIR --serial $SERIAL card-start" \
        || die "yubikey smoke test failed"
    say "PKCS#11: pkcs11-tool --module $module -L"
    pkcs11-tool --module "$module" -L || die "pkcs11-tool -L failed"
    pkcs11-tool --module "$module" -L | grep -q "token label" || die "ykcs11 shows no token"
    say "PKCS#11: pkcs11-tool --module $module -O"
    pkcs11-tool --module "$module" -O || die "pkcs11-tool -O failed"
    # ykcs11 only shows keys that have a certificate (no GET METADATA below 5.3);
    # its C_GenerateKeyPair stores one, so generate through ykcs11 (slot 9c = id 02).
    say "PKCS#11: generate P-256 in 9c (id 02) as SO (default management key), sign as user, verify"
    local tmp
    tmp="$(mktemp -d)"
    printf 'keyward vcard check' >"$tmp/msg"
    pkcs11-tool --module "$module" --login --login-type so --so-pin "$DEFAULT_MGM_KEY" \
        --keypairgen --key-type EC:prime256v1 --id 02 >"$tmp/keygen.log" 2>&1 \
        || { cat "$tmp/keygen.log" >&2; die "ykcs11 key generation failed"; }
    pkcs11-tool --module "$module" --login --pin 123456 --sign --mechanism ECDSA-SHA256 --id 02 \
        -i "$tmp/msg" -o "$tmp/sig" >"$tmp/sign.log" 2>&1 \
        || { cat "$tmp/sign.log" >&2; die "ykcs11 signing failed"; }
    pkcs11-tool --module "$module" --verify --mechanism ECDSA-SHA256 --id 02 \
        -i "$tmp/msg" --signature-file "$tmp/sig" 2>&1 | grep -q "Signature is valid" \
        || die "ykcs11 signature did not verify"
    rm -rf "$tmp"
    say "PKCS#11: key generation, signature and verification OK"
    say "check passed"
}

case "$CMD" in
    install) install_packages; say "Debian packages present: ${PACKAGES[*]}" ;;
    start) cmd_start ;;
    stop)
        stop_pid_file "$CARD_PID" piv-card card
        stop_pid_file "$PCSCD_PID" pcscd pcscd
        ;;
    status) cmd_status ;;
    check) cmd_check ;;
    card-start)
        live_pid "$PCSCD_PID" pcscd >/dev/null || die "pcscd not running; use '$SELF --dir $DIR start'"
        start_card ;;
    card-stop) stop_pid_file "$CARD_PID" piv-card card ;;
esac
