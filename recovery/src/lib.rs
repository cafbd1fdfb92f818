//! Keyward offline and social recovery: the cryptographic core (issue 14,
//! parts 5 and 6).
//!
//! A *recovery secret* is 256 random bits. The owner sees it once as 24 BIP39
//! English words ([`words`]); a frozen derivation ([`derive`]) turns it into a
//! P-256 *recovery key*, whose public half is all the agent keeps (KEKs are
//! wrapped to it with the `ecdh-p256` scheme). For social recovery the secret
//! is split K-of-N with Shamir over GF(256) ([`shamir`]); each share is signed
//! by the recovery key and sealed to a trustee's `did:key` (HPKE auth mode,
//! the recovery key as sender), released by the trustee to the owner's
//! one-time [`request`] key, and combined back into the secret.
//!
//! Module map:
//! - [`secret`]: the zeroizing [`RecoverySecret`].
//! - [`words`]: secret <-> 24 words, with typed errors (count, unknown word, checksum).
//! - [`derive`]: the frozen v1 derivation secret -> [`RecoveryKey`] (vectors in
//!   `tests/vectors/derive.json`).
//! - [`shamir`]: [`ShareSet::split`] -> [`SealedShare`] -> [`HeldShare`] ->
//!   [`ReleasedShare`] -> [`combine`].
//! - [`request`]: the owner's one-time [`RequestKey`] and its 0600 file.
//!
//! Crates: `bip39` (English word list, checksum; no std, no Unicode
//! normalisation, zeroize) and `blahaj` (GF(256) Shamir, the fixed fork of
//! `sharks`, RUSTSEC-2024-0398). Keys, `did:key`, HPKE and COSE come from
//! `keyward-identity`.
//!
//! **What this crate must never do:** write the secret, the words, a share
//! value or a private scalar anywhere (the only file it writes is the request
//! key, at mode 0600, where the caller says), log them, put them in an error
//! or a `Debug` output, or keep them outside zeroizing containers. It does no
//! other I/O and keeps no state. Residual copies it cannot reach: the `bip39`
//! parser's stack arrays and `blahaj`'s interpolation temporaries are not
//! zeroized by those crates, nor is `ciborium`'s decoding scratch buffer
//! (a share value passes through it when a share is opened). `coset` never
//! sees a share value (statements carry its hash). Callers should run recovery in a process with core dumps disabled
//! (as `keywardd` does, `agent/src/hardening.rs`) and drop the values soon.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod derive;
pub mod request;
pub mod secret;
pub mod shamir;
pub mod words;

pub use derive::{DeriveError, RecoveryKey};
pub use request::{RequestError, RequestKey};
pub use secret::{RecoverySecret, SECRET_LEN};
pub use shamir::{
    combine, HeldShare, Hint, Recovered, ReleasedShare, SealedShare, ShareError, ShareSet,
    ShareTag, Tamper,
};
pub use words::{from_words, to_words, WordsError};
