//! keywardd, the Keyward key agent, as a library: the binary in `main.rs` wires these together,
//! and benchmarks call them directly.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod hardening;
pub mod hierarchy;
pub mod keystore;
pub mod root;
pub mod server;
pub mod service;
