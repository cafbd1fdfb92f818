//! Agent authorization (DKMS): the identity's signed list of agent keys, kept by the agent.
//!
//! The identity is the cluster root keypair (`/`, see [`crate::nodes`]), made on first use. Its
//! policy ([`keyward_identity::authz`]: agent keys as did:key, capabilities, expiry, revocation)
//! is a COSE_Sign1 signed by that keypair, stored as the keystore `meta` row `agents_policy`
//! (hex) with `agents_policy_mac`, an HMAC under the keystore MAC key. Every change
//! (`agents.add`, `agents.revoke`) re-signs the whole policy with the next sequence number.
//! `open` refuses a sealed message whose sender the stored policy revoked.
//!
//! This module must never sign a policy with any key but the identity root, never use a stored
//! policy whose MAC (while unlocked) or signature does not verify, and never un-revoke a key.

use crate::error::{AgentError, Missing, Problem, Tampering, Unverified};
use crate::hierarchy::Hierarchy;
use crate::keystore::{now, Encoder};
use keyward_identity::authz::{verify_policy, AgentPolicy, AuthzError, Capability};
use keyward_identity::{LocalKey, PublicKey};
use std::borrow::Cow;

/// The `meta` row holding the signed policy (hex).
pub const META_POLICY: &str = "agents_policy";
/// The `meta` row holding its MAC (hex).
pub const META_POLICY_MAC: &str = "agents_policy_mac";
const MAC_DOMAIN: &str = "keyward/keystore/meta/agents_policy/v1";

/// The signed policy as stored and served.
#[derive(Debug)]
pub struct SignedAgentPolicy {
    /// The COSE_Sign1 bytes.
    pub bytes: Vec<u8>,
    /// What they say (verified).
    pub policy: AgentPolicy,
}

fn mac_body(bytes: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new(MAC_DOMAIN);
    e.field(Some(bytes));
    e.finish()
}

/// The policy's MAC, for the integrity key's replacement (`root_rotate.rs`).
pub(crate) const POLICY_MAC: crate::keystore::MetaMac = crate::keystore::MetaMac {
    values: Cow::Borrowed(&[Cow::Borrowed(META_POLICY)]),
    mac: Cow::Borrowed(META_POLICY_MAC),
    body: |v| {
        mac_body(
            &v[0]
                .as_deref()
                .and_then(|t| hex::decode(t.trim()).ok())
                .unwrap_or_default(),
        )
    },
};

fn parse_key(text: &str) -> Result<PublicKey, AgentError> {
    PublicKey::parse(text.trim()).map_err(|e| AgentError::invalid("key", Problem::NotPublicKey(e)))
}

fn authz_invalid(arg: &'static str) -> impl FnOnce(AuthzError) -> AgentError {
    move |e| match e {
        AuthzError::AlreadyRevoked(key) => AgentError::AgentKeyRevoked { key },
        other => AgentError::invalid(arg, Problem::AgentPolicy(other)),
    }
}

impl Hierarchy {
    /// The identity root's public key, if the cluster root exists.
    fn identity_root(&self) -> Result<Option<PublicKey>, AgentError> {
        match self.ks.by_name(crate::nodes::CLUSTER_ROOT)? {
            Some(r) => Ok(Some(Self::public_of(&r)?)),
            None => Ok(None),
        }
    }

    /// The stored policy, its MAC (while unlocked) and signature checked; `None` before the
    /// first change.
    pub fn agent_policy(&self) -> Result<Option<SignedAgentPolicy>, AgentError> {
        let Some(text) = self.ks.meta(META_POLICY)? else {
            return Ok(None);
        };
        let tampered = || AgentError::KeystoreTampered(Tampering::AgentPolicy);
        let bytes = hex::decode(text.trim()).map_err(|_| tampered())?;
        if self.ks.has_mac_key() {
            let tag = self
                .ks
                .meta(META_POLICY_MAC)?
                .and_then(|t| hex::decode(t).ok())
                .ok_or_else(tampered)?;
            if self.ks.mac_verify(&mac_body(&bytes), &tag) != Some(true) {
                return Err(tampered());
            }
        }
        let root = self.identity_root()?.ok_or_else(tampered)?;
        let policy = verify_policy(&bytes, Some(&root)).map_err(|_| tampered())?;
        Ok(Some(SignedAgentPolicy { bytes, policy }))
    }

    /// The stored policy (if any) moved to a new identity root `signer` (`node.root_rotate`):
    /// same entries, `root` replaced, signed by the new root as the next version. Returns the
    /// meta rows to write in the rotation's transaction.
    pub(crate) fn policy_for_new_root(
        &self,
        signer: &LocalKey,
    ) -> Result<Vec<(&'static str, Option<String>)>, AgentError> {
        let Some(current) = self.agent_policy()? else {
            return Ok(Vec::new());
        };
        let mut policy = current.policy;
        policy.root = signer.public_key();
        let bytes = policy
            .sign(signer, now())
            .map_err(AgentError::crypto("signing the agent policy"))?;
        let tag = self.ks.mac_tag(&mac_body(&bytes)).map(hex::encode);
        Ok(vec![
            (META_POLICY, Some(hex::encode(&bytes))),
            (META_POLICY_MAC, tag),
        ])
    }

    /// Apply `change` to the current policy (or an empty one), sign it with the identity root
    /// and store it.
    fn change_agent_policy(
        &self,
        op: &'static str,
        change: impl FnOnce(&mut AgentPolicy, u64) -> Result<(), AgentError>,
    ) -> Result<SignedAgentPolicy, AgentError> {
        self.root_record(op)?;
        let root_rec = self.cluster_root(None)?;
        let root_pub = Self::public_of(&root_rec)?;
        let mut policy = match self.agent_policy()? {
            Some(p) => p.policy,
            None => AgentPolicy::new(root_pub),
        };
        let t = now();
        change(&mut policy, t)?;
        let signer = self.signer(&root_rec)?;
        let bytes = policy
            .sign(&*signer, t)
            .map_err(AgentError::crypto("signing the agent policy"))?;
        let tag = self.ks.mac_tag(&mac_body(&bytes)).map(hex::encode);
        let text = hex::encode(&bytes);
        self.ks.set_metas(&[
            (META_POLICY, Some(&text)),
            (META_POLICY_MAC, tag.as_deref()),
        ])?;
        Ok(SignedAgentPolicy { bytes, policy })
    }

    /// List `key` (did:key) with `caps`, until `expires` (unix seconds) if given.
    pub fn agents_add(
        &self,
        key: &str,
        caps: &[String],
        expires: Option<u64>,
    ) -> Result<SignedAgentPolicy, AgentError> {
        let key = parse_key(key)?;
        let caps = caps
            .iter()
            .map(|c| c.parse::<Capability>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| AgentError::invalid("caps", Problem::UnknownCapability))?;
        if caps.is_empty() {
            return Err(AgentError::invalid("caps", Problem::UnknownCapability));
        }
        let p = self.change_agent_policy("agents.add", |p, t| {
            p.add(key, &caps, expires, t)
                .map_err(authz_invalid("expires"))
        })?;
        tracing::info!(key = %key.to_did_key(), seq = p.policy.seq, "agent key authorized");
        Ok(p)
    }

    /// Revoke `key` (did:key): final. Revoking a key never listed lists it as revoked.
    pub fn agents_revoke(&self, key: &str) -> Result<SignedAgentPolicy, AgentError> {
        let key = parse_key(key)?;
        let p = self.change_agent_policy("agents.revoke", |p, t| {
            p.revoke(key, t).map(|_| ()).map_err(authz_invalid("key"))
        })?;
        tracing::info!(key = %key.to_did_key(), seq = p.policy.seq, "agent key revoked");
        Ok(p)
    }

    /// Refuse a message from a sender the stored policy revoked.
    pub(crate) fn refuse_revoked_agent(&self, sender: &PublicKey) -> Result<(), AgentError> {
        if let Some(p) = self.agent_policy()? {
            if let Some(at) = p.policy.revoked_at(sender) {
                return Err(AgentError::VerifyFailed(Unverified::AgentRevoked {
                    key: sender.key_id(),
                    at,
                }));
            }
        }
        Ok(())
    }

    /// `agents.policy`: the stored policy, or `not_found` before the first change.
    pub fn agents_policy(&self) -> Result<SignedAgentPolicy, AgentError> {
        self.agent_policy()?
            .ok_or(AgentError::NotFound(Missing::AgentPolicy))
    }
}
