//! End-to-end test harness: the real `keywardd` against a real token, driven over its socket by
//! the client library, the `keyward` CLI, and hand-made frames.
//!
//! Every test gets its own [`TestEnv`]: a temporary directory holding the token, the keystore,
//! the agent config, the agent's log and its socket, and a running `keywardd`. Tests are written
//! as functions over `&mut TestEnv` and instantiated once per root kind of [`RootKind::E2E`] by
//! [`keyward_e2e_tests!`]. A new root kind is one enum variant ([`kind`]), its set-up arm
//! ([`token`]), and, to run the generic scenarios on it, one entry in the kind list.
//!
//! The binaries are found next to the test executable (`target/<profile>/keywardd` and
//! `keyward`); build them first with `cargo build --workspace --bins`.
//!
//! Modules, one concept each; everything public is re-exported here, so tests use
//! `keyward_tests::name`:
//! - [`kind`]: the root kinds and the one list the generic scenarios run on;
//! - [`token`]: setting up a root (SoftHSM2 token, soft root config, `[unlock]` policy);
//! - [`vcard`]: the virtual PIV card and the EC root set-ups;
//! - [`env`](mod@env): one test's environment ([`TestEnv`]) and where its files are;
//! - [`process`]: starting, stopping, killing and waiting for `keywardd`;
//! - [`cli`]: running the `keyward` CLI;
//! - [`client`]: the client library, common set-ups, error-code assertions;
//! - [`raw`]: the raw protocol client (hand-made CBOR frames);
//! - [`python`]: a raw-socket client in Python (a program other than the CLI);
//! - [`backend`]: the keystore backend the suite runs on (`KEYWARD_TEST_KEYSTORE`) and
//!   [`requires_sqlite`] for the tests that need the SQLite file;
//! - [`postgres`]: a throwaway PostgreSQL server and databases for a keystore on it;
//! - [`faults`]: fault injection (a tmpfs to fill or make read-only, a seeded RNG);
//! - [`util`]: the time bound, polling, paths, file modes and users.

pub mod backend;
pub mod cli;
pub mod client;
pub mod env;
pub mod faults;
pub mod kind;
pub mod pinentry;
pub mod pkcs11;
pub mod postgres;
pub mod process;
pub mod python;
pub mod raw;
pub mod ssh;
pub mod token;
pub mod util;
pub mod vcard;

pub use ciborium::Value;
pub use keyward_client;
pub use keyward_proto;

pub use backend::requires_sqlite;
pub use cli::{parse_json, run_with_stdin};
pub use client::{code, expect_code, pin, Keys};
pub use env::{Options, TestEnv};
pub use kind::RootKind;
pub use process::{bin, bin_dir, wait_exit};
pub use raw::{cbor, err_code, int, map, request, text, RawConn, RawRead};
pub use token::{UnlockPolicy, TEST_PIN, WRONG_PIN};
pub use util::{chmod, is_root, mode, nobody, read_to_string, repo_root, wait_for, WAIT};
