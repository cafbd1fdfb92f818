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
# DRIVER=c: a small C client (compiled with cc) sends the same request bytes instead of the
# Python one: a client that sends its next request within microseconds, like the benches'.
# SPIN_US=N: the agent with `[server] spin_us = N` (0: no spin after an answer; unset: default).
# STRACE=1: also `strace -c -f` the agent over the loop and print its system calls per request
# (strace slows every call: the CPU and wall figures of that run are not comparable).
# PERF=1: also `perf stat` the agent over the loop: context switches and system calls per request.
# EXTRA_TOML='...': appended to the agent's config (e.g. $'[audit]\nsync_ms = 1000').
# STRACE=1: also count the agent's system calls in the measured loop (`strace -c -f` attached to
# it; the CPU figures are then inflated by strace, the counts are not): calls per request, in
# all and for the five most frequent.
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
[ -n "${EXTRA_TOML:-}" ] && printf '\n%s\n' "$EXTRA_TOML" >>"$work/keyward.toml"
[ -n "${SPIN_US:-}" ] && printf '\n[server]\nspin_us = %s\n' "$SPIN_US" >>"$work/keyward.toml"
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
  if [ "${DRIVER:-python}" = c ]; then
    python3 "$repo/tools/cbor-drive.py" "$KEYWARD_SOCK" "$wire" "$n" "$key" "$work"
    [ -x "$work/drive" ] || cc -O2 -o "$work/drive" -x c - <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
static unsigned char ans[1 << 20];
static int full(int fd, unsigned char *b, size_t n) {
  for (size_t got = 0; got < n;) { ssize_t r = read(fd, b + got, n - got); if (r <= 0) return -1; got += r; }
  return 0;
}
static size_t load(const char *p, unsigned char *b, size_t cap) { FILE *f = fopen(p, "rb"); size_t n = fread(b, 1, cap, f); fclose(f); return n; }
static int call(int fd, unsigned char *req, size_t len) {
  if (write(fd, req, len) != (ssize_t)len || full(fd, ans, 4)) return -1;
  size_t m = (size_t)ans[0] << 24 | ans[1] << 16 | ans[2] << 8 | ans[3];
  return m > sizeof ans ? -1 : full(fd, ans, m);
}
int main(int argc, char **argv) {
  static unsigned char hello[4096], req[4096];
  size_t hl = load(argv[2], hello, sizeof hello), rl = load(argv[3], req, sizeof req);
  long n = atol(argv[4]);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0); struct sockaddr_un a = {.sun_family = AF_UNIX};
  strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) || call(fd, hello, hl)) { perror("hello"); return 1; }
  for (long i = -200; i < n; i++) {
    if (i == 0) { char line[8]; if (!fgets(line, sizeof line, stdin)) return 1; }
    if (call(fd, req, rl)) { fprintf(stderr, "drive: no answer\n"); return 1; }
  }
  return 0;
}
C
    coproc DRV { "$work/drive" "$KEYWARD_SOCK" "$work/hello.bin" "$work/req.bin" "$n"; }
  else
    coproc DRV { python3 "$repo/tools/cbor-drive.py" "$KEYWARD_SOCK" "$wire" "$n" "$key"; }
  fi
  if [ -n "${STRACE:-}" ]; then
    strace -c -f -p "$pid" -o "$work/strace.$op" 2>/dev/null &
    tracepid=$!
  fi
  if [ -n "${PERF:-}" ]; then
    perf stat -x, -e context-switches,raw_syscalls:sys_enter -p "$pid" -o "$work/perf.$op" &
    perfpid=$!
  fi
  sleep 0.5
  if [ -n "${STRACE:-}" ]; then
    strace -c -f -p "$pid" -o "$work/strace.$op" 2>/dev/null &
    st=$!
    sleep 1
  fi
  t0=$(ticks); w0=$(date +%s%N)
  echo >&"${DRV[1]}"
  wait "$DRV_PID"
  t1=$(ticks); w1=$(date +%s%N)
  if [ -n "${PERF:-}" ]; then
    kill -INT "$perfpid"; wait "$perfpid" || true
    awk -F, -v n="$n" -v op="$op" '$3 == "context-switches" || $3 == "raw_syscalls:sys_enter" { printf "perf: %s %s per request: %.2f\n", op, $3, $1 / n }' "$work/perf.$op"
  fi
  if [ -n "${STRACE:-}" ]; then
    kill -INT "$tracepid"; wait "$tracepid" || true
    awk -v n="$n" -v op="$op" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "syscalls: %s %-16s %.2f per request\n", op, $NF, $4 / n }' "$work/strace.$op"
  fi
  echo "cpu: $op n=$n cpu_us_per_request=$(( (t1 - t0) * 1000000 / hz / n )) wall_us_per_request=$(( (w1 - w0) / 1000 / n ))"
  if [ -n "${STRACE:-}" ]; then
    kill -INT "$st"; wait "$st" 2>/dev/null || true
    # strace -c's table: calls are the 4th column, the name the last (errors may be empty).
    top=$(awk -v n="$n" '$1 ~ /^[0-9.]+$/ && $NF != "total" { printf "%s=%.2f\n", $NF, $4 / n }' \
      "$work/strace.$op" | sort -t= -k2 -nr | head -5 | tr '\n' ' ')
    total=$(awk -v n="$n" '$NF == "total" { printf "%.2f", $4 / n }' "$work/strace.$op")
    echo "syscalls: $op n=$n per_request=$total $top"
  fi
done
