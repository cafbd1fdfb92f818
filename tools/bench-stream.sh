#!/usr/bin/env bash
# tools/bench-stream.sh [SIZE_MIB]  — a benchmark, not a test.
#
# Streams SIZE_MIB (default 1024) of random data through, in one run and on the same file:
#   - `keyward encrypt` / `keyward decrypt` (release build, a SoftHSM PKCS#11 root made by
#     softhsm-setup.sh in a temporary directory: the token wraps and unwraps the data key, the
#     CLI encrypts the stream);
#   - Debian's `age` with an X25519 recipient (`age -r` / `age -d -i`), installed with apt-get
#     when missing;
#   - `openssl enc -aes-256-ctr` (no authentication: a floor for AES throughput through a pipe).
# Each encrypts the file to a file and decrypts that to /dev/null; the page cache is warmed
# first. Prints, per tool and direction, the median MB/s (10^6 bytes per second of plaintext)
# over ROUNDS runs (default 3) and the median CPU time per GiB (GNU time: user + system).
# Needs about 3 x SIZE of free space in ${TMPDIR:-/tmp}.
set -euo pipefail

size_mib="${1:-1024}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"

command -v age >/dev/null || { apt-get update -qq && apt-get install -y -qq age >/dev/null; }
command -v openssl >/dev/null || apt-get install -y -qq openssl >/dev/null

(cd "$repo" && cargo build --release -q -p keyward-client -p keyward-agent --bins)
kw="$target/release/keyward"
kwd="$target/release/keywardd"

work="$(mktemp -d "${TMPDIR:-/tmp}/kw-bench.XXXXXX")"
chmod 700 "$work"
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

KEYWARD_DEV_PIN=bench-pin-1234 "$repo/softhsm-setup.sh" --dir "$work/hsm" >/dev/null 2>&1
export SOFTHSM2_CONF="$work/hsm/softhsm2.conf"
export KEYWARD_SOCK="$work/run/agent.sock"
"$kwd" --config "$work/hsm/keyward.toml" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do [ -S "$KEYWARD_SOCK" ] && break; sleep 0.1; done
echo bench-pin-1234 | "$kw" init --pin-stdin >/dev/null
"$kw" kek create >/dev/null
dek="$("$kw" dek create)"

in="$work/in.bin"
head -c "$((size_mib * 1048576))" /dev/urandom >"$in"
cat "$in" >/dev/null
bytes=$((size_mib * 1048576))

age-keygen -o "$work/age.key" 2>/dev/null
recipient="$(age-keygen -y "$work/age.key")"
printf '%s' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$work/ctr.key"
ctr_key="$(cat "$work/ctr.key")"
ctr_iv="00000000000000000000000000000000"

# Each tool and direction runs ROUNDS times (default 3), the tools alternating within a round so
# that they see the same load; reported: the median MB/s, and the median CPU time (user + system,
# from GNU time) per GiB of plaintext, which moves much less with the machine's load than the
# rate does.
rounds="${ROUNDS:-3}"
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
declare -A walls cpus
time_it() {
  local label="$1"; shift
  /usr/bin/time -f "%e %U %S" -o "$work/time" "$@"
  read -r e u s <"$work/time"
  walls[$label]+="$e "
  cpus[$label]+="$(awk -v u="$u" -v s="$s" 'BEGIN { print u + s }') "
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rate_of() { awk -v b="$bytes" -v t="$(echo "${walls[$1]}" | median)" 'BEGIN { printf "%.0f", b / t / 1e6 }'; }
cpu_of() { awk -v b="$bytes" -v t="$(echo "${cpus[$1]}" | median)" 'BEGIN { printf "%.2f", t * 1073741824 / b }'; }

for _ in $(seq "$rounds"); do
  time_it "keyward encrypt" "$kw" encrypt --dek "$dek" -i "$in" -o "$work/kw.kws"
  cat "$work/kw.kws" >/dev/null
  time_it "keyward decrypt" "$kw" decrypt -i "$work/kw.kws" -o /dev/null
  rm -f "$work/kw.kws"

  time_it "age encrypt" age -r "$recipient" -o "$work/age.age" "$in"
  cat "$work/age.age" >/dev/null
  time_it "age decrypt" age -d -i "$work/age.key" -o /dev/null "$work/age.age"
  rm -f "$work/age.age"

  time_it "openssl encrypt" openssl enc -aes-256-ctr -K "$ctr_key" -iv "$ctr_iv" -in "$in" -out "$work/ctr.bin"
  cat "$work/ctr.bin" >/dev/null
  time_it "openssl decrypt" openssl enc -d -aes-256-ctr -K "$ctr_key" -iv "$ctr_iv" -in "$work/ctr.bin" -out /dev/null
  rm -f "$work/ctr.bin"
done

echo "file: ${size_mib} MiB of random data, ${rounds} rounds; median MB/s of plaintext (10^6 B/s), median CPU s per GiB"
printf '%-28s %10s %10s %12s %12s\n' "tool" "encrypt" "decrypt" "enc CPU/GiB" "dec CPU/GiB"
for t in keyward age openssl; do
  case $t in
  keyward) name="keyward (stream, pkcs11)" ;;
  age) name="age $(age --version) X25519" ;;
  openssl) name="openssl enc -aes-256-ctr" ;;
  esac
  printf '%-28s %10s %10s %12s %12s\n' "$name" "$(rate_of "$t encrypt")" "$(rate_of "$t decrypt")" \
    "$(cpu_of "$t encrypt")" "$(cpu_of "$t decrypt")"
done
