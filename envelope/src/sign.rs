//! The `Sign.Rsa4096` signatures: RSASSA-PKCS1-v1_5 with SHA-256 over the embedded data,
//! serialized `Sign.Rsa4096.<b64 signature>.<b64 data>`.
//!
//! Backend: `aws-lc-rs` (`RSA_PKCS1_SHA256` to sign, `RSA_PKCS1_2048_8192_SHA256` to verify),
//! for the reasons given in [`crate::rsa`].
//!
//! This module must never return the embedded data of a signature that did not verify.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};

use crate::error::{Error, Result};
use crate::rsa::{key_pair, public_der};
use crate::serialized::{Serialized, SignatureStrategy, SignedData};

/// Sign `data` with a PEM RSA private key; returns `Sign.Rsa4096.<sig>.<data>`.
pub fn sign(private_pem: &str, data: &[u8]) -> Result<String> {
    let kp = key_pair(private_pem)?;
    let mut signature = vec![0u8; kp.public_modulus_len()];
    kp.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        data,
        &mut signature,
    )
    .map_err(|_| Error::Backend("RSA sign"))?;
    Ok(Serialized::Signature(SignedData {
        strategy: SignatureStrategy::Rsa4096,
        signature,
        data: data.to_vec(),
    })
    .to_string())
}

/// Verify parsed signed data with a PEM public key (PKCS#1 or SubjectPublicKeyInfo).
pub fn verify_data<'a>(public_pem: &str, signed: &'a SignedData) -> Result<&'a [u8]> {
    let der = public_der(public_pem)?;
    aws_lc_rs::rsa::PublicKey::from_der(&der)
        .map_err(|_| Error::Key("not a usable RSA public key"))?;
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &der[..])
        .verify(&signed.data, &signed.signature)
        .map_err(|_| Error::Verify)?;
    Ok(&signed.data)
}

/// Parse and verify a `Sign.Rsa4096` string; returns the signed data only if it verifies.
pub fn verify(public_pem: &str, serialized: &str) -> Result<Vec<u8>> {
    match Serialized::parse(serialized)? {
        Serialized::Signature(s) => verify_data(public_pem, &s).map(<[u8]>::to_vec),
        other => Err(Error::WrongKind {
            expected: "a signature",
            found: other.kind(),
        }),
    }
}
