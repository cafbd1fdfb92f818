//! HPKE (RFC 9180) for Keyward: exactly one suite, auth mode, single shot.
//!
//! Suite: DHKEM(P-256, HKDF-SHA256) (KEM 0x0010), HKDF-SHA256 (KDF 0x0001),
//! AES-256-GCM (AEAD 0x0002); mode `mode_auth` (0x02), so the recipient learns
//! that the sender held the sender private key. This module is the thin,
//! suite-pinned wrapper over the `hpke` crate; the sealed-share *format* is
//! [`crate::share`].
//!
//! It must never offer another suite or mode, never return plaintext from a
//! failed AEAD open, and never keep private key copies beyond the call (the
//! `hpke` crate's key types wrap zeroize-on-drop `p256::SecretKey`s).
//!
//! # Token-held keys
//!
//! Auth-mode encapsulation needs two ECDHs with the *sender* private key
//! (`DH(skE, pkR) || DH(skS, pkR)`), and decapsulation two with the
//! *recipient* private key (`DH(skR, pkE) || DH(skR, pkS)`). The `hpke` crate
//! (0.12) only takes in-memory private keys: its `Kem::encap`/`decap` have no
//! hook for an external ECDH. So the agent unwraps the keypair's private half
//! into a [`LocalKey`] for the duration of one seal/open and drops it
//! (zeroizing) afterwards.
//!
//! Should a key ever have to stay on a token, the KEM can be done outside the
//! `hpke` crate with the token's ECDH (PKCS#11 `CKM_ECDH1_DERIVE`, PIV
//! GENERAL AUTHENTICATE with the key-agreement template) supplying the two
//! 32-byte x-coordinates `dh = dh1 || dh2`; then, per RFC 9180 §4.1,
//! `kem_context = enc || pkRm || pkSm`,
//! `shared_secret = ExtractAndExpand(dh, kem_context)` with
//! `suite_id = "KEM" || 0x0010`, followed by the normal key schedule
//! (§5.1) and AES-256-GCM. The vector test in this crate pins every value
//! such an implementation must reproduce.

use hpke::kem::Kem as KemTrait;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::keys::{LocalKey, PublicKey};

/// The KEM: DHKEM(P-256, HKDF-SHA256).
pub type Kem = hpke::kem::DhP256HkdfSha256;
/// The KDF: HKDF-SHA256.
pub type Kdf = hpke::kdf::HkdfSha256;
/// The AEAD: AES-256-GCM.
pub type Aead = hpke::aead::AesGcm256;

/// RFC 9180 KEM identifier of DHKEM(P-256, HKDF-SHA256).
pub const KEM_ID: u16 = 0x0010;
/// RFC 9180 KDF identifier of HKDF-SHA256.
pub const KDF_ID: u16 = 0x0001;
/// RFC 9180 AEAD identifier of AES-256-GCM.
pub const AEAD_ID: u16 = 0x0002;
/// RFC 9180 mode identifier of `mode_auth`.
pub const MODE_AUTH: u8 = 0x02;
/// Length of the encapsulated key (an uncompressed P-256 point).
pub const ENC_LEN: usize = 65;

/// Errors from HPKE seal/open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HpkeError {
    /// The encapsulated key is not a valid P-256 point.
    #[error("malformed HPKE encapsulated key")]
    BadEncappedKey,
    /// Encapsulation failed (e.g. an ECDH produced the identity).
    #[error("HPKE encapsulation failed")]
    Encap,
    /// Decapsulation failed.
    #[error("HPKE decapsulation failed")]
    Decap,
    /// AEAD sealing failed.
    #[error("HPKE seal failed")]
    Seal,
    /// AEAD authentication failed: wrong recipient key, wrong sender, wrong
    /// info/aad, or a tampered ciphertext.
    #[error("HPKE open failed: authentication tag mismatch")]
    Open,
    /// Any other error reported by the HPKE implementation.
    #[error("HPKE error: {0}")]
    Other(String),
}

fn map_err(e: hpke::HpkeError) -> HpkeError {
    match e {
        hpke::HpkeError::EncapError => HpkeError::Encap,
        hpke::HpkeError::DecapError => HpkeError::Decap,
        hpke::HpkeError::SealError => HpkeError::Seal,
        hpke::HpkeError::OpenError => HpkeError::Open,
        other => HpkeError::Other(other.to_string()),
    }
}

/// Output of [`seal_auth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The encapsulated key `enc` (65 bytes).
    pub enc: Vec<u8>,
    /// The AEAD ciphertext including the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

fn to_hpke_private(key: &LocalKey) -> Result<<Kem as KemTrait>::PrivateKey, HpkeError> {
    let bytes = key.to_bytes();
    <Kem as KemTrait>::PrivateKey::from_bytes(bytes.as_slice())
        .map_err(|e| HpkeError::Other(e.to_string()))
}

fn to_hpke_public(key: &PublicKey) -> Result<<Kem as KemTrait>::PublicKey, HpkeError> {
    <Kem as KemTrait>::PublicKey::from_bytes(&key.to_sec1_uncompressed())
        .map_err(|e| HpkeError::Other(e.to_string()))
}

/// `SealAuth(pkR, info, aad, pt, skS)` (RFC 9180 §6.1) with Keyward's suite.
pub fn seal_auth<R: CryptoRng + RngCore>(
    recipient: &PublicKey,
    sender: &LocalKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Sealed, HpkeError> {
    let mode = OpModeS::<Kem>::Auth((
        to_hpke_private(sender)?,
        to_hpke_public(&sender.public_key())?,
    ));
    let pk_r = to_hpke_public(recipient)?;
    let (enc, ciphertext) =
        hpke::single_shot_seal::<Aead, Kdf, Kem, R>(&mode, &pk_r, info, plaintext, aad, rng)
            .map_err(map_err)?;
    Ok(Sealed {
        enc: enc.to_bytes().to_vec(),
        ciphertext,
    })
}

/// `OpenAuth(enc, skR, info, aad, ct, pkS)` (RFC 9180 §6.1) with Keyward's suite.
pub fn open_auth(
    recipient: &LocalKey,
    sender: &PublicKey,
    enc: &[u8],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HpkeError> {
    let mode = OpModeR::<Kem>::Auth(to_hpke_public(sender)?);
    let enc =
        <Kem as KemTrait>::EncappedKey::from_bytes(enc).map_err(|_| HpkeError::BadEncappedKey)?;
    let sk_r = to_hpke_private(recipient)?;
    hpke::single_shot_open::<Aead, Kdf, Kem>(&mode, &sk_r, &enc, info, ciphertext, aad)
        .map(Zeroizing::new)
        .map_err(map_err)
}
