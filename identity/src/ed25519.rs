//! Ed25519 keypairs for signing: formats (did:key, JWK, SPKI PEM), signing and offline
//! verification.
//!
//! Only signatures: sharing (HPKE) and node keys (COSE ES256) stay P-256. The secret is 32 bytes
//! (RFC 8032's seed), so the agent wraps it exactly as it wraps a P-256 scalar. This module must
//! never expose the seed except through `to_bytes` (zeroizing) for wrapping.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

/// Multicodec `ed25519-pub` (0xed) as an unsigned varint.
const ED25519_PUB_MULTICODEC: [u8; 2] = [0xed, 0x01];
const DID_KEY_PREFIX: &str = "did:key:";

/// Why an Ed25519 key or signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ed25519Error {
    /// Not an Ed25519 did:key, JWK or SPKI PEM.
    #[error("not an Ed25519 public key: {0}")]
    Format(&'static str),
    /// The signature does not verify (or is not 64 bytes).
    #[error("signature does not verify")]
    BadSignature,
}

/// An Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ed25519Public(VerifyingKey);

impl Ed25519Public {
    /// From the 32-byte encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Ed25519Error> {
        let arr: &[u8; 32] = bytes
            .try_into()
            .map_err(|_| Ed25519Error::Format("an Ed25519 public key is 32 bytes"))?;
        VerifyingKey::from_bytes(arr)
            .map(Self)
            .map_err(|_| Ed25519Error::Format("not a valid Ed25519 point"))
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// `did:key:z6Mk...` (multicodec ed25519-pub, base58btc).
    pub fn to_did_key(&self) -> String {
        let mut b = ED25519_PUB_MULTICODEC.to_vec();
        b.extend_from_slice(&self.to_bytes());
        format!(
            "{DID_KEY_PREFIX}z{}",
            bs58::encode(b)
                .with_alphabet(bs58::Alphabet::BITCOIN)
                .into_string()
        )
    }

    /// JWK `{"kty":"OKP","crv":"Ed25519","x":...}` (RFC 8037).
    pub fn to_jwk_string(&self) -> String {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(self.to_bytes())})
            .to_string()
    }

    /// SubjectPublicKeyInfo PEM.
    pub fn to_spki_pem(&self) -> Result<String, Ed25519Error> {
        self.0
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|_| Ed25519Error::Format("cannot encode SPKI"))
    }

    /// Parse a did:key, an OKP JWK or an SPKI PEM.
    pub fn parse(text: &str) -> Result<Self, Ed25519Error> {
        let t = text.trim();
        if let Some(rest) = t.strip_prefix(DID_KEY_PREFIX) {
            let b58 = rest
                .strip_prefix('z')
                .ok_or(Ed25519Error::Format("did:key must be base58btc (z...)"))?;
            let bytes = bs58::decode(b58)
                .with_alphabet(bs58::Alphabet::BITCOIN)
                .into_vec()
                .map_err(|_| Ed25519Error::Format("bad base58 in did:key"))?;
            let key = bytes
                .strip_prefix(&ED25519_PUB_MULTICODEC[..])
                .ok_or(Ed25519Error::Format("did:key is not ed25519-pub"))?;
            return Self::from_bytes(key);
        }
        if t.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(t).map_err(|_| Ed25519Error::Format("bad JWK JSON"))?;
            if v["kty"] != "OKP" || v["crv"] != "Ed25519" || v.get("d").is_some() {
                return Err(Ed25519Error::Format("JWK is not a public OKP Ed25519 key"));
            }
            let x = URL_SAFE_NO_PAD
                .decode(v["x"].as_str().unwrap_or_default())
                .map_err(|_| Ed25519Error::Format("bad JWK x"))?;
            return Self::from_bytes(&x);
        }
        VerifyingKey::from_public_key_pem(t)
            .map(Self)
            .map_err(|_| Ed25519Error::Format("not an Ed25519 SPKI PEM"))
    }

    /// Verify a 64-byte signature over `msg` (RFC 8032, pure Ed25519).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), Ed25519Error> {
        let sig =
            ed25519_dalek::Signature::from_slice(sig).map_err(|_| Ed25519Error::BadSignature)?;
        self.0
            .verify(msg, &sig)
            .map_err(|_| Ed25519Error::BadSignature)
    }
}

/// An Ed25519 signing key in memory (zeroized on drop).
pub struct Ed25519Key(SigningKey);

impl Ed25519Key {
    /// A fresh key.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        Ed25519Key(SigningKey::generate(rng))
    }

    /// From the 32-byte seed.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Ed25519Key(SigningKey::from_bytes(seed))
    }

    /// The seed, for wrapping.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// Its public key.
    pub fn public_key(&self) -> Ed25519Public {
        Ed25519Public(self.0.verifying_key())
    }

    /// A 64-byte signature over `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8032_test_1() {
        // RFC 8032 section 7.1, TEST 1 (empty message).
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let k = Ed25519Key::from_bytes(&seed);
        assert_eq!(
            hex::encode(k.public_key().to_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = k.sign(b"");
        assert_eq!(hex::encode(sig), "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
        k.public_key().verify(b"", &sig).unwrap();
        assert_eq!(
            k.public_key().verify(b"x", &sig),
            Err(Ed25519Error::BadSignature)
        );
    }

    #[test]
    fn formats_round_trip_and_refuse_p256() {
        let k = Ed25519Key::generate(&mut rand_core::OsRng);
        let p = k.public_key();
        let did = p.to_did_key();
        assert!(did.starts_with("did:key:z6Mk"), "{did}");
        assert_eq!(Ed25519Public::parse(&did).unwrap(), p);
        assert_eq!(Ed25519Public::parse(&p.to_jwk_string()).unwrap(), p);
        assert_eq!(Ed25519Public::parse(&p.to_spki_pem().unwrap()).unwrap(), p);
        // A P-256 did:key is not Ed25519.
        assert!(
            Ed25519Public::parse("did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169")
                .is_err()
        );
        assert!(Ed25519Public::parse("did:key:z6Mk!!!").is_err());
    }
}
