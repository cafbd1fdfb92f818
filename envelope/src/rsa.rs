//! The `Rsa4096` encryption strategy: RSA-OAEP with SHA-1 and MGF1-SHA-1, artefacts an empty
//! BSON document (`QQUAAAAA`).
//!
//! Backend: `aws-lc-rs` (`OAEP_SHA1_MGF1SHA1`). The RustCrypto `rsa` crate was rejected: its
//! decryption leaks timing on attacker-chosen ciphertexts (RUSTSEC-2023-0071, "Marvin attack",
//! no fixed release). AWS-LC's RSA private-key operation is constant-time with blinding, and
//! its OAEP decoding checks padding in constant time; it comes from BoringSSL with a
//! FIPS-validated lineage. `ring` has no RSA encryption at all.
//!
//! Keys are PEM: PKCS#1 (`RSA PRIVATE KEY` / `RSA PUBLIC KEY`, what Cryppo writes) or
//! PKCS#8 / SubjectPublicKeyInfo (`PRIVATE KEY` / `PUBLIC KEY`).
//!
//! This module must never distinguish decryption failures (bad padding vs. bad ciphertext):
//! every failure is the same [`Error::Decrypt`]. It must never keep private key bytes outside
//! `Zeroizing` buffers.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeyPair, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey, PublicKey, OAEP_SHA1_MGF1SHA1,
};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::pem;
use crate::serialized::{Artefacts, EncryptedData, EncryptionStrategy, Serialized};

/// Parse a PEM RSA private key (PKCS#1 or PKCS#8) into a signing key pair.
pub(crate) fn key_pair(private_pem: &str) -> Result<KeyPair> {
    let (label, der) = pem::decode(private_pem)?;
    match label.as_str() {
        "RSA PRIVATE KEY" => KeyPair::from_der(&der),
        "PRIVATE KEY" => KeyPair::from_pkcs8(&der),
        _ => {
            return Err(Error::Key(
                "expected an RSA PRIVATE KEY or PRIVATE KEY PEM block",
            ))
        }
    }
    .map_err(|_| Error::Key("not a usable RSA private key"))
}

/// An RSA private key (PKCS#1 or PKCS#8 PEM) as aws-lc's signing key pair (the SSH door signs
/// `rsa-sha2-256`/`rsa-sha2-512` with it).
pub fn signing_key(private_pem: &str) -> Result<KeyPair> {
    key_pair(private_pem)
}

/// The PKCS#8 PEM (`PRIVATE KEY`) of an RSA key pair, in a zeroizing string.
pub fn private_pem(key: &KeyPair) -> Result<Zeroizing<String>> {
    use base64::Engine as _;
    let der = key
        .as_der()
        .map_err(|_| Error::Key("cannot encode the RSA private key"))?;
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der.as_ref()));
    let mut out = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    Ok(out)
}

/// The DER of a PEM RSA public key (PKCS#1 `RSA PUBLIC KEY` or SubjectPublicKeyInfo
/// `PUBLIC KEY`, as [`public_pem`] writes), and whether it is SubjectPublicKeyInfo.
pub fn public_key_der(public_pem: &str) -> Result<(Zeroizing<Vec<u8>>, bool)> {
    let (label, _) = pem::decode(public_pem)?;
    Ok((public_der(public_pem)?, label == "PUBLIC KEY"))
}

/// Parse a PEM RSA public key (PKCS#1 or SubjectPublicKeyInfo) to DER for verification.
pub(crate) fn public_der(public_pem: &str) -> Result<Zeroizing<Vec<u8>>> {
    let (label, der) = pem::decode(public_pem)?;
    match label.as_str() {
        "RSA PUBLIC KEY" | "PUBLIC KEY" => Ok(der),
        _ => Err(Error::Key(
            "expected an RSA PUBLIC KEY or PUBLIC KEY PEM block",
        )),
    }
}

fn encrypting_key(public_pem: &str) -> Result<OaepPublicEncryptingKey> {
    let der = public_der(public_pem)?;
    let public =
        PublicKey::from_der(&der).map_err(|_| Error::Key("not a usable RSA public key"))?;
    // PKCS#1 or SPKI in, SPKI out: `PublicEncryptingKey` reads SubjectPublicKeyInfo only.
    let spki = public
        .as_der()
        .map_err(|_| Error::Key("not a usable RSA public key"))?;
    let key = PublicEncryptingKey::from_der(spki.as_ref())
        .map_err(|_| Error::Key("not a usable RSA public key"))?;
    OaepPublicEncryptingKey::new(key).map_err(|_| Error::Key("not a usable RSA public key"))
}

fn decrypting_key(private_pem: &str) -> Result<OaepPrivateDecryptingKey> {
    let pkcs8 = key_pair(private_pem)?
        .as_der()
        .map_err(|_| Error::Key("cannot re-encode RSA private key"))?;
    let key = PrivateDecryptingKey::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| Error::Key("not a usable RSA private key"))?;
    OaepPrivateDecryptingKey::new(key).map_err(|_| Error::Key("not a usable RSA private key"))
}

/// The SubjectPublicKeyInfo PEM (`PUBLIC KEY`) of an RSA private key (PKCS#1 or PKCS#8 PEM).
pub fn public_pem(private_pem: &str) -> Result<String> {
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine as _;
    let kp = key_pair(private_pem)?;
    let der = kp
        .public_key()
        .as_der()
        .map_err(|_| Error::Key("cannot encode the RSA public key"))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    Ok(out)
}

/// Encrypt with RSA-OAEP(SHA-1) to a PEM public key; returns `Rsa4096.<ct>.QQUAAAAA`.
pub fn encrypt(public_pem: &str, plaintext: &[u8]) -> Result<String> {
    let key = encrypting_key(public_pem)?;
    let max = key.max_plaintext_size(&OAEP_SHA1_MGF1SHA1);
    if plaintext.len() > max {
        return Err(Error::PlaintextTooLong {
            len: plaintext.len(),
            max,
        });
    }
    let mut out = vec![0u8; key.ciphertext_size()];
    let len = key
        .encrypt(&OAEP_SHA1_MGF1SHA1, plaintext, &mut out, None)
        .map_err(|_| Error::Backend("RSA-OAEP encrypt"))?
        .len();
    out.truncate(len);
    Ok(
        EncryptedData::new(EncryptionStrategy::Rsa4096, out, Artefacts::empty(), None)?
            .to_cryppo_string(),
    )
}

/// Decrypt parsed `Rsa4096` data with a PEM private key.
pub fn decrypt_data(private_pem: &str, data: &EncryptedData) -> Result<Zeroizing<Vec<u8>>> {
    if data.strategy() != EncryptionStrategy::Rsa4096 {
        return Err(Error::WrongKind {
            expected: "Rsa4096 data",
            found: data.strategy().as_str(),
        });
    }
    let key = decrypting_key(private_pem)?;
    let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
    let len = key
        .decrypt(&OAEP_SHA1_MGF1SHA1, data.ciphertext(), &mut out, None)
        .map_err(|_| Error::Decrypt)?
        .len();
    out.truncate(len);
    Ok(out)
}

/// Parse and decrypt an `Rsa4096` Cryppo string with a PEM private key.
pub fn decrypt(private_pem: &str, serialized: &str) -> Result<Zeroizing<Vec<u8>>> {
    decrypt_data(
        private_pem,
        &Serialized::parse(serialized)?.into_encrypted()?,
    )
}

#[cfg(test)]
mod public_pem_tests {
    #[test]
    fn public_pem_encrypts_to_the_private_key() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../tests/vectors/cryppo/compat.json")).unwrap();
        let pem = v["encryption_with_key"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["encryption_strategy"] == "Rsa4096")
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string();
        let public = super::public_pem(&pem).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let ct = super::encrypt(&public, b"dek bytes").unwrap();
        assert_eq!(&*super::decrypt(&pem, &ct).unwrap(), b"dek bytes");
        assert!(
            super::public_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }
}
