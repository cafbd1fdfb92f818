#!/usr/bin/env bash
# Keyward fuzzing: cargo-fuzz (libFuzzer) on the stable toolchain. See README.md.
#
#   fuzz/run.sh build                 build every target (instrumented, debug assertions on)
#   fuzz/run.sh smoke [SECONDS]       each target for SECONDS (default 20) from the seeds, in a
#                                     scratch corpus; fails on the first crash (CI uses this)
#   fuzz/run.sh long TARGET [RUNS]    one target for RUNS executions (default 10,000,000) on the
#                                     working corpus fuzz/corpus/TARGET (grown, not committed)
#   fuzz/run.sh repro TARGET FILE     run one input (a crash artifact) through TARGET
#   fuzz/run.sh list                  the targets
#
# Environment: SANITIZER=none|address (default none), FUZZ_ARGS (extra libFuzzer flags),
# FUZZ_TARGET_DIR (build directory; default fuzz/target/nosan or fuzz/target/address).
# One fuzzer process at a time, never -jobs/-workers > 1: the machines have 2 cores, shared.
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
# cargo-fuzz passes -Z flags (sanitizer, sancov passes) that rustc accepts only on nightly;
# RUSTC_BOOTSTRAP=1 lets the stable rustc accept them. No nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
# No sanitizer by default: keyward-proto, -envelope and -identity forbid unsafe code, so what
# the fuzzer can find there is panics, failed invariants, hangs and memory blow-ups, which need
# no sanitizer; ASan would guard the dependencies' unsafe code at a fifth of the speed
# (measured: frame 46k vs 8k exec/s). SANITIZER=address builds and runs the ASan variant.
SANITIZER=${SANITIZER:-none}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
# One target dir per sanitizer, so switching does not rebuild the other. FUZZ_TARGET_DIR puts
# it elsewhere (e.g. a directory that outlives CI's fresh clones, to keep the build warm).
case $SANITIZER in
none) TARGET_DIR=${FUZZ_TARGET_DIR:-target/nosan} ;;
*) TARGET_DIR=${FUZZ_TARGET_DIR:-target/$SANITIZER} ;;
esac
BIN=$TARGET_DIR/$TRIPLE/release
FUZZ_ARGS=${FUZZ_ARGS:-}

targets() { ls fuzz_targets | sed -n 's/\.rs$//p'; }

ensure_tool() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
        cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
    fi
}

build() {
    ensure_tool
    # Release with debug assertions and overflow checks (cargo-fuzz's default without -O).
    cargo fuzz build --sanitizer "$SANITIZER" --target-dir "$TARGET_DIR"
}

# libFuzzer flags shared by every mode: a per-input time limit, crashes kept under
# artifacts/TARGET/. No -jobs/-workers: without them libFuzzer is exactly one process (with
# -jobs=1 it forks a child and hides its output in ./fuzz-0.log).
common_flags() {
    local t=$1
    mkdir -p "artifacts/$t"
    echo -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "-artifact_prefix=artifacts/$t/" $FUZZ_ARGS
}

smoke() {
    local secs=${1:-20} failed=()
    build
    for t in $(targets); do
        local scratch
        scratch=$(mktemp -d)
        cp seeds/"$t"/* "$scratch"/
        echo "== smoke $t (${secs}s)"
        # shellcheck disable=SC2046
        if ! "$BIN/$t" $(common_flags "$t") -max_total_time="$secs" "$scratch" \
            >"$scratch.log" 2>&1; then
            tail -n 60 "$scratch.log"
            failed+=("$t")
        else
            grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch.log" || true
        fi
        rm -rf "$scratch" "$scratch.log"
    done
    local total
    total=$(targets | wc -l)
    if ((${#failed[@]})); then
        echo "fuzz smoke: crash or error in: ${failed[*]} (inputs under fuzz/artifacts/)"
        echo "fuzz: $((total - ${#failed[@]})) passed, ${#failed[@]} failed"
        exit 1
    fi
    echo "fuzz: $total passed, 0 failed"
}

long() {
    local t=${1:?target} runs=${2:-10000000}
    build
    mkdir -p "corpus/$t" logs
    cp -n seeds/"$t"/* "corpus/$t"/
    echo "== $t: $runs runs, corpus fuzz/corpus/$t, log fuzz/logs/$t.log"
    # shellcheck disable=SC2046
    "$BIN/$t" $(common_flags "$t") -runs="$runs" "corpus/$t" 2>&1 | tee "logs/$t.log"
}

repro() {
    local t=${1:?target} f=${2:?input file}
    build
    "$BIN/$t" "$f"
}

case ${1:-} in
build) build ;;
smoke) smoke "${2:-20}" ;;
long) long "${2:-}" "${3:-}" ;;
repro) repro "${2:-}" "${3:-}" ;;
list) targets ;;
*)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
