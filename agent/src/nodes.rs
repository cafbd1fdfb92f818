//! Node keys: a cluster of keys that derive from one root, vouched for by signed delegations and
//! revocable by their ancestors; and sealed messages between nodes.
//!
//! The cluster root is a keypair named `/`, made on first use. `node.derive NAME` derives a
//! deterministic P-256 key from a derivation secret (kept wrapped under a KEK) by HKDF, one path
//! per name, and the parent signs a COSE_Sign1 delegation (subject key, name, parent key id,
//! issued and expiry times). `node.rekey` replaces a node's key with a fresh random one (not
//! derivable) vouched for by the same parent; `node.revoke` has an ancestor sign a revocation.
//! `node.chain` exports the public chain: everything a peer needs to verify offline, and nothing
//! secret. `node.root_rotate` replaces the cluster root `/` itself: the old root vouches for the
//! new one with a rekey statement (or, `compromised`, revokes itself), and every direct child of
//! the old root is re-delegated by the new one, all in one keystore transaction.

use crate::error::{AgentError, Defect, Existing, Missing, Problem, Unverified, WrongKey};
use crate::hierarchy::Hierarchy;
use crate::keystore::{now, KeyKind, KeyRecord, KeyState, Revocation};
use crate::keystore::{Cursor, ListFilter, Page, PageSize};
use keyward_identity::{
    derive_node_key, issue_delegation, issue_rekey, issue_revocation, Chain, LocalKey, PublicKey,
    SealedMessage,
};
use rand_core::{OsRng, RngCore};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The cluster root's node name.
pub const CLUSTER_ROOT: &str = "/";
const DEFAULT_TTL_SECONDS: u64 = 365 * 86_400;
const SECRET_LABEL: &str = "node-derivation";

/// What `node.root_rotate` did: the new root, the old one, how many children it re-delegated.
#[derive(Debug, Clone, Copy)]
pub struct RootRotated {
    pub id: Uuid,
    pub old: Uuid,
    pub redelegated: usize,
}

/// An opened message: plaintext, the sender's did:key, and its node name if a chain vouched.
pub type Opened = (Zeroizing<Vec<u8>>, String, Option<String>);

fn statement_err(e: keyward_identity::StatementError) -> AgentError {
    AgentError::crypto("signing a statement")(e)
}

impl Hierarchy {
    /// The cluster root keypair, made under `kek` on first use.
    pub(crate) fn cluster_root(&self, kek: Option<&str>) -> Result<KeyRecord, AgentError> {
        if let Some(r) = self.ks.by_name(CLUSTER_ROOT)? {
            return Ok(r);
        }
        let kek = self.choose_kek(kek)?;
        let key = LocalKey::generate(&mut OsRng);
        let mut rec = self.keypair_record(&key, &kek)?;
        rec.name = Some(CLUSTER_ROOT.into());
        rec.label = Some("cluster root".into());
        self.ks.insert(&rec)?;
        tracing::info!(id = %rec.id, "cluster root created");
        Ok(rec)
    }

    /// The node-derivation secret, made under `kek` on first use.
    fn derivation_secret(&self, kek: Option<&str>) -> Result<Zeroizing<[u8; 32]>, AgentError> {
        let existing = self
            .ks
            .list(KeyKind::Secret, None)?
            .into_iter()
            .find(|s| s.label.as_deref() == Some(SECRET_LABEL) && s.state == KeyState::Active);
        let rec = match existing {
            Some(r) => r,
            None => {
                let kek = self.choose_kek(kek)?;
                let mut secret = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(secret.as_mut());
                let w = self
                    .with_recovery(|| Ok(self.kek_handle(&kek)?.wrap_secret(secret.as_ref())?))?;
                let mut rec = KeyRecord::new(KeyKind::Secret, w.scheme.as_str());
                rec.parent = Some(kek.id);
                rec.label = Some(SECRET_LABEL.into());
                rec.wrapped = Some(w.bytes);
                self.ks.insert(&rec)?;
                return Ok(secret);
            }
        };
        let kek = self.parent_kek(&rec)?;
        let wrapped = self.wrapped(&rec)?;
        let raw = self.with_recovery(|| Ok(self.kek_handle(&kek)?.export_dek(wrapped)?))?;
        let arr: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
            let (len, expected) = (raw.len(), 32);
            AgentError::bad_record(rec.kind, rec.id, Defect::BadLength { len, expected })
        })?;
        Ok(Zeroizing::new(arr))
    }

    fn delegation(
        &self,
        parent: &KeyRecord,
        subject: &PublicKey,
        name: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<Vec<u8>, AgentError> {
        let ttl = ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
        const MAX_TTL: u64 = 100 * 365 * 86_400;
        if ttl == 0 || ttl > MAX_TTL {
            return Err(AgentError::invalid(
                "ttl_seconds",
                Problem::OutOfRange {
                    min: 1,
                    max: MAX_TTL,
                    unit: "seconds (100 years)",
                },
            ));
        }
        let signer = self.signer(parent)?;
        let iat = now();
        let exp = iat + ttl;
        issue_delegation(
            &*signer,
            &Self::public_of(parent)?.key_id(),
            subject,
            name,
            iat,
            exp,
        )
        .map_err(statement_err)
    }

    /// Derive the node key NAME and have its parent vouch for it.
    pub fn node_derive(
        &self,
        name: &str,
        parent: Option<&str>,
        kek: Option<&str>,
        ttl_seconds: Option<u64>,
    ) -> Result<Uuid, AgentError> {
        self.root_record("node.derive")?;
        if name == CLUSTER_ROOT {
            return Err(AgentError::invalid(
                "name",
                Problem::Reserved("`/` is the cluster root's name"),
            ));
        }
        if self.ks.by_name(name)?.is_some() {
            return Err(AgentError::AlreadyExists(Existing::Node {
                name: name.to_string(),
            }));
        }
        let parent = match parent {
            Some(id) => {
                let p = self.record(id, KeyKind::Keypair)?;
                Self::require_active(&p)?;
                p
            }
            None => self.cluster_root(kek)?,
        };
        self.permit(&parent, crate::limits::Usage::Sign)?;
        let secret = self.derivation_secret(kek)?;
        let derived = derive_node_key(&secret, name)
            .map_err(|e| AgentError::invalid("name", Problem::NotNodeName(e)))?;
        let key = LocalKey::from_secret_key(derived);
        let statement = self.delegation(&parent, &key.public_key(), name, ttl_seconds)?;
        let kek = self.choose_kek(kek)?;
        let mut rec = self.keypair_record(&key, &kek)?;
        rec.name = Some(name.into());
        rec.label = Some(format!("node {name}"));
        rec.issuer = Some(parent.id);
        rec.statement = Some(statement);
        self.ks.insert(&rec)?;
        tracing::info!(id = %rec.id, name, "node key derived");
        Ok(rec.id)
    }

    /// Give node NAME a fresh random key, vouched for by the same parent; the old key is retired.
    pub fn node_rekey(&self, name: &str, ttl_seconds: Option<u64>) -> Result<Uuid, AgentError> {
        self.root_record("node.rekey")?;
        let old = self.node(name)?;
        let parent_id = old.issuer.ok_or_else(|| {
            AgentError::WrongKey(WrongKey::NoParentToVouch {
                name: name.to_string(),
            })
        })?;
        let parent = self.record(&parent_id.to_string(), KeyKind::Keypair)?;
        Self::require_active(&parent)?;
        let key = LocalKey::generate(&mut OsRng);
        let statement = self.delegation(&parent, &key.public_key(), name, ttl_seconds)?;
        let kek = self.parent_kek(&old)?;
        let mut rec = self.keypair_record(&key, &kek)?;
        rec.name = Some(name.into());
        rec.label = Some(format!("node {name}"));
        rec.issuer = Some(parent.id);
        rec.statement = Some(statement);
        rec.version = old.version + 1;
        self.ks.replace(&old.id, KeyState::Retired, &rec, None)?;
        tracing::info!(id = %rec.id, name, "node key replaced");
        Ok(rec.id)
    }

    /// Replace the cluster root `/` with a fresh random key (`node.root_rotate`).
    ///
    /// Without `compromised`, the old root signs a rekey statement (name `/`) vouching for the
    /// new one, kept as the new root's statement (issuer: the old root), and the old root is
    /// retired: a peer that trusts the old root accepts the new chain. With `compromised`, the
    /// old root signs its own revocation (issuer = subject: a self-revocation, checkable with
    /// the old key a peer already trusts) and is revoked; the new root vouches for itself only
    /// and is trusted by re-import. Either way every active direct child of the old root gets
    /// a new delegation from the new root (same key, name and validity length), and a stored
    /// agent policy is re-signed by the new root; all of it is one transaction.
    pub fn node_root_rotate(&self, compromised: bool) -> Result<RootRotated, AgentError> {
        self.root_record("node.root_rotate")?;
        let old = self
            .ks
            .by_name(CLUSTER_ROOT)?
            .ok_or(AgentError::NotFound(Missing::ClusterRoot))?;
        Self::require_active(&old)?;
        self.permit(&old, crate::limits::Usage::Sign)?;
        let old_pub = Self::public_of(&old)?;
        let old_signer = self.signer(&old)?;
        let key = LocalKey::generate(&mut OsRng);
        let new_pub = key.public_key();
        let kek = self.parent_kek(&old).or_else(|_| self.choose_kek(None))?;
        let mut rec = self.keypair_record(&key, &kek)?;
        rec.name = Some(CLUSTER_ROOT.into());
        rec.label = Some("cluster root".into());
        rec.version = old.version + 1;
        let iat = now();
        let (state, revocation) = if compromised {
            let statement =
                issue_revocation(&*old_signer, &old_pub.key_id(), &old_pub.key_id(), iat)
                    .map_err(statement_err)?;
            let r = Revocation {
                id: Uuid::new_v4(),
                revoked: old.id,
                issuer: old.id,
                statement,
                created: iat,
            };
            (KeyState::Revoked, Some(r))
        } else {
            let statement = issue_rekey(
                &*old_signer,
                &new_pub,
                CLUSTER_ROOT,
                iat,
                iat + DEFAULT_TTL_SECONDS,
            )
            .map_err(statement_err)?;
            rec.issuer = Some(old.id);
            rec.statement = Some(statement);
            (KeyState::Retired, None)
        };
        drop(old_signer);
        let mut children = Vec::new();
        for child in self.ks.list(KeyKind::Keypair, None)? {
            if child.issuer != Some(old.id) || child.state != KeyState::Active {
                continue;
            }
            let Some(name) = child.name.clone() else {
                continue;
            };
            // Keep the validity length the old delegation had (default when unreadable).
            let ttl = child
                .statement
                .as_deref()
                .and_then(|s| keyward_identity::inspect_statement(s).ok())
                .and_then(|st| st.expires_at.map(|e| e.saturating_sub(st.issued_at)))
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_TTL_SECONDS);
            let statement = issue_delegation(
                &key,
                &new_pub.key_id(),
                &Self::public_of(&child)?,
                &name,
                iat,
                iat + ttl,
            )
            .map_err(statement_err)?;
            children.push((child.id, statement));
        }
        let metas = self.policy_for_new_root(&key)?;
        let metas: Vec<(&str, Option<&str>)> =
            metas.iter().map(|(n, v)| (*n, v.as_deref())).collect();
        self.ks
            .replace_root(&old.id, state, &rec, revocation.as_ref(), &children, &metas)?;
        tracing::info!(
            old = %old.id,
            new = %rec.id,
            compromised,
            children = children.len(),
            "cluster root rotated"
        );
        Ok(RootRotated {
            id: rec.id,
            old: old.id,
            redelegated: children.len(),
        })
    }

    fn node(&self, name: &str) -> Result<KeyRecord, AgentError> {
        self.ks.by_name(name)?.ok_or_else(|| {
            AgentError::NotFound(Missing::Node {
                name: name.to_string(),
            })
        })
    }

    /// Revoke node NAME with a revocation signed by `by` (default: its parent), which must be
    /// one of its ancestors.
    pub fn node_revoke(&self, name: &str, by: Option<&str>) -> Result<Uuid, AgentError> {
        self.root_record("node.revoke")?;
        let target = self.node(name)?;
        let mut ancestors = Vec::new();
        let mut cur = target.issuer;
        while let Some(id) = cur {
            if ancestors.contains(&id) || ancestors.len() > 64 {
                break;
            }
            ancestors.push(id);
            cur = self.ks.get(&id)?.and_then(|r| r.issuer);
        }
        let issuer = match by {
            Some(id) => self.record(id, KeyKind::Keypair)?,
            None => {
                let id = ancestors.first().ok_or_else(|| {
                    AgentError::WrongKey(WrongKey::NoParentToRevoke {
                        name: name.to_string(),
                    })
                })?;
                self.record(&id.to_string(), KeyKind::Keypair)?
            }
        };
        if !ancestors.contains(&issuer.id) {
            return Err(AgentError::WrongKey(WrongKey::NotAncestor {
                id: issuer.id,
                name: name.to_string(),
            }));
        }
        let signer = self.signer(&issuer)?;
        let statement = issue_revocation(
            &*signer,
            &Self::public_of(&issuer)?.key_id(),
            &Self::public_of(&target)?.key_id(),
            now(),
        )
        .map_err(statement_err)?;
        self.ks.revoke(&Revocation {
            id: Uuid::new_v4(),
            revoked: target.id,
            issuer: issuer.id,
            statement,
            created: now(),
        })?;
        tracing::info!(id = %target.id, name, by = %issuer.id, "node key revoked");
        Ok(target.id)
    }

    pub fn node_list(&self) -> Result<Vec<KeyRecord>, AgentError> {
        let mut keys = self.ks.list(KeyKind::Keypair, None)?;
        keys.retain(|k| k.name.is_some());
        Ok(keys)
    }

    /// One page of the node keys (`node.list`).
    pub fn node_page(&self, after: Option<&Cursor>, size: &PageSize) -> Result<Page, AgentError> {
        Ok(self.ks.page(&ListFilter::Nodes, after, size)?)
    }

    /// The public chain rooted at `root` (default: the cluster root): its key, every delegation
    /// ever issued in its tree, and the revocations of keys in that tree.
    pub fn node_chain(&self, root: Option<&str>) -> Result<Vec<u8>, AgentError> {
        let root = match root {
            Some(id) => self.record(id, KeyKind::Keypair)?,
            None => self
                .ks
                .by_name(CLUSTER_ROOT)?
                .ok_or(AgentError::NotFound(Missing::ClusterRoot))?,
        };
        let mut chain = Chain::new(Self::public_of(&root)?);
        let push = |chain: &mut Chain, st: Vec<u8>| {
            chain
                .push(st)
                .map_err(AgentError::crypto("building the chain"))
        };
        let keys = self.ks.list(KeyKind::Keypair, None)?;
        // The keys in the tree under `root`: follow issuer links down from it.
        let mut tree = vec![root.id];
        let mut grew = true;
        while grew {
            grew = false;
            for k in &keys {
                if k.issuer.is_some_and(|i| tree.contains(&i)) && !tree.contains(&k.id) {
                    tree.push(k.id);
                    grew = true;
                }
            }
        }
        // The roots `root` succeeded (`node.root_rotate`): follow issuer links up from it, so
        // a peer that trusts any earlier root finds the rekey statements leading here.
        let mut predecessors = Vec::new();
        let mut cur = root.issuer;
        while let Some(id) = cur {
            if predecessors.contains(&id) || tree.contains(&id) || predecessors.len() > 64 {
                break;
            }
            predecessors.push(id);
            cur = keys.iter().find(|k| k.id == id).and_then(|k| k.issuer);
        }
        for k in keys.iter().filter(|k| predecessors.contains(&k.id)) {
            if let Some(st) = k.statement.clone() {
                push(&mut chain, st)?;
            }
        }
        // Former cluster roots (named `/`, no longer active) that revoked themselves in a
        // compromised rotation: a peer still trusting one is refused, not silently rerouted.
        let former_root = |id: &Uuid| {
            keys.iter().any(|k| {
                k.id == *id
                    && k.name.as_deref() == Some(CLUSTER_ROOT)
                    && k.state != KeyState::Active
            })
        };
        for k in &keys {
            if let Some(st) = k.statement.clone().filter(|_| tree.contains(&k.id)) {
                push(&mut chain, st)?;
            }
        }
        for r in self.ks.revocations()? {
            let self_revoked_root = r.revoked == r.issuer && former_root(&r.revoked);
            if tree.contains(&r.revoked) || predecessors.contains(&r.revoked) || self_revoked_root {
                push(&mut chain, r.statement)?;
            }
        }
        Ok(chain.to_cbor())
    }

    /// Seal `plaintext` to `to`, authenticated by our keypair `sign_with`.
    pub fn seal(&self, to: &str, sign_with: &str, plaintext: &[u8]) -> Result<String, AgentError> {
        self.root_record("seal")?;
        let recipient = PublicKey::parse(to)
            .map_err(|e| AgentError::invalid("to", Problem::NotPublicKey(e)))?;
        let rec = self.record(sign_with, KeyKind::Keypair)?;
        Self::require_active(&rec)?;
        self.permit(&rec, crate::limits::Usage::Sign)?;
        let me = self.unwrap_keypair(&rec)?;
        let m = SealedMessage::seal(&me, &recipient, plaintext, &mut OsRng)
            .map_err(AgentError::crypto("seal"))?;
        Ok(m.to_base64url())
    }

    /// Open a message sealed to one of our keypairs; with a chain, refuse senders it does not
    /// vouch for. Returns the plaintext, the sender's did:key and its node name.
    pub fn open(&self, sealed: &str, chain: Option<&[u8]>) -> Result<Opened, AgentError> {
        self.open_checked(sealed, chain, None)
    }

    /// [`open`](Self::open), also refusing a sender that `agents`, a peer's signed agent policy
    /// (`agents.policy` of the sender's identity), revoked. The policy is checked under the root
    /// it names: it can only make `open` refuse, so no root need be pinned for it.
    pub fn open_checked(
        &self,
        sealed: &str,
        chain: Option<&[u8]>,
        agents: Option<&[u8]>,
    ) -> Result<Opened, AgentError> {
        self.root_record("open")?;
        let peer_policy = agents
            .map(|b| keyward_identity::verify_policy(b, None))
            .transpose()
            .map_err(|e| AgentError::invalid("agents", Problem::AgentPolicy(e)))?;
        let m = SealedMessage::from_base64url(sealed)
            .map_err(|e| AgentError::invalid("sealed", Problem::NotSealedMessage(e)))?;
        let mine = self.keypair_by_key_id(m.recipient())?.ok_or_else(|| {
            AgentError::WrongKey(WrongKey::NotHeld {
                what: "message",
                key: *m.recipient(),
            })
        })?;
        self.permit(&mine, crate::limits::Usage::Decrypt)?;
        let me = self.unwrap_keypair(&mine)?;
        let pt = m
            .open(&me)
            .map_err(|e| AgentError::VerifyFailed(Unverified::Message(e)))?;
        // A sender the identity's agent policy revoked (agents.rs), whatever the chain says.
        self.refuse_revoked_agent(m.sender())?;
        if let Some(at) = peer_policy.as_ref().and_then(|p| p.revoked_at(m.sender())) {
            return Err(AgentError::VerifyFailed(Unverified::AgentRevoked {
                key: m.sender().key_id(),
                at,
            }));
        }
        let name = match chain {
            None => None,
            Some(bytes) => {
                let chain = Chain::from_cbor(bytes)
                    .map_err(|e| AgentError::invalid("chain", Problem::NotChain(e)))?;
                let vouch = chain
                    .verify_key(m.sender(), now())
                    .map_err(|e| AgentError::VerifyFailed(Unverified::NotVouched(e)))?;
                vouch.name
            }
        };
        Ok((pt, m.sender().to_did_key(), name))
    }
}

#[cfg(test)]
#[path = "nodes_tests.rs"]
mod tests;
