//! Key material types: [`PublicKey`], its [`KeyId`], and [`LocalKey`].
//!
//! This module is only about *what a key is*: a P-256 public key, the stable
//! identifier Keyward derives from it, and an in-memory private key. Textual
//! encodings live in [`crate::format`]; signing lives in [`crate::ecdsa`].
//!
//! It must never expose private key bytes through `Debug`/`Display`, never keep
//! a copy of private key bytes outside a zeroizing container, and never accept
//! the identity point or an off-curve point as a public key.

use core::fmt;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::format::FormatError;

/// A P-256 public key (always a valid, non-identity curve point).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(p256::PublicKey);

impl PublicKey {
    /// Wraps a `p256` public key.
    pub fn from_p256(key: p256::PublicKey) -> Self {
        Self(key)
    }

    /// The underlying `p256` public key.
    pub fn as_p256(&self) -> &p256::PublicKey {
        &self.0
    }

    /// Parses a SEC1 point, compressed (33 bytes) or uncompressed (65 bytes).
    pub fn from_sec1_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() != 33 && bytes.len() != 65 {
            return Err(FormatError::InvalidPoint);
        }
        p256::PublicKey::from_sec1_bytes(bytes)
            .map(Self)
            .map_err(|_| FormatError::InvalidPoint)
    }

    /// The compressed SEC1 encoding (`02`/`03` || x), 33 bytes.
    pub fn to_sec1_compressed(&self) -> [u8; 33] {
        let point = self.0.to_encoded_point(true);
        let mut out = [0u8; 33];
        out.copy_from_slice(point.as_bytes());
        out
    }

    /// The uncompressed SEC1 encoding (`04` || x || y), 65 bytes.
    pub fn to_sec1_uncompressed(&self) -> [u8; 65] {
        let point = self.0.to_encoded_point(false);
        let mut out = [0u8; 65];
        out.copy_from_slice(point.as_bytes());
        out
    }

    /// Keyward's identifier for this key: SHA-256 of the compressed SEC1 point.
    pub fn key_id(&self) -> KeyId {
        KeyId(Sha256::digest(self.to_sec1_compressed()).into())
    }

    /// The ECDSA verifying key for this public key.
    pub fn verifying_key(&self) -> p256::ecdsa::VerifyingKey {
        p256::ecdsa::VerifyingKey::from(&self.0)
    }
}

impl From<p256::PublicKey> for PublicKey {
    fn from(key: p256::PublicKey) -> Self {
        Self(key)
    }
}

impl From<PublicKey> for p256::PublicKey {
    fn from(key: PublicKey) -> Self {
        key.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_did_key())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_did_key())
    }
}

/// Stable identifier of a public key: SHA-256 over its compressed SEC1 point.
///
/// Used as the COSE `kid`, as the parent/issuer reference in delegation
/// statements, and as the recipient fingerprint of a sealed share.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// Lower-case hex of the 32 bytes.
    pub fn to_hex(&self) -> String {
        use core::fmt::Write;
        let mut s = String::with_capacity(64);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An in-memory P-256 private key.
///
/// The scalar lives in a [`p256::SecretKey`], which zeroizes itself on drop.
/// `Debug` shows only the public key. The agent should hold a `LocalKey` only
/// while it is in use (unwrapped from its keystore) and drop it afterwards.
#[derive(Clone)]
pub struct LocalKey {
    secret: p256::SecretKey,
    public: PublicKey,
}

impl LocalKey {
    /// Generates a fresh random key.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        Self::from_secret_key(p256::SecretKey::random(rng))
    }

    /// Wraps an existing secret key.
    pub fn from_secret_key(secret: p256::SecretKey) -> Self {
        let public = PublicKey(secret.public_key());
        Self { secret, public }
    }

    /// Builds a key from a 32-byte big-endian scalar (must be in `1..n`).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, FormatError> {
        p256::SecretKey::from_slice(bytes)
            .map(Self::from_secret_key)
            .map_err(|_| FormatError::InvalidScalar)
    }

    /// The 32-byte big-endian scalar, in a zeroizing buffer.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&self.secret.to_bytes());
        out
    }

    /// The underlying secret key.
    pub fn secret_key(&self) -> &p256::SecretKey {
        &self.secret
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Raw ECDH with `peer`: the x-coordinate of `d * peer`, zeroized on drop.
    pub fn diffie_hellman(&self, peer: &PublicKey) -> p256::ecdh::SharedSecret {
        p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.0.as_affine())
    }
}

impl From<p256::SecretKey> for LocalKey {
    fn from(secret: p256::SecretKey) -> Self {
        Self::from_secret_key(secret)
    }
}

impl fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_does_not_leak_secret() {
        let key = LocalKey::from_bytes(&[7u8; 32]).unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("did:key:zDn"));
        assert!(!dbg.contains("0707"));
    }

    #[test]
    fn zero_scalar_rejected() {
        assert!(matches!(
            LocalKey::from_bytes(&[0u8; 32]),
            Err(FormatError::InvalidScalar)
        ));
        assert!(matches!(
            LocalKey::from_bytes(&[0xff; 32]),
            Err(FormatError::InvalidScalar)
        ));
    }

    #[test]
    fn sec1_round_trip() {
        let key = LocalKey::from_bytes(&[9u8; 32]).unwrap().public_key();
        let c = key.to_sec1_compressed();
        let u = key.to_sec1_uncompressed();
        assert_eq!(PublicKey::from_sec1_bytes(&c).unwrap(), key);
        assert_eq!(PublicKey::from_sec1_bytes(&u).unwrap(), key);
        assert!(PublicKey::from_sec1_bytes(&c[..32]).is_err());
        assert_eq!(key.key_id().to_hex().len(), 64);
    }
}
