//! Node delegation statements and the cluster [`Chain`].
//!
//! A statement is an ES256 COSE_Sign1 (see [`crate::cose`]) whose payload is a
//! CBOR map:
//!
//! | key    | type        | meaning                                                       |
//! |--------|-------------|---------------------------------------------------------------|
//! | `v`    | uint        | payload version, 1                                            |
//! | `kind` | text        | `"delegation"`, `"rekey"` or `"revocation"`                   |
//! | `iss`  | bstr .size 32 | issuer (parent) key id                                      |
//! | `sub`  | bstr .size 32 | subject key id (delegated / new / revoked key)              |
//! | `key`  | bstr .size 33 | subject public key, SEC1 compressed (delegation, rekey only) |
//! | `name` | text        | subject name (delegation, rekey only)                         |
//! | `iat`  | uint        | issued-at, unix seconds                                       |
//! | `exp`  | uint        | expiry, unix seconds (delegation, rekey only)                 |
//!
//! The COSE protected header carries `alg: ES256` and `kid` = issuer key id.
//!
//! Semantics checked by [`Chain::verify_key`]:
//! - a *delegation* from key P to key K says "P vouches for K until `exp`";
//! - a *rekey* is signed by the old key and names the new key; for the walk it
//!   is a link exactly like a delegation (old key vouches for new key). To
//!   retire the old key, have its parent delegate to the new key directly
//!   and then revoke the old key (revoking the old key cuts the rekey link);
//! - a *revocation* by key A of key K invalidates K and everything vouched
//!   through K, if A is K itself or an ancestor of K on the path to the root.
//!   Revocations take effect regardless of their `iat` and never expire;
//!   revocations signed by a key that is not on the path are ignored.
//!
//! This module must never report a key as vouched for without having verified
//! every link's signature and validity window on its path to the root, and
//! never let a revocation signed by a non-ancestor affect a key.

use std::collections::HashMap;

use coset::CoseSign1;
use serde::{Deserialize, Serialize};

use crate::cose::{self, Sign1Error};
use crate::ecdsa::Signer;
use crate::keys::{KeyId, PublicKey};

/// Current statement payload version.
pub const STATEMENT_VERSION: u8 = 1;
/// Current chain file version.
pub const CHAIN_VERSION: u8 = 1;
/// Longest path from a key to the root that [`Chain::verify_key`] will walk.
pub const MAX_DEPTH: usize = 16;

/// What a statement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StatementKind {
    /// The issuer vouches for a (new) subject key.
    Delegation,
    /// The issuer (an old key) hands over to a new subject key.
    Rekey,
    /// The issuer revokes the subject key id.
    Revocation,
}

/// A decoded statement payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Statement {
    /// What it says.
    pub kind: StatementKind,
    /// Key id of the signer (the parent, for a delegation).
    pub issuer: KeyId,
    /// Key id of the subject (delegated, new, or revoked key).
    pub subject: KeyId,
    /// The subject public key (delegation and rekey).
    pub subject_key: Option<PublicKey>,
    /// The subject's name (delegation and rekey).
    pub name: Option<String>,
    /// Issued-at, unix seconds.
    pub issued_at: u64,
    /// Expiry, unix seconds (delegation and rekey).
    pub expires_at: Option<u64>,
}

/// Errors issuing, decoding or verifying one statement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatementError {
    /// The COSE envelope is malformed, unsigned, or its signature does not verify.
    #[error(transparent)]
    Cose(#[from] Sign1Error),
    /// The payload is not a valid statement map.
    #[error("malformed statement payload: {0}")]
    MalformedPayload(String),
    /// The payload version is not supported.
    #[error("unsupported statement version {0}")]
    UnsupportedVersion(u8),
    /// The statement's issuer is not the key it was verified with / signed by.
    #[error("statement issuer {found} does not match key {expected}")]
    IssuerMismatch {
        /// Key id of the key used.
        expected: KeyId,
        /// Issuer named by the statement.
        found: KeyId,
    },
    /// The COSE `kid` header disagrees with the payload issuer.
    #[error("COSE kid does not match the statement issuer")]
    KidMismatch,
    /// The payload is internally inconsistent (e.g. `sub` is not the id of `key`,
    /// `exp <= iat`, missing fields for its kind).
    #[error("invalid statement: {0}")]
    Invalid(&'static str),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadWire {
    v: u8,
    kind: StatementKind,
    #[serde(with = "serde_bytes")]
    iss: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sub: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    key: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

impl Statement {
    fn to_wire(&self) -> PayloadWire {
        PayloadWire {
            v: STATEMENT_VERSION,
            kind: self.kind,
            iss: self.issuer.as_bytes().to_vec(),
            sub: self.subject.as_bytes().to_vec(),
            key: self.subject_key.map(|k| k.to_sec1_compressed().to_vec()),
            name: self.name.clone(),
            iat: self.issued_at,
            exp: self.expires_at,
        }
    }

    fn from_wire(w: PayloadWire) -> Result<Self, StatementError> {
        if w.v != STATEMENT_VERSION {
            return Err(StatementError::UnsupportedVersion(w.v));
        }
        let issuer =
            KeyId::from_slice(&w.iss).ok_or(StatementError::Invalid("iss is not 32 bytes"))?;
        let subject =
            KeyId::from_slice(&w.sub).ok_or(StatementError::Invalid("sub is not 32 bytes"))?;
        let subject_key = match (&w.kind, w.key) {
            (StatementKind::Revocation, None) => None,
            (StatementKind::Revocation, Some(_)) => {
                return Err(StatementError::Invalid("revocation carries a key"))
            }
            (_, None) => return Err(StatementError::Invalid("missing subject key")),
            (_, Some(k)) => {
                if k.len() != 33 {
                    return Err(StatementError::Invalid(
                        "subject key is not compressed SEC1",
                    ));
                }
                let pk = PublicKey::from_sec1_bytes(&k)
                    .map_err(|_| StatementError::Invalid("subject key is not a P-256 point"))?;
                if pk.key_id() != subject {
                    return Err(StatementError::Invalid("sub is not the id of key"));
                }
                Some(pk)
            }
        };
        match (w.kind, w.exp) {
            (StatementKind::Revocation, Some(_)) => {
                return Err(StatementError::Invalid("revocation carries an expiry"))
            }
            (StatementKind::Revocation, None) => {}
            (_, None) => return Err(StatementError::Invalid("missing expiry")),
            (_, Some(exp)) if exp <= w.iat => {
                return Err(StatementError::Invalid("expiry is not after issued-at"))
            }
            _ => {}
        }
        if w.kind == StatementKind::Revocation && w.name.is_some() {
            return Err(StatementError::Invalid("revocation carries a name"));
        }
        Ok(Self {
            kind: w.kind,
            issuer,
            subject,
            subject_key,
            name: w.name,
            issued_at: w.iat,
            expires_at: w.exp,
        })
    }

    /// The statement's CBOR payload.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        // Writing plain data to a Vec cannot fail.
        let _ = ciborium::into_writer(&self.to_wire(), &mut out);
        out
    }

    /// Decodes and validates a CBOR payload (no signature check).
    pub fn from_payload(bytes: &[u8]) -> Result<Self, StatementError> {
        let w: PayloadWire =
            crate::cbor::from_slice(bytes).map_err(StatementError::MalformedPayload)?;
        Self::from_wire(w)
    }
}

fn issue<S: Signer + ?Sized>(signer: &S, st: &Statement) -> Result<Vec<u8>, StatementError> {
    let signer_kid = signer.public_key().key_id();
    if signer_kid != st.issuer {
        return Err(StatementError::IssuerMismatch {
            expected: signer_kid,
            found: st.issuer,
        });
    }
    // Round-trip through validation so we never sign something we would reject.
    let payload = st.to_payload();
    Statement::from_payload(&payload)?;
    Ok(cose::sign_es256(signer, st.issuer.as_bytes(), payload)?)
}

/// Issues a delegation: `signer` (whose key id must be `parent_kid`) vouches
/// for `subject_pub`, named `name`, from `iat` until `exp` (unix seconds).
pub fn issue_delegation<S: Signer + ?Sized>(
    signer: &S,
    parent_kid: &KeyId,
    subject_pub: &PublicKey,
    name: &str,
    iat: u64,
    exp: u64,
) -> Result<Vec<u8>, StatementError> {
    issue(
        signer,
        &Statement {
            kind: StatementKind::Delegation,
            issuer: *parent_kid,
            subject: subject_pub.key_id(),
            subject_key: Some(*subject_pub),
            name: Some(name.to_owned()),
            issued_at: iat,
            expires_at: Some(exp),
        },
    )
}

/// Issues a rekey: the old key (`signer`) hands over to `new_pub`.
pub fn issue_rekey<S: Signer + ?Sized>(
    signer: &S,
    new_pub: &PublicKey,
    name: &str,
    iat: u64,
    exp: u64,
) -> Result<Vec<u8>, StatementError> {
    issue(
        signer,
        &Statement {
            kind: StatementKind::Rekey,
            issuer: signer.public_key().key_id(),
            subject: new_pub.key_id(),
            subject_key: Some(*new_pub),
            name: Some(name.to_owned()),
            issued_at: iat,
            expires_at: Some(exp),
        },
    )
}

/// Issues a revocation of `revoked_kid` by `signer` (whose key id must be `issuer_kid`).
pub fn issue_revocation<S: Signer + ?Sized>(
    signer: &S,
    issuer_kid: &KeyId,
    revoked_kid: &KeyId,
    iat: u64,
) -> Result<Vec<u8>, StatementError> {
    issue(
        signer,
        &Statement {
            kind: StatementKind::Revocation,
            issuer: *issuer_kid,
            subject: *revoked_kid,
            subject_key: None,
            name: None,
            issued_at: iat,
            expires_at: None,
        },
    )
}

fn decode(bytes: &[u8]) -> Result<(CoseSign1, Statement), StatementError> {
    let msg = cose::parse(bytes)?;
    let payload = msg.payload.as_deref().ok_or(Sign1Error::MissingPayload)?;
    let st = Statement::from_payload(payload)?;
    if msg.protected.header.key_id.as_slice() != st.issuer.as_bytes() {
        return Err(StatementError::KidMismatch);
    }
    Ok((msg, st))
}

/// Decodes a statement *without* checking its signature (for display only).
pub fn inspect_statement(bytes: &[u8]) -> Result<Statement, StatementError> {
    decode(bytes).map(|(_, st)| st)
}

fn verify_decoded(
    msg: &CoseSign1,
    st: &Statement,
    issuer_pub: &PublicKey,
) -> Result<(), StatementError> {
    let expected = issuer_pub.key_id();
    if st.issuer != expected {
        return Err(StatementError::IssuerMismatch {
            expected,
            found: st.issuer,
        });
    }
    cose::verify_es256_protected(msg, issuer_pub, b"")?;
    Ok(())
}

/// Verifies a statement's signature under `issuer_pub` (which must be the
/// statement's issuer) and returns its payload. Does not check times.
pub fn verify_statement(bytes: &[u8], issuer_pub: &PublicKey) -> Result<Statement, StatementError> {
    let (msg, st) = decode(bytes)?;
    verify_decoded(&msg, &st, issuer_pub)?;
    Ok(st)
}

/// Errors from [`Chain`] decoding and [`Chain::verify_key`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The chain file is not valid CBOR of the expected shape.
    #[error("malformed chain: {0}")]
    Malformed(String),
    /// The chain file version is not supported.
    #[error("unsupported chain version {0}")]
    UnsupportedVersion(u8),
    /// A statement in the chain could not be decoded.
    #[error("statement #{index} in the chain is malformed: {error}")]
    Statement {
        /// Position in the chain.
        index: usize,
        /// What is wrong with it.
        error: StatementError,
    },
    /// No delegation or rekey in the chain vouches for this key.
    #[error("key {0} is not in the chain")]
    NotInChain(KeyId),
    /// A link's issuer is neither the root nor vouched for in the chain.
    #[error("issuer {0} of a link is neither the root nor in the chain")]
    UnknownIssuer(KeyId),
    /// The delegation of `key` has expired.
    #[error("delegation of {key} expired at {expired_at} (now {now})")]
    Expired {
        /// Key whose delegation expired.
        key: KeyId,
        /// Its expiry.
        expired_at: u64,
        /// The time checked.
        now: u64,
    },
    /// The delegation of `key` is not yet valid.
    #[error("delegation of {key} is not valid before {valid_from} (now {now})")]
    NotYetValid {
        /// Key whose delegation is in the future.
        key: KeyId,
        /// Its issued-at.
        valid_from: u64,
        /// The time checked.
        now: u64,
    },
    /// `key` (the key itself or a link on its path) was revoked by `by`.
    #[error("key {key} on the path was revoked by {by}")]
    Revoked {
        /// The revoked key.
        key: KeyId,
        /// The revoking key (the key itself or an ancestor).
        by: KeyId,
    },
    /// A statement about `subject` issued by `issuer` has a bad signature.
    #[error("statement about {subject} by {issuer} has a bad signature")]
    BadSignature {
        /// Subject of the statement.
        subject: KeyId,
        /// Its claimed issuer.
        issuer: KeyId,
    },
    /// The delegations form a loop.
    #[error("delegation cycle through {0}")]
    Cycle(KeyId),
    /// The path to the root is longer than [`MAX_DEPTH`].
    #[error("path to the root is longer than {MAX_DEPTH}")]
    TooDeep,
}

/// Proof that a key is vouched for by the cluster root.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Vouch {
    /// The key asked about.
    pub key: KeyId,
    /// Its name, from the link that vouches for it (`None` for the root).
    pub name: Option<String>,
    /// Key ids from the key itself up to and including the root.
    pub path: Vec<KeyId>,
    /// Earliest expiry along the path (`None` for the root itself).
    pub expires_at: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainWire {
    v: u8,
    #[serde(with = "serde_bytes")]
    root: Vec<u8>,
    statements: Vec<serde_bytes::ByteBuf>,
}

/// A cluster's root public key plus its delegation, rekey and revocation
/// statements; serializes to one CBOR file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    root: PublicKey,
    statements: Vec<Vec<u8>>,
}

impl Chain {
    /// An empty chain for the cluster root key.
    pub fn new(root: PublicKey) -> Self {
        Self {
            root,
            statements: Vec::new(),
        }
    }

    /// The cluster root key.
    pub fn root(&self) -> &PublicKey {
        &self.root
    }

    /// The encoded statements, in insertion order.
    pub fn statements(&self) -> &[Vec<u8>] {
        &self.statements
    }

    /// Appends a statement after checking that it decodes (its signature is
    /// checked by [`verify_key`](Self::verify_key)).
    pub fn push(&mut self, statement: Vec<u8>) -> Result<(), ChainError> {
        decode(&statement).map_err(|error| ChainError::Statement {
            index: self.statements.len(),
            error,
        })?;
        self.statements.push(statement);
        Ok(())
    }

    /// Encodes the chain as CBOR: `{v: 1, root: bstr(33), statements: [bstr]}`.
    pub fn to_cbor(&self) -> Vec<u8> {
        let w = ChainWire {
            v: CHAIN_VERSION,
            root: self.root.to_sec1_compressed().to_vec(),
            statements: self
                .statements
                .iter()
                .map(|s| serde_bytes::ByteBuf::from(s.clone()))
                .collect(),
        };
        let mut out = Vec::new();
        // Writing plain data to a Vec cannot fail.
        let _ = ciborium::into_writer(&w, &mut out);
        out
    }

    /// Decodes a chain file; every statement must decode.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, ChainError> {
        let w: ChainWire = crate::cbor::from_slice(bytes).map_err(ChainError::Malformed)?;
        if w.v != CHAIN_VERSION {
            return Err(ChainError::UnsupportedVersion(w.v));
        }
        if w.root.len() != 33 {
            return Err(ChainError::Malformed(
                "root is not a compressed point".into(),
            ));
        }
        let root = PublicKey::from_sec1_bytes(&w.root)
            .map_err(|_| ChainError::Malformed("root is not a P-256 point".into()))?;
        let mut chain = Self::new(root);
        for s in w.statements {
            chain.push(s.into_vec())?;
        }
        Ok(chain)
    }

    fn decode_all(&self) -> Result<Vec<(CoseSign1, Statement)>, ChainError> {
        self.statements
            .iter()
            .enumerate()
            .map(|(index, s)| decode(s).map_err(|error| ChainError::Statement { index, error }))
            .collect()
    }

    /// Answers whether `key` is vouched for, at time `now` (unix seconds), by
    /// a non-revoked path of valid links up to the cluster root.
    pub fn verify_key(&self, key: &PublicKey, now: u64) -> Result<Vouch, ChainError> {
        let decoded = self.decode_all()?;
        let root_kid = self.root.key_id();

        // Public keys of every key the chain names as a subject (sub == id(key)
        // is enforced at decode, so this map cannot be poisoned).
        let mut known: HashMap<KeyId, PublicKey> = HashMap::new();
        known.insert(root_kid, self.root);
        for (_, st) in &decoded {
            if let Some(pk) = st.subject_key {
                known.insert(st.subject, pk);
            }
        }

        let target = key.key_id();
        let mut path: Vec<(KeyId, PublicKey)> = vec![(target, *key)];
        let mut name = None;
        let mut expires_at: Option<u64> = None;
        let mut cur = target;
        while cur != root_kid {
            if path.len() > MAX_DEPTH {
                return Err(ChainError::TooDeep);
            }
            let mut links: Vec<&(CoseSign1, Statement)> = decoded
                .iter()
                .filter(|(_, st)| {
                    matches!(st.kind, StatementKind::Delegation | StatementKind::Rekey)
                        && st.subject == cur
                })
                .collect();
            if links.is_empty() {
                return Err(ChainError::NotInChain(cur));
            }
            // Newest first; the first link that checks out wins, otherwise the
            // newest link's error is reported.
            links.sort_by_key(|l| std::cmp::Reverse(l.1.issued_at));
            let mut first_err = None;
            let mut chosen = None;
            for (msg, st) in links {
                match self.check_link(msg, st, &known, &path, now) {
                    Ok(issuer_pub) => {
                        chosen = Some((st, issuer_pub));
                        break;
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            let Some((st, issuer_pub)) = chosen else {
                return Err(first_err.unwrap_or(ChainError::NotInChain(cur)));
            };
            if cur == target {
                name = st.name.clone();
            }
            if let Some(exp) = st.expires_at {
                expires_at = Some(expires_at.map_or(exp, |e| e.min(exp)));
            }
            cur = st.issuer;
            path.push((cur, issuer_pub));
        }

        // Revocations: by the key itself or any ancestor on this path.
        for (msg, st) in &decoded {
            if st.kind != StatementKind::Revocation {
                continue;
            }
            let Some(i) = path.iter().position(|(k, _)| *k == st.subject) else {
                continue;
            };
            let Some(j) = path.iter().position(|(k, _)| *k == st.issuer) else {
                continue;
            };
            if j < i {
                continue; // a descendant cannot revoke its ancestor
            }
            verify_decoded(msg, st, &path[j].1).map_err(|_| ChainError::BadSignature {
                subject: st.subject,
                issuer: st.issuer,
            })?;
            return Err(ChainError::Revoked {
                key: st.subject,
                by: st.issuer,
            });
        }

        Ok(Vouch {
            key: target,
            name,
            path: path.into_iter().map(|(k, _)| k).collect(),
            expires_at,
        })
    }

    /// [`verify_key`](Self::verify_key) for a verifier whose trust anchor is `anchor`, which
    /// may be an earlier cluster root: after `node root rotate`, the old root's rekey statement
    /// (kind `rekey`, name `/`) vouches for the new root, so a path from `key` through the new
    /// root up to `anchor` is accepted. A self-revocation of `anchor` in the chain (what a
    /// compromised rotation leaves) refuses everything with [`ChainError::Revoked`]; so does
    /// a revocation of any root on the way (checked as for any key on the path).
    pub fn verify_key_from(
        &self,
        anchor: &PublicKey,
        key: &PublicKey,
        now: u64,
    ) -> Result<Vouch, ChainError> {
        let a = anchor.key_id();
        for (msg, st) in &self.decode_all()? {
            if st.kind == StatementKind::Revocation && st.subject == a && st.issuer == a {
                verify_decoded(msg, st, anchor).map_err(|_| ChainError::BadSignature {
                    subject: a,
                    issuer: a,
                })?;
                return Err(ChainError::Revoked { key: a, by: a });
            }
        }
        if a == self.root.key_id() {
            return self.verify_key(key, now);
        }
        let anchored = Chain {
            root: *anchor,
            statements: self.statements.clone(),
        };
        anchored.verify_key(key, now)
    }

    fn check_link(
        &self,
        msg: &CoseSign1,
        st: &Statement,
        known: &HashMap<KeyId, PublicKey>,
        path: &[(KeyId, PublicKey)],
        now: u64,
    ) -> Result<PublicKey, ChainError> {
        if path.iter().any(|(k, _)| *k == st.issuer) {
            return Err(ChainError::Cycle(st.issuer));
        }
        let issuer_pub = *known
            .get(&st.issuer)
            .ok_or(ChainError::UnknownIssuer(st.issuer))?;
        verify_decoded(msg, st, &issuer_pub).map_err(|_| ChainError::BadSignature {
            subject: st.subject,
            issuer: st.issuer,
        })?;
        if now < st.issued_at {
            return Err(ChainError::NotYetValid {
                key: st.subject,
                valid_from: st.issued_at,
                now,
            });
        }
        if let Some(exp) = st.expires_at {
            if now >= exp {
                return Err(ChainError::Expired {
                    key: st.subject,
                    expired_at: exp,
                    now,
                });
            }
        }
        Ok(issuer_pub)
    }
}
