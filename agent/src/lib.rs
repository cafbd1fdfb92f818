//! keywardd, the Keyward key agent, as a library: the binary in `main.rs` wires these together,
//! and benchmarks call them directly.
#![forbid(unsafe_code)]
// No panics outside tests (request paths and start-up return typed errors).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod activation;
pub mod agents;
pub mod audit;
pub mod config;
pub mod datakeys;
pub mod devices;
pub mod door;
pub mod error;
pub mod hardening;
pub mod hierarchy;
pub mod idle;
pub mod integrity;
pub mod key_cache;
pub mod keypairs;
pub mod keystore;
pub mod lifecycle;
pub mod limits;
pub mod nodes;
pub mod nonces;
pub mod peer;
pub mod policy;
pub mod prompt;
pub mod recovery;
pub mod root;
pub mod root_rotate;
pub mod roots;
pub mod rsa_keys;
pub mod server;
pub mod service;
pub mod sharing;
pub mod ssh;
