//! The `ecdh-p256` wrapping scheme: a KEK wrapped to a P-256 root key that lives on a PIV card
//! (YubiKey) or an EC-only PKCS#11 token, which can do ECDH but no AES key wrap.
//!
//! Wrap (software only, needs just the root's public key):
//! 1. a fresh ephemeral P-256 key pair `e`, `E = e·G`;
//! 2. `z` = x coordinate of `e·R` (R the root public key; 32 bytes, what PIV "decrypt" and
//!    CKM_ECDH1_DERIVE with KDF NULL return);
//! 3. `k` = HKDF-SHA256(salt = none, ikm = z, info = `INFO` ‖ E ‖ R), 32 bytes, with E and R as
//!    uncompressed SEC1 points (65 bytes each);
//! 4. `w` = AES-256 key wrap (RFC 3394, no padding) of the 32-byte KEK under `k` (40 bytes).
//!
//! Stored bytes: `E` (65) ‖ `w` (40) = 105 bytes. Unwrap: the hardware computes `z` from `E`
//! with the root's private key; then steps 3 and 4 backwards in software. A wrong root or
//! tampered bytes fail the RFC 3394 integrity check (`DecryptFailed`).
//!
//! This module does no I/O: the ECDH on the hardware is a closure given by the backend. It must
//! never return `z`, `k` or the KEK except the KEK to its caller (all in `Zeroizing`).

use super::RootError;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand_core::OsRng;
use sha2::Sha256;
use zeroize::Zeroizing;

/// HKDF info prefix (then the ephemeral and the root public key).
pub const INFO: &[u8] = b"keyward ecdh-p256 kek-wrap v1";
/// Uncompressed SEC1 P-256 point.
pub const POINT_LEN: usize = 65;
/// RFC 3394 output for a 32-byte key.
pub const WRAPPED_LEN: usize = 40;

/// The uncompressed SEC1 encoding (65 bytes) of a public key.
pub fn sec1(pk: &PublicKey) -> Vec<u8> {
    pk.to_encoded_point(false).as_bytes().to_vec()
}

fn wrapping_key(
    z: &[u8],
    eph: &[u8],
    root: &[u8],
    op: &'static str,
) -> Result<Zeroizing<[u8; 32]>, RootError> {
    if z.len() != 32 {
        return Err(RootError::token(
            op,
            format!("ECDH returned {} bytes, not 32", z.len()),
        ));
    }
    let mut info = Vec::with_capacity(INFO.len() + 2 * POINT_LEN);
    info.extend_from_slice(INFO);
    info.extend_from_slice(eph);
    info.extend_from_slice(root);
    let mut k = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, z)
        .expand(&info, k.as_mut())
        .map_err(|_| RootError::token(op, "HKDF output length"))?;
    Ok(k)
}

/// Wrap `kek` to the root public key with a fresh ephemeral key.
pub fn wrap(root: &PublicKey, kek: &[u8; 32]) -> Result<Vec<u8>, RootError> {
    wrap_with(root, &SecretKey::random(&mut OsRng), kek)
}

/// [`wrap`] with a given ephemeral secret (for fixed test vectors).
pub fn wrap_with(
    root: &PublicKey,
    ephemeral: &SecretKey,
    kek: &[u8; 32],
) -> Result<Vec<u8>, RootError> {
    const OP: &str = "wrap KEK (ecdh-p256)";
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), root.as_affine());
    let eph = sec1(&ephemeral.public_key());
    let k = wrapping_key(shared.raw_secret_bytes(), &eph, &sec1(root), OP)?;
    let w = aes_kw::KekAes256::from(*k)
        .wrap_vec(kek)
        .map_err(|e| RootError::token(OP, e.to_string()))?;
    let mut out = eph;
    out.extend_from_slice(&w);
    Ok(out)
}

/// Unwrap stored bytes. `ecdh` gets the ephemeral public key (uncompressed SEC1, validated as a
/// point on the curve) and returns the 32-byte x coordinate of the shared point, computed with
/// the root's private key (on the card or token).
pub fn unwrap(
    root: &PublicKey,
    stored: &[u8],
    ecdh: impl FnOnce(&[u8]) -> Result<Zeroizing<Vec<u8>>, RootError>,
) -> Result<Zeroizing<[u8; 32]>, RootError> {
    const OP: &str = "unwrap KEK (ecdh-p256)";
    if stored.len() != POINT_LEN + WRAPPED_LEN {
        return Err(RootError::token(
            OP,
            format!(
                "a wrapped KEK is {} bytes, not {}",
                stored.len(),
                POINT_LEN + WRAPPED_LEN
            ),
        ));
    }
    let (eph, w) = stored.split_at(POINT_LEN);
    if eph[0] != 0x04 || PublicKey::from_sec1_bytes(eph).is_err() {
        return Err(RootError::token(
            OP,
            "the ephemeral key is not an uncompressed P-256 point",
        ));
    }
    let z = ecdh(eph)?;
    let k = wrapping_key(&z, eph, &sec1(root), OP)?;
    let kek = Zeroizing::new(
        aes_kw::KekAes256::from(*k)
            .unwrap_vec(w)
            .map_err(|_| RootError::DecryptFailed { op: OP })?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    if kek.len() != 32 {
        return Err(RootError::token(OP, "the unwrapped KEK is not 32 bytes"));
    }
    out.copy_from_slice(&kek);
    Ok(out)
}

/// ECDH in software: what a card does with its private key (tests; and the reference).
pub fn software_ecdh(
    secret: &SecretKey,
    peer_sec1: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RootError> {
    let peer = PublicKey::from_sec1_bytes(peer_sec1)
        .map_err(|_| RootError::token("ECDH", "not a P-256 point"))?;
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
    Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hex_scalar: &str) -> SecretKey {
        SecretKey::from_slice(&hex::decode(hex_scalar).unwrap()).unwrap()
    }

    #[test]
    fn wrap_in_software_unwrap_with_a_software_card() {
        let card = SecretKey::random(&mut OsRng);
        let root = card.public_key();
        let kek = [0x5a; 32];
        let stored = wrap(&root, &kek).unwrap();
        assert_eq!(stored.len(), 105);
        assert_eq!(stored[0], 0x04);
        let got = unwrap(&root, &stored, |e| software_ecdh(&card, e)).unwrap();
        assert_eq!(*got, kek);
        // Two wraps of the same KEK differ (fresh ephemeral keys).
        assert_ne!(wrap(&root, &kek).unwrap(), stored);
    }

    #[test]
    fn wrong_card_or_tampering_fails_the_integrity_check() {
        let card = SecretKey::random(&mut OsRng);
        let other = SecretKey::random(&mut OsRng);
        let root = card.public_key();
        let stored = wrap(&root, &[1; 32]).unwrap();
        assert!(matches!(
            unwrap(&root, &stored, |e| software_ecdh(&other, e)),
            Err(RootError::DecryptFailed { .. })
        ));
        let mut bad = stored.clone();
        bad[100] ^= 1;
        assert!(matches!(
            unwrap(&root, &bad, |e| software_ecdh(&card, e)),
            Err(RootError::DecryptFailed { .. })
        ));
        // Not a point: refused before the card is asked.
        let mut bad = stored.clone();
        bad[10] ^= 1;
        assert!(matches!(
            unwrap(&root, &bad, |_| panic!("card asked")),
            Err(RootError::Token { .. })
        ));
        assert!(matches!(
            unwrap(&root, &stored[..104], |_| panic!("card asked")),
            Err(RootError::Token { .. })
        ));
    }

    /// Fixed vector. Cross-checked independently with Python `cryptography` 48
    /// (ECDH, HKDF-SHA256, aes_key_wrap) when written; it pins the stored format.
    #[test]
    fn fixed_vector() {
        let root = key("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721");
        let eph = key("519b423d715f8b581f4fa8ee59f4771a5b44c8130b4e3eacca54a56dda72b464");
        let kek: [u8; 32] =
            hex::decode("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
                .unwrap()
                .try_into()
                .unwrap();
        let stored = wrap_with(&root.public_key(), &eph, &kek).unwrap();
        assert_eq!(hex::encode(&stored), EXPECTED);
        let got = unwrap(&root.public_key(), &stored, |e| software_ecdh(&root, e)).unwrap();
        assert_eq!(*got, kek);
    }

    const EXPECTED: &str = concat!(
        "041ccbe91c075fc7f4f033bfa248db8fccd3565de94bbfb12f3c59ff46c271bf83",
        "ce4014c68811f9a21a1fdb2c0e6113e06db7ca93b7404e78dc7ccd5ca89a4ca937",
        "e69e19053ec509e9d087b05d197ad70208e86d81b408be124aafc630a68147d35a",
        "d3315e2a6546"
    );
}
