//! The `Pbkdf2Hmac` key derivation: PBKDF2-HMAC-SHA256 over the UTF-8 passphrase, a 20-byte
//! random salt (stored as `iv`), the iteration count as stored (`i`), and a 32-byte key (`l`).
//!
//! Used for passphrase encryption (5-part strings) and for derived keys whose artefacts are kept
//! as a 2-part `Pbkdf2Hmac.<K-artefacts>` string.
//!
//! This module must never return a derived key outside `Zeroizing`, never derive with 0
//! iterations, and never run more than [`MAX_ITERATIONS`] (an attacker-supplied string must
//! not buy hours of CPU).

use core::num::NonZeroU32;

use aws_lc_rs::pbkdf2::{derive, PBKDF2_HMAC_SHA256};
use zeroize::Zeroizing;

use crate::aes256gcm;
use crate::error::{Error, Result};
use crate::serialized::{DerivationArtefacts, EncryptedData, Serialized};

/// Salt length Cryppo generates.
pub const SALT_LEN: usize = 20;
/// Derived key length.
pub const KEY_LEN: usize = 32;
/// Largest iteration count accepted (also when reading a string).
pub const MAX_ITERATIONS: u32 = 10_000_000;

fn check_iterations(iterations: u32) -> Result<NonZeroU32> {
    NonZeroU32::new(iterations)
        .filter(|i| i.get() <= MAX_ITERATIONS)
        .ok_or(Error::Iterations {
            iterations: iterations.into(),
            max: MAX_ITERATIONS,
        })
}

/// PBKDF2-HMAC-SHA256(passphrase, salt, iterations) -> 32-byte key.
pub fn derive_key(
    passphrase: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let iterations = check_iterations(iterations)?;
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    derive(
        PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        passphrase.as_bytes(),
        out.as_mut(),
    );
    Ok(out)
}

/// Re-derive the key described by parsed derivation artefacts.
pub fn derive_key_from(
    passphrase: &str,
    artefacts: &DerivationArtefacts,
) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    derive_key(passphrase, artefacts.salt(), artefacts.iterations())
}

/// Derive a new key with a random 20-byte salt; returns the key and its artefacts
/// (serialize them with `to_string()` as the 2-part `Pbkdf2Hmac.<...>` string).
pub fn derive_new_key(
    passphrase: &str,
    iterations: u32,
) -> Result<(Zeroizing<[u8; KEY_LEN]>, DerivationArtefacts)> {
    check_iterations(iterations)?;
    let mut salt = [0u8; SALT_LEN];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| Error::Backend("random salt"))?;
    let artefacts = DerivationArtefacts::pbkdf2(&salt, iterations)?;
    let key = derive_key(passphrase, &salt, iterations)?;
    Ok((key, artefacts))
}

/// Encrypt with a key derived from `passphrase`; returns the 5-part Cryppo string
/// `Aes256Gcm.<ct>.<artefacts>.Pbkdf2Hmac.<derivation artefacts>` (AAD `"none"`).
pub fn encrypt_with_passphrase(
    passphrase: &str,
    plaintext: &[u8],
    iterations: u32,
) -> Result<String> {
    let (key, derivation) = derive_new_key(passphrase, iterations)?;
    let data = aes256gcm::encrypt_data(&key, plaintext, aes256gcm::DEFAULT_AD)?;
    let with = EncryptedData::new(
        data.strategy(),
        data.ciphertext().to_vec(),
        data.artefacts().clone(),
        Some(derivation),
    )?;
    Ok(with.to_cryppo_string())
}

/// Decrypt parsed passphrase-encrypted (5-part) data.
pub fn decrypt_data_with_passphrase(
    data: &EncryptedData,
    passphrase: &str,
) -> Result<Zeroizing<Vec<u8>>> {
    let derivation = data.derivation().ok_or(Error::WrongKind {
        expected: "passphrase-encrypted data (5 parts)",
        found: "key-encrypted data (3 parts)",
    })?;
    let key = derive_key_from(passphrase, derivation)?;
    aes256gcm::decrypt(data, &key)
}

/// Parse and decrypt a passphrase-encrypted (5-part) Cryppo string.
pub fn decrypt_with_passphrase(serialized: &str, passphrase: &str) -> Result<Zeroizing<Vec<u8>>> {
    decrypt_data_with_passphrase(
        &Serialized::parse(serialized)?.into_encrypted()?,
        passphrase,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7914 section 11 PBKDF2-HMAC-SHA256 vector ("passwd", "salt", c = 1), first 32 bytes.
    #[test]
    fn rfc7914_vector() {
        let k = derive_key("passwd", b"salt", 1).unwrap();
        assert_eq!(k[..8], [0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
    }

    // `openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt pass:password
    //  -kdfopt salt:saltsaltsaltsaltsalt -kdfopt iter:1000 PBKDF2`
    #[test]
    fn matches_openssl() {
        let k = derive_key("password", b"saltsaltsaltsaltsalt", 1000).unwrap();
        let hex: String = k.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(
            hex,
            "F8672D901743349DBDFB2DECC6F4DC443753D353AE70CBAD9642C1E6C276F21B"
        );
    }

    #[test]
    fn iteration_bounds() {
        assert!(matches!(
            derive_key("p", b"s", 0),
            Err(Error::Iterations { .. })
        ));
        assert!(matches!(
            derive_key("p", b"s", MAX_ITERATIONS + 1),
            Err(Error::Iterations { .. })
        ));
    }
}
