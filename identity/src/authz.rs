//! Agent authorization (DKMS): which agent keys may act for an identity, signed by the
//! identity's root keypair.
//!
//! A policy is an ES256 COSE_Sign1 (see [`crate::cose`]) whose protected header carries
//! `alg: ES256` and `kid` = the root key's id, and whose payload is a CBOR map:
//!
//! | key      | type            | meaning                                                      |
//! |----------|-----------------|--------------------------------------------------------------|
//! | `v`      | uint            | payload version, 1                                           |
//! | `kind`   | text            | `"keyward/agents/v1"`                                        |
//! | `root`   | bstr .size 33   | the identity's root public key, SEC1 compressed (the signer) |
//! | `seq`    | uint            | sequence number, +1 at every change (newer policy wins)      |
//! | `iat`    | uint            | issued-at, unix seconds                                      |
//! | `agents` | [* agent]       | at most [`MAX_AGENTS`], each key once                        |
//!
//! `agent = {key: bstr .size 33, caps: [* "sign" / "decrypt" / "recover" / "admin"], added: uint,
//! ? exp: uint, ? revoked: uint}`. A revoked entry stays listed (with the time it was revoked),
//! so a verifier can tell "revoked" from "never listed"; a revocation is final.
//!
//! The file is the COSE_Sign1 bytes (tagged, CBOR), at most [`MAX_POLICY_BYTES`].
//!
//! This module is pure: no I/O, no clock (callers pass `now`), no state. It must never return a
//! policy whose signature did not verify under the key its payload names as `root` (and, when
//! the caller names the expected signer, under exactly that key), and never answer that a key
//! may act without checking revocation, expiry and the capability.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cose::{self, Sign1Error};
use crate::ecdsa::Signer;
use crate::keys::{KeyId, PublicKey};

/// Current payload version.
pub const AUTHZ_VERSION: u8 = 1;
/// The payload's `kind`, so a policy is never mistaken for another signed statement.
pub const AUTHZ_KIND: &str = "keyward/agents/v1";
/// Most agents one policy lists.
pub const MAX_AGENTS: usize = 1024;
/// Largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;

/// What an agent key may do for the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Capability {
    /// Sign for the identity.
    Sign,
    /// Decrypt (open messages and shares) for the identity.
    Decrypt,
    /// Take part in recovery.
    Recover,
    /// Change the identity's keys and policy.
    Admin,
}

impl Capability {
    /// Every capability, in order.
    pub const ALL: [Capability; 4] = [
        Capability::Sign,
        Capability::Decrypt,
        Capability::Recover,
        Capability::Admin,
    ];

    /// The name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Sign => "sign",
            Capability::Decrypt => "decrypt",
            Capability::Recover => "recover",
            Capability::Admin => "admin",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A capability name that is none of `sign`, `decrypt`, `recover`, `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability (expected sign, decrypt, recover or admin)")]
pub struct UnknownCapability;

impl FromStr for Capability {
    type Err = UnknownCapability;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(UnknownCapability)
    }
}

/// One agent key of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentEntry {
    /// The agent's public key.
    pub key: PublicKey,
    /// What it may do (sorted, no duplicates).
    pub caps: Vec<Capability>,
    /// When it was added (unix seconds).
    pub added: u64,
    /// When its authorization ends (unix seconds), if ever.
    pub expires: Option<u64>,
    /// When it was revoked (unix seconds); final.
    pub revoked: Option<u64>,
}

/// A decoded (and, from [`verify_policy`], verified) authorization policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentPolicy {
    /// The identity's root key, which signs the policy.
    pub root: PublicKey,
    /// Sequence number: +1 at every change.
    pub seq: u64,
    /// When this version was signed (unix seconds).
    pub issued_at: u64,
    /// The agents, in the order they were first listed.
    pub agents: Vec<AgentEntry>,
}

/// Why a policy does not decode, verify, change or authorize.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthzError {
    /// The bytes are not a COSE_Sign1 of a policy payload.
    #[error("malformed agent policy: {0}")]
    Malformed(String),
    /// Over [`MAX_POLICY_BYTES`].
    #[error("agent policy is {len} bytes, over the {MAX_POLICY_BYTES}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The payload version is not supported.
    #[error("unsupported agent policy version {0}")]
    UnsupportedVersion(u8),
    /// The payload is internally inconsistent.
    #[error("invalid agent policy: {0}")]
    Invalid(&'static str),
    /// The signature does not verify under the policy's root key (tampered, or forged).
    #[error("bad signature: the agent policy does not verify under its root key {root}")]
    BadSignature {
        /// The root key id the policy names.
        root: KeyId,
    },
    /// The policy is signed by (names) another root than the one expected.
    #[error("wrong signer: the agent policy is signed by {found}, not {expected}")]
    WrongSigner {
        /// The root key id asked for.
        expected: KeyId,
        /// The root key id the policy names.
        found: KeyId,
    },
    /// The key is not in the policy.
    #[error("key {0} is not listed in the agent policy")]
    NotListed(KeyId),
    /// The key was revoked.
    #[error("key {key} was revoked at {at}")]
    Revoked {
        /// The revoked key.
        key: KeyId,
        /// When (unix seconds).
        at: u64,
    },
    /// The key's authorization has expired.
    #[error("key {key}'s authorization expired at {at} (now {now})")]
    Expired {
        /// The key.
        key: KeyId,
        /// Its expiry.
        at: u64,
        /// The time checked.
        now: u64,
    },
    /// The key lacks the capability.
    #[error("key {key} lacks the `{cap}` capability (it has: {})", list(.has))]
    MissingCapability {
        /// The key.
        key: KeyId,
        /// What was asked.
        cap: Capability,
        /// What it has.
        has: Vec<Capability>,
    },
    /// A revoked key cannot be added again.
    #[error("key {0} was revoked: a revocation is final")]
    AlreadyRevoked(KeyId),
    /// Too many agents.
    #[error("an agent policy lists at most {MAX_AGENTS} agents")]
    TooManyAgents,
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] Sign1Error),
}

fn list(caps: &[Capability]) -> String {
    if caps.is_empty() {
        return "none".into();
    }
    caps.iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentWire {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    caps: Vec<Capability>,
    added: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyWire {
    v: u8,
    kind: String,
    #[serde(with = "serde_bytes")]
    root: Vec<u8>,
    seq: u64,
    iat: u64,
    agents: Vec<AgentWire>,
}

fn point(bytes: &[u8], what: &'static str) -> Result<PublicKey, AuthzError> {
    if bytes.len() != 33 {
        return Err(AuthzError::Invalid(what));
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| AuthzError::Invalid(what))
}

impl AgentPolicy {
    /// An empty policy (sequence 0) for the identity whose root key is `root`.
    pub fn new(root: PublicKey) -> Self {
        Self {
            root,
            seq: 0,
            issued_at: 0,
            agents: Vec::new(),
        }
    }

    /// The entry for `key`, if listed.
    pub fn entry(&self, key: &PublicKey) -> Option<&AgentEntry> {
        self.agents.iter().find(|a| a.key == *key)
    }

    /// When `key` was revoked, if it was.
    pub fn revoked_at(&self, key: &PublicKey) -> Option<u64> {
        self.entry(key).and_then(|a| a.revoked)
    }

    /// Lists `key` with `caps` (replacing the capabilities and expiry of a listed, unrevoked
    /// key). A revoked key stays revoked.
    pub fn add(
        &mut self,
        key: PublicKey,
        caps: &[Capability],
        expires: Option<u64>,
        now: u64,
    ) -> Result<(), AuthzError> {
        let mut caps = caps.to_vec();
        caps.sort_unstable();
        caps.dedup();
        if caps.is_empty() {
            return Err(AuthzError::Invalid(
                "an agent needs at least one capability",
            ));
        }
        if expires.is_some_and(|e| e <= now) {
            return Err(AuthzError::Invalid("the expiry is not in the future"));
        }
        match self.agents.iter_mut().find(|a| a.key == key) {
            Some(a) if a.revoked.is_some() => return Err(AuthzError::AlreadyRevoked(key.key_id())),
            Some(a) => {
                a.caps = caps;
                a.expires = expires;
            }
            None => {
                if self.agents.len() >= MAX_AGENTS {
                    return Err(AuthzError::TooManyAgents);
                }
                self.agents.push(AgentEntry {
                    key,
                    caps,
                    added: now,
                    expires,
                    revoked: None,
                });
            }
        }
        Ok(())
    }

    /// Revokes `key` from `now` on (listing it as revoked if it was not listed). Returns false
    /// when it was revoked already (nothing changes).
    pub fn revoke(&mut self, key: PublicKey, now: u64) -> Result<bool, AuthzError> {
        match self.agents.iter_mut().find(|a| a.key == key) {
            Some(a) if a.revoked.is_some() => Ok(false),
            Some(a) => {
                a.revoked = Some(now.max(a.added));
                Ok(true)
            }
            None => {
                if self.agents.len() >= MAX_AGENTS {
                    return Err(AuthzError::TooManyAgents);
                }
                self.agents.push(AgentEntry {
                    key,
                    caps: Vec::new(),
                    added: now,
                    expires: None,
                    revoked: Some(now),
                });
                Ok(true)
            }
        }
    }

    /// May `key` use `cap` at `now`? Revocation is checked first, then expiry, then the
    /// capability.
    pub fn check(
        &self,
        key: &PublicKey,
        cap: Capability,
        now: u64,
    ) -> Result<&AgentEntry, AuthzError> {
        let id = key.key_id();
        let a = self.entry(key).ok_or(AuthzError::NotListed(id))?;
        if let Some(at) = a.revoked {
            return Err(AuthzError::Revoked { key: id, at });
        }
        if let Some(at) = a.expires {
            if now >= at {
                return Err(AuthzError::Expired { key: id, at, now });
            }
        }
        if !a.caps.contains(&cap) {
            return Err(AuthzError::MissingCapability {
                key: id,
                cap,
                has: a.caps.clone(),
            });
        }
        Ok(a)
    }

    fn to_wire(&self) -> PolicyWire {
        PolicyWire {
            v: AUTHZ_VERSION,
            kind: AUTHZ_KIND.into(),
            root: self.root.to_sec1_compressed().to_vec(),
            seq: self.seq,
            iat: self.issued_at,
            agents: self
                .agents
                .iter()
                .map(|a| AgentWire {
                    key: a.key.to_sec1_compressed().to_vec(),
                    caps: a.caps.clone(),
                    added: a.added,
                    exp: a.expires,
                    revoked: a.revoked,
                })
                .collect(),
        }
    }

    fn from_wire(w: PolicyWire) -> Result<Self, AuthzError> {
        if w.v != AUTHZ_VERSION {
            return Err(AuthzError::UnsupportedVersion(w.v));
        }
        if w.kind != AUTHZ_KIND {
            return Err(AuthzError::Invalid("kind is not keyward/agents/v1"));
        }
        if w.agents.len() > MAX_AGENTS {
            return Err(AuthzError::TooManyAgents);
        }
        let root = point(&w.root, "root is not a compressed P-256 point")?;
        let mut agents: Vec<AgentEntry> = Vec::with_capacity(w.agents.len());
        for a in w.agents {
            let key = point(&a.key, "an agent key is not a compressed P-256 point")?;
            if agents.iter().any(|x| x.key == key) {
                return Err(AuthzError::Invalid("an agent key is listed twice"));
            }
            let mut caps = a.caps.clone();
            caps.sort_unstable();
            caps.dedup();
            if caps != a.caps {
                return Err(AuthzError::Invalid(
                    "capabilities are not sorted and unique",
                ));
            }
            if a.exp.is_some_and(|e| e <= a.added) {
                return Err(AuthzError::Invalid("an expiry is not after its added time"));
            }
            if a.revoked.is_some_and(|r| r < a.added) {
                return Err(AuthzError::Invalid("a revocation is before its added time"));
            }
            if caps.is_empty() && a.revoked.is_none() {
                return Err(AuthzError::Invalid("an active agent has no capability"));
            }
            agents.push(AgentEntry {
                key,
                caps,
                added: a.added,
                expires: a.exp,
                revoked: a.revoked,
            });
        }
        Ok(Self {
            root,
            seq: w.seq,
            issued_at: w.iat,
            agents,
        })
    }

    /// The payload's canonical CBOR.
    fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing plain data to a Vec cannot fail.
        let _ = ciborium::into_writer(&self.to_wire(), &mut out);
        out
    }

    fn from_payload(bytes: &[u8]) -> Result<Self, AuthzError> {
        let w: PolicyWire = crate::cbor::from_slice(bytes).map_err(AuthzError::Malformed)?;
        Self::from_wire(w)
    }

    /// Signs this policy with the root key as the next version: `seq` + 1, issued at `now`.
    /// `signer` must be the policy's root key ([`AuthzError::WrongSigner`] otherwise).
    pub fn sign<S: Signer + ?Sized>(
        &mut self,
        signer: &S,
        now: u64,
    ) -> Result<Vec<u8>, AuthzError> {
        let kid = signer.public_key().key_id();
        if signer.public_key() != self.root {
            return Err(AuthzError::WrongSigner {
                expected: self.root.key_id(),
                found: kid,
            });
        }
        self.seq += 1;
        self.issued_at = now;
        let payload = self.to_payload();
        // Never sign what we would refuse to read.
        Self::from_payload(&payload)?;
        let bytes = cose::sign_es256(signer, kid.as_bytes(), payload)?;
        if bytes.len() > MAX_POLICY_BYTES {
            return Err(AuthzError::TooLarge { len: bytes.len() });
        }
        Ok(bytes)
    }
}

/// Decodes and verifies a signed policy: the signature under the root key its payload names
/// (whose id must be the COSE `kid`), and, with `expected_root`, that this root is the one
/// expected. Times are not checked here: see [`AgentPolicy::check`].
pub fn verify_policy(
    bytes: &[u8],
    expected_root: Option<&PublicKey>,
) -> Result<AgentPolicy, AuthzError> {
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(AuthzError::TooLarge { len: bytes.len() });
    }
    let msg = cose::parse(bytes).map_err(|e| AuthzError::Malformed(e.to_string()))?;
    let payload = msg
        .payload
        .as_deref()
        .ok_or_else(|| AuthzError::Malformed("no payload".into()))?;
    let policy = AgentPolicy::from_payload(payload)?;
    let root_id = policy.root.key_id();
    if let Some(expected) = expected_root {
        if *expected != policy.root {
            return Err(AuthzError::WrongSigner {
                expected: expected.key_id(),
                found: root_id,
            });
        }
    }
    if msg.protected.header.key_id.as_slice() != root_id.as_bytes() {
        return Err(AuthzError::WrongSigner {
            expected: root_id,
            found: KeyId::from_slice(&msg.protected.header.key_id).unwrap_or(KeyId([0; 32])),
        });
    }
    cose::verify_es256_protected(&msg, &policy.root, b"").map_err(|e| match e {
        Sign1Error::BadSignature | Sign1Error::MalformedSignature => {
            AuthzError::BadSignature { root: root_id }
        }
        other => AuthzError::Malformed(other.to_string()),
    })?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::LocalKey;
    use rand_core::OsRng;

    const T0: u64 = 1_800_000_000;

    fn setup() -> (LocalKey, LocalKey, LocalKey) {
        (
            LocalKey::generate(&mut OsRng),
            LocalKey::generate(&mut OsRng),
            LocalKey::generate(&mut OsRng),
        )
    }

    #[test]
    fn sign_then_verify_lists_the_agent_with_its_capabilities() {
        let (root, a, _) = setup();
        let mut p = AgentPolicy::new(root.public_key());
        p.add(
            a.public_key(),
            &[Capability::Sign, Capability::Decrypt],
            None,
            T0,
        )
        .unwrap();
        let bytes = p.sign(&root, T0).unwrap();
        let v = verify_policy(&bytes, Some(&root.public_key())).unwrap();
        assert_eq!(v.seq, 1);
        assert_eq!(v, p);
        v.check(&a.public_key(), Capability::Sign, T0 + 1).unwrap();
        v.check(&a.public_key(), Capability::Decrypt, T0 + 1)
            .unwrap();
        assert!(matches!(
            v.check(&a.public_key(), Capability::Admin, T0 + 1),
            Err(AuthzError::MissingCapability {
                cap: Capability::Admin,
                ..
            })
        ));
    }

    #[test]
    fn an_unlisted_key_is_not_listed() {
        let (root, a, b) = setup();
        let mut p = AgentPolicy::new(root.public_key());
        p.add(a.public_key(), &[Capability::Sign], None, T0)
            .unwrap();
        let v = verify_policy(&p.sign(&root, T0).unwrap(), None).unwrap();
        assert!(matches!(
            v.check(&b.public_key(), Capability::Sign, T0),
            Err(AuthzError::NotListed(id)) if id == b.public_key().key_id()
        ));
    }

    #[test]
    fn revocation_is_final_and_wins_over_capabilities() {
        let (root, a, b) = setup();
        let mut p = AgentPolicy::new(root.public_key());
        p.add(a.public_key(), &[Capability::Sign], None, T0)
            .unwrap();
        assert!(p.revoke(a.public_key(), T0 + 5).unwrap());
        assert!(
            !p.revoke(a.public_key(), T0 + 6).unwrap(),
            "already revoked"
        );
        assert!(matches!(
            p.add(a.public_key(), &[Capability::Sign], None, T0 + 7),
            Err(AuthzError::AlreadyRevoked(_))
        ));
        // A key never listed can be revoked too (listed as revoked, no capabilities).
        assert!(p.revoke(b.public_key(), T0 + 8).unwrap());
        let v = verify_policy(&p.sign(&root, T0 + 9).unwrap(), None).unwrap();
        assert!(matches!(
            v.check(&a.public_key(), Capability::Sign, T0 + 10),
            Err(AuthzError::Revoked { at, .. }) if at == T0 + 5
        ));
        assert_eq!(v.revoked_at(&b.public_key()), Some(T0 + 8));
    }

    #[test]
    fn expiry_ends_the_authorization() {
        let (root, a, _) = setup();
        let mut p = AgentPolicy::new(root.public_key());
        p.add(a.public_key(), &[Capability::Sign], Some(T0 + 100), T0)
            .unwrap();
        let v = verify_policy(&p.sign(&root, T0).unwrap(), None).unwrap();
        v.check(&a.public_key(), Capability::Sign, T0 + 99).unwrap();
        assert!(matches!(
            v.check(&a.public_key(), Capability::Sign, T0 + 100),
            Err(AuthzError::Expired { at, now, .. }) if at == T0 + 100 && now == T0 + 100
        ));
        assert!(matches!(
            p.add(a.public_key(), &[Capability::Sign], Some(T0), T0),
            Err(AuthzError::Invalid(_))
        ));
    }

    #[test]
    fn a_tampered_policy_fails_its_signature() {
        let (root, a, b) = setup();
        let mut p = AgentPolicy::new(root.public_key());
        p.add(a.public_key(), &[Capability::Sign], None, T0)
            .unwrap();
        let good = p.sign(&root, T0).unwrap();
        // Swap the agent's key for another inside the signed bytes.
        let old = a.public_key().to_sec1_compressed();
        let new = b.public_key().to_sec1_compressed();
        let at = good.windows(33).position(|w| w == old).unwrap();
        let mut bad = good.clone();
        bad[at..at + 33].copy_from_slice(&new);
        assert!(matches!(
            verify_policy(&bad, None),
            Err(AuthzError::BadSignature { .. })
        ));
        // Every single-bit flip is refused one way or another.
        for i in 0..good.len() {
            let mut t = good.clone();
            t[i] ^= 0x01;
            assert!(
                verify_policy(&t, None).is_err(),
                "flip at byte {i} accepted"
            );
        }
    }

    #[test]
    fn a_policy_of_another_root_is_the_wrong_signer() {
        let (root, a, other) = setup();
        let mut p = AgentPolicy::new(other.public_key());
        p.add(a.public_key(), &[Capability::Sign], None, T0)
            .unwrap();
        let bytes = p.sign(&other, T0).unwrap();
        assert!(matches!(
            verify_policy(&bytes, Some(&root.public_key())),
            Err(AuthzError::WrongSigner { expected, found })
                if expected == root.public_key().key_id() && found == other.public_key().key_id()
        ));
        // Signing with a key that is not the policy's root is refused before signing.
        let mut p = AgentPolicy::new(root.public_key());
        assert!(matches!(
            p.sign(&other, T0),
            Err(AuthzError::WrongSigner { .. })
        ));
    }

    #[test]
    fn a_policy_naming_one_root_but_signed_by_another_fails() {
        let (root, a, other) = setup();
        let mut p = AgentPolicy::new(root.public_key());
        p.add(a.public_key(), &[Capability::Sign], None, T0)
            .unwrap();
        p.seq = 1;
        p.issued_at = T0;
        // Forge: the payload names `root`, the signature is `other`'s, the kid `root`'s.
        let bytes = cose::sign_es256(
            &other,
            root.public_key().key_id().as_bytes(),
            p.to_payload(),
        )
        .unwrap();
        assert!(matches!(
            verify_policy(&bytes, None),
            Err(AuthzError::BadSignature { .. })
        ));
    }

    #[test]
    fn malformed_inputs_are_refused_without_panicking() {
        for bytes in [
            &b""[..],
            b"\xa0",
            b"not cbor",
            &[0xd2, 0x84, 0x40, 0xa0, 0xf6, 0x40],
        ] {
            assert!(verify_policy(bytes, None).is_err());
        }
        let big = vec![0u8; MAX_POLICY_BYTES + 1];
        assert!(matches!(
            verify_policy(&big, None),
            Err(AuthzError::TooLarge { .. })
        ));
    }

    #[test]
    fn capabilities_parse_by_name() {
        for c in Capability::ALL {
            assert_eq!(c.as_str().parse::<Capability>(), Ok(c));
        }
        assert_eq!("root".parse::<Capability>(), Err(UnknownCapability));
    }
}
