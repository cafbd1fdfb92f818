//! End-to-end tests: one test binary (so every test runs in parallel), one module per area.
//! Each test gets its own token, keystore and agent (`keyward_tests::TestEnv`).

#[path = "e2e/agents.rs"]
mod agents;
#[path = "e2e/audit.rs"]
mod audit;
#[path = "e2e/backup.rs"]
mod backup;
#[path = "e2e/cli.rs"]
mod cli;
#[path = "e2e/client_safety.rs"]
mod client_safety;
#[path = "e2e/cryppo.rs"]
mod cryppo;
#[path = "e2e/devices.rs"]
mod devices;
#[path = "e2e/faults.rs"]
mod faults;
#[path = "e2e/identity.rs"]
mod identity;
#[path = "e2e/key_lifecycle.rs"]
mod key_lifecycle;
#[path = "e2e/keys.rs"]
mod keys;
#[path = "e2e/keystore_check.rs"]
mod keystore_check;
#[path = "e2e/keystore_migrate.rs"]
mod keystore_migrate;
#[path = "e2e/keystore_postgres.rs"]
mod keystore_postgres;
#[path = "e2e/keystore_shared.rs"]
mod keystore_shared;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/paging.rs"]
mod paging;
#[path = "e2e/peers.rs"]
mod peers;
#[path = "e2e/pin.rs"]
mod pin;
#[path = "e2e/policy.rs"]
mod policy;
#[path = "e2e/process.rs"]
mod process;
#[path = "e2e/recovery.rs"]
mod recovery;
#[path = "e2e/root_rotate.rs"]
mod root_rotate;
#[path = "e2e/roots.rs"]
mod roots;
#[path = "e2e/signing.rs"]
mod signing;
#[path = "e2e/spin.rs"]
mod spin;
#[path = "e2e/stream.rs"]
mod stream;
#[path = "e2e/tamper.rs"]
mod tamper;
#[path = "e2e/usage_limits.rs"]
mod usage_limits;
#[path = "e2e/wire.rs"]
mod wire;
