//! Key life cycle: DEK versions (`dek.rotate`, `dek.min_version`, `rewrap`), KEK rotation
//! (`kek.rotate`, journaled in the keystore so that a crash is finished at the next unlock), and
//! revocation by the owner (`kek.revoke`, `dek.revoke`, `keypair.revoke`).
//!
//! A DEK's versions: version 1 is the key row's own wrapped key, versions 2 and up are rows of
//! the keystore's `key_versions` table; `keys.version` is the newest, which every new
//! ciphertext uses, and `keys.min_version` the oldest that still decrypts. A Cryppo ciphertext
//! names its DEK and version in its `ad` ([`ad_for`], [`parse_ad`]): `keyward:dek:<id>` is
//! version 1 (what agents wrote before versions existed, and still write for version 1), and
//! `keyward:dek:<id>:v<N>` version N ≥ 2.
//!
//! Revocation is final: the key's state becomes `revoked` (MAC'd with the row), and every use
//! afterwards is `key_inactive`. Revoking a KEK revokes every key wrapped under it in the same
//! transaction, and the hierarchy also refuses any key whose KEK is revoked
//! (`Hierarchy::parent_kek`).
//!
//! This module must never return or log a plaintext: `rewrap` holds the plaintext in a
//! `Zeroizing` buffer between the open and the seal, inside the agent, and `kek.rotate` holds
//! each child's secret in one only between the old KEK's unwrap and the new KEK's wrap. It must
//! never swap a rotation before every wrapped secret under the KEK has its new wrap.

use crate::error::{AgentError, DecryptFailure, Problem, WrongKey};
use crate::hierarchy::{crash_point, test_delay, Hierarchy, AD_PREFIX};
use crate::keystore::{KeyKind, KeyRecord, KeyState, PendingRotation, Purpose, RotationItem};
use crate::root::{Kek, RootError};
use std::sync::{Arc, Mutex};
use uuid::Uuid;
use zeroize::Zeroizing;

/// Children rewrapped per keystore transaction during `kek.rotate`.
const ROTATION_BATCH: usize = 64;

/// One KEK rotation at a time in this process (a second waits, then finds nothing pending).
pub(crate) static ROTATION: Mutex<()> = Mutex::new(());

/// What `kek.rotate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KekRotated {
    pub id: Uuid,
    pub version: u32,
    /// Wrapped secrets moved to the new KEK (DEK versions, keypairs, secrets).
    pub rewrapped: usize,
}

/// Rewrap one child's wrapped secret from `old` to `new`: unwrapped into agent memory
/// (`Zeroizing`, dropped at once) and wrapped again. An RSA keypair's record is its own DEK
/// wrapped under the KEK followed by the PEM under that DEK: only the first part changes.
fn rewrap_child(
    rec: &KeyRecord,
    wrapped: &[u8],
    old: &dyn Kek,
    new: &dyn Kek,
) -> Result<Vec<u8>, AgentError> {
    const OP: &str = "kek.rotate";
    let (inner, rest) = if rec.scheme == crate::rsa_keys::RSA_SCHEME {
        if wrapped.len() < 40 {
            return Err(AgentError::bad_record(
                rec.kind,
                rec.id,
                crate::error::Defect::Truncated,
            ));
        }
        wrapped.split_at(40)
    } else {
        (wrapped, &[][..])
    };
    let secret = old.export_dek(inner)?;
    let w = new.wrap_secret(&secret)?;
    drop(secret);
    let same_scheme = rec.scheme == crate::rsa_keys::RSA_SCHEME || w.scheme.as_str() == rec.scheme;
    if !same_scheme || w.bytes.len() != inner.len() {
        return Err(RootError::Unsupported {
            op: OP,
            detail: format!(
                "the new KEK wraps {} {} as {}, not {}",
                rec.kind.as_str(),
                rec.id,
                w.scheme.as_str(),
                rec.scheme
            ),
        }
        .into());
    }
    Ok([w.bytes, rest.to_vec()].concat())
}

/// The Cryppo `ad` of a ciphertext under `version` of DEK `id`.
pub fn ad_for(id: &Uuid, version: u32) -> String {
    if version <= 1 {
        format!("{AD_PREFIX}{id}")
    } else {
        format!("{AD_PREFIX}{id}:v{version}")
    }
}

/// The DEK (as written: not necessarily a UUID) and version an `ad` names, `None` when it
/// names no Keyward DEK, and `BadVersion` when the version suffix is not canonical.
pub fn parse_ad(ad: &str) -> Result<Option<(&str, u32)>, DecryptFailure> {
    let Some(rest) = ad.strip_prefix(AD_PREFIX) else {
        return Ok(None);
    };
    let Some((id, v)) = rest.split_once(":v") else {
        return Ok(Some((rest, 1)));
    };
    let canonical = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
    match v.parse::<u32>() {
        Ok(n) if canonical && n >= 2 => Ok(Some((id, n))),
        _ => Err(DecryptFailure::BadVersion),
    }
}

/// What `dek.min_version` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinVersionSet {
    pub id: Uuid,
    pub min_version: u32,
    pub version: u32,
    /// The versions this call retired (`previous minimum .. new minimum - 1`), when any: data
    /// still encrypted under them no longer decrypts.
    pub newly_retired: Option<(u32, u32)>,
}

impl MinVersionSet {
    /// The warning for people, when versions were retired.
    pub fn warning(&self) -> Option<String> {
        self.newly_retired.map(|(lo, hi)| {
            let which = if lo == hi {
                format!("version {lo} no longer decrypts")
            } else {
                format!("versions {lo} to {hi} no longer decrypt")
            };
            format!(
                "DEK {}: {which}; the agent cannot know which ciphertexts still use them: rewrap them (`keyward rewrap`) or lower the minimum again",
                self.id
            )
        })
    }
}

impl Hierarchy {
    /// The DEK's minimum version (1 when none was set).
    pub(crate) fn min_version(dek: &KeyRecord) -> u32 {
        dek.min_version.unwrap_or(1).max(1)
    }

    /// The wrapped key of `version` of `dek`, for decryption: the version must exist
    /// (`decrypt_failed`) and not be below the minimum (`version_retired`).
    ///
    /// A version above the newest that `dek` knows is looked up again in the keystore first:
    /// `dek` may be this agent's copy of the record, taken before another agent on a shared
    /// keystore added that version (its change notification still on the way); a ciphertext
    /// under a version the keystore has must open (and a refusal names the stored newest).
    pub(crate) fn dek_version_for_open(
        &self,
        dek: &KeyRecord,
        version: u32,
    ) -> Result<Vec<u8>, AgentError> {
        let stored;
        let dek = if version > dek.version {
            match self.ks.get(&dek.id)? {
                Some(r) if r.kind == dek.kind => {
                    stored = r;
                    &stored
                }
                _ => dek,
            }
        } else {
            dek
        };
        if version == 0 || version > dek.version {
            return Err(AgentError::DecryptFailed(DecryptFailure::DekVersion {
                id: dek.id,
                version,
                current: dek.version,
            }));
        }
        let min = Self::min_version(dek);
        if version < min {
            return Err(AgentError::VersionRetired {
                id: dek.id,
                version,
                min,
            });
        }
        self.dek_version_wrapped(dek, version)
    }

    /// The wrapped key of an existing `version` of `dek` (no policy).
    pub(crate) fn dek_version_wrapped(
        &self,
        dek: &KeyRecord,
        version: u32,
    ) -> Result<Vec<u8>, AgentError> {
        if version <= 1 {
            return Ok(self.wrapped(dek)?.to_vec());
        }
        match self.ks.version(&dek.id, version)? {
            Some(v) => Ok(v.wrapped),
            None => Err(AgentError::bad_record(
                dek.kind,
                dek.id,
                crate::error::Defect::NoWrappedKey,
            )),
        }
    }

    /// The newest version of `dek` and its wrapped key, for new ciphertexts.
    pub(crate) fn dek_newest(&self, dek: &KeyRecord) -> Result<(u32, Vec<u8>), AgentError> {
        Ok((dek.version, self.dek_version_wrapped(dek, dek.version)?))
    }

    /// A DEK by id (any state), for showing.
    pub fn dek_show(&self, id: &str) -> Result<KeyRecord, AgentError> {
        self.record(id, KeyKind::Dek)
    }

    /// Add a version to an active DEK, under the same KEK; new encryptions use it. Returns the
    /// new version. Sharing DEKs are not rotated: their recipients hold version 1.
    pub fn dek_rotate(&self, id: &str) -> Result<u32, AgentError> {
        self.root_record("dek.rotate")?;
        let dek = self.record(id, KeyKind::Dek)?;
        Self::require_active(&dek)?;
        if dek.purpose == Some(Purpose::Sharing) {
            return Err(AgentError::WrongKey(WrongKey::SharedDekRotation {
                id: dek.id,
            }));
        }
        let kek = self.parent_kek(&dek)?;
        Self::require_active(&kek)?;
        let w = self.with_recovery(|| Ok(self.kek_handle(&kek)?.generate_dek()?))?;
        if w.scheme.as_str() != dek.scheme {
            // A KEK wraps every DEK with one scheme; a different one would not open.
            return Err(AgentError::bad_record(
                kek.kind,
                kek.id,
                crate::error::Defect::NoWrappedKey,
            ));
        }
        let version = self
            .ks
            .add_version(&dek.id, w.bytes)?
            .ok_or(AgentError::NotFound(crate::error::Missing::Key {
                kind: KeyKind::Dek,
                id: dek.id,
            }))?;
        tracing::info!(id = %dek.id, version, "DEK rotated");
        Ok(version)
    }

    /// Refuse decryption below `min` (1 ..= the newest version). Lowering it again is allowed:
    /// every version's wrapped key is kept.
    pub fn dek_min_version(&self, id: &str, min: u32) -> Result<MinVersionSet, AgentError> {
        self.root_record("dek.min_version")?;
        let dek = self.record(id, KeyKind::Dek)?;
        if dek.state == KeyState::Revoked {
            return Err(AgentError::KeyInactive {
                kind: dek.kind,
                id: dek.id,
                state: dek.state,
            });
        }
        if min == 0 || min > dek.version {
            return Err(AgentError::invalid(
                "min_version",
                Problem::OutOfRange {
                    min: 1,
                    max: u64::from(dek.version),
                    unit: "(the DEK's versions)",
                },
            ));
        }
        let before = self
            .ks
            .set_min_version(&dek.id, min)?
            .ok_or(AgentError::NotFound(crate::error::Missing::Key {
                kind: KeyKind::Dek,
                id: dek.id,
            }))?;
        let old = Self::min_version(&before);
        let set = MinVersionSet {
            id: dek.id,
            min_version: min,
            version: before.version,
            newly_retired: (min > old).then_some((old, min - 1)),
        };
        tracing::info!(id = %dek.id, min, "DEK minimum version set");
        Ok(set)
    }

    /// Re-encrypt a Cryppo ciphertext under the newest version of its DEK, inside the agent.
    /// `dek` names the DEK for ciphertexts whose `ad` names none (as `decrypt`). The plaintext
    /// lives in a zeroizing buffer between the two steps and is never returned.
    pub fn rewrap(&self, ciphertext: &str, dek: Option<&str>) -> Result<String, AgentError> {
        self.root_record("rewrap")?;
        let (plaintext, dek_rec): (Zeroizing<Vec<u8>>, std::sync::Arc<KeyRecord>) =
            self.decrypt_with_record(ciphertext, dek)?;
        Self::require_active(&dek_rec)?;
        self.encrypt(&dek_rec.id.to_string(), &plaintext)
    }

    // ---- KEK rotation -----------------------------------------------------------------------

    /// A new version of an active KEK: a new KEK made by the root, every child (DEKs and all
    /// their versions, keypairs, secrets) rewrapped under it, then the old wrap replaced and so
    /// destroyed. Journaled (keystore `kek_rotations`, `kek_rotation_items`): a rotation a crash
    /// interrupted is finished first, here or at the next unlock.
    pub fn kek_rotate(&self, id: &str) -> Result<KekRotated, AgentError> {
        self.kek_rotate_dropping(id, &[])
    }

    /// [`Hierarchy::kek_rotate`] with several roots: the new KEK is wrapped under every enrolled
    /// root (journaled with the rotation, `kek_rotation_wraps`, and swapped in with it); the
    /// roots in `drop_roots` are removed first (`--drop-root`). An absent root that needs its
    /// secret to wrap refuses the rotation ([`crate::error::RootRefusal::Absent`]) before
    /// anything changes.
    pub fn kek_rotate_dropping(
        &self,
        id: &str,
        drop_roots: &[String],
    ) -> Result<KekRotated, AgentError> {
        const OP: &str = "kek.rotate";
        let own = self.root_record(OP)?;
        let _one = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
        self.finish_rotations_locked()?;
        let kek = self.record(id, KeyKind::Kek)?;
        Self::require_active(&kek)?;
        let drop = self.drop_roots_locked(OP, &own, drop_roots)?;
        let w = self.with_recovery(|| Ok(self.root.generate_kek()?))?;
        let others = self.wraps_for_new_kek(OP, kek.id, &w, &drop)?;
        self.remove_dropped_locked(OP, &own, &drop)?;
        let pending = PendingRotation {
            kek: kek.id,
            wrapped: w.bytes.clone(),
            scheme: w.scheme.as_str().to_string(),
            started: crate::keystore::now(),
        };
        if others.is_empty() && self.ks.roots()?.len() <= 1 {
            self.ks.rotation_begin(&pending)?;
        } else {
            let mut wraps = others;
            wraps.push(crate::keystore::KekWrap {
                kek: kek.id,
                root: own.id,
                scheme: pending.scheme.clone(),
                wrapped: w.bytes,
                created: pending.started,
            });
            self.ks.rotation_begin_wraps(&pending, &wraps)?;
        }
        crash_point("kek-rotate-begun");
        let done = self.finish_rotation(&pending)?;
        tracing::info!(id = %kek.id, version = done.version, rewrapped = done.rewrapped, "KEK rotated");
        Ok(done)
    }

    /// How far the rotation of KEK `id` has come: `None` when none is pending, else (rewrapped
    /// so far, secrets under the KEK), from the journal. Works while locked (a rotation a crash
    /// left shows until the unlock finishes it); it takes no lock a rotation holds.
    pub fn kek_rotation_progress(
        &self,
        id: &str,
    ) -> Result<(Uuid, Option<(u64, u64)>), AgentError> {
        let kek = self.record(id, KeyKind::Kek)?;
        Ok((kek.id, self.ks.rotation_progress(&kek.id)?))
    }

    /// Finish every KEK rotation left pending (after a crash). Returns how many.
    pub(crate) fn finish_rotations(&self) -> Result<usize, AgentError> {
        let _one = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
        self.finish_rotations_locked()
    }

    pub(crate) fn finish_rotations_locked(&self) -> Result<usize, AgentError> {
        let pending = self.ks.rotations_pending()?;
        for p in &pending {
            let done = self.finish_rotation(p)?;
            tracing::warn!(id = %p.kek, version = done.version, rewrapped = done.rewrapped, "finished an interrupted KEK rotation");
        }
        Ok(pending.len())
    }

    /// [`Hierarchy::finish_rotation_steps`]; on a failure (a token that refuses, a tampered
    /// item, a full disk) the journal is dropped, which is safe before the swap (nothing refers
    /// to the new wrap) and keeps one bad rotation from blocking every later one. Only a crash
    /// leaves a journal behind, for the next unlock to finish.
    fn finish_rotation(&self, p: &PendingRotation) -> Result<KekRotated, AgentError> {
        self.finish_rotation_steps(p).inspect_err(|e| {
            tracing::error!(id = %p.kek, error = %e, "KEK rotation failed: abandoned, every key stays under the old wrap");
            if let Err(e2) = self.ks.rotation_abandon(&p.kek) {
                tracing::error!(id = %p.kek, error = %e2, "dropping the failed rotation's journal failed: the next unlock tries it again");
            }
        })
    }

    /// Rewrap what has no item yet, in batches, then swap; again if children appeared
    /// meanwhile (the swap checks inside its transaction).
    fn finish_rotation_steps(&self, p: &PendingRotation) -> Result<KekRotated, AgentError> {
        let kek = self
            .ks
            .get(&p.kek)?
            .ok_or(AgentError::NotFound(crate::error::Missing::Key {
                kind: KeyKind::Kek,
                id: p.kek,
            }))?;
        let old = self.with_recovery(|| self.kek_handle(&kek))?;
        // The new KEK under the agent's root: the journal's wrap for it when the rotation
        // journaled wraps (it may have been begun on another enrolled root), else the pending
        // wrap (begun on this one, the only root).
        let own = self.root_record("kek.rotate")?;
        let new_wrap = self
            .ks
            .rotation_wraps(&p.kek)?
            .into_iter()
            .find(|w| w.root == own.id)
            .map_or_else(|| p.wrapped.clone(), |w| w.wrapped);
        let new: Arc<dyn Kek> =
            self.with_recovery(|| Ok(Arc::from(self.root.open_kek(&new_wrap)?)))?;
        let mut rewrapped = 0;
        loop {
            let todo = self.ks.rotation_todo(&p.kek)?;
            for chunk in todo.chunks(ROTATION_BATCH) {
                let items = chunk
                    .iter()
                    .map(|(rec, version, wrapped)| {
                        Ok(RotationItem {
                            kek: p.kek,
                            key: rec.id,
                            version: *version,
                            wrapped: rewrap_child(rec, wrapped, &*old, &*new)?,
                        })
                    })
                    .collect::<Result<Vec<_>, AgentError>>()?;
                self.ks.rotation_put(&items)?;
                rewrapped += items.len();
                crash_point("kek-rotate-batch");
                test_delay("KEYWARD_TEST_ROTATION_BATCH_DELAY_MS");
            }
            if let Some(version) = self.ks.rotation_swap(p)? {
                // The old wrap is gone from the keystore; its opened copy goes now.
                self.forget_kek(&p.kek);
                self.key_cache.clear();
                crash_point("kek-rotate-swapped");
                return Ok(KekRotated {
                    id: p.kek,
                    version,
                    rewrapped,
                });
            }
        }
    }

    // ---- revocation -------------------------------------------------------------------------

    /// Revoke a key of `kind` (KEK, DEK or keypair): final. A KEK takes every key wrapped under
    /// it along. Revoking a revoked key is `key_inactive`.
    pub fn revoke(&self, kind: KeyKind, id: &str) -> Result<Vec<Uuid>, AgentError> {
        let op = match kind {
            KeyKind::Kek => "kek.revoke",
            KeyKind::Dek => "dek.revoke",
            _ => "keypair.revoke",
        };
        self.root_record(op)?;
        let rec = self.record(id, kind)?;
        if rec.state == KeyState::Revoked {
            return Err(AgentError::KeyInactive {
                kind: rec.kind,
                id: rec.id,
                state: rec.state,
            });
        }
        let revoked = self.ks.revoke_tree(&rec.id)?;
        for id in &revoked {
            self.key_cache.remove(id);
        }
        if kind == KeyKind::Kek {
            self.forget_kek(&rec.id);
        }
        tracing::info!(id = %rec.id, kind = kind.as_str(), count = revoked.len(), "revoked");
        Ok(revoked)
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
