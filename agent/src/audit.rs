//! The audit log's writer: every operation through every door appended as one hash-chained
//! entry (format and verification: the `keyward-audit` crate), grouped into batches by one
//! writer thread, signed at checkpoints by the agent's audit key, its head recorded in the
//! keystore.
//!
//! - **One writer.** The live file is held under an exclusive `flock` for the agent's life; a
//!   second agent on the same log refuses to start ([`AuditError::InUse`]).
//! - **Group commit, acknowledged after `write`.** A request writes its own entry under the
//!   writer's lock, with one `write` (no `stat`: the path is checked at most once per
//!   `sync_ms`), and, when the log is required (`[audit] required`, the default), its answer
//!   waits for that `write` (its entry is then in the file: it survives a crash of the agent),
//!   not for the disk: the writer thread `fdatasync`s on a timer, `sync_ms` (default 100) after
//!   the first unsynced write, without holding the lock (a snapshot of what the sync covers is
//!   taken under it; entries written meanwhile stay dirty for the next sync), and so does the
//!   keystore write of the chain head that follows. A checkpoint, a flush (`audit.info`), a
//!   rotation and the shutdown are synced before they are acknowledged (`sync_ms = 0`: every
//!   batch). A power loss can therefore lose up to `sync_ms` of the newest entries. A failed write *or* `fdatasync`
//!   fails the log: a failed write answers its waiters `audit_unavailable`; a failed sync cuts
//!   the file back to what was last synced and counts the cut entries as lost. While the log
//!   fails, key operations are refused before they run; the next batch that is written and
//!   synced clears that (a refused request's own entry is the retry). The wait itself is a park of the calling
//!   thread that the writer ends with an unpark (a per-thread completion, no channel or
//!   allocation per request).
//! - **Checkpoints.** Every `checkpoint_every` entries, and at lock, unlock and shutdown, the
//!   writer appends a checkpoint signed (COSE_Sign1, ES256) by the audit key: a P-256 key
//!   derived from the keystore MAC key (so no private half is stored, and an agent on any
//!   enrolled root signs with the same key), its public half recorded in a keystore meta row
//!   under the keystore MAC. While the agent is locked there is no key: entries wait for the
//!   next checkpoint. The writer thread signs a snapshot of the chain's end with the writer's
//!   lock released ([`Log::checkpoint`]), so requests keep writing meanwhile; the checkpoint
//!   follows whatever they wrote, and those entries wait for the next one.
//! - **Head.** After each `fdatasync` while unlocked, the chain head (sequence, hash) of what is
//!   now on disk goes to a MAC'd keystore meta row, so a log cut short of it is caught by
//!   `keyward audit verify`, and the head never claims entries a power loss could still remove.
//! - **Rotation.** When the live file passes `max_bytes` it is renamed `PATH.N` (N one more than
//!   the highest there) and a new file continues the same chain.
//!
//! This module must never write data, plaintexts, PINs or keys into the log (entries hold the op
//! name, key id and label, the client's uid, pid and executable, the door and the result code
//! only), never let a request wait on the log when it is not required, never record a head
//! that is not on disk, and never sign a checkpoint over entries it did not write.

use crate::hierarchy::Hierarchy;
use crate::keystore::Encoder;
use keyward_audit::{Entry, CHECKPOINT_OP};
use keyward_identity::LocalKey;
use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Meta row: the chain head, `SEQ:HASH` (hex), MAC'd. One per device ([`head_rows`]): the
/// first device (and a keystore with no device row) uses these names, every other device
/// `audit_head/<device id>` and `audit_head_mac/<device id>`, so agents on different devices
/// sharing one keystore do not overwrite each other's head.
const META_HEAD: &str = "audit_head";
const META_HEAD_MAC: &str = "audit_head_mac";
/// Meta row: the public half (SEC1 compressed, hex), MAC'd, of the key that signs this chain's
/// checkpoints now, one per chain as the head ([`key_rows`]); the keys before it are in
/// `audit_key_previous` (MAC'd, oldest first). An agent running as an enrolled device signs
/// with its **device key** (`devices.rs`), which no other device holds, and whose public half
/// the verifier takes from the device row (signed back to the first device), never from this
/// row. An agent on no device's root (a backup root after `root add`, the new root after
/// `root rotate`) signs with the key derived from the keystore MAC key ([`derive_audit_key`]),
/// as every agent did before devices. When the signing key changes, the recorded one joins the
/// earlier keys, so a log that spans the change verifies (each checkpoint with the key of its
/// time, and only forward: `keyward_audit::Trust::previous`).
const META_KEY: &str = "audit_key";
const META_KEY_MAC: &str = "audit_key_mac";

/// The most entries one batch takes from the queue.
const MAX_BATCH: usize = 4096;
/// Longest op name, key id, label or executable kept in an entry.
const MAX_FIELD: usize = 256;

/// `[audit]`: the audit log.
#[derive(Debug, Clone, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Keep an audit log at all (default: yes; `enabled = false` turns it off).
    pub enabled: bool,
    /// The live log file (default: `audit.log` beside the keystore).
    pub path: Option<PathBuf>,
    /// Refuse key operations while the log cannot be written (default: yes).
    pub required: bool,
    /// A signed checkpoint every this many entries (default 1000).
    pub checkpoint_every: u64,
    /// Rotate the live file past this size (default 64 MiB).
    pub max_bytes: u64,
    /// `fdatasync` at most this many milliseconds after the first unsynced write (default 100:
    /// each sync, with the chain head's keystore write after it, costs ~1.5 ms of CPU on a VM,
    /// so at 10 ms it took a fifth of a busy agent's CPU; see README "Power loss");
    /// 0: sync every batch before acknowledging it.
    pub sync_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            path: None,
            required: true,
            checkpoint_every: 1000,
            max_bytes: 64 << 20,
            sync_ms: 100,
        }
    }
}

impl AuditConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.checkpoint_every == 0 || self.max_bytes < 4096 || self.sync_ms > 10_000 {
            return Err(
                "audit: need checkpoint_every >= 1, max_bytes >= 4096 and sync_ms <= 10000".into(),
            );
        }
        Ok(())
    }
}

/// Why the log could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("the audit log {path} is held by another agent (its lock is taken): one log has one writer; stop the other agent or give this one its own `[audit] path`")]
    InUse { path: PathBuf },
    #[error("opening the audit log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the audit writer thread")]
    Thread(#[source] std::io::Error),
}

/// What happened, as the request path hands it over (the writer adds the label, the sequence
/// number and the chain).
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub op: String,
    pub door: &'static str,
    pub key: Option<String>,
    pub label: Option<String>,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub exe: Option<String>,
    pub result: String,
    pub detail: Option<String>,
}

impl Record {
    /// A record of `op` by `peer` through `door`.
    pub fn of(op: &str, door: &'static str, peer: &crate::peer::Peer) -> Record {
        Record {
            op: clip(op),
            door,
            uid: peer.uid,
            pid: peer.pid,
            exe: peer.exe_text().map(clipped),
            ..Record::default()
        }
    }
}

fn clip(s: &str) -> String {
    // Short (as op names and paths are): one copy, not a string built char by char.
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    s.chars().take(MAX_FIELD).collect()
}

/// [`clip`] for an owned string: no copy when it is short enough already.
fn clipped(s: String) -> String {
    if s.len() <= MAX_FIELD {
        s
    } else {
        clip(&s)
    }
}

enum Msg {
    /// An entry (written by the request that made it, see [`Audit::append`]).
    Entry(Record),
    /// Written and synced (with a checkpoint, if the agent can sign now) before acknowledged.
    Checkpoint(&'static str, Ack),
    /// Acknowledged once everything queued before it was written and synced (or failed).
    Flush(Ack),
    Stop(Ack),
    /// A request wrote entries itself ([`Audit::append`] with `wait`) into a synced file: the
    /// thread's sync timer starts.
    Wake,
    /// A request's entry made an `every` checkpoint due: the thread signs it (outside the
    /// writer's lock), so no request waits for a signature.
    Due,
}

const PENDING: u8 = 0;
const DONE_OK: u8 = 1;
const DONE_FAILED: u8 = 2;

/// One thread's completion slot: the writer stores the outcome and unparks the thread.
struct Waiter {
    state: AtomicU8,
    thread: std::thread::Thread,
}

thread_local! {
    /// Reused by every wait of this thread (a thread waits for one entry at a time), so a
    /// waiting request costs no allocation and no channel.
    static WAITER: Arc<Waiter> = Arc::new(Waiter {
        state: AtomicU8::new(PENDING),
        thread: std::thread::current(),
    });
}

/// The writer's side of one waiting request. Dropped without [`Ack::done`] (the writer gone,
/// a message dropped with its channel) it reports a failure, so no waiter is left parked.
struct Ack(Option<Arc<Waiter>>);

impl Ack {
    fn done(mut self, ok: bool) {
        if let Some(w) = self.0.take() {
            w.state
                .store(if ok { DONE_OK } else { DONE_FAILED }, Ordering::Release);
            w.thread.unpark();
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.state.store(DONE_FAILED, Ordering::Release);
            w.thread.unpark();
        }
    }
}

/// Hand the writer a message carrying this thread's completion and park until it is signalled.
fn wait_for(send: impl FnOnce(Ack) -> bool) -> bool {
    WAITER.with(|w| {
        w.state.store(PENDING, Ordering::Relaxed);
        if !send(Ack(Some(w.clone()))) {
            return false;
        }
        loop {
            match w.state.load(Ordering::Acquire) {
                // A stray unpark (from an earlier wait's writer) only loops once more.
                PENDING => std::thread::park(),
                s => return s == DONE_OK,
            }
        }
    })
}

/// Debug-build test hooks: `KEYWARD_TEST_AUDIT_SYNC_DELAY_MS=<n>` delays each `fdatasync` by n
/// ms, `KEYWARD_TEST_AUDIT_SYNC_FAIL=1` makes each one fail (as an I/O error would). Release
/// builds never read them.
#[derive(Default)]
#[cfg_attr(not(debug_assertions), allow(dead_code))]
struct Hooks {
    sync_delay_ms: AtomicU64,
    fail_sync: AtomicBool,
}

impl Hooks {
    fn from_env() -> Hooks {
        let h = Hooks::default();
        #[cfg(debug_assertions)]
        {
            if let Some(n) = std::env::var("KEYWARD_TEST_AUDIT_SYNC_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                tracing::warn!(
                    ms = n,
                    "KEYWARD_TEST_AUDIT_SYNC_DELAY_MS: delaying each fdatasync"
                );
                h.sync_delay_ms.store(n, Ordering::Relaxed);
            }
            if std::env::var_os("KEYWARD_TEST_AUDIT_SYNC_FAIL").is_some_and(|v| v == "1") {
                tracing::warn!("KEYWARD_TEST_AUDIT_SYNC_FAIL: every fdatasync fails");
                h.fail_sync.store(true, Ordering::Relaxed);
            }
        }
        h
    }

    /// Before a sync: the delay, then whether it must fail.
    fn before_sync(&self) -> std::io::Result<()> {
        #[cfg(debug_assertions)]
        {
            let ms = self.sync_delay_ms.load(Ordering::Relaxed);
            if ms > 0 {
                std::thread::sleep(Duration::from_millis(ms));
            }
            if self.fail_sync.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("KEYWARD_TEST_AUDIT_SYNC_FAIL"));
            }
        }
        Ok(())
    }
}

/// What the writer did so far, for `keyward status`-style reports and the group-commit test.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Entries written (checkpoints included).
    pub entries: u64,
    /// Batches written (one `write` each).
    pub writes: u64,
    /// `fdatasync`s done.
    pub syncs: u64,
}

#[derive(Default)]
struct Counters {
    entries: AtomicU64,
    writes: AtomicU64,
    syncs: AtomicU64,
}

/// The agent's audit log: a handle to its writer thread.
pub struct Audit {
    tx: Mutex<Option<Sender<Msg>>>,
    /// The writer: the thread's, and taken directly by a request that waits for its entry
    /// (one lock and one `write`, no hand-off to the thread and back).
    writer: Arc<Log>,
    sync_ms: u64,
    failing: Arc<AtomicBool>,
    counters: Arc<Counters>,
    /// The writer's test hooks (unit tests set them here).
    #[cfg_attr(not(test), allow(dead_code))]
    hooks: Arc<Hooks>,
    required: bool,
    path: PathBuf,
    h: Arc<Hierarchy>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Audit {
    /// Open (or create) the log at `path`, take its lock, find where its chain ends, and start
    /// the writer thread. The first entry it writes is `agent.start`.
    pub fn open(
        cfg: &AuditConfig,
        path: &Path,
        h: Arc<Hierarchy>,
    ) -> Result<Arc<Audit>, AuditError> {
        // Another agent's log stops the start; a log that cannot be opened (a missing mount, a
        // directory in its place) is a failing log: key operations are refused while it is
        // required, and each batch tries again.
        let file = match open_locked(path) {
            Ok(f) => Some(f),
            Err(e @ AuditError::InUse { .. }) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "audit: the log cannot be opened; key operations are refused while it cannot (unless [audit] required = false)");
                None
            }
        };
        let file = file.map(Arc::new);
        let opened = file.is_some();
        let mut w = Writer {
            file,
            path: path.to_path_buf(),
            size: 0,
            seq: 0,
            prev: keyward_audit::GENESIS,
            since_checkpoint: 0,
            every: cfg.checkpoint_every,
            max_bytes: cfg.max_bytes,
            h: h.clone(),
            failing: Arc::new(AtomicBool::new(!opened)),
            failures: 0,
            cuts: 0,
            syncing: false,
            checked_at: None,
            counters: Arc::new(Counters::default()),
            hooks: Arc::new(Hooks::from_env()),
            lost: 0,
            sync_ms: cfg.sync_ms,
            dirty_since: None,
            unsynced: 0,
            reported_unsynced: 0,
            synced: Synced::default(),
            stopped: false,
            asked: false,
            #[cfg(test)]
            before_sign: None,
        };
        if opened {
            w.resume().map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let (tx, rx) = mpsc::channel();
        w.mark_synced();
        let failing = w.failing.clone();
        let counters = w.counters.clone();
        let hooks = w.hooks.clone();
        let writer = Arc::new(Log {
            w: Mutex::new(w),
            idle: Condvar::new(),
        });
        let theirs = writer.clone();
        let thread = std::thread::Builder::new()
            .name("keyward-audit".into())
            .spawn(move || run(&theirs, rx))
            .map_err(AuditError::Thread)?;
        let audit = Arc::new(Audit {
            tx: Mutex::new(Some(tx)),
            writer,
            sync_ms: cfg.sync_ms,
            failing,
            counters,
            hooks,
            required: cfg.required,
            path: path.to_path_buf(),
            h,
            thread: Mutex::new(Some(thread)),
        });
        audit.append(
            Record {
                op: "agent.start".into(),
                door: "agent",
                result: "ok".into(),
                uid: Some(nix::unistd::geteuid().as_raw()),
                pid: Some(std::process::id() as i32),
                ..Record::default()
            },
            false,
        );
        Ok(audit)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// The last write failed (and no later one succeeded).
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// How many `fdatasync`s the writer did so far.
    pub fn syncs(&self) -> u64 {
        self.counters.syncs.load(Ordering::Relaxed)
    }

    /// Entries, writes and syncs so far (entries per write: how well requests share batches).
    pub fn stats(&self) -> Stats {
        Stats {
            entries: self.counters.entries.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
        }
    }

    /// Whether key operations must be refused now: the log is required and failing.
    pub fn refuses(&self) -> bool {
        self.required && self.failing()
    }

    fn send(&self, m: Msg) -> bool {
        match lock(&self.tx).as_ref() {
            Some(tx) => tx.send(m).is_ok(),
            None => false,
        }
    }

    /// Append an entry now: the calling thread looks up the key's label (before the lock), takes
    /// the writer and writes the entry with one `write` (not its `fdatasync`, which the writer
    /// thread does within `sync_ms` without the lock, unless `sync_ms = 0`). With `wait` the
    /// answer is that write's outcome (`false`: it failed, or the log was stopped); without, the
    /// entry is written all the same (so the log keeps the order in which requests ended) and a
    /// failure only counts it lost. Writing on the caller's thread spares each audited request
    /// two thread wake-ups (to the writer and back); concurrent requests take turns on the
    /// writer's lock, which neither a timed sync (through its `fdatasync` or head write) nor a
    /// checkpoint's signature holds (a rotation and a moved log's switch do hold it).
    pub fn append(&self, mut r: Record, wait: bool) -> bool {
        if r.label.is_none() {
            if let Some(key) = r.key.as_deref() {
                r.label = self.label_of(key);
            }
        }
        let (ok, woke, due) = {
            let w = self.writer.lock();
            if w.stopped {
                return false;
            }
            let clean = w.dirty_since.is_none();
            let (mut w, _, ok) = self.writer.batch(w, vec![Msg::Entry(r)], false);
            // A due checkpoint is the thread's to sign: asked for once.
            let due = w.since_checkpoint >= w.every && !w.asked;
            w.asked |= due;
            (ok, clean && w.dirty_since.is_some(), due)
        };
        if due {
            self.send(Msg::Due);
        } else if woke {
            self.send(Msg::Wake);
        }
        ok || !wait
    }

    /// The label of the key `key` names, from the hierarchy's record copies
    /// (`KeyCache::last_record`: the copy the request just used, with no second generation
    /// check; else `Hierarchy::any_record_copy`), looked up before the writer's lock is taken.
    fn label_of(&self, key: &str) -> Option<String> {
        let id = uuid::Uuid::parse_str(key).ok()?;
        // The copy the request itself used, as it was checked: taking the keystore's generation
        // again cost a second SQLite read transaction per request (two `fcntl` locks).
        if let Some(rec) = self.h.key_cache.last_record(&id) {
            return rec.label.clone();
        }
        self.h.any_record_copy(&id).ok().flatten()?.label.clone()
    }

    /// Whether a waiting [`Audit::append`] returns after a `write` alone (no `fdatasync`):
    /// short enough for a request answered on the socket's task.
    pub fn acknowledges_before_sync(&self) -> bool {
        self.sync_ms > 0
    }

    /// Append a signed checkpoint now (if the agent is unlocked), and wait until it is synced.
    pub fn checkpoint(&self, reason: &'static str) -> bool {
        wait_for(|ack| self.send(Msg::Checkpoint(reason, ack)))
    }

    /// Wait until every entry queued so far is written and synced (`false`: that failed).
    pub fn flush(&self) -> bool {
        wait_for(|ack| self.send(Msg::Flush(ack)))
    }

    /// Write `agent.stop` and a last checkpoint, sync, then end the writer thread.
    pub fn shutdown(&self) {
        wait_for(|ack| self.send(Msg::Stop(ack)));
        lock(&self.tx).take();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    /// What `audit.info` answers: the path, and the audit key and head from the keystore, their
    /// MACs checked when the agent is unlocked. Everything queued before is written first, so a
    /// reader that asks this and then reads the file sees every earlier entry.
    pub fn info(&self) -> Result<keyward_proto::ops::AuditInfoResult, crate::error::AgentError> {
        self.flush();
        let ks = &self.h.ks;
        let me = self.h.audit_self()?;
        let chain = me.as_ref().and_then(crate::devices::AuditSelf::chain);
        let device = me.and_then(|m| m.device);
        let [key_row, key_mac_row, previous_row, previous_mac_row] = key_rows(chain);
        let key = ks.meta(&key_row)?;
        let key_mac = ks.meta(&key_mac_row)?;
        let (head_row, head_mac_row) = head_rows(chain);
        let head = ks.meta(&head_row)?;
        let head_mac = ks.meta(&head_mac_row)?;
        let recorded = key.as_deref().and_then(parse_key_row);
        // This device's key comes from its device row (MAC'd, and signed back to the first
        // device), never from a meta row; an agent on no device's root: the recorded key.
        let device_key = device.as_ref().and_then(|d| compressed(&d.public_key));
        let public = device_key.clone().or(recorded.clone());
        let parsed_head = head.as_deref().and_then(parse_head_row);
        // The keys before: each replacement of the integrity key (`root rotate --compromised`)
        // and each change of signing key ([`Hierarchy::record_audit_key`]).
        let previous = ks.meta(&previous_row)?;
        let previous_mac = ks.meta(&previous_mac_row)?;
        let mut previous_keys: Vec<Vec<u8>> = previous
            .as_deref()
            .map(|l| l.split(',').filter_map(parse_key_row).collect())
            .unwrap_or_default();
        let previous_ok = previous.as_deref().is_none_or(|l| {
            mac_ok(
                ks,
                &crate::root_rotate::previous_body(l),
                previous_mac.as_deref(),
            )
        });
        let key_ok = key
            .as_deref()
            .is_none_or(|k| mac_ok(ks, &key_body(k), key_mac.as_deref()));
        // The key recorded is not this device's yet (read while locked, before this unlock
        // recorded it): it signed the checkpoints before. A device's chain older than device
        // keys (a head, no key) inherits the derived key of the plain rows, as
        // `record_audit_key` will record.
        let mut inherited_ok = true;
        match (&device_key, &recorded) {
            (Some(d), Some(r)) if d != r => previous_keys.push(r.clone()),
            (Some(_), None) if chain.is_some() && head.is_some() => {
                if let Some(plain) = ks.meta(META_KEY)? {
                    inherited_ok = mac_ok(ks, &key_body(&plain), ks.meta(META_KEY_MAC)?.as_deref());
                    previous_keys.extend(parse_key_row(&plain));
                }
            }
            _ => {}
        }
        let checked = ks.has_mac_key()
            && previous_ok
            && key_ok
            && inherited_ok
            && public.is_some()
            && head
                .as_deref()
                .is_some_and(|h| mac_ok(ks, &head_body(h), head_mac.as_deref()));
        Ok(keyward_proto::ops::AuditInfoResult {
            path: Some(self.path.display().to_string()),
            required: self.required,
            failing: self.failing(),
            key_device: device_key.and(device.map(|d| d.id.to_string())),
            public_key: public.map(serde_bytes::ByteBuf::from),
            head_seq: parsed_head.map(|h| h.0),
            head_hash: parsed_head.map(|h| serde_bytes::ByteBuf::from(h.1.to_vec())),
            checked,
            previous_keys: previous_keys
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
        })
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        lock(&self.tx).take();
    }
}

/// Open the live file for appending and take its lock; the path must still name the locked
/// file (a rotation may have renamed it in between).
fn open_locked(path: &Path) -> Result<nix::fcntl::Flock<File>, AuditError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let open_err = |source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    };
    for _ in 0..3 {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(AuditError::InUse {
                    path: path.to_path_buf(),
                })
            }
            Err((_, e)) => return Err(open_err(std::io::Error::from(e))),
        };
        let here = std::fs::metadata(path).map_err(open_err)?;
        let held = locked.metadata().map_err(open_err)?;
        if (here.dev(), here.ino()) == (held.dev(), held.ino()) {
            return Ok(locked);
        }
    }
    Err(AuditError::InUse {
        path: path.to_path_buf(),
    })
}

fn head_body(row: &str) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/audit-head/v1");
    e.text(Some(row));
    e.finish()
}

fn key_body(row: &str) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/audit-key/v1");
    e.text(Some(row));
    e.finish()
}

/// The chain head's rows (value, MAC) of the agent running as `device` (see
/// [`Hierarchy::audit_device`]): the plain names for `None` (no device row, or the first
/// device), else names keyed by the device id.
fn head_rows(device: Option<uuid::Uuid>) -> (Cow<'static, str>, Cow<'static, str>) {
    match device {
        None => (Cow::Borrowed(META_HEAD), Cow::Borrowed(META_HEAD_MAC)),
        Some(id) => (
            Cow::Owned(format!("{META_HEAD}/{id}")),
            Cow::Owned(format!("{META_HEAD_MAC}/{id}")),
        ),
    }
}

/// For the integrity key's replacement: the head of the device `id` (its keyed rows; the
/// first device's plain rows are [`REKEY_HEAD`]). A row that does not exist is skipped.
pub(crate) fn rekey_device_head(id: uuid::Uuid) -> crate::keystore::MetaMac {
    let (head, mac) = head_rows(Some(id));
    crate::keystore::MetaMac {
        values: Cow::Owned(vec![head]),
        mac,
        body: REKEY_HEAD.body,
    }
}

/// A chain's audit key rows (current key, its MAC, the earlier keys, their MAC), named as
/// [`head_rows`]: the plain names (`audit_key`, `audit_key_previous`, ...) for `None`, else
/// keyed by the device id.
fn key_rows(device: Option<uuid::Uuid>) -> [Cow<'static, str>; 4] {
    use crate::root_rotate::{META_AUDIT_PREVIOUS, META_AUDIT_PREVIOUS_MAC};
    crate::devices::device_scoped(
        [
            META_KEY,
            META_KEY_MAC,
            META_AUDIT_PREVIOUS,
            META_AUDIT_PREVIOUS_MAC,
        ],
        device,
    )
}

/// For the integrity key's replacement: the audit key rows of the device `id` (its keyed rows,
/// re-MAC'd and kept: a device key does not change with the MAC key). Rows that do not exist
/// are skipped.
pub(crate) fn rekey_device_keys(id: uuid::Uuid) -> [crate::keystore::MetaMac; 2] {
    let [key, key_mac, previous, previous_mac] = key_rows(Some(id));
    [
        crate::keystore::MetaMac {
            values: Cow::Owned(vec![key]),
            mac: key_mac,
            body: REKEY_KEY.body,
        },
        crate::keystore::MetaMac {
            values: Cow::Owned(vec![previous]),
            mac: previous_mac,
            body: |v| crate::root_rotate::previous_body(v[0].as_deref().unwrap_or("")),
        },
    ]
}

/// For the integrity key's replacement (`root_rotate.rs`): the head's and the key row's MACs
/// (checked under the old key, the head re-MAC'd), and the key rows, dropped then: the audit key
/// derives from the MAC key, so the new one is recorded at its first use. Every other device's
/// head: [`rekey_device_head`].
pub(crate) const REKEY_HEAD: crate::keystore::MetaMac = crate::keystore::MetaMac {
    values: Cow::Borrowed(&[Cow::Borrowed(META_HEAD)]),
    mac: Cow::Borrowed(META_HEAD_MAC),
    body: |v| head_body(v[0].as_deref().unwrap_or("")),
};
pub(crate) const REKEY_KEY: crate::keystore::MetaMac = crate::keystore::MetaMac {
    values: Cow::Borrowed(&[Cow::Borrowed(META_KEY)]),
    mac: Cow::Borrowed(META_KEY_MAC),
    body: |v| key_body(v[0].as_deref().unwrap_or("")),
};
pub(crate) const REKEY_KEY_ROWS: [&str; 2] = [META_KEY, META_KEY_MAC];

fn mac_ok(ks: &crate::keystore::Keystore, body: &[u8], mac: Option<&str>) -> bool {
    mac.and_then(|m| hex::decode(m.trim()).ok())
        .and_then(|t| ks.mac_verify(body, &t))
        == Some(true)
}

fn parse_head_row(row: &str) -> Option<(u64, [u8; 32])> {
    let (s, h) = row.split_once(':')?;
    Some((s.parse().ok()?, hex::decode(h).ok()?.try_into().ok()?))
}

/// A device row's public key as the key rows hold it (SEC1 compressed).
fn compressed(sec1: &[u8]) -> Option<Vec<u8>> {
    Some(
        keyward_identity::PublicKey::from_sec1_bytes(sec1)
            .ok()?
            .to_sec1_compressed()
            .to_vec(),
    )
}

/// The audit key's public half from its meta row (hex SEC1).
fn parse_key_row(row: &str) -> Option<Vec<u8>> {
    let bytes = hex::decode(row.trim()).ok()?;
    keyward_identity::PublicKey::from_sec1_bytes(&bytes).ok()?;
    Some(bytes)
}

/// The audit signing key: a P-256 scalar from the keystore MAC key, HMAC-SHA256 under it of a
/// fixed label and a counter byte, the first output that is a valid scalar (0 < d < n; a miss
/// has probability about 2^-32). Deterministic, so nothing secret is stored, and the same on
/// every enrolled root (they all open the one integrity KEK the MAC key comes from). `None`
/// while no MAC key is loaded (locked).
fn derive_audit_key(ks: &crate::keystore::Keystore) -> Option<LocalKey> {
    for counter in 0u8..=255 {
        let mut input = b"keyward/audit/signing-key/v1".to_vec();
        input.push(counter);
        let tag = Zeroizing::new(ks.mac_tag(&input)?);
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(tag.as_slice().try_into().ok()?);
        if let Ok(k) = LocalKey::from_bytes(&bytes) {
            return Some(k);
        }
    }
    None
}

/// What signs this agent's checkpoints ([`Hierarchy::audit_signer`]).
enum AuditSigner {
    /// The device key of the device this agent runs as (`Hierarchy::sign_as`).
    Device(crate::keystore::DeviceRow),
    /// The key derived from the keystore MAC key: an agent on no device's root.
    Derived(LocalKey),
}

impl Hierarchy {
    /// The derived audit key ([`derive_audit_key`]), as agents on no device's root sign with.
    /// `None` while the agent is locked or not initialized.
    #[cfg(test)]
    fn audit_key(&self) -> Result<Option<LocalKey>, crate::error::AgentError> {
        if self.is_locked() || !self.ks.has_mac_key() || self.root_record("audit").is_err() {
            return Ok(None);
        }
        Ok(derive_audit_key(&self.ks))
    }

    /// What signs this agent's checkpoints: its device key when it runs as an enrolled device,
    /// else the derived key; the key is recorded for its chain first ([`Self::record_audit_key`]).
    /// `None` while the agent is locked or not initialized; an error when the chain's key rows
    /// do not verify (they are then never used, and never replaced: that needs a person).
    fn audit_signer(&self) -> Result<Option<AuditSigner>, crate::error::AgentError> {
        use crate::error::{AgentError, Tampering};
        if self.is_locked() || !self.ks.has_mac_key() || self.root_record("audit").is_err() {
            return Ok(None);
        }
        let me = self.audit_self()?;
        let chain = me.as_ref().and_then(crate::devices::AuditSelf::chain);
        let (signer, public) = match me.and_then(|m| m.device) {
            Some(row) => {
                let public = compressed(&row.public_key)
                    .ok_or(AgentError::KeystoreTampered(Tampering::AuditKey))?;
                (AuditSigner::Device(row), public)
            }
            None => {
                let Some(key) = derive_audit_key(&self.ks) else {
                    return Ok(None);
                };
                let public = key.public_key().to_sec1_compressed().to_vec();
                (AuditSigner::Derived(key), public)
            }
        };
        self.record_audit_key(chain, &hex::encode(public))?;
        Ok(Some(signer))
    }

    /// Record `public` (hex SEC1 compressed) as the key of `chain`'s checkpoints, MAC'd. A
    /// different key recorded before joins the chain's earlier keys (its checkpoints keep
    /// verifying). A device's keyed chain with no key recorded yet, but a head (written by an
    /// agent from before device keys, which signed with the derived key; this agent records
    /// its key before its first head, [`Hierarchy::audit_self`]), inherits the derived key of
    /// the plain rows as its earlier key; a chain that starts with device keys never trusts
    /// it. A row whose MAC does not verify is an error, and is not replaced.
    pub(crate) fn record_audit_key(
        &self,
        chain: Option<uuid::Uuid>,
        public: &str,
    ) -> Result<(), crate::error::AgentError> {
        use crate::error::{AgentError, Tampering};
        let tampered = || AgentError::KeystoreTampered(Tampering::AuditKey);
        let [key_row, key_mac_row, previous_row, previous_mac_row] = key_rows(chain);
        let checked = |row: &str, mac_row: &str| -> Result<Option<String>, AgentError> {
            let Some(v) = self.ks.meta(row)? else {
                return Ok(None);
            };
            if !mac_ok(&self.ks, &key_body(&v), self.ks.meta(mac_row)?.as_deref())
                || parse_key_row(&v).is_none()
            {
                return Err(tampered());
            }
            Ok(Some(v))
        };
        let recorded = checked(&key_row, &key_mac_row)?;
        if recorded
            .as_deref()
            .and_then(parse_key_row)
            .map(hex::encode)
            .as_deref()
            == Some(public)
        {
            return Ok(());
        }
        let earlier = match (recorded, chain) {
            (Some(r), _) => Some(r),
            (None, Some(_)) if self.ks.meta(&head_rows(chain).0)?.is_some() => {
                checked(META_KEY, META_KEY_MAC)?
            }
            (None, _) => None,
        };
        let Some(mac) = self.ks.mac_tag(&key_body(public)).map(hex::encode) else {
            return Ok(());
        };
        let mut set: Vec<(&str, Option<String>)> = vec![
            (&key_row, Some(public.to_string())),
            (&key_mac_row, Some(mac)),
        ];
        if let Some(earlier) = earlier {
            let list = match self.ks.meta(&previous_row)? {
                Some(l) if !l.is_empty() => {
                    if !mac_ok(
                        &self.ks,
                        &crate::root_rotate::previous_body(&l),
                        self.ks.meta(&previous_mac_row)?.as_deref(),
                    ) {
                        return Err(tampered());
                    }
                    format!("{l},{}", earlier.trim())
                }
                _ => earlier.trim().to_string(),
            };
            let Some(tag) = self
                .ks
                .mac_tag(&crate::root_rotate::previous_body(&list))
                .map(hex::encode)
            else {
                return Ok(());
            };
            set.push((&previous_row, Some(list)));
            set.push((&previous_mac_row, Some(tag)));
        }
        let set: Vec<(&str, Option<&str>)> = set.iter().map(|(k, v)| (*k, v.as_deref())).collect();
        self.ks.set_metas(&set)?;
        tracing::info!(
            device = ?chain,
            "audit: recorded the key that signs this chain's checkpoints"
        );
        Ok(())
    }

    /// Record the chain head (this device's rows, [`head_rows`]), MAC'd; nothing while locked
    /// (no MAC key).
    fn audit_head(&self, seq: u64, hash: &[u8; 32]) -> Result<bool, crate::error::AgentError> {
        let row = format!("{seq}:{}", hex::encode(hash));
        let Some(mac) = self.ks.mac_tag(&head_body(&row)).map(hex::encode) else {
            return Ok(false);
        };
        let (head, head_mac) = head_rows(self.audit_device()?);
        // Flushed without holding the keystore: requests need it meanwhile.
        self.ks
            .set_metas_flushed_unlocked(&[(&head, Some(&row)), (&head_mac, Some(&mac))])?;
        Ok(true)
    }
}

struct Writer {
    /// The live file, locked; `None` while it could not be opened. Shared with a sync in
    /// progress (which `fdatasync`s it without the lock, see [`Log::sync`]).
    file: Option<Arc<nix::fcntl::Flock<File>>>,
    path: PathBuf,
    size: u64,
    /// The last entry written: its sequence number and hash.
    seq: u64,
    prev: [u8; 32],
    /// Entries since the last checkpoint.
    since_checkpoint: u64,
    every: u64,
    max_bytes: u64,
    h: Arc<Hierarchy>,
    failing: Arc<AtomicBool>,
    /// Failed writes and syncs so far: a batch synced without the lock clears `failing` only
    /// if no failure came in between.
    failures: u64,
    /// Failed syncs so far (each cut the file back): a batch whose sync waited for another one
    /// knows its entries survived only if this did not move.
    cuts: u64,
    /// A sync is in progress (its `fdatasync` and head write run without the lock): no other
    /// sync starts and the file is not switched until it ends ([`Log::no_syncer`]).
    syncing: bool,
    /// When the path was last checked to name the held file ([`Writer::check_path`]).
    checked_at: Option<Instant>,
    counters: Arc<Counters>,
    hooks: Arc<Hooks>,
    /// Entries of batches whose write failed (dropped, not kept: a full disk must not fill the
    /// memory too), and entries cut off after a failed sync; the next batch that writes says
    /// how many, as an `audit.lost` entry.
    lost: u64,
    /// See [`AuditConfig::sync_ms`].
    sync_ms: u64,
    /// When the oldest write not yet synced was made (`None`: the file is synced).
    dirty_since: Option<Instant>,
    /// Entries written since the last sync (lost if that sync fails).
    unsynced: u64,
    /// The lost count an unsynced `audit.lost` entry reported (lost again if it is cut).
    reported_unsynced: u64,
    /// The state as of the last successful `fdatasync` (what a failed one goes back to).
    synced: Synced,
    /// `agent.stop` is written: nothing more is.
    stopped: bool,
    /// A request sent [`Msg::Due`] and the thread has not looked at it yet.
    asked: bool,
    /// Test hook: called with the lock released, before a checkpoint is signed.
    #[cfg(test)]
    before_sign: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// The writer thread: batches what comes through the channel, and `fdatasync`s `sync_ms` after
/// the first unsynced write (its own or a request's, see [`Audit::append`]), without holding
/// the writer's lock ([`Log::sync`]).
fn run(log: &Log, rx: Receiver<Msg>) {
    loop {
        // While something written is not synced yet, wait for the next message only until its
        // sync is due.
        let due = {
            let w = log.lock();
            w.dirty_since
                .map(|since| since + Duration::from_millis(w.sync_ms))
        };
        let first = match due {
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            },
            Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = log.sync(log.lock());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        batch.retain(|m| !matches!(m, Msg::Wake));
        let mut w = log.lock();
        if !batch.is_empty() {
            let (g, stop, _) = log.batch(w, batch, true);
            if stop {
                return;
            }
            w = g;
        }
        // Under a steady stream of batches the timer is checked here too.
        if w.dirty_since
            .is_some_and(|t| t.elapsed() >= Duration::from_millis(w.sync_ms))
        {
            let _ = log.sync(w);
        }
    }
    // Every handle is gone without a `Stop`: sign what is there if we can, and sync.
    let w = log.lock();
    let w = if w.stopped {
        w
    } else {
        log.batch(w, vec![], true).0
    };
    let _ = log.sync_held(w);
}

type Guard<'a> = MutexGuard<'a, Writer>;

/// The writer behind its lock, and the signal that a sync ended. Requests take the lock for
/// their one `write`; a sync takes it only to look at the state before its `fdatasync` and to
/// record the outcome after, so no request waits for the disk or for the keystore's head write
/// (unless it asked for a sync itself, or the file is switched: rotation, a moved log, stop).
struct Log {
    w: Mutex<Writer>,
    /// Notified when a sync ends (`Writer::syncing` cleared).
    idle: Condvar,
}

impl Log {
    fn lock(&self) -> Guard<'_> {
        lock(&self.w)
    }

    /// Wait (the lock released meanwhile) until no sync is in progress: one syncer at a time,
    /// and no file switch under a sync.
    fn no_syncer<'a>(&'a self, mut w: Guard<'a>) -> Guard<'a> {
        while w.syncing {
            w = self.idle.wait(w).unwrap_or_else(|p| p.into_inner());
        }
        w
    }

    /// `fdatasync` everything written so far, without holding the lock through it: under the
    /// lock, take what the sync covers (the file, `seq`/`prev`/`size`, the unsynced counts) and
    /// mark the file clean; release; `fdatasync`; re-lock and mark synced up to that snapshot
    /// only (what was written meanwhile stays dirty, for the next sync); then record that head in
    /// the keystore, still without the lock. A failure fails the log as [`Writer::sync`] does:
    /// the file is cut back to the last good sync, and everything after it (including what was
    /// written meanwhile) is counted lost. `true`: what was written before the call is on disk.
    fn sync<'a>(&'a self, w: Guard<'a>) -> (Guard<'a>, bool) {
        let mut w = self.no_syncer(w);
        if w.dirty_since.is_none() {
            return (w, true);
        }
        let Some(file) = w.file.clone() else {
            let ok = w.sync();
            return (w, ok);
        };
        let upto = Synced {
            seq: w.seq,
            prev: w.prev,
            since: w.since_checkpoint,
            size: w.size,
        };
        let (unsynced, reported) = (w.unsynced, w.reported_unsynced);
        let hooks = w.hooks.clone();
        w.dirty_since = None;
        w.syncing = true;
        drop(w);
        let done = hooks.before_sync().and_then(|()| file.sync_data());
        drop(file);
        let mut w = self.lock();
        let ok = match done {
            Ok(()) => {
                w.counters.syncs.fetch_add(1, Ordering::Relaxed);
                w.synced = upto;
                w.unsynced = w.unsynced.saturating_sub(unsynced);
                w.reported_unsynced = w.reported_unsynced.saturating_sub(reported);
                true
            }
            Err(e) => {
                w.sync_failed(&e);
                false
            }
        };
        if ok {
            // The head of what this sync put on disk (the lock is not needed: no other sync, and
            // so no other head write, runs before `syncing` is cleared).
            let h = w.h.clone();
            drop(w);
            if let Err(e) = h.audit_head(upto.seq, &upto.prev) {
                tracing::error!(error = %e, "audit: recording the chain head in the keystore failed");
            }
            w = self.lock();
        }
        w.syncing = false;
        self.idle.notify_all();
        (w, ok)
    }

    /// Sign `snapshot` with the lock released (requests write their entries meanwhile), then
    /// append the checkpoint under it. Returns the lock and whether nothing failed.
    fn checkpoint<'a>(&'a self, w: Guard<'a>, snapshot: Snapshot) -> (Guard<'a>, bool) {
        let h = w.h.clone();
        #[cfg(test)]
        let hook = w.before_sign.clone();
        drop(w);
        #[cfg(test)]
        if let Some(f) = hook {
            f();
        }
        let sig = sign_snapshot(&h, snapshot.seq, &snapshot.prev);
        let mut w = self.lock();
        let ok = match sig {
            Some(sig) => w.append_checkpoint(snapshot, sig),
            None => {
                tracing::debug!("audit: no checkpoint now (locked); entries wait");
                true
            }
        };
        (w, ok)
    }

    /// Sync with the lock held throughout, so nothing is written between the sync and what the
    /// caller does next (switching to another file, closing it at stop).
    fn sync_held<'a>(&'a self, w: Guard<'a>) -> (Guard<'a>, bool) {
        let mut w = self.no_syncer(w);
        let ok = w.sync();
        (w, ok)
    }

    /// Write one batch (one `write`), sync it when it must be (a checkpoint, a flush, the stop,
    /// `sync_ms = 0`, a failing log), acknowledge its waiters, rotate when the file is full.
    /// Returns the lock, whether the batch held a `Stop`, and whether it was written (and, where
    /// it had to be, synced). `thread`: the writer thread's batch, which also makes the
    /// checkpoint that is due, if any: it signs a snapshot of the chain's end (the last entry
    /// written, its sequence number and hash) with the lock released, so requests go on writing
    /// their entries meanwhile, then appends the checkpoint wherever the chain has got to (its
    /// `prev` the entry before it, its signature over the snapshot). A request's batch
    /// (`thread = false`) never signs; [`Audit::append`] asks the thread ([`Msg::Due`]).
    fn batch<'a>(&'a self, w: Guard<'a>, msgs: Vec<Msg>, thread: bool) -> (Guard<'a>, bool, bool) {
        let mut w = w;
        if thread {
            w.asked = false;
        }
        // First: the path still names the held file (a first open moves `seq` and `prev` to
        // its end). A moved file is synced, with the lock held, before the switch.
        let mut synced_for_move = false;
        let ready = loop {
            match w.check_path(synced_for_move) {
                Some(ready) => break ready,
                None => {
                    w = self.sync_held(w).0;
                    synced_for_move = true;
                }
            }
        };
        let (failures, cuts) = (w.failures, w.cuts);
        let mut done = w.write_batch(ready, msgs, thread);
        let stop = done.stop.is_some();
        if stop {
            // Nothing is written after `agent.stop` (a late request gets `false`).
            w.stopped = true;
        }
        if let Some(snapshot) = done.checkpoint.take() {
            let (g, written) = self.checkpoint(w, snapshot);
            w = g;
            done.written &= written;
        }
        let ok = if done.written && done.must_sync {
            // The stop's sync holds the lock: the file is closed right after.
            let (g, synced) = if stop {
                self.sync_held(w)
            } else {
                self.sync(w)
            };
            w = g;
            // A sync that failed while this one waited for it cut these entries too.
            synced && w.cuts == cuts
        } else {
            done.written
        };
        // Cleared only by a batch that reached the disk, and only when no write or sync failed
        // while its sync ran without the lock.
        if ok && w.failures == failures && w.failing.swap(false, Ordering::AcqRel) {
            tracing::warn!(path = %w.path.display(), "audit: the log is writable again");
        }
        for a in done.acks {
            a.done(ok);
        }
        if ok && w.size > w.max_bytes {
            w = self.no_syncer(w);
            if w.size > w.max_bytes {
                w.rotate();
            }
        }
        match done.stop {
            Some(ack) => {
                let (mut w, _) = self.sync_held(w);
                let s = &w.counters;
                tracing::info!(
                    entries = s.entries.load(Ordering::Relaxed),
                    writes = s.writes.load(Ordering::Relaxed),
                    syncs = s.syncs.load(Ordering::Relaxed),
                    "audit: log closed (entries, writes and fdatasyncs since start)"
                );
                ack.done(ok);
                // The file (and its lock) goes now: the next agent may open it.
                w.file = None;
                (w, true, ok)
            }
            None => (w, false, ok),
        }
    }
}

/// A batch as written by [`Writer::write_batch`], to be synced and acknowledged by
/// [`Log::batch`].
struct Written {
    written: bool,
    must_sync: bool,
    acks: Vec<Ack>,
    stop: Option<Ack>,
    /// A checkpoint is due over this chain end (signed and appended by [`Log::checkpoint`]).
    checkpoint: Option<Snapshot>,
}

/// The chain's end a checkpoint signs, taken under the writer's lock.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    seq: u64,
    prev: [u8; 32],
    /// Failed syncs when it was taken ([`Writer::cuts`]): if one comes before the checkpoint is
    /// appended, the snapshot's entry may be cut off, and the signature is not used.
    cuts: u64,
    why: &'static str,
}

/// The chain's end, as far as it is known to be on disk.
#[derive(Debug, Default, Clone, Copy)]
struct Synced {
    seq: u64,
    prev: [u8; 32],
    since: u64,
    size: u64,
}

impl Writer {
    /// Find the end of the chain: the last entry of the newest file. A torn last line (a crash
    /// in the middle of a write, never acknowledged) is cut off.
    fn resume(&mut self) -> std::io::Result<()> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        let mut text = Vec::new();
        (&***file).seek(SeekFrom::Start(0))?;
        (&***file).read_to_end(&mut text)?;
        if !text.is_empty() && !text.ends_with(b"\n") {
            let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            tracing::warn!(
                path = %self.path.display(),
                cut = text.len() - keep,
                "audit: the log ended in a torn line (a write a crash interrupted); cutting it off"
            );
            file.set_len(keep as u64)?;
            text.truncate(keep);
        }
        self.size = text.len() as u64;
        let mut last = last_entry(&text);
        if last.is_none() && text.is_empty() {
            // A fresh live file after a rotation: the chain goes on from the newest rotated file.
            let files = keyward_audit::files(&self.path)?;
            if let Some(f) = files.iter().rev().find(|f| **f != self.path) {
                last = last_entry(&std::fs::read(f)?);
            }
        }
        if let Some(p) = last {
            self.seq = p.entry.seq;
            self.prev = p.stored;
        } else if !text.is_empty() {
            tracing::error!(path = %self.path.display(), "audit: no readable entry at the end of the log; a new chain starts after it (`keyward audit verify` will name the damage)");
        }
        Ok(())
    }

    /// What is in the file now is on disk (after a sync, or as found at start).
    fn mark_synced(&mut self) {
        self.unsynced = 0;
        self.reported_unsynced = 0;
        self.synced = Synced {
            seq: self.seq,
            prev: self.prev,
            since: self.since_checkpoint,
            size: self.size,
        };
    }

    /// `fdatasync` what was written since the last one; then record the head that is now on
    /// disk. A failure fails the log as a failed write does, and more: the entries written
    /// since the last good sync may not be on disk, so the file is cut back to it, the chain
    /// goes on from there and those entries are counted as lost (they were acknowledged: their
    /// requests were answered before the failure was known). This one holds the lock through
    /// the `fdatasync` (for a file switch and the stop; see [`Log::sync`] for the timed one);
    /// never called while another sync is in progress ([`Log::no_syncer`]).
    fn sync(&mut self) -> bool {
        if self.dirty_since.is_none() {
            return true;
        }
        let done = self
            .hooks
            .before_sync()
            .and_then(|()| match self.file.as_ref() {
                Some(f) => f.sync_data(),
                None => Err(std::io::Error::other("the log is not open")),
            });
        self.dirty_since = None;
        match done {
            Ok(()) => {
                self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                self.mark_synced();
                if let Err(e) = self.h.audit_head(self.seq, &self.prev) {
                    tracing::error!(error = %e, "audit: recording the chain head in the keystore failed");
                }
                true
            }
            Err(e) => {
                self.sync_failed(&e);
                false
            }
        }
    }

    /// After a failed `fdatasync`: fail the log, cut the file back to the last good sync and
    /// count everything written since as lost.
    fn sync_failed(&mut self, e: &std::io::Error) {
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(path = %self.path.display(), error = %e, lost = self.unsynced, "audit: syncing the log failed; the entries since the last sync are cut off and key operations are refused while it fails (unless [audit] required = false)");
        }
        if let Some(f) = self.file.as_ref() {
            let _ = f.set_len(self.synced.size);
        }
        self.failures += 1;
        self.cuts += 1;
        self.dirty_since = None;
        self.size = self.synced.size;
        self.seq = self.synced.seq;
        self.prev = self.synced.prev;
        self.since_checkpoint = self.synced.since;
        self.lost += self.unsynced + self.reported_unsynced;
        self.unsynced = 0;
        self.reported_unsynced = 0;
    }

    /// Encode and write one batch (after `ready`, the outcome of [`Writer::check_path`]); its
    /// sync, acknowledgements, rotation and stop are [`Log::batch`]'s.
    fn write_batch(
        &mut self,
        ready: std::io::Result<()>,
        batch: Vec<Msg>,
        thread: bool,
    ) -> Written {
        let mut acks: Vec<Ack> = Vec::new();
        let mut stop: Option<Ack> = None;
        // A checkpoint, a flush and the stop are acknowledged only once synced; so is every
        // batch while the log fails (the retry that clears the failure must reach the disk,
        // or a sync that keeps failing would let requests through between failures).
        let mut must_sync = self.sync_ms == 0 || self.failing.load(Ordering::Acquire);
        let mut out = String::with_capacity(512);
        let (mut seq, mut prev, mut since) = (self.seq, self.prev, self.since_checkpoint);
        let mut reason: Option<&'static str> = None;
        let mut records = 0u64;
        let mut batch: Vec<Msg> = batch;
        let reports_lost = self.lost > 0;
        if reports_lost {
            let lost = Record {
                op: "audit.lost".into(),
                door: "agent",
                result: "audit_unavailable".into(),
                detail: Some(format!(
                    "{} entries could not be written while the log failed",
                    self.lost
                )),
                ..Record::default()
            };
            batch.insert(0, Msg::Entry(lost));
        }
        for m in batch {
            let r = match m {
                Msg::Entry(r) => r,
                Msg::Checkpoint(why, ack) => {
                    acks.push(ack);
                    reason = Some(why);
                    must_sync = true;
                    continue;
                }
                Msg::Flush(ack) => {
                    acks.push(ack);
                    must_sync = true;
                    continue;
                }
                Msg::Wake | Msg::Due => continue,
                Msg::Stop(ack) => {
                    stop = Some(ack);
                    reason = Some("shutdown");
                    must_sync = true;
                    Record {
                        op: "agent.stop".into(),
                        door: "agent",
                        result: "ok".into(),
                        uid: Some(nix::unistd::geteuid().as_raw()),
                        pid: Some(std::process::id() as i32),
                        ..Record::default()
                    }
                }
            };
            let label = r.label;
            let e = Entry {
                seq: seq + 1,
                time: now_ms(),
                op: r.op,
                door: r.door.into(),
                key: r.key,
                label: label.map(clipped),
                uid: r.uid,
                pid: r.pid,
                exe: r.exe,
                result: r.result,
                detail: r.detail,
                prev: keyward_audit::to_hex(&prev),
                sig: None,
            };
            records += 1;
            // Straight into the batch's buffer: no JSON value, no line of its own.
            prev = keyward_audit::encode_into(&e, &mut out);
            out.push('\n');
            seq += 1;
            since += 1;
        }
        let due = reason.or((thread && since >= self.every).then_some("every"));
        let checkpoint = due
            .filter(|_| since > 0 || reason.is_some())
            .map(|why| Snapshot {
                seq,
                prev,
                cuts: self.cuts,
                why,
            });
        let written = self.write(ready, out.as_bytes());
        if !written {
            // The `audit.lost` entry itself is not counted as lost again.
            self.lost += records.saturating_sub(u64::from(reports_lost));
        }
        if written && !out.is_empty() {
            if reports_lost {
                self.reported_unsynced += self.lost;
            }
            self.lost = 0;
            self.seq = seq;
            self.prev = prev;
            self.since_checkpoint = since;
            self.unsynced += records.saturating_sub(u64::from(reports_lost));
            self.dirty_since.get_or_insert_with(Instant::now);
            self.counters.entries.fetch_add(records, Ordering::Relaxed);
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
        }
        Written {
            written,
            must_sync: must_sync || checkpoint.is_some(),
            acks,
            stop,
            checkpoint: checkpoint.filter(|_| written),
        }
    }

    /// Append the checkpoint entry whose signature `sig` (over `snapshot`) was made without the
    /// lock: at the chain's end now (entries written meanwhile come before it, not covered by
    /// it). Not when a failed sync cut the file back since the snapshot (the signed entry may be
    /// gone). Returns whether nothing failed (no checkpoint is not a failure: locked).
    fn append_checkpoint(&mut self, snapshot: Snapshot, sig: String) -> bool {
        if self.cuts != snapshot.cuts {
            tracing::warn!("audit: a failed sync cut the log while a checkpoint was signed; it waits for the next one");
            return true;
        }
        let e = Entry {
            seq: self.seq + 1,
            time: now_ms(),
            op: CHECKPOINT_OP.into(),
            door: "agent".into(),
            result: "ok".into(),
            detail: Some(snapshot.why.into()),
            prev: keyward_audit::to_hex(&self.prev),
            sig: Some(sig),
            ..Entry::default()
        };
        let Ok((mut line, hash)) = keyward_audit::encode(&e) else {
            return true;
        };
        line.push('\n');
        if !self.write(Ok(()), line.as_bytes()) {
            // Failing now (`write` set it); the checkpoint stays due.
            return false;
        }
        self.seq += 1;
        self.prev = hash;
        // What was written after the snapshot is not covered yet: the next `every` counts it.
        self.since_checkpoint = self.seq - 1 - snapshot.seq;
        self.unsynced += 1;
        self.dirty_since.get_or_insert_with(Instant::now);
        self.counters.entries.fetch_add(1, Ordering::Relaxed);
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The signature of a checkpoint over entry `seq` (hash `prev`), if the agent can sign now
/// (`None`: locked, or the audit key is unusable). Called without the writer's lock.
fn sign_snapshot(h: &Hierarchy, seq: u64, prev: &[u8; 32]) -> Option<String> {
    use keyward_identity::cose::Sign1Error;
    use keyward_identity::ecdsa::SignError;
    let signer = match h.audit_signer() {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(error = %e, "audit: no checkpoint: the audit key is unusable");
            return None;
        }
    };
    match signer {
        AuditSigner::Derived(key) => keyward_audit::sign_checkpoint(&key, seq, prev),
        // The device key's own sign function (in memory on an enrolled device, opened by the
        // configured root on the first one).
        AuditSigner::Device(row) => keyward_audit::sign_checkpoint_message(seq, prev, |tbs| {
            h.sign_as(&row, tbs)
                .map_err(|e| Sign1Error::Sign(SignError::Backend(Box::new(e))))
        }),
    }
    .map_err(|e| tracing::error!(error = %e, "audit: signing a checkpoint failed"))
    .ok()
}

impl Writer {
    /// The path still names the file this writer holds: a log moved away (an outside rotation)
    /// is followed by a new file at the path, continuing the chain; a path taken by something
    /// else (a directory, another file) is a write failure until the path is free again.
    /// Called before a batch is encoded (a first open finds where the chain ends). The check
    /// (an `fstat` and an `lstat`) runs at most once per `sync_ms` while the log works, so a
    /// request costs one `write`: a move or replacement is noticed within `sync_ms` (what is
    /// written until then goes to the held file, which the chain then continues from); while the
    /// log fails, and with `sync_ms = 0`, every batch checks. `None`: the file was moved away
    /// and must be synced before the switch (with the lock held until then, see [`Log::batch`];
    /// `synced` says that is done).
    fn check_path(&mut self, synced: bool) -> Option<std::io::Result<()>> {
        use std::os::unix::fs::MetadataExt;
        let Some(file) = self.file.as_ref() else {
            // Never opened yet: open it now and go on from its last entry.
            let f = match open_locked(&self.path) {
                Ok(f) => f,
                Err(e) => return Some(Err(std::io::Error::other(e.to_string()))),
            };
            self.file = Some(Arc::new(f));
            if let Err(e) = self.resume() {
                return Some(Err(e));
            }
            self.mark_synced();
            self.checked_at = Some(Instant::now());
            tracing::warn!(path = %self.path.display(), "audit: the log could be opened now");
            return Some(Ok(()));
        };
        let now = Instant::now();
        if self.sync_ms > 0
            && !self.failing.load(Ordering::Acquire)
            && self.checked_at.is_some_and(|t| {
                now.saturating_duration_since(t) < Duration::from_millis(self.sync_ms)
            })
        {
            return Some(Ok(()));
        }
        let held = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let ready = match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_file() && (m.dev(), m.ino()) == (held.dev(), held.ino()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !synced {
                    // What is left unsynced in the moved file is synced (or cut) first.
                    return None;
                }
                match open_locked(&self.path) {
                    Ok(f) => {
                        tracing::warn!(path = %self.path.display(), "audit: the log file was moved away; the chain continues in a new file");
                        self.file = Some(Arc::new(f));
                        self.size = 0;
                        self.synced.size = 0;
                        Ok(())
                    }
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                }
            }
            Ok(_) => Err(std::io::Error::other(
                "the log's path now names something else (replaced)",
            )),
            Err(e) => Err(e),
        };
        if ready.is_ok() {
            self.checked_at = Some(now);
        }
        Some(ready)
    }

    /// Append `bytes` (after `ready`, the outcome of [`Self::check_path`]); not synced here (see
    /// [`Self::sync`]); on failure, cut the file back to where it was.
    fn write(&mut self, ready: std::io::Result<()>, bytes: &[u8]) -> bool {
        if bytes.is_empty() && ready.is_ok() {
            return true;
        }
        let done = ready.and_then(|()| match self.file.as_ref() {
            Some(f) => (&***f).write_all(bytes),
            None => Err(std::io::Error::other("the log is not open")),
        });
        match done {
            Ok(()) => {
                self.size += bytes.len() as u64;
                true
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(path = %self.path.display(), error = %e, "audit: writing the log failed; key operations are refused while it fails (unless [audit] required = false)");
                }
                if let Some(f) = self.file.as_ref() {
                    let _ = f.set_len(self.size);
                }
                self.failures += 1;
                false
            }
        }
    }

    /// Rename the live file `PATH.N` and continue the chain in a new one (once the old one is
    /// synced: a rotated file is complete on disk).
    fn rotate(&mut self) {
        if !self.sync() {
            return;
        }
        let n = keyward_audit::files(&self.path)
            .unwrap_or_default()
            .iter()
            .filter_map(|f| {
                f.file_name()?
                    .to_str()?
                    .rsplit('.')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
            + 1;
        let mut to = self.path.clone().into_os_string();
        to.push(format!(".{n}"));
        if let Err(e) = std::fs::rename(&self.path, &to) {
            tracing::error!(error = %e, "audit: rotating the log failed; the live file keeps growing");
            return;
        }
        match open_locked(&self.path) {
            Ok(f) => {
                self.file = Some(Arc::new(f));
                self.size = 0;
                self.synced.size = 0;
                tracing::info!(rotated = %PathBuf::from(&to).display(), "audit: log rotated");
            }
            Err(e) => {
                tracing::error!(error = %e, "audit: opening a new log after rotation failed; writing on in the rotated file");
            }
        }
    }
}

/// The last entry in `text` that parses.
fn last_entry(text: &[u8]) -> Option<keyward_audit::Parsed> {
    String::from_utf8_lossy(text)
        .lines()
        .rev()
        .find_map(keyward_audit::parse_line)
}

#[cfg(test)]
mod tests {
    //! The writer against a real file and a memory root: rotation keeps one chain, a restart
    //! continues it (cutting a torn line), entries written while locked wait for the next
    //! checkpoint, the key and head come from the keystore, and a second writer is refused.
    use super::*;
    use crate::keystore::Keystore;
    use crate::root::memory::MemoryRoot;
    use keyward_proto::secret::Pin;

    fn hierarchy(dir: &Path) -> Arc<Hierarchy> {
        let ks = Arc::new(Keystore::open(&dir.join("ks.db")).unwrap());
        let policy = crate::config::UnlockPolicy {
            backoff_base_ms: 0,
            ..Default::default()
        };
        Arc::new(Hierarchy::new(ks, Box::new(MemoryRoot::new()), policy))
    }

    fn rec(op: &str) -> Record {
        Record {
            op: op.into(),
            door: "socket",
            result: "ok".into(),
            ..Record::default()
        }
    }

    fn trust(a: &Audit) -> keyward_audit::Trust {
        let i = a.info().unwrap();
        keyward_audit::Trust {
            key: i
                .public_key
                .and_then(|k| keyward_identity::PublicKey::from_sec1_bytes(&k).ok()),
            previous: i
                .previous_keys
                .iter()
                .filter_map(|k| keyward_identity::PublicKey::from_sec1_bytes(k).ok())
                .collect(),
            head: i
                .head_seq
                .zip(i.head_hash.and_then(|h| h.to_vec().try_into().ok())),
        }
    }

    /// Found bug: the audit key was wrapped under a KEK of the root that made it, with no wrap
    /// for the other enrolled roots, so an agent running on a backup root (after `root add`,
    /// `recovery restore` or `root rotate`) could not sign checkpoints any more. Now the first
    /// device signs with its device key, an agent on the backup root (no device of its own)
    /// with the derived key, and one log written by both verifies: the device key is recorded
    /// as the earlier key when the backup root's agent records its own.
    #[test]
    fn an_agent_on_another_enrolled_root_signs_and_a_log_across_both_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).unwrap());
        let policy = crate::config::UnlockPolicy {
            backoff_base_ms: 0,
            ..Default::default()
        };
        let a = Arc::new(Hierarchy::new(
            ks.clone(),
            Box::new(MemoryRoot::new()),
            policy,
        ));
        a.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let log = Audit::open(&AuditConfig::default(), &path, a.clone()).unwrap();
        for i in 0..3 {
            assert!(log.append(rec(&format!("on A {i}")), true));
        }
        assert!(log.checkpoint("every"));
        let device = ks.devices().unwrap()[0].clone();
        let device_key = compressed(&device.public_key).unwrap();
        let info = log.info().unwrap();
        assert_eq!(info.key_device, Some(device.id.to_string()));
        assert_eq!(
            info.public_key.as_deref().map(|k| k.to_vec()),
            Some(device_key.clone())
        );
        assert!(info.checked && info.previous_keys.is_empty(), "{info:?}");
        let b_root = MemoryRoot::new();
        a.root_add(&b_root, &Pin::new("1234"), Some("backup".into()))
            .unwrap();
        log.shutdown();
        drop(log);
        a.lock().unwrap();
        let b = Arc::new(Hierarchy::new(ks, Box::new(b_root), policy));
        b.unlock(&Pin::new("1234")).unwrap();
        let derived = b
            .audit_key()
            .unwrap()
            .expect("derived key on B")
            .public_key();
        let log = Audit::open(&AuditConfig::default(), &path, b.clone()).unwrap();
        for i in 0..3 {
            assert!(log.append(rec(&format!("on B {i}")), true));
        }
        assert!(log.checkpoint("every"));
        let info = log.info().unwrap();
        assert_eq!(info.key_device, None);
        assert_eq!(
            info.public_key.as_deref().map(|k| k.to_vec()),
            Some(derived.to_sec1_compressed().to_vec())
        );
        assert_eq!(
            info.previous_keys
                .iter()
                .map(|k| k.to_vec())
                .collect::<Vec<_>>(),
            vec![device_key]
        );
        assert!(info.checked, "{info:?}");
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &trust(&log));
        assert_eq!(r.problem, None, "{r:?}");
        assert_eq!(
            r.signed_by,
            Some(1),
            "the last checkpoint by the current key: {r:?}"
        );
        log.shutdown();
    }

    /// A log whose checkpoints were signed with the derived key (every agent's, before device
    /// keys) keeps verifying once the device signs with its device key: the derived key joins
    /// the chain's earlier keys, and only forward (no derived-key checkpoint is accepted after
    /// a device-key one).
    #[test]
    fn a_log_from_before_device_keys_keeps_verifying_after_the_switch() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        // Before devices: no device row, the derived key signs (and is recorded).
        let first = h.ks.devices().unwrap()[0].id;
        h.ks.device_delete(&first).unwrap();
        *crate::hierarchy::lock(&h.audit_self) = None;
        let path = dir.path().join("audit.log");
        let log = Audit::open(&AuditConfig::default(), &path, h.clone()).unwrap();
        for i in 0..3 {
            assert!(log.append(rec(&format!("old {i}")), true));
        }
        assert!(log.checkpoint("every"));
        let derived = h
            .audit_key()
            .unwrap()
            .unwrap()
            .public_key()
            .to_sec1_compressed();
        assert_eq!(
            h.ks.meta(META_KEY).unwrap(),
            Some(hex::encode(derived)),
            "the derived key is recorded"
        );
        let old_log = std::fs::read(&path).unwrap();
        // The first device is recorded (as at the first unlock of such a keystore's `init`):
        // from now on it signs with its device key.
        let device = h.own_device("test").unwrap();
        *crate::hierarchy::lock(&h.audit_self) = None;
        for i in 0..3 {
            assert!(log.append(rec(&format!("new {i}")), true));
        }
        assert!(log.checkpoint("every"));
        let info = log.info().unwrap();
        assert_eq!(info.key_device, Some(device.id.to_string()));
        assert_eq!(
            info.previous_keys
                .iter()
                .map(|k| k.to_vec())
                .collect::<Vec<_>>(),
            vec![derived.to_vec()]
        );
        assert!(info.checked, "{info:?}");
        let t = trust(&log);
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &t);
        assert_eq!(r.problem, None, "{r:?}");
        assert_eq!(r.signed_by, Some(1), "{r:?}");
        // A checkpoint signed with the derived key after the device key's: refused.
        let lines = keyward_audit::read_lines(&path).unwrap();
        let last = keyward_audit::parse_line(&lines.last().unwrap().text).unwrap();
        let key = derive_audit_key(&h.ks).unwrap();
        let forged = Entry {
            seq: last.entry.seq + 1,
            prev: hex::encode(last.stored),
            op: CHECKPOINT_OP.into(),
            sig: Some(keyward_audit::sign_checkpoint(&key, last.entry.seq, &last.stored).unwrap()),
            ..last.entry.clone()
        };
        let (line, _) = keyward_audit::encode(&forged).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&line);
        text.push('\n');
        let forged_path = dir.path().join("forged.log");
        std::fs::write(&forged_path, text).unwrap();
        let r = keyward_audit::verify(&keyward_audit::read_lines(&forged_path).unwrap(), &t);
        assert!(
            matches!(
                r.problem,
                Some(keyward_audit::Problem::BadCheckpoint { .. })
            ),
            "{r:?}"
        );
        // The old part alone still verifies with the keys the keystore holds.
        let old_path = dir.path().join("old.log");
        std::fs::write(&old_path, old_log).unwrap();
        let r = keyward_audit::verify(
            &keyward_audit::read_lines(&old_path).unwrap(),
            &keyward_audit::Trust { head: None, ..t },
        );
        assert_eq!(r.problem, None, "{r:?}");
        assert_eq!(r.signed_by, Some(0), "by the earlier (derived) key: {r:?}");
        log.shutdown();
    }

    /// An audit sync writes the chain head and reads no device row (each keystore call is a
    /// PostgreSQL round trip): who the agent is was read once, at the first sync after the
    /// unlock, and is kept until lock. (It was one `devices` read per sync.)
    #[test]
    fn audit_syncs_read_the_device_rows_once_per_unlock() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let cfg = AuditConfig {
            sync_ms: 0,
            ..AuditConfig::default()
        };
        let a = Audit::open(&cfg, &path, h.clone()).unwrap();
        assert!(a.append(rec("warm up"), true));
        let (reads, syncs) = (h.ks.device_reads(), a.syncs());
        for i in 0..20 {
            assert!(a.append(rec(&format!("op{i}")), true));
        }
        let (reads, syncs) = (h.ks.device_reads() - reads, a.syncs() - syncs);
        assert!(syncs >= 20, "each waiting request synced: {syncs}");
        assert_eq!(reads, 0, "{reads} devices reads for {syncs} syncs");
        // After a lock and an unlock: read once more, then not again.
        h.lock().unwrap();
        h.unlock(&Pin::new("1234")).unwrap();
        let before = h.ks.device_reads();
        for i in 0..5 {
            assert!(a.append(rec(&format!("again{i}")), true));
        }
        assert_eq!(h.ks.device_reads() - before, 1);
        a.shutdown();
    }

    #[test]
    fn rotation_keeps_one_chain_and_a_restart_continues_it() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let cfg = AuditConfig {
            checkpoint_every: 7,
            max_bytes: 4096,
            ..AuditConfig::default()
        };
        let a = Audit::open(&cfg, &path, h.clone()).unwrap();
        for i in 0..60 {
            assert!(a.append(rec(&format!("op{i}")), i % 10 == 0));
        }
        a.shutdown();
        let files = keyward_audit::files(&path).unwrap();
        assert!(files.len() >= 3, "{files:?}");
        // A restart: a torn last line (a crash mid-write) is cut, and the chain goes on.
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"seq\":99,\"ti")
            .unwrap();
        let a = Audit::open(&cfg, &path, h.clone()).unwrap();
        assert!(a.append(rec("after restart"), true));
        let lines = keyward_audit::read_lines(&path).unwrap();
        let r = keyward_audit::verify(&lines, &trust(&a));
        assert_eq!(r.problem, None, "{r:?}");
        assert!(r.head_matched, "{r:?}");
        assert!(r.signed_through.is_some(), "{r:?}");
        // agent.start, 60 entries, agent.stop, agent.start, one more, and checkpoints.
        assert!(r.entries > 64, "{r:?}");
        a.shutdown();
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &trust(&a));
        assert_eq!(r.problem, None, "{r:?}");
        assert_eq!(r.unsigned, 0, "a shutdown checkpoint signs the end: {r:?}");
    }

    #[test]
    fn entries_written_while_locked_wait_for_the_next_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&AuditConfig::default(), &path, h.clone()).unwrap();
        assert!(a.checkpoint("lock"));
        let head = a.info().unwrap().head_seq.unwrap();
        h.lock().unwrap();
        for i in 0..5 {
            assert!(a.append(rec(&format!("locked{i}")), true));
        }
        // No key, no MAC key: no checkpoint, and the keystore head stays.
        assert!(a.checkpoint("every"));
        let info = a.info().unwrap();
        assert_eq!(info.head_seq, Some(head));
        assert!(!info.checked);
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &trust(&a));
        assert_eq!((r.problem.clone(), r.unsigned), (None, 5), "{r:?}");
        // Unlocked again: the next checkpoint signs them, and the head moves on.
        h.unlock(&Pin::new("1234")).unwrap();
        assert!(a.checkpoint("unlock"));
        let info = a.info().unwrap();
        assert!(info.checked && info.head_seq > Some(head));
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &trust(&a));
        assert_eq!((r.problem, r.unsigned), (None, 0));
        a.shutdown();
    }

    #[test]
    fn a_second_writer_is_refused_and_an_edited_key_row_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&AuditConfig::default(), &path, h.clone()).unwrap();
        assert!(matches!(
            Audit::open(&AuditConfig::default(), &path, h.clone()),
            Err(AuditError::InUse { .. })
        ));
        assert!(a.checkpoint("every"));
        // Another public key swapped into the row: its MAC no longer verifies.
        let row = h.ks.meta(META_KEY).unwrap().unwrap();
        let other = LocalKey::generate(&mut rand_core::OsRng);
        let (k, w, _) = row.split(':').fold(("", "", ""), |acc, p| match acc {
            ("", _, _) => (p, "", ""),
            (k, "", _) => (k, p, ""),
            (k, w, _) => (k, w, p),
        });
        let forged = format!(
            "{k}:{w}:{}",
            hex::encode(other.public_key().to_sec1_compressed())
        );
        h.ks.set_meta(META_KEY, &forged).unwrap();
        assert!(!a.info().unwrap().checked);
        assert!(matches!(
            h.audit_signer(),
            Err(crate::error::AgentError::KeystoreTampered(
                Tampering::AuditKey
            ))
        ));
        a.shutdown();
    }

    #[test]
    fn a_log_replaced_by_a_directory_fails_and_a_moved_log_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&AuditConfig::default(), &path, h.clone()).unwrap();
        assert!(a.append(rec("before"), true));
        // Moved away (as an outside rotation would) and a directory put in its place. The
        // path is checked at most once per `sync_ms` (a request costs one `write`): noticed
        // within that, until then entries go on into the held (moved) file.
        std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::thread::sleep(Duration::from_millis(AuditConfig::default().sync_ms + 5));
        assert!(!a.append(rec("refused"), true));
        assert!(a.failing() && a.refuses());
        // The path free again: a new file continues the chain, nothing was lost or torn.
        std::fs::remove_dir(&path).unwrap();
        assert!(a.append(rec("after"), true));
        assert!(!a.failing());
        a.shutdown();
        let lines = keyward_audit::read_lines(&path).unwrap();
        let r = keyward_audit::verify(&lines, &trust(&a));
        assert_eq!(r.problem, None, "{r:?}");
        let ops: Vec<String> = lines
            .iter()
            .filter_map(|l| keyward_audit::parse_line(&l.text))
            .map(|p| p.entry.op)
            .collect();
        // The refused entry is not there; an `audit.lost` entry says one was lost.
        assert!(!ops.iter().any(|o| o == "refused"), "{ops:?}");
        let lost = lines
            .iter()
            .filter_map(|l| keyward_audit::parse_line(&l.text))
            .find(|p| p.entry.op == "audit.lost")
            .expect("an audit.lost entry");
        assert_eq!(
            lost.entry.detail.as_deref(),
            Some("1 entries could not be written while the log failed")
        );
        let at = |op: &str| ops.iter().position(|o| o == op).unwrap();
        assert!(
            at("before") < at("audit.lost") && at("audit.lost") < at("after"),
            "{ops:?}"
        );
    }

    #[test]
    fn concurrent_waiting_requests_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&AuditConfig::default(), &path, h.clone()).unwrap();
        assert!(a.flush());
        let before = a.stats();
        let (threads, each) = (16, 25);
        std::thread::scope(|s| {
            for t in 0..threads {
                let a = &a;
                s.spawn(move || {
                    for i in 0..each {
                        assert!(a.append(rec(&format!("t{t}-{i}")), true));
                    }
                });
            }
        });
        let after = a.stats();
        let (writes, syncs) = (after.writes - before.writes, after.syncs - before.syncs);
        let entries = (threads * each) as u64;
        assert_eq!(after.entries - before.entries, entries);
        // Each waiting request writes its own entry (one `write` on its own thread, no hand-off),
        // and the `fdatasync`s are shared: one per `sync_ms` timer, not one per entry.
        assert_eq!(writes, entries, "{writes} writes for {entries} entries");
        assert!(syncs < entries / 4, "{syncs} syncs for {entries} entries");
        eprintln!("group commit: {entries} entries in {writes} writes and {syncs} fdatasyncs");
        a.shutdown();
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &trust(&a));
        assert_eq!(r.problem, None);
    }

    #[test]
    fn a_log_that_cannot_be_opened_at_start_fails_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        std::fs::create_dir(&path).unwrap();
        let a = Audit::open(&AuditConfig::default(), &path, h.clone()).unwrap();
        assert!(a.failing() && a.refuses());
        assert!(!a.append(rec("refused"), true));
        std::fs::remove_dir(&path).unwrap();
        assert!(a.append(rec("works"), true));
        assert!(!a.failing());
        a.shutdown();
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &trust(&a));
        assert_eq!(r.problem, None, "{r:?}");
    }

    /// The configuration of the tests below: no timed sync during the test (10 s).
    fn slow_sync() -> AuditConfig {
        AuditConfig {
            sync_ms: 10_000,
            ..AuditConfig::default()
        }
    }

    fn head_in_keystore(h: &Hierarchy) -> Option<u64> {
        h.ks.meta(META_HEAD)
            .unwrap()
            .as_deref()
            .and_then(parse_head_row)
            .map(|h| h.0)
    }

    fn ops_in(path: &Path) -> Vec<String> {
        keyward_audit::read_lines(path)
            .unwrap()
            .iter()
            .filter_map(|l| keyward_audit::parse_line(&l.text))
            .map(|p| p.entry.op)
            .collect()
    }

    #[test]
    fn a_waiting_request_is_acknowledged_after_the_write_before_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&slow_sync(), &path, h.clone()).unwrap();
        assert!(a.flush());
        let (syncs, head) = (a.syncs(), head_in_keystore(&h));
        assert!(head.is_some());
        assert!(a.append(rec("written"), true));
        // In the file (a crash of the agent keeps it), not yet synced, and the keystore head
        // does not claim it (a power loss could still remove it).
        assert!(ops_in(&path).iter().any(|o| o == "written"));
        assert_eq!(a.syncs(), syncs);
        assert_eq!(head_in_keystore(&h), head);
        // A flush syncs, and the head follows.
        assert!(a.flush());
        assert_eq!(a.syncs(), syncs + 1);
        assert!(head_in_keystore(&h) > head);
        // Shutdown syncs what it wrote last (agent.stop and its checkpoint), head included.
        assert!(a.append(rec("last"), false));
        a.shutdown();
        assert_eq!(a.syncs(), syncs + 2);
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &trust(&a));
        assert_eq!((r.problem.clone(), r.unsigned), (None, 0), "{r:?}");
        assert!(r.head_matched, "{r:?}");
        assert_eq!(
            ops_in(&path).last().map(String::as_str),
            Some(CHECKPOINT_OP)
        );
    }

    #[test]
    fn a_delayed_sync_does_not_delay_the_acknowledgement_unless_sync_ms_is_0() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let delay = Duration::from_millis(1500);
        for (sync_ms, waits_for_sync) in [(10_000, false), (0, true)] {
            let path = dir.path().join(format!("audit-{sync_ms}.log"));
            let cfg = AuditConfig {
                sync_ms,
                ..AuditConfig::default()
            };
            let a = Audit::open(&cfg, &path, h.clone()).unwrap();
            assert!(a.flush());
            a.hooks
                .sync_delay_ms
                .store(delay.as_millis() as u64, Ordering::Relaxed);
            let t = Instant::now();
            assert!(a.append(rec("timed"), true));
            let took = t.elapsed();
            assert_eq!(took >= delay, waits_for_sync, "sync_ms {sync_ms}: {took:?}");
            a.hooks.sync_delay_ms.store(0, Ordering::Relaxed);
            a.shutdown();
        }
    }

    #[test]
    fn a_failed_sync_fails_the_log_cuts_what_it_did_not_sync_and_counts_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&slow_sync(), &path, h.clone()).unwrap();
        assert!(a.append(rec("synced"), true));
        assert!(a.flush());
        a.hooks.fail_sync.store(true, Ordering::Relaxed);
        for i in 0..3 {
            // Acknowledged: written; the failure comes with the sync.
            assert!(a.append(rec(&format!("unsynced{i}")), true));
        }
        assert!(!a.failing());
        assert!(!a.flush(), "the sync fails");
        assert!(a.failing() && a.refuses());
        // Cut back to what was synced: no entry the disk may not have.
        assert!(!ops_in(&path).iter().any(|o| o.starts_with("unsynced")));
        // While failing, the retry must reach the disk: with syncs still failing it is refused.
        assert!(!a.append(rec("retry"), true));
        assert!(a.refuses());
        a.hooks.fail_sync.store(false, Ordering::Relaxed);
        assert!(a.append(rec("works"), true));
        assert!(!a.failing());
        a.shutdown();
        let lines = keyward_audit::read_lines(&path).unwrap();
        let r = keyward_audit::verify(&lines, &trust(&a));
        assert_eq!(r.problem, None, "{r:?}");
        assert!(r.head_matched, "{r:?}");
        let lost = lines
            .iter()
            .filter_map(|l| keyward_audit::parse_line(&l.text))
            .find(|p| p.entry.op == "audit.lost")
            .expect("an audit.lost entry");
        // The three cut entries and the refused retry.
        assert_eq!(
            lost.entry.detail.as_deref(),
            Some("4 entries could not be written while the log failed")
        );
    }

    /// Wait (at most 10 s) until `cond` holds.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn syncing(a: &Audit) -> bool {
        a.writer.lock().syncing
    }

    #[test]
    fn a_timed_sync_holds_up_no_request_and_marks_synced_only_what_it_covered() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let cfg = AuditConfig {
            sync_ms: 20,
            ..AuditConfig::default()
        };
        let a = Audit::open(&cfg, &path, h.clone()).unwrap();
        assert!(a.flush());
        let head = head_in_keystore(&h).unwrap();
        let delay = Duration::from_millis(1500);
        a.hooks
            .sync_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
        assert!(a.append(rec("covered"), true));
        // The timer's sync starts and takes `delay`; requests meanwhile only write.
        eventually("the timed sync started", || syncing(&a));
        let t = Instant::now();
        for i in 0..3 {
            assert!(a.append(rec(&format!("during{i}")), true));
        }
        assert!(
            t.elapsed() < delay / 3,
            "requests waited for the sync: {:?}",
            t.elapsed()
        );
        assert!(syncing(&a), "still in the first sync");
        assert!(ops_in(&path).iter().any(|o| o == "during2"));
        // The first sync records the head it covered, not the entries written during it.
        eventually("the first sync's head", || {
            head_in_keystore(&h) != Some(head)
        });
        assert_eq!(head_in_keystore(&h), Some(head + 1));
        a.hooks.sync_delay_ms.store(0, Ordering::Relaxed);
        // The entries written during it stay dirty, and the next sync takes them.
        assert!(a.flush());
        assert_eq!(head_in_keystore(&h), Some(head + 4));
        a.shutdown();
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &trust(&a));
        assert_eq!(r.problem, None, "{r:?}");
        assert!(r.head_matched, "{r:?}");
    }

    #[test]
    fn a_timed_sync_that_fails_cuts_and_counts_what_was_written_during_it() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let cfg = AuditConfig {
            sync_ms: 20,
            ..AuditConfig::default()
        };
        let a = Audit::open(&cfg, &path, h.clone()).unwrap();
        assert!(a.append(rec("synced"), true));
        assert!(a.flush());
        a.hooks.sync_delay_ms.store(500, Ordering::Relaxed);
        a.hooks.fail_sync.store(true, Ordering::Relaxed);
        assert!(a.append(rec("before"), true));
        eventually("the timed sync started", || syncing(&a));
        // Written (and acknowledged) while the sync runs: the failure cuts it too.
        assert!(a.append(rec("during"), true));
        eventually("the failed sync fails the log", || a.failing());
        assert!(a.refuses());
        let ops = ops_in(&path);
        assert!(
            !ops.iter().any(|o| o == "before" || o == "during"),
            "{ops:?}"
        );
        a.hooks.fail_sync.store(false, Ordering::Relaxed);
        a.hooks.sync_delay_ms.store(0, Ordering::Relaxed);
        assert!(a.append(rec("works"), true));
        assert!(!a.failing());
        a.shutdown();
        let lines = keyward_audit::read_lines(&path).unwrap();
        let r = keyward_audit::verify(&lines, &trust(&a));
        assert_eq!(r.problem, None, "{r:?}");
        assert!(r.head_matched, "{r:?}");
        let lost = lines
            .iter()
            .filter_map(|l| keyward_audit::parse_line(&l.text))
            .find(|p| p.entry.op == "audit.lost")
            .expect("an audit.lost entry");
        assert_eq!(
            lost.entry.detail.as_deref(),
            Some("2 entries could not be written while the log failed")
        );
    }

    #[test]
    fn a_request_costs_one_write_and_the_path_is_checked_once_per_sync_ms() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&slow_sync(), &path, h.clone()).unwrap();
        assert!(a.append(rec("first"), true));
        let checked = a.writer.lock().checked_at;
        assert!(checked.is_some());
        let before = a.stats();
        for i in 0..50 {
            assert!(a.append(rec(&format!("e{i}")), true));
        }
        let after = a.stats();
        assert_eq!(after.writes - before.writes, 50);
        assert_eq!(after.syncs, before.syncs);
        // No path check within `sync_ms` (10 s here) of the last one.
        assert_eq!(a.writer.lock().checked_at, checked);
        a.shutdown();
    }

    use crate::error::Tampering;

    /// Blocks the writer thread's next checkpoint signature (with the lock released) until
    /// `go` is sent or dropped; `started` says it got there.
    fn block_signing(a: &Audit) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (started_tx, started) = mpsc::channel::<()>();
        let (go, go_rx) = mpsc::channel::<()>();
        let (started_tx, go_rx) = (Mutex::new(started_tx), Mutex::new(go_rx));
        a.writer.lock().before_sign = Some(Arc::new(move || {
            let _ = lock(&started_tx).send(());
            let _ = lock(&go_rx).recv();
        }));
        (started, go)
    }

    /// `append` on another thread: its outcome, if it came within 10 s.
    fn append_from_another_thread(a: &Arc<Audit>, op: &str) -> Option<bool> {
        let (done_tx, done) = mpsc::channel();
        let (a, op) = (a.clone(), op.to_string());
        std::thread::spawn(move || {
            let _ = done_tx.send(a.append(rec(&op), true));
        });
        done.recv_timeout(Duration::from_secs(10)).ok()
    }

    #[test]
    fn a_checkpoint_is_signed_outside_the_writers_lock_and_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let cfg = AuditConfig {
            checkpoint_every: 5,
            ..AuditConfig::default()
        };
        let a = Audit::open(&cfg, &path, h.clone()).unwrap();
        assert!(a.flush());
        let (started, go) = block_signing(&a);
        // agent.start and four more: the fifth entry makes a checkpoint due (entry 5 signed).
        for i in 0..4 {
            assert!(a.append(rec(&format!("before{i}")), true));
        }
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer thread signs the due checkpoint");
        // The signature is being made: requests still write (and are acknowledged).
        for i in 0..3 {
            assert_eq!(
                append_from_another_thread(&a, &format!("during{i}")),
                Some(true),
                "a request waited for the checkpoint's signature"
            );
        }
        drop(go);
        assert!(a.flush());
        a.writer.lock().before_sign = None;
        let lines = keyward_audit::read_lines(&path).unwrap();
        let parsed: Vec<_> = lines
            .iter()
            .map(|l| keyward_audit::parse_line(&l.text).unwrap().entry)
            .collect();
        let ops: Vec<&str> = parsed.iter().map(|e| e.op.as_str()).collect();
        assert_eq!(
            &ops[4..9],
            ["before3", "during0", "during1", "during2", CHECKPOINT_OP],
            "{ops:?}"
        );
        // It signs the snapshot (entry 5, `before3`), not the entry just before it.
        let t = trust(&a);
        let key = t.key.unwrap();
        let hash5 = keyward_audit::parse_line(&lines[4].text).unwrap().stored;
        assert_eq!(
            keyward_audit::signed_entry(&parsed[8], &key).unwrap(),
            (5, hash5)
        );
        let r = keyward_audit::verify(&lines, &t);
        assert_eq!(r.problem, None, "{r:?}");
        assert_eq!((r.signed_through, r.unsigned), (Some(9), 3), "{r:?}");
        assert!(r.head_matched, "{r:?}");
        // The entries it did not cover are counted towards the next one; the shutdown's
        // checkpoint signs the end.
        a.shutdown();
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &trust(&a));
        assert_eq!((r.problem.clone(), r.unsigned), (None, 0), "{r:?}");
    }

    #[test]
    fn a_failure_while_a_checkpoint_is_signed_still_refuses_and_the_signature_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        h.init(&Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        // Every entry synced by its request: a failed sync cuts the file under the signer.
        let cfg = AuditConfig {
            checkpoint_every: 3,
            sync_ms: 0,
            ..AuditConfig::default()
        };
        let a = Audit::open(&cfg, &path, h.clone()).unwrap();
        assert!(a.flush());
        let (started, go) = block_signing(&a);
        assert!(a.append(rec("before0"), true));
        assert!(a.append(rec("before1"), true));
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer thread signs the due checkpoint");
        a.hooks.fail_sync.store(true, Ordering::Relaxed);
        assert_eq!(
            append_from_another_thread(&a, "during"),
            Some(false),
            "the failed sync refuses the request"
        );
        assert!(a.refuses());
        a.hooks.fail_sync.store(false, Ordering::Relaxed);
        drop(go);
        // The signature made while the file was cut is not used; the checkpoint that is still
        // due is made again over what survived (the thread's next batch), after `before1` and
        // the `audit.lost` entry that counts the cut one.
        assert!(a.flush());
        a.writer.lock().before_sign = None;
        assert_eq!(
            ops_in(&path),
            [
                "agent.start",
                "before0",
                "before1",
                "audit.lost",
                CHECKPOINT_OP
            ]
        );
        assert!(a.append(rec("works"), true));
        assert!(!a.refuses());
        a.shutdown();
        let r = keyward_audit::verify(&keyward_audit::read_lines(&path).unwrap(), &trust(&a));
        assert_eq!((r.problem.clone(), r.unsigned), (None, 0), "{r:?}");
    }
}
