//! Social recovery: the recovery secret split K-of-N over GF(256) (`blahaj`),
//! one share per trustee, signed by the recovery key and sealed to the
//! trustee's `did:key` with HPKE auth mode (sender = the recovery key).
//!
//! # Phases (types)
//!
//! ```text
//! owner:    ShareSet::split(secret, trustees, k)  -> SealedShare (one per trustee, kind 1)
//! trustee:  SealedShare::open(trustee_key)        -> HeldShare   (refuses a share sealed to another key)
//!           HeldShare::to_bytes / from_bytes         (what the trustee's agent stores under a KEK)
//!           HeldShare::release(trustee_key, did)  -> ReleasedShare (kind 2, sealed to the owner's
//!                                                    one-time request key, sender = the trustee)
//! owner:    combine(released, request_key)        -> Recovered { secret, key }
//! ```
//!
//! # What a share carries
//!
//! - A **tag**: which secret it belongs to, `SHA-256("keyward/recovery/v1/share-tag" ||
//!   compressed SEC1 of the recovery public key)`. The recovery public key travels with it.
//! - A **hint**: a random 16-byte set id (one per split, so shares of two splits of the same
//!   secret, e.g. before and after a trustee change, are told apart), the threshold K, the
//!   trustee list (`did:key`s, in share order) and the share index `i` (1-based; it is the
//!   Shamir x coordinate, and `trustees[i-1]` is the trustee who holds it).
//! - A **statement** signed by the recovery key (COSE_Sign1, ES256, `kid` = the recovery key's
//!   KeyId, no external AAD), whose payload is the CBOR map
//!   `{v: 1, kind: "keyward/recovery/v1/share", tag, set, k, index, trustees, share_hash}` with
//!   `share_hash = SHA-256("keyward/recovery/v1/share-hash" || set || index || y)`, where `y`
//!   is the 32-byte Shamir value. The statement holds a hash of `y`, not `y`, so the COSE
//!   library never handles secret bytes; `y` itself only lives in zeroizing buffers.
//!
//! # Envelope (CBOR map, both kinds; at most [`MAX_SHARE_LEN`] bytes)
//!
//! `{v: 1, kind: 1|2, kem: 0x10, kdf: 1, aead: 2, tag: bstr32, recovery: bstr33, set: bstr16,
//! k, index, trustees: [tstr], recipient: bstr32 (KeyId), enc: bstr65, ct: bstr}`.
//! Kind 1 (to a trustee) is sealed by the recovery key to `trustees[index-1]`; kind 2
//! (released) is sealed by `trustees[index-1]` to the owner's request key. The HPKE info binds
//! the kind and the recovery, sender and recipient keys; the AAD binds every clear field. The
//! plaintext is the CBOR map `{cose: bstr, y: bstr32}`.
//!
//! # Checks
//!
//! Parsing checks sizes, version, suite, kind, field lengths, the DIDs, that the tag is the
//! hash of the recovery key, and (kind 1) that the recipient is the indexed trustee. Opening
//! checks the recipient, then HPKE (sender authenticated), then the signature, then that the
//! signed statement equals the clear hint and `y` matches its hash. Combining also refuses
//! mixed tags, mixed sets, duplicate indices and too few shares, and after interpolation
//! derives the recovery key from the result and requires it to be the tagged key.
//!
//! This module must never put `y` or the secret in an error, a log or a non-zeroizing buffer
//! it owns, never return a secret whose derived key does not match the tag, and never open a
//! share without checking its signature.

use keyward_identity::hpke::{self, HpkeError};
use keyward_identity::{cose, KeyId, LocalKey, PublicKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::derive::{DeriveError, RecoveryKey};
use crate::request::RequestKey;
use crate::secret::{RecoverySecret, SECRET_LEN};

/// Current share format version.
pub const SHARE_VERSION: u8 = 1;
/// Largest encoded share (envelope or held share) accepted, in bytes.
pub const MAX_SHARE_LEN: usize = 32 * 1024;
/// Most trustees in one split.
pub const MAX_TRUSTEES: usize = 64;
/// Longest trustee DID accepted.
pub const MAX_DID_LEN: usize = 128;
/// Length of the per-split set id.
pub const SET_ID_LEN: usize = 16;

const TAG_LABEL: &[u8] = b"keyward/recovery/v1/share-tag";
const HASH_LABEL: &[u8] = b"keyward/recovery/v1/share-hash";
/// The statement's `kind` (domain separation: `sign_es256` takes no external AAD).
const STATEMENT_KIND: &str = "keyward/recovery/v1/share";
const INFO_LABEL: &[u8] = b"keyward/recovery/v1/share-info";
const AAD_LABEL: &[u8] = b"keyward/recovery/v1/share-aad";
const KIND_SEALED: u8 = 1;
const KIND_RELEASED: u8 = 2;
const HELD_KIND: &str = "keyward-recovery-held-share";

/// Which secret a share belongs to: a hash of the recovery public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShareTag(pub [u8; 32]);

impl ShareTag {
    /// The tag of the secret whose recovery public key is `recovery`.
    pub fn of(recovery: &PublicKey) -> Self {
        let mut h = Sha256::new();
        h.update(TAG_LABEL);
        h.update(recovery.to_sec1_compressed());
        Self(h.finalize().into())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        KeyId(self.0).to_hex()
    }
}

impl core::fmt::Debug for ShareTag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ShareTag({})", self.to_hex())
    }
}

impl core::fmt::Display for ShareTag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The clear hint of a share: which split, threshold, trustees, and this share's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// Random id of the split (all shares of one split carry it).
    pub set_id: [u8; SET_ID_LEN],
    /// Shares needed to recover (K).
    pub threshold: u8,
    /// The trustees' `did:key`s, in share order (N of them).
    pub trustees: Vec<String>,
    /// This share's 1-based index (the Shamir x coordinate); `trustees[index-1]` holds it.
    pub index: u8,
}

impl Hint {
    /// The `did:key` of the trustee holding this share.
    pub fn trustee(&self) -> &str {
        self.trustees
            .get(usize::from(self.index).wrapping_sub(1))
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// What failed when a share is refused as tampered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tamper {
    /// HPKE decapsulation or the AEAD tag failed (altered ciphertext or clear field, or not
    /// sealed by the named sender).
    Aead,
    /// The recovery key's signature does not verify.
    Signature,
    /// The signed statement differs from the clear hint, or the share value from its hash.
    Mismatch,
}

impl core::fmt::Display for Tamper {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Tamper::Aead => "authenticated decryption failed",
            Tamper::Signature => "the recovery key's signature does not verify",
            Tamper::Mismatch => "the signed statement does not match the share",
        })
    }
}

/// Errors splitting, parsing, opening, releasing or combining shares.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// The encoded share is larger than [`MAX_SHARE_LEN`].
    #[error("share is {len} bytes, more than the {MAX_SHARE_LEN} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The bytes are not a share (CBOR, missing or ill-sized fields, bad keys).
    #[error("malformed recovery share: {0}")]
    Malformed(&'static str),
    /// Unsupported format version.
    #[error("unsupported recovery share version {0}")]
    UnsupportedVersion(u8),
    /// An HPKE suite other than Keyward's.
    #[error("unsupported HPKE suite kem={kem:#06x} kdf={kdf:#06x} aead={aead:#06x}")]
    UnsupportedSuite {
        /// KEM id found.
        kem: u16,
        /// KDF id found.
        kdf: u16,
        /// AEAD id found.
        aead: u16,
    },
    /// A released share where a trustee share was expected, or the reverse.
    #[error("expected a {expected} share, found kind {found}")]
    WrongKind {
        /// What was expected ("trustee" or "released").
        expected: &'static str,
        /// The kind byte found.
        found: u8,
    },
    /// The threshold is not in `2..=N`.
    #[error("threshold {k} is not between 2 and the number of trustees ({n})")]
    BadThreshold {
        /// K.
        k: u8,
        /// N.
        n: usize,
    },
    /// More than [`MAX_TRUSTEES`] trustees.
    #[error("{n} trustees, at most {MAX_TRUSTEES} allowed")]
    TooManyTrustees {
        /// N.
        n: usize,
    },
    /// The same trustee twice in one split.
    #[error("trustee {did} is listed twice")]
    DuplicateTrustee {
        /// The repeated DID.
        did: String,
    },
    /// A DID that is not a P-256 `did:key`.
    #[error("{did:?} is not a P-256 did:key")]
    BadDid {
        /// The DID (truncated to [`MAX_DID_LEN`]).
        did: String,
    },
    /// The share is sealed to another key.
    #[error("share is sealed to key {expected}, not to this key ({actual})")]
    NotForThisKey {
        /// Recipient key id in the share.
        expected: KeyId,
        /// Key id of the key used.
        actual: KeyId,
    },
    /// The key releasing a share is not the trustee the share names.
    #[error("share {index} belongs to trustee {trustee}, not to this key")]
    NotTheTrustee {
        /// Share index.
        index: u8,
        /// The DID the share names.
        trustee: String,
    },
    /// A share failed authentication.
    #[error("share {index} is tampered: {what}")]
    Tampered {
        /// Share index (as claimed by its clear hint).
        index: u8,
        /// What failed.
        what: Tamper,
    },
    /// No shares were given.
    #[error("no shares given")]
    NoShares,
    /// Fewer than K distinct shares.
    #[error("{have} shares, {need} needed")]
    NotEnoughShares {
        /// Distinct shares given.
        have: usize,
        /// The threshold.
        need: u8,
    },
    /// Shares of different secrets.
    #[error("shares belong to different secrets (tag {expected} and tag {found})")]
    TagMismatch {
        /// Tag of the first share.
        expected: ShareTag,
        /// The differing tag.
        found: ShareTag,
    },
    /// Shares of the same secret but of different splits (e.g. old and new trustees).
    #[error("shares come from different splits of the secret (share {index})")]
    DifferentShareSets {
        /// Index of the first share whose set differs from the first share's.
        index: u8,
    },
    /// The same share index twice.
    #[error("share {index} given twice")]
    DuplicateShare {
        /// The repeated index.
        index: u8,
    },
    /// The combined secret does not derive the tagged recovery key.
    #[error("the combined secret does not derive the shares' recovery key")]
    CombinedKeyMismatch,
    /// The recovered key is not the recovery root the caller expected.
    #[error("the shares recover key {found}, not the expected recovery root {expected}")]
    WrongRecoveryRoot {
        /// The expected recovery public key (did:key).
        expected: String,
        /// The recovered one.
        found: String,
    },
    /// The derivation failed (probability ~2^-8192).
    #[error(transparent)]
    Derive(#[from] DeriveError),
    /// Shamir splitting or recovery refused.
    #[error("secret sharing failed: {0}")]
    Shamir(&'static str),
    /// Signing the statement failed.
    #[error("signing the share failed: {0}")]
    Sign(String),
    /// HPKE sealing failed.
    #[error("sealing the share failed: {0}")]
    Seal(String),
}

// ---------------------------------------------------------------- wire forms

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeWire {
    v: u8,
    kind: u8,
    kem: u16,
    kdf: u16,
    aead: u16,
    #[serde(with = "serde_bytes")]
    tag: Vec<u8>,
    #[serde(with = "serde_bytes")]
    recovery: Vec<u8>,
    #[serde(with = "serde_bytes")]
    set: Vec<u8>,
    k: u8,
    index: u8,
    trustees: Vec<String>,
    #[serde(with = "serde_bytes")]
    recipient: Vec<u8>,
    #[serde(with = "serde_bytes")]
    enc: Vec<u8>,
    #[serde(with = "serde_bytes")]
    ct: Vec<u8>,
}

/// The signed statement (COSE_Sign1 payload).
#[derive(Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Statement {
    v: u8,
    kind: String,
    #[serde(with = "serde_bytes")]
    tag: Vec<u8>,
    #[serde(with = "serde_bytes")]
    set: Vec<u8>,
    k: u8,
    index: u8,
    trustees: Vec<String>,
    #[serde(with = "serde_bytes")]
    share_hash: Vec<u8>,
}

/// The HPKE plaintext. Zeroized on drop.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain {
    #[serde(with = "serde_bytes")]
    cose: Vec<u8>,
    #[serde(with = "serde_bytes")]
    y: Vec<u8>,
}

impl Drop for Plain {
    fn drop(&mut self) {
        self.y.zeroize();
    }
}

/// What a trustee's agent stores. Zeroized on drop.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeldWire {
    v: u8,
    kind: String,
    #[serde(with = "serde_bytes")]
    recovery: Vec<u8>,
    #[serde(with = "serde_bytes")]
    cose: Vec<u8>,
    #[serde(with = "serde_bytes")]
    y: Vec<u8>,
}

impl Drop for HeldWire {
    fn drop(&mut self) {
        self.y.zeroize();
    }
}

/// Encodes into a zeroizing buffer sized up front (`capacity` must cover the
/// encoding, so the Vec never reallocates and leaves an unzeroized copy).
fn cbor_to_vec<T: Serialize>(value: &T, capacity: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    // Serializing plain structs into a Vec cannot fail.
    let _ = ciborium::into_writer(value, &mut *out);
    out
}

fn push_lv(out: &mut Vec<u8>, field: &[u8]) {
    // Every field is bounded by MAX_SHARE_LEN, far below 2^32.
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

fn share_hash(set: &[u8; SET_ID_LEN], index: u8, y: &[u8; SECRET_LEN]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_LABEL);
    h.update(set);
    h.update([index]);
    h.update(y);
    h.finalize().into()
}

fn parse_did(did: &str) -> Result<PublicKey, ShareError> {
    if did.len() > MAX_DID_LEN {
        return Err(ShareError::BadDid {
            did: did.chars().take(MAX_DID_LEN).collect(),
        });
    }
    PublicKey::from_did_key(did).map_err(|_| ShareError::BadDid {
        did: did.to_owned(),
    })
}

// ---------------------------------------------------------------- the envelope

/// The parsed, validated clear part of a share envelope (both kinds).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Envelope {
    kind: u8,
    tag: ShareTag,
    recovery: PublicKey,
    hint: Hint,
    trustee_keys: Vec<PublicKey>,
    recipient: KeyId,
    enc: Vec<u8>,
    ct: Vec<u8>,
}

impl Envelope {
    fn trustee_key(&self) -> PublicKey {
        // `from_wire` checked 1 <= index <= trustees.len().
        self.trustee_keys[usize::from(self.hint.index) - 1]
    }

    /// The HPKE sender: the recovery key for kind 1, the trustee for kind 2.
    fn sender(&self) -> PublicKey {
        if self.kind == KIND_SEALED {
            self.recovery
        } else {
            self.trustee_key()
        }
    }

    fn info(kind: u8, recovery: &PublicKey, sender: &PublicKey, recipient: &PublicKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        push_lv(&mut out, INFO_LABEL);
        out.push(kind);
        push_lv(&mut out, &recovery.to_sec1_compressed());
        push_lv(&mut out, &sender.to_sec1_compressed());
        push_lv(&mut out, &recipient.to_sec1_compressed());
        out
    }

    fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        push_lv(&mut out, AAD_LABEL);
        out.push(SHARE_VERSION);
        out.push(self.kind);
        out.extend_from_slice(&hpke::KEM_ID.to_be_bytes());
        out.extend_from_slice(&hpke::KDF_ID.to_be_bytes());
        out.extend_from_slice(&hpke::AEAD_ID.to_be_bytes());
        push_lv(&mut out, &self.tag.0);
        push_lv(&mut out, &self.recovery.to_sec1_compressed());
        push_lv(&mut out, &self.hint.set_id);
        out.push(self.hint.threshold);
        out.push(self.hint.index);
        out.extend_from_slice(&(self.hint.trustees.len() as u32).to_be_bytes());
        for did in &self.hint.trustees {
            push_lv(&mut out, did.as_bytes());
        }
        push_lv(&mut out, self.recipient.as_bytes());
        out
    }

    /// Seals `plain` from `sender` to `recipient`, filling `enc`/`ct`.
    fn seal<R: CryptoRng + RngCore>(
        mut self,
        sender: &LocalKey,
        recipient: &PublicKey,
        plain: &Plain,
        rng: &mut R,
    ) -> Result<Self, ShareError> {
        let info = Self::info(self.kind, &self.recovery, &sender.public_key(), recipient);
        let aad = self.aad();
        let pt = cbor_to_vec(plain, plain.cose.len() + 128);
        let sealed = hpke::seal_auth(recipient, sender, &info, &aad, &pt, rng)
            .map_err(|e: HpkeError| ShareError::Seal(e.to_string()))?;
        self.enc = sealed.enc;
        self.ct = sealed.ciphertext;
        Ok(self)
    }

    /// Checks the recipient, opens, verifies the signature and the statement.
    fn open(&self, key: &LocalKey) -> Result<OpenedValue, ShareError> {
        let me = key.public_key();
        if me.key_id() != self.recipient {
            return Err(ShareError::NotForThisKey {
                expected: self.recipient,
                actual: me.key_id(),
            });
        }
        let index = self.hint.index;
        let tampered = |what| ShareError::Tampered { index, what };
        let sender = self.sender();
        let info = Self::info(self.kind, &self.recovery, &sender, &me);
        let pt = hpke::open_auth(key, &sender, &self.enc, &info, &self.aad(), &self.ct)
            .map_err(|_| tampered(Tamper::Aead))?;
        // Authenticated plaintext that does not parse was still made by the sender: tampered.
        let plain: Plain =
            keyward_identity::cbor::from_slice(&pt).map_err(|_| tampered(Tamper::Mismatch))?;
        let value = verify_statement(&self.recovery, &self.tag, &self.hint, plain)?;
        Ok(value)
    }

    fn to_wire(&self) -> EnvelopeWire {
        EnvelopeWire {
            v: SHARE_VERSION,
            kind: self.kind,
            kem: hpke::KEM_ID,
            kdf: hpke::KDF_ID,
            aead: hpke::AEAD_ID,
            tag: self.tag.0.to_vec(),
            recovery: self.recovery.to_sec1_compressed().to_vec(),
            set: self.hint.set_id.to_vec(),
            k: self.hint.threshold,
            index: self.hint.index,
            trustees: self.hint.trustees.clone(),
            recipient: self.recipient.as_bytes().to_vec(),
            enc: self.enc.clone(),
            ct: self.ct.clone(),
        }
    }

    fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        let _ = ciborium::into_writer(&self.to_wire(), &mut out);
        out
    }

    fn from_cbor(bytes: &[u8], want_kind: u8) -> Result<Self, ShareError> {
        if bytes.len() > MAX_SHARE_LEN {
            return Err(ShareError::TooLarge { len: bytes.len() });
        }
        let w: EnvelopeWire = keyward_identity::cbor::from_slice(bytes)
            .map_err(|_| ShareError::Malformed("not a CBOR share envelope"))?;
        if w.v != SHARE_VERSION {
            return Err(ShareError::UnsupportedVersion(w.v));
        }
        if w.kind != want_kind {
            return Err(ShareError::WrongKind {
                expected: if want_kind == KIND_SEALED {
                    "trustee"
                } else {
                    "released"
                },
                found: w.kind,
            });
        }
        if (w.kem, w.kdf, w.aead) != (hpke::KEM_ID, hpke::KDF_ID, hpke::AEAD_ID) {
            return Err(ShareError::UnsupportedSuite {
                kem: w.kem,
                kdf: w.kdf,
                aead: w.aead,
            });
        }
        let (recovery, tag, hint, trustee_keys) =
            parse_hint(&w.recovery, &w.tag, &w.set, w.k, w.index, &w.trustees)?;
        let recipient =
            KeyId::from_slice(&w.recipient).ok_or(ShareError::Malformed("bad recipient id"))?;
        if w.enc.len() != hpke::ENC_LEN {
            return Err(ShareError::Malformed("enc has the wrong length"));
        }
        if w.ct.len() < 16 {
            return Err(ShareError::Malformed("ciphertext too short"));
        }
        let env = Envelope {
            kind: w.kind,
            tag,
            recovery,
            hint,
            trustee_keys,
            recipient,
            enc: w.enc,
            ct: w.ct,
        };
        if env.kind == KIND_SEALED && env.trustee_key().key_id() != env.recipient {
            return Err(ShareError::Malformed(
                "share is not sealed to the trustee its index names",
            ));
        }
        Ok(env)
    }
}

type ParsedHint = (PublicKey, ShareTag, Hint, Vec<PublicKey>);

/// Validates the clear hint fields shared by envelopes and held shares.
fn parse_hint(
    recovery: &[u8],
    tag: &[u8],
    set: &[u8],
    k: u8,
    index: u8,
    trustees: &[String],
) -> Result<ParsedHint, ShareError> {
    if recovery.len() != 33 {
        return Err(ShareError::Malformed(
            "recovery key is not a compressed point",
        ));
    }
    let recovery = PublicKey::from_sec1_bytes(recovery)
        .map_err(|_| ShareError::Malformed("bad recovery key"))?;
    let tag: [u8; 32] = tag
        .try_into()
        .map_err(|_| ShareError::Malformed("tag is not 32 bytes"))?;
    let tag = ShareTag(tag);
    if tag != ShareTag::of(&recovery) {
        return Err(ShareError::Malformed("tag is not the recovery key's tag"));
    }
    let set_id: [u8; SET_ID_LEN] = set
        .try_into()
        .map_err(|_| ShareError::Malformed("set id is not 16 bytes"))?;
    let n = trustees.len();
    if n > MAX_TRUSTEES {
        return Err(ShareError::TooManyTrustees { n });
    }
    if k < 2 || usize::from(k) > n {
        return Err(ShareError::BadThreshold { k, n });
    }
    if index == 0 || usize::from(index) > n {
        return Err(ShareError::Malformed("share index out of range"));
    }
    let mut keys = Vec::with_capacity(n);
    for did in trustees {
        let key = parse_did(did)?;
        if keys.contains(&key) {
            return Err(ShareError::DuplicateTrustee { did: did.clone() });
        }
        keys.push(key);
    }
    let hint = Hint {
        set_id,
        threshold: k,
        trustees: trustees.to_vec(),
        index,
    };
    Ok((recovery, tag, hint, keys))
}

/// A verified share value with its signed statement (kept to re-seal on release).
struct OpenedValue {
    cose: Vec<u8>,
    y: Zeroizing<[u8; SECRET_LEN]>,
}

/// Verifies the COSE statement against the clear fields and `y` against its hash.
fn verify_statement(
    recovery: &PublicKey,
    tag: &ShareTag,
    hint: &Hint,
    plain: Plain,
) -> Result<OpenedValue, ShareError> {
    let index = hint.index;
    let tampered = |what| ShareError::Tampered { index, what };
    let msg = cose::parse(&plain.cose).map_err(|_| tampered(Tamper::Signature))?;
    let payload = cose::verify_es256_protected(&msg, recovery, b"")
        .map_err(|_| tampered(Tamper::Signature))?;
    let statement: Statement =
        keyward_identity::cbor::from_slice(payload).map_err(|_| tampered(Tamper::Mismatch))?;
    let y: [u8; SECRET_LEN] = plain
        .y
        .as_slice()
        .try_into()
        .map_err(|_| tampered(Tamper::Mismatch))?;
    let y = Zeroizing::new(y);
    let expected = Statement {
        v: SHARE_VERSION,
        kind: STATEMENT_KIND.to_owned(),
        tag: tag.0.to_vec(),
        set: hint.set_id.to_vec(),
        k: hint.threshold,
        index: hint.index,
        trustees: hint.trustees.clone(),
        share_hash: share_hash(&hint.set_id, hint.index, &y).to_vec(),
    };
    if statement != expected {
        return Err(tampered(Tamper::Mismatch));
    }
    Ok(OpenedValue {
        cose: plain.cose.clone(),
        y,
    })
}

/// Signs the statement for `(hint, y)` with the recovery key and seals the
/// share to `trustees[hint.index - 1]` (kind 1).
fn seal_to_trustee<R: CryptoRng + RngCore>(
    key: &RecoveryKey,
    hint: Hint,
    trustees: &[PublicKey],
    y: &[u8; SECRET_LEN],
    rng: &mut R,
) -> Result<Envelope, ShareError> {
    let recovery = key.public_key();
    let tag = ShareTag::of(&recovery);
    let trustee = *trustees
        .get(usize::from(hint.index).wrapping_sub(1))
        .ok_or(ShareError::Malformed("share index out of range"))?;
    let statement = Statement {
        v: SHARE_VERSION,
        kind: STATEMENT_KIND.to_owned(),
        tag: tag.0.to_vec(),
        set: hint.set_id.to_vec(),
        k: hint.threshold,
        index: hint.index,
        trustees: hint.trustees.clone(),
        share_hash: share_hash(&hint.set_id, hint.index, y).to_vec(),
    };
    let cose = cose::sign_es256(
        key.local_key(),
        recovery.key_id().as_bytes(),
        // A statement holds no secret (only the share's hash): no capacity needed.
        cbor_to_vec(&statement, 0).to_vec(),
    )
    .map_err(|e| ShareError::Sign(e.to_string()))?;
    let plain = Plain {
        cose,
        y: y.to_vec(),
    };
    Envelope {
        kind: KIND_SEALED,
        tag,
        recovery,
        hint,
        trustee_keys: trustees.to_vec(),
        recipient: trustee.key_id(),
        enc: Vec::new(),
        ct: Vec::new(),
    }
    .seal(key.local_key(), &trustee, &plain, rng)
}

// ---------------------------------------------------------------- owner: split

/// The N sealed shares of one split, one per trustee, in trustee order.
#[derive(Debug, Clone)]
pub struct ShareSet {
    tag: ShareTag,
    recovery: PublicKey,
    set_id: [u8; SET_ID_LEN],
    shares: Vec<SealedShare>,
}

impl ShareSet {
    /// Splits `secret` K-of-N among `trustees` (their `did:key` public keys).
    ///
    /// Derives the recovery key from `secret`, signs one statement per share
    /// with it and seals each share to its trustee with the recovery key as the
    /// HPKE sender. Refuses `k < 2`, `k > N`, `N >` [`MAX_TRUSTEES`] and a
    /// trustee listed twice. `rng` supplies the set id and the HPKE ephemeral
    /// keys; the polynomial coefficients come from `blahaj`'s dealer, i.e.
    /// `rand`'s thread RNG (ChaCha12 seeded and reseeded from the OS).
    pub fn split<R: CryptoRng + RngCore>(
        secret: &RecoverySecret,
        trustees: &[PublicKey],
        k: u8,
        rng: &mut R,
    ) -> Result<Self, ShareError> {
        let n = trustees.len();
        if n > MAX_TRUSTEES {
            return Err(ShareError::TooManyTrustees { n });
        }
        if k < 2 || usize::from(k) > n {
            return Err(ShareError::BadThreshold { k, n });
        }
        let mut dids = Vec::with_capacity(n);
        for (i, t) in trustees.iter().enumerate() {
            if trustees[..i].contains(t) {
                return Err(ShareError::DuplicateTrustee {
                    did: t.to_did_key(),
                });
            }
            dids.push(t.to_did_key());
        }
        let key = RecoveryKey::derive(secret)?;
        let recovery = key.public_key();
        let tag = ShareTag::of(&recovery);
        let mut set_id = [0u8; SET_ID_LEN];
        rng.fill_bytes(&mut set_id);

        let dealer = blahaj::Sharks(k);
        let mut shares = Vec::with_capacity(n);
        for (i, share) in dealer.dealer(secret.as_bytes()).take(n).enumerate() {
            let bytes = Zeroizing::new(Vec::<u8>::from(&share));
            drop(share);
            let index = u8::try_from(i + 1).map_err(|_| ShareError::Shamir("too many shares"))?;
            if bytes.len() != 1 + SECRET_LEN || bytes[0] != index {
                return Err(ShareError::Shamir("unexpected share layout"));
            }
            let mut y = Zeroizing::new([0u8; SECRET_LEN]);
            y.copy_from_slice(&bytes[1..]);
            let hint = Hint {
                set_id,
                threshold: k,
                trustees: dids.clone(),
                index,
            };
            let env = seal_to_trustee(&key, hint, trustees, &y, rng)?;
            shares.push(SealedShare(env));
        }
        if shares.len() != n {
            return Err(ShareError::Shamir("dealer produced too few shares"));
        }
        Ok(Self {
            tag,
            recovery,
            set_id,
            shares,
        })
    }

    /// The shares, in trustee order.
    pub fn shares(&self) -> &[SealedShare] {
        &self.shares
    }

    /// Consumes the set into its shares.
    pub fn into_shares(self) -> Vec<SealedShare> {
        self.shares
    }

    /// The tag every share carries.
    pub fn tag(&self) -> ShareTag {
        self.tag
    }

    /// The recovery public key.
    pub fn recovery_public_key(&self) -> PublicKey {
        self.recovery
    }

    /// The set id of this split.
    pub fn set_id(&self) -> [u8; SET_ID_LEN] {
        self.set_id
    }
}

// ---------------------------------------------------------------- trustee side

/// A share sealed to one trustee (kind 1). Its clear fields are validated
/// on parse but not authenticated until [`open`](Self::open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedShare(Envelope);

impl SealedShare {
    /// Opens the share with the trustee's private key: refuses a share sealed
    /// to another key ([`ShareError::NotForThisKey`]), then checks HPKE (the
    /// sender must be the recovery key), the recovery key's signature and the
    /// statement.
    pub fn open(&self, trustee_key: &LocalKey) -> Result<HeldShare, ShareError> {
        let value = self.0.open(trustee_key)?;
        Ok(HeldShare {
            tag: self.0.tag,
            recovery: self.0.recovery,
            hint: self.0.hint.clone(),
            trustee_keys: self.0.trustee_keys.clone(),
            cose: value.cose,
            y: value.y,
        })
    }

    /// The (claimed, until opened) tag.
    pub fn tag(&self) -> ShareTag {
        self.0.tag
    }

    /// The (claimed, until opened) hint.
    pub fn hint(&self) -> &Hint {
        &self.0.hint
    }

    /// The (claimed, until opened) recovery public key.
    pub fn recovery_public_key(&self) -> PublicKey {
        self.0.recovery
    }

    /// Key id of the trustee it is sealed to.
    pub fn recipient(&self) -> KeyId {
        self.0.recipient
    }

    /// Encodes as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        self.0.to_cbor()
    }

    /// Decodes and validates CBOR (at most [`MAX_SHARE_LEN`] bytes).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, ShareError> {
        Envelope::from_cbor(bytes, KIND_SEALED).map(Self)
    }
}

/// A share opened and verified by its trustee. Holds the share value
/// (zeroized on drop); `Debug` shows only the tag and hint.
#[derive(Clone)]
pub struct HeldShare {
    tag: ShareTag,
    recovery: PublicKey,
    hint: Hint,
    trustee_keys: Vec<PublicKey>,
    cose: Vec<u8>,
    y: Zeroizing<[u8; SECRET_LEN]>,
}

impl core::fmt::Debug for HeldShare {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeldShare")
            .field("tag", &self.tag)
            .field("recovery", &self.recovery)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl HeldShare {
    /// The verified tag.
    pub fn tag(&self) -> ShareTag {
        self.tag
    }

    /// The verified hint.
    pub fn hint(&self) -> &Hint {
        &self.hint
    }

    /// The verified recovery public key.
    pub fn recovery_public_key(&self) -> PublicKey {
        self.recovery
    }

    /// Re-seals the share to the owner's one-time request key (`did:key`),
    /// with `trustee_key` as the HPKE sender. `trustee_key` must be the
    /// trustee the share names ([`ShareError::NotTheTrustee`] otherwise). The
    /// trustee checks the request out of band before calling this.
    pub fn release<R: CryptoRng + RngCore>(
        &self,
        trustee_key: &LocalKey,
        owner_request_did: &str,
        rng: &mut R,
    ) -> Result<ReleasedShare, ShareError> {
        let index = self.hint.index;
        let me = trustee_key.public_key();
        if self.trustee_keys.get(usize::from(index).wrapping_sub(1)) != Some(&me) {
            return Err(ShareError::NotTheTrustee {
                index,
                trustee: self.hint.trustee().to_owned(),
            });
        }
        let owner = parse_did(owner_request_did)?;
        let plain = Plain {
            cose: self.cose.clone(),
            y: self.y.to_vec(),
        };
        let env = Envelope {
            kind: KIND_RELEASED,
            tag: self.tag,
            recovery: self.recovery,
            hint: self.hint.clone(),
            trustee_keys: self.trustee_keys.clone(),
            recipient: owner.key_id(),
            enc: Vec::new(),
            ct: Vec::new(),
        }
        .seal(trustee_key, &owner, &plain, rng)?;
        Ok(ReleasedShare(env))
    }

    /// What a trustee's agent stores (to be wrapped under a KEK): CBOR
    /// `{v, kind, recovery, cose, y}`, in a zeroizing buffer.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let wire = HeldWire {
            v: SHARE_VERSION,
            kind: HELD_KIND.to_owned(),
            recovery: self.recovery.to_sec1_compressed().to_vec(),
            cose: self.cose.clone(),
            y: self.y.to_vec(),
        };
        cbor_to_vec(&wire, self.cose.len() + 256)
    }

    /// Reads [`to_bytes`](Self::to_bytes) back, re-verifying the signature
    /// and the share value against the signed statement.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ShareError> {
        if bytes.len() > MAX_SHARE_LEN {
            return Err(ShareError::TooLarge { len: bytes.len() });
        }
        let mut w: HeldWire = keyward_identity::cbor::from_slice(bytes)
            .map_err(|_| ShareError::Malformed("not a CBOR held share"))?;
        if w.kind != HELD_KIND {
            return Err(ShareError::Malformed("not a held share"));
        }
        if w.v != SHARE_VERSION {
            return Err(ShareError::UnsupportedVersion(w.v));
        }
        if w.recovery.len() != 33 {
            return Err(ShareError::Malformed(
                "recovery key is not a compressed point",
            ));
        }
        let recovery = PublicKey::from_sec1_bytes(&w.recovery)
            .map_err(|_| ShareError::Malformed("bad recovery key"))?;
        // The hint comes from the signed statement itself.
        let msg = cose::parse(&w.cose).map_err(|_| ShareError::Malformed("bad statement"))?;
        let payload = cose::verify_es256_protected(&msg, &recovery, b"").map_err(|_| {
            ShareError::Tampered {
                index: 0,
                what: Tamper::Signature,
            }
        })?;
        let st: Statement = keyward_identity::cbor::from_slice(payload)
            .map_err(|_| ShareError::Malformed("bad statement payload"))?;
        let (recovery, tag, hint, trustee_keys) =
            parse_hint(&w.recovery, &st.tag, &st.set, st.k, st.index, &st.trustees)?;
        let plain = Plain {
            cose: core::mem::take(&mut w.cose),
            y: core::mem::take(&mut w.y),
        };
        let value = verify_statement(&recovery, &tag, &hint, plain)?;
        Ok(Self {
            tag,
            recovery,
            hint,
            trustee_keys,
            cose: value.cose,
            y: value.y,
        })
    }
}

/// A share released by its trustee to the owner's request key (kind 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedShare(Envelope);

impl ReleasedShare {
    /// The (claimed, until combined) tag.
    pub fn tag(&self) -> ShareTag {
        self.0.tag
    }

    /// The (claimed, until combined) hint.
    pub fn hint(&self) -> &Hint {
        &self.0.hint
    }

    /// Key id of the request key it is sealed to.
    pub fn recipient(&self) -> KeyId {
        self.0.recipient
    }

    /// Encodes as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        self.0.to_cbor()
    }

    /// Decodes and validates CBOR (at most [`MAX_SHARE_LEN`] bytes).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, ShareError> {
        Envelope::from_cbor(bytes, KIND_RELEASED).map(Self)
    }
}

// ---------------------------------------------------------------- owner: combine

/// The result of [`combine`]: the recovery secret and the key it derives,
/// which is the key the shares are tagged with.
#[derive(Debug)]
pub struct Recovered {
    /// The recovery secret.
    pub secret: RecoverySecret,
    /// The recovery key derived from it.
    pub key: RecoveryKey,
}

impl Recovered {
    /// Refuses unless the recovered key is `expected` (the recovery root the
    /// keystore knows): shares of someone else's secret are consistent among
    /// themselves but must not be accepted as this keystore's recovery root.
    pub fn expect_public_key(&self, expected: &PublicKey) -> Result<(), ShareError> {
        if self.key.public_key() == *expected {
            Ok(())
        } else {
            Err(ShareError::WrongRecoveryRoot {
                expected: expected.to_did_key(),
                found: self.key.did_key(),
            })
        }
    }
}

/// Combines released shares opened with the owner's request key.
///
/// Checks, in order: at least one share; each is sealed to `request_key`;
/// one tag (else [`ShareError::TagMismatch`]); one split (else
/// [`ShareError::DifferentShareSets`]); no index twice (else
/// [`ShareError::DuplicateShare`]); each opens, was sealed by the trustee
/// its index names, carries a valid recovery-key signature and matches it
/// (else [`ShareError::Tampered`]); at least K of them (else
/// [`ShareError::NotEnoughShares`]). Then interpolates, derives the recovery
/// key and requires it to be the tagged key ([`ShareError::CombinedKeyMismatch`]).
pub fn combine(
    released: &[ReleasedShare],
    request_key: &RequestKey,
) -> Result<Recovered, ShareError> {
    let first = released.first().ok_or(ShareError::NoShares)?;
    let me = request_key.public_key().key_id();
    for s in released {
        if s.0.recipient != me {
            return Err(ShareError::NotForThisKey {
                expected: s.0.recipient,
                actual: me,
            });
        }
    }
    for s in released {
        if s.0.tag != first.0.tag {
            return Err(ShareError::TagMismatch {
                expected: first.0.tag,
                found: s.0.tag,
            });
        }
    }
    for s in released {
        let (a, b) = (&s.0.hint, &first.0.hint);
        if a.set_id != b.set_id || a.threshold != b.threshold || a.trustees != b.trustees {
            return Err(ShareError::DifferentShareSets { index: a.index });
        }
    }
    let mut seen = [false; 256];
    for s in released {
        let i = usize::from(s.0.hint.index);
        if seen[i] {
            return Err(ShareError::DuplicateShare {
                index: s.0.hint.index,
            });
        }
        seen[i] = true;
    }
    let mut points = Vec::with_capacity(released.len());
    for s in released {
        let value = s.0.open(request_key.local_key())?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(1 + SECRET_LEN));
        bytes.push(s.0.hint.index);
        bytes.extend_from_slice(value.y.as_ref());
        let share = blahaj::Share::try_from(bytes.as_slice()).map_err(ShareError::Shamir)?;
        points.push(share);
    }
    let need = first.0.hint.threshold;
    if points.len() < usize::from(need) {
        return Err(ShareError::NotEnoughShares {
            have: points.len(),
            need,
        });
    }
    let combined = Zeroizing::new(
        blahaj::Sharks(need)
            .recover(points.iter())
            .map_err(|_| ShareError::Shamir("recovery refused"))?,
    );
    drop(points);
    if combined.len() != SECRET_LEN {
        return Err(ShareError::Shamir("recovered secret has the wrong length"));
    }
    let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
    bytes.copy_from_slice(&combined);
    let secret = RecoverySecret::from_bytes(*bytes);
    let key = RecoveryKey::derive(&secret)?;
    if key.public_key() != first.0.recovery {
        return Err(ShareError::CombinedKeyMismatch);
    }
    Ok(Recovered { secret, key })
}

#[cfg(test)]
#[path = "shamir_tests.rs"]
mod tests;
