//! The Cryppo string layouts: parsing and serialization, no cryptography.
//!
//! | parts | layout |
//! |---|---|
//! | 3 | `Strategy.b64(ciphertext).b64('A' + BSON{iv, at, ad})` |
//! | 5 | the 3 parts `.Pbkdf2Hmac.b64('K' + BSON{iv: salt, i: iterations, l: 32})` |
//! | 2 | `Pbkdf2Hmac.b64('K' + BSON)` (derivation artefacts of a derived key) |
//! | 4 | `Sign.Rsa4096.b64(signature).b64(data)` |
//!
//! Parsing validates the shape each known strategy needs (e.g. a 12-byte `iv` and a 16-byte
//! `at` for `Aes256Gcm`), reads BSON fields in any order, keeps unknown fields, and reads legacy
//! YAML artefacts. Serializing writes BSON in the field order that was parsed, so
//! `parse(s)?.to_string() == s` for every well-formed current-format string; newly built
//! artefacts use Ruby Cryppo's order (`iv, at, ad` and `iv, i, l`). Legacy YAML input is
//! re-serialized as BSON (the current format) with the fields in YAML order.
//!
//! This module must never decrypt, derive or verify anything, and never panic on input.

use core::fmt;
use core::str::FromStr;

use crate::b64;
use crate::bson::{Document, Value};
use crate::error::{Error, Part, Result};
use crate::yaml;

/// Version byte of encryption artefacts.
const ARTEFACTS_VERSION: u8 = b'A';
/// Version byte of key derivation artefacts.
const DERIVATION_VERSION: u8 = b'K';

/// An encryption strategy name (first part of an encrypted string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncryptionStrategy {
    /// AES-256-GCM, 12-byte IV, 16-byte tag in `at`, AAD from `ad`.
    Aes256Gcm,
    /// RSA-OAEP with SHA-1 and MGF1-SHA-1 (Cryppo's `Rsa4096`).
    Rsa4096,
}

impl EncryptionStrategy {
    /// The name as written in Cryppo strings.
    pub fn as_str(self) -> &'static str {
        match self {
            EncryptionStrategy::Aes256Gcm => "Aes256Gcm",
            EncryptionStrategy::Rsa4096 => "Rsa4096",
        }
    }

    fn from_name(name: &str) -> Result<Self> {
        match name {
            "Aes256Gcm" => Ok(EncryptionStrategy::Aes256Gcm),
            "Rsa4096" => Ok(EncryptionStrategy::Rsa4096),
            other => Err(Error::UnknownStrategy(truncated(other))),
        }
    }
}

impl fmt::Display for EncryptionStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key derivation strategy name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DerivationStrategy {
    /// PBKDF2-HMAC-SHA256.
    Pbkdf2Hmac,
}

impl DerivationStrategy {
    /// The name as written in Cryppo strings.
    pub fn as_str(self) -> &'static str {
        match self {
            DerivationStrategy::Pbkdf2Hmac => "Pbkdf2Hmac",
        }
    }

    fn from_name(name: &str) -> Result<Self> {
        match name {
            "Pbkdf2Hmac" => Ok(DerivationStrategy::Pbkdf2Hmac),
            other => Err(Error::UnknownDerivationStrategy(truncated(other))),
        }
    }
}

/// A signature strategy name (second part of a `Sign.` string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureStrategy {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rsa4096,
}

impl SignatureStrategy {
    /// The name as written in Cryppo strings.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureStrategy::Rsa4096 => "Rsa4096",
        }
    }
}

/// Whether artefacts were read from BSON or from legacy YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArtefactFormat {
    /// Versioned BSON (current Cryppo).
    Bson,
    /// Legacy YAML (Cryppo < 0.6); re-serialized as BSON.
    LegacyYaml,
}

/// Keep untrusted names short in errors.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

fn decode_artefacts(part: Part, text: &str, version: u8) -> Result<(Document, ArtefactFormat)> {
    let bytes = b64::decode(part, text)?;
    match bytes.split_first() {
        Some((&v, bson)) if v == version => {
            Ok((Document::decode(part, bson)?, ArtefactFormat::Bson))
        }
        _ if yaml::is_legacy(&bytes) => {
            Ok((yaml::parse(part, &bytes)?, ArtefactFormat::LegacyYaml))
        }
        _ => Err(Error::Version {
            part,
            expected: char::from(version),
            found: bytes.first().copied(),
        }),
    }
}

fn write_artefacts(doc: &Document, version: u8, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut bytes = Vec::with_capacity(64);
    bytes.push(version);
    doc.encode_into(&mut bytes);
    f.write_str(&b64::encode(&bytes))
}

fn binary<'a>(doc: &'a Document, part: Part, field: &'static str) -> Result<Option<&'a [u8]>> {
    match doc.get(field) {
        None => Ok(None),
        Some(Value::Binary { bytes, .. }) => Ok(Some(bytes)),
        Some(_) => Err(Error::InvalidField {
            part,
            field,
            problem: "is not binary",
        }),
    }
}

fn int32(doc: &Document, part: Part, field: &'static str) -> Result<i32> {
    match doc.get(field) {
        None => Err(Error::MissingField { part, field }),
        Some(Value::Int32(i)) => Ok(*i),
        Some(_) => Err(Error::InvalidField {
            part,
            field,
            problem: "is not an int32",
        }),
    }
}

/// Encryption artefacts (`'A'` part): for `Aes256Gcm` the IV, the tag and the AAD string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artefacts {
    doc: Document,
    format: ArtefactFormat,
}

impl Artefacts {
    /// Artefacts of an AES-256-GCM encryption, in Ruby Cryppo's field order `iv, at, ad`.
    pub fn aes256gcm(iv: &[u8; 12], tag: &[u8; 16], ad: &str) -> Result<Self> {
        let mut doc = Document::new();
        doc.push(
            "iv",
            Value::Binary {
                subtype: 0,
                bytes: iv.to_vec(),
            },
        )?;
        doc.push(
            "at",
            Value::Binary {
                subtype: 0,
                bytes: tag.to_vec(),
            },
        )?;
        doc.push("ad", Value::String(ad.to_owned()))
            .map_err(|_| Error::TooLarge("the `ad` string"))?;
        Ok(Artefacts {
            doc,
            format: ArtefactFormat::Bson,
        })
    }

    /// The empty artefacts document (`QQUAAAAA`) used by `Rsa4096`.
    pub fn empty() -> Self {
        Artefacts {
            doc: Document::new(),
            format: ArtefactFormat::Bson,
        }
    }

    /// The document, all fields in order (including unknown ones).
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// Whether these were read from BSON or legacy YAML.
    pub fn format(&self) -> ArtefactFormat {
        self.format
    }

    /// The `iv` field, if it is binary.
    pub fn iv(&self) -> Option<&[u8]> {
        binary(&self.doc, Part::Artefacts, "iv").ok().flatten()
    }

    /// The `at` (authentication tag) field, if it is binary.
    pub fn auth_tag(&self) -> Option<&[u8]> {
        binary(&self.doc, Part::Artefacts, "at").ok().flatten()
    }

    /// The `ad` (additional authenticated data) field, if it is a string.
    pub fn ad(&self) -> Option<&str> {
        match self.doc.get("ad") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }
}

/// Borrowed AES-256-GCM parameters of a validated [`EncryptedData`].
#[derive(Debug, Clone, Copy)]
pub struct GcmParts<'a> {
    /// Ciphertext without the tag.
    pub ciphertext: &'a [u8],
    /// 96-bit IV.
    pub iv: &'a [u8; 12],
    /// 128-bit authentication tag.
    pub tag: &'a [u8; 16],
    /// The AAD string (`"none"` when the artefacts have no `ad`).
    pub ad: &'a str,
}

/// Owned AES-256-GCM parameters, for in-place decryption.
pub(crate) struct OwnedGcm {
    pub(crate) ciphertext: Vec<u8>,
    pub(crate) iv: [u8; 12],
    pub(crate) tag: [u8; 16],
    pub(crate) ad: String,
}

/// Key derivation artefacts (`'K'` part): PBKDF2 salt (`iv`), iterations (`i`), key length (`l`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivationArtefacts {
    strategy: DerivationStrategy,
    doc: Document,
    format: ArtefactFormat,
    iterations: u32,
}

impl DerivationArtefacts {
    /// PBKDF2 artefacts in Ruby Cryppo's field order `iv, i, l` with `l = 32`.
    pub fn pbkdf2(salt: &[u8], iterations: u32) -> Result<Self> {
        let i = i32::try_from(iterations).map_err(|_| Error::Iterations {
            iterations: iterations.into(),
            max: crate::pbkdf2::MAX_ITERATIONS,
        })?;
        let mut doc = Document::new();
        doc.push(
            "iv",
            Value::Binary {
                subtype: 0,
                bytes: salt.to_vec(),
            },
        )?;
        doc.push("i", Value::Int32(i))?;
        doc.push("l", Value::Int32(32))?;
        Self::validate(DerivationStrategy::Pbkdf2Hmac, doc, ArtefactFormat::Bson)
    }

    fn validate(
        strategy: DerivationStrategy,
        doc: Document,
        format: ArtefactFormat,
    ) -> Result<Self> {
        let part = Part::DerivationArtefacts;
        match binary(&doc, part, "iv")? {
            None => return Err(Error::MissingField { part, field: "iv" }),
            Some([]) => {
                return Err(Error::InvalidField {
                    part,
                    field: "iv",
                    problem: "(salt) is empty",
                })
            }
            Some(_) => {}
        }
        let iterations = u32::try_from(int32(&doc, part, "i")?)
            .ok()
            .filter(|&i| i > 0)
            .ok_or(Error::InvalidField {
                part,
                field: "i",
                problem: "(iterations) must be positive",
            })?;
        if int32(&doc, part, "l")? != 32 {
            return Err(Error::InvalidField {
                part,
                field: "l",
                problem: "(key length) must be 32",
            });
        }
        Ok(DerivationArtefacts {
            strategy,
            doc,
            format,
            iterations,
        })
    }

    fn parse(strategy: &str, artefacts: &str) -> Result<Self> {
        let strategy = DerivationStrategy::from_name(strategy)?;
        let (doc, format) =
            decode_artefacts(Part::DerivationArtefacts, artefacts, DERIVATION_VERSION)?;
        Self::validate(strategy, doc, format)
    }

    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.strategy.as_str())?;
        f.write_str(".")?;
        write_artefacts(&self.doc, DERIVATION_VERSION, f)
    }

    /// The derivation strategy.
    pub fn strategy(&self) -> DerivationStrategy {
        self.strategy
    }

    /// The salt (`iv` field).
    pub fn salt(&self) -> &[u8] {
        binary(&self.doc, Part::DerivationArtefacts, "iv")
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// The PBKDF2 iteration count (`i` field), at least 1.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The derived key length in bytes (`l` field); always 32.
    pub fn key_length(&self) -> usize {
        32
    }

    /// The document, all fields in order (including unknown ones such as JS's `hash`).
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// Whether these were read from BSON or legacy YAML.
    pub fn format(&self) -> ArtefactFormat {
        self.format
    }
}

/// Encrypted data: strategy, ciphertext, artefacts, and for passphrase encryption the
/// derivation artefacts. Constructed only validated, so `Aes256Gcm` data always has a 12-byte
/// IV and a 16-byte tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedData {
    strategy: EncryptionStrategy,
    ciphertext: Vec<u8>,
    artefacts: Artefacts,
    derivation: Option<DerivationArtefacts>,
}

impl EncryptedData {
    /// Assemble encrypted data, checking that the artefacts fit the strategy.
    pub fn new(
        strategy: EncryptionStrategy,
        ciphertext: Vec<u8>,
        artefacts: Artefacts,
        derivation: Option<DerivationArtefacts>,
    ) -> Result<Self> {
        let data = EncryptedData {
            strategy,
            ciphertext,
            artefacts,
            derivation,
        };
        if strategy == EncryptionStrategy::Aes256Gcm {
            data.check_gcm()?;
        }
        Ok(data)
    }

    fn check_gcm(&self) -> Result<GcmParts<'_>> {
        let part = Part::Artefacts;
        let doc = &self.artefacts.doc;
        let iv = binary(doc, part, "iv")?
            .ok_or(Error::MissingField { part, field: "iv" })?
            .try_into()
            .map_err(|_| Error::InvalidField {
                part,
                field: "iv",
                problem: "must be 12 bytes",
            })?;
        let tag = binary(doc, part, "at")?
            .ok_or(Error::MissingField { part, field: "at" })?
            .try_into()
            .map_err(|_| Error::InvalidField {
                part,
                field: "at",
                problem: "must be 16 bytes",
            })?;
        let ad = match doc.get("ad") {
            None => crate::aes256gcm::DEFAULT_AD,
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(Error::InvalidField {
                    part,
                    field: "ad",
                    problem: "is not a string",
                })
            }
        };
        Ok(GcmParts {
            ciphertext: &self.ciphertext,
            iv,
            tag,
            ad,
        })
    }

    /// The encryption strategy.
    pub fn strategy(&self) -> EncryptionStrategy {
        self.strategy
    }

    /// The ciphertext (for AES-GCM without the tag).
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    /// The encryption artefacts.
    pub fn artefacts(&self) -> &Artefacts {
        &self.artefacts
    }

    /// The key derivation artefacts of passphrase-encrypted (5-part) data.
    pub fn derivation(&self) -> Option<&DerivationArtefacts> {
        self.derivation.as_ref()
    }

    /// The AES-256-GCM parameters; [`Error::WrongKind`] for other strategies.
    pub fn gcm(&self) -> Result<GcmParts<'_>> {
        if self.strategy != EncryptionStrategy::Aes256Gcm {
            return Err(Error::WrongKind {
                expected: "Aes256Gcm data",
                found: self.strategy.as_str(),
            });
        }
        self.check_gcm()
    }

    /// The AAD string of `Aes256Gcm` data (`"none"` if absent), without decrypting.
    pub fn ad(&self) -> Option<&str> {
        self.gcm().ok().map(|p| p.ad)
    }

    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.strategy.as_str())?;
        f.write_str(".")?;
        b64::write(&self.ciphertext, f)?;
        f.write_str(".")?;
        write_artefacts(&self.artefacts.doc, ARTEFACTS_VERSION, f)?;
        if let Some(d) = &self.derivation {
            f.write_str(".")?;
            d.write(f)?;
        }
        Ok(())
    }

    /// Serialize into a `String` sized up front (what `to_string()` does, without regrowth).
    pub fn to_cryppo_string(&self) -> String {
        use fmt::Write as _;
        let estimate = self.ciphertext.len() / 3 * 4 + 256;
        let mut out = String::with_capacity(estimate);
        // Writing to a String cannot fail.
        let _ = write!(out, "{self}");
        out
    }

    /// Split `Aes256Gcm` data into owned (ciphertext, iv, tag, ad) without copying the
    /// ciphertext.
    pub(crate) fn into_gcm(self) -> Result<OwnedGcm> {
        let p = self.gcm()?;
        let (iv, tag, ad) = (*p.iv, *p.tag, p.ad.to_owned());
        Ok(OwnedGcm {
            ciphertext: self.ciphertext,
            iv,
            tag,
            ad,
        })
    }
}

/// A `Sign.Rsa4096` signature over embedded data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedData {
    /// The signature strategy.
    pub strategy: SignatureStrategy,
    /// The signature bytes.
    pub signature: Vec<u8>,
    /// The signed data.
    pub data: Vec<u8>,
}

/// Any Cryppo string.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Serialized {
    /// 3 parts (key encryption) or 5 parts (passphrase encryption).
    Encrypted(EncryptedData),
    /// 2 parts: the derivation artefacts of a derived key.
    DerivedKey(DerivationArtefacts),
    /// 4 parts: `Sign.Rsa4096.signature.data`.
    Signature(SignedData),
}

impl Serialized {
    /// Parse a Cryppo string. Never panics; every failure is a typed [`Error`].
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.splitn(6, '.').collect();
        match parts.as_slice() {
            [strategy, artefacts] => Ok(Serialized::DerivedKey(DerivationArtefacts::parse(
                strategy, artefacts,
            )?)),
            [strategy, ct, artefacts] => Ok(Serialized::Encrypted(parse_encrypted(
                strategy, ct, artefacts, None,
            )?)),
            [strategy, ct, artefacts, dstrategy, dartefacts] => {
                let derivation = DerivationArtefacts::parse(dstrategy, dartefacts)?;
                Ok(Serialized::Encrypted(parse_encrypted(
                    strategy,
                    ct,
                    artefacts,
                    Some(derivation),
                )?))
            }
            ["Sign", strategy, sig, data] => {
                let strategy = match *strategy {
                    "Rsa4096" => SignatureStrategy::Rsa4096,
                    other => return Err(Error::UnknownSignatureStrategy(truncated(other))),
                };
                Ok(Serialized::Signature(SignedData {
                    strategy,
                    signature: b64::decode(Part::Signature, sig)?,
                    data: b64::decode(Part::SignedData, data)?,
                }))
            }
            [strategy, _, _, _] => {
                // Four parts are only valid for signatures; say which strategy was meant.
                EncryptionStrategy::from_name(strategy)?;
                Err(Error::PartCount {
                    expected: "3 or 5 (encrypted data)",
                    found: 4,
                })
            }
            other => Err(Error::PartCount {
                expected: "2, 3, 4 or 5",
                found: if other.len() > 5 {
                    s.split('.').count()
                } else {
                    other.len()
                },
            }),
        }
    }

    /// A short name of the kind of data, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Serialized::Encrypted(d) if d.derivation.is_some() => "passphrase-encrypted data",
            Serialized::Encrypted(_) => "encrypted data",
            Serialized::DerivedKey(_) => "derivation artefacts",
            Serialized::Signature(_) => "a signature",
        }
    }

    /// The encrypted data, or [`Error::WrongKind`].
    pub fn into_encrypted(self) -> Result<EncryptedData> {
        match self {
            Serialized::Encrypted(d) => Ok(d),
            other => Err(Error::WrongKind {
                expected: "encrypted data",
                found: other.kind(),
            }),
        }
    }
}

fn parse_encrypted(
    strategy: &str,
    ciphertext: &str,
    artefacts: &str,
    derivation: Option<DerivationArtefacts>,
) -> Result<EncryptedData> {
    if strategy == "Sign" {
        return Err(Error::PartCount {
            expected: "4 (signature)",
            found: if derivation.is_some() { 5 } else { 3 },
        });
    }
    let strategy = EncryptionStrategy::from_name(strategy)?;
    let ciphertext = b64::decode(Part::Ciphertext, ciphertext)?;
    let (doc, format) = decode_artefacts(Part::Artefacts, artefacts, ARTEFACTS_VERSION)?;
    EncryptedData::new(strategy, ciphertext, Artefacts { doc, format }, derivation)
}

impl fmt::Display for Serialized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Serialized::Encrypted(d) => d.write(f),
            Serialized::DerivedKey(d) => d.write(f),
            Serialized::Signature(s) => {
                f.write_str("Sign.")?;
                f.write_str(s.strategy.as_str())?;
                f.write_str(".")?;
                b64::write(&s.signature, f)?;
                f.write_str(".")?;
                b64::write(&s.data, f)
            }
        }
    }
}

/// The Cryppo string (3 or 5 parts).
impl fmt::Display for EncryptedData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f)
    }
}

/// The 2-part `Pbkdf2Hmac.<artefacts>` string.
impl fmt::Display for DerivationArtefacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f)
    }
}

impl FromStr for Serialized {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Serialized::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_empty_artefacts() {
        let s = Serialized::parse("Rsa4096.AAAA.QQUAAAAA").unwrap();
        let d = s.clone().into_encrypted().unwrap();
        assert!(d.artefacts().document().is_empty());
        assert_eq!(s.to_string(), "Rsa4096.AAAA.QQUAAAAA");
    }

    #[test]
    fn worked_example_derivation() {
        // From the README worked example: i = 21138, 20-byte salt, l = 32, Elixir order.
        let doc_hex = "4b30000000106900925200000569760014000000000101010101010101010101010101010101010101106c002000000000";
        let bytes = hex_decode(doc_hex);
        let text = b64::encode(&bytes);
        let s = format!("Pbkdf2Hmac.{text}");
        let Serialized::DerivedKey(d) = Serialized::parse(&s).unwrap() else {
            panic!("not a derived key")
        };
        assert_eq!(d.iterations(), 21138);
        assert_eq!(d.salt(), [1u8; 20]);
        assert_eq!(d.to_string(), s, "field order i, iv, l is preserved");
    }

    fn hex_decode(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn part_count_errors() {
        assert!(matches!(
            Serialized::parse("Aes256Gcm"),
            Err(Error::PartCount { found: 1, .. })
        ));
        assert!(matches!(
            Serialized::parse("a.b.c.d.e.f.g"),
            Err(Error::PartCount { found: 7, .. })
        ));
        assert!(matches!(
            Serialized::parse("Aes256Gcm.a.b.c"),
            Err(Error::PartCount { found: 4, .. })
        ));
    }
}
