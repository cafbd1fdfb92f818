#!/usr/bin/env bash
# tools/ssh-per-request.sh KEYWARDD [N]  — a measurement, not a test.
#
# What keywardd's SSH door spends per SIGN_REQUEST with ONE client: an ECDSA P-256 file key is
# `ssh-add`ed to the agent (so the fast path, a cached key with no prompt, answers), then one
# connection sends N (default 20000) sequential SIGN_REQUESTs for 64 bytes (a small C client,
# compiled with cc). Measured over the loop only, for the whole keywardd process (all threads):
#   - `perf stat`: CPU time (task-clock), context switches and syscalls (raw_syscalls) per request;
#   - MODE=record: a `perf record -g` profile of the loop (the top symbols; TOP=N lines);
#   - MODE=strace: `strace -c -f` of the loop: which system calls, per request (strace slows
#     each one, so use a smaller N, e.g. 5000);
#   - MODE=callgrind: instructions per request (callgrind's Ir; the agent runs under valgrind,
#     so use a smaller N, e.g. 2000). KEEP_PROFILES=DIR keeps the profile there.
# AUDIT=off: the agent without its audit log (on by default).
# SPIN_US=N: the agent with `[server] spin_us = N` (0: no spin after an answer; unset: default).
# KEY=token: a P-256 keypair made in the token instead (`keypair create --on-token --ssh`),
# which signs in SoftHSM: the door's slow path.
# Why these: on the shared machine wall-clock rates move with the load; these do not (much).
# Needs perf (linux-perf), valgrind for MODE=callgrind, softhsm2 and openssh-client, and the
# `keyward` CLI beside KEYWARDD (same target dir and profile).
set -euo pipefail
bin="$(cd "$(dirname "${1:?usage: ssh-per-request.sh KEYWARDD [N]}")" && pwd)/$(basename "$1")"
n="${2:-20000}"
mode="${MODE:-perf}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
kw="$(dirname "$bin")/keyward"
[ -x "$kw" ] || { echo "no keyward CLI beside $bin (cargo build [--release] -p keyward-client --bin keyward)" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/kw-sshreq.XXXXXX")"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export KEYWARD_DEV_PIN=sshreq-pin-1234 KEYWARD_SOCK="$work/agent.sock" KEYWARD_SSH_SOCK="$work/ssh.sock"
bash "$repo/softhsm-setup.sh" --dir "$work" >/dev/null 2>&1
# AUDIT=off: without the audit log (on by default), to see what it costs.
[ "${AUDIT:-on}" = off ] && printf '\n[audit]\nenabled = false\n' >>"$work/keyward.toml"
[ -n "${SPIN_US:-}" ] && printf '\n[server]\nspin_us = %s\n' "$SPIN_US" >>"$work/keyward.toml"
if [ "$mode" = callgrind ]; then
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
    "$bin" --config "$work/keyward.toml" --log warn 2>"$work/agent.log" &
else
  "$bin" --config "$work/keyward.toml" --log warn 2>"$work/agent.log" &
fi
pid=$!
for _ in $(seq 600); do "$kw" status >/dev/null 2>&1 && break; sleep 0.2; done
echo "$KEYWARD_DEV_PIN" | "$kw" init --pin-stdin >/dev/null
"$kw" kek create >/dev/null
if [ "${KEY:-file}" = token ]; then
  # A P-256 keypair made in the token and offered over SSH: it signs in SoftHSM (the slow path).
  "$kw" keypair create --on-token --ssh --label tokenkey >/dev/null
  SSH_AUTH_SOCK="$KEYWARD_SSH_SOCK" ssh-add -L | grep ' tokenkey$' >"$work/id.pub"
else
  ssh-keygen -q -t ecdsa -b 256 -N '' -C bench -f "$work/id"
  SSH_AUTH_SOCK="$KEYWARD_SSH_SOCK" ssh-add -q "$work/id" 2>/dev/null
fi

# The request, framed, made from the public key file; the client is a few lines of C (a fast
# client like the bench's: the agent sees the next request as soon as a client can send it).
python3 - "$work/id.pub" "$work/req.bin" <<'PY'
import base64, struct, sys
blob = base64.b64decode(open(sys.argv[1]).read().split()[1])
s = lambda b: struct.pack(">I", len(b)) + b
body = b"\x0d" + s(blob) + s(b"\x42" * 64) + struct.pack(">I", 0)
open(sys.argv[2], "wb").write(s(body))
PY
cat >"$work/drive.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
static int full(int fd, unsigned char *b, size_t n) {
  for (size_t got = 0; got < n;) { ssize_t r = read(fd, b + got, n - got); if (r <= 0) return -1; got += r; }
  return 0;
}
int main(int argc, char **argv) {
  unsigned char req[4096], ans[65536]; FILE *f = fopen(argv[2], "rb");
  size_t len = fread(req, 1, sizeof req, f); fclose(f);
  long n = atol(argv[3]);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0); struct sockaddr_un a = {.sun_family = AF_UNIX};
  strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
  if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
  for (long i = -200; i < n; i++) {  /* 200 warm-up requests: the first unwraps the key */
    if (i == 0) { char line[8]; puts("ready"); fflush(stdout); if (!fgets(line, sizeof line, stdin)) return 1; }
    if (write(fd, req, len) != (ssize_t)len || full(fd, ans, 4)) return 1;
    size_t m = (size_t)ans[0] << 24 | ans[1] << 16 | ans[2] << 8 | ans[3];
    if (m > sizeof ans || full(fd, ans, m) || ans[0] != 14) { fprintf(stderr, "bad answer\n"); return 1; }
  }
  puts("done"); fflush(stdout); return 0;
}
C
cc -O2 -o "$work/drive" "$work/drive.c"
coproc DRV { "$work/drive" "$KEYWARD_SSH_SOCK" "$work/req.bin" "$n"; }
read -r _ <&"${DRV[0]}"
if [ "$mode" = callgrind ]; then
  callgrind_control -z "$pid" >/dev/null 2>&1
  callgrind_control -i on "$pid" >/dev/null 2>&1
  echo >&"${DRV[1]}"
  read -r _ <&"${DRV[0]}"
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d ssh-sign "$pid" >/dev/null 2>&1
  f=$(ls "$work"/cg.$pid.* | tail -1)
  [ -n "${KEEP_PROFILES:-}" ] && cp "$f" "$KEEP_PROFILES/callgrind.ssh-sign"
  ir=$(awk '/^totals:/ {print $2}' "$f")
  echo "instructions: ssh sign (1 client) n=$n per_request=$((ir / n))"
elif [ "$mode" = strace ]; then
  strace -c -f -p "$pid" -o "$work/strace" 2>/dev/null &
  tracepid=$!
  sleep 0.5
  echo >&"${DRV[1]}"
  read -r _ <&"${DRV[0]}"
  kill -INT "$tracepid"; wait "$tracepid" || true
  awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "%-16s %.2f per request\n", $NF, $4 / n }' "$work/strace"
elif [ "$mode" = record ]; then
  perf record -q ${PERF_CG:--g} -p "$pid" -o "$work/perf.data" 2>/dev/null &
  perfpid=$!
  sleep 0.5
  echo >&"${DRV[1]}"
  read -r _ <&"${DRV[0]}"
  kill -INT "$perfpid"; wait "$perfpid" || true
  perf report -i "$work/perf.data" --stdio --no-children --sort sym 2>/dev/null | grep -v '^$' | grep '%' | head -"${TOP:-40}"
  [ -n "${KEEP_PROFILES:-}" ] && cp "$work/perf.data" "$KEEP_PROFILES/perf.ssh-sign.data"
else
  perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter${PERF_EVENTS:+,$PERF_EVENTS} -p "$pid" -o "$work/stat" &
  perfpid=$!
  sleep 0.5
  w0=$(date +%s%N)
  echo >&"${DRV[1]}"
  read -r _ <&"${DRV[0]}"
  w1=$(date +%s%N)
  kill -INT "$perfpid"; wait "$perfpid" || true
  echo "wall clock per request (the client's round trip): $(( (w1 - w0) / n / 1000 )) us"
  awk -F, -v n="$n" '
    $3 == "task-clock" { printf "agent CPU per request: %.1f us\n", $1 * 1000 / n }
    $3 == "context-switches" { printf "context switches per request: %.2f\n", $1 / n }
    $3 == "raw_syscalls:sys_enter" { printf "syscalls per request: %.2f\n", $1 / n }
    $3 != "" && $3 != "task-clock" && $3 != "context-switches" && $3 != "raw_syscalls:sys_enter" { printf "%s per request: %.3f\n", $3, $1 / n }' "$work/stat"
fi
