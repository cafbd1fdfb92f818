//! The crate's single error type.
//!
//! Every failure of parsing, decoding, decrypting or verifying is reported as a variant of
//! [`Error`] that names *what* is wrong and, for format errors, *where* (which [`Part`] of the
//! dot-separated string, which artefact field). This module must never carry secret material in
//! an error (no key bytes, no plaintext, no passphrase): errors end up in logs.

use core::fmt;

/// One of the dot-separated parts of a Cryppo string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Part {
    /// The encryption strategy name (`Aes256Gcm`, `Rsa4096`), or `Sign` of a signature.
    Strategy,
    /// The base64 ciphertext.
    Ciphertext,
    /// The base64 `'A'`-prefixed encryption artefacts.
    Artefacts,
    /// The key derivation strategy name (`Pbkdf2Hmac`).
    DerivationStrategy,
    /// The base64 `'K'`-prefixed key derivation artefacts.
    DerivationArtefacts,
    /// The signature strategy name after `Sign.` (`Rsa4096`).
    SignatureStrategy,
    /// The base64 signature bytes.
    Signature,
    /// The base64 signed data.
    SignedData,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Strategy => "strategy part",
            Part::Ciphertext => "ciphertext part",
            Part::Artefacts => "encryption artefacts part",
            Part::DerivationStrategy => "derivation strategy part",
            Part::DerivationArtefacts => "derivation artefacts part",
            Part::SignatureStrategy => "signature strategy part",
            Part::Signature => "signature part",
            Part::SignedData => "signed data part",
        })
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The string does not have 2, 3, 4 or 5 dot-separated parts (or the count does not fit
    /// the strategy found in the first part).
    #[error("expected {expected} dot-separated parts, found {found}")]
    PartCount {
        /// What the layout allows.
        expected: &'static str,
        /// How many parts the input has.
        found: usize,
    },
    /// The encryption strategy is not one this crate knows.
    #[error("unknown encryption strategy {0:?}")]
    UnknownStrategy(String),
    /// The key derivation strategy is not one this crate knows.
    #[error("unknown key derivation strategy {0:?}")]
    UnknownDerivationStrategy(String),
    /// The signature strategy is not one this crate knows.
    #[error("unknown signature strategy {0:?}")]
    UnknownSignatureStrategy(String),
    /// A part uses the standard base64 alphabet (`+` or `/`); Cryppo uses the URL-safe one.
    #[error("{part}: standard base64 character {found:?} at offset {offset}; Cryppo requires URL-safe base64 ('-' and '_')")]
    StandardBase64 {
        /// The offending part.
        part: Part,
        /// Offset of the first `+` or `/` within the part.
        offset: usize,
        /// The character found.
        found: char,
    },
    /// A part is not valid padded URL-safe base64.
    #[error("{part}: invalid URL-safe base64: {source}")]
    Base64 {
        /// The offending part.
        part: Part,
        /// What the decoder objected to.
        #[source]
        source: base64::DecodeError,
    },
    /// An artefacts part does not start with its version byte (`'A'` or `'K'`) nor with `---`.
    #[error("{part}: expected version byte {expected:?} or legacy YAML, found {found:?}")]
    Version {
        /// The offending part.
        part: Part,
        /// The version byte expected.
        expected: char,
        /// The first byte found, if any.
        found: Option<u8>,
    },
    /// The BSON document of an artefacts part is malformed.
    #[error("{part}: malformed BSON at offset {offset}: {reason}")]
    Bson {
        /// The offending part.
        part: Part,
        /// Byte offset within the document (after the version byte).
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The legacy YAML text of an artefacts part is malformed or uses YAML this crate does not read.
    #[error("{part}: unreadable legacy YAML at line {line}: {reason}")]
    Yaml {
        /// The offending part.
        part: Part,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An artefacts document holds the same key twice.
    #[error("{part}: duplicate field {field:?}")]
    DuplicateField {
        /// The offending part.
        part: Part,
        /// The repeated key.
        field: String,
    },
    /// A required artefact field is absent.
    #[error("{part}: missing field {field:?}")]
    MissingField {
        /// The offending part.
        part: Part,
        /// The missing key.
        field: &'static str,
    },
    /// An artefact field has the wrong type or size.
    #[error("{part}: field {field:?} {problem}")]
    InvalidField {
        /// The offending part.
        part: Part,
        /// The key.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A value does not fit the format (e.g. a string longer than BSON's 2 GiB limit).
    #[error("{0} is too large to serialize")]
    TooLarge(&'static str),
    /// The operation needs another kind of Cryppo data than the one given.
    #[error("expected {expected}, found {found}")]
    WrongKind {
        /// What the operation needs.
        expected: &'static str,
        /// What the input is.
        found: &'static str,
    },
    /// A PBKDF2 iteration count is 0 or above [`crate::pbkdf2::MAX_ITERATIONS`].
    #[error("PBKDF2 iteration count {iterations} is outside 1..={max}")]
    Iterations {
        /// The count asked for.
        iterations: u64,
        /// The largest count accepted.
        max: u32,
    },
    /// Authenticated decryption failed: wrong key, wrong `ad`, or tampered ciphertext/artefacts.
    #[error("decryption failed: wrong key or tampered data")]
    Decrypt,
    /// The signature does not verify under the given public key.
    #[error("signature verification failed")]
    Verify,
    /// A PEM or DER key could not be used.
    #[error("invalid key: {0}")]
    Key(&'static str),
    /// The plaintext is too long for the strategy (RSA-OAEP).
    #[error("plaintext of {len} bytes is too long; at most {max} bytes")]
    PlaintextTooLong {
        /// Plaintext length.
        len: usize,
        /// Largest length accepted by the key.
        max: usize,
    },
    /// The cryptographic backend failed (random number generator, allocation).
    #[error("cryptographic backend failure: {0}")]
    Backend(&'static str),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
