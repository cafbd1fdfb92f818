//! Several roots per KEK: enrolling a root (`root.add`), listing and removing the enrolled roots
//! (`root.list`, `root.remove`), the wraps of every KEK under every enrolled root, and the hooks
//! recovery builds on ([`Hierarchy::enroll_public_root`], [`Hierarchy::open_keks_for_root`]).
//!
//! The keystore side (root records, `kek_wraps`, the MAC'd root set) is `keystore_roots.rs`;
//! ARCHITECTURE.md "Several roots per KEK" is the design. A KEK is wrapped for another root only
//! here and in `kek.rotate`, through [`crate::root::Root::export_kek`] (the KEK's bytes in
//! mlocked, zeroizing memory for the one wrapping), never for a key operation. This module must
//! never write a root record or a wrap that is not MAC'd, never remove the root the agent runs
//! on or the last root, and never return or log KEK material.

use crate::error::{AgentError, Defect, Existing, Missing, RootRefusal, Tampering};
use crate::hierarchy::{lock, Hierarchy};
use crate::keystore::{Cursor, KekWrap, KeyKind, KeyRecord, ListFilter, Page, PageSize};
use crate::lifecycle::ROTATION;
use crate::root::{
    ExportedKek, KekTarget, PublicRoot, Root, RootError, Scheme, StoredRoot, Wrapped,
};
use keyward_proto::secret::Pin;
use uuid::Uuid;

/// The scheme of a root record that is only a P-256 public key (a recovery root): it receives
/// KEKs (`ecdh-p256` wraps) and never unlocks an agent.
pub const PUBLIC_ROOT_SCHEME: &str = "public-p256";

/// What a public-key-only root is for; its record's locator is `public:<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicRootKind {
    /// The recovery root: its private key exists only as words on paper (or trustees' shares).
    Recovery,
    /// A device enrolled by `device approve` (`devices.rs`): its device key, whose scalar is
    /// kept wrapped under the device's own configured root.
    Device,
}

impl PublicRootKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PublicRootKind::Recovery => "recovery",
            PublicRootKind::Device => "device",
        }
    }
}

/// What `root.add` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootAdded {
    pub id: Uuid,
    /// Whether `root.add` made the root object on its token (else it found one there).
    pub created: bool,
    /// KEKs (the integrity KEK included) wrapped under it.
    pub wrapped: usize,
}

/// A root that can receive a KEK without this agent running it, or the reason it cannot.
enum Target {
    Public(PublicRoot),
}

impl Hierarchy {
    /// `kek`'s wrap under the root `root`: the KEK row's own `wrapped` when that root is its
    /// parent, else its `kek_wraps` row.
    pub(crate) fn wrap_for(
        &self,
        kek: &KeyRecord,
        root: &KeyRecord,
    ) -> Result<Vec<u8>, AgentError> {
        if kek.parent == Some(root.id) {
            return Ok(self.wrapped(kek)?.to_vec());
        }
        match self.ks.kek_wrap(&kek.id, &root.id)? {
            Some(w) => Ok(w.wrapped),
            None if kek.kind == KeyKind::Integrity => {
                Err(AgentError::KeystoreTampered(Tampering::NoWrappedKey {
                    id: kek.id,
                }))
            }
            None => Err(AgentError::bad_record(
                kek.kind,
                kek.id,
                Defect::NoWrapForRoot { root: root.id },
            )),
        }
    }

    /// `kek`'s wrap under the root this agent runs on.
    pub(crate) fn own_wrap(&self, kek: &KeyRecord) -> Result<Vec<u8>, AgentError> {
        let own = lock(&self.own_root)
            .clone()
            .ok_or(AgentError::NotInitialized)?;
        self.wrap_for(kek, &own)
    }

    /// At unlock: the enrolled roots of the configured backend's scheme are tried in order
    /// (created, id); the first that `Root::unlock` accepts *and* that opens the integrity KEK
    /// is the agent's root. A wrong PIN on a token is not tried again on the next record (it
    /// would count against the token once per record); a soft root's wrong passphrase is, since
    /// each soft record has its own check. On failure the root is locked again.
    pub(crate) fn unlock_enrolled(&self, pin: &Pin) -> Result<KeyRecord, AgentError> {
        let scheme = self.root.scheme();
        let candidates: Vec<KeyRecord> = self
            .ks
            .roots()?
            .into_iter()
            .filter(|r| r.scheme == scheme.as_str())
            .collect();
        if candidates.is_empty() {
            return Err(AgentError::Roots(RootRefusal::NoneOfScheme {
                scheme: scheme.as_str(),
            }));
        }
        let n = candidates.len();
        let mut last = None;
        for (i, rec) in candidates.iter().enumerate() {
            let more = i + 1 < n;
            let stored = StoredRoot {
                locator: rec.locator.clone(),
                check: rec.wrapped.clone(),
            };
            match self.root.unlock(pin, &stored) {
                Ok(()) => {}
                Err(e @ RootError::PinIncorrect { .. }) if more && scheme == Scheme::Pbkdf2 => {
                    last = Some(e.into());
                    continue;
                }
                Err(e @ (RootError::RootMissing { .. } | RootError::DecryptFailed { .. }))
                    if more =>
                {
                    last = Some(e.into());
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            match self.open_integrity(rec) {
                Ok(()) => {
                    if n > 1 {
                        tracing::info!(root = %rec.id, "unlocked on enrolled root");
                    }
                    return Ok(rec.clone());
                }
                Err(e) => {
                    self.lock_quietly();
                    let not_this_root = matches!(
                        e,
                        AgentError::KeystoreTampered(
                            Tampering::DoesNotUnwrap { .. } | Tampering::NoWrappedKey { .. }
                        )
                    );
                    if !(more && not_this_root) {
                        tracing::error!(error = %e, "unlock refused");
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(AgentError::NotInitialized))
    }

    /// Every enrolled root but the agent's own (and those in `drop`), as targets a KEK can be
    /// wrapped to without them: public-key roots. A root that needs its secret is
    /// [`RootRefusal::Absent`], naming it.
    fn other_targets(
        &self,
        op: &'static str,
        own: &KeyRecord,
        drop: &[Uuid],
    ) -> Result<Vec<(KeyRecord, Target)>, AgentError> {
        let mut out = Vec::new();
        for r in self.ks.roots_checked()? {
            if r.id == own.id || drop.contains(&r.id) {
                continue;
            }
            let target = public_target(&r).ok_or_else(|| {
                AgentError::Roots(RootRefusal::Absent {
                    op,
                    id: r.id,
                    scheme: r.scheme.clone(),
                })
            })?;
            out.push((r, target));
        }
        Ok(out)
    }

    /// Wrap a KEK (given as its wrap under the agent's own root) under each of `targets`.
    fn wrap_to_targets(
        &self,
        kek: Uuid,
        own_wrap: &[u8],
        targets: &[(KeyRecord, Target)],
    ) -> Result<Vec<KekWrap>, AgentError> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let exported = self.with_recovery(|| Ok(self.root.export_kek(own_wrap)?))?;
        let created = crate::keystore::now();
        targets
            .iter()
            .map(|(r, t)| {
                let w = match t {
                    Target::Public(p) => KekTarget::Public(p).import_kek(exported.expose())?,
                };
                Ok(kek_wrap(kek, r.id, w, created))
            })
            .collect()
    }

    /// The new KEK `w` (just generated under the agent's root) wrapped under every other
    /// enrolled root, for `kek.create` and `kek.rotate`.
    pub(crate) fn wraps_for_new_kek(
        &self,
        op: &'static str,
        kek: Uuid,
        w: &Wrapped,
        drop: &[Uuid],
    ) -> Result<Vec<KekWrap>, AgentError> {
        let own = self.root_record(op)?;
        let targets = self.other_targets(op, &own, drop)?;
        self.wrap_to_targets(kek, &w.bytes, &targets)
    }

    /// `kek.create` with every enrolled root: the KEK row (under the agent's root) and its
    /// wraps under the others, in one transaction.
    pub(crate) fn insert_kek_everywhere(
        &self,
        rec: &KeyRecord,
        w: &Wrapped,
    ) -> Result<(), AgentError> {
        let _one = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
        let wraps = self.wraps_for_new_kek("kek.create", rec.id, w, &[])?;
        if !self.ks.insert_kek(rec, &wraps)? {
            return Err(AgentError::Keystore(
                crate::keystore::KeystoreError::Corrupt {
                    id: rec.id.to_string(),
                    what: "a root was enrolled while the KEK was made: try again".into(),
                },
            ));
        }
        Ok(())
    }

    /// Enroll `new` (built from a `[root]` section): create its root object when its token has
    /// none (else unlock it with `pin`), refuse a root that is enrolled already, wrap every KEK
    /// under it, record it. Pending KEK rotations are finished first, and no KEK is made or
    /// rotated meanwhile. `new` is locked again at the end.
    pub fn root_add(
        &self,
        new: &dyn Root,
        pin: &Pin,
        label: Option<String>,
    ) -> Result<RootAdded, AgentError> {
        const OP: &str = "root.add";
        self.root_record(OP)?;
        let _one = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
        self.finish_rotations_locked()?;
        // A soft root made from a passphrase an enrolled soft root already has is that root.
        if new.scheme() == Scheme::Pbkdf2 {
            for r in self.ks.roots_checked()? {
                if r.scheme != Scheme::Pbkdf2.as_str() {
                    continue;
                }
                let stored = StoredRoot {
                    locator: r.locator.clone(),
                    check: r.wrapped.clone(),
                };
                if new.unlock(pin, &stored).is_ok() {
                    let _ = new.lock();
                    return Err(AgentError::AlreadyExists(Existing::Root { id: r.id }));
                }
            }
        }
        let made = match new.init(pin) {
            // A token made after the module was loaded is found only when the module
            // initializes again, which an unlock of a root without sessions does; it then
            // finds no root object there, and `init` makes one. (Other roots on the module see
            // one `Stale` and log in again: `with_recovery`.)
            Err(RootError::Unavailable { .. }) => {
                let _ = new.unlock(pin, &StoredRoot::default());
                let _ = new.lock();
                new.init(pin)
            }
            other => other,
        };
        let (mut rec, created) = match made {
            Ok(made) => {
                let mut rec = KeyRecord::new(KeyKind::Root, made.scheme.as_str());
                rec.locator = Some(made.locator);
                rec.wrapped = made.check;
                (rec, true)
            }
            Err(RootError::RootExists { .. }) => {
                new.unlock(pin, &StoredRoot::default())?;
                (KeyRecord::new(KeyKind::Root, new.scheme().as_str()), false)
            }
            Err(e) => return Err(e.into()),
        };
        let result = self.enroll_running(new, &mut rec, created, label);
        // The agent's own root object, configured again: `new` shares the token's login (a
        // PKCS#11 logout would log the agent itself out), so it is left as it is.
        if matches!(&result, Err(AgentError::AlreadyExists(Existing::Root { id })) if Some(*id) == lock(&self.own_root).as_ref().map(|r| r.id))
        {
            lock(&self.keks).clear();
            return result;
        }
        if let Err(e) = new.lock() {
            tracing::warn!(error = %e, "root.add: locking the enrolled root failed");
        }
        result
    }

    fn enroll_running(
        &self,
        new: &dyn Root,
        rec: &mut KeyRecord,
        created: bool,
        label: Option<String>,
    ) -> Result<RootAdded, AgentError> {
        let keks = self.ks.wrapped_keks()?;
        // A root already enrolled opens its own wrap of the integrity KEK.
        if !created {
            if let Some(integrity) = keks.iter().find(|k| k.kind == KeyKind::Integrity) {
                for r in self.ks.roots_checked()? {
                    if r.scheme != rec.scheme {
                        continue;
                    }
                    let Ok(wrap) = self.wrap_for(integrity, &r) else {
                        continue;
                    };
                    if new.open_kek(&wrap).is_ok() {
                        return Err(AgentError::AlreadyExists(Existing::Root { id: r.id }));
                    }
                }
            }
        }
        rec.label = Some(label.unwrap_or_else(|| new.describe()));
        let now = crate::keystore::now();
        let mut wraps = Vec::with_capacity(keks.len());
        for kek in &keks {
            let own = self.own_wrap(kek)?;
            let exported = self.with_recovery(|| Ok(self.root.export_kek(&own)?))?;
            let w = new.import_kek(exported.expose())?;
            drop(exported);
            wraps.push(kek_wrap(kek.id, rec.id, w, now));
        }
        if !self.ks.add_root(rec, &wraps)? {
            return Err(AgentError::Keystore(
                crate::keystore::KeystoreError::Corrupt {
                    id: rec.id.to_string(),
                    what: "a KEK was made while the root was enrolled: try again".into(),
                },
            ));
        }
        tracing::info!(id = %rec.id, created, keks = wraps.len(), "root enrolled");
        Ok(RootAdded {
            id: rec.id,
            created,
            wrapped: wraps.len(),
        })
    }

    /// Enroll a root that is only a P-256 public key (the recovery root, kind
    /// [`PublicRootKind::Recovery`]): every existing KEK is wrapped to it now (`ecdh-p256`), and
    /// every later KEK (`kek.create`, `kek.rotate`) too. Its record: scheme
    /// [`PUBLIC_ROOT_SCHEME`], locator `public:<kind>`, the key (SEC1 uncompressed) as
    /// `public_key`. Returns its id. Needs the agent unlocked.
    pub fn enroll_public_root(
        &self,
        kind: PublicRootKind,
        label: Option<String>,
        public: &p256::PublicKey,
    ) -> Result<Uuid, AgentError> {
        const OP: &str = "root.add";
        self.root_record(OP)?;
        let _one = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
        self.finish_rotations_locked()?;
        let mut rec = KeyRecord::new(KeyKind::Root, PUBLIC_ROOT_SCHEME);
        rec.locator = Some(format!("public:{}", kind.as_str()));
        rec.public_key = Some(crate::root::ecdh::sec1(public));
        rec.label = Some(label.unwrap_or_else(|| kind.as_str().to_string()));
        let target = PublicRoot::new(*public);
        let now = crate::keystore::now();
        let mut wraps = Vec::new();
        for kek in self.ks.wrapped_keks()? {
            let own = self.own_wrap(&kek)?;
            let exported = self.with_recovery(|| Ok(self.root.export_kek(&own)?))?;
            let w = target.import_kek(exported.expose())?;
            wraps.push(kek_wrap(kek.id, rec.id, w, now));
        }
        if !self.ks.add_root(&rec, &wraps)? {
            return Err(AgentError::Keystore(
                crate::keystore::KeystoreError::Corrupt {
                    id: rec.id.to_string(),
                    what: "a KEK was made while the root was enrolled: try again".into(),
                },
            ));
        }
        tracing::info!(id = %rec.id, kind = kind.as_str(), "public root enrolled");
        Ok(rec.id)
    }

    /// For restore (recovery): every KEK (and the integrity KEK) opened through the root
    /// `root_id`'s wraps with `open` (which turns one wrap under that root into the KEK's bytes,
    /// e.g. an `ecdh::unwrap` with the recovery scalar). Works while locked (the records are
    /// read unchecked then: the caller checks with the integrity KEK it gets back, whose record
    /// comes first). The KEKs are in mlocked, zeroizing memory; drop them as soon as they are
    /// wrapped under the new root.
    pub fn open_keks_for_root(
        &self,
        root_id: &Uuid,
        open: &dyn Fn(&[u8]) -> Result<ExportedKek, RootError>,
    ) -> Result<Vec<(KeyRecord, ExportedKek)>, AgentError> {
        let root = self
            .ks
            .get(root_id)?
            .filter(|r| r.kind == KeyKind::Root)
            .ok_or(AgentError::NotFound(Missing::Key {
                kind: KeyKind::Root,
                id: *root_id,
            }))?;
        let mut keks = self.ks.wrapped_keks()?;
        keks.sort_by_key(|k| k.kind != KeyKind::Integrity);
        keks.into_iter()
            .map(|k| {
                let wrap = self.wrap_for(&k, &root)?;
                let kek = open(&wrap)?;
                Ok((k, kek))
            })
            .collect()
    }

    /// The enrolled roots, one page (`root.list`), and the id of the agent's own.
    pub fn root_page(
        &self,
        after: Option<&Cursor>,
        size: &PageSize,
    ) -> Result<(Page, Option<Uuid>), AgentError> {
        let own = self.root_record("root.list")?;
        self.ks.roots_checked()?;
        Ok((
            self.ks
                .page(&ListFilter::Kind(KeyKind::Root), after, size)?,
            Some(own.id),
        ))
    }

    /// Remove an enrolled root: its record and every wrap under it. Refused for the agent's own
    /// root and the last one; KEKs whose parent it was move to another root's wrap.
    pub fn root_remove(&self, id: &str) -> Result<Uuid, AgentError> {
        const OP: &str = "root.remove";
        let own = self.root_record(OP)?;
        let rec = self.record(id, KeyKind::Root)?;
        let _one = ROTATION.lock().unwrap_or_else(|p| p.into_inner());
        self.finish_rotations_locked()?;
        self.remove_root_locked(OP, &own, &rec)?;
        Ok(rec.id)
    }

    fn remove_root_locked(
        &self,
        op: &'static str,
        own: &KeyRecord,
        rec: &KeyRecord,
    ) -> Result<(), AgentError> {
        if rec.id == own.id {
            return Err(AgentError::Roots(RootRefusal::OwnRoot { op, id: rec.id }));
        }
        let roots = self.ks.roots_checked()?;
        if roots.len() <= 1 {
            return Err(AgentError::Roots(RootRefusal::LastRoot { op, id: rec.id }));
        }
        self.ks.remove_root(&rec.id, &own.id)?;
        // KEKs that moved to the agent's root keep the same wrap bytes; drop the cache anyway.
        lock(&self.keks).clear();
        tracing::info!(id = %rec.id, "root removed");
        Ok(())
    }

    /// `--drop-root` of `kek.rotate`: check each id (an enrolled root, not the agent's own, no
    /// repeats), then remove them. Called with the rotation lock held.
    pub(crate) fn drop_roots_locked(
        &self,
        op: &'static str,
        own: &KeyRecord,
        ids: &[String],
    ) -> Result<Vec<Uuid>, AgentError> {
        let mut recs: Vec<KeyRecord> = Vec::new();
        for id in ids {
            let r = self.record(id, KeyKind::Root)?;
            if r.id == own.id {
                return Err(AgentError::Roots(RootRefusal::BadDrop {
                    op,
                    id: r.id,
                    problem: "the root this agent runs on",
                }));
            }
            if recs.iter().any(|x| x.id == r.id) {
                return Err(AgentError::Roots(RootRefusal::BadDrop {
                    op,
                    id: r.id,
                    problem: "named twice",
                }));
            }
            recs.push(r);
        }
        Ok(recs.into_iter().map(|r| r.id).collect())
    }

    /// Remove roots already checked by [`Hierarchy::drop_roots_locked`].
    pub(crate) fn remove_dropped_locked(
        &self,
        op: &'static str,
        own: &KeyRecord,
        ids: &[Uuid],
    ) -> Result<(), AgentError> {
        for id in ids {
            let rec = self.record(&id.to_string(), KeyKind::Root)?;
            self.remove_root_locked(op, own, &rec)?;
        }
        Ok(())
    }
}

/// A root record that can receive KEKs by its public key alone: card and EC token roots (their
/// locator carries the key) and public-key roots.
fn public_target(r: &KeyRecord) -> Option<Target> {
    if r.scheme == PUBLIC_ROOT_SCHEME {
        let key = p256::PublicKey::from_sec1_bytes(r.public_key.as_deref()?).ok()?;
        return Some(Target::Public(PublicRoot::new(key)));
    }
    let scheme = Scheme::parse(&r.scheme).ok()?;
    PublicRoot::from_record(scheme, r.locator.as_deref()?)
        .ok()
        .map(Target::Public)
}

pub(crate) fn kek_wrap(kek: Uuid, root: Uuid, w: Wrapped, created: u64) -> KekWrap {
    KekWrap {
        kek,
        root,
        scheme: w.scheme.as_str().to_string(),
        wrapped: w.bytes,
        created,
    }
}

#[cfg(test)]
#[path = "roots_tests.rs"]
mod tests;
