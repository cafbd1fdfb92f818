//! ECDSA P-256 with SHA-256: the [`Signer`] abstraction and detached
//! sign/verify helpers.
//!
//! Signing goes through [`Signer`], so a private key may live on a token: the
//! token only ever sees a 32-byte SHA-256 digest. [`crate::LocalKey`] is the
//! in-memory implementation. Verification needs only a public key (from PEM,
//! JWK or `did:key`), so a CLI `verify` can run with no agent at all.
//!
//! This module must never hash with anything but SHA-256, never return a
//! signature it has not checked against the signer's public key, and never
//! treat a malformed signature as anything but a typed error.

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};

use crate::format::FormatError;
use crate::keys::{LocalKey, PublicKey};

/// Something that can produce ECDSA P-256 signatures over SHA-256 digests.
///
/// Implement this over a PKCS#11 / PIV token to sign statements without
/// exporting the private key. `sign_prehash` receives the SHA-256 digest of
/// the message; it must return the signature of exactly that digest.
pub trait Signer {
    /// The public key matching the signing key.
    fn public_key(&self) -> PublicKey;

    /// Signs a SHA-256 digest (the message is hashed by the caller).
    fn sign_prehash(&self, digest: &[u8; 32]) -> Result<Signature, SignError>;
}

impl<T: Signer + ?Sized> Signer for &T {
    fn public_key(&self) -> PublicKey {
        (**self).public_key()
    }
    fn sign_prehash(&self, digest: &[u8; 32]) -> Result<Signature, SignError> {
        (**self).sign_prehash(digest)
    }
}

impl Signer for LocalKey {
    fn public_key(&self) -> PublicKey {
        LocalKey::public_key(self)
    }

    fn sign_prehash(&self, digest: &[u8; 32]) -> Result<Signature, SignError> {
        let sk = SigningKey::from(self.secret_key());
        PrehashSigner::<Signature>::sign_prehash(&sk, digest).map_err(|_| SignError::Crypto)
    }
}

/// Errors producing a signature.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The signing backend (e.g. a token) failed.
    #[error("signing backend failed: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The in-memory ECDSA computation failed.
    #[error("ECDSA signing failed")]
    Crypto,
    /// The backend returned a signature that does not verify under its own public key.
    #[error("signer returned a signature that does not verify under its public key")]
    SelfCheckFailed,
}

/// Errors verifying a signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signature bytes are not a DER / raw r||s ECDSA signature.
    #[error("malformed ECDSA signature encoding")]
    MalformedSignature,
    /// The signature is well-formed but does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The public key text could not be parsed.
    #[error("bad public key: {0}")]
    Key(#[from] FormatError),
}

/// How a detached signature is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SigEncoding {
    /// ASN.1 DER `ECDSA-Sig-Value` (what `openssl dgst -sign` produces). The default.
    #[default]
    Der,
    /// Raw fixed-size `r || s`, 64 bytes (JOSE/COSE style).
    Raw,
}

/// SHA-256 of `msg`.
pub fn sha256(msg: &[u8]) -> [u8; 32] {
    Sha256::digest(msg).into()
}

/// Signs the SHA-256 digest of `msg` and checks the result against the
/// signer's public key before returning it.
pub fn sign_message<S: Signer + ?Sized>(signer: &S, msg: &[u8]) -> Result<Signature, SignError> {
    let digest = sha256(msg);
    let sig = signer.sign_prehash(&digest)?;
    signer
        .public_key()
        .verifying_key()
        .verify_prehash(&digest, &sig)
        .map_err(|_| SignError::SelfCheckFailed)?;
    Ok(sig)
}

/// Signs `msg` (ECDSA P-256 / SHA-256) and encodes the signature.
pub fn sign<S: Signer + ?Sized>(
    signer: &S,
    msg: &[u8],
    encoding: SigEncoding,
) -> Result<Vec<u8>, SignError> {
    let sig = sign_message(signer, msg)?;
    Ok(encode_signature(&sig, encoding))
}

/// Encodes a signature as DER or raw `r || s`.
pub fn encode_signature(sig: &Signature, encoding: SigEncoding) -> Vec<u8> {
    match encoding {
        SigEncoding::Der => sig.to_der().as_bytes().to_vec(),
        SigEncoding::Raw => sig.to_bytes().to_vec(),
    }
}

/// Decodes a signature in the given encoding.
pub fn decode_signature(sig: &[u8], encoding: SigEncoding) -> Result<Signature, VerifyError> {
    match encoding {
        SigEncoding::Der => Signature::from_der(sig),
        SigEncoding::Raw => Signature::from_slice(sig),
    }
    .map_err(|_| VerifyError::MalformedSignature)
}

/// Decodes a signature whose encoding is not known: DER if it parses as DER,
/// otherwise raw `r || s` if it is 64 bytes.
pub fn decode_signature_any(sig: &[u8]) -> Result<Signature, VerifyError> {
    if let Ok(s) = Signature::from_der(sig) {
        return Ok(s);
    }
    if sig.len() == 64 {
        return Signature::from_slice(sig).map_err(|_| VerifyError::MalformedSignature);
    }
    Err(VerifyError::MalformedSignature)
}

/// Verifies a decoded signature over the SHA-256 digest of `msg`.
pub fn verify_signature(key: &PublicKey, msg: &[u8], sig: &Signature) -> Result<(), VerifyError> {
    key.verifying_key()
        .verify_prehash(&sha256(msg), sig)
        .map_err(|_| VerifyError::BadSignature)
}

/// Verifies an encoded signature over `msg` with `key`.
pub fn verify(
    key: &PublicKey,
    msg: &[u8],
    sig: &[u8],
    encoding: SigEncoding,
) -> Result<(), VerifyError> {
    verify_signature(key, msg, &decode_signature(sig, encoding)?)
}

/// Offline verification for a CLI: `key_text` is SPKI PEM, JWK or `did:key`;
/// `sig` is DER or raw `r || s` (auto-detected). Returns the key that verified.
pub fn verify_with_key_text(
    key_text: &str,
    msg: &[u8],
    sig: &[u8],
) -> Result<PublicKey, VerifyError> {
    let key = PublicKey::parse(key_text)?;
    verify_signature(&key, msg, &decode_signature_any(sig)?)?;
    Ok(key)
}
