//! The key hierarchy on top of a root: init, unlock with an attempt limit, and the KEK and DEK
//! life cycle.
//!
//! This is where policy lives: which key may be used for what, who may be exported, how many
//! wrong PINs are tolerated and how long the agent waits after them. It keeps a cache of opened
//! KEKs (inside the token for a PKCS#11 root) and rebuilds it when the root reports stale handles.
//! It must never log or return key material except an exportable DEK on `dek.export`.

use crate::config::UnlockPolicy;
use crate::error::{
    AgentError, Choice, CryptoError, DecryptFailure, Defect, Internal, Missing, Tampering,
};
use crate::keystore::{Cursor, ListFilter, Page, PageSize};
use crate::keystore::{Encoder, KeyKind, KeyRecord, KeyState, Keystore, Purpose};
use crate::root::{Kek, Root, RootError, StoredRoot};
use hmac::{Hmac, Mac};
use keyward_envelope::{Artefacts, EncryptedData, EncryptionStrategy, Serialized};
use keyward_proto::secret::Pin;
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The Cryppo `ad` of agent ciphertexts names the DEK: `keyward:dek:<uuid>`.
pub const AD_PREFIX: &str = "keyward:dek:";

/// The PIN attempt counter: wrong PINs in a row and the time of the last one. One per device
/// ([`counter_rows`]): the first device (and any agent that cannot tell its device before the
/// PIN) uses these names, every other device `<name>/<device id>`.
pub(crate) const META_FAILURES: &str = "pin_failures";
const META_LAST_FAILURE: &str = "pin_last_failure_ms";
/// HMAC of the two above under the keystore MAC key, when they were written while unlocked.
const META_FAILURES_MAC: &str = "pin_failures_mac";
/// Set before `init` makes a root, cleared when the keystore has recorded it (finding 6).
const META_INIT_PENDING: &str = "init_pending";

/// Test hook (debug builds only): `KEYWARD_TEST_CRASH_AFTER=<point>` aborts the process there,
/// as a `kill -9` would. Release builds compile it to nothing.
pub(crate) fn crash_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("KEYWARD_TEST_CRASH_AFTER").is_some_and(|v| v == point) {
        tracing::error!(point, "KEYWARD_TEST_CRASH_AFTER: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// Debug builds only: sleep the milliseconds the environment variable `var` names (tests that
/// must watch a long operation midway, e.g. `kek rotate --progress`). Nothing in release.
pub(crate) fn test_delay(var: &str) {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    #[cfg(not(debug_assertions))]
    let _ = var;
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Option<Zeroizing<[u8; 32]>> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    for p in parts {
        m.update(p);
    }
    Some(Zeroizing::new(m.finalize().into_bytes().into()))
}

/// A fixed 32-byte value that the agent wraps under the integrity KEK to bind the MAC key to
/// that KEK (see `derive_mac_key`). It must never be wrapped under any other KEK: share import
/// refuses it.
pub(crate) fn integrity_binding() -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(b"keyward/keystore/integrity-binding/v4").into()
}

fn counter_body(n: &str, last: &str) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/pin-counter/v4");
    e.text(Some(n)).text(Some(last));
    e.finish()
}

/// The PIN counter's MAC, for the integrity key's replacement (`root_rotate.rs`).
pub(crate) const PIN_COUNTER_MAC: crate::keystore::MetaMac = crate::keystore::MetaMac {
    values: Cow::Borrowed(&[
        Cow::Borrowed(META_FAILURES),
        Cow::Borrowed(META_LAST_FAILURE),
    ]),
    mac: Cow::Borrowed(META_FAILURES_MAC),
    body: |v| counter_body(v[0].as_deref().unwrap_or(""), v[1].as_deref().unwrap_or("")),
};

/// The PIN counter's rows (count, last failure, MAC) of the agent running as `device` (see
/// [`Hierarchy::pin_device`]): the plain names for `None` (no device row, the first device, or
/// a root that names no token before the PIN), else names keyed by the device id.
pub(crate) fn counter_rows(device: Option<Uuid>) -> [Cow<'static, str>; 3] {
    crate::devices::device_scoped(
        [META_FAILURES, META_LAST_FAILURE, META_FAILURES_MAC],
        device,
    )
}

/// For the integrity key's replacement: the PIN counter of the device `id` (its keyed rows; the
/// plain rows are [`PIN_COUNTER_MAC`]). A counter that does not exist is skipped.
pub(crate) fn rekey_device_counter(id: Uuid) -> crate::keystore::MetaMac {
    let [n, last, mac] = counter_rows(Some(id));
    crate::keystore::MetaMac {
        values: Cow::Owned(vec![n, last]),
        mac,
        body: PIN_COUNTER_MAC.body,
    }
}

/// What the agent keeps of the PIN it was unlocked with, to check a PIN sent while unlocked
/// without asking the token (which logs out on a wrong one): HMAC-SHA256 under a random salt.
struct PinTag {
    salt: [u8; 32],
    tag: Zeroizing<[u8; 32]>,
}

impl PinTag {
    fn new(pin: &Pin) -> Option<PinTag> {
        let mut salt = [0u8; 32];
        OsRng.fill_bytes(&mut salt);
        let tag = hmac(&salt, &[pin.expose().as_bytes()])?;
        Some(PinTag { salt, tag })
    }

    fn matches(&self, pin: &Pin) -> bool {
        use subtle::ConstantTimeEq;
        hmac(&self.salt, &[pin.expose().as_bytes()])
            .is_some_and(|t| bool::from(t.as_ref().ct_eq(self.tag.as_ref())))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An opened KEK and the KEK version it was opened at.
type OpenedKek = (u32, Arc<dyn Kek>);

/// The hierarchy of one agent.
pub struct Hierarchy {
    pub(crate) ks: Arc<Keystore>,
    pub(crate) root: Box<dyn Root>,
    /// The same root as `root`, for the device code (`devices.rs`): the device key in front
    /// of the configured root on a device enrolled by another.
    pub(crate) device: Arc<crate::root::device::DeviceRoot>,
    policy: UnlockPolicy,
    /// Opened KEKs by id, each with the KEK version it was opened at ([`Hierarchy::kek_handle`]).
    pub(crate) keks: Mutex<HashMap<Uuid, OpenedKek>>,
    /// Unwrapped software keypair secrets while unlocked (`key_cache.rs`).
    pub(crate) key_cache: crate::key_cache::KeyCache,
    /// The record of the root this agent runs on (one of the enrolled roots, `roots.rs`): the one
    /// `init` made, or the one `unlock` found its backend opens. Root records change (`root
    /// add`/`remove`), so this is the agent's own record only, chosen again at each unlock.
    pub(crate) own_root: Mutex<Option<KeyRecord>>,
    /// Who this agent is for its audit log, from its unlock to its lock
    /// ([`Hierarchy::audit_self`], `devices.rs`): one read of the device rows per unlock, not
    /// one per audit sync.
    pub(crate) audit_self: Mutex<Option<crate::devices::AuditSelf>>,
    /// Serialises init/unlock so the attempt counter cannot be raced.
    pin_gate: Mutex<()>,
    /// The highest (failures, last failure ms) this process has seen: the stored counter can be
    /// edited by others, so it is only ever raised from what is stored, and lowered only by a
    /// good PIN.
    seen: Mutex<(u32, u64)>,
    /// The PIN of the last good unlock, while unlocked.
    held_pin: Mutex<Option<PinTag>>,
    /// While unlocked: when, and when a request last used the root (`idle.rs`'s deadlines).
    activity: Mutex<Option<crate::idle::Activity>>,
    /// Wakes the deadline task on each unlock.
    unlocked: tokio::sync::Notify,
    /// The keystore's deferred start-up check (`integrity.rs`); none: checked at open.
    keystore_check: std::sync::OnceLock<Arc<crate::integrity::KeystoreCheck>>,
    /// The pinentry that confirms uses of keys whose limits ask for it (`limits.rs`).
    prompter: std::sync::OnceLock<Arc<crate::prompt::Prompter>>,
    /// Copies of the last list pages read (`kek.list`, `dek.list`), as the record copies.
    page_copies: Mutex<PageCopies>,
}

/// How many list pages [`PageCopies`] keeps, and the most records a kept page may hold (a
/// bigger page is read from the keystore every time: the copies stay small).
const PAGE_COPIES: usize = 8;
const PAGE_COPY_RECORDS: usize = 64;

/// The last list pages read, tagged with the keystore generation they were read at (as the
/// record copies: [`Hierarchy::any_record_copy`]). While the generation has not moved (no record
/// written by this agent or committed by another process, no lock or unlock), the same page of
/// the same list is the same records, already MAC-checked: a repeated `kek.list` does no SQLite
/// read and no record MAC check. A moved generation drops every copy.
#[derive(Default)]
struct PageCopies {
    generation: Option<crate::key_cache::Generation>,
    pages: Vec<PageCopy>,
}

/// One kept page and what it was read for: the filter, the cursor, and the page size (its
/// count and byte budget, and whether the byte budget was measured at all).
struct PageCopy {
    filter: ListFilter,
    after: Option<Cursor>,
    limit: usize,
    bytes: Option<usize>,
    records: Vec<KeyRecord>,
    next: Option<Cursor>,
}

impl Hierarchy {
    pub fn new(ks: Arc<Keystore>, root: Box<dyn Root>, policy: UnlockPolicy) -> Self {
        let device = Arc::new(crate::root::device::DeviceRoot::new(root));
        Hierarchy {
            ks,
            root: Box::new(device.clone()),
            device,
            policy,
            keks: Mutex::new(HashMap::new()),
            key_cache: crate::key_cache::KeyCache::new(),
            own_root: Mutex::new(None),
            audit_self: Mutex::new(None),
            pin_gate: Mutex::new(()),
            seen: Mutex::new((0, 0)),
            held_pin: Mutex::new(None),
            activity: Mutex::new(None),
            unlocked: tokio::sync::Notify::new(),
            keystore_check: std::sync::OnceLock::new(),
            prompter: std::sync::OnceLock::new(),
            page_copies: Mutex::new(PageCopies::default()),
        }
    }

    /// Hold key operations until this check passes (`keywardd`, once, at start).
    pub fn set_keystore_check(&self, check: Arc<crate::integrity::KeystoreCheck>) {
        let _ = self.keystore_check.set(check);
    }

    /// Ok when the keystore's start-up check passed (or none was deferred); else
    /// `keystore_checking` (after waiting up to `integrity::GATE_WAIT`) or the damage.
    pub fn keystore_ready(&self) -> Result<(), AgentError> {
        match self.keystore_check.get() {
            Some(c) => c.gate(crate::integrity::GATE_WAIT),
            None => Ok(()),
        }
    }

    /// True unless the keystore's start-up check is still running: then
    /// [`keystore_ready`](Self::keystore_ready) may wait, which must not happen on the socket's
    /// own task (`Service::runs_inline`).
    pub fn keystore_settled(&self) -> bool {
        self.keystore_check.get().is_none_or(|c| {
            !matches!(
                c.gate(std::time::Duration::ZERO),
                Err(AgentError::KeystoreChecking { .. })
            )
        })
    }

    /// Whether the root backend's operations take microseconds ([`Root::fast`]): the class
    /// that decides where a request runs (ARCHITECTURE.md "Where a request runs").
    pub fn fast_backend(&self) -> bool {
        self.root.fast()
    }

    /// The keystore check's state, for `hello`.
    pub fn keystore_check(&self) -> Option<keyward_proto::ops::KeystoreCheck> {
        self.keystore_check.get().map(|c| c.report())
    }

    /// The pinentry that confirms key uses whose limits ask for confirmation (set once, at
    /// start-up; without one such uses are refused).
    pub fn set_prompter(&self, p: Arc<crate::prompt::Prompter>) {
        let _ = self.prompter.set(p);
    }

    /// The confirmation pinentry, if configured.
    pub fn prompter(&self) -> Option<&crate::prompt::Prompter> {
        self.prompter.get().map(|p| &**p)
    }

    /// While unlocked: when it was unlocked and last used (boot-clock times, `idle.rs`). An
    /// unlocked root with no record (unlocked before this was kept) counts from now.
    pub fn activity(&self) -> Option<crate::idle::Activity> {
        let mut a = lock(&self.activity);
        if self.is_locked() {
            *a = None;
            return None;
        }
        let now = crate::idle::boot_now();
        Some(*a.get_or_insert(crate::idle::Activity {
            unlocked_at: now,
            last_used: now,
        }))
    }

    /// Resolves after the next unlock (at once if one happened since the last call).
    pub async fn unlocked(&self) {
        self.unlocked.notified().await
    }

    /// A request used the root: push the idle deadline back.
    fn touch(&self) {
        if let Some(a) = lock(&self.activity).as_mut() {
            a.last_used = crate::idle::boot_now();
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

    /// Wrong PINs left before the agent refuses PINs (as far as this process has seen; for
    /// prompts).
    pub fn pin_attempts_left(&self) -> u32 {
        self.policy.max_attempts.saturating_sub(lock(&self.seen).0)
    }

    // ---- PIN attempts ----------------------------------------------------------------------

    fn stored_counter(
        &self,
        rows: &[Cow<'static, str>; 3],
    ) -> Result<[Option<String>; 3], AgentError> {
        Ok([
            self.ks.meta(&rows[0])?,
            self.ks.meta(&rows[1])?,
            self.ks.meta(&rows[2])?,
        ])
    }

    /// The failure count and last failure time: the higher of what is stored and what this
    /// process has seen. A stored count that does not parse counts as the limit reached.
    fn failures(&self, rows: &[Cow<'static, str>; 3]) -> Result<(u32, u64), AgentError> {
        let [n, last, _] = self.stored_counter(rows)?;
        let n = match n {
            None => 0,
            Some(v) => v.trim().parse().unwrap_or_else(|_| {
                tracing::error!("the stored PIN counter is unreadable: counting it as the limit reached (keywardd reset-pin-attempts clears it)");
                self.policy.max_attempts
            }),
        };
        let last = last.and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        let mut seen = lock(&self.seen);
        *seen = (seen.0.max(n), seen.1.max(last));
        Ok(*seen)
    }

    /// Store the counter, MAC'd when the MAC key is loaded (unlocked), else without a MAC.
    fn store_failures(
        &self,
        rows: &[Cow<'static, str>; 3],
        n: u32,
        last: u64,
    ) -> Result<(), AgentError> {
        *lock(&self.seen) = (n, last);
        let (n, last) = (n.to_string(), last.to_string());
        let mac = self.ks.mac_tag(&counter_body(&n, &last)).map(hex::encode);
        self.ks.set_metas(&[
            (&rows[0], Some(&n)),
            (&rows[1], Some(&last)),
            (&rows[2], mac.as_deref()),
        ])?;
        Ok(())
    }

    /// After a good PIN, with the MAC key loaded: check the stored counter's MAC (when it has
    /// one), then reset it.
    fn settle_counter(&self, rows: &[Cow<'static, str>; 3]) -> Result<(), AgentError> {
        let [n, stored_last, mac] = self.stored_counter(rows)?;
        if let Some(mac) = &mac {
            let body = counter_body(
                n.as_deref().unwrap_or(""),
                stored_last.as_deref().unwrap_or(""),
            );
            let ok = hex::decode(mac.trim())
                .ok()
                .and_then(|t| self.ks.mac_verify(&body, &t));
            if ok != Some(true) {
                tracing::error!(
                    keystore = %self.ks.location(),
                    "keystore_tampered: the stored PIN counter was changed outside the agent (its MAC does not verify); unlock refused until `keywardd reset-pin-attempts`"
                );
                return Err(AgentError::KeystoreTampered(Tampering::PinCounter));
            }
        }
        let last = lock(&self.seen).1;
        // The stored count is already an authenticated 0 (checked just above; the time of the
        // last failure does not matter at 0): write nothing, so a read-only keystore unlocks.
        if n.as_deref().map(str::trim) == Some("0") && mac.is_some() {
            *lock(&self.seen) = (0, last);
            return Ok(());
        }
        self.store_failures(rows, 0, last)
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

    /// Run a PIN-checking call under the attempt policy. On success the stored counter is
    /// checked and reset; if that fails the agent is locked again.
    fn with_pin_policy<T>(
        &self,
        call: impl FnOnce() -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        let _gate = lock(&self.pin_gate);
        // This device's counter: another device's wrong PINs (its own token, its own PIN)
        // never count here.
        let rows = counter_rows(self.pin_device()?);
        let (failures, last) = self.failures(&rows)?;
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
                if let Err(e) = self.settle_counter(&rows) {
                    self.lock_quietly();
                    return Err(e);
                }
                Ok(v)
            }
            Err(AgentError::Root(RootError::PinIncorrect { card_retries, .. })) => {
                let n = failures + 1;
                self.store_failures(&rows, n, now_ms())?;
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
            Err(e) => Err(e),
        }
    }

    /// Forget the attempt counter (administrator action, `keywardd reset-pin-attempts`): this
    /// device's only ([`Hierarchy::pin_device`]). It is written without a MAC (no key is
    /// loaded), which the next good unlock accepts.
    pub fn reset_pin_attempts(&self) -> Result<(), AgentError> {
        *lock(&self.seen) = (0, 0);
        let rows = counter_rows(self.pin_device()?);
        self.ks
            .set_metas(&[(&rows[0], Some("0")), (&rows[2], None)])?;
        Ok(())
    }

    /// A PIN sent while already unlocked: checked against the one held (constant time), never
    /// by the token (a wrong PIN there would log it out under the agent).
    fn check_held_pin(&self, pin: &Pin) -> Result<(), AgentError> {
        match &*lock(&self.held_pin) {
            Some(t) if t.matches(pin) => Ok(()),
            Some(_) => Err(RootError::PinIncorrect {
                op: "unlock",
                card_retries: None,
            }
            .into()),
            None => Err(AgentError::Internal(Internal::NoHeldPin)),
        }
    }

    fn remember_pin(&self, pin: &Pin) -> Result<(), AgentError> {
        let tag =
            PinTag::new(pin).ok_or_else(|| AgentError::crypto("PIN tag")(CryptoError::Hmac))?;
        *lock(&self.held_pin) = Some(tag);
        // Init and unlock end here: the deadlines start now.
        let now = crate::idle::boot_now();
        *lock(&self.activity) = Some(crate::idle::Activity {
            unlocked_at: now,
            last_used: now,
        });
        self.unlocked.notify_one();
        Ok(())
    }

    // ---- integrity ----------------------------------------------------------------------------

    /// The keystore MAC key from the integrity KEK (opened by the root) and the secret wrapped
    /// under it: HMAC-SHA256(secret, label ‖ KEK-wrap of a fixed value). The second half is a
    /// function of the integrity KEK itself, which no one outside the token knows; so a file
    /// whose integrity records were replaced by another KEK's records and a secret whose value
    /// is known (an exported or imported DEK) does not give a MAC key anyone can compute.
    pub(crate) fn derive_mac_key(
        &self,
        kek: &dyn Kek,
        secret_wrapped: &[u8],
    ) -> Result<crate::keystore::MacKey, RootError> {
        let secret = kek.export_dek(secret_wrapped)?;
        let binding = kek.wrap_secret(&integrity_binding())?;
        let key = hmac(&secret, &[b"keyward/keystore/mac-key/v4", &binding.bytes])
            .ok_or_else(|| RootError::token("derive keystore MAC key", "HMAC"))?;
        Ok(crate::keystore::MacKey::new(key))
    }

    /// Make a new integrity KEK and secret under the root (unlocked) and load the MAC key.
    fn make_integrity(&self, root: &KeyRecord) -> Result<[KeyRecord; 2], AgentError> {
        let (records, _, key) = self.new_integrity(root)?;
        self.ks.set_mac_key(Some(key));
        Ok(records)
    }

    /// A new integrity KEK and secret under the root (unlocked), the KEK's wrap (for the other
    /// roots' wraps) and the MAC key they give, not loaded.
    pub(crate) fn new_integrity(
        &self,
        root: &KeyRecord,
    ) -> Result<
        (
            [KeyRecord; 2],
            crate::root::Wrapped,
            crate::keystore::MacKey,
        ),
        AgentError,
    > {
        let w = self.with_recovery(|| Ok(self.root.generate_kek()?))?;
        let opened = self.root.open_kek(&w.bytes)?;
        let s = opened.generate_dek()?;
        let key = self.derive_mac_key(opened.as_ref(), &s.bytes)?;
        let mut kek = KeyRecord::new(KeyKind::Integrity, w.scheme.as_str());
        kek.parent = Some(root.id);
        kek.label = Some("keystore integrity KEK".into());
        kek.wrapped = Some(w.bytes.clone());
        let mut secret = KeyRecord::new(KeyKind::Integrity, s.scheme.as_str());
        secret.parent = Some(kek.id);
        secret.label = Some("keystore integrity key".into());
        secret.wrapped = Some(s.bytes);
        Ok(([kek, secret], w, key))
    }

    /// At unlock (root unlocked): load the MAC key, then check the integrity records and the
    /// root record with it. A keystore just migrated to v4 (and only one with no integrity key
    /// yet) gets its key here, and every record it holds gets its first MAC: trust-on-upgrade.
    pub(crate) fn open_integrity(&self, root: &KeyRecord) -> Result<(), AgentError> {
        let tampered = AgentError::KeystoreTampered;
        let recs = self.ks.integrity_records()?;
        let upgrade = self.ks.meta(crate::keystore::META_UPGRADE)?.is_some();
        if recs.is_empty() {
            if !upgrade {
                return Err(tampered(Tampering::NoIntegrityKey));
            }
            let made = self.make_integrity(root)?;
            let adopted =
                self.ks
                    .install_integrity(&made, true, &[crate::keystore::META_UPGRADE])?;
            tracing::warn!(
                adopted,
                "keystore: trust-on-upgrade: the records written before schema v4 got their first MAC now; from here on any change made outside the agent is refused"
            );
        } else {
            let root_ids: Vec<Uuid> = self.ks.roots()?.iter().map(|r| r.id).collect();
            let keks: Vec<&KeyRecord> = recs
                .iter()
                .filter(|r| r.parent.is_some_and(|p| root_ids.contains(&p)))
                .collect();
            let kek = match keks[..] {
                [k] => k,
                _ => return Err(tampered(Tampering::IntegrityKeks)),
            };
            let secrets: Vec<&KeyRecord> =
                recs.iter().filter(|r| r.parent == Some(kek.id)).collect();
            let secret = match secrets[..] {
                [s] if recs.len() == 2 => s,
                _ => return Err(tampered(Tampering::IntegritySecrets)),
            };
            for r in [kek, secret] {
                if r.wrapped.is_none() {
                    return Err(tampered(Tampering::NoWrappedKey { id: r.id }));
                }
            }
            let unwrap_failed = |id: Uuid| {
                move |e: RootError| match e {
                    RootError::DecryptFailed { .. } | RootError::Token { .. } => {
                        tampered(Tampering::DoesNotUnwrap { id })
                    }
                    e => e.into(),
                }
            };
            // This root's wrap of the integrity KEK: the row's own when it is the parent, else
            // its `kek_wraps` row (read unchecked now, checked below once the key is loaded).
            let wrap = self.wrap_for(kek, root)?;
            let opened = self
                .with_recovery(|| Ok(self.root.open_kek(&wrap)?))
                .map_err(|e| match e {
                    AgentError::Root(r) => unwrap_failed(kek.id)(r),
                    e => e,
                })?;
            let key = self
                .derive_mac_key(opened.as_ref(), self.wrapped(secret)?)
                .map_err(unwrap_failed(secret.id))?;
            self.ks.set_mac_key(Some(key));
            // Checked reads, now that the key is loaded.
            self.ks.get(&kek.id)?;
            self.ks.get(&secret.id)?;
            if self.wrap_for(kek, root)? != wrap {
                return Err(tampered(Tampering::DoesNotUnwrap { id: kek.id }));
            }
            if upgrade {
                tracing::warn!("keystore: an `integrity_upgrade` mark in a keystore that has its integrity key is ignored (and removed)");
                self.ks.delete_meta(crate::keystore::META_UPGRADE)?;
            }
        }
        match self.ks.get(&root.id)? {
            Some(r) if r == *root => {}
            _ => return Err(tampered(Tampering::RootRecord { id: root.id })),
        }
        // Every root record, and the set of them, under the MAC (`keystore_roots.rs`).
        self.ks.roots_checked()?;
        Ok(())
    }

    /// Lock after a refused unlock, without reporting lock errors over the original one.
    pub(crate) fn lock_quietly(&self) {
        let _ = self.forget_keys();
    }

    /// Drop every key and secret the agent holds while unlocked (KEK handles, the audit key,
    /// record copies and cached keys, the keystore MAC key, a held PIN, the idle deadline),
    /// then lock the root: what [`Hierarchy::lock`] and [`Hierarchy::lock_quietly`] share.
    /// Everything is dropped even when the root's own lock fails.
    fn forget_keys(&self) -> Result<(), crate::root::RootError> {
        lock(&self.keks).clear();
        *lock(&self.audit_self) = None;
        self.key_cache.clear();
        self.ks.set_mac_key(None);
        *lock(&self.held_pin) = None;
        *lock(&self.activity) = None;
        self.root.lock()
    }

    // ---- root ---------------------------------------------------------------------------------

    /// Create the root and record it. Refuses if the keystore or the token has one already,
    /// except for a root that an interrupted `init` of this keystore left in the token (it is
    /// adopted: the keystore marks `init` pending before the root is made).
    pub fn init(&self, pin: &Pin) -> Result<Uuid, AgentError> {
        Ok(self.init_or_join(pin)?.0)
    }

    /// `init`, and on a shared keystore (not a local file) that holds the identity already:
    /// this device's root object and device key, filed as an enrollment request
    /// (`devices.rs`), not a second identity. The second value says which: `true` for a
    /// device that joined (the id is its request's).
    pub fn init_or_join(&self, pin: &Pin) -> Result<(Uuid, bool), AgentError> {
        if self.stored_root()?.is_some() {
            if !self.ks.is_local() && lock(&self.own_root).is_none() {
                // An agent that is a device here already (its root or its device key opens the
                // identity), restarted and locked, is not a new device.
                if self.unlocks_here(pin)? {
                    return Err(AgentError::AlreadyInitialized);
                }
                return Ok((self.device_join(pin)?, true));
            }
            return Err(AgentError::AlreadyInitialized);
        }
        let pending = self.ks.meta(META_INIT_PENDING)?.is_some();
        if !pending {
            self.ks.set_meta(META_INIT_PENDING, &now_ms().to_string())?;
        }
        let id = self.with_pin_policy(|| {
            let mut rec = match self.root.init(pin) {
                Ok(made) => {
                    crash_point("root-created");
                    let mut rec = KeyRecord::new(KeyKind::Root, made.scheme.as_str());
                    rec.locator = Some(made.locator);
                    rec.wrapped = made.check;
                    rec
                }
                Err(RootError::RootExists { .. }) if pending => {
                    // Unlock finds the root by the configuration and checks the PIN.
                    self.root.unlock(pin, &StoredRoot::default())?;
                    tracing::warn!(
                        "init: completing an interrupted init with the root it left in the token"
                    );
                    KeyRecord::new(KeyKind::Root, self.root.scheme().as_str())
                }
                Err(e) => return Err(e.into()),
            };
            rec.label = Some("root".into());
            let done = self.make_integrity(&rec).and_then(|[kek, secret]| {
                self.ks.install_integrity(
                    &[rec.clone(), kek, secret],
                    false,
                    &[META_INIT_PENDING, crate::keystore::META_UPGRADE],
                )?;
                self.remember_pin(pin)
            });
            if let Err(e) = done {
                self.lock_quietly();
                return Err(e);
            }
            *lock(&self.own_root) = Some(rec.clone());
            Ok(rec.id)
        })?;
        tracing::info!(%id, "root created");
        // This agent is the identity's first device (`devices.rs`).
        self.own_device("init")?;
        Ok((id, false))
    }

    /// Unlock with the PIN. While already unlocked, the PIN is checked against the one held (a
    /// wrong one counts, and changes nothing else).
    pub fn unlock(&self, pin: &Pin) -> Result<(), AgentError> {
        let root = self.stored_root()?;
        if root.is_none() && !self.root.is_unlocked() {
            return Err(AgentError::NotInitialized);
        }
        self.with_pin_policy(|| {
            if self.root.is_unlocked() && lock(&self.own_root).is_some() {
                self.check_held_pin(pin)?;
                self.touch();
                return Ok(());
            }
            if self.root.is_unlocked() {
                // A device waiting for its enrollment (`devices.rs`): unlock again, on its key.
                self.lock_quietly();
            }
            root.as_ref().ok_or(AgentError::NotInitialized)?;
            lock(&self.keks).clear();
            let chosen = match self.unlock_enrolled(pin) {
                Ok(c) => c,
                // Not an enrolled root here: maybe a device enrolled by another (`devices.rs`).
                Err(e) if not_enrolled_here(&e) || self.another_devices_passphrase(&e) => {
                    match self.unlock_device(pin)? {
                        Some(rec) => rec,
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            *lock(&self.own_root) = Some(chosen);
            if let Err(e) = self.remember_pin(pin) {
                tracing::error!(error = %e, "unlock refused");
                self.lock_quietly();
                return Err(e);
            }
            // A KEK rotation a crash interrupted is finished now (lifecycle.rs); until then
            // every key still opens under the KEK's old wrap, so a failure here only logs.
            if let Err(e) = self.finish_rotations() {
                tracing::error!(error = %e, "finishing an interrupted KEK rotation failed: the next unlock or `keyward kek rotate` tries again");
            }
            // KEKs a `root rotate --compromised` left to rotate under this (new) root.
            if let Err(e) = self.finish_compromised() {
                tracing::error!(error = %e, "rotating the KEKs of `root rotate --compromised` failed: the next unlock tries again");
            }
            // The DEKs a device revocation left to rotate (`devices.rs`).
            if let Err(e) = self.rotate_revoked_deks() {
                tracing::error!(error = %e, "rotating the DEKs of a device revocation failed: the next unlock tries again");
            }
            // The keystore integrity key the old root could open, replaced (`root_rotate.rs`).
            if let Err(e) = self.finish_rekey() {
                tracing::error!(error = %e, "replacing the keystore integrity key after `root rotate --compromised` failed: everything stays under the old key; the next unlock tries again");
            }
            // The first device of an identity with other devices runs on its device key
            // (`devices.rs`); a keystore from before that, or an interrupted switch, now.
            if let Err(e) = self.first_device_on_device_key("unlock", false) {
                tracing::error!(error = %e, "moving the first device onto its device key failed: the next unlock tries again");
            }
            tracing::info!("unlocked");
            Ok(())
        })
    }

    /// `init` on a shared keystore that holds the identity: whether this agent's configured root
    /// (or its device key) already opens it, checked by unlocking and locking again. `false`
    /// when it is not enrolled here (a new device joins); a wrong PIN is an error.
    fn unlocks_here(&self, pin: &Pin) -> Result<bool, AgentError> {
        match self.unlock(pin) {
            Ok(()) => {
                self.lock_quietly();
                Ok(true)
            }
            // A device whose request waits for approval: `device_join` finds that request.
            Err(
                AgentError::NotInitialized
                | AgentError::Devices(crate::error::DeviceRefusal::NotEnrolled { .. }),
            ) => Ok(false),
            Err(e) if not_enrolled_here(&e) => Ok(false),
            // A passphrase that opens no root and no device here: a new device on a passphrase
            // root of its own (it cannot be told from a mistyped passphrase: the refusal was
            // counted, and the request it files is enrolled only with the code).
            Err(e) if self.another_devices_passphrase(&e) => {
                tracing::warn!(
                    "init: this passphrase opens no root or device of the shared keystore: \
                     joining as a new device (if this machine is a device here already, the \
                     passphrase was mistyped)"
                );
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// On a shared keystore, a passphrase (soft) root's refusal: the passphrase may be another
    /// device's root's, not a wrong one (a passphrase root has nothing else to tell them apart:
    /// two devices may well have identical `[root]` sections), so the devices are tried next.
    fn another_devices_passphrase(&self, e: &AgentError) -> bool {
        !self.ks.is_local()
            && self.root.scheme() == crate::root::Scheme::Pbkdf2
            && matches!(
                e,
                AgentError::Root(RootError::PinIncorrect { .. }) | AgentError::PinIncorrect { .. }
            )
    }

    pub fn lock(&self) -> Result<(), AgentError> {
        self.forget_keys()?;
        tracing::info!("locked");
        Ok(())
    }

    /// The agent's own root record once chosen, else the first enrolled root (`None` before
    /// `init`).
    fn stored_root(&self) -> Result<Option<KeyRecord>, AgentError> {
        if let Some(r) = &*lock(&self.own_root) {
            return Ok(Some(r.clone()));
        }
        Ok(self.ks.root()?)
    }

    /// The record of the root this agent runs on, while unlocked.
    pub(crate) fn root_record(&self, op: &'static str) -> Result<KeyRecord, AgentError> {
        if !self.root.is_unlocked() {
            self.stored_root()?.ok_or(AgentError::NotInitialized)?;
            return Err(AgentError::Locked { op });
        }
        let root = lock(&self.own_root)
            .clone()
            .ok_or(AgentError::NotInitialized)?;
        self.touch();
        Ok(root)
    }

    /// Ok while unlocked (and the idle deadline pushed back), as [`Hierarchy::root_record`]
    /// without copying the root's record: for the per-signature paths.
    pub(crate) fn require_unlocked(&self, op: &'static str) -> Result<(), AgentError> {
        if !self.root.is_unlocked() {
            self.stored_root()?.ok_or(AgentError::NotInitialized)?;
            return Err(AgentError::Locked { op });
        }
        if lock(&self.own_root).is_none() {
            return Err(AgentError::NotInitialized);
        }
        self.touch();
        Ok(())
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
                self.key_cache.clear();
                self.root.recover()?;
                f()
            }
            other => other,
        }
    }

    // ---- records ------------------------------------------------------------------------------

    pub(crate) fn record(&self, id: &str, kind: KeyKind) -> Result<KeyRecord, AgentError> {
        let uuid = Uuid::parse_str(id).map_err(|_| {
            AgentError::NotFound(Missing::NotAnId {
                kind,
                given: id.to_string(),
            })
        })?;
        match self.ks.get(&uuid)? {
            Some(r) if r.kind == kind => Ok(r),
            _ => Err(AgentError::NotFound(Missing::Key { kind, id: uuid })),
        }
    }

    /// The record of `id` for a request that uses the key (`encrypt`, `decrypt`, `dek.export`,
    /// `gcm.*`, `datakey.*`, signatures): the in-memory copy kept in the key cache
    /// ([`crate::key_cache::KeyCache::record`]) while the keystore's generation has not moved, so
    /// a request on a known key does no SQLite read and no record MAC check. A copy was read (and
    /// MAC-checked, when the MAC key is loaded) at the generation it is tagged with, and every
    /// record write through the agent, a lock and an unlock move the generation, which drops every
    /// copy: the caller's checks (state, limits, `not_after`) always see the current record.
    pub(crate) fn record_for_use(
        &self,
        id: &str,
        kind: KeyKind,
    ) -> Result<Arc<KeyRecord>, AgentError> {
        let uuid = Uuid::parse_str(id).map_err(|_| {
            AgentError::NotFound(Missing::NotAnId {
                kind,
                given: id.to_string(),
            })
        })?;
        self.record_copy(&uuid, kind)
    }

    /// [`Hierarchy::record_for_use`] by id.
    pub(crate) fn record_copy(
        &self,
        id: &Uuid,
        kind: KeyKind,
    ) -> Result<Arc<KeyRecord>, AgentError> {
        match self.any_record_copy(id)? {
            Some(r) if r.kind == kind => Ok(r),
            _ => Err(AgentError::NotFound(Missing::Key { kind, id: *id })),
        }
    }

    /// The copy of record `id` of any kind (`None`: no such record), as
    /// [`Hierarchy::record_for_use`]; also what the policy check reads a key's label, kind and
    /// purpose from.
    pub(crate) fn any_record_copy(&self, id: &Uuid) -> Result<Option<Arc<KeyRecord>>, AgentError> {
        // The keystore's generation also moves when another process commits to it (SQLite's
        // `data_version`; a shared database's notifications), so a row edited outside the agent
        // is read, and its MAC checked, at the next request.
        let generation = self.ks.generation();
        if let Some(r) = self.key_cache.record(generation, id) {
            return Ok(Some(r));
        }
        // Read after taking the generation: a write in between moves it, and a copy kept under
        // the older generation is never used.
        let Some(rec) = self.ks.get(id)? else {
            return Ok(None);
        };
        let rec = Arc::new(rec);
        self.key_cache.keep_record(generation, rec.clone());
        Ok(Some(rec))
    }

    pub(crate) fn require_active(r: &KeyRecord) -> Result<(), AgentError> {
        match r.state {
            KeyState::Active => Ok(()),
            state => Err(AgentError::KeyInactive {
                kind: r.kind,
                id: r.id,
                state,
            }),
        }
    }

    pub(crate) fn kek_handle(&self, kek: &KeyRecord) -> Result<Arc<dyn Kek>, AgentError> {
        // Kept by id AND version: another agent sharing the keystore may rotate the KEK (the
        // same id, a new key under version + 1) without this agent's own rotation path running
        // (which forgets the handle); the record copy then shows the new version, and the stale
        // handle is replaced rather than used to unwrap keys it cannot open.
        if let Some((version, k)) = lock(&self.keks).get(&kek.id) {
            if *version == kek.version {
                return Ok(k.clone());
            }
        }
        let wrapped = self.own_wrap(kek)?;
        let opened: Arc<dyn Kek> = Arc::from(self.root.open_kek(&wrapped)?);
        lock(&self.keks).insert(kek.id, (kek.version, opened.clone()));
        Ok(opened)
    }

    /// The KEK a DEK, keypair or secret is wrapped under. A revoked KEK is `key_inactive`: no
    /// key under it is used (revoking a KEK also revokes its children, `lifecycle.rs`; this
    /// check holds whatever their own state says).
    pub(crate) fn parent_kek(&self, key: &KeyRecord) -> Result<KeyRecord, AgentError> {
        self.parent_kek_for_use(key).map(|k| KeyRecord::clone(&k))
    }

    /// The parent KEK of `key`, refused when revoked, from the record copies
    /// ([`Hierarchy::record_for_use`]; [`Hierarchy::parent_kek`] is the same as an owned record).
    pub(crate) fn parent_kek_for_use(&self, key: &KeyRecord) -> Result<Arc<KeyRecord>, AgentError> {
        let parent = key
            .parent
            .ok_or_else(|| AgentError::bad_record(key.kind, key.id, Defect::NoParent))?;
        let kek = self.record_copy(&parent, KeyKind::Kek)?;
        if kek.state == KeyState::Revoked {
            return Err(AgentError::KeyInactive {
                kind: kek.kind,
                id: kek.id,
                state: kek.state,
            });
        }
        Ok(kek)
    }

    /// Drop an opened KEK from the cache (after it was revoked).
    pub(crate) fn forget_kek(&self, id: &Uuid) {
        lock(&self.keks).remove(id);
    }

    pub(crate) fn wrapped<'r>(&self, r: &'r KeyRecord) -> Result<&'r [u8], AgentError> {
        r.wrapped
            .as_deref()
            .ok_or_else(|| AgentError::bad_record(r.kind, r.id, Defect::NoWrappedKey))
    }

    // ---- KEKs ---------------------------------------------------------------------------------

    pub fn kek_create(&self, label: Option<String>) -> Result<Uuid, AgentError> {
        let root = self.root_record("kek.create")?;
        let w = self.with_recovery(|| Ok(self.root.generate_kek()?))?;
        let mut rec = KeyRecord::new(KeyKind::Kek, w.scheme.as_str());
        rec.parent = Some(root.id);
        rec.label = label;
        rec.wrapped = Some(w.bytes.clone());
        // Wrapped under every other enrolled root too, in the same transaction (roots.rs).
        self.insert_kek_everywhere(&rec, &w)?;
        tracing::info!(id = %rec.id, "KEK created");
        Ok(rec.id)
    }

    pub fn kek_list(&self) -> Result<Vec<KeyRecord>, AgentError> {
        Ok(self.ks.list(KeyKind::Kek, None)?)
    }

    /// One page of the KEKs (`kek.list`). `size.size` must be a function of the record alone
    /// (the page may come from a copy: [`Hierarchy::copied_page`]).
    pub fn kek_page(&self, after: Option<&Cursor>, size: &PageSize) -> Result<Page, AgentError> {
        self.copied_page(&ListFilter::Kind(KeyKind::Kek), after, size)
    }

    /// One page of a list: the copy kept at the keystore's current generation when there is one
    /// ([`PageCopies`]; `size.size` is then not called), else read from the keystore (each
    /// record's MAC checked) and kept when it is small. The generation is taken before the read,
    /// so a write in between leaves the copy under an older generation, never used.
    fn copied_page(
        &self,
        filter: &ListFilter,
        after: Option<&Cursor>,
        size: &PageSize,
    ) -> Result<Page, AgentError> {
        let generation = self.ks.generation();
        let bytes = size.size.map(|_| size.bytes);
        {
            let mut c = lock(&self.page_copies);
            if c.generation != Some(generation) {
                c.pages.clear();
                c.generation = Some(generation);
            } else if let Some(p) = c.pages.iter().find(|p| {
                p.filter == *filter
                    && p.after.as_ref() == after
                    && p.limit == size.limit
                    && p.bytes == bytes
            }) {
                return Ok(Page {
                    records: p.records.clone(),
                    next: p.next,
                });
            }
        }
        let page = self.ks.page(filter, after, size)?;
        if page.records.len() <= PAGE_COPY_RECORDS {
            let mut c = lock(&self.page_copies);
            if c.generation == Some(generation) {
                if c.pages.len() >= PAGE_COPIES {
                    c.pages.remove(0);
                }
                c.pages.push(PageCopy {
                    filter: *filter,
                    after: after.copied(),
                    limit: size.limit,
                    bytes,
                    records: page.records.clone(),
                    next: page.next,
                });
            }
        }
        Ok(page)
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
            0 => Err(AgentError::NotFound(Missing::NoneToChoose {
                what: Choice::Kek,
            })),
            count => Err(AgentError::Ambiguous {
                what: Choice::Kek,
                count,
            }),
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
        let none = crate::limits::LimitsRequest::default();
        self.dek_create_limited(kek, purpose, exportable, label, &none)
    }

    /// `dek_create` with usage limits (`limits.rs`); `exportable` adds `export`.
    pub fn dek_create_limited(
        &self,
        kek: Option<&str>,
        purpose: Purpose,
        exportable: bool,
        label: Option<String>,
        limits: &crate::limits::LimitsRequest,
    ) -> Result<Uuid, AgentError> {
        self.root_record("dek.create")?;
        let (limits, exportable) = Self::limits_for_new(KeyKind::Dek, exportable, limits)?;
        let kek = self.choose_kek(kek)?;
        let w = self.with_recovery(|| Ok(self.kek_handle(&kek)?.generate_dek()?))?;
        let mut rec = KeyRecord::new(KeyKind::Dek, w.scheme.as_str());
        rec.parent = Some(kek.id);
        rec.label = label;
        rec.purpose = Some(purpose);
        rec.exportable = exportable;
        rec.usage = limits.map(|l| l.bits());
        rec.not_after = limits.and_then(|l| l.not_after);
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

    /// One page of the DEKs, or of one KEK's DEKs (`dek.list`).
    pub fn dek_page(
        &self,
        kek: Option<&str>,
        after: Option<&Cursor>,
        size: &PageSize,
    ) -> Result<Page, AgentError> {
        let filter = match kek {
            Some(id) => {
                ListFilter::Children(KeyKind::Dek, self.record_for_use(id, KeyKind::Kek)?.id)
            }
            None => ListFilter::Kind(KeyKind::Dek),
        };
        self.copied_page(&filter, after, size)
    }

    pub fn dek_export(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        self.require_unlocked("dek.export")?;
        let dek = self.record_for_use(id, KeyKind::Dek)?;
        if !dek.exportable {
            return Err(AgentError::NotExportable { id: dek.id });
        }
        Self::require_active(&dek)?;
        self.permit(&dek, crate::limits::Usage::Export)?;
        let kek = self.parent_kek_for_use(&dek)?;
        // The newest version: the one new ciphertexts use.
        let (_, wrapped) = self.dek_newest(&dek)?;
        self.with_recovery(|| Ok(self.kek_handle(&kek)?.export_dek(&wrapped)?))
    }

    /// An active DEK that `op` will seal under, and its KEK: the agent is unlocked, the DEK
    /// exists and is active. The one check for every operation that makes new ciphertext
    /// (`encrypt`, `gcm.seal`, `datakey.create`).
    pub(crate) fn active_dek(
        &self,
        op: &'static str,
        dek_id: &str,
    ) -> Result<(Arc<KeyRecord>, Arc<KeyRecord>), AgentError> {
        self.require_unlocked(op)?;
        let dek = self.record_for_use(dek_id, KeyKind::Dek)?;
        Self::require_active(&dek)?;
        let kek = self.parent_kek_for_use(&dek)?;
        self.permit(&dek, crate::limits::Usage::Encrypt)?;
        Ok((dek, kek))
    }

    /// Encrypt under a DEK: a Cryppo `Aes256Gcm` string whose `ad` names the DEK.
    pub fn encrypt(&self, dek_id: &str, plaintext: &[u8]) -> Result<String, AgentError> {
        if plaintext.len() > keyward_proto::MAX_PLAINTEXT {
            return Err(AgentError::TooLarge {
                op: "encrypt",
                len: plaintext.len(),
                max: keyward_proto::MAX_PLAINTEXT,
            });
        }
        let (dek, kek) = self.active_dek("encrypt", dek_id)?;
        let (version, wrapped) = self.dek_newest(&dek)?;
        let wrapped = &wrapped[..];
        let ad = crate::lifecycle::ad_for(&dek.id, version);
        let mut iv = [0u8; 12];
        OsRng.fill_bytes(&mut iv);
        let mut sealed = self.with_recovery(|| {
            Ok(self
                .kek_handle(&kek)?
                .seal(wrapped, &iv, ad.as_bytes(), plaintext)?)
        })?;
        let short = |len| AgentError::Internal(Internal::ShortGcmOutput { op: "encrypt", len });
        if sealed.len() < 16 {
            return Err(short(sealed.len()));
        }
        let tag: [u8; 16] = sealed[sealed.len() - 16..]
            .try_into()
            .map_err(|_| short(sealed.len()))?;
        sealed.truncate(sealed.len() - 16);
        let artefacts = Artefacts::aes256gcm(&iv, &tag, &ad)
            .map_err(AgentError::crypto("serializing artefacts"))?;
        let data = EncryptedData::new(EncryptionStrategy::Aes256Gcm, sealed, artefacts, None)
            .map_err(AgentError::crypto("serializing ciphertext"))?;
        Ok(data.to_string())
    }

    /// Decrypt a Cryppo `Aes256Gcm` string. The DEK and its version come from its `ad`
    /// (`lifecycle::parse_ad`) unless `dek` names one (for Cryppo strings made elsewhere with
    /// an exported DEK: then every version from the newest down is tried).
    pub fn decrypt(
        &self,
        ciphertext: &str,
        dek: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        self.require_unlocked("decrypt")?;
        Ok(self.decrypt_with_record(ciphertext, dek)?.0)
    }

    /// `decrypt`, also returning the DEK's record (for `rewrap`).
    pub(crate) fn decrypt_with_record(
        &self,
        ciphertext: &str,
        dek: Option<&str>,
    ) -> Result<(Zeroizing<Vec<u8>>, Arc<KeyRecord>), AgentError> {
        let parsed = Serialized::parse(ciphertext.trim())
            .map_err(|e| AgentError::DecryptFailed(DecryptFailure::NotCryppo(e)))?;
        let Serialized::Encrypted(data) = parsed else {
            return Err(AgentError::DecryptFailed(DecryptFailure::NotEncrypted));
        };
        let gcm = data
            .gcm()
            .map_err(|e| AgentError::DecryptFailed(DecryptFailure::NotAesGcm(e)))?;
        let named = crate::lifecycle::parse_ad(gcm.ad).map_err(AgentError::DecryptFailed)?;
        let (dek_id, version) = match (named, dek) {
            (Some((n, _)), Some(d)) if !n.eq_ignore_ascii_case(d) => {
                return Err(AgentError::DecryptFailed(DecryptFailure::DekMismatch {
                    named: n.to_string(),
                    given: d.to_string(),
                }))
            }
            (Some((n, v)), _) => (n.to_string(), Some(v)),
            (None, Some(d)) => (d.to_string(), None),
            (None, None) => return Err(AgentError::DecryptFailed(DecryptFailure::NoDekNamed)),
        };
        let dek = self.record_for_use(&dek_id, KeyKind::Dek)?;
        // A retired DEK still decrypts what it encrypted; a revoked one does nothing.
        if dek.state == KeyState::Revoked {
            return Err(AgentError::KeyInactive {
                kind: dek.kind,
                id: dek.id,
                state: dek.state,
            });
        }
        let kek = self.parent_kek_for_use(&dek)?;
        self.permit(&dek, crate::limits::Usage::Decrypt)?;
        let mut ct_tag = Vec::with_capacity(gcm.ciphertext.len() + 16);
        ct_tag.extend_from_slice(gcm.ciphertext);
        ct_tag.extend_from_slice(gcm.tag);
        let open = |wrapped: &[u8]| {
            self.with_recovery(|| {
                Ok(self
                    .kek_handle(&kek)?
                    .open(wrapped, gcm.iv, gcm.ad.as_bytes(), &ct_tag)?)
            })
        };
        if let Some(v) = version {
            let wrapped = self.dek_version_for_open(&dek, v)?;
            return Ok((open(&wrapped)?, dek));
        }
        // Not named: the newest version first; one below the minimum that opens it is refused.
        let mut last = None;
        for v in (1..=dek.version).rev() {
            let wrapped = self.dek_version_wrapped(&dek, v)?;
            match open(&wrapped) {
                Ok(pt) if v < Self::min_version(&dek) => {
                    drop(pt);
                    return Err(AgentError::VersionRetired {
                        id: dek.id,
                        version: v,
                        min: Self::min_version(&dek),
                    });
                }
                Ok(pt) => return Ok((pt, dek)),
                Err(e @ AgentError::Root(RootError::DecryptFailed { .. })) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(AgentError::DecryptFailed(DecryptFailure::Authentication)))
    }
}

/// The refusals of an unlock whose root is not one of this keystore's enrolled roots (another
/// device's keystore, a root object that is not there, a passphrase that opens nothing): the
/// agent may still be an enrolled device (`devices.rs`), or a new one.
fn not_enrolled_here(e: &AgentError) -> bool {
    matches!(
        e,
        AgentError::KeystoreTampered(
            Tampering::DoesNotUnwrap { .. } | Tampering::NoWrappedKey { .. }
        ) | AgentError::Roots(crate::error::RootRefusal::NoneOfScheme { .. })
            | AgentError::Root(RootError::RootMissing { .. } | RootError::DecryptFailed { .. })
    )
}

#[cfg(test)]
#[path = "hierarchy_tests.rs"]
mod tests;
