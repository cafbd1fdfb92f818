#!/usr/bin/env bash
# tools/instructions-per-request.sh KEYWARDD [N]  — a measurement, not a test.
#
# Counts the instructions (callgrind's Ir) that KEYWARDD executes per request, for `encrypt`
# (64 B), `dek.export`, `kek.list`, and `sign.digest` (one PKCS#11-module C_Sign: a 32-byte
# digest) with a software keypair (`sign.digest`) and a token keypair (`sign.digest.token`),
# each over N (default 300) sequential requests from one
# client (tools/cbor-drive.py) on a fresh SoftHSM token (softhsm-setup.sh). Only the measured
# loop is instrumented (callgrind_control toggles it), so start-up and set-up are not counted.
#
# Why instructions: on this shared 2-core VM throughput moves ±30% between runs and the VM
# exposes no hardware counters to `perf stat`, but callgrind's counts repeat to within ~1%, so
# two builds can be compared when timing cannot tell them apart. Instructions are not time:
# they do not see lock waits, syscalls' kernel time or cache misses. Use it next to the
# throughput bench, not instead of it. Needs valgrind (installed with apt-get when missing) and
# the debug `keyward` CLI of this tree for set-up. KEEP_PROFILES=DIR keeps each op's callgrind
# profile there (callgrind_annotate DIR/callgrind.kek.list). POLICY=FILE runs the agent with that
# policy file (`policy = FILE` in its config), to count what the policy check costs per request.
# OPS="sign.digest sign.digest.token" measures only those.
set -euo pipefail
bin="${1:?usage: instructions-per-request.sh KEYWARDD [N]}"
n="${2:-300}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
(cd "$repo" && cargo build -q -p keyward-client --bin keyward)
kw="$target/debug/keyward"

work="$(mktemp -d "${TMPDIR:-/tmp}/kw-instr.XXXXXX")"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export KEYWARD_DEV_PIN=instr-pin-1234 KEYWARD_SOCK="$work/agent.sock"
bash "$repo/softhsm-setup.sh" --dir "$work" >/dev/null 2>&1
if [ -n "${POLICY:-}" ]; then
  policy="$(cd "$(dirname "$POLICY")" && pwd)/$(basename "$POLICY")"
  sed -i "s|^keystore = .*|&\npolicy = \"$policy\"|" "$work/keyward.toml"
fi
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
  "$bin" --config "$work/keyward.toml" --log warn 2>"$work/valgrind.log" &
pid=$!
for _ in $(seq 600); do "$kw" status >/dev/null 2>&1 && break; sleep 0.2; done
echo "$KEYWARD_DEV_PIN" | "$kw" init --pin-stdin >/dev/null
"$kw" kek create >/dev/null
dek=$("$kw" dek create --exportable)
soft=$("$kw" keypair create)
token=$("$kw" keypair create --on-token)
i=0
for op in ${OPS:-encrypt dek.export kek.list sign.digest sign.digest.token}; do
  i=$((i + 1))
  case "$op" in
    sign.digest) wire=sign.digest key="$soft" ;;
    sign.digest.token) wire=sign.digest key="$token" ;;
    *) wire="$op" key="$dek" ;;
  esac
  coproc DRV { python3 "$repo/tools/cbor-drive.py" "$KEYWARD_SOCK" "$wire" "$n" "$key"; }
  sleep 1
  callgrind_control -z "$pid" >/dev/null 2>&1
  callgrind_control -i on "$pid" >/dev/null 2>&1
  echo >&"${DRV[1]}"
  wait "$DRV_PID"
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$op" "$pid" >/dev/null 2>&1
  [ -n "${KEEP_PROFILES:-}" ] && cp "$work/cg.$pid.$i" "$KEEP_PROFILES/callgrind.$op"
  ir=$(awk '/^totals:/ {print $2}' "$work/cg.$pid.$i")
  echo "instructions: $op n=$n per_request=$((ir / n))"
done
