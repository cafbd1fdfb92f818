//! The key hierarchy on top of a root: init, unlock with an attempt limit, and the KEK and DEK
//! life cycle.
//!
//! This is where policy lives: which key may be used for what, who may be exported, how many
//! wrong PINs are tolerated and how long the agent waits after them. It keeps a cache of opened
//! KEKs (inside the token for a PKCS#11 root) and rebuilds it when the root reports stale handles.
//! It must never log or return key material except an exportable DEK on `dek.export`.

use crate::config::UnlockPolicy;
use crate::error::AgentError;
use crate::keystore::{KeyKind, KeyRecord, KeyState, Keystore, Purpose};
use crate::root::{Kek, Root, RootError, StoredRoot};
use keyward_envelope::{Artefacts, EncryptedData, EncryptionStrategy, Serialized};
use keyward_proto::secret::Pin;
use rand_core::{OsRng, RngCore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The Cryppo `ad` of agent ciphertexts names the DEK: `keyward:dek:<uuid>`.
pub const AD_PREFIX: &str = "keyward:dek:";

const META_FAILURES: &str = "pin_failures";
const META_LAST_FAILURE: &str = "pin_last_failure_ms";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The hierarchy of one agent.
pub struct Hierarchy {
    pub(crate) ks: Arc<Keystore>,
    pub(crate) root: Box<dyn Root>,
    policy: UnlockPolicy,
    keks: Mutex<HashMap<Uuid, Arc<dyn Kek>>>,
    /// The root record, once it exists: it never changes after `init`, so key operations need
    /// not read it from the keystore each time.
    root_rec: std::sync::OnceLock<KeyRecord>,
    /// Serialises init/unlock so the attempt counter cannot be raced.
    pin_gate: Mutex<()>,
}

impl Hierarchy {
    pub fn new(ks: Arc<Keystore>, root: Box<dyn Root>, policy: UnlockPolicy) -> Self {
        Hierarchy {
            ks,
            root,
            policy,
            keks: Mutex::new(HashMap::new()),
            root_rec: std::sync::OnceLock::new(),
            pin_gate: Mutex::new(()),
        }
    }

    pub fn root_kind(&self) -> keyward_proto::ops::RootKind {
        self.root.kind()
    }

    pub fn describe(&self) -> String {
        self.root.describe()
    }

    pub fn is_initialized(&self) -> Result<bool, AgentError> {
        Ok(self.stored_root()?.is_some())
    }

    pub fn is_locked(&self) -> bool {
        !self.root.is_unlocked()
    }

    // ---- PIN attempts -------------------------------------------------------------------------

    fn failures(&self) -> Result<(u32, u64), AgentError> {
        let n = self
            .ks
            .meta(META_FAILURES)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let last = self
            .ks
            .meta(META_LAST_FAILURE)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((n, last))
    }

    /// The wait owed after `failures` wrong PINs in a row.
    fn backoff_ms(&self, failures: u32) -> u64 {
        if failures < self.policy.free_attempts {
            return 0;
        }
        let doublings = (failures - self.policy.free_attempts).min(32);
        self.policy
            .backoff_base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.policy.backoff_max_ms)
    }

    /// Run a PIN-checking root call under the attempt policy.
    fn with_pin_policy<T>(
        &self,
        call: impl FnOnce() -> Result<T, RootError>,
    ) -> Result<T, AgentError> {
        let _gate = lock(&self.pin_gate);
        let (failures, last) = self.failures()?;
        if failures >= self.policy.max_attempts {
            return Err(AgentError::PinLocked);
        }
        let wait = self.backoff_ms(failures);
        let elapsed = now_ms().saturating_sub(last);
        if elapsed < wait {
            return Err(AgentError::PinBackoff {
                retry_after_ms: wait - elapsed,
            });
        }
        match call() {
            Ok(v) => {
                if failures > 0 {
                    self.ks.set_meta(META_FAILURES, "0")?;
                }
                Ok(v)
            }
            Err(RootError::PinIncorrect { card_retries, .. }) => {
                let n = failures + 1;
                self.ks.set_meta(META_FAILURES, &n.to_string())?;
                self.ks.set_meta(META_LAST_FAILURE, &now_ms().to_string())?;
                tracing::warn!(failures = n, "wrong PIN");
                if card_retries == Some(0) {
                    // The card itself has now blocked its PIN (unblocking needs the PUK).
                    return Err(RootError::PinLocked { op: "unlock" }.into());
                }
                if n >= self.policy.max_attempts {
                    return Err(AgentError::PinLocked);
                }
                let wait = self.backoff_ms(n);
                let agent_left = self.policy.max_attempts - n;
                Err(AgentError::PinIncorrect {
                    // The fewer of the card's own retries and the agent's remaining attempts.
                    attempts_left: card_retries.map_or(agent_left, |c| c.min(agent_left)),
                    retry_after_ms: (wait > 0).then_some(wait),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Forget the attempt counter (administrator action, `keywardd reset-pin-attempts`).
    pub fn reset_pin_attempts(&self) -> Result<(), AgentError> {
        self.ks.set_meta(META_FAILURES, "0")?;
        Ok(())
    }

    // ---- root ---------------------------------------------------------------------------------

    /// Create the root and record it. Refuses if the keystore or the token has one already.
    pub fn init(&self, pin: &Pin) -> Result<Uuid, AgentError> {
        if self.stored_root()?.is_some() {
            return Err(AgentError::AlreadyInitialized);
        }
        let made = self.with_pin_policy(|| self.root.init(pin))?;
        let mut rec = KeyRecord::new(KeyKind::Root, made.scheme.as_str());
        rec.label = Some("root".into());
        rec.locator = Some(made.locator);
        rec.wrapped = made.check;
        self.ks.insert(&rec)?;
        tracing::info!(id = %rec.id, "root created");
        Ok(rec.id)
    }

    pub fn unlock(&self, pin: &Pin) -> Result<(), AgentError> {
        let root = self.stored_root()?.ok_or(AgentError::NotInitialized)?;
        let stored = StoredRoot {
            locator: root.locator,
            check: root.wrapped,
        };
        lock(&self.keks).clear();
        self.with_pin_policy(|| self.root.unlock(pin, &stored))?;
        tracing::info!("unlocked");
        Ok(())
    }

    pub fn lock(&self) -> Result<(), AgentError> {
        lock(&self.keks).clear();
        self.root.lock()?;
        tracing::info!("locked");
        Ok(())
    }

    /// The root record from the keystore, read once it exists.
    fn stored_root(&self) -> Result<Option<KeyRecord>, AgentError> {
        if let Some(r) = self.root_rec.get() {
            return Ok(Some(r.clone()));
        }
        let found = self.ks.root()?;
        if let Some(r) = &found {
            let _ = self.root_rec.set(r.clone());
        }
        Ok(found)
    }

    pub(crate) fn root_record(&self, op: &'static str) -> Result<KeyRecord, AgentError> {
        let root = self.stored_root()?.ok_or(AgentError::NotInitialized)?;
        if !self.root.is_unlocked() {
            return Err(AgentError::Locked { op });
        }
        Ok(root)
    }

    /// Run `f`; if the root reports stale handles, rebuild (re-login, empty KEK cache) and run it
    /// once more.
    pub(crate) fn with_recovery<T>(
        &self,
        mut f: impl FnMut() -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        match f() {
            Err(AgentError::Root(RootError::Stale { .. })) => {
                lock(&self.keks).clear();
                self.root.recover()?;
                f()
            }
            other => other,
        }
    }

    // ---- records ------------------------------------------------------------------------------

    pub(crate) fn record(&self, id: &str, kind: KeyKind) -> Result<KeyRecord, AgentError> {
        let not_found = || AgentError::NotFound {
            kind: kind.as_str(),
            id: id.to_string(),
        };
        let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
        match self.ks.get(&uuid)? {
            Some(r) if r.kind == kind => Ok(r),
            _ => Err(not_found()),
        }
    }

    pub(crate) fn require_active(r: &KeyRecord) -> Result<(), AgentError> {
        match r.state {
            KeyState::Active => Ok(()),
            s => Err(AgentError::KeyInactive {
                kind: r.kind.as_str(),
                id: r.id.to_string(),
                state: s.as_str(),
            }),
        }
    }

    pub(crate) fn kek_handle(&self, kek: &KeyRecord) -> Result<Arc<dyn Kek>, AgentError> {
        if let Some(k) = lock(&self.keks).get(&kek.id) {
            return Ok(k.clone());
        }
        let wrapped = kek
            .wrapped
            .as_deref()
            .ok_or_else(|| AgentError::Internal(format!("KEK {} has no wrapped key", kek.id)))?;
        let opened: Arc<dyn Kek> = Arc::from(self.root.open_kek(wrapped)?);
        lock(&self.keks).insert(kek.id, opened.clone());
        Ok(opened)
    }

    /// The KEK a DEK, keypair or secret is wrapped under.
    pub(crate) fn parent_kek(&self, key: &KeyRecord) -> Result<KeyRecord, AgentError> {
        let parent = key.parent.ok_or_else(|| {
            AgentError::Internal(format!("{} {} has no parent", key.kind.as_str(), key.id))
        })?;
        self.record(&parent.to_string(), KeyKind::Kek)
    }

    pub(crate) fn wrapped<'r>(&self, r: &'r KeyRecord) -> Result<&'r [u8], AgentError> {
        r.wrapped.as_deref().ok_or_else(|| {
            AgentError::Internal(format!("{} {} has no wrapped key", r.kind.as_str(), r.id))
        })
    }

    // ---- KEKs ---------------------------------------------------------------------------------

    pub fn kek_create(&self, label: Option<String>) -> Result<Uuid, AgentError> {
        let root = self.root_record("kek.create")?;
        let w = self.with_recovery(|| Ok(self.root.generate_kek()?))?;
        let mut rec = KeyRecord::new(KeyKind::Kek, w.scheme.as_str());
        rec.parent = Some(root.id);
        rec.label = label;
        rec.wrapped = Some(w.bytes);
        self.ks.insert(&rec)?;
        tracing::info!(id = %rec.id, "KEK created");
        Ok(rec.id)
    }

    pub fn kek_list(&self) -> Result<Vec<KeyRecord>, AgentError> {
        Ok(self.ks.list(KeyKind::Kek, None)?)
    }

    /// The named KEK, or the only active one.
    pub(crate) fn choose_kek(&self, id: Option<&str>) -> Result<KeyRecord, AgentError> {
        if let Some(id) = id {
            let k = self.record(id, KeyKind::Kek)?;
            Self::require_active(&k)?;
            return Ok(k);
        }
        let mut active: Vec<_> = self
            .ks
            .list(KeyKind::Kek, None)?
            .into_iter()
            .filter(|k| k.state == KeyState::Active)
            .collect();
        match active.len() {
            1 => Ok(active.remove(0)),
            0 => Err(AgentError::NotFound {
                kind: "kek",
                id: "(none exists: create one with `keyward kek create`)".into(),
            }),
            n => Err(AgentError::Ambiguous(format!(
                "{n} active KEKs: name one with --kek"
            ))),
        }
    }

    // ---- DEKs ---------------------------------------------------------------------------------

    /// A new DEK under `kek` (or the only active KEK). `exportable` is fixed for its life.
    pub fn dek_create(
        &self,
        kek: Option<&str>,
        purpose: Purpose,
        exportable: bool,
        label: Option<String>,
    ) -> Result<Uuid, AgentError> {
        self.root_record("dek.create")?;
        let kek = self.choose_kek(kek)?;
        let w = self.with_recovery(|| Ok(self.kek_handle(&kek)?.generate_dek()?))?;
        let mut rec = KeyRecord::new(KeyKind::Dek, w.scheme.as_str());
        rec.parent = Some(kek.id);
        rec.label = label;
        rec.purpose = Some(purpose);
        rec.exportable = exportable;
        rec.wrapped = Some(w.bytes);
        self.ks.insert(&rec)?;
        tracing::info!(id = %rec.id, kek = %kek.id, "DEK created");
        Ok(rec.id)
    }

    pub fn dek_list(&self, kek: Option<&str>) -> Result<Vec<KeyRecord>, AgentError> {
        let parent = match kek {
            Some(id) => Some(self.record(id, KeyKind::Kek)?.id),
            None => None,
        };
        Ok(self.ks.list(KeyKind::Dek, parent.as_ref())?)
    }

    pub fn dek_export(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        self.root_record("dek.export")?;
        let dek = self.record(id, KeyKind::Dek)?;
        if !dek.exportable {
            return Err(AgentError::NotExportable { id: id.to_string() });
        }
        Self::require_active(&dek)?;
        let kek = self.parent_kek(&dek)?;
        let wrapped = self.wrapped(&dek)?;
        self.with_recovery(|| Ok(self.kek_handle(&kek)?.export_dek(wrapped)?))
    }

    /// Encrypt under a DEK: a Cryppo `Aes256Gcm` string whose `ad` names the DEK.
    pub fn encrypt(&self, dek_id: &str, plaintext: &[u8]) -> Result<String, AgentError> {
        if plaintext.len() > keyward_proto::MAX_PLAINTEXT {
            return Err(AgentError::TooLarge(format!(
                "encrypt: {} bytes is over the {}-byte limit of one request; encrypt larger data in chunks or client-side with an exportable DEK",
                plaintext.len(),
                keyward_proto::MAX_PLAINTEXT
            )));
        }
        self.root_record("encrypt")?;
        let dek = self.record(dek_id, KeyKind::Dek)?;
        Self::require_active(&dek)?;
        let kek = self.parent_kek(&dek)?;
        let wrapped = self.wrapped(&dek)?;
        let ad = format!("{AD_PREFIX}{}", dek.id);
        let mut iv = [0u8; 12];
        OsRng.fill_bytes(&mut iv);
        let mut sealed = self.with_recovery(|| {
            Ok(self
                .kek_handle(&kek)?
                .seal(wrapped, &iv, ad.as_bytes(), plaintext)?)
        })?;
        if sealed.len() < 16 {
            return Err(AgentError::Internal(
                "GCM output shorter than its tag".into(),
            ));
        }
        let tag: [u8; 16] = sealed[sealed.len() - 16..]
            .try_into()
            .map_err(|_| AgentError::Internal("GCM tag".into()))?;
        sealed.truncate(sealed.len() - 16);
        let artefacts = Artefacts::aes256gcm(&iv, &tag, &ad)
            .map_err(|e| AgentError::Internal(format!("serializing artefacts: {e}")))?;
        let data = EncryptedData::new(EncryptionStrategy::Aes256Gcm, sealed, artefacts, None)
            .map_err(|e| AgentError::Internal(format!("serializing ciphertext: {e}")))?;
        Ok(data.to_string())
    }

    /// Decrypt a Cryppo `Aes256Gcm` string. The DEK comes from its `ad` unless `dek` names one
    /// (for Cryppo strings made elsewhere with an exported DEK).
    pub fn decrypt(
        &self,
        ciphertext: &str,
        dek: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        self.root_record("decrypt")?;
        let parsed = Serialized::parse(ciphertext.trim())
            .map_err(|e| AgentError::DecryptFailed(format!("not a Cryppo string: {e}")))?;
        let Serialized::Encrypted(data) = parsed else {
            return Err(AgentError::DecryptFailed(
                "not Cryppo encrypted data".into(),
            ));
        };
        let gcm = data
            .gcm()
            .map_err(|e| AgentError::DecryptFailed(format!("not Aes256Gcm data: {e}")))?;
        let named = gcm.ad.strip_prefix(AD_PREFIX);
        let dek_id = match (named, dek) {
            (Some(n), Some(d)) if !n.eq_ignore_ascii_case(d) => {
                return Err(AgentError::DecryptFailed(format!(
                    "the ciphertext is for DEK {n}, not {d}"
                )))
            }
            (_, Some(d)) => d.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => {
                return Err(AgentError::DecryptFailed(
                    "the ciphertext names no Keyward DEK: give one with --dek".into(),
                ))
            }
        };
        let dek = self.record(&dek_id, KeyKind::Dek)?;
        // A retired DEK still decrypts what it encrypted; a revoked one does nothing.
        if dek.state == KeyState::Revoked {
            return Err(AgentError::KeyInactive {
                kind: "dek",
                id: dek.id.to_string(),
                state: dek.state.as_str(),
            });
        }
        let kek = self.parent_kek(&dek)?;
        let wrapped = self.wrapped(&dek)?;
        let mut ct_tag = Vec::with_capacity(gcm.ciphertext.len() + 16);
        ct_tag.extend_from_slice(gcm.ciphertext);
        ct_tag.extend_from_slice(gcm.tag);
        self.with_recovery(|| {
            Ok(self
                .kek_handle(&kek)?
                .open(wrapped, gcm.iv, gcm.ad.as_bytes(), &ct_tag)?)
        })
    }
}

#[cfg(test)]
#[path = "hierarchy_tests.rs"]
mod tests;
