#!/usr/bin/env bash
# Benchmarks keyward-envelope against OpenSSL on this machine and prints a Markdown table.
#   - ours: criterion medians (cargo bench -p keyward-envelope --bench envelope)
#   - OpenSSL: `openssl speed -evp aes-256-gcm [-decrypt] -bytes N` (median of 3 one-second
#     runs) and `openssl kdf ... PBKDF2` at 600000 iterations (median of 5 timed runs, includes
#     process start-up of a few ms).
# Needs: cargo, openssl (CLI), python3. Takes ~3-4 minutes on 2 cores.
# Ratio = ours / OpenSSL throughput (>1 means faster than OpenSSL).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-envelope}"
SIZES=(64 4096 65536 1048576)
ITER=600000
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

echo "== cargo bench (criterion)" >&2
(cd "$ROOT" && cargo bench -p keyward-envelope --bench envelope >"$OUT/cargo.log" 2>&1) || {
  cat "$OUT/cargo.log" >&2
  exit 1
}

echo "== openssl speed" >&2
for dir in encrypt decrypt; do
  flag=""
  [ "$dir" = decrypt ] && flag="-decrypt"
  for n in "${SIZES[@]}"; do
    for run in 1 2 3; do
      # Last line: "AES-256-GCM   1234.56k" (1000s of bytes per second).
      openssl speed $flag -evp aes-256-gcm -bytes "$n" -seconds 1 2>/dev/null |
        awk '/^AES-256-GCM/ {sub(/k$/, "", $2); print $2 * 1000}' >>"$OUT/openssl-$dir-$n"
    done
  done
done

echo "== openssl kdf PBKDF2 x5" >&2
for run in 1 2 3 4 5; do
  t0=$(date +%s%N)
  openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt pass:password \
    -kdfopt salt:saltsaltsaltsaltsalt -kdfopt iter:$ITER PBKDF2 >/dev/null
  t1=$(date +%s%N)
  echo $((t1 - t0)) >>"$OUT/openssl-kdf"
done

python3 - "$CARGO_TARGET_DIR/criterion" "$OUT" "$ITER" "${SIZES[@]}" <<'PY'
import json, statistics, sys, os, platform, subprocess, datetime
crit, out, iters, sizes = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(s) for s in sys.argv[4:]]

def ours_ns(*path):
    with open(os.path.join(crit, *path, "new", "estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"]

def ossl_bps(direction, n):
    with open(os.path.join(out, f"openssl-{direction}-{n}")) as f:
        return statistics.median(float(l) for l in f if l.strip())

def human(n):
    return f"{n // 1048576} MiB" if n >= 1048576 else f"{n // 1024} KiB" if n >= 1024 else f"{n} B"

def rate(bps):
    return f"{bps / 1e9:.2f} GB/s" if bps >= 1e9 else f"{bps / 1e6:.0f} MB/s"

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
ossl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
print(f"{datetime.date.today()} — {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; {ossl}\n")
print("| operation | size | ours (median) | ours | OpenSSL | ours/OpenSSL |")
print("|---|---|---|---|---|---|")
for op, direction in (("seal", "encrypt"), ("open", "decrypt")):
    for n in sizes:
        ns = ours_ns("aes256gcm", op, str(n))
        ours = n / (ns * 1e-9)
        o = ossl_bps(direction, n)
        print(f"| AES-256-GCM {direction} | {human(n)} | {ns / 1000:.2f} µs | {rate(ours)} | {rate(o)} | {ours / o:.2f}x |")
for op in ("encrypt", "decrypt"):
    for n in sizes:
        ns = ours_ns("cryppo", op, str(n))
        print(f"| Cryppo string {op} (AES-GCM + BSON + base64) | {human(n)} | {ns / 1000:.2f} µs | {rate(n / (ns * 1e-9))} | — | — |")
ns = ours_ns("pbkdf2", str(iters))
with open(os.path.join(out, "openssl-kdf")) as f:
    o = statistics.median(int(l) for l in f if l.strip())
print(f"| PBKDF2-HMAC-SHA256, {iters} iterations | 32 B key | {ns / 1e6:.1f} ms | — | {o / 1e6:.1f} ms | {o / ns:.2f}x |")
PY
