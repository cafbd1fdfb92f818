#!/usr/bin/env bash
# tools/cpu-per-request.sh KEYWARDD [N]  — a measurement, not a test.
#
# CPU time (user + system, from /proc/PID/stat) that KEYWARDD spends per request, natively (no
# valgrind), for the ops of tools/instructions-per-request.sh (OPS=..., same names: `encrypt`,
# `dek.export`, `kek.list`, `sign.digest` with a software keypair, `sign.digest.token` with a
# token keypair), each over N (default 3000) sequential requests from one client
# (tools/cbor-drive.py) on a fresh SoftHSM token. CPU time moves less with the machine's load
# than wall-clock rates do (it still includes cache misses and lock spinning a busy machine
# causes), and it sees what callgrind does not count the same way (syscalls' kernel time, the
# CPU's own RDRAND where valgrind emulates it). The clock tick is 10 ms: keep N large.
set -euo pipefail
bin="${1:?usage: cpu-per-request.sh KEYWARDD [N]}"
n="${2:-3000}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
(cd "$repo" && cargo build -q -p keyward-client --bin keyward)
kw="$target/debug/keyward"
work="$(mktemp -d "${TMPDIR:-/tmp}/kw-cpu.XXXXXX")"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export KEYWARD_DEV_PIN=cpu-pin-1234 KEYWARD_SOCK="$work/agent.sock"
bash "$repo/softhsm-setup.sh" --dir "$work" >/dev/null 2>&1
"$bin" --config "$work/keyward.toml" --log warn 2>"$work/agent.log" &
pid=$!
for _ in $(seq 600); do "$kw" status >/dev/null 2>&1 && break; sleep 0.1; done
echo "$KEYWARD_DEV_PIN" | "$kw" init --pin-stdin >/dev/null
"$kw" kek create >/dev/null
dek=$("$kw" dek create --exportable)
soft=$("$kw" keypair create)
token=$("$kw" keypair create --on-token)
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
for op in ${OPS:-encrypt dek.export kek.list sign.digest sign.digest.token}; do
  case "$op" in
    sign.digest) wire=sign.digest key="$soft" ;;
    sign.digest.token) wire=sign.digest key="$token" ;;
    *) wire="$op" key="$dek" ;;
  esac
  coproc DRV { python3 "$repo/tools/cbor-drive.py" "$KEYWARD_SOCK" "$wire" "$n" "$key"; }
  sleep 0.5
  t0=$(ticks); w0=$(date +%s%N)
  echo >&"${DRV[1]}"
  wait "$DRV_PID"
  t1=$(ticks); w1=$(date +%s%N)
  echo "cpu: $op n=$n cpu_us_per_request=$(( (t1 - t0) * 1000000 / hz / n )) wall_us_per_request=$(( (w1 - w0) / 1000 / n ))"
done
