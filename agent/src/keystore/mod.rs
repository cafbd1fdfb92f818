//! The keystore: wrapped keys and their metadata, behind one interface with a backend under it.
//!
//! One record per key (root, KEK, DEK, keypair, secret, integrity key) with the fields
//! ARCHITECTURE.md lists: id, kind, label, parent, scheme, wrapped bytes, public key, purpose,
//! version, times and state; DEK versions, revocations, each KEK's wraps under the other enrolled
//! roots, the KEK rotation journal, and the agent's `meta` rows. It must never hold a key in the
//! clear: every key material column is wrapped by its parent (or, for the root, is only a
//! reference to where the root lives).
//!
//! Integrity (schema v4): every row carries `mac`, an HMAC-SHA256 under the keystore MAC key
//! ([`MacKey`], itself a key of the hierarchy, loaded by the hierarchy while unlocked) over a
//! canonical, length-prefixed encoding of every other column (`records.rs`: `record_body` and
//! its siblings, each with its own domain string). While a MAC key is loaded, every read checks
//! it — the backend is the one place records are verified — and a missing or wrong MAC is
//! [`KeystoreError::Tampered`], naming the record; every write MACs what it writes.
//!
//! Layout:
//! - `records.rs`: everything that does not depend on where rows are stored (record types, MAC
//!   bodies and domains, [`MacKey`], [`MacState`], [`MetaMac`], page and cursor types). Every
//!   backend MACs the same bytes, so `keystore migrate` (`migrate.rs`) checks a copied row by its
//!   MAC under the same key.
//! - `sqlite.rs` + `sqlite_roots.rs`: the SQLite backend ([`SqliteStore`]): every SQL statement
//!   and every `rusqlite` type. No `rusqlite` type appears in [`Keystore`]'s API
//!   ([`KeystoreError::Sql`] carries an opaque [`SqlError`]).
//! - `postgres.rs` + `postgres/*`: the PostgreSQL backend ([`PgStore`]): a database many agents
//!   share, rows scoped by identity with row-level security; `postgres/copy.rs` is its side of
//!   `keystore migrate`. It has no file: [`Keystore::path`] is `None`, [`Keystore::location`]
//!   names it.
//! - `migrate.rs` (+ `sqlite_copy.rs`, the SQLite side): `keystore migrate`, a copy of every
//!   table into a new, empty keystore, checked record by record ([`Keystore::migrate_to`]).
//! - this file: [`Keystore`], the type callers use, and [`KeystoreError`].
//!
//! Dispatch: [`Keystore`] holds a [`Backend`] enum and forwards each method with the
//! `dispatch!` macro (one `match`, one arm per backend). An enum rather than a trait object,
//! because several methods are generic or take closures (`update_limits<E>`,
//! `page`'s size function) and a trait with those is not object-safe; the enum also costs no
//! allocation or indirect call on the paths measured per request. A backend is a type whose
//! public methods have the same names, arguments and results as [`Keystore`]'s; adding one is a
//! variant in [`Backend`], an arm in `dispatch!`, and a way to open it (see
//! [`Keystore::open_location`]).
//!
//! State that is not SQL lives in the backend, not here: the MAC key (a [`MacState`] each backend
//! holds, because a re-keying commit must load the new key before the backend releases its
//! connection) and the generation counter ([`Keystore::generation`]: SQLite counts its own
//! changes on its connection; a shared database counts changes made by every agent). The
//! façade adds nothing to what the backend answers.
//!
//! It must never hand out a row that does not verify while the MAC key is loaded, never write a
//! MAC'd row without its MAC, and never expose a backend's client types.

mod migrate;
pub mod postgres;
mod records;
mod sqlite;
#[cfg(test)]
mod tests;

pub use migrate::{MigrateError, MigrateReport};
pub use postgres::PgStore;
pub use records::*;
pub use sqlite::{CheckStop, SqlError, SqliteStore};
#[cfg(test)]
pub(crate) use sqlite::{REKEY_CONFLICTS, REKEY_FAIL};

use std::path::{Path, PathBuf};
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The SQLite backend failed (its text says what a full disk or a read-only file system
    /// means).
    #[error("keystore {op}: {source}")]
    Sql { op: &'static str, source: SqlError },
    #[error("keystore {op}: {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keystore schema version {found} is newer than this agent's {supported}")]
    TooNew { found: i64, supported: i64 },
    #[error("keystore record {id} is corrupt: {what}")]
    Corrupt { id: String, what: String },
    /// A record's MAC is missing or does not verify: it was written by something other than this
    /// agent (or a copy of it was moved between records).
    #[error("keystore record {id} was modified outside the agent ({what}): refusing to use it; restore the keystore from a backup")]
    Tampered { id: String, what: String },
    /// SQLite's own checks fail: the file is damaged. It is never re-created.
    #[error("keystore {path} is damaged ({detail}): keywardd will not use or re-create it; restore it from a backup")]
    Damaged { path: PathBuf, detail: String },
    /// The keystore's server cannot be reached (a database backend: down, refusing, or not
    /// answering within its connect timeout). Nothing was changed; work resumes when it is back.
    #[error("keystore {op}: the keystore is unavailable ({what}); nothing was changed: retry when it is back")]
    Unavailable { op: &'static str, what: String },
    /// Another agent changed the record since it was read (a shared backend's optimistic
    /// concurrency: the row version moved). Nothing was changed; read again and retry.
    #[error("keystore {op}: record {id} was changed by another agent meanwhile; nothing was changed: retry")]
    Conflict { op: &'static str, id: String },
    /// A database backend's server refused a statement or the connection's configuration
    /// (authentication, a missing database, a constraint): its text says what it said.
    #[error("keystore {op}: the database refused it: {what}")]
    Database { op: &'static str, what: String },
}

impl KeystoreError {
    /// The wire error code. Every variant is listed (no catch-all).
    pub fn code(&self) -> keyward_proto::ErrorCode {
        use keyward_proto::ErrorCode;
        match self {
            KeystoreError::Tampered { .. } => ErrorCode::KeystoreTampered,
            KeystoreError::Unavailable { .. } => ErrorCode::KeystoreUnavailable,
            KeystoreError::Conflict { .. } => ErrorCode::Conflict,
            KeystoreError::Sql { .. }
            | KeystoreError::Io { .. }
            | KeystoreError::TooNew { .. }
            | KeystoreError::Corrupt { .. }
            | KeystoreError::Damaged { .. }
            | KeystoreError::Database { .. } => ErrorCode::KeystoreError,
        }
    }
}

/// The backend a [`Keystore`] runs on.
pub enum Backend {
    /// The embedded default: one SQLite file.
    Sqlite(SqliteStore),
    /// A shared PostgreSQL database (`postgres://...`).
    Postgres(PgStore),
}

/// Forward a call to whichever backend the keystore runs on: `dispatch!(self, s => s.f(args))`.
/// A new backend is one more arm here.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($s) => $call,
            Backend::Postgres($s) => $call,
        }
    };
}

/// The keystore callers use: the records of one identity, on whichever [`Backend`] the config
/// names. Cheap to share (`Arc`); every method is safe to call from several threads.
pub struct Keystore {
    backend: Backend,
    /// Test builds: how many times the `devices` table was read (one query, a PostgreSQL round
    /// trip, each), to count what a code path costs.
    #[cfg(test)]
    device_reads: std::sync::atomic::AtomicU64,
}

impl Keystore {
    /// Open (creating if needed) the SQLite keystore at `path`; its directory is made 0700 and
    /// the file 0600 (created so, never chmod-ed down from the umask's mode). A damaged file
    /// (SQLite's `integrity_check` fails) is refused with [`KeystoreError::Damaged`] naming it.
    pub fn open(path: &Path) -> Result<Keystore, KeystoreError> {
        SqliteStore::open(path).map(Keystore::from)
    }

    /// Like [`open`](Self::open), but without SQLite's full check of a keystore that needs no
    /// migration (one that does is still checked before it is migrated): the caller runs
    /// [`check_file`](Self::check_file) later (`keywardd` does, just after binding its socket;
    /// `integrity.rs`). The flag says whether the check is still to do.
    pub fn open_deferring_check(path: &Path) -> Result<(Keystore, bool), KeystoreError> {
        SqliteStore::open_deferring_check(path).map(|(s, d)| (Keystore::from(s), d))
    }

    /// Open the keystore a `keystore` location names: a PostgreSQL location
    /// (`postgres://...` or a libpq `host=... dbname=...` string), else an SQLite file path.
    pub fn open_location(location: &str) -> Result<Keystore, KeystoreError> {
        if postgres::looks_like_postgres(location) {
            let loc =
                postgres::PgLocation::parse(location).map_err(|what| KeystoreError::Database {
                    op: "parse the PostgreSQL location",
                    what,
                })?;
            return Keystore::open_postgres(&loc);
        }
        Keystore::open(Path::new(location))
    }

    /// Open (migrating its schema if needed) the PostgreSQL keystore at `loc`. A database that
    /// is down is [`KeystoreError::Unavailable`] within the location's connect timeout.
    pub fn open_postgres(loc: &postgres::PgLocation) -> Result<Keystore, KeystoreError> {
        PgStore::open(loc).map(Keystore::from)
    }

    /// SQLite's full `integrity_check` of the keystore file at `path`, through a read-only
    /// connection of its own (the agent's connection keeps serving meanwhile). A damaged file
    /// is [`KeystoreError::Damaged`] naming it.
    pub fn check_file(path: &Path) -> Result<(), KeystoreError> {
        SqliteStore::check_file(path)
    }

    /// [`Keystore::check_file`] that `stop` can end early (`sqlite::CheckStop`).
    pub fn check_file_with(path: &Path, stop: &CheckStop) -> Result<(), KeystoreError> {
        SqliteStore::check_file_with(path, stop)
    }

    /// The backend (for what only one backend has: tests, and `migrate`'s destination checks).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The MAC key loaded now (`migrate_to` loads a copy into the destination).
    pub(crate) fn mac_key(&self) -> Option<std::sync::Arc<MacKey>> {
        dispatch!(self, s => s.mac_key())
    }

    /// How many rows each table holds.
    pub fn row_counts(&self) -> Result<RowCounts, KeystoreError> {
        dispatch!(self, s => s.row_counts())
    }

    /// Every row of every table, each checked against its MAC (needs the MAC key): one
    /// consistent read, for `migrate_to`.
    pub fn snapshot(&self) -> Result<Snapshot, KeystoreError> {
        dispatch!(self, s => s.snapshot())
    }

    /// Write `snapshot` into this keystore (it must be empty) in one transaction, each row MAC'd
    /// under the loaded key.
    pub fn load_snapshot(&self, snapshot: &Snapshot) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.load_snapshot(snapshot))
    }

    /// Whether a read answers in microseconds from this process (an SQLite file), rather than
    /// over a network round trip that can take up to the connect timeout (PostgreSQL): a
    /// request on a keystore that is not local never runs on the socket's own task
    /// (`Service::runs_inline`, ARCHITECTURE.md "Where a request runs").
    pub fn is_local(&self) -> bool {
        matches!(self.backend, Backend::Sqlite(_))
    }

    /// The schema version this agent writes.
    pub const SCHEMA_VERSION: i64 = SqliteStore::SCHEMA_VERSION;

    /// Change a key's usage limits (`usage`, `not_after`) and `exportable`, re-MACing the row,
    /// in one transaction: `change` sees the row as it is (MAC-checked) and answers the new
    /// values, or refuses. Returns the record after the change, or `None` when there is no such
    /// key.
    pub fn update_limits<E: From<KeystoreError>>(
        &self,
        id: &Uuid,
        change: impl FnOnce(&KeyRecord) -> Result<(Option<u32>, Option<u64>, bool), E>,
    ) -> Result<Option<KeyRecord>, E> {
        dispatch!(self, s => s.update_limits(id, change))
    }

    /// The keystore's file, for a backend that is one (SQLite); `None` for a database. Callers
    /// that place files beside the keystore (the audit log), check it (`integrity.rs`) or copy
    /// it (backups) use this and do something else, or refuse, without one.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// Where the keystore is, for logs, `status` and errors: the SQLite file's path, or the
    /// database's location (`postgres://user@host:port/db (sslmode ...)`: never a password).
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path().display().to_string(),
            Backend::Postgres(p) => p.location().display(),
        }
    }

    /// Load (at unlock) or drop (at lock) the MAC key. While loaded every read is checked.
    pub fn set_mac_key(&self, key: Option<MacKey>) {
        dispatch!(self, s => s.set_mac_key(key))
    }

    /// A value that changes whenever this process writes the keystore's records (every row
    /// inserted, updated or deleted, committed or not; not the metadata rows of
    /// [`Keystore::set_metas`]) or loads or drops the MAC key. Caches built from records (the
    /// SSH door's identity index) compare it to know they are stale. Changes made by another
    /// process to the file are not seen; the agent is the keystore's only writer.
    pub fn generation(&self) -> (u64, u64) {
        dispatch!(self, s => s.generation())
    }

    /// Run `f`, one request on this thread, reading the keystore file's `data_version` (what
    /// makes another process's commits move [`Keystore::generation`]) at most once: each read
    /// costs two `fcntl` locks, and one request took up to three. A commit by another process
    /// during the request is seen from the next request on.
    pub fn one_request<T>(f: impl FnOnce() -> T) -> T {
        sqlite::one_request(f)
    }

    /// [`Keystore::generation`] without waiting: `None` while another thread holds the
    /// connection (async callers then take their slow path rather than block a worker).
    pub fn try_generation(&self) -> Option<(u64, u64)> {
        dispatch!(self, s => s.try_generation())
    }

    pub fn has_mac_key(&self) -> bool {
        dispatch!(self, s => s.has_mac_key())
    }

    /// The MAC of `body` under the loaded key, if one is loaded.
    pub fn mac_tag(&self, body: &[u8]) -> Option<Vec<u8>> {
        dispatch!(self, s => s.mac_tag(body))
    }

    /// Check `tag` over `body` with the loaded key; `None` when no key is loaded.
    pub fn mac_verify(&self, body: &[u8], tag: &[u8]) -> Option<bool> {
        dispatch!(self, s => s.mac_verify(body, tag))
    }

    /// Insert a new record (MAC'd when the key is loaded).
    pub fn insert(&self, r: &KeyRecord) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.insert(r))
    }

    /// Insert many records in one transaction, each MAC'd as [`Keystore::insert`] does: all or
    /// none. For bulk loads (the keystore-scale benchmark fills a million keys this way; one
    /// transaction per record would be one `fsync` each).
    pub fn insert_many(&self, records: &[KeyRecord]) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.insert_many(records))
    }

    /// The record with this id, of any kind.
    pub fn get(&self, id: &Uuid) -> Result<Option<KeyRecord>, KeystoreError> {
        dispatch!(self, s => s.get(id))
    }

    /// All records of `kind`, optionally only the children of `parent`.
    pub fn list(
        &self,
        kind: KeyKind,
        parent: Option<&Uuid>,
    ) -> Result<Vec<KeyRecord>, KeystoreError> {
        dispatch!(self, s => s.list(kind, parent))
    }

    /// One page of a list: the records matching `filter` after `after`, in (created, id) order,
    /// each checked against its MAC as [`Keystore::list`] does. Keyset pagination: a page starts
    /// strictly after the cursor's (created, id), so keys added or deleted between pages never
    /// make a later page skip or repeat a key that was there throughout; each query is a range
    /// scan of the page's length on an index in list order (`keys_page_*`).
    pub fn page(
        &self,
        filter: &ListFilter,
        after: Option<&Cursor>,
        size: &PageSize<'_>,
    ) -> Result<Page, KeystoreError> {
        dispatch!(self, s => s.page(filter, after, size))
    }

    /// The integrity-key records, unchecked: they are read to load the MAC key, before there is
    /// one. The hierarchy checks them (with [`Keystore::get`]) once it is loaded.
    pub fn integrity_records(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        dispatch!(self, s => s.integrity_records())
    }

    /// The root record, if `init` has run.
    pub fn root(&self) -> Result<Option<KeyRecord>, KeystoreError> {
        dispatch!(self, s => s.root())
    }

    /// The active key with this node name.
    pub fn by_name(&self, name: &str) -> Result<Option<KeyRecord>, KeystoreError> {
        dispatch!(self, s => s.by_name(name))
    }

    /// Remove a key. Refused (a `Sql` error) while other keys name it as parent or issuer.
    pub fn delete(&self, id: &Uuid) -> Result<bool, KeystoreError> {
        dispatch!(self, s => s.delete(id))
    }

    /// Replace a key with its successor in one transaction: the old one gets `state`, the new
    /// one is inserted, and a revocation (if any) is kept. A crash leaves all of it or none.
    pub fn replace(
        &self,
        old: &Uuid,
        state: KeyState,
        new: &KeyRecord,
        revocation: Option<&Revocation>,
    ) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.replace(old, state, new, revocation))
    }

    /// Replace the cluster root in one transaction (`node.root_rotate`): the old root gets
    /// `state`, the new root is inserted, a revocation (if any) is kept, and every child in
    /// `children` gets the new root as issuer and its new delegation (rows re-MACed), and the
    /// `metas` rows are written (the agent policy re-signed by the new root). A crash
    /// leaves all of it or none.
    pub fn replace_root(
        &self,
        old: &Uuid,
        state: KeyState,
        new: &KeyRecord,
        revocation: Option<&Revocation>,
        children: &[(Uuid, Vec<u8>)],
        metas: &[(&str, Option<&str>)],
    ) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.replace_root(old, state, new, revocation, children, metas))
    }

    /// Mark a key revoked and keep the signed revocation, in one transaction.
    /// Set (or, with `None`, remove) a key's certificate, re-MACing the row: read (checked),
    /// change, write back. `Ok(false)` when there is no such key.
    pub fn set_certificate(&self, id: &Uuid, cert: Option<Vec<u8>>) -> Result<bool, KeystoreError> {
        dispatch!(self, s => s.set_certificate(id, cert))
    }

    pub fn revoke(&self, r: &Revocation) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.revoke(r))
    }

    /// Every stored revocation, oldest first (each checked while the MAC key is loaded).
    pub fn revocations(&self) -> Result<Vec<Revocation>, KeystoreError> {
        dispatch!(self, s => s.revocations())
    }

    /// Store the integrity-key records (and, at `init`, the root record before them) MAC'd under
    /// the key now loaded, in one transaction with the meta clean-up. With `adopt` (the
    /// trust-on-upgrade step after the v4 migration) every row that has no MAC yet gets one:
    /// whatever the file held at that moment is trusted. Returns how many rows were adopted.
    pub fn install_integrity(
        &self,
        records: &[KeyRecord],
        adopt: bool,
        clear_meta: &[&str],
    ) -> Result<usize, KeystoreError> {
        dispatch!(self, s => s.install_integrity(records, adopt, clear_meta))
    }

    /// Replace the keystore MAC key (`root rotate --compromised`, at the new root's first
    /// unlock), in ONE transaction: every MAC'd row (keys, revocations, key versions, the KEK
    /// rotation journal, the KEK wraps, the root set and the `metas` rows that have a MAC) is
    /// checked against the key loaded now (a row that does not verify aborts it:
    /// [`KeystoreError::Tampered`]) and re-MAC'd under `new`; the old integrity records
    /// (`old_integrity`, children first) and their wraps go, `records` (the new integrity KEK and secret) and
    /// `wraps` (the new KEK under the other enrolled roots) come in MAC'd under `new`; `clear`
    /// meta rows are deleted and `set` rows written (their MACs, if any, made by the caller
    /// under `new`). `new` is loaded as the MAC key before the connection is released. Nothing
    /// of this is visible before the commit: a failure or a crash leaves everything under the
    /// old key. Returns how many rows were re-MAC'd.
    #[allow(clippy::too_many_arguments)]
    pub fn rekey_integrity(
        &self,
        new: MacKey,
        old_integrity: &[Uuid],
        records: &[KeyRecord],
        wraps: &[KekWrap],
        metas: &[MetaMac],
        clear: &[&str],
        set: &[(&str, String)],
    ) -> Result<usize, KeystoreError> {
        dispatch!(self, s => s.rekey_integrity(new, old_integrity, records, wraps, metas, clear, set))
    }

    pub fn meta(&self, name: &str) -> Result<Option<String>, KeystoreError> {
        dispatch!(self, s => s.meta(name))
    }

    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.set_meta(name, value))
    }

    pub fn delete_meta(&self, name: &str) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.delete_meta(name))
    }

    /// Set (`Some`) or delete (`None`) several meta rows in one transaction.
    pub fn set_metas(&self, rows: &[(&str, Option<&str>)]) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.set_metas(rows))
    }

    /// [`Keystore::set_metas`] for rows written often (the audit chain head): on SQLite the
    /// disk flush runs after the connection is released (`SqliteStore::set_metas_flushed_unlocked`),
    /// so requests do not wait for it; as durable as `set_metas` once it returns.
    pub fn set_metas_flushed_unlocked(
        &self,
        rows: &[(&str, Option<&str>)],
    ) -> Result<(), KeystoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.set_metas_flushed_unlocked(rows),
            Backend::Postgres(p) => p.set_metas(rows),
        }
    }

    /// Record a KEK rotation as begun: the new KEK, wrapped under the root (MAC'd).
    pub fn rotation_begin(&self, r: &PendingRotation) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.rotation_begin(r))
    }

    /// Every KEK rotation begun and not finished, each checked.
    pub fn rotations_pending(&self) -> Result<Vec<PendingRotation>, KeystoreError> {
        dispatch!(self, s => s.rotations_pending())
    }

    /// Drop a rotation's journal (before its swap nothing refers to it, so this loses nothing
    /// but the work done).
    pub fn rotation_abandon(&self, kek: &Uuid) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.rotation_abandon(kek))
    }

    /// The wrapped secrets under `kek` that have no item yet: (record, version, wrapped).
    pub fn rotation_todo(
        &self,
        kek: &Uuid,
    ) -> Result<Vec<(KeyRecord, u32, Vec<u8>)>, KeystoreError> {
        dispatch!(self, s => s.rotation_todo(kek))
    }

    /// Progress of the pending rotation of `kek` (counts only, nothing decoded): `None` when
    /// none is pending, else (items rewrapped, wrapped secrets under the KEK: each child's
    /// current wrap and its older versions).
    pub fn rotation_progress(&self, kek: &Uuid) -> Result<Option<(u64, u64)>, KeystoreError> {
        dispatch!(self, s => s.rotation_progress(kek))
    }

    /// Store a batch of rewrapped children in one transaction (each MAC'd).
    pub fn rotation_put(&self, items: &[RotationItem]) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.rotation_put(items))
    }

    /// The swap, in one transaction: when every wrapped secret under the KEK has an item
    /// (checked inside the transaction, so nothing made meanwhile is missed), each child's
    /// wrap is replaced by its item (re-MAC'd), the KEK row gets the new wrap and its version
    /// plus one, and the journal is dropped. `Ok(None)` when some child has no item yet (the caller
    /// rewraps those and tries again); else the KEK's new version.
    pub fn rotation_swap(&self, pending: &PendingRotation) -> Result<Option<u32>, KeystoreError> {
        dispatch!(self, s => s.rotation_swap(pending))
    }

    /// Add version `r.version + 1` of DEK `id` with `wrapped`, and make it the newest, in one
    /// transaction (the key row is read, checked and re-MAC'd inside it). Returns the new
    /// version, or `None` when there is no such key.
    pub fn add_version(&self, id: &Uuid, wrapped: Vec<u8>) -> Result<Option<u32>, KeystoreError> {
        dispatch!(self, s => s.add_version(id, wrapped))
    }

    /// Version `version` (≥ 2) of key `id`, its MAC checked while the MAC key is loaded.
    pub fn version(&self, id: &Uuid, version: u32) -> Result<Option<KeyVersion>, KeystoreError> {
        dispatch!(self, s => s.version(id, version))
    }

    /// Set a key's minimum version, re-MACing the row. Returns the record as it was before, or
    /// `None` when there is no such key.
    pub fn set_min_version(&self, id: &Uuid, min: u32) -> Result<Option<KeyRecord>, KeystoreError> {
        dispatch!(self, s => s.set_min_version(id, min))
    }

    /// Revoke key `id` and every key wrapped under it (its children, for a KEK) that is not
    /// revoked yet, in one transaction, re-MACing each row. Returns the ids revoked (`id`
    /// first; empty when there is no such key).
    pub fn revoke_tree(&self, id: &Uuid) -> Result<Vec<Uuid>, KeystoreError> {
        dispatch!(self, s => s.revoke_tree(id))
    }

    /// The SSH flags of every active keypair that has any (records checked like every read).
    pub fn ssh_flags(&self) -> Result<Vec<(Uuid, SshFlags)>, KeystoreError> {
        dispatch!(self, s => s.ssh_flags())
    }

    /// Set a keypair's SSH flags, re-MACing the row; false when there is no such keypair.
    pub fn set_ssh_flags(&self, id: &Uuid, flags: SshFlags) -> Result<bool, KeystoreError> {
        dispatch!(self, s => s.set_ssh_flags(id, flags))
    }

    /// Insert a keypair with its SSH flags.
    pub fn insert_with_ssh_flags(
        &self,
        r: &KeyRecord,
        flags: SshFlags,
    ) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.insert_with_ssh_flags(r, flags))
    }

    /// Insert or replace a `devices` row (v11, `crate::devices`): MAC'd when the MAC key is
    /// loaded; an enrolled row needs it.
    pub fn device_put(&self, d: &DeviceRow) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.device_put(d))
    }

    /// One `devices` row; an enrolled one is checked while the MAC key is loaded.
    pub fn device_get(&self, id: &Uuid) -> Result<Option<DeviceRow>, KeystoreError> {
        dispatch!(self, s => s.device_get(id))
    }

    /// Every `devices` row in (created, id) order, enrolled rows checked.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, KeystoreError> {
        #[cfg(test)]
        self.device_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        dispatch!(self, s => s.devices())
    }

    pub fn device_delete(&self, id: &Uuid) -> Result<bool, KeystoreError> {
        dispatch!(self, s => s.device_delete(id))
    }

    /// Every root record, in (created, id) order: unchecked while locked (unlock reads them to
    /// find its root before the MAC key exists), checked while unlocked.
    pub fn roots(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        dispatch!(self, s => s.roots())
    }

    /// Every root record, each checked, and their ids checked against the MAC'd root set. A
    /// keystore from before v9 (one root, no set yet) gets its set written now. Needs the MAC
    /// key.
    pub fn roots_checked(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        dispatch!(self, s => s.roots_checked())
    }

    /// The wrap of `kek` under `root` (a `kek_wraps` row), checked while unlocked.
    pub fn kek_wrap(&self, kek: &Uuid, root: &Uuid) -> Result<Option<KekWrap>, KeystoreError> {
        dispatch!(self, s => s.kek_wrap(kek, root))
    }

    /// `kek`'s wrap under `root`, never MAC-checked: to open an integrity KEK that another
    /// device made while this agent holds the old MAC key (`devices.rs`
    /// `follow_integrity_rekey`, which checks it under the key it derives).
    pub fn kek_wrap_unchecked(
        &self,
        kek: &Uuid,
        root: &Uuid,
    ) -> Result<Option<KekWrap>, KeystoreError> {
        dispatch!(self, s => s.kek_wrap_unchecked(kek, root))
    }

    /// Every `kek_wraps` row of one KEK, checked while unlocked.
    pub fn kek_wraps_of(&self, kek: &Uuid) -> Result<Vec<KekWrap>, KeystoreError> {
        dispatch!(self, s => s.kek_wraps_of(kek))
    }

    /// Every record the enrolled roots must wrap (KEKs and the integrity KEK), checked.
    pub fn wrapped_keks(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        dispatch!(self, s => s.wrapped_keks())
    }

    /// Enroll a root: its record and its wrap of every KEK, with the root set, in one
    /// transaction. `Ok(false)` (nothing written) when a KEK has no wrap in `wraps` (one was made
    /// meanwhile: the caller wraps it too and tries again).
    pub fn add_root(&self, root: &KeyRecord, wraps: &[KekWrap]) -> Result<bool, KeystoreError> {
        dispatch!(self, s => s.add_root(root, wraps))
    }

    /// A new KEK and its wraps under the other enrolled roots, in one transaction. Refused
    /// (`Ok(false)`, nothing written) when an enrolled root other than the KEK's parent has no
    /// wrap in `wraps` (a root was enrolled meanwhile).
    pub fn insert_kek(&self, kek: &KeyRecord, wraps: &[KekWrap]) -> Result<bool, KeystoreError> {
        dispatch!(self, s => s.insert_kek(kek, wraps))
    }

    /// Remove an enrolled root, in one transaction: every KEK whose parent it is moves to
    /// another root's wrap (`prefer`'s when it has one), its wraps and its record go, and the
    /// root set is rewritten. Refused (`Corrupt`) for a KEK with no other wrap.
    pub fn remove_root(&self, id: &Uuid, prefer: &Uuid) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.remove_root(id, prefer))
    }

    /// `root.rotate`'s commit, in one transaction: `new` becomes the parent of every KEK (the
    /// integrity KEK included): its `kek_wraps` row moves into the KEK row, and the previous
    /// parent's wrap moves to `kek_wraps` (or goes, when that parent is `old`); then every wrap
    /// under `old` goes, `old`'s record goes and the root set is rewritten. Refused (`Corrupt`,
    /// nothing written) when a KEK has no wrap under `new`, or `old`/`new` is not enrolled.
    /// `meta` (names and values) is written in the same transaction (`--compromised`: the KEKs
    /// to rotate at the next unlock, and its MAC). Returns the KEKs whose parent changed.
    pub fn rotate_root(
        &self,
        old: &Uuid,
        new: &Uuid,
        meta: &[(&str, &str)],
    ) -> Result<usize, KeystoreError> {
        dispatch!(self, s => s.rotate_root(old, new, meta))
    }

    /// Record a KEK rotation as begun (as [`Keystore::rotation_begin`]) with the new KEK's wrap
    /// under every enrolled root (the running root's included), in one transaction.
    pub fn rotation_begin_wraps(
        &self,
        r: &PendingRotation,
        wraps: &[KekWrap],
    ) -> Result<(), KeystoreError> {
        dispatch!(self, s => s.rotation_begin_wraps(r, wraps))
    }

    /// The journaled wraps of a rotation of `kek`, checked while unlocked.
    pub fn rotation_wraps(&self, kek: &Uuid) -> Result<Vec<KekWrap>, KeystoreError> {
        dispatch!(self, s => s.rotation_wraps(kek))
    }
}

impl From<PgStore> for Keystore {
    fn from(s: PgStore) -> Keystore {
        Keystore {
            backend: Backend::Postgres(s),
            #[cfg(test)]
            device_reads: Default::default(),
        }
    }
}

impl From<SqliteStore> for Keystore {
    fn from(s: SqliteStore) -> Keystore {
        Keystore {
            backend: Backend::Sqlite(s),
            #[cfg(test)]
            device_reads: Default::default(),
        }
    }
}

#[cfg(test)]
impl Keystore {
    /// How many times the `devices` table was read so far.
    pub(crate) fn device_reads(&self) -> u64 {
        self.device_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tests: the SQLite connection (the keystore's own tests read and write rows directly).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        match &self.backend {
            Backend::Sqlite(s) => s.lock(),
            Backend::Postgres(_) => {
                panic!("Keystore::lock: the PostgreSQL backend has no SQLite connection")
            }
        }
    }
}
