//! Public-key identity for Keyward.
//!
//! This crate is the *pure-crypto* half of Keyward's identity story: it knows how
//! to write and read P-256 public keys (SPKI PEM, JWK, `did:key`), how to sign and
//! verify ECDSA P-256/SHA-256, how to seal a data-encryption key to another
//! party with HPKE (RFC 9180, auth mode), how to issue and check COSE_Sign1 node
//! delegation statements and chains, and how to derive node keys.
//!
//! It performs no I/O, keeps no state and never talks to a token itself.
//! Where a private key is needed for *signing*, callers pass any [`Signer`]
//! (the agent can implement it over a PKCS#11 or PIV token); [`LocalKey`] is the
//! in-memory implementation over a [`p256::SecretKey`], which is zeroized on drop.
//! HPKE needs the private half in memory (see [`hpke`] for why and how the agent
//! should handle that).
//!
//! Module map (one concept each):
//! - [`keys`]: the [`PublicKey`], [`KeyId`] and [`LocalKey`] types.
//! - [`format`](mod@format): SPKI PEM / JWK / `did:key` encodings of public keys.
//! - [`ecdsa`]: the [`Signer`] trait and detached ECDSA sign/verify helpers.
//! - [`hpke`]: the single HPKE suite Keyward uses, as seal/open functions.
//! - [`share`]: the self-describing sealed form of a shared DEK.
//! - [`cose`]: ES256 COSE_Sign1 signing and verification.
//! - [`delegation`]: delegation / rekey / revocation statements and [`Chain`].
//! - [`node_key`]: deterministic node key derivation.
//! - [`authz`]: the signed agent authorization policy (DKMS: which agent keys act for an identity).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod authz;
pub mod cbor;
pub mod cose;
pub mod delegation;
pub mod ecdsa;
pub mod ed25519;
pub mod format;
pub mod hpke;
pub mod keys;
pub mod message;
pub mod node_key;
pub mod share;

pub use authz::{verify_policy, AgentEntry, AgentPolicy, AuthzError, Capability};
pub use delegation::{
    inspect_statement, issue_delegation, issue_rekey, issue_revocation, verify_statement, Chain,
    ChainError, Statement, StatementError, StatementKind, Vouch,
};
pub use ecdsa::{SigEncoding, SignError, Signer, VerifyError};
pub use format::FormatError;
pub use keys::{KeyId, LocalKey, PublicKey};
pub use message::{MessageError, SealedMessage};
pub use node_key::{derive_node_key, NodeKeyError};
pub use share::{Dek, OpenedShare, SealedShare, ShareError};

/// Re-export of the `p256` crate generation this crate is built on, so callers
/// (e.g. a token-backed [`Signer`]) name the same `Signature`/`SecretKey` types.
pub use p256;
/// Re-export of the `rand_core` generation whose RNG traits this crate's APIs take.
pub use rand_core;
