//! Sealed DEK shares: the self-describing CBOR form of a 32-byte data
//! encryption key sealed to one recipient with [`crate::hpke`] (auth mode).
//!
//! A [`SealedShare`] says everything the recipient needs to open it and to
//! decide whether to trust it: format version, HPKE suite ids, the sender's
//! public key (authenticated by the auth-mode KEM), the recipient key
//! fingerprint, the DEK id (a UUID), a purpose string, `enc` and the
//! ciphertext. The HPKE `info` binds the DEK id, the purpose and both public
//! keys; the AEAD `aad` binds the version, suite, recipient fingerprint and
//! DEK id. So none of the clear fields can be swapped without the open failing.
//!
//! This module must never return DEK bytes from a share whose recipient
//! fingerprint, sender check or AEAD check failed, and never keep the DEK
//! outside a zeroizing [`Dek`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::hpke::{self, HpkeError};
use crate::keys::{KeyId, LocalKey, PublicKey};

/// Current share format version.
pub const SHARE_VERSION: u8 = 1;
/// Maximum length of the purpose string, in bytes.
pub const MAX_PURPOSE_LEN: usize = 256;
const INFO_LABEL: &[u8] = b"keyward share v1 info";
const AAD_LABEL: &[u8] = b"keyward share v1 aad";

/// A 32-byte data encryption key, zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Dek([u8; 32]);

impl Dek {
    /// Wraps key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random DEK.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        let dek = Self(b);
        b.zeroize();
        dek
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl core::fmt::Debug for Dek {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Dek(<redacted>)")
    }
}

/// Errors sealing, parsing or opening a share.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShareError {
    /// The bytes are not a share (CBOR or base64url decoding failed, or fields are missing).
    #[error("malformed sealed share: {0}")]
    Malformed(String),
    /// The share's format version is not supported.
    #[error("unsupported sealed share version {0}")]
    UnsupportedVersion(u8),
    /// The share uses an HPKE suite other than DHKEM(P-256)/HKDF-SHA256/AES-256-GCM.
    #[error("unsupported HPKE suite kem={kem:#06x} kdf={kdf:#06x} aead={aead:#06x}")]
    UnsupportedSuite {
        /// KEM id found.
        kem: u16,
        /// KDF id found.
        kdf: u16,
        /// AEAD id found.
        aead: u16,
    },
    /// The share was sealed to a different recipient key.
    #[error("share is sealed to key {expected}, not to this key ({actual})")]
    NotForThisRecipient {
        /// Recipient fingerprint in the share.
        expected: KeyId,
        /// Fingerprint of the key used to open.
        actual: KeyId,
    },
    /// The share's sender is not the expected sender.
    #[error("share was sealed by {found}, expected {expected}")]
    UnexpectedSender {
        /// Expected sender key id.
        expected: KeyId,
        /// Sender key id in the share.
        found: KeyId,
    },
    /// The AEAD check failed: tampered share, or forged sender.
    #[error("share failed authentication (tampered, or not from the named sender)")]
    DecryptFailed,
    /// The decrypted DEK was not 32 bytes.
    #[error("decrypted DEK has length {0}, expected 32")]
    BadDekLength(usize),
    /// The purpose string is too long.
    #[error("purpose string longer than {MAX_PURPOSE_LEN} bytes")]
    PurposeTooLong,
    /// Another HPKE failure.
    #[error(transparent)]
    Hpke(HpkeError),
}

/// Wire form. Field names are the CBOR map keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u8,
    kem: u16,
    kdf: u16,
    aead: u16,
    /// Sender public key, compressed SEC1 (33 bytes).
    #[serde(with = "serde_bytes")]
    sender: Vec<u8>,
    /// Recipient key id (SHA-256 of compressed SEC1).
    #[serde(with = "serde_bytes")]
    recipient: Vec<u8>,
    dek_id: String,
    purpose: String,
    #[serde(with = "serde_bytes")]
    enc: Vec<u8>,
    #[serde(with = "serde_bytes")]
    ct: Vec<u8>,
}

/// A DEK sealed to one recipient. Parsed fields are validated on decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedShare {
    sender: PublicKey,
    recipient: KeyId,
    dek_id: Uuid,
    purpose: String,
    enc: Vec<u8>,
    ct: Vec<u8>,
}

/// The result of opening a share.
#[derive(Debug)]
#[non_exhaustive]
pub struct OpenedShare {
    /// The DEK.
    pub dek: Dek,
    /// Its id.
    pub dek_id: Uuid,
    /// The purpose string the sender bound to it.
    pub purpose: String,
    /// The authenticated sender.
    pub sender: PublicKey,
}

fn push_lv(out: &mut Vec<u8>, field: &[u8]) {
    // Fields are bounded well below 2^32 (purpose <= 256, UUID 36, points 33).
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

fn info_bytes(dek_id: &Uuid, purpose: &str, sender: &PublicKey, recipient: &PublicKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    push_lv(&mut out, INFO_LABEL);
    push_lv(&mut out, dek_id.hyphenated().to_string().as_bytes());
    push_lv(&mut out, purpose.as_bytes());
    push_lv(&mut out, &sender.to_sec1_compressed());
    push_lv(&mut out, &recipient.to_sec1_compressed());
    out
}

fn aad_bytes(recipient: &KeyId, dek_id: &Uuid) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    push_lv(&mut out, AAD_LABEL);
    out.push(SHARE_VERSION);
    out.extend_from_slice(&hpke::KEM_ID.to_be_bytes());
    out.extend_from_slice(&hpke::KDF_ID.to_be_bytes());
    out.extend_from_slice(&hpke::AEAD_ID.to_be_bytes());
    push_lv(&mut out, recipient.as_bytes());
    push_lv(&mut out, dek_id.hyphenated().to_string().as_bytes());
    out
}

impl SealedShare {
    /// Seals `dek` from `sender` to `recipient`.
    pub fn seal<R: CryptoRng + RngCore>(
        sender: &LocalKey,
        recipient: &PublicKey,
        dek: &Dek,
        dek_id: Uuid,
        purpose: &str,
        rng: &mut R,
    ) -> Result<Self, ShareError> {
        if purpose.len() > MAX_PURPOSE_LEN {
            return Err(ShareError::PurposeTooLong);
        }
        let sender_pub = sender.public_key();
        let rid = recipient.key_id();
        let info = info_bytes(&dek_id, purpose, &sender_pub, recipient);
        let aad = aad_bytes(&rid, &dek_id);
        let sealed = hpke::seal_auth(recipient, sender, &info, &aad, dek.as_bytes(), rng)
            .map_err(ShareError::Hpke)?;
        Ok(Self {
            sender: sender_pub,
            recipient: rid,
            dek_id,
            purpose: purpose.to_owned(),
            enc: sealed.enc,
            ct: sealed.ciphertext,
        })
    }

    /// Opens the share with `recipient`'s private key. If `expected_sender`
    /// is given, a share from any other sender is refused before decrypting.
    ///
    /// Checks, in order: recipient fingerprint, expected sender, then HPKE
    /// auth-mode decapsulation + AEAD (which authenticates the sender).
    pub fn open(
        &self,
        recipient: &LocalKey,
        expected_sender: Option<&PublicKey>,
    ) -> Result<OpenedShare, ShareError> {
        let my_pub = recipient.public_key();
        let actual = my_pub.key_id();
        if actual != self.recipient {
            return Err(ShareError::NotForThisRecipient {
                expected: self.recipient,
                actual,
            });
        }
        if let Some(exp) = expected_sender {
            if *exp != self.sender {
                return Err(ShareError::UnexpectedSender {
                    expected: exp.key_id(),
                    found: self.sender.key_id(),
                });
            }
        }
        let info = info_bytes(&self.dek_id, &self.purpose, &self.sender, &my_pub);
        let aad = aad_bytes(&self.recipient, &self.dek_id);
        let pt = hpke::open_auth(recipient, &self.sender, &self.enc, &info, &aad, &self.ct)
            .map_err(|e| match e {
                HpkeError::Open | HpkeError::Decap | HpkeError::BadEncappedKey => {
                    ShareError::DecryptFailed
                }
                other => ShareError::Hpke(other),
            })?;
        let bytes: [u8; 32] = pt
            .as_slice()
            .try_into()
            .map_err(|_| ShareError::BadDekLength(pt.len()))?;
        Ok(OpenedShare {
            dek: Dek::from_bytes(bytes),
            dek_id: self.dek_id,
            purpose: self.purpose.clone(),
            sender: self.sender,
        })
    }

    /// The (claimed, until opened) sender.
    pub fn sender(&self) -> &PublicKey {
        &self.sender
    }

    /// Fingerprint of the recipient key.
    pub fn recipient(&self) -> &KeyId {
        &self.recipient
    }

    /// The DEK id.
    pub fn dek_id(&self) -> Uuid {
        self.dek_id
    }

    /// The purpose string.
    pub fn purpose(&self) -> &str {
        &self.purpose
    }

    fn to_wire(&self) -> Wire {
        Wire {
            v: SHARE_VERSION,
            kem: hpke::KEM_ID,
            kdf: hpke::KDF_ID,
            aead: hpke::AEAD_ID,
            sender: self.sender.to_sec1_compressed().to_vec(),
            recipient: self.recipient.as_bytes().to_vec(),
            dek_id: self.dek_id.hyphenated().to_string(),
            purpose: self.purpose.clone(),
            enc: self.enc.clone(),
            ct: self.ct.clone(),
        }
    }

    fn from_wire(w: Wire) -> Result<Self, ShareError> {
        if w.v != SHARE_VERSION {
            return Err(ShareError::UnsupportedVersion(w.v));
        }
        if (w.kem, w.kdf, w.aead) != (hpke::KEM_ID, hpke::KDF_ID, hpke::AEAD_ID) {
            return Err(ShareError::UnsupportedSuite {
                kem: w.kem,
                kdf: w.kdf,
                aead: w.aead,
            });
        }
        let malformed = |s: &str| ShareError::Malformed(s.to_owned());
        if w.sender.len() != 33 {
            return Err(malformed("sender key is not a compressed point"));
        }
        let sender =
            PublicKey::from_sec1_bytes(&w.sender).map_err(|_| malformed("bad sender key"))?;
        let recipient = KeyId::from_slice(&w.recipient)
            .ok_or_else(|| malformed("bad recipient fingerprint"))?;
        let dek_id = Uuid::try_parse(&w.dek_id).map_err(|_| malformed("dek_id is not a UUID"))?;
        if w.purpose.len() > MAX_PURPOSE_LEN {
            return Err(ShareError::PurposeTooLong);
        }
        if w.enc.len() != hpke::ENC_LEN {
            return Err(malformed("enc has the wrong length"));
        }
        if w.ct.len() != 32 + 16 {
            return Err(malformed("ciphertext has the wrong length"));
        }
        Ok(Self {
            sender,
            recipient,
            dek_id,
            purpose: w.purpose,
            enc: w.enc,
            ct: w.ct,
        })
    }

    /// Encodes as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        // Writing plain data to a Vec cannot fail.
        let _ = ciborium::into_writer(&self.to_wire(), &mut out);
        out
    }

    /// Decodes and validates CBOR.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, ShareError> {
        let w: Wire = crate::cbor::from_slice(bytes).map_err(ShareError::Malformed)?;
        Self::from_wire(w)
    }

    /// CBOR, then unpadded base64url.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_cbor())
    }

    /// Inverse of [`to_base64url`](Self::to_base64url).
    pub fn from_base64url(text: &str) -> Result<Self, ShareError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|e| ShareError::Malformed(e.to_string()))?;
        Self::from_cbor(&bytes)
    }
}
