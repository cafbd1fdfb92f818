//! Keyward client library: talk to `keywardd` over its socket.
//!
//! [`Client`] is async (tokio) and pipelines: any number of requests may be in flight on one
//! connection, each answered by id. [`BlockingClient`] drives the same client on a private
//! single-threaded runtime for programs without one. Both say `hello` on connect, so a client
//! learns at once whether the agent speaks its protocol version.
//!
//! Secrets (PINs, exported keys, plaintexts) travel in `keyward_proto::secret` types, which
//! zeroize on drop; this crate keeps no copies.
#![forbid(unsafe_code)]
// No panics outside tests (request paths and start-up return typed errors).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod client;
mod error;
pub mod passphrase;
pub mod retry;
pub mod stream;

pub use client::{all_pages, BlockingClient, Client, ClientOptions};
pub use error::ClientError;
pub use keyward_proto as proto;
pub use retry::ConflictRetry;
pub use stream::{stream_error, AsyncDecryptReader, AsyncEncryptWriter, StreamKey};
