//! Sealed messages between nodes: encrypted to a node's public key and authenticated by the
//! sender's keypair (HPKE auth mode, the same suite as shares).
//!
//! The wire form is self-describing CBOR `{v, sender, recipient, enc, ct}`, printed as
//! base64url. The HPKE `info` binds a label, the sender's public key and the recipient's key id,
//! so a message cannot be re-addressed or re-attributed. Whether the sender is trusted is the
//! caller's question (a [`crate::Chain`] answers it); this module only proves which key sent it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::hpke::{self, HpkeError};
use crate::keys::{KeyId, LocalKey, PublicKey};

const INFO_LABEL: &[u8] = b"keyward message v1";
const VERSION: u8 = 1;

/// Why a sealed message could not be read or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not a sealed message (base64url, CBOR or fields).
    #[error("malformed sealed message: {0}")]
    Malformed(String),
    /// A format version this code does not read.
    #[error("unsupported sealed message version {0}")]
    UnsupportedVersion(u8),
    /// Sealed to another key.
    #[error("message is sealed to key {expected}, not to this key ({actual})")]
    NotForThisRecipient {
        /// Recipient fingerprint in the message.
        expected: KeyId,
        /// Fingerprint of the key used to open.
        actual: KeyId,
    },
    /// Tampered, or not from the key it names.
    #[error("message failed authentication (tampered, or not from the named sender)")]
    DecryptFailed,
    /// HPKE failed while sealing.
    #[error("sealing failed: {0}")]
    Hpke(HpkeError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u8,
    #[serde(with = "serde_bytes")]
    sender: Vec<u8>,
    #[serde(with = "serde_bytes")]
    recipient: Vec<u8>,
    #[serde(with = "serde_bytes")]
    enc: Vec<u8>,
    #[serde(with = "serde_bytes")]
    ct: Vec<u8>,
}

/// A message sealed to one recipient by one sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedMessage {
    sender: PublicKey,
    recipient: KeyId,
    enc: Vec<u8>,
    ct: Vec<u8>,
}

fn info(sender: &PublicKey, recipient: &KeyId) -> Vec<u8> {
    let mut v = Vec::with_capacity(INFO_LABEL.len() + 33 + 32);
    v.extend_from_slice(INFO_LABEL);
    v.extend_from_slice(&sender.to_sec1_compressed());
    v.extend_from_slice(recipient.as_bytes());
    v
}

impl SealedMessage {
    /// Seal `plaintext` from `sender` to `recipient`.
    pub fn seal<R: CryptoRng + RngCore>(
        sender: &LocalKey,
        recipient: &PublicKey,
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<Self, MessageError> {
        let sender_pub = sender.public_key();
        let rid = recipient.key_id();
        let sealed = hpke::seal_auth(
            recipient,
            sender,
            &info(&sender_pub, &rid),
            b"",
            plaintext,
            rng,
        )
        .map_err(MessageError::Hpke)?;
        Ok(SealedMessage {
            sender: sender_pub,
            recipient: rid,
            enc: sealed.enc,
            ct: sealed.ciphertext,
        })
    }

    /// The key that claims to have sent it (proven only by a successful [`open`](Self::open)).
    pub fn sender(&self) -> &PublicKey {
        &self.sender
    }

    /// The key id it is addressed to.
    pub fn recipient(&self) -> &KeyId {
        &self.recipient
    }

    /// Open with the recipient's key; returns the plaintext.
    pub fn open(&self, recipient: &LocalKey) -> Result<Zeroizing<Vec<u8>>, MessageError> {
        let actual = recipient.public_key().key_id();
        if actual != self.recipient {
            return Err(MessageError::NotForThisRecipient {
                expected: self.recipient,
                actual,
            });
        }
        hpke::open_auth(
            recipient,
            &self.sender,
            &self.enc,
            &info(&self.sender, &self.recipient),
            b"",
            &self.ct,
        )
        .map_err(|_| MessageError::DecryptFailed)
    }

    /// Base64url (no padding) of the CBOR form.
    pub fn to_base64url(&self) -> String {
        let wire = Wire {
            v: VERSION,
            sender: self.sender.to_sec1_compressed().to_vec(),
            recipient: self.recipient.as_bytes().to_vec(),
            enc: self.enc.clone(),
            ct: self.ct.clone(),
        };
        let mut buf = Vec::new();
        // Serializing a struct of byte strings into a Vec cannot fail.
        let _ = ciborium::into_writer(&wire, &mut buf);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Parse the base64url form.
    pub fn from_base64url(text: &str) -> Result<Self, MessageError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|e| MessageError::Malformed(format!("base64url: {e}")))?;
        let w: Wire = crate::cbor::from_slice(&bytes).map_err(MessageError::Malformed)?;
        if w.v != VERSION {
            return Err(MessageError::UnsupportedVersion(w.v));
        }
        let sender = PublicKey::from_sec1_bytes(&w.sender)
            .map_err(|e| MessageError::Malformed(format!("sender: {e}")))?;
        let recipient = KeyId::from_slice(&w.recipient)
            .ok_or_else(|| MessageError::Malformed("recipient key id is not 32 bytes".into()))?;
        Ok(SealedMessage {
            sender,
            recipient,
            enc: w.enc,
            ct: w.ct,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn seal_open_and_the_ways_it_fails() {
        let a = LocalKey::generate(&mut OsRng);
        let b = LocalKey::generate(&mut OsRng);
        let c = LocalKey::generate(&mut OsRng);
        let m = SealedMessage::seal(&a, &b.public_key(), b"hello b", &mut OsRng).unwrap();
        let text = m.to_base64url();
        let back = SealedMessage::from_base64url(&text).unwrap();
        assert_eq!(back, m);
        assert_eq!(&*back.open(&b).unwrap(), b"hello b");
        assert_eq!(back.sender(), &a.public_key());
        assert!(matches!(
            back.open(&c),
            Err(MessageError::NotForThisRecipient { .. })
        ));
        // A forged sender: same ciphertext, another claimed sender.
        let mut forged = back.clone();
        forged.sender = c.public_key();
        assert!(matches!(forged.open(&b), Err(MessageError::DecryptFailed)));
        let mut tampered = back.clone();
        tampered.ct[0] ^= 1;
        assert!(matches!(
            tampered.open(&b),
            Err(MessageError::DecryptFailed)
        ));
        assert!(matches!(
            SealedMessage::from_base64url("!!"),
            Err(MessageError::Malformed(_))
        ));
    }
}
