//! Recovery in the agent (issue 14, parts 5 and 6): the trustee side of social recovery (hold,
//! release and list the shares this agent keeps for others), enrolling a recovery public key as
//! a root (`roots.rs`'s `enroll_public_root`), and restoring from the recovery secret onto a
//! fresh root (every recovery wrap checked before the token is touched; the new root and its
//! wraps written in one transaction).
//!
//! The cryptography is `keyward-recovery`'s; this module only stores and finds. A held share is a
//! `secret` record (no migration):
//! - `parent`: the KEK of the trustee keypair the share is sealed to;
//! - `wrapped`: a fresh AES-256 key made by that KEK (`Kek::generate_dek`, as a DEK);
//! - `statement`: `iv (12) || AES-256-GCM(that key, aad = "keyward:recovery-share:<record id>",
//!   HeldShare::to_bytes())`, sealed and opened by the KEK (in the token for `aes-kwp` KEKs);
//! - `public_key`: the owner's recovery public key (SEC1 compressed), which is also what tells a
//!   held share from the node-derivation secret (`ListFilter::HeldShares`);
//! - `issuer`: the trustee keypair the share is sealed to (so `keypair.delete` refuses it while
//!   shares need it);
//! - `label`: which share of which split (index, N, K, recovery key, set id), for `recovery
//!   held`; two held records with one label are one share held twice, which `hold` refuses.
//!
//! Every column is under the keystore's MAC like any record, and the held share is re-verified
//! (the recovery key's signature over the share's hash) each time it is opened, so a changed
//! share is refused before it is released. KEK rotation rewraps `wrapped` like any secret.
//!
//! This module must never return, log or put in an error a share value, the recovery secret or a
//! private scalar; never store a share it could not open and verify; never touch the token in
//! a restore before every KEK's recovery wrap opened and checked; and never report an
//! enrollment or a restore as done when it was not.

use crate::error::{
    AgentError, Defect, Existing, Internal, Missing, Problem, RootRefusal, Tampering, Unverified,
    WrongKey,
};
use crate::hierarchy::Hierarchy;
use crate::keystore::Cursor;
use crate::keystore::{KeyKind, KeyRecord, KeyState, ListFilter, Page, PageSize};
use crate::lifecycle::ROTATION;
use crate::root::memory_kek::MemoryKek;
use crate::root::{ExportedKek, RootError, StoredRoot};
use crate::roots::{PublicRootKind, PUBLIC_ROOT_SCHEME};
use keyward_identity::PublicKey;
use keyward_proto::secret::Pin;
use keyward_recovery::shamir::MAX_SHARE_LEN;
use keyward_recovery::{HeldShare, Hint, RecoveryKey, RecoverySecret, SealedShare, ShareTag};
use rand_core::{OsRng, RngCore};
use uuid::Uuid;

const AAD_PREFIX: &str = "keyward:recovery-share:";
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// What the agent tells about a held share (all of it signed by the recovery key).
#[derive(Debug, Clone)]
pub struct HeldFacts {
    pub id: Uuid,
    pub recovery: PublicKey,
    pub tag: ShareTag,
    pub hint: Hint,
    /// The trustee keypair the share is sealed to.
    pub keypair: Uuid,
}

/// A recovery root enrolled by [`Hierarchy::recovery_enroll`].
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub id: Uuid,
    pub recovery: PublicKey,
    pub keks: u64,
}

/// The outcome of [`Hierarchy::recovery_restore`].
#[derive(Debug, Clone)]
pub struct Restored {
    pub root: Uuid,
    pub keks: u64,
    pub absent_roots: Vec<Uuid>,
}

fn aad(id: &Uuid) -> String {
    format!("{AAD_PREFIX}{id}")
}

fn unverified(op: &'static str) -> impl FnOnce(keyward_recovery::ShareError) -> AgentError {
    move |source| AgentError::VerifyFailed(Unverified::RecoveryShare { op, source })
}

fn label(hint: &Hint, recovery: &PublicKey) -> String {
    let set: String = hint.set_id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "recovery share {} of {} ({} needed) for {} (set {set})",
        hint.index,
        hint.trustees.len(),
        hint.threshold,
        recovery.to_did_key()
    )
}

impl Hierarchy {
    /// The trustee keypair a share names (by the key id it is sealed to), active and P-256.
    fn trustee_keypair(&self, kid: &keyward_identity::KeyId) -> Result<KeyRecord, AgentError> {
        let kp = self
            .keypair_by_key_id(kid)?
            .ok_or(AgentError::WrongKey(WrongKey::NotHeld {
                what: "recovery share",
                key: *kid,
            }))?;
        Self::require_active(&kp)?;
        Ok(kp)
    }

    /// Store a recovery share sealed to one of this agent's keypairs, wrapped under that
    /// keypair's KEK. Refuses a share sealed to a key this agent does not hold (`wrong_key`), a
    /// malformed one (`invalid_args`) and one whose seal or signature fails (`verify_failed`).
    pub fn recovery_hold(&self, share: &[u8]) -> Result<HeldFacts, AgentError> {
        self.root_record("recovery.hold")?;
        if share.len() > MAX_SHARE_LEN {
            return Err(AgentError::TooLarge {
                op: "recovery.hold",
                len: share.len(),
                max: MAX_SHARE_LEN,
            });
        }
        let sealed = SealedShare::from_cbor(share)
            .map_err(|e| AgentError::invalid("share", Problem::NotRecoveryShare(e)))?;
        let kp = self.trustee_keypair(&sealed.recipient())?;
        let key = self.unwrap_keypair(&kp)?;
        let held = sealed.open(&key).map_err(unverified("recovery.hold"))?;
        drop(key);
        let kek = self.parent_kek(&kp)?;
        Self::require_active(&kek)?;
        let recovery = held.recovery_public_key();
        let sec1 = recovery.to_sec1_compressed().to_vec();
        let label = label(held.hint(), &recovery);
        if let Some(dup) = self.ks.list(KeyKind::Secret, None)?.into_iter().find(|r| {
            r.state == KeyState::Active
                && r.public_key.as_deref() == Some(&sec1[..])
                && r.label.as_deref() == Some(label.as_str())
        }) {
            return Err(AgentError::AlreadyExists(Existing::HeldShare {
                id: dup.id,
            }));
        }

        let dek = self.with_recovery(|| Ok(self.kek_handle(&kek)?.generate_dek()?))?;
        let mut rec = KeyRecord::new(KeyKind::Secret, dek.scheme.as_str());
        rec.parent = Some(kek.id);
        let mut iv = [0u8; IV_LEN];
        OsRng.fill_bytes(&mut iv);
        let plain = held.to_bytes();
        let ad = aad(&rec.id);
        let ct = self.with_recovery(|| {
            Ok(self
                .kek_handle(&kek)?
                .seal(&dek.bytes, &iv, ad.as_bytes(), &plain)?)
        })?;
        drop(plain);
        if ct.len() < TAG_LEN {
            return Err(AgentError::Internal(Internal::ShortGcmOutput {
                op: "recovery.hold",
                len: ct.len(),
            }));
        }
        let mut blob = Vec::with_capacity(IV_LEN + ct.len());
        blob.extend_from_slice(&iv);
        blob.extend_from_slice(&ct);
        rec.wrapped = Some(dek.bytes);
        rec.statement = Some(blob);
        rec.public_key = Some(sec1);
        rec.label = Some(label);
        rec.issuer = Some(kp.id);
        self.ks.insert(&rec)?;
        tracing::info!(id = %rec.id, index = held.hint().index, "recovery share held");
        Ok(HeldFacts {
            id: rec.id,
            recovery,
            tag: held.tag(),
            hint: held.hint().clone(),
            keypair: kp.id,
        })
    }

    /// A held-share record by id (`not_found` for any other record).
    fn held_record(&self, id: &str) -> Result<KeyRecord, AgentError> {
        let rec = self.record(id, KeyKind::Secret)?;
        if rec.public_key.is_none() {
            return Err(AgentError::NotFound(Missing::Key {
                kind: KeyKind::Secret,
                id: rec.id,
            }));
        }
        Ok(rec)
    }

    /// Open a held-share record: unseal under its KEK, then re-verify the share.
    fn open_held(&self, rec: &KeyRecord) -> Result<HeldShare, AgentError> {
        let kek = self.parent_kek(rec)?;
        let wrapped = self.wrapped(rec)?;
        let blob = rec
            .statement
            .as_deref()
            .filter(|b| b.len() >= IV_LEN + TAG_LEN)
            .ok_or_else(|| AgentError::bad_record(rec.kind, rec.id, Defect::Truncated))?;
        let (iv, ct) = blob.split_at(IV_LEN);
        let iv: &[u8; IV_LEN] = iv
            .try_into()
            .map_err(|_| AgentError::bad_record(rec.kind, rec.id, Defect::Truncated))?;
        let ad = aad(&rec.id);
        let plain = self.with_recovery(|| {
            Ok(self
                .kek_handle(&kek)?
                .open(wrapped, iv, ad.as_bytes(), ct)?)
        })?;
        let held = HeldShare::from_bytes(&plain)
            .map_err(|e| AgentError::bad_record(rec.kind, rec.id, Defect::NotHeldShare(e)))?;
        // The record's clear recovery key must be the one the share is signed by.
        if rec.public_key.as_deref() != Some(&held.recovery_public_key().to_sec1_compressed()[..]) {
            return Err(AgentError::bad_record(
                rec.kind,
                rec.id,
                Defect::NoPublicKey,
            ));
        }
        Ok(held)
    }

    /// Seal held share `id` to the owner's one-time request key `to` (a P-256 did:key the
    /// trustee checked out of band), with the trustee keypair as the sender. Returns the
    /// released share (CBOR) and what it is.
    pub fn recovery_release(&self, id: &str, to: &str) -> Result<(Vec<u8>, HeldFacts), AgentError> {
        self.root_record("recovery.release")?;
        let rec = self.held_record(id)?;
        Self::require_active(&rec)?;
        let owner = PublicKey::from_did_key(to)
            .map_err(|e| AgentError::invalid("to", Problem::NotPublicKey(e)))?;
        let held = self.open_held(&rec)?;
        if owner == held.recovery_public_key() {
            return Err(AgentError::invalid(
                "to",
                Problem::Reserved("the recovery key itself: give the owner's request key"),
            ));
        }
        // The hint's trustees were parsed and signature-checked when the share was opened.
        let trustee = PublicKey::from_did_key(held.hint().trustee())
            .map_err(|_| AgentError::bad_record(rec.kind, rec.id, Defect::NoPublicKey))?;
        let kp = self.trustee_keypair(&trustee.key_id())?;
        let key = self.unwrap_keypair(&kp)?;
        let released = held
            .release(&key, to, &mut OsRng)
            .map_err(unverified("recovery.release"))?;
        tracing::info!(id = %rec.id, index = held.hint().index, "recovery share released");
        Ok((
            released.to_cbor(),
            HeldFacts {
                id: rec.id,
                recovery: held.recovery_public_key(),
                tag: held.tag(),
                hint: held.hint().clone(),
                keypair: kp.id,
            },
        ))
    }

    /// Forget held share `id` (its owner made new shares, or no longer needs it): the record is
    /// deleted. Returns its id.
    pub fn recovery_delete(&self, id: &str) -> Result<Uuid, AgentError> {
        self.root_record("recovery.delete")?;
        let rec = self.held_record(id)?;
        self.ks.delete(&rec.id)?;
        tracing::info!(id = %rec.id, "recovery share deleted");
        Ok(rec.id)
    }

    /// How many held shares are sealed to keypair `id` (any state: a revoked share's record
    /// still names it).
    pub(crate) fn held_shares_of(&self, id: &Uuid) -> Result<usize, AgentError> {
        Ok(self
            .ks
            .list(KeyKind::Secret, None)?
            .into_iter()
            .filter(|r| r.public_key.is_some() && r.issuer == Some(*id))
            .count())
    }

    /// One page of the shares this agent holds for others.
    pub fn recovery_held_page(
        &self,
        after: Option<&Cursor>,
        size: &PageSize,
    ) -> Result<Page, AgentError> {
        Ok(self.ks.page(&ListFilter::HeldShares, after, size)?)
    }

    /// Enroll `recovery` as a public-key root (`public-p256`, locator `public:recovery`), so
    /// every existing KEK (and the integrity KEK) is wrapped to it now with `ecdh-p256`, and
    /// every later one by `kek.create` and `kek.rotate`. Returns the root record's id and the
    /// number of KEKs wrapped. A recovery key enrolled already is refused (`already_exists`).
    pub fn recovery_enroll(&self, recovery: &PublicKey) -> Result<Enrolled, AgentError> {
        self.root_record("recovery.enroll")?;
        let sec1 = crate::root::ecdh::sec1(recovery.as_p256());
        if let Some(r) =
            self.ks.roots_checked()?.into_iter().find(|r| {
                r.scheme == PUBLIC_ROOT_SCHEME && r.public_key.as_deref() == Some(&sec1[..])
            })
        {
            return Err(AgentError::AlreadyExists(Existing::Root { id: r.id }));
        }
        let id = self.enroll_public_root(PublicRootKind::Recovery, None, recovery.as_p256())?;
        let keks = self.ks.wrapped_keks()?.len() as u64;
        tracing::info!(%id, keks, "recovery root enrolled");
        Ok(Enrolled {
            id,
            recovery: *recovery,
            keks,
        })
    }

    /// Restore from the recovery secret onto the configured root (a fresh token, or a new soft
    /// root), on an agent started with a copy of the keystore, locked. In this order:
    /// 1. derive the recovery key; find the enrolled recovery root whose public key it is
    ///    (`NoRecoveryRoot`, `WrongRecoveryRoot` otherwise);
    /// 2. open the integrity KEK from the recovery root's wrap, derive the keystore MAC key
    ///    from it and check with it the integrity records, the recovery root's record, every
    ///    root record and the MAC'd root set; then open every KEK from its recovery wrap (each
    ///    wrap's row checked by the MAC, each unwrap checked by AES-KWP);
    /// 3. only then touch the token: create the new root with `pin` (`Root::init`); a root
    ///    object already there that no enrolled record opens (left by a restore a crash
    ///    interrupted before its commit) is reused after `unlock` with `pin`; one that is an
    ///    enrolled root is refused (`already_exists`);
    /// 4. wrap every KEK under the new root and write the root record, every wrap and the
    ///    root set in one transaction (`Keystore::add_root`).
    ///
    /// The agent is locked at the end (and on every error): `unlock` with `pin` then runs on
    /// the new root. Returns the new root's id, the number of KEKs wrapped and the enrolled
    /// roots other than the new one and the recovery roots (absent here: `root.remove` drops
    /// them).
    pub fn recovery_restore(
        &self,
        secret: &RecoverySecret,
        pin: &Pin,
    ) -> Result<Restored, AgentError> {
        const OP: &str = "recovery.restore";
        let key =
            RecoveryKey::derive(secret).map_err(AgentError::crypto("deriving the recovery key"))?;
        if self.root.is_unlocked() {
            let id = self.root_record(OP)?.id;
            return Err(AgentError::Roots(RootRefusal::RunningOnEnrolled {
                op: OP,
                id,
            }));
        }
        let _one = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.restore_locked(&key, pin);
        self.lock_quietly();
        result
    }

    fn restore_locked(&self, key: &RecoveryKey, pin: &Pin) -> Result<Restored, AgentError> {
        const OP: &str = "recovery.restore";
        let tampered = AgentError::KeystoreTampered;
        // 1. The recovery root (records read unchecked: the MAC key is not loaded yet).
        let roots = self.ks.roots()?;
        if roots.is_empty() {
            return Err(AgentError::NotInitialized);
        }
        let public = key.public_key();
        let sec1 = crate::root::ecdh::sec1(public.as_p256());
        let recovery_roots: Vec<&KeyRecord> = roots
            .iter()
            .filter(|r| {
                r.scheme == PUBLIC_ROOT_SCHEME
                    && r.locator.as_deref()
                        == Some(&format!("public:{}", PublicRootKind::Recovery.as_str())[..])
            })
            .collect();
        if recovery_roots.is_empty() {
            return Err(AgentError::Roots(RootRefusal::NoRecoveryRoot { op: OP }));
        }
        let recovery = recovery_roots
            .into_iter()
            .find(|r| r.public_key.as_deref() == Some(&sec1[..]))
            .cloned()
            .ok_or_else(|| {
                AgentError::Roots(RootRefusal::WrongRecoveryRoot {
                    op: OP,
                    did: public.to_did_key(),
                })
            })?;
        if let Some(p) = self.ks.rotations_pending()?.first() {
            return Err(AgentError::Roots(RootRefusal::RotationPending {
                op: OP,
                kek: p.kek,
            }));
        }
        let open = |w: &[u8]| -> Result<ExportedKek, RootError> {
            let k = crate::root::ecdh::unwrap(public.as_p256(), w, |eph| {
                crate::root::ecdh::software_ecdh(key.local_key().secret_key(), eph)
            })?;
            Ok(ExportedKek::new(&k))
        };

        // 2. The integrity KEK first: it gives the MAC key that checks everything else.
        let recs = self.ks.integrity_records()?;
        let root_ids: Vec<Uuid> = roots.iter().map(|r| r.id).collect();
        let ikek = match recs
            .iter()
            .filter(|r| r.parent.is_some_and(|p| root_ids.contains(&p)))
            .collect::<Vec<_>>()[..]
        {
            [k] => k.clone(),
            _ => return Err(tampered(Tampering::IntegrityKeks)),
        };
        let isecret = match recs
            .iter()
            .filter(|r| r.parent == Some(ikek.id))
            .collect::<Vec<_>>()[..]
        {
            [s] if recs.len() == 2 => s.clone(),
            _ => return Err(tampered(Tampering::IntegritySecrets)),
        };
        let does_not_unwrap = |id: Uuid| move |_| tampered(Tampering::DoesNotUnwrap { id });
        let iwrap = self.wrap_for(&ikek, &recovery)?;
        let opened = open(&iwrap).map_err(does_not_unwrap(ikek.id))?;
        let mut kbytes = zeroize::Zeroizing::new([0u8; 32]);
        kbytes.copy_from_slice(opened.expose());
        let ikek_mem = MemoryKek::new(&kbytes);
        drop(kbytes);
        let mac = self
            .derive_mac_key(&ikek_mem, self.wrapped(&isecret)?)
            .map_err(does_not_unwrap(isecret.id))?;
        drop(ikek_mem);
        self.ks.set_mac_key(Some(mac));
        // Checked reads from here on: a record or wrap changed outside the agent is refused.
        self.ks.get(&ikek.id)?;
        self.ks.get(&isecret.id)?;
        match self.ks.get(&recovery.id)? {
            Some(r) if r == recovery => {}
            _ => return Err(tampered(Tampering::RootRecord { id: recovery.id })),
        }
        let roots = self.ks.roots_checked()?;
        if self.wrap_for(&ikek, &recovery)? != iwrap {
            return Err(tampered(Tampering::DoesNotUnwrap { id: ikek.id }));
        }
        let keks = self.open_keks_for_root(&recovery.id, &|w| open(w))?;
        // 3. The token, only now.
        let (mut rec, reused) = self.restore_make_root(pin, &ikek, &roots)?;
        rec.label = Some(format!("restored: {}", self.root.describe()));
        let now = crate::keystore::now();
        let mut wraps = Vec::with_capacity(keks.len());
        for (k, exported) in keks {
            let w = self.with_recovery(|| Ok(self.root.import_kek(exported.expose())?))?;
            drop(exported);
            wraps.push(crate::roots::kek_wrap(k.id, rec.id, w, now));
        }
        crate::hierarchy::crash_point("restore-wrapped");
        // 4. One transaction: the record, every wrap, the root set.
        if !self.ks.add_root(&rec, &wraps)? {
            return Err(AgentError::Keystore(
                crate::keystore::KeystoreError::Corrupt {
                    id: rec.id.to_string(),
                    what: "the KEKs changed during the restore: try again".into(),
                },
            ));
        }
        // Recovery roots are never "present" and need nothing to receive KEKs: not listed.
        let absent_roots = roots
            .iter()
            .filter(|r| r.scheme != PUBLIC_ROOT_SCHEME)
            .map(|r| r.id)
            .collect();
        tracing::info!(id = %rec.id, reused, keks = wraps.len(), recovery = %recovery.id, "restored from the recovery root");
        Ok(Restored {
            root: rec.id,
            keks: wraps.len() as u64,
            absent_roots,
        })
    }

    /// Step 3 of restore: the new root on the configured token. A root object the token has
    /// already is reused unless it is an enrolled root (it opens that record's wrap of the
    /// integrity KEK).
    fn restore_make_root(
        &self,
        pin: &Pin,
        ikek: &KeyRecord,
        roots: &[KeyRecord],
    ) -> Result<(KeyRecord, bool), AgentError> {
        let made = match self.root.init(pin) {
            // A token the module has not seen yet (made after start-up): see `root_add`.
            Err(RootError::Unavailable { .. }) => {
                let _ = self.root.unlock(pin, &StoredRoot::default());
                let _ = self.root.lock();
                self.root.init(pin)
            }
            other => other,
        };
        match made {
            Ok(made) => {
                crate::hierarchy::crash_point("restore-root-created");
                let mut rec = KeyRecord::new(KeyKind::Root, made.scheme.as_str());
                rec.locator = Some(made.locator);
                rec.wrapped = made.check;
                Ok((rec, false))
            }
            Err(RootError::RootExists { .. }) => {
                self.root.unlock(pin, &StoredRoot::default())?;
                let scheme = self.root.scheme();
                for r in roots.iter().filter(|r| r.scheme == scheme.as_str()) {
                    let Ok(wrap) = self.wrap_for(ikek, r) else {
                        continue;
                    };
                    if self.root.open_kek(&wrap).is_ok() {
                        return Err(AgentError::AlreadyExists(Existing::Root { id: r.id }));
                    }
                }
                tracing::warn!("recovery.restore: reusing the root object an interrupted restore left on the token");
                Ok((KeyRecord::new(KeyKind::Root, scheme.as_str()), true))
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The trustee side on a memory root: hold, list, release, and the refusals.
    use super::*;
    use crate::config::UnlockPolicy;
    use crate::keystore::Keystore;
    use crate::root::memory::MemoryRoot;
    use keyward_identity::LocalKey;
    use keyward_proto::ErrorCode;
    use keyward_recovery::{combine, RequestKey, ShareSet};
    use std::sync::Arc;

    fn ready() -> (tempfile::TempDir, Hierarchy, Uuid) {
        let dir = tempfile::tempdir().unwrap();
        let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).unwrap());
        let h = Hierarchy::new(ks, Box::new(MemoryRoot::new()), UnlockPolicy::default());
        h.init(&Pin::new("pin-1234")).unwrap();
        let kek = h.kek_create(None).unwrap();
        (dir, h, kek)
    }

    fn trustee_key(h: &Hierarchy) -> (Uuid, PublicKey) {
        let id = h.keypair_create(None, None, false, None).unwrap();
        let rec = h.keypair_show(&id.to_string()).unwrap();
        (id, Hierarchy::public_of(&rec).unwrap())
    }

    fn all_held(h: &Hierarchy) -> Vec<KeyRecord> {
        let size = PageSize {
            limit: 100,
            bytes: usize::MAX,
            size: None,
        };
        h.recovery_held_page(None, &size).unwrap().records
    }

    #[test]
    fn recovery_hold_release_combine_round_trip() {
        let (_d, h, kek) = ready();
        let (kp, mine) = trustee_key(&h);
        let other = LocalKey::generate(&mut OsRng);
        let secret = RecoverySecret::generate(&mut OsRng);
        let set = ShareSet::split(&secret, &[mine, other.public_key()], 2, &mut OsRng).unwrap();

        let facts = h.recovery_hold(&set.shares()[0].to_cbor()).unwrap();
        assert_eq!(facts.keypair, kp);
        assert_eq!(facts.hint.index, 1);
        assert_eq!(facts.recovery, set.recovery_public_key());
        // Stored as a secret under the trustee keypair's KEK, listed apart from other secrets
        // (the node-derivation secret made by a node key is not a held share).
        h.node_derive("n1", None, None, None).unwrap();
        let held = all_held(&h);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].id, facts.id);
        assert_eq!(held[0].parent, Some(kek));
        assert_eq!(held[0].kind, KeyKind::Secret);
        // The share value is not in the clear anywhere in the record.
        let value = h.open_held(&held[0]).unwrap().to_bytes();
        let stmt = held[0].statement.as_deref().unwrap();
        assert!(!stmt.windows(value.len()).any(|w| w == &value[..]));

        // Released to the owner's request key, and (after a KEK rotation, which rewraps the
        // held share's key like any secret) released again: both combine.
        let req = RequestKey::generate(&mut OsRng);
        let (r1, _) = h
            .recovery_release(&facts.id.to_string(), &req.did_key())
            .unwrap();
        let r2 = set.shares()[1]
            .open(&other)
            .unwrap()
            .release(&other, &req.did_key(), &mut OsRng)
            .unwrap();
        let r1 = keyward_recovery::ReleasedShare::from_cbor(&r1).unwrap();
        let got = combine(&[r1, r2.clone()], &req).unwrap();
        assert_eq!(got.secret, secret);

        h.kek_rotate(&kek.to_string()).unwrap();
        let (again, _) = h
            .recovery_release(&facts.id.to_string(), &req.did_key())
            .unwrap();
        let again = keyward_recovery::ReleasedShare::from_cbor(&again).unwrap();
        assert_eq!(combine(&[r2, again], &req).unwrap().secret, secret);
    }

    #[test]
    fn recovery_refusals_are_typed() {
        let (_d, h, _) = ready();
        let (_, mine) = trustee_key(&h);
        let other = LocalKey::generate(&mut OsRng);
        let secret = RecoverySecret::generate(&mut OsRng);
        let set = ShareSet::split(&secret, &[mine, other.public_key()], 2, &mut OsRng).unwrap();
        // Someone else's share; garbage; too large.
        let e = h.recovery_hold(&set.shares()[1].to_cbor()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::WrongKey, "{e}");
        let e = h.recovery_hold(b"\x00\x01").unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgs, "{e}");
        let e = h.recovery_hold(&vec![0; MAX_SHARE_LEN + 1]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TooLarge, "{e}");
        // Tampered ciphertext: the seal fails.
        let mut t = set.shares()[0].to_cbor();
        let n = t.len() - 1;
        t[n] ^= 1;
        let e = h.recovery_hold(&t).unwrap_err();
        assert_eq!(e.code(), ErrorCode::VerifyFailed, "{e}");
        assert!(all_held(&h).is_empty());

        let facts = h.recovery_hold(&set.shares()[0].to_cbor()).unwrap();
        let id = facts.id.to_string();
        let req = RequestKey::generate(&mut OsRng);
        for (who, to, code) in [
            (id.as_str(), "did:key:zNope", ErrorCode::InvalidArgs),
            (
                id.as_str(),
                &set.recovery_public_key().to_did_key()[..],
                ErrorCode::InvalidArgs,
            ),
            ("not-an-id", &req.did_key()[..], ErrorCode::NotFound),
            (
                &Uuid::new_v4().to_string()[..],
                &req.did_key()[..],
                ErrorCode::NotFound,
            ),
        ] {
            let e = h.recovery_release(who, to).unwrap_err();
            assert_eq!(e.code(), code, "{who} {to}: {e}");
        }
        // Locked: refused; unlocked: works.
        h.lock().unwrap();
        let e = h.recovery_release(&id, &req.did_key()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Locked);
        h.unlock(&Pin::new("pin-1234")).unwrap();
        h.recovery_release(&id, &req.did_key()).unwrap();
    }

    #[test]
    fn recovery_one_share_is_held_once_and_keeps_its_keypair() {
        let (_d, h, _) = ready();
        let (kp, mine) = trustee_key(&h);
        let other = LocalKey::generate(&mut OsRng);
        let secret = RecoverySecret::generate(&mut OsRng);
        let set = ShareSet::split(&secret, &[mine, other.public_key()], 2, &mut OsRng).unwrap();
        let share = set.shares()[0].to_cbor();
        let first = h.recovery_hold(&share).unwrap();
        let e = h.recovery_hold(&share).unwrap_err();
        assert_eq!(e.code(), ErrorCode::AlreadyExists, "{e}");
        assert!(e.to_string().contains(&first.id.to_string()), "{e}");
        // A second split of the same secret among the same trustees is another share.
        let again = ShareSet::split(&secret, &[mine, other.public_key()], 2, &mut OsRng).unwrap();
        let second = h.recovery_hold(&again.shares()[0].to_cbor()).unwrap();
        assert_eq!(all_held(&h).len(), 2);
        // The trustee keypair cannot be deleted while shares need it.
        let e = h.keypair_delete(&kp.to_string()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::WrongKey, "{e}");
        assert!(e.to_string().contains("2 recovery share"), "{e}");
        // Deleting: only held shares, by id.
        let kek = h.kek_list().unwrap()[0].id.to_string();
        let e = h.recovery_delete(&kek).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
        h.recovery_delete(&first.id.to_string()).unwrap();
        h.recovery_delete(&second.id.to_string()).unwrap();
        assert!(all_held(&h).is_empty());
        let e = h.recovery_delete(&first.id.to_string()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
        h.keypair_delete(&kp.to_string()).unwrap();
    }

    /// Root A with a KEK, a DEK and a ciphertext, the recovery root enrolled, a KEK made after
    /// it; then A is lost and a hierarchy on a fresh memory root B (same keystore) is returned.
    struct Lost {
        _d: tempfile::TempDir,
        ks: Arc<Keystore>,
        b: Hierarchy,
        b_root: MemoryRoot,
        secret: RecoverySecret,
        recovery_id: Uuid,
        a_id: Uuid,
        dek: String,
        ct: String,
        keks: Vec<Uuid>,
    }

    fn lost() -> Lost {
        let dir = tempfile::tempdir().unwrap();
        let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).unwrap());
        let a = Hierarchy::new(
            ks.clone(),
            Box::new(MemoryRoot::new()),
            UnlockPolicy::default(),
        );
        let a_id = a.init(&Pin::new("pin-1234")).unwrap();
        let kek = a.kek_create(None).unwrap();
        let dek = a
            .dek_create(None, crate::keystore::Purpose::Personal, false, None)
            .unwrap()
            .to_string();
        let ct = a.encrypt(&dek, b"old data").unwrap();
        let secret = RecoverySecret::generate(&mut OsRng);
        let key = RecoveryKey::derive(&secret).unwrap();
        let e = a.recovery_enroll(&key.public_key()).unwrap();
        // The KEK and the integrity KEK.
        assert_eq!(e.keks, 2);
        // Enrolled once.
        let again = a.recovery_enroll(&key.public_key()).unwrap_err();
        assert_eq!(again.code(), ErrorCode::AlreadyExists, "{again}");
        let kek2 = a.kek_create(None).unwrap();
        // Every existing and new KEK, and the integrity KEK, has a wrap for the recovery root.
        let all = ks.wrapped_keks().unwrap();
        assert_eq!(all.len(), 3);
        for k in &all {
            assert!(ks.kek_wrap(&k.id, &e.id).unwrap().is_some(), "KEK {}", k.id);
        }
        let rec = ks.get(&e.id).unwrap().unwrap();
        assert_eq!(rec.scheme, PUBLIC_ROOT_SCHEME);
        // A second recovery root (new trustees before the old root is removed): restore picks
        // the one the words give, and lists neither as absent.
        let newer = RecoveryKey::derive(&RecoverySecret::generate(&mut OsRng)).unwrap();
        a.recovery_enroll(&newer.public_key()).unwrap();
        assert_eq!(ks.roots_checked().unwrap().len(), 3);
        a.lock().unwrap();
        drop(a);
        let b_root = MemoryRoot::new();
        let policy = UnlockPolicy {
            backoff_base_ms: 0,
            ..UnlockPolicy::default()
        };
        let b = Hierarchy::new(ks.clone(), Box::new(b_root.clone()), policy);
        Lost {
            _d: dir,
            ks,
            b,
            b_root,
            secret,
            recovery_id: e.id,
            a_id,
            dek,
            ct,
            keks: vec![kek, kek2],
        }
    }

    /// The fresh root B has no root key: the restore did not touch it.
    fn untouched(root: &MemoryRoot) {
        use crate::root::Root;
        assert!(matches!(
            root.unlock(&Pin::new("new-pin-5678"), &StoredRoot::default()),
            Err(RootError::RootMissing { .. })
        ));
    }

    #[test]
    fn recovery_restore_on_a_fresh_root_decrypts_old_data() {
        let t = lost();
        let roots_before = t.ks.roots().unwrap().len();
        let r =
            t.b.recovery_restore(&t.secret, &Pin::new("new-pin-5678"))
                .unwrap();
        assert_eq!(r.keks, 3);
        assert_eq!(r.absent_roots, vec![t.a_id]);
        assert_eq!(t.ks.roots().unwrap().len(), roots_before + 1);
        // Locked after the restore; unlocks on the new root with the new PIN.
        let e = t.b.decrypt(&t.ct, None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Locked, "{e}");
        let e = t.b.unlock(&Pin::new("pin-1234")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::PinIncorrect, "{e}");
        t.b.unlock(&Pin::new("new-pin-5678")).unwrap();
        assert_eq!(&t.b.decrypt(&t.ct, None).unwrap()[..], b"old data");
        for k in &t.keks {
            assert!(
                t.ks.kek_wrap(k, &r.root).unwrap().is_some()
                    || t.ks.get(k).unwrap().unwrap().parent == Some(r.root)
            );
        }
        // The absent root is dropped; new data still works, and the recovery root stays.
        t.b.root_remove(&t.a_id.to_string()).unwrap();
        let ct2 = t.b.encrypt(&t.dek, b"new data").unwrap();
        assert_eq!(&t.b.decrypt(&ct2, None).unwrap()[..], b"new data");
        assert!(t.ks.get(&t.recovery_id).unwrap().is_some());
        // Restoring again while unlocked on an enrolled root is refused.
        let e =
            t.b.recovery_restore(&t.secret, &Pin::new("new-pin-5678"))
                .unwrap_err();
        assert_eq!(e.code(), ErrorCode::AlreadyInitialized, "{e}");
    }

    #[test]
    fn recovery_restore_refusals_change_nothing_and_leave_the_token_untouched() {
        let t = lost();
        let pin = Pin::new("new-pin-5678");
        // Another recovery secret: wrong recovery root.
        let other = RecoverySecret::generate(&mut OsRng);
        let e = t.b.recovery_restore(&other, &pin).unwrap_err();
        assert_eq!(e.code(), ErrorCode::WrongKey, "{e}");
        assert!(e.to_string().contains("wrong recovery root"), "{e}");
        untouched(&t.b_root);
        // A tampered recovery wrap: refused by the MAC before the token is touched.
        let conn = rusqlite::Connection::open(t._d.path().join("ks.db")).unwrap();
        let kek = t.keks[0].to_string();
        let root = t.recovery_id.to_string();
        let orig: Vec<u8> = conn
            .query_row(
                "SELECT wrapped FROM kek_wraps WHERE kek = ?1 AND root = ?2",
                [&kek, &root],
                |r| r.get(0),
            )
            .unwrap();
        let mut bad = orig.clone();
        let n = bad.len() - 1;
        bad[n] ^= 1;
        let set = |v: &Vec<u8>| {
            conn.execute(
                "UPDATE kek_wraps SET wrapped = ?1 WHERE kek = ?2 AND root = ?3",
                rusqlite::params![v, &kek, &root],
            )
            .unwrap()
        };
        set(&bad);
        let e = t.b.recovery_restore(&t.secret, &pin).unwrap_err();
        assert_eq!(e.code(), ErrorCode::KeystoreTampered, "{e}");
        untouched(&t.b_root);
        set(&orig);
        assert_eq!(t.ks.roots().unwrap().len(), 3);
        // Nothing was written by the refusals; the restore then works.
        t.b.recovery_restore(&t.secret, &pin).unwrap();
        t.b.unlock(&pin).unwrap();
        assert_eq!(&t.b.decrypt(&t.ct, None).unwrap()[..], b"old data");
    }

    #[test]
    fn recovery_restore_without_a_recovery_root_is_refused() {
        let (_d, h, _) = ready();
        h.lock().unwrap();
        let secret = RecoverySecret::generate(&mut OsRng);
        let e = h
            .recovery_restore(&secret, &Pin::new("pin-1234"))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
        assert!(e.to_string().contains("no enrolled recovery root"), "{e}");
        h.unlock(&Pin::new("pin-1234")).unwrap();
        // Enrolling needs the agent unlocked.
        h.lock().unwrap();
        let key = RecoveryKey::derive(&secret).unwrap();
        let e = h.recovery_enroll(&key.public_key()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Locked, "{e}");
    }
}
