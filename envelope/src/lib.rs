//! Cryppo-compatible serialized encryption for Keyward.
//!
//! Reads and writes the string format of Cryppo (Ruby `cryppo` >= 0.6, `@meeco/cryppo` 2.x)
//! byte for byte, and implements its strategies:
//!
//! | strategy | module | what |
//! |---|---|---|
//! | `Aes256Gcm` | [`aes256gcm`] | AES-256-GCM, 12-byte IV, tag in `at`, AAD = `ad` (default `"none"`) |
//! | `Pbkdf2Hmac` | [`pbkdf2`] | PBKDF2-HMAC-SHA256, 20-byte salt, 32-byte key |
//! | `Rsa4096` | [`rsa`] | RSA-OAEP SHA-1 / MGF1-SHA-1 |
//! | `Sign.Rsa4096` | [`sign`] | RSASSA-PKCS1-v1_5 SHA-256 |
//!
//! [`Serialized::parse`] / `to_string()` handle the layouts without cryptography (module
//! `serialized`); [`bson`] is the small artefact codec, and legacy YAML artefacts (Cryppo
//! < 0.6) are read but never written.
//!
//! All cryptography is done by `aws-lc-rs` (AWS-LC): constant-time RSA decryption (the `rsa`
//! crate is affected by RUSTSEC-2023-0071), and AES-GCM at OpenSSL speed. Secrets returned to
//! callers (derived keys, plaintexts) are `Zeroizing`.
//!
//! This crate must never panic on input (no `unwrap`/`expect` outside tests), never use
//! `unsafe`, and never write any format other than current Cryppo.
//!
//! ```
//! use keyward_envelope::{aes256gcm, Serialized};
//! let key = [7u8; 32];
//! let s = aes256gcm::encrypt(&key, b"secret", "dek-42").unwrap();
//! let parsed = Serialized::parse(&s).unwrap().into_encrypted().unwrap();
//! assert_eq!(parsed.ad(), Some("dek-42"));
//! assert_eq!(&*aes256gcm::decrypt(&parsed, &key).unwrap(), b"secret");
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod aes256gcm;
mod b64;
pub mod bson;
mod error;
pub mod pbkdf2;
mod pem;
pub mod rsa;
mod serialized;
pub mod sign;
pub mod stream;
mod yaml;

pub use error::{Error, Part, Result};
pub use serialized::{
    ArtefactFormat, Artefacts, DerivationArtefacts, DerivationStrategy, EncryptedData,
    EncryptionStrategy, GcmParts, Serialized, SignatureStrategy, SignedData,
};
