//! Keyward wire protocol: what travels over the agent socket, and nothing else.
//!
//! A connection carries frames (`frame`): a 4-byte big-endian length, then one CBOR item. Each
//! request is `{id, op, args}` and each response `{id, ok}` or `{id, err: {code, message}}`
//! (`message`). The operations and their argument and result types live in `ops`; the error codes
//! a client can match on in `error`. `protocol.cddl` beside this crate is the written spec, and the
//! tests check the types here against it.
//!
//! This crate must never do cryptography or hold key material longer than a message's life: the
//! few secret-bearing fields (PINs, exported keys, plaintexts) use [`secret`] types that zeroize
//! on drop and never print.
#![forbid(unsafe_code)]
// No panics outside tests (request paths and start-up return typed errors).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod error;
pub mod frame;
pub mod limits;
pub mod message;
pub mod ops;
pub mod paths;
pub mod rfc3339;
pub mod scan;
pub mod secret;
mod table;

pub use error::{ErrorBody, ErrorCode};
pub use message::{Args, Cbor, Request, Response};

/// The protocol version this crate speaks. `hello` carries it both ways; an agent refuses a
/// client whose major version it does not speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts (1 MiB). Longer frames are refused from their length
/// prefix alone, before any of the body is read.
pub const MAX_FRAME: usize = 1 << 20;

/// Largest plaintext one `encrypt` request takes (760 KiB): its Cryppo string (base64, 4/3 of the
/// size, plus artefacts) must fit in one response frame. Larger data: encrypt it client-side with
/// an exported DEK, or in chunks.
pub const MAX_PLAINTEXT: usize = 760 * 1024;
