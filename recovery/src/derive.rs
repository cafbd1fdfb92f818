//! The frozen derivation from the recovery secret to the recovery P-256 key.
//!
//! **Frozen (v1).** Changing anything below makes every recovery phrase ever
//! printed useless; a change is a new version with a new salt, never an edit.
//! The published vectors in `recovery/tests/vectors/derive.json` pin it.
//!
//! ```text
//! IKM     = the 32-byte recovery secret (the BIP39 *entropy*, not the BIP39 seed)
//! salt    = "keyward/recovery/v1"                          (19 ASCII bytes)
//! PRK     = HKDF-Extract-SHA256(salt, IKM)
//! for c in 0, 1, ..., 255:
//!     info = "keyward/recovery/v1/p256-scalar" || c       (31 ASCII bytes, then one byte c)
//!     OKM  = HKDF-Expand-SHA256(PRK, info, 32)
//!     d    = OKM read as a 32-byte big-endian unsigned integer
//!     if 1 <= d < n: the private key is d; stop              (n = the P-256 group order)
//!     else: next c                                           (rejection sampling)
//! public key = d * G
//! ```
//!
//! `n = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551`, so
//! a uniform 256-bit value is `>= n` with probability about `2^-32` and is 0
//! with probability `2^-256`: almost every secret stops at `c = 0`, the
//! retry is taken about once in four billion secrets, and a second retry
//! essentially never. If all 256 counters were rejected (probability about
//! `2^-8192`) the derivation fails with [`DeriveError::Exhausted`] rather than
//! bias the key. Rejection sampling (not `OKM mod n`) keeps `d` exactly
//! uniform over `[1, n)`, and a 32-byte OKM keeps the rule trivial to
//! reimplement.
//!
//! **Why the entropy and not the BIP39 seed.** BIP39 turns the words into a
//! seed with PBKDF2-HMAC-SHA512 (2048 rounds) over the words and a
//! passphrase. Keyward uses no BIP39 passphrase; the entropy is already 256
//! uniform bits, so there is nothing for a slow hash to stretch (a 2048-round
//! PBKDF2 adds no security to a 256-bit secret); and the entropy is what the
//! Shamir shares carry, so every path (words, shares) reaches the key through
//! the same 32 bytes. HKDF gives domain separation (the salt and info name
//! Keyward, the version and the use), so the same words used elsewhere (as a
//! wallet seed, say, which goes through PBKDF2) yield an unrelated key.
//!
//! The retry path cannot be exercised by a published vector without searching
//! about 2^32 secrets; it is tested instead by unit tests that inject the
//! OKM function (`derive_with`), including OKM = n, OKM = 0 and OKM = 2^256-1.
//!
//! This module must never log or return the scalar outside a zeroizing type,
//! and never change the constants above.

use hkdf::Hkdf;
use keyward_identity::{LocalKey, PublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::secret::RecoverySecret;

/// HKDF salt of the v1 derivation.
pub const SALT: &[u8] = b"keyward/recovery/v1";
/// HKDF info prefix of the v1 derivation; the counter byte follows it.
pub const INFO_PREFIX: &[u8] = b"keyward/recovery/v1/p256-scalar";

/// Errors deriving the recovery key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeriveError {
    /// All 256 counters produced 0 or a value `>= n` (probability ~2^-8192).
    #[error("recovery key derivation rejected all 256 candidates")]
    Exhausted,
}

/// The recovery key pair derived from a [`RecoverySecret`].
///
/// Holds the private key as a [`LocalKey`] (its `p256::SecretKey` zeroizes on
/// drop); `Debug` shows only the public key.
#[derive(Clone)]
pub struct RecoveryKey {
    key: LocalKey,
    counter: u8,
}

impl core::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RecoveryKey({})", self.key.public_key())
    }
}

impl RecoveryKey {
    /// Runs the frozen v1 derivation.
    pub fn derive(secret: &RecoverySecret) -> Result<Self, DeriveError> {
        let hk = Hkdf::<Sha256>::new(Some(SALT), secret.as_bytes());
        derive_with(|counter| {
            let mut info = [0u8; INFO_PREFIX.len() + 1];
            info[..INFO_PREFIX.len()].copy_from_slice(INFO_PREFIX);
            info[INFO_PREFIX.len()] = counter;
            let mut okm = Zeroizing::new([0u8; 32]);
            // 32 bytes is far below HKDF-SHA256's 255*32 limit: expand cannot fail.
            hk.expand(&info, okm.as_mut()).map(|()| okm).ok()
        })
    }

    /// The public key (what the agent keeps, and what the shares' tag names).
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The public key as a `did:key`.
    pub fn did_key(&self) -> String {
        self.key.public_key().to_did_key()
    }

    /// The private key, for unwrapping KEKs, signing shares and HPKE sealing.
    pub fn local_key(&self) -> &LocalKey {
        &self.key
    }

    /// The 32-byte big-endian private scalar (for the published vectors).
    pub fn scalar_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.key.to_bytes()
    }

    /// The counter byte at which the derivation stopped (0 for almost every secret).
    pub fn counter(&self) -> u8 {
        self.counter
    }
}

/// The rejection loop over an OKM function `okm(counter)`. `None` from
/// `okm` (an HKDF failure, impossible for 32 bytes) counts as a rejection.
pub(crate) fn derive_with<F>(mut okm: F) -> Result<RecoveryKey, DeriveError>
where
    F: FnMut(u8) -> Option<Zeroizing<[u8; 32]>>,
{
    for counter in 0..=u8::MAX {
        let Some(candidate) = okm(counter) else {
            continue;
        };
        // `from_bytes` accepts exactly 1 <= d < n (big-endian), in constant time.
        if let Ok(key) = LocalKey::from_bytes(&candidate) {
            return Ok(RecoveryKey { key, counter });
        }
    }
    Err(DeriveError::Exhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];

    fn n_minus_1() -> [u8; 32] {
        let mut v = N;
        v[31] -= 1;
        v
    }

    #[test]
    fn n_is_the_p256_order() {
        // n - 1 is the largest valid scalar; n itself is rejected.
        assert!(LocalKey::from_bytes(&n_minus_1()).is_ok());
        assert!(LocalKey::from_bytes(&N).is_err());
    }

    #[test]
    fn retry_path_skips_zero_n_and_above() {
        let mut seen = Vec::new();
        let key = derive_with(|c| {
            seen.push(c);
            Some(Zeroizing::new(match c {
                0 => N,
                1 => [0u8; 32],
                2 => [0xff; 32],
                _ => n_minus_1(),
            }))
        })
        .unwrap();
        assert_eq!(seen, vec![0, 1, 2, 3]);
        assert_eq!(key.counter(), 3);
        assert_eq!(*key.scalar_bytes(), n_minus_1());
    }

    #[test]
    fn a_valid_first_candidate_is_taken_as_is() {
        let mut one = [0u8; 32];
        one[31] = 1;
        let key = derive_with(|_| Some(Zeroizing::new(one))).unwrap();
        assert_eq!(key.counter(), 0);
        assert_eq!(*key.scalar_bytes(), one);
        // d = 1: the public key is the generator.
        assert_eq!(
            key.public_key().as_p256().as_affine(),
            &p256::AffinePoint::GENERATOR
        );
    }

    #[test]
    fn exhausting_all_counters_is_a_typed_error() {
        let mut calls = 0u32;
        let r = derive_with(|_| {
            calls += 1;
            Some(Zeroizing::new(N))
        });
        assert_eq!(r.unwrap_err(), DeriveError::Exhausted);
        assert_eq!(calls, 256);
    }

    #[test]
    fn real_derivation_matches_a_manual_hkdf() {
        let secret = RecoverySecret::from_bytes([0x42; 32]);
        let key = RecoveryKey::derive(&secret).unwrap();
        let hk = Hkdf::<Sha256>::new(Some(b"keyward/recovery/v1"), &[0x42; 32]);
        let mut okm = [0u8; 32];
        hk.expand(b"keyward/recovery/v1/p256-scalar\x00", &mut okm)
            .unwrap();
        assert_eq!(key.counter(), 0);
        assert_eq!(*key.scalar_bytes(), okm);
        // Deterministic.
        assert_eq!(
            RecoveryKey::derive(&secret).unwrap().public_key(),
            key.public_key()
        );
        // Another secret, another key.
        let other = RecoveryKey::derive(&RecoverySecret::from_bytes([0x43; 32])).unwrap();
        assert_ne!(other.public_key(), key.public_key());
    }

    #[test]
    fn debug_shows_only_the_public_key() {
        let key = RecoveryKey::derive(&RecoverySecret::from_bytes([7; 32])).unwrap();
        let d = format!("{key:?}");
        assert!(d.starts_with("RecoveryKey(did:key:"));
        assert!(!d.contains(&hex::encode(*key.scalar_bytes())));
    }
}
