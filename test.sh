#!/usr/bin/env bash
# test.sh: the whole test suite. Installs what the tests need (SoftHSM2, OpenSC) the way
# softhsm-setup.sh does, starts the virtual PIV card stack (vcard-setup.sh: pcscd + vpcd + the
# tools/piv-card card; installs its packages and builds the card, ~3 min cold), builds every
# binary, then runs every crate's tests: the end-to-end tests against the real keywardd on real
# SoftHSM tokens in parallel, then the card tests (names containing `yubikey`) one at a time,
# since pcscd has a single socket and they share the one virtual card. Ends with one line
# counting every test that ran. Then the end-to-end suite again on a PostgreSQL keystore
# (KEYWARD_TEST_KEYSTORE=postgres), counted in that line too.
# If the card stack cannot start, this fails: card tests are never skipped silently.
set -euo pipefail
cd "$(dirname "$0")"
log=$(mktemp)
trap './vcard-setup.sh stop >/dev/null 2>&1 || true; rm -f "$log"' EXIT
./softhsm-setup.sh --install-only
# pkcs11-tool, p11tool, NSS tools, OpenSSH and libp11 for the PKCS#11 module's tests.
./pkcs11-setup.sh --install-only
# OpenSSH for the SSH door's tests; systemd tools, pinentry and tmux for the desktop tests.
./ssh-setup.sh --install-only
./desktop-setup.sh --install-only
./vcard-setup.sh start
cargo build --workspace --bins
# The PKCS#11 module (a cdylib: --bins does not build it).
cargo build -p keyward-pkcs11
cargo test --workspace -- --skip yubikey 2>&1 | tee -a "$log"
# `--workspace` (not only -p keyward-tests) so the agent's root::yubikey unit tests run too.
cargo test --workspace yubikey -- --test-threads=1 2>&1 | tee -a "$log"
# The end-to-end suite a second time with every agent's keystore in a fresh PostgreSQL database
# (tests/src/backend.rs; one throwaway server for the run, postgres-setup.sh). Tests that need the
# SQLite file print "not on postgres: <test>: <why>" and are counted below, never skipped silently.
pg_start=$SECONDS
# `--workspace` as above (not `-p keyward-tests`): the same features, so nothing is built again.
KEYWARD_TEST_KEYSTORE=postgres cargo test --workspace --test e2e 2>&1 | tee -a "$log"
echo "end-to-end suite on PostgreSQL: $((SECONDS - pg_start)) s"
# (pipefail: a failing cargo test fails the script above.)
# A test left out on PostgreSQL returns at once and libtest counts it as passed: it is counted
# apart here, not as a pass.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /not on postgres: / { n++ }
     END { printf "all tests: %d passed, %d failed (and %d not on postgres)\n", p - n, f, n; if (p == 0) exit 1 }' "$log"
