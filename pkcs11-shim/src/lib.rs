//! `libkeyward_pkcs11.so`: a PKCS#11 module that gives every PKCS#11 application (OpenSSH,
//! OpenSSL's engine, NSS/Firefox, GnuTLS, Java) the Keyward agent's keys, under the agent's
//! hierarchy, policy and hardware root.
//!
//! - `ffi`: the exported C functions; the crate's only `unsafe` code.
//! - `token`: the module's state and every operation, in safe Rust.
//! - `objects`: objects and their attributes.
//! - `template`: what the module accepts in a caller's key-creation template.
//! - `conn`: a blocking client of the agent's socket (no runtime, no threads in the host).
//!
//! The module must never hold a private or secret key's value (keys are used inside the agent;
//! a derived session secret is the one exception), never keep a PIN, never start a thread in its
//! host, and never tear down a parent's state in a forked child.
#![deny(unsafe_code)]
// No panics outside tests (request paths and start-up return typed errors).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod conn;
mod ffi;
pub mod objects;
pub mod template;
pub mod token;
