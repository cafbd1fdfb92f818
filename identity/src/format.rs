//! Text encodings of P-256 public keys: SPKI PEM, JWK and `did:key`.
//!
//! This module converts [`PublicKey`] to and from the formats a person or
//! another tool hands us, and parses them *strictly*: every malformed input is
//! a typed [`FormatError`], never a panic and never a silently different key.
//!
//! It must never accept private key material where a public key is expected
//! (a JWK carrying `d`, a PKCS#8 PEM) and never guess a curve: only P-256.
//!
//! `did:key` follows the W3C CCG did:key method for P-256: `did:key:` +
//! multibase base58btc (`z`) of the multicodec `p256-pub` (0x1200, varint bytes
//! `0x80 0x24`) followed by the 33-byte compressed SEC1 point.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;

/// The `did:key` method prefix.
pub const DID_KEY_PREFIX: &str = "did:key:";
/// Varint encoding of multicodec `p256-pub` (0x1200).
pub const P256_PUB_MULTICODEC: [u8; 2] = [0x80, 0x24];

/// Errors parsing or producing a public key encoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Not a valid P-256 point (wrong length, off-curve, identity).
    #[error("not a valid P-256 public key point")]
    InvalidPoint,
    /// Not a valid P-256 private scalar (zero or not below the group order).
    #[error("not a valid P-256 private scalar")]
    InvalidScalar,
    /// The PEM or DER was not a P-256 SubjectPublicKeyInfo.
    #[error("not a P-256 SubjectPublicKeyInfo PEM/DER: {0}")]
    Spki(String),
    /// Encoding the SPKI failed.
    #[error("could not encode SubjectPublicKeyInfo: {0}")]
    SpkiEncode(String),
    /// The JWK was not valid JSON or lacked required members.
    #[error("malformed JWK: {0}")]
    JwkJson(String),
    /// The JWK `kty` was not `EC`.
    #[error("JWK kty must be \"EC\", found {0:?}")]
    JwkKeyType(String),
    /// The JWK `crv` was not `P-256`.
    #[error("JWK crv must be \"P-256\", found {0:?}")]
    JwkCurve(String),
    /// A JWK coordinate was not 32 bytes of unpadded base64url.
    #[error("JWK coordinate {0} is not 32 bytes of unpadded base64url")]
    JwkCoordinate(&'static str),
    /// A JWK given as a public key carried private key material (`d`).
    #[error("JWK carries private key material (\"d\"); refusing it as a public key")]
    JwkHasPrivateKey,
    /// The string did not start with `did:key:`.
    #[error("not a did:key (must start with \"did:key:\")")]
    DidKeyPrefix,
    /// The multibase prefix was not `z` (base58btc).
    #[error("did:key multibase must be base58btc ('z')")]
    DidKeyMultibase,
    /// The base58btc body did not decode.
    #[error("did:key body is not valid base58btc")]
    DidKeyBase58,
    /// The multicodec was not `p256-pub` (0x1200).
    #[error("did:key multicodec is not p256-pub (0x1200): found prefix {0:02x?}")]
    DidKeyMulticodec(Vec<u8>),
    /// The key bytes were not a 33-byte compressed P-256 point.
    #[error("did:key key bytes are not a compressed P-256 point")]
    DidKeyPoint,
    /// `parse` could not tell which format the text was in.
    #[error("unrecognized public key format (expected SPKI PEM, JWK or did:key)")]
    Unrecognized,
}

/// A public P-256 JSON Web Key (RFC 7517/7518): `kty`, `crv`, `x`, `y`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type; always `EC`.
    pub kty: String,
    /// Curve; always `P-256`.
    pub crv: String,
    /// x coordinate, base64url without padding.
    pub x: String,
    /// y coordinate, base64url without padding.
    pub y: String,
}

/// The JWK members we inspect when parsing (anything else, e.g. `kid`, `alg`, is ignored).
#[derive(Deserialize)]
struct JwkIn {
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<serde_json::Value>,
}

impl PublicKey {
    /// SubjectPublicKeyInfo DER.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, FormatError> {
        self.as_p256()
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| FormatError::SpkiEncode(e.to_string()))
    }

    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`, LF line endings).
    pub fn to_spki_pem(&self) -> Result<String, FormatError> {
        self.as_p256()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| FormatError::SpkiEncode(e.to_string()))
    }

    /// Parses SubjectPublicKeyInfo DER (P-256 only).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, FormatError> {
        p256::PublicKey::from_public_key_der(der)
            .map(PublicKey::from_p256)
            .map_err(|e| FormatError::Spki(e.to_string()))
    }

    /// Parses SubjectPublicKeyInfo PEM (P-256 only).
    pub fn from_spki_pem(pem: &str) -> Result<Self, FormatError> {
        p256::PublicKey::from_public_key_pem(pem.trim())
            .map(PublicKey::from_p256)
            .map_err(|e| FormatError::Spki(e.to_string()))
    }

    /// The public JWK.
    pub fn to_jwk(&self) -> Jwk {
        let p = self.to_sec1_uncompressed();
        Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: URL_SAFE_NO_PAD.encode(&p[1..33]),
            y: URL_SAFE_NO_PAD.encode(&p[33..65]),
        }
    }

    /// The public JWK as compact JSON (`{"kty":"EC","crv":"P-256","x":..,"y":..}`).
    pub fn to_jwk_string(&self) -> String {
        let j = self.to_jwk();
        // Members are base64url / fixed ASCII: no JSON escaping needed.
        format!(
            r#"{{"kty":"{}","crv":"{}","x":"{}","y":"{}"}}"#,
            j.kty, j.crv, j.x, j.y
        )
    }

    /// Parses a public JWK.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, FormatError> {
        Self::from_jwk_parts(Some(&jwk.kty), Some(&jwk.crv), Some(&jwk.x), Some(&jwk.y))
    }

    /// Parses a public JWK from JSON text. A JWK with `d` is refused.
    pub fn from_jwk_str(json: &str) -> Result<Self, FormatError> {
        let j: JwkIn =
            serde_json::from_str(json).map_err(|e| FormatError::JwkJson(e.to_string()))?;
        if j.d.is_some() {
            return Err(FormatError::JwkHasPrivateKey);
        }
        Self::from_jwk_parts(
            j.kty.as_deref(),
            j.crv.as_deref(),
            j.x.as_deref(),
            j.y.as_deref(),
        )
    }

    fn from_jwk_parts(
        kty: Option<&str>,
        crv: Option<&str>,
        x: Option<&str>,
        y: Option<&str>,
    ) -> Result<Self, FormatError> {
        let kty = kty.ok_or_else(|| FormatError::JwkJson("missing kty".into()))?;
        if kty != "EC" {
            return Err(FormatError::JwkKeyType(kty.into()));
        }
        let crv = crv.ok_or_else(|| FormatError::JwkJson("missing crv".into()))?;
        if crv != "P-256" {
            return Err(FormatError::JwkCurve(crv.into()));
        }
        let x = decode_coordinate(x, "x")?;
        let y = decode_coordinate(y, "y")?;
        let mut sec1 = [0u8; 65];
        sec1[0] = 0x04;
        sec1[1..33].copy_from_slice(&x);
        sec1[33..].copy_from_slice(&y);
        PublicKey::from_sec1_bytes(&sec1)
    }

    /// The `did:key` identifier (`did:key:zDn...`).
    pub fn to_did_key(&self) -> String {
        let mut body = Vec::with_capacity(35);
        body.extend_from_slice(&P256_PUB_MULTICODEC);
        body.extend_from_slice(&self.to_sec1_compressed());
        format!("{DID_KEY_PREFIX}z{}", bs58::encode(body).into_string())
    }

    /// Parses a P-256 `did:key` strictly (no fragment, no other multicodec).
    pub fn from_did_key(did: &str) -> Result<Self, FormatError> {
        let rest = did
            .strip_prefix(DID_KEY_PREFIX)
            .ok_or(FormatError::DidKeyPrefix)?;
        let b58 = rest.strip_prefix('z').ok_or(FormatError::DidKeyMultibase)?;
        let bytes = bs58::decode(b58)
            .with_alphabet(bs58::Alphabet::BITCOIN)
            .into_vec()
            .map_err(|_| FormatError::DidKeyBase58)?;
        if bytes.len() < 2 || bytes[..2] != P256_PUB_MULTICODEC {
            return Err(FormatError::DidKeyMulticodec(
                bytes.iter().take(2).copied().collect(),
            ));
        }
        let point = &bytes[2..];
        if point.len() != 33 || !(point[0] == 0x02 || point[0] == 0x03) {
            return Err(FormatError::DidKeyPoint);
        }
        PublicKey::from_sec1_bytes(point).map_err(|_| FormatError::DidKeyPoint)
    }

    /// Parses a public key given as SPKI PEM, JWK JSON or `did:key`,
    /// recognising the format from its first non-blank characters.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let t = text.trim();
        if t.starts_with("did:") {
            Self::from_did_key(t)
        } else if t.starts_with("-----BEGIN") {
            Self::from_spki_pem(t)
        } else if t.starts_with('{') {
            Self::from_jwk_str(t)
        } else {
            Err(FormatError::Unrecognized)
        }
    }
}

fn decode_coordinate(v: Option<&str>, which: &'static str) -> Result<[u8; 32], FormatError> {
    let v = v.ok_or(FormatError::JwkCoordinate(which))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| FormatError::JwkCoordinate(which))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| FormatError::JwkCoordinate(which))
}
