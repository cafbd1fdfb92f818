#!/usr/bin/env bash
# test.sh: the whole test suite. Installs what the tests need (SoftHSM2, OpenSC) the way
# softhsm-setup.sh does, builds every binary, then runs every crate's tests, the end-to-end tests
# against the real keywardd on real SoftHSM tokens included.
set -euo pipefail
cd "$(dirname "$0")"
./softhsm-setup.sh --install-only
cargo build --workspace --bins
cargo test --workspace
