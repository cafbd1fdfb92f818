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

use crate::audit::REKEY_KEY_ROWS;
use crate::error::Tampering;
use crate::error::{AgentError, Existing, RootRefusal};
use crate::hierarchy::{crash_point, lock, Hierarchy};
use crate::keystore::{Encoder, KeyKind, KeyState, MetaMac};
use crate::lifecycle::ROTATION;
use crate::root::{Root, RootDestroyed};
use keyward_proto::secret::Pin;
use std::borrow::Cow;
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

/// Keystore `meta`: the mark by which a `root rotate --compromised` asks the next unlock (on the
/// new root) to replace the keystore integrity key (value: the old root's id), written in the
/// rotation's commit and removed in the commit that installs the new key.
pub const META_REKEY: &str = "root_rotate_rekey_integrity";
/// Keystore `meta`: the mark's MAC (hex) under the keystore MAC key (the old one).
pub const META_REKEY_MAC: &str = "root_rotate_rekey_integrity_mac";
const REKEY_DOMAIN: &str = "keyward/keystore/meta/root_rotate_rekey_integrity/v1";

fn rekey_body(mark: &str) -> Vec<u8> {
    let mut e = Encoder::new(REKEY_DOMAIN);
    e.text(Some(mark));
    e.finish()
}

/// Keystore `meta`: the audit public keys used before each integrity key replacement (hex SEC1,
/// oldest first, comma-separated), so checkpoints signed before a switch can still be checked
/// with the key of their time; MAC'd (`audit_key_previous_mac`).
pub const META_AUDIT_PREVIOUS: &str = "audit_key_previous";
pub(crate) const META_AUDIT_PREVIOUS_MAC: &str = "audit_key_previous_mac";

pub(crate) fn previous_body(list: &str) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/meta/audit_key_previous/v1");
    e.text(Some(list));
    e.finish()
}

/// Every meta row MAC'd under the keystore MAC key, for its replacement.
fn mac_metas() -> [MetaMac; 6] {
    [
        MetaMac {
            values: Cow::Borrowed(&[Cow::Borrowed(META_COMPROMISED)]),
            mac: Cow::Borrowed(META_COMPROMISED_MAC),
            body: |v| mac_body(v[0].as_deref().unwrap_or("")),
        },
        MetaMac {
            values: Cow::Borrowed(&[Cow::Borrowed(META_REKEY)]),
            mac: Cow::Borrowed(META_REKEY_MAC),
            body: |v| rekey_body(v[0].as_deref().unwrap_or("")),
        },
        MetaMac {
            values: Cow::Borrowed(&[Cow::Borrowed(META_AUDIT_PREVIOUS)]),
            mac: Cow::Borrowed(META_AUDIT_PREVIOUS_MAC),
            body: |v| previous_body(v[0].as_deref().unwrap_or("")),
        },
        crate::hierarchy::PIN_COUNTER_MAC,
        crate::agents::POLICY_MAC,
        crate::audit::REKEY_HEAD,
    ]
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
            let mark = own.id.to_string();
            let mark_tag = self.ks.mac_tag(&rekey_body(&mark)).map(hex::encode);
            let mut meta: Vec<(&str, &str)> = match &tag {
                Some(tag) if compromised && !keks.is_empty() => vec![
                    (META_COMPROMISED, pending.as_str()),
                    (META_COMPROMISED_MAC, tag.as_str()),
                ],
                _ => Vec::new(),
            };
            // Whoever holds the old root can derive the MAC key: the next unlock replaces it.
            if let (true, Some(mark_tag)) = (compromised, &mark_tag) {
                meta.push((META_REKEY, mark.as_str()));
                meta.push((META_REKEY_MAC, mark_tag.as_str()));
            }
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

    /// Ask for what `root rotate --compromised` asks of the next unlock, now (for
    /// `device.revoke`): `keks` join the MAC'd list of KEKs to rotate and the MAC'd mark asks
    /// for a new integrity key, both in one `meta` write; [`Hierarchy::finish_compromised`] and
    /// [`Hierarchy::finish_rekey`] then do them, here or at the next unlock if interrupted.
    /// `why` names what the key was exposed to (the mark's value, logged).
    pub(crate) fn mark_compromised(&self, keks: &[Uuid], why: &str) -> Result<(), AgentError> {
        let mut list: Vec<String> = match self.ks.meta(META_COMPROMISED)? {
            Some(l) if !l.is_empty() => {
                let verified = self
                    .ks
                    .meta(META_COMPROMISED_MAC)?
                    .and_then(|t| hex::decode(t).ok())
                    .is_some_and(|tag| self.ks.mac_verify(&mac_body(&l), &tag) == Some(true));
                if !verified {
                    return Err(AgentError::KeystoreTampered(Tampering::CompromisedList));
                }
                l.split(',').map(str::to_string).collect()
            }
            _ => Vec::new(),
        };
        for k in keks {
            let k = k.to_string();
            if !list.contains(&k) {
                list.push(k);
            }
        }
        let pending = list.join(",");
        let missing = || AgentError::Locked {
            op: "device.revoke",
        };
        let tag = hex::encode(self.ks.mac_tag(&mac_body(&pending)).ok_or_else(missing)?);
        let mark_tag = hex::encode(self.ks.mac_tag(&rekey_body(why)).ok_or_else(missing)?);
        let mut meta: Vec<(&str, Option<&str>)> =
            vec![(META_REKEY, Some(why)), (META_REKEY_MAC, Some(&mark_tag))];
        if !pending.is_empty() {
            meta.push((META_COMPROMISED, Some(&pending)));
            meta.push((META_COMPROMISED_MAC, Some(&tag)));
        }
        self.ks.set_metas(&meta)?;
        Ok(())
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

/// How many times [`Hierarchy::finish_rekey`] tries its transaction when it meets a conflict.
const REKEY_TRIES: u32 = 5;

impl Hierarchy {
    /// At unlock, after [`Hierarchy::finish_compromised`]: when a `root rotate --compromised`
    /// left its mark, replace the keystore integrity key: a new integrity KEK and secret under
    /// this (new) root, wrapped under every other enrolled root as `kek.create` does, and in ONE
    /// keystore transaction ([`crate::keystore::Keystore::rekey_integrity`]) every MAC'd row
    /// checked under the old key and re-MAC'd under the new one, the old integrity records
    /// dropped, the new ones installed and the mark removed. The audit key derives from the MAC
    /// key: its old public half joins the MAC'd list of previous audit keys and its row goes
    /// (the new key is recorded at its first use). A failure (or a crash) before the commit
    /// leaves everything under the old key and the mark in place: the next unlock tries again.
    /// Returns whether the key was replaced.
    ///
    /// A `Conflict` at the commit (PostgreSQL's serialization failure: another agent, or this
    /// agent's own audit head write, committed a row the rekey read) is retried at once, up to
    /// [`REKEY_TRIES`] times, each try reading everything again; the conflicting commit is
    /// short, so the next try meets none.
    pub(crate) fn finish_rekey(&self) -> Result<bool, AgentError> {
        let mut tries = 1;
        loop {
            match self.try_finish_rekey() {
                Err(AgentError::Keystore(crate::keystore::KeystoreError::Conflict { .. }))
                    if tries < REKEY_TRIES =>
                {
                    tracing::info!(
                        attempt = tries,
                        "replacing the keystore integrity key met a concurrent commit; trying again"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5 * u64::from(tries)));
                    tries += 1;
                }
                done => return done,
            }
        }
    }

    /// One try of [`Hierarchy::finish_rekey`].
    fn try_finish_rekey(&self) -> Result<bool, AgentError> {
        const OP: &str = "root.rotate";
        let Some(mark) = self.ks.meta(META_REKEY)? else {
            return Ok(false);
        };
        let verified = self
            .ks
            .meta(META_REKEY_MAC)?
            .and_then(|t| hex::decode(t.trim()).ok())
            .is_some_and(|tag| self.ks.mac_verify(&rekey_body(&mark), &tag) == Some(true));
        if !verified {
            return Err(AgentError::KeystoreTampered(Tampering::IntegrityRekey));
        }
        // No KEK (or root) made or rotated meanwhile: the new KEK's wraps cover every root.
        let _one = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
        let own = self.root_record(OP)?;
        // The integrity records now (checked: the key is loaded), the secret before its KEK.
        let mut old: Vec<crate::keystore::KeyRecord> = Vec::new();
        for r in self.ks.integrity_records()? {
            if let Some(r) = self.ks.get(&r.id)? {
                old.push(r);
            }
        }
        let old_ids: Vec<Uuid> = {
            let ids: Vec<Uuid> = old.iter().map(|r| r.id).collect();
            let (children, parents): (Vec<_>, Vec<_>) = old
                .iter()
                .partition(|r| r.parent.is_some_and(|p| ids.contains(&p)));
            children
                .iter()
                .chain(parents.iter())
                .map(|r| r.id)
                .collect()
        };
        let (records, w, key) = self.new_integrity(&own)?;
        let wraps = self.wraps_for_new_kek(OP, records[0].id, &w, &[])?;
        // The audit key of the old MAC key joins the list of previous ones.
        let audit_key = self.ks.meta(REKEY_KEY_ROWS[0])?;
        let mut set = Vec::new();
        if let Some(public) = audit_key
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let list = match self.ks.meta(META_AUDIT_PREVIOUS)? {
                Some(l) if !l.is_empty() => format!("{l},{public}"),
                _ => public.to_string(),
            };
            let tag = hex::encode(key.tag(&previous_body(&list)));
            set.push((META_AUDIT_PREVIOUS, list));
            set.push((META_AUDIT_PREVIOUS_MAC, tag));
        }
        let mut metas = mac_metas().to_vec();
        metas.push(crate::audit::REKEY_KEY);
        // Every device's own audit chain head and PIN counter (the first device's are in
        // `mac_metas`).
        for d in self.ks.devices()? {
            metas.push(crate::audit::rekey_device_head(d.id));
            metas.push(crate::hierarchy::rekey_device_counter(d.id));
            metas.extend(crate::audit::rekey_device_keys(d.id));
        }
        let mut clear = vec![META_REKEY, META_REKEY_MAC];
        clear.extend(REKEY_KEY_ROWS);
        let n = self
            .ks
            .rekey_integrity(key, &old_ids, &records, &wraps, &metas, &clear, &set)?;
        crash_point("integrity-rekey-committed");
        lock(&self.keks).clear();
        tracing::info!(rows = n, exposed_to = %mark, "the keystore integrity key was replaced (root rotate --compromised, or device revoke); every record is MAC'd under the new key");
        Ok(true)
    }
}

#[cfg(test)]
#[path = "root_rotate_tests.rs"]
mod tests;
