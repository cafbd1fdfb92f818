#!/usr/bin/env bash
# test.sh: the whole test suite. Installs what the tests need (SoftHSM2, OpenSC) the way
# softhsm-setup.sh does, starts the virtual PIV card stack (vcard-setup.sh: pcscd + vpcd + the
# tools/piv-card card; installs its packages and builds the card, ~3 min cold), builds every
# binary, then runs every crate's tests: the end-to-end tests against the real keywardd on real
# SoftHSM tokens in parallel, then the card tests (names containing `yubikey`) one at a time,
# since pcscd has a single socket and they share the one virtual card.
# If the card stack cannot start, this fails: card tests are never skipped silently.
set -euo pipefail
cd "$(dirname "$0")"
./softhsm-setup.sh --install-only
trap './vcard-setup.sh stop >/dev/null 2>&1 || true' EXIT
./vcard-setup.sh start
cargo build --workspace --bins
cargo test --workspace -- --skip yubikey
# `--workspace` (not only -p keyward-tests) so the agent's root::yubikey unit tests run too.
cargo test --workspace yubikey -- --test-threads=1
