//! Deterministic node key derivation.
//!
//! `derive_node_key(secret, path)` turns a 32-byte derivation secret and a
//! node path (e.g. `"cluster-a/node-3"`) into a P-256 private key, so a node
//! key can be re-created from the secret instead of being stored.
//!
//! Construction (HKDF-SHA256, RFC 5869), in the style of RFC 9180
//! `DeriveKeyPair` for P-256:
//!
//! ```text
//! prk = HKDF-Extract(salt = "", ikm = secret)
//! for counter in 0..=255:
//!     okm = HKDF-Expand(prk, info = "keyward node v1" || path || I2OSP(counter, 1), 32)
//!     if 0 < OS2IP(okm) < n: return okm as the scalar
//! ```
//!
//! The counter is always the last info byte, so `(path, counter)` pairs never
//! collide. A candidate is out of range with probability ~2^-32, so the loop
//! practically never runs twice.
//!
//! This module must never return a zero or out-of-range scalar, never reduce
//! modulo `n` (that would bias keys), and never keep derived bytes outside
//! zeroizing buffers.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Label prefixed to the node path in the HKDF info.
pub const NODE_KEY_LABEL: &[u8] = b"keyward node v1";
/// Longest accepted node path, in bytes.
pub const MAX_PATH_LEN: usize = 255;

/// Errors deriving a node key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeKeyError {
    /// The path is empty, longer than [`MAX_PATH_LEN`], or contains control characters.
    #[error("invalid node path (must be 1..=255 bytes, no control characters)")]
    InvalidPath,
    /// 256 candidates were all out of range (probability ~2^-8192).
    #[error("no valid scalar found")]
    Exhausted,
}

/// Derives the node private key for `path` from `derivation_secret`.
pub fn derive_node_key(
    derivation_secret: &[u8; 32],
    path: &str,
) -> Result<p256::SecretKey, NodeKeyError> {
    if path.is_empty() || path.len() > MAX_PATH_LEN || path.chars().any(char::is_control) {
        return Err(NodeKeyError::InvalidPath);
    }
    let hk = Hkdf::<Sha256>::new(None, derivation_secret);
    let mut info = Zeroizing::new(Vec::with_capacity(NODE_KEY_LABEL.len() + path.len() + 1));
    info.extend_from_slice(NODE_KEY_LABEL);
    info.extend_from_slice(path.as_bytes());
    info.push(0);
    let last = info.len() - 1;
    for counter in 0..=255u8 {
        info[last] = counter;
        let mut okm = Zeroizing::new([0u8; 32]);
        hk.expand(&info, okm.as_mut_slice())
            .map_err(|_| NodeKeyError::Exhausted)?;
        if let Ok(sk) = p256::SecretKey::from_slice(okm.as_slice()) {
            return Ok(sk);
        }
    }
    Err(NodeKeyError::Exhausted)
}
