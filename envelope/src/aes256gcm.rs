//! The `Aes256Gcm` strategy: AES-256-GCM with a 96-bit random IV, the 128-bit tag stored in
//! the `at` artefact (not appended to the ciphertext) and the `ad` string as AAD.
//!
//! Backend: `aws-lc-rs` (`LessSafeKey`, because Cryppo stores its own IV). It reaches and here
//! exceeds OpenSSL's AES-GCM throughput (AES-NI/VAES + CLMUL assembly); the pure-Rust `aes-gcm`
//! crate reaches ~0.4x. See the crate README for the measurements.
//!
//! The low-level [`seal`]/[`open`] (and in-place variants) take an explicit IV and return the
//! tag separately, so callers that run GCM elsewhere (a PKCS#11 token returns `ct || tag`) can
//! still produce and read Cryppo strings with [`Artefacts::aes256gcm`] and
//! [`EncryptedData::gcm`].
//!
//! This module must never reuse an IV it generated (every [`encrypt`] draws a fresh random IV),
//! never release plaintext whose tag did not verify, and never keep key bytes outside
//! `Zeroizing` buffers or the backend's key schedule (which aws-lc clears on drop).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::serialized::{Artefacts, EncryptedData, EncryptionStrategy, Serialized};

/// AES-256 key length in bytes.
pub const KEY_LEN: usize = 32;
/// GCM IV length in bytes.
pub const IV_LEN: usize = 12;
/// GCM tag length in bytes.
pub const TAG_LEN: usize = 16;
/// The `ad` Cryppo uses when none is given.
pub const DEFAULT_AD: &str = "none";

fn key(key: &[u8; KEY_LEN]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Backend("AES-256-GCM key setup"))
}

/// Encrypt `in_out` in place; returns the tag.
pub fn seal_in_place(
    key_bytes: &[u8; KEY_LEN],
    iv: &[u8; IV_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<[u8; TAG_LEN]> {
    let tag = key(key_bytes)?
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*iv), Aad::from(aad), in_out)
        .map_err(|_| Error::Backend("AES-256-GCM seal"))?;
    tag.as_ref()
        .try_into()
        .map_err(|_| Error::Backend("AES-256-GCM tag length"))
}

/// Decrypt `in_out` in place after verifying `tag`. On failure `in_out` holds unspecified
/// bytes (not plaintext) and [`Error::Decrypt`] is returned.
pub fn open_in_place(
    key_bytes: &[u8; KEY_LEN],
    iv: &[u8; IV_LEN],
    aad: &[u8],
    in_out: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<()> {
    key(key_bytes)?
        .open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*iv),
            Aad::from(aad),
            tag,
            in_out,
        )
        .map(|_| ())
        .map_err(|_| Error::Decrypt)
}

/// Encrypt `plaintext`; returns `(ciphertext, tag)`.
pub fn seal(
    key_bytes: &[u8; KEY_LEN],
    iv: &[u8; IV_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, [u8; TAG_LEN])> {
    let mut buf = plaintext.to_vec();
    let tag = seal_in_place(key_bytes, iv, aad, &mut buf)?;
    Ok((buf, tag))
}

/// Verify and decrypt; the plaintext is zeroized on drop.
pub fn open(
    key_bytes: &[u8; KEY_LEN],
    iv: &[u8; IV_LEN],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8; TAG_LEN],
) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    open_in_place(key_bytes, iv, aad, &mut buf, tag)?;
    Ok(buf)
}

/// A fresh random IV.
pub fn random_iv() -> Result<[u8; IV_LEN]> {
    let mut iv = [0u8; IV_LEN];
    aws_lc_rs::rand::fill(&mut iv).map_err(|_| Error::Backend("random IV"))?;
    Ok(iv)
}

/// Encrypt with a random IV and `ad` as AAD, returning structured data.
pub fn encrypt_data(
    key_bytes: &[u8; KEY_LEN],
    plaintext: &[u8],
    ad: &str,
) -> Result<EncryptedData> {
    let iv = random_iv()?;
    let (ciphertext, tag) = seal(key_bytes, &iv, ad.as_bytes(), plaintext)?;
    EncryptedData::new(
        EncryptionStrategy::Aes256Gcm,
        ciphertext,
        Artefacts::aes256gcm(&iv, &tag, ad)?,
        None,
    )
}

/// Encrypt with a random IV and `ad` as AAD; returns the 3-part Cryppo string
/// `Aes256Gcm.<ct>.<artefacts>`. Cryppo's default `ad` is [`DEFAULT_AD`].
pub fn encrypt(key_bytes: &[u8; KEY_LEN], plaintext: &[u8], ad: &str) -> Result<String> {
    Ok(encrypt_data(key_bytes, plaintext, ad)?.to_cryppo_string())
}

/// Decrypt parsed `Aes256Gcm` data (3- or 5-part) with a raw key.
pub fn decrypt(data: &EncryptedData, key_bytes: &[u8; KEY_LEN]) -> Result<Zeroizing<Vec<u8>>> {
    let p = data.gcm()?;
    open(key_bytes, p.iv, p.ad.as_bytes(), p.ciphertext, p.tag)
}

/// Parse and decrypt a Cryppo `Aes256Gcm` string with a raw key.
pub fn decrypt_with_key(serialized: &str, key_bytes: &[u8; KEY_LEN]) -> Result<Zeroizing<Vec<u8>>> {
    let g = Serialized::parse(serialized)?
        .into_encrypted()?
        .into_gcm()?;
    let mut buf = Zeroizing::new(g.ciphertext);
    open_in_place(key_bytes, &g.iv, g.ad.as_bytes(), &mut buf, &g.tag)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    // NIST GCM test case 16 (AES-256, 96-bit IV, with AAD), truncated to 60-byte plaintext.
    #[test]
    fn nist_vector() {
        let h = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let key: [u8; 32] = h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
            .try_into()
            .unwrap();
        let iv: [u8; 12] = h("cafebabefacedbaddecaf888").try_into().unwrap();
        let pt = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let (ct, tag) = seal(&key, &iv, &aad, &pt).unwrap();
        assert_eq!(ct, h("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"));
        assert_eq!(tag.to_vec(), h("76fc6ece0f4e1768cddf8853bb2d551b"));
        assert_eq!(&*open(&key, &iv, &aad, &ct, &tag).unwrap(), &pt[..]);
    }
}
