//! `root.rotate`: replace the root this agent runs on by another (another token, a card, a soft
//! root, or another object on the same token: the PKCS#11 layer shares the token's login
//! between the two), with `--destroy-old` and `--compromised`.
//!
//! The steps (ARCHITECTURE.md "Root rotation"): enroll the new root as `root.add` does (or find
//! it enrolled already: an interrupted rotation), then in ONE keystore transaction
//! ([`crate::keystore::Keystore::rotate_root`]) make it the parent of every KEK, drop the old
//! root's wraps and record and rewrite the MAC'd root set. A crash before that commit leaves the
//! old state with the new root at most enrolled; after it, the new state. The running agent's
//! root object cannot be swapped in place, so the agent locks: it must be restarted with the new
//! root's configuration. `--compromised` records the KEKs to rotate in that same transaction;
//! the agent started on the new root rotates them at unlock ([`Hierarchy::finish_compromised`]).
//!
//! This module must never destroy the old root object before the commit succeeded, never rotate
//! to the root the agent runs on, and never return or log key material.

use crate::error::Tampering;
use crate::error::{AgentError, Existing, RootRefusal};
use crate::hierarchy::{crash_point, lock, Hierarchy};
use crate::keystore::{Encoder, KeyKind, KeyState};
use crate::lifecycle::ROTATION;
use crate::root::{Root, RootDestroyed};
use keyward_proto::secret::Pin;
use uuid::Uuid;

/// Keystore `meta`: the KEKs a `root rotate --compromised` left to rotate at the next unlock
/// (comma-separated ids), written in the rotation's commit.
pub const META_COMPROMISED: &str = "root_rotate_compromised";
/// Keystore `meta`: the list's MAC (hex) under the keystore MAC key, rewritten with it.
pub const META_COMPROMISED_MAC: &str = "root_rotate_compromised_mac";
const MAC_DOMAIN: &str = "keyward/keystore/meta/root_rotate_compromised/v1";

fn mac_body(list: &str) -> Vec<u8> {
    let mut e = Encoder::new(MAC_DOMAIN);
    e.field(Some(list.as_bytes()));
    e.finish()
}

/// What `root.rotate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRotated {
    /// The new root (now the parent of every KEK).
    pub id: Uuid,
    /// The root the agent ran on, no longer enrolled.
    pub old: Uuid,
    /// Whether the new root was enrolled now (else it was already: an interrupted rotation, or
    /// an earlier `root add`).
    pub enrolled: bool,
    /// KEKs (the integrity KEK included) whose parent changed to the new root.
    pub moved: usize,
    /// `--destroy-old`: what happened to the old root object.
    pub destroyed: Option<RootDestroyed>,
    /// `--compromised`: every DEK the old root could reach (its data must be re-encrypted).
    pub deks: Vec<Uuid>,
    /// `--compromised`: the KEKs rotated at the next unlock (on the new root).
    pub keks: Vec<Uuid>,
}

impl Hierarchy {
    /// Rotate to `new` (built from a `[root]` section; `pin` is its PIN or passphrase). See the
    /// module docs. On success the agent is locked.
    pub fn root_rotate(
        &self,
        new: &dyn Root,
        pin: &Pin,
        label: Option<String>,
        destroy_old: bool,
        compromised: bool,
    ) -> Result<RootRotated, AgentError> {
        const OP: &str = "root.rotate";
        let own = self.root_record(OP)?;
        let on_token = self.ks.list(KeyKind::Keypair, Some(&own.id))?.len();
        if on_token > 0 {
            return Err(AgentError::Roots(RootRefusal::TokenKeys {
                op: OP,
                id: own.id,
                count: on_token,
            }));
        }
        let (id, enrolled) = match self.root_add(new, pin, label) {
            Ok(added) => (added.id, true),
            Err(AgentError::AlreadyExists(Existing::Root { id })) if id == own.id => {
                return Err(AgentError::Roots(RootRefusal::SameRoot { op: OP, id }));
            }
            Err(AgentError::AlreadyExists(Existing::Root { id })) => (id, false),
            Err(e) => return Err(e),
        };
        crash_point("root-rotate-enrolled");
        let moved;
        let (mut deks, mut keks) = (Vec::new(), Vec::new());
        {
            let _one = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
            self.finish_rotations_locked()?;
            if compromised {
                deks = self
                    .ks
                    .list(KeyKind::Dek, None)?
                    .into_iter()
                    .map(|d| d.id)
                    .collect();
                keks = self
                    .ks
                    .list(KeyKind::Kek, None)?
                    .into_iter()
                    .filter(|k| k.state == KeyState::Active)
                    .map(|k| k.id)
                    .collect();
            }
            let pending = keks
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let tag = self.ks.mac_tag(&mac_body(&pending)).map(hex::encode);
            let meta: Vec<(&str, &str)> = match &tag {
                Some(tag) if compromised && !keks.is_empty() => vec![
                    (META_COMPROMISED, pending.as_str()),
                    (META_COMPROMISED_MAC, tag.as_str()),
                ],
                _ => Vec::new(),
            };
            moved = self.ks.rotate_root(&own.id, &id, &meta)?;
            lock(&self.keks).clear();
        }
        crash_point("root-rotate-committed");
        tracing::info!(old = %own.id, new = %id, moved, compromised, "root rotated: restart the agent with the new root's configuration");
        let destroyed =
            destroy_old.then(
                || match self.with_recovery(|| Ok(self.root.destroy_root()?)) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "root.rotate: destroying the old root failed");
                        RootDestroyed::Failed(e.to_string())
                    }
                },
            );
        if let Err(e) = self.lock() {
            tracing::warn!(error = %e, "root.rotate: locking after the rotation failed");
        }
        *lock(&self.own_root) = None;
        Ok(RootRotated {
            id,
            old: own.id,
            enrolled,
            moved,
            destroyed,
            deks,
            keks,
        })
    }

    /// At unlock: rotate the KEKs a `root rotate --compromised` left (each a journaled
    /// `kek.rotate`), dropping each id from the list as it is done. A KEK that is gone or no
    /// longer active is skipped; a refusal that another unlock may not meet (an absent root)
    /// stops, keeping the rest for the next unlock. Returns how many were rotated.
    pub(crate) fn finish_compromised(&self) -> Result<usize, AgentError> {
        let Some(list) = self.ks.meta(META_COMPROMISED)? else {
            return Ok(0);
        };
        // Whoever can write the keystore may delete the list (skipping rotations, as deleting
        // KEK rows would), but not edit it unseen: a list whose MAC is missing or wrong is not
        // acted on (the unlock goes on; the error is logged at every unlock).
        let verified = self
            .ks
            .meta(META_COMPROMISED_MAC)?
            .and_then(|t| hex::decode(t).ok())
            .is_some_and(|tag| self.ks.mac_verify(&mac_body(&list), &tag) == Some(true));
        if !verified {
            return Err(AgentError::KeystoreTampered(Tampering::CompromisedList));
        }
        let mut left: Vec<String> = list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let mut done = 0;
        while let Some(id) = left.first().cloned() {
            match self.kek_rotate(&id) {
                Ok(r) => {
                    done += 1;
                    tracing::info!(kek = %id, version = r.version, "root rotate --compromised: KEK rotated");
                }
                Err(
                    e @ (AgentError::Roots(_) | AgentError::Locked { .. } | AgentError::Root(_)),
                ) => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(kek = %id, error = %e, "root rotate --compromised: KEK skipped");
                }
            }
            left.remove(0);
            if left.is_empty() {
                self.ks
                    .set_metas(&[(META_COMPROMISED, None), (META_COMPROMISED_MAC, None)])?;
            } else {
                let rest = left.join(",");
                let tag = self.ks.mac_tag(&mac_body(&rest)).map(hex::encode);
                self.ks.set_metas(&[
                    (META_COMPROMISED, Some(&rest)),
                    (META_COMPROMISED_MAC, tag.as_deref()),
                ])?;
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
#[path = "root_rotate_tests.rs"]
mod tests;
