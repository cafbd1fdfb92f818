//! The recovery secret: 256 uniformly random bits, zeroized on drop.
//!
//! This module only holds the 32 bytes. It must never implement `Display`,
//! `Serialize` or a revealing `Debug`, and never copy the bytes outside a
//! zeroizing container.

use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of the recovery secret in bytes (256 bits, 24 BIP39 words).
pub const SECRET_LEN: usize = 32;

/// The 32-byte recovery secret (the BIP39 entropy), zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct RecoverySecret([u8; SECRET_LEN]);

impl RecoverySecret {
    /// A fresh secret from `rng` (the agent passes `OsRng`).
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let mut s = Self([0u8; SECRET_LEN]);
        rng.fill_bytes(&mut s.0);
        s
    }

    /// Wraps existing bytes (test vectors, the output of [`crate::words::from_words`]
    /// or of a Shamir combine).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl core::fmt::Debug for RecoverySecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RecoverySecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_does_not_show_the_bytes() {
        let s = RecoverySecret::from_bytes([0xab; 32]);
        let d = format!("{s:?}");
        assert_eq!(d, "RecoverySecret(<redacted>)");
        assert!(!d.contains("ab"));
    }

    #[test]
    fn generate_uses_the_rng() {
        let a = RecoverySecret::generate(&mut rand_core::OsRng);
        let b = RecoverySecret::generate(&mut rand_core::OsRng);
        assert_ne!(a, b);
    }
}
