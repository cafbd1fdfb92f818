//! ES256 COSE_Sign1 (RFC 9052): sign a payload with a [`Signer`], verify with
//! a [`PublicKey`].
//!
//! This module only knows the COSE envelope: the Sig_structure, the ES256
//! algorithm header and the raw `r || s` signature encoding. What a payload
//! means is [`crate::delegation`]'s business.
//!
//! It must never verify with any algorithm other than ES256, never accept an
//! `alg` that is only in the unprotected header for Keyward's own messages
//! (see [`verify_es256`] vs [`verify_es256_protected`]), and never return a
//! payload from a message whose signature did not verify.

use coset::iana;
use coset::{CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use p256::ecdsa::Signature;

use crate::ecdsa::{self, Signer};
use crate::keys::PublicKey;

/// Errors building, parsing or verifying a COSE_Sign1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Sign1Error {
    /// The bytes are not a COSE_Sign1 (tagged with 18, or untagged).
    #[error("malformed COSE_Sign1: {0}")]
    Malformed(String),
    /// The protected header does not say `alg: ES256`.
    #[error("COSE_Sign1 protected header must carry alg ES256")]
    WrongAlgorithm,
    /// The message has no (attached) payload.
    #[error("COSE_Sign1 has no attached payload")]
    MissingPayload,
    /// The signature is not 64 bytes of `r || s`.
    #[error("COSE_Sign1 signature is not a 64-byte ES256 signature")]
    MalformedSignature,
    /// The signature does not verify.
    #[error("COSE_Sign1 signature does not verify")]
    BadSignature,
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] ecdsa::SignError),
    /// CBOR encoding failed.
    #[error("COSE encoding failed: {0}")]
    Encode(String),
}

/// Signs `payload` as a tagged COSE_Sign1 with protected `alg: ES256` and
/// `kid`, and no external AAD.
pub fn sign_es256<S: Signer + ?Sized>(
    signer: &S,
    kid: &[u8],
    payload: Vec<u8>,
) -> Result<Vec<u8>, Sign1Error> {
    sign_es256_message(kid, payload, |tbs| {
        Ok(ecdsa::sign_message(signer, tbs)?.to_bytes().to_vec())
    })
}

/// As [`sign_es256`], for a key that signs messages rather than digests (a device key,
/// possibly on a token): `sign` gets the Sig_structure (which it hashes with SHA-256, as
/// ECDSA P-256 with SHA-256 does) and answers the signature, DER or raw `r || s`.
pub fn sign_es256_message(
    kid: &[u8],
    payload: Vec<u8>,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, Sign1Error>,
) -> Result<Vec<u8>, Sign1Error> {
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .key_id(kid.to_vec())
        .build();
    let msg = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .try_create_signature(b"", |tbs| -> Result<Vec<u8>, Sign1Error> {
            let raw = sign(tbs)?;
            let sig = if raw.len() == 64 {
                Signature::from_slice(&raw)
            } else {
                Signature::from_der(&raw)
            }
            .map_err(|_| Sign1Error::MalformedSignature)?;
            Ok(sig.to_bytes().to_vec())
        })?
        .build();
    msg.to_tagged_vec()
        .map_err(|e| Sign1Error::Encode(format!("{e:?}")))
}

/// Parses a COSE_Sign1, tagged (18) or untagged.
pub fn parse(bytes: &[u8]) -> Result<CoseSign1, Sign1Error> {
    match CoseSign1::from_tagged_slice(bytes) {
        Ok(m) => Ok(m),
        Err(_) => CoseSign1::from_slice(bytes).map_err(|e| Sign1Error::Malformed(format!("{e:?}"))),
    }
}

/// Verifies the ES256 signature of `msg` over its Sig_structure with
/// `external_aad`, whatever header carries `alg` (for interop vectors).
pub fn verify_es256(
    msg: &CoseSign1,
    key: &PublicKey,
    external_aad: &[u8],
) -> Result<(), Sign1Error> {
    if msg.payload.is_none() {
        return Err(Sign1Error::MissingPayload);
    }
    // RFC 9052 §4.4: with no protected attributes, `body_protected` in the
    // Sig_structure is a zero-length bstr, even if the sender encoded the empty
    // bucket as an empty map (`h'A0'`; cose-wg Examples sign1-tests/sign-pass-01).
    let normalized;
    let msg = if msg.protected.is_empty()
        && msg
            .protected
            .original_data
            .as_ref()
            .is_some_and(|d| !d.is_empty())
    {
        let mut m = msg.clone();
        m.protected.original_data = None;
        normalized = m;
        &normalized
    } else {
        msg
    };
    msg.verify_signature(external_aad, |sig, tbs| {
        let sig = Signature::from_slice(sig).map_err(|_| Sign1Error::MalformedSignature)?;
        ecdsa::verify_signature(key, tbs, &sig).map_err(|_| Sign1Error::BadSignature)
    })
}

/// Like [`verify_es256`] but also requires `alg: ES256` in the *protected*
/// header, and returns the verified payload.
pub fn verify_es256_protected<'a>(
    msg: &'a CoseSign1,
    key: &PublicKey,
    external_aad: &[u8],
) -> Result<&'a [u8], Sign1Error> {
    let es256 = coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256);
    if msg.protected.header.alg.as_ref() != Some(&es256) {
        return Err(Sign1Error::WrongAlgorithm);
    }
    verify_es256(msg, key, external_aad)?;
    msg.payload.as_deref().ok_or(Sign1Error::MissingPayload)
}
