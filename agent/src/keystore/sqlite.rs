//! The SQLite backend of the keystore (the embedded default): every SQL statement and every
//! `rusqlite` type of the keystore lives here and in `sqlite_roots.rs`, nowhere else.
//!
//! One row per key in `keys`, with WAL and `synchronous=FULL`, so a write that returned is on
//! disk; writes that replace keys run in transactions, so a crash leaves the old or the new state,
//! never neither. The schema is versioned (`PRAGMA user_version`) and migrated forward in one
//! transaction at open ([`MIGRATIONS`], append only). What a row's MAC covers is not decided here
//! but in `records.rs` (shared with every backend); this module reads and writes the columns and
//! checks or makes the MACs with the [`MacKey`] its [`MacState`] holds.
//!
//! The file is created 0600 (never wider, whatever the umask) and checked with SQLite's
//! `PRAGMA integrity_check` at open: a damaged file is [`KeystoreError::Damaged`], naming it, and
//! is never re-created. `keywardd` defers that check to just after its socket is up
//! ([`SqliteStore::open_deferring_check`], [`SqliteStore::check_file`], `integrity.rs`). On a
//! read-only file system an existing keystore is opened read-only (reads work, every write fails
//! with SQLite's `ReadOnly`); a full disk fails the write (`DiskFull`), rolled back. Both say so
//! in their message ([`SqlError`]).
//!
//! It must never hold a key in the clear, never write a MAC'd row without its MAC while a MAC key
//! is loaded, and never return a row that does not verify while one is loaded.

use super::records::*;
use super::KeystoreError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

#[path = "sqlite_copy.rs"]
mod copy;
#[path = "sqlite_devices.rs"]
mod devices;
#[path = "sqlite_roots.rs"]
mod roots;

/// An SQLite error, as [`KeystoreError::Sql`] carries it (no `rusqlite` type in the keystore's
/// API). Its text says what a full disk or a read-only file system means.
#[derive(Debug)]
pub struct SqlError(pub(super) rusqlite::Error);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&sql_text(&self.0))
    }
}

impl std::error::Error for SqlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// SQLite's text, with what it means for the two faults a person can fix: a full disk and a
/// read-only file system (nothing was changed either way: the transaction rolled back).
fn sql_text(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => format!(
            "the file system holding the keystore is full ({e}); nothing was changed: free some space and retry"
        ),
        Some(rusqlite::ErrorCode::ReadOnly) => format!(
            "the keystore is read-only ({e}): nothing was changed; reads still work"
        ),
        _ => e.to_string(),
    }
}

pub(super) fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> KeystoreError {
    move |source| KeystoreError::Sql {
        op,
        source: SqlError(source),
    }
}

/// Schema migrations: entry `n` takes the schema from version `n` to `n + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // v1: keys and agent metadata.
    "CREATE TABLE keys (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL CHECK (kind IN ('root', 'kek', 'dek', 'keypair')),
        label       TEXT,
        parent      TEXT REFERENCES keys(id),
        scheme      TEXT NOT NULL,
        wrapped     BLOB,
        public_key  BLOB,
        locator     TEXT,
        purpose     TEXT CHECK (purpose IS NULL OR purpose IN ('personal', 'sharing')),
        exportable  INTEGER NOT NULL DEFAULT 0,
        version     INTEGER NOT NULL DEFAULT 1,
        created     INTEGER NOT NULL,
        rotated     INTEGER,
        state       TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired', 'revoked'))
     );
     CREATE INDEX keys_by_parent ON keys(parent);
     CREATE INDEX keys_by_kind ON keys(kind);
     CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // v2: derivation secrets as a kind; node names, issuers and delegation statements; and
    // revocations. SQLite cannot change a CHECK constraint in place, so the table is rebuilt
    // (foreign keys are off during migrations, and checked before commit).
    "CREATE TABLE keys_v2 (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL CHECK (kind IN ('root', 'kek', 'dek', 'keypair', 'secret')),
        label       TEXT,
        parent      TEXT REFERENCES keys(id),
        scheme      TEXT NOT NULL,
        wrapped     BLOB,
        public_key  BLOB,
        locator     TEXT,
        purpose     TEXT CHECK (purpose IS NULL OR purpose IN ('personal', 'sharing')),
        exportable  INTEGER NOT NULL DEFAULT 0,
        version     INTEGER NOT NULL DEFAULT 1,
        created     INTEGER NOT NULL,
        rotated     INTEGER,
        state       TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired', 'revoked')),
        name        TEXT,
        issuer      TEXT REFERENCES keys(id),
        statement   BLOB
     );
     INSERT INTO keys_v2 (id, kind, label, parent, scheme, wrapped, public_key, locator, purpose,
                          exportable, version, created, rotated, state)
        SELECT id, kind, label, parent, scheme, wrapped, public_key, locator, purpose,
               exportable, version, created, rotated, state FROM keys;
     DROP TABLE keys;
     ALTER TABLE keys_v2 RENAME TO keys;
     CREATE INDEX keys_by_parent ON keys(parent);
     CREATE INDEX keys_by_kind ON keys(kind);
     CREATE UNIQUE INDEX keys_by_node_name ON keys(name) WHERE name IS NOT NULL AND state = 'active';
     CREATE TABLE revocations (
        id          TEXT PRIMARY KEY,
        revoked     TEXT NOT NULL,
        issuer      TEXT NOT NULL,
        statement   BLOB NOT NULL,
        created     INTEGER NOT NULL
     );",
    // v3: a keypair's algorithm (p256, ed25519, rsa), backfilled from what v2 could hold.
    "ALTER TABLE keys ADD COLUMN algorithm TEXT;
     UPDATE keys SET algorithm = 'rsa' WHERE kind = 'keypair' AND scheme = 'rsa-pem-gcm';
     UPDATE keys SET algorithm = 'p256' WHERE kind = 'keypair' AND algorithm IS NULL;",
    // v4: record integrity. A `mac` on every key and revocation, and the keystore integrity key
    // as its own kind (so KEK and secret listings never see it): the table is rebuilt for the
    // new CHECK. Rows from before v4 have no MAC yet; a keystore that has any is marked for the
    // trust-on-upgrade step at the next unlock (see `Keystore::install_integrity`).
    "CREATE TABLE keys_v4 (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL CHECK (kind IN ('root', 'kek', 'dek', 'keypair', 'secret', 'integrity')),
        label       TEXT,
        parent      TEXT REFERENCES keys(id),
        scheme      TEXT NOT NULL,
        wrapped     BLOB,
        public_key  BLOB,
        locator     TEXT,
        purpose     TEXT CHECK (purpose IS NULL OR purpose IN ('personal', 'sharing')),
        exportable  INTEGER NOT NULL DEFAULT 0,
        version     INTEGER NOT NULL DEFAULT 1,
        created     INTEGER NOT NULL,
        rotated     INTEGER,
        state       TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired', 'revoked')),
        name        TEXT,
        issuer      TEXT REFERENCES keys(id),
        statement   BLOB,
        algorithm   TEXT,
        mac         BLOB
     );
     INSERT INTO keys_v4 (id, kind, label, parent, scheme, wrapped, public_key, locator, purpose,
                          exportable, version, created, rotated, state, name, issuer, statement,
                          algorithm)
        SELECT id, kind, label, parent, scheme, wrapped, public_key, locator, purpose,
               exportable, version, created, rotated, state, name, issuer, statement, algorithm
        FROM keys;
     DROP TABLE keys;
     ALTER TABLE keys_v4 RENAME TO keys;
     CREATE INDEX keys_by_parent ON keys(parent);
     CREATE INDEX keys_by_kind ON keys(kind);
     CREATE UNIQUE INDEX keys_by_node_name ON keys(name) WHERE name IS NOT NULL AND state = 'active';
     ALTER TABLE revocations ADD COLUMN mac BLOB;
     INSERT INTO meta (name, value) SELECT 'integrity_upgrade', 'pending'
        WHERE EXISTS (SELECT 1 FROM keys) OR EXISTS (SELECT 1 FROM revocations);",
    // v5: SSH-agent flags of a keypair (`SshFlags`: offered, confirm on use, added by ssh-add).
    "ALTER TABLE keys ADD COLUMN ssh INTEGER NOT NULL DEFAULT 0;",
    // v6: a keypair's X.509 certificate (DER), shown by the PKCS#11 module. Covered by the
    // row's MAC when present (see `record_body`), so rows MAC'd before v6 still verify.
    "ALTER TABLE keys ADD COLUMN certificate BLOB;",
    // v7: DEK versions. `keys.version` is a DEK's newest version and `keys.wrapped` stays its
    // version 1; versions 2 and up are rows of `key_versions`, each MAC'd on its own
    // (`version_body`). `keys.min_version` (NULL: 1) is the oldest version that still
    // decrypts; it is covered by the key row's MAC when set (see `record_body`).
    "CREATE TABLE key_versions (
        key         TEXT NOT NULL REFERENCES keys(id),
        version     INTEGER NOT NULL CHECK (version >= 2),
        wrapped     BLOB NOT NULL,
        created     INTEGER NOT NULL,
        mac         BLOB,
        PRIMARY KEY (key, version)
     );
     ALTER TABLE keys ADD COLUMN min_version INTEGER;
     CREATE TABLE kek_rotations (
        kek         TEXT PRIMARY KEY REFERENCES keys(id),
        wrapped     BLOB NOT NULL,
        scheme      TEXT NOT NULL,
        started     INTEGER NOT NULL,
        mac         BLOB
     );
     CREATE TABLE kek_rotation_items (
        kek         TEXT NOT NULL REFERENCES kek_rotations(kek),
        key         TEXT NOT NULL REFERENCES keys(id),
        version     INTEGER NOT NULL,
        wrapped     BLOB NOT NULL,
        mac         BLOB,
        PRIMARY KEY (key, version)
     );",
    // v8: indexes for paged lists (`Keystore::page`), in the lists' order (created, then id), so a
    // page is a range scan of its own length: by kind; by KEK (a KEK's DEKs); node keys alone.
    // `IF NOT EXISTS`, so the step is the same whatever number it ends up with.
    "CREATE INDEX IF NOT EXISTS keys_page_by_kind ON keys(kind, created, id);
     CREATE INDEX IF NOT EXISTS keys_page_by_parent ON keys(parent, kind, created, id);
     CREATE INDEX IF NOT EXISTS keys_page_nodes ON keys(created, id)
        WHERE kind = 'keypair' AND name IS NOT NULL;",
    // v9: several roots per KEK: each KEK's wraps under the enrolled roots that are not its
    // parent, and their journal during a KEK rotation (`keystore_roots.rs`).
    roots::MIGRATION_V9,
    // v10: per-key usage limits (`crate::limits`). `keys.usage` (NULL: the kind's default
    // usages, as every key made before v10) is a bit set of usages plus the confirm bit;
    // `keys.not_after` (NULL: none) Unix seconds. Both are covered by the key row's MAC when
    // either is set (see `record_body`), so rows MAC'd before v10 still verify.
    "ALTER TABLE keys ADD COLUMN usage INTEGER;
     ALTER TABLE keys ADD COLUMN not_after INTEGER;",
    // v11: devices (`crate::devices`): enrolled devices and pending enrollment requests.
    devices::MIGRATION_V11,
];

/// Set (`Some`) or delete (`None`) meta rows on `conn` (a transaction's, by deref): the one
/// place the keystore writes `meta`, for every caller that does it inside a larger transaction.
pub(crate) fn put_metas(
    conn: &Connection,
    rows: &[(&str, Option<&str>)],
    op: &'static str,
) -> Result<(), KeystoreError> {
    // Cached statements: the audit log's chain head is written here after every sync.
    for (name, value) in rows {
        match value {
            Some(v) => conn
                .prepare_cached(
                    "INSERT INTO meta (name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut s| s.execute([name, v])),
            None => conn
                .prepare_cached("DELETE FROM meta WHERE name = ?1")
                .and_then(|mut s| s.execute([name])),
        }
        .map_err(sql(op))?;
    }
    Ok(())
}

fn meta_in(conn: &Connection, name: &str) -> Result<Option<String>, KeystoreError> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
    .map_err(sql("read meta"))
}

/// A UUID column for a MAC body: a value that does not parse gives the nil UUID, whose body
/// then fails the MAC check (the agent only writes parsed UUIDs).
fn parse_row_uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap_or(Uuid::nil())
}

/// Check every row of `table` (columns `cols`, read after `rowid` and `mac`, so at index 2 and
/// up for `body`) against `old` and re-MAC it under `new`. `body` answers the id named in errors
/// and the MAC body.
fn remac_rows(
    conn: &Connection,
    old: &MacKey,
    new: &MacKey,
    table: &str,
    cols: &str,
    body: impl Fn(&Row) -> rusqlite::Result<(String, Vec<u8>)>,
) -> Result<usize, KeystoreError> {
    const OP: &str = "rekey: read rows";
    /// rowid, stored MAC, id for errors, MAC body.
    type Row4 = (i64, Option<Vec<u8>>, String, Vec<u8>);
    let rows: Vec<Row4> = {
        let mut stmt = conn
            .prepare(&format!("SELECT rowid, mac, {cols} FROM {table}"))
            .map_err(sql(OP))?;
        let it = stmt
            .query_map([], |r| {
                let (id, b) = body(r)?;
                Ok((r.get(0)?, r.get(1)?, id, b))
            })
            .map_err(sql(OP))?;
        it.collect::<Result<_, _>>().map_err(sql(OP))?
    };
    for (rowid, mac, id, b) in &rows {
        check_mac(old, id, b, mac.as_deref())?;
        conn.execute(
            &format!("UPDATE {table} SET mac = ?2 WHERE rowid = ?1"),
            params![rowid, new.tag(b)],
        )
        .map_err(sql("rekey: write row"))?;
    }
    Ok(rows.len())
}

/// Ends a running [`SqliteStore::check_file_with`] early: the agent's shutdown stops its
/// start-up check, so the check's connection is closed before the agent's own, which then is
/// the last one and removes the WAL (a connection left open at exit kept it).
#[derive(Default)]
pub struct CheckStop {
    stopping: std::sync::atomic::AtomicBool,
    interrupt: Mutex<Option<rusqlite::InterruptHandle>>,
}

impl std::fmt::Debug for CheckStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckStop")
            .field("stopping", &self.stopped())
            .finish_non_exhaustive()
    }
}

impl CheckStop {
    /// Stop the check: interrupt its statement if one runs, and let none start.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            h.interrupt();
        }
    }

    /// Whether [`CheckStop::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The check's connection, once open (interrupted at once if the stop came first).
    fn register(&self, h: rusqlite::InterruptHandle) {
        let mut slot = self.interrupt.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopped() {
            h.interrupt();
        }
        *slot = Some(h);
    }
}

/// Debug-build test hook: `KEYWARD_TEST_KEYSTORE_CHECK_DELAY_MS=<n>` holds the start-up check
/// for n ms with its connection open (ended early by a stop). Release builds never read it.
fn check_delay(stop: &CheckStop) {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("KEYWARD_TEST_KEYSTORE_CHECK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tracing::warn!(
            ms = n,
            "KEYWARD_TEST_KEYSTORE_CHECK_DELAY_MS: delaying the keystore check"
        );
        let until = std::time::Instant::now() + std::time::Duration::from_millis(n);
        while std::time::Instant::now() < until && !stop.stopped() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = stop;
}

#[cfg(test)]
thread_local! {
    /// Tests: make the next [`Keystore::rekey_integrity`] on this thread fail just before its
    /// commit (a crash there).
    pub(crate) static REKEY_FAIL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Tests: make the next this-many [`Keystore::rekey_integrity`]s on this thread end in a
    /// `Conflict` before their commit, as PostgreSQL's serialization failure does when another
    /// transaction (another agent, or this agent's audit head write) commits a row the rekey
    /// read.
    pub(crate) static REKEY_CONFLICTS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn rekey_test_fail() -> Result<(), KeystoreError> {
    #[cfg(test)]
    if REKEY_CONFLICTS.with(|n| n.get()) > 0 {
        REKEY_CONFLICTS.with(|n| n.set(n.get() - 1));
        return Err(KeystoreError::Conflict {
            op: "rekey",
            id: "(transaction)".into(),
        });
    }
    #[cfg(test)]
    if REKEY_FAIL.with(|f| f.replace(false)) {
        return Err(KeystoreError::Corrupt {
            id: "(integrity)".into(),
            what: "test: injected failure before the rekey commit".into(),
        });
    }
    Ok(())
}

// `KEY_COLUMNS` (records.rs): [`from_row`] reads them by position (rusqlite's by-name lookup
// compares column names on every get: 14% of a `kek.list`'s instructions before).

fn from_row(row: &Row<'_>) -> rusqlite::Result<Result<KeyRecord, KeystoreError>> {
    let id: String = row.get(0)?;
    let kind: String = row.get(1)?;
    let parent: Option<String> = row.get(3)?;
    let purpose: Option<String> = row.get(8)?;
    let algorithm: Option<String> = row.get(17)?;
    let state: String = row.get(13)?;
    let corrupt = |what: String| KeystoreError::Corrupt {
        id: id.clone(),
        what,
    };
    let build = || -> Result<KeyRecord, KeystoreError> {
        Ok(KeyRecord {
            id: Uuid::parse_str(&id).map_err(|_| corrupt("id is not a UUID".into()))?,
            kind: KeyKind::parse(&kind).ok_or_else(|| corrupt(format!("kind {kind}")))?,
            label: row.get(2).map_err(sql("read label"))?,
            parent: parent
                .as_deref()
                .map(Uuid::parse_str)
                .transpose()
                .map_err(|_| corrupt("parent is not a UUID".into()))?,
            scheme: row.get(4).map_err(sql("read scheme"))?,
            wrapped: row.get(5).map_err(sql("read wrapped"))?,
            public_key: row.get(6).map_err(sql("read public_key"))?,
            locator: row.get(7).map_err(sql("read locator"))?,
            purpose: match purpose.as_deref() {
                None => None,
                Some(p) => Some(Purpose::parse(p).ok_or_else(|| corrupt(format!("purpose {p}")))?),
            },
            exportable: row.get(9).map_err(sql("read exportable"))?,
            version: row.get(10).map_err(sql("read version"))?,
            created: row.get(11).map_err(sql("read created"))?,
            rotated: row.get(12).map_err(sql("read rotated"))?,
            state: KeyState::parse(&state).ok_or_else(|| corrupt(format!("state {state}")))?,
            name: row.get(14).map_err(sql("read name"))?,
            issuer: row
                .get::<_, Option<String>>(15)
                .map_err(sql("read issuer"))?
                .as_deref()
                .map(Uuid::parse_str)
                .transpose()
                .map_err(|_| corrupt("issuer is not a UUID".into()))?,
            statement: row.get(16).map_err(sql("read statement"))?,
            algorithm: match algorithm.as_deref() {
                None => None,
                Some(a) => {
                    Some(Algorithm::parse(a).ok_or_else(|| corrupt(format!("algorithm {a}")))?)
                }
            },
            ssh: SshFlags(row.get(18).map_err(sql("read ssh"))?),
            certificate: row.get(19).map_err(sql("read certificate"))?,
            min_version: row.get(20).map_err(sql("read min_version"))?,
            usage: row.get(21).map_err(sql("read usage"))?,
            not_after: row.get(22).map_err(sql("read not_after"))?,
        })
    };
    Ok(build())
}

pub(super) fn insert_with(
    conn: &Connection,
    key: Option<&MacKey>,
    r: &KeyRecord,
) -> Result<(), KeystoreError> {
    let mac = key.map(|k| k.tag(&record_body(r)));
    conn.execute(
        "INSERT INTO keys (id, kind, label, parent, scheme, wrapped, public_key, locator,
                           purpose, exportable, version, created, rotated, state,
                           name, issuer, statement, algorithm, ssh, mac, certificate, min_version,
                           usage, not_after)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
        params![
            r.id.to_string(),
            r.kind.as_str(),
            r.label,
            r.parent.map(|p| p.to_string()),
            r.scheme,
            r.wrapped,
            r.public_key,
            r.locator,
            r.purpose.map(Purpose::as_str),
            r.exportable,
            r.version,
            r.created,
            r.rotated,
            r.state.as_str(),
            r.name,
            r.issuer.map(|p| p.to_string()),
            r.statement,
            r.algorithm.map(Algorithm::as_str),
            r.ssh.0,
            mac,
            r.certificate,
            r.min_version,
            r.usage,
            r.not_after,
        ],
    )
    .map_err(sql("insert key"))?;
    Ok(())
}

pub(super) fn insert_revocation_with(
    conn: &Connection,
    key: Option<&MacKey>,
    r: &Revocation,
) -> Result<(), KeystoreError> {
    let mac = key.map(|k| k.tag(&revocation_body(r)));
    conn.execute(
        "INSERT INTO revocations (id, revoked, issuer, statement, created, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            r.id.to_string(),
            r.revoked.to_string(),
            r.issuer.to_string(),
            r.statement,
            r.created,
            mac
        ],
    )
    .map_err(sql("store revocation"))?;
    Ok(())
}

/// Read every row of `keys` matching `where_`, each with its MAC checked when `key` is given.
pub(super) fn query_with(
    conn: &Connection,
    key: Option<&MacKey>,
    op: &'static str,
    where_: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<KeyRecord>, KeystoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE {where_} ORDER BY created, id"
        ))
        .map_err(sql(op))?;
    let rows = stmt
        .query_map(args, |row| {
            Ok((
                row.get::<_, String>(0)?,
                from_row(row)?,
                row.get::<_, Option<Vec<u8>>>(MAC_COLUMN)?,
            ))
        })
        .map_err(sql(op))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, parsed, mac) = row.map_err(sql(op))?;
        out.push(verified(key, &id, parsed, mac)?);
    }
    Ok(out)
}

impl ListFilter {
    /// The index a page of this list reads (named in the query with `INDEXED BY`, so the plan
    /// cannot drift to a scan: without statistics SQLite would pick `keys_page_by_kind` for node
    /// keys and filter every keypair).
    fn index(&self) -> &'static str {
        match self {
            ListFilter::Kind(_) => "keys_page_by_kind",
            ListFilter::Children(..) => "keys_page_by_parent",
            ListFilter::Nodes => "keys_page_nodes",
            ListFilter::HeldShares => "keys_page_by_kind",
        }
    }

    /// The WHERE clause (before the cursor condition) and its arguments.
    pub(super) fn clause(&self) -> (&'static str, Vec<String>) {
        match self {
            ListFilter::Kind(k) => ("kind = ?1", vec![k.as_str().to_string()]),
            ListFilter::Children(k, p) => (
                "parent = ?1 AND kind = ?2",
                vec![p.to_string(), k.as_str().to_string()],
            ),
            ListFilter::Nodes => ("kind = 'keypair' AND name IS NOT NULL", vec![]),
            ListFilter::HeldShares => ("kind = 'secret' AND public_key IS NOT NULL", vec![]),
        }
    }
}

/// `fetch` rows. The row count is a literal, not a parameter: SQLite plans with the value of a
/// bound `LIMIT` and then re-prepares the statement whenever it is bound again, which is every
/// execution (measured: a third to over half of a `kek.list`'s instructions). Statements are
/// cached by their text, and clients use few distinct page sizes.
pub(super) fn page_sql(filter: &ListFilter, after: bool, fetch: usize) -> String {
    let (where_, args) = filter.clause();
    let n = args.len();
    let cursor = if after {
        format!(" AND (created, id) > (?{}, ?{})", n + 1, n + 2)
    } else {
        String::new()
    };
    format!(
        "SELECT {KEY_COLUMNS} FROM keys INDEXED BY {} WHERE {where_}{cursor} ORDER BY created, id LIMIT {fetch}",
        filter.index(),
    )
}

/// Set a key's state (and `rotated`), re-MACing the row: read (checked), change, write back.
fn set_state_with(
    conn: &Connection,
    key: Option<&MacKey>,
    id: &Uuid,
    state: KeyState,
) -> Result<(), KeystoreError> {
    let Some(mut r) = query_with(conn, key, "read key", "id = ?1", &[&id.to_string()])?
        .into_iter()
        .next()
    else {
        return Ok(());
    };
    r.state = state;
    r.rotated = Some(now());
    let mac = key.map(|k| k.tag(&record_body(&r)));
    conn.execute(
        "UPDATE keys SET state = ?2, rotated = ?3, mac = ?4 WHERE id = ?1",
        params![id.to_string(), state.as_str(), r.rotated, mac],
    )
    .map_err(sql("update key state"))?;
    Ok(())
}

fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// `path` for an SQLite `file:` URI: `%`, `?` and `#` (and anything not printable ASCII)
/// percent-encoded.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'%' | b'?' | b'#' => out.push_str(&format!("%{b:02X}")),
            0x21..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The SQLite backend of [`Keystore`]. Cheap to share: one connection behind a mutex (SQLite
/// serialises writers anyway, and every call here is a few index lookups).
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The MAC key while the agent is unlocked, and its epoch (part of
    /// [`Keystore::generation`]).
    mac: MacState,
    /// Rows changed by [`Keystore::set_metas`] (agent metadata, e.g. the audit chain head after
    /// every batch), left out of [`Keystore::generation`]: no record cache depends on them.
    meta_changes: std::sync::atomic::AtomicU64,
    /// Failed reads of `data_version` (each makes the generation move: see `record_changes`).
    unreadable_versions: std::sync::atomic::AtomicU64,
}

thread_local! {
    /// Inside [`one_request`] on this thread: the `data_version` each store (by its address)
    /// read first in the request. `None` outside a request.
    static REQUEST_VERSIONS: std::cell::RefCell<Option<Vec<(usize, u64)>>> =
        const { std::cell::RefCell::new(None) };
}

/// Run `f` (one request, on this thread) reading each store's `data_version` at most once:
/// another process's commit is then seen from the next request on, not in the middle of this
/// one. The agent's own record writes still move the generation at once (SQLite's change
/// count, read every time: it costs no system call).
pub fn one_request<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Vec<(usize, u64)>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let old = self.0.take();
            REQUEST_VERSIONS.with(|r| *r.borrow_mut() = old);
        }
    }
    let old = REQUEST_VERSIONS.with(|r| r.borrow_mut().replace(Vec::new()));
    let _reset = Reset(old);
    f()
}

impl SqliteStore {
    /// Open (creating if needed) the keystore at `path`; its directory is made 0700 and the file
    /// 0600 (created so, never chmod-ed down from the umask's mode). A damaged file (SQLite's
    /// `integrity_check` fails) is refused with [`KeystoreError::Damaged`] naming it.
    pub fn open(path: &Path) -> Result<SqliteStore, KeystoreError> {
        Self::open_checking(path, false).map(|(ks, _)| ks)
    }

    /// Like [`open`](Self::open), but without SQLite's full check of a keystore that needs no
    /// migration (one that does is still checked before it is migrated): the caller runs
    /// [`check_file`](Self::check_file) later (`keywardd` does, just after binding its socket;
    /// `integrity.rs`). The flag says whether the check is still to do.
    pub fn open_deferring_check(path: &Path) -> Result<(SqliteStore, bool), KeystoreError> {
        Self::open_checking(path, true)
    }

    fn open_checking(path: &Path, defer: bool) -> Result<(SqliteStore, bool), KeystoreError> {
        Self::open_inner(path, defer).map_err(|e| match e {
            KeystoreError::Sql { op, source } if is_damage(&source.0) => KeystoreError::Damaged {
                path: path.to_path_buf(),
                detail: format!("{op}: {source}"),
            },
            e => e,
        })
    }

    fn open_inner(path: &Path, defer: bool) -> Result<(SqliteStore, bool), KeystoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let io = |op, source| KeystoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("create directory", e))?;
        }
        // Create the file 0600 before SQLite opens it (an empty file is an empty database), so
        // it never exists with the umask's mode. SQLite gives its -wal and -shm files the
        // database file's mode. An existing file is left as it is here and chmod-ed below (files
        // made by older agents).
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            // A keystore on a read-only file system (a read-only mount, a backup medium): serve
            // what it holds; every change fails with SQLite's "readonly" error.
            Err(e) if e.raw_os_error() == Some(libc::EROFS) && path.is_file() => {
                return Self::open_read_only(path, defer);
            }
            Err(e) => return Err(io("create", e)),
        }
        let conn = Connection::open(path).map_err(sql("open"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("set permissions", e))?;
        let deferred = defer && !Self::needs_migration(&conn)?;
        if !deferred {
            Self::check_integrity(&conn, path)?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("set WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("set synchronous=FULL"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql("enable foreign keys"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("set busy timeout"))?;
        let ks = SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            mac: MacState::default(),
            meta_changes: std::sync::atomic::AtomicU64::new(0),
            unreadable_versions: std::sync::atomic::AtomicU64::new(0),
        };
        ks.migrate()?;
        Ok((ks, deferred))
    }

    /// Whether the schema is older than this agent's (a migration will write).
    fn needs_migration(conn: &Connection) -> Result<bool, KeystoreError> {
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("read schema version"))?;
        Ok(found < Self::SCHEMA_VERSION)
    }

    /// SQLite's full `integrity_check` of the keystore file at `path`, through a read-only
    /// connection of its own (the agent's connection keeps serving meanwhile). A damaged file
    /// is [`KeystoreError::Damaged`] naming it.
    pub fn check_file(path: &Path) -> Result<(), KeystoreError> {
        Self::check_file_with(path, &CheckStop::default())
    }

    /// [`check_file`](Self::check_file) that `stop` can end early (the agent stopping): its
    /// connection's `sqlite3_interrupt`, and no statement started once it is set. Interrupted,
    /// it is an error the caller does not report as damage ([`CheckStop::stopped`]).
    pub fn check_file_with(path: &Path, stop: &CheckStop) -> Result<(), KeystoreError> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let readable = |c: &Connection| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
        };
        let conn = match Connection::open_with_flags(path, flags) {
            Ok(c) if readable(&c).is_ok() => c,
            // A WAL-mode file on a read-only file system with no WAL left, which the agent
            // opened `immutable` (see open_read_only): nothing can change it meanwhile.
            _ => {
                let uri = format!("file:{}?immutable=1", uri_path(path));
                let c =
                    Connection::open_with_flags(&uri, flags).map_err(sql("open for the check"))?;
                readable(&c).map_err(sql("open for the check"))?;
                c
            }
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("set busy timeout"))?;
        stop.register(conn.get_interrupt_handle());
        check_delay(stop);
        if stop.stopped() {
            return Err(KeystoreError::Unavailable {
                op: "keystore check",
                what: "stopped before it ran: the agent is stopping".into(),
            });
        }
        Self::check_integrity(&conn, path).map_err(|e| match e {
            KeystoreError::Sql { op, source } if is_damage(&source.0) => KeystoreError::Damaged {
                path: path.to_path_buf(),
                detail: format!("{op}: {source}"),
            },
            e => e,
        })
    }

    /// Open an existing keystore on a read-only file system, read-only. With a WAL left by an
    /// agent that did not stop cleanly, SQLite reads it (and the -shm) as they are. After a
    /// clean stop there is no WAL, and SQLite cannot open a WAL-mode file read-only without
    /// making one: then the file holds everything and nothing can change it while the file
    /// system is read-only, so it is opened `immutable`. A WAL with content is never ignored.
    fn open_read_only(path: &Path, defer: bool) -> Result<(SqliteStore, bool), KeystoreError> {
        use rusqlite::OpenFlags;
        tracing::warn!(
            path = %path.display(),
            "the keystore's file system is read-only: serving what it holds, refusing every change"
        );
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let readable = |c: &Connection| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
        };
        let conn = Connection::open_with_flags(path, flags).map_err(sql("open read-only"))?;
        let conn = match readable(&conn) {
            Ok(_) => conn,
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) => {
                let wal = PathBuf::from(format!("{}-wal", path.display()));
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                    return Err(KeystoreError::Sql {
                        op: "open read-only",
                        source: SqlError(e),
                    });
                }
                let uri = format!("file:{}?immutable=1", uri_path(path));
                let c = Connection::open_with_flags(&uri, flags)
                    .map_err(sql("open read-only (immutable)"))?;
                readable(&c).map_err(sql("open read-only (immutable)"))?;
                c
            }
            Err(e) => {
                return Err(KeystoreError::Sql {
                    op: "open read-only",
                    source: SqlError(e),
                })
            }
        };
        let deferred = defer && !Self::needs_migration(&conn)?;
        if !deferred {
            Self::check_integrity(&conn, path)?;
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("set busy timeout"))?;
        let ks = SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            mac: MacState::default(),
            meta_changes: std::sync::atomic::AtomicU64::new(0),
            unreadable_versions: std::sync::atomic::AtomicU64::new(0),
        };
        // Current schema: nothing to write. An older one cannot be migrated here, and says so.
        ks.migrate()?;
        Ok((ks, deferred))
    }

    /// SQLite's full `integrity_check` (`quick_check` misses damaged indexes).
    pub(super) fn check_integrity(conn: &Connection, path: &Path) -> Result<(), KeystoreError> {
        let mut stmt = conn
            .prepare("PRAGMA integrity_check(20)")
            .map_err(sql("integrity check"))?;
        let problems = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql("integrity check"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("integrity check"))?;
        if problems.len() == 1 && problems[0] == "ok" {
            return Ok(());
        }
        Err(KeystoreError::Damaged {
            path: path.to_path_buf(),
            detail: format!("integrity_check: {}", problems.join("; ")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (it has its own
        // transactions), so a poisoned mutex is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self) -> Option<Arc<MacKey>> {
        self.mac.key()
    }

    /// Load (at unlock) or drop (at lock) the MAC key. While loaded every read is checked.
    pub fn set_mac_key(&self, key: Option<MacKey>) {
        self.mac.set(key);
    }

    /// A value that changes whenever this process writes the keystore's records (every row
    /// inserted, updated or deleted, committed or not; not the metadata rows of
    /// [`Keystore::set_metas`]), whenever another connection commits to the file (another
    /// process editing it: SQLite's `PRAGMA data_version` on this connection, which the agent's
    /// own commits do not move), or when the MAC key is loaded or dropped. Caches built from
    /// records (the record copies, the SSH door's identity index) compare it to know they are
    /// stale, so a row edited outside the agent is read, and found tampered, at the next use.
    pub fn generation(&self) -> (u64, u64) {
        let changes = self.record_changes(&self.lock());
        (changes, self.mac.epoch())
    }

    /// [`Keystore::generation`] without waiting: `None` while another thread holds the
    /// connection (async callers then take their slow path rather than block a worker).
    pub fn try_generation(&self) -> Option<(u64, u64)> {
        let changes = match self.conn.try_lock() {
            Ok(c) => self.record_changes(&c),
            Err(std::sync::TryLockError::Poisoned(p)) => self.record_changes(&p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some((changes, self.mac.epoch()))
    }

    /// SQLite's change count less the metadata rows' (read with the connection held, as
    /// `set_metas` counts its own under it), plus the file's `data_version` as this connection
    /// sees it (moved only by other connections' commits). Both only grow, so their sum moves
    /// whenever either does. A `data_version` that cannot be read counts as a change every
    /// time (the caches then never serve a copy), never as "unchanged".
    fn record_changes(&self, conn: &Connection) -> u64 {
        let own = conn
            .total_changes()
            .saturating_sub(self.meta_changes.load(std::sync::atomic::Ordering::SeqCst));
        let others = self.data_version(conn).unwrap_or_else(|| {
            self.unreadable_versions
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                .wrapping_add(1)
                << 32
        });
        own.wrapping_add(others)
    }

    /// The file's `data_version` as this connection sees it: read once per request
    /// ([`one_request`]: later reads in the same request reuse the first, sparing the two
    /// `fcntl` locks each `PRAGMA data_version` costs), every time outside one. `None`: it
    /// could not be read (never kept).
    fn data_version(&self, conn: &Connection) -> Option<u64> {
        let me = self as *const SqliteStore as usize;
        let kept = REQUEST_VERSIONS.with(|r| {
            r.borrow()
                .as_ref()
                .and_then(|m| m.iter().find(|(a, _)| *a == me).map(|(_, v)| *v))
        });
        if kept.is_some() {
            return kept;
        }
        let v = conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
            .map(|v| v as u64)
            .ok()?;
        REQUEST_VERSIONS.with(|r| {
            if let Some(m) = r.borrow_mut().as_mut() {
                m.push((me, v));
            }
        });
        Some(v)
    }

    /// The MAC key loaded now (`keystore migrate` loads a copy of it into the destination).
    pub(crate) fn mac_key(&self) -> Option<Arc<MacKey>> {
        self.key()
    }

    pub fn has_mac_key(&self) -> bool {
        self.key().is_some()
    }

    /// The MAC of `body` under the loaded key, if one is loaded.
    pub fn mac_tag(&self, body: &[u8]) -> Option<Vec<u8>> {
        self.key().map(|k| k.tag(body))
    }

    /// Check `tag` over `body` with the loaded key; `None` when no key is loaded.
    pub fn mac_verify(&self, body: &[u8], tag: &[u8]) -> Option<bool> {
        self.key().map(|k| k.verify(body, tag))
    }

    /// The schema version this agent writes.
    pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

    fn migrate(&self) -> Result<(), KeystoreError> {
        let mut conn = self.lock();
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("read schema version"))?;
        if found > Self::SCHEMA_VERSION {
            return Err(KeystoreError::TooNew {
                found,
                supported: Self::SCHEMA_VERSION,
            });
        }
        if found == Self::SCHEMA_VERSION {
            return Ok(());
        }
        // Table rebuilds need foreign keys off; the pragma is a no-op inside a transaction.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(sql("disable foreign keys for migration"))?;
        let tx = conn.transaction().map_err(sql("begin migration"))?;
        for (v, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.execute_batch(step).map_err(sql("migrate schema"))?;
            tx.pragma_update(None, "user_version", v as i64 + 1)
                .map_err(sql("set schema version"))?;
        }
        let broken: i64 = tx
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .map_err(sql("check foreign keys after migration"))?;
        if broken > 0 {
            return Err(KeystoreError::Corrupt {
                id: "(schema)".into(),
                what: format!("{broken} dangling references after migration"),
            });
        }
        tx.commit().map_err(sql("commit migration"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql("enable foreign keys"))
    }

    /// Insert a new record (MAC'd when the key is loaded).
    pub fn insert(&self, r: &KeyRecord) -> Result<(), KeystoreError> {
        let key = self.key();
        insert_with(&self.lock(), key.as_deref(), r)
    }

    /// Insert many records in one transaction, each MAC'd as [`Keystore::insert`] does: all or
    /// none. For bulk loads (the keystore-scale benchmark fills a million keys this way; one
    /// transaction per record would be one `fsync` each).
    pub fn insert_many(&self, records: &[KeyRecord]) -> Result<(), KeystoreError> {
        let key = self.key();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin bulk insert"))?;
        for r in records {
            insert_with(&tx, key.as_deref(), r)?;
        }
        tx.commit().map_err(sql("commit bulk insert"))
    }

    fn query(
        &self,
        op: &'static str,
        where_: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<KeyRecord>, KeystoreError> {
        let key = self.key();
        query_with(&self.lock(), key.as_deref(), op, where_, args)
    }

    /// The record with this id, of any kind.
    pub fn get(&self, id: &Uuid) -> Result<Option<KeyRecord>, KeystoreError> {
        Ok(self
            .query("get key", "id = ?1", &[&id.to_string()])?
            .into_iter()
            .next())
    }

    /// All records of `kind`, optionally only the children of `parent`.
    pub fn list(
        &self,
        kind: KeyKind,
        parent: Option<&Uuid>,
    ) -> Result<Vec<KeyRecord>, KeystoreError> {
        match parent {
            None => self.query("list keys", "kind = ?1", &[&kind.as_str()]),
            Some(p) => self.query(
                "list keys",
                "kind = ?1 AND parent = ?2",
                &[&kind.as_str(), &p.to_string()],
            ),
        }
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
        const OP: &str = "list keys";
        let key = self.key();
        let conn = self.lock();
        // One more than the page, to know whether there is a next one (at most SQLite's largest
        // integer: a list without a count limit).
        let fetch = size.limit.saturating_add(1).min(i64::MAX as usize);
        let mut stmt = conn
            .prepare_cached(&page_sql(filter, after.is_some(), fetch))
            .map_err(sql(OP))?;
        let (_, mut args) = filter.clause();
        let mut params: Vec<rusqlite::types::Value> =
            args.drain(..).map(rusqlite::types::Value::Text).collect();
        if let Some(c) = after {
            let created = i64::try_from(c.created).unwrap_or(i64::MAX);
            params.push(rusqlite::types::Value::Integer(created));
            params.push(rusqlite::types::Value::Text(c.id.to_string()));
        }
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(sql(OP))?;
        let mut page = PageBuilder::new(size);
        while let Some(row) = rows.next().map_err(sql(OP))? {
            if !page.wants_more() {
                break;
            }
            let id: String = row.get(0).map_err(sql(OP))?;
            let parsed = from_row(row).map_err(sql(OP))?;
            let mac: Option<Vec<u8>> = row.get(MAC_COLUMN).map_err(sql(OP))?;
            let r = verified(key.as_deref(), &id, parsed, mac)?;
            if !page.push(r) {
                break;
            }
        }
        Ok(page.finish())
    }

    /// The integrity-key records, unchecked: they are read to load the MAC key, before there is
    /// one. The hierarchy checks them (with [`Keystore::get`]) once it is loaded.
    pub fn integrity_records(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        query_with(
            &self.lock(),
            None,
            "read integrity key",
            "kind = 'integrity'",
            &[],
        )
    }

    /// The root record, if `init` has run.
    pub fn root(&self) -> Result<Option<KeyRecord>, KeystoreError> {
        Ok(self.list(KeyKind::Root, None)?.into_iter().next())
    }

    /// The active key with this node name.
    pub fn by_name(&self, name: &str) -> Result<Option<KeyRecord>, KeystoreError> {
        Ok(self
            .query("find node", "name = ?1 AND state = 'active'", &[&name])?
            .into_iter()
            .next())
    }

    /// Remove a key. Refused (a `Sql` error) while other keys name it as parent or issuer.
    pub fn delete(&self, id: &Uuid) -> Result<bool, KeystoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM keys WHERE id = ?1", [id.to_string()])
            .map_err(sql("delete key"))?;
        Ok(n > 0)
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
        let key = self.key();
        let key = key.as_deref();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin replace"))?;
        set_state_with(&tx, key, old, state)?;
        insert_with(&tx, key, new)?;
        if let Some(r) = revocation {
            insert_revocation_with(&tx, key, r)?;
        }
        tx.commit().map_err(sql("commit replace"))
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
        let key = self.key();
        let key = key.as_deref();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin replace root"))?;
        set_state_with(&tx, key, old, state)?;
        insert_with(&tx, key, new)?;
        if let Some(r) = revocation {
            insert_revocation_with(&tx, key, r)?;
        }
        for (id, statement) in children {
            let Some(mut r) = query_with(&tx, key, "read key", "id = ?1", &[&id.to_string()])?
                .into_iter()
                .next()
            else {
                continue;
            };
            r.issuer = Some(new.id);
            r.statement = Some(statement.clone());
            let mac = key.map(|k| k.tag(&record_body(&r)));
            tx.execute(
                "UPDATE keys SET issuer = ?2, statement = ?3, mac = ?4 WHERE id = ?1",
                params![id.to_string(), new.id.to_string(), r.statement, mac],
            )
            .map_err(sql("re-issue a child of the cluster root"))?;
        }
        put_metas(&tx, metas, "write meta")?;
        tx.commit().map_err(sql("commit replace root"))
    }

    /// Mark a key revoked and keep the signed revocation, in one transaction.
    /// Set (or, with `None`, remove) a key's certificate, re-MACing the row: read (checked),
    /// change, write back. `Ok(false)` when there is no such key.
    pub fn set_certificate(&self, id: &Uuid, cert: Option<Vec<u8>>) -> Result<bool, KeystoreError> {
        let key = self.key();
        let key = key.as_deref();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin set certificate"))?;
        let Some(mut r) = query_with(&tx, key, "read key", "id = ?1", &[&id.to_string()])?
            .into_iter()
            .next()
        else {
            return Ok(false);
        };
        r.certificate = cert;
        let mac = key.map(|k| k.tag(&record_body(&r)));
        tx.execute(
            "UPDATE keys SET certificate = ?2, mac = ?3 WHERE id = ?1",
            params![id.to_string(), r.certificate, mac],
        )
        .map_err(sql("set certificate"))?;
        tx.commit().map_err(sql("commit set certificate"))?;
        Ok(true)
    }

    pub fn revoke(&self, r: &Revocation) -> Result<(), KeystoreError> {
        let key = self.key();
        let key = key.as_deref();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin revoke"))?;
        set_state_with(&tx, key, &r.revoked, KeyState::Revoked)?;
        insert_revocation_with(&tx, key, r)?;
        tx.commit().map_err(sql("commit revoke"))
    }

    /// Every stored revocation, oldest first (each checked while the MAC key is loaded).
    pub fn revocations(&self) -> Result<Vec<Revocation>, KeystoreError> {
        let key = self.key();
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT id, revoked, issuer, statement, created, mac FROM revocations ORDER BY created, id")
            .map_err(sql("list revocations"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, u64>(4)?,
                    r.get::<_, Option<Vec<u8>>>(5)?,
                ))
            })
            .map_err(sql("list revocations"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, revoked, issuer, statement, created, mac) =
                row.map_err(sql("list revocations"))?;
            let bad = |what: &str| {
                if key.is_some() {
                    KeystoreError::Tampered {
                        id: id.clone(),
                        what: what.into(),
                    }
                } else {
                    KeystoreError::Corrupt {
                        id: id.clone(),
                        what: what.into(),
                    }
                }
            };
            let uuid = |s: &str| Uuid::parse_str(s).map_err(|_| bad("revocation id is not a UUID"));
            let r = Revocation {
                id: uuid(&id)?,
                revoked: uuid(&revoked)?,
                issuer: uuid(&issuer)?,
                statement,
                created,
            };
            if let Some(k) = key.as_deref() {
                check_mac(k, &id, &revocation_body(&r), mac.as_deref())?;
            }
            out.push(r);
        }
        Ok(out)
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
        let key = self.key().ok_or_else(|| KeystoreError::Corrupt {
            id: "(integrity)".into(),
            what: "no MAC key loaded".into(),
        })?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin integrity set-up"))?;
        for r in records {
            insert_with(&tx, Some(&key), r)?;
        }
        let mut adopted = 0;
        if adopt {
            for r in query_with(&tx, None, "adopt keys", "mac IS NULL", &[])? {
                tx.execute(
                    "UPDATE keys SET mac = ?2 WHERE id = ?1",
                    params![r.id.to_string(), key.tag(&record_body(&r))],
                )
                .map_err(sql("adopt key"))?;
                adopted += 1;
            }
            let revs: Vec<(String, String, String, Vec<u8>, u64)> = {
                let mut stmt = tx
                    .prepare("SELECT id, revoked, issuer, statement, created FROM revocations WHERE mac IS NULL")
                    .map_err(sql("adopt revocations"))?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .map_err(sql("adopt revocations"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(sql("adopt revocations"))?
            };
            for (id, revoked, issuer, statement, created) in revs {
                let uuid = |s: &str| {
                    Uuid::parse_str(s).map_err(|_| KeystoreError::Corrupt {
                        id: id.clone(),
                        what: "revocation id is not a UUID".into(),
                    })
                };
                let r = Revocation {
                    id: uuid(&id)?,
                    revoked: uuid(&revoked)?,
                    issuer: uuid(&issuer)?,
                    statement,
                    created,
                };
                tx.execute(
                    "UPDATE revocations SET mac = ?2 WHERE id = ?1",
                    params![id, key.tag(&revocation_body(&r))],
                )
                .map_err(sql("adopt revocation"))?;
                adopted += 1;
            }
        }
        for name in clear_meta {
            tx.execute("DELETE FROM meta WHERE name = ?1", [name])
                .map_err(sql("clear meta"))?;
        }
        tx.commit().map_err(sql("commit integrity set-up"))?;
        Ok(adopted)
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
        let old = self.key().ok_or_else(|| KeystoreError::Corrupt {
            id: "(integrity)".into(),
            what: "no MAC key loaded".into(),
        })?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin integrity rekey"))?;
        // The old integrity records and their wraps go first (checked: they are read as rows of
        // `keys` below otherwise).
        for id in old_integrity {
            query_with(
                &tx,
                Some(&old),
                "rekey: read integrity key",
                "id = ?1",
                &[&id.to_string()],
            )?;
        }
        for id in old_integrity {
            tx.execute("DELETE FROM kek_wraps WHERE kek = ?1", [id.to_string()])
                .map_err(sql("rekey: drop integrity wraps"))?;
        }
        // In the order given (the secret before its KEK).
        for id in old_integrity {
            tx.execute("DELETE FROM keys WHERE id = ?1", [id.to_string()])
                .map_err(sql("rekey: drop integrity key"))?;
        }
        let mut n = 0;
        for r in query_with(&tx, Some(&old), "rekey: read keys", "1 = 1", &[])? {
            tx.execute(
                "UPDATE keys SET mac = ?2 WHERE id = ?1",
                params![r.id.to_string(), new.tag(&record_body(&r))],
            )
            .map_err(sql("rekey: key"))?;
            n += 1;
        }
        n += remac_rows(
            &tx,
            &old,
            &new,
            "revocations",
            "id, revoked, issuer, statement, created",
            |r| {
                let id: String = r.get(2)?;
                let b = Revocation {
                    id: parse_row_uuid(&id),
                    revoked: parse_row_uuid(&r.get::<_, String>(3)?),
                    issuer: parse_row_uuid(&r.get::<_, String>(4)?),
                    statement: r.get(5)?,
                    created: r.get(6)?,
                };
                Ok((id, revocation_body(&b)))
            },
        )?;
        n += remac_rows(
            &tx,
            &old,
            &new,
            "key_versions",
            "key, version, wrapped, created",
            |r| {
                let id: String = r.get(2)?;
                let v = KeyVersion {
                    key: parse_row_uuid(&id),
                    version: r.get(3)?,
                    wrapped: r.get(4)?,
                    created: r.get(5)?,
                };
                Ok((format!("{id} v{}", v.version), version_body(&v)))
            },
        )?;
        n += remac_rows(
            &tx,
            &old,
            &new,
            "kek_rotations",
            "kek, wrapped, scheme, started",
            |r| {
                let id: String = r.get(2)?;
                let p = PendingRotation {
                    kek: parse_row_uuid(&id),
                    wrapped: r.get(3)?,
                    scheme: r.get(4)?,
                    started: r.get(5)?,
                };
                Ok((format!("{id} (rotation)"), rotation_body(&p)))
            },
        )?;
        n += remac_rows(
            &tx,
            &old,
            &new,
            "kek_rotation_items",
            "kek, key, version, wrapped",
            |r| {
                let key: String = r.get(3)?;
                let i = RotationItem {
                    kek: parse_row_uuid(&r.get::<_, String>(2)?),
                    key: parse_row_uuid(&key),
                    version: r.get(4)?,
                    wrapped: r.get(5)?,
                };
                Ok((format!("{key} (rotation item)"), item_body(&i)))
            },
        )?;
        n += roots::remac_wraps(&tx, &old, &new)?;
        n += roots::remac_root_set(&tx, &old, &new)?;
        n += devices::remac_devices(&tx, &old, &new)?;
        for m in metas {
            let values = m
                .values
                .iter()
                .map(|v| meta_in(&tx, v))
                .collect::<Result<Vec<_>, _>>()?;
            let Some(tag) = meta_in(&tx, &m.mac)? else {
                continue;
            };
            let body = (m.body)(&values);
            let tag = hex::decode(tag.trim()).unwrap_or_default();
            check_mac(&old, &m.mac, &body, Some(&tag))?;
            tx.execute(
                "UPDATE meta SET value = ?2 WHERE name = ?1",
                params![&*m.mac, hex::encode(new.tag(&body))],
            )
            .map_err(sql("rekey: meta"))?;
            n += 1;
        }
        for r in records {
            insert_with(&tx, Some(&new), r)?;
        }
        roots::insert_wraps(&tx, &new, wraps)?;
        let cleared: Vec<(&str, Option<&str>)> = clear.iter().map(|n| (*n, None)).collect();
        put_metas(&tx, &cleared, "rekey: clear meta")?;
        let set: Vec<(&str, Option<&str>)> =
            set.iter().map(|(n, v)| (*n, Some(v.as_str()))).collect();
        put_metas(&tx, &set, "rekey: write meta")?;
        rekey_test_fail()?;
        crate::hierarchy::crash_point("integrity-rekey-before-commit");
        tx.commit().map_err(sql("commit integrity rekey"))?;
        // Loaded before the connection is released, so no write MAC'd under the old key lands
        // after the commit through this connection's next holder.
        self.mac.set(Some(new));
        drop(conn);
        Ok(n)
    }

    pub fn meta(&self, name: &str) -> Result<Option<String>, KeystoreError> {
        self.lock()
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql("read meta"))
    }

    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), KeystoreError> {
        self.set_metas(&[(name, Some(value))])
    }

    pub fn delete_meta(&self, name: &str) -> Result<(), KeystoreError> {
        self.set_metas(&[(name, None)])
    }

    /// Set (`Some`) or delete (`None`) several meta rows in one transaction.
    pub fn set_metas(&self, rows: &[(&str, Option<&str>)]) -> Result<(), KeystoreError> {
        let mut conn = self.lock();
        self.put_metas_locked(&mut conn, rows)
    }

    /// [`SqliteStore::set_metas`], with the disk flush done after the connection is released:
    /// the transaction commits with `synchronous = NORMAL` (in WAL mode a commit then writes its
    /// frames without an `fsync`; checkpoints still sync), then the WAL file is `fdatasync`ed
    /// without holding the connection, so on return the rows are as durable as `set_metas`
    /// makes them. For the audit chain head, written every `sync_ms` while requests flow: under
    /// `synchronous = FULL` its commit held the connection for the WAL's `fsync` (~2 ms here),
    /// and every request that needed the keystore meanwhile (the generation check of record
    /// copies, the SSH door's identity index) waited for the disk.
    pub fn set_metas_flushed_unlocked(
        &self,
        rows: &[(&str, Option<&str>)],
    ) -> Result<(), KeystoreError> {
        {
            let mut conn = self.lock();
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(sql("set synchronous=NORMAL"))?;
            let done = self.put_metas_locked(&mut conn, rows);
            let restored = conn
                .pragma_update(None, "synchronous", "FULL")
                .map_err(sql("set synchronous=FULL"));
            done?;
            restored?;
        }
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let io = |source| KeystoreError::Io {
            op: "flush meta write",
            path: wal.clone(),
            source,
        };
        match std::fs::File::open(&wal) {
            Ok(f) => f.sync_data().map_err(io),
            // No WAL file: not a WAL database (an in-memory one in tests); nothing to flush.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    fn put_metas_locked(
        &self,
        conn: &mut Connection,
        rows: &[(&str, Option<&str>)],
    ) -> Result<(), KeystoreError> {
        let before = conn.total_changes();
        let tx = conn.transaction().map_err(sql("begin write meta"))?;
        put_metas(&tx, rows, "write meta")?;
        let done = tx.commit().map_err(sql("commit write meta"));
        // Counted committed or not (as `total_changes` counts them), under the connection lock.
        self.meta_changes.fetch_add(
            conn.total_changes().saturating_sub(before),
            std::sync::atomic::Ordering::SeqCst,
        );
        done
    }
}

// ---- KEK rotation journal --------------------------------------------------------------------

/// Every wrapped secret under `kek`: (the child's record, version, wrapped bytes), the key rows'
/// own (version 1) and their `key_versions` rows, all checked. Children without wrapped bytes
/// (token keypairs) have nothing to rewrap.
fn wrapped_under(
    conn: &Connection,
    key: Option<&MacKey>,
    kek: &Uuid,
) -> Result<Vec<(KeyRecord, u32, Vec<u8>)>, KeystoreError> {
    let mut out = Vec::new();
    for r in query_with(
        conn,
        key,
        "list children",
        "parent = ?1",
        &[&kek.to_string()],
    )? {
        let Some(w) = r.wrapped.clone() else { continue };
        out.push((r.clone(), 1, w));
        type Row = (u32, Vec<u8>, u64, Option<Vec<u8>>);
        let versions: Vec<Row> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT version, wrapped, created, mac FROM key_versions WHERE key = ?1 ORDER BY version",
                )
                .map_err(sql("list key versions"))?;
            let rows = stmt
                .query_map([r.id.to_string()], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })
                .map_err(sql("list key versions"))?;
            rows.collect::<Result<_, _>>()
                .map_err(sql("list key versions"))?
        };
        for (version, wrapped, created, mac) in versions {
            let v = KeyVersion {
                key: r.id,
                version,
                wrapped,
                created,
            };
            if let Some(k) = key {
                check_mac(
                    k,
                    &format!("{} version {version}", r.id),
                    &version_body(&v),
                    mac.as_deref(),
                )?;
            }
            out.push((r.clone(), version, v.wrapped));
        }
    }
    Ok(out)
}

/// The (key, version) pairs that already have an item for `kek`.
fn items_done(
    conn: &Connection,
    kek: &Uuid,
) -> Result<std::collections::HashSet<(String, u32)>, KeystoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT key, version FROM kek_rotation_items WHERE kek = ?1")
        .map_err(sql("read rotation items"))?;
    let rows = stmt
        .query_map([kek.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql("read rotation items"))?;
    rows.collect::<Result<_, _>>()
        .map_err(sql("read rotation items"))
}

impl SqliteStore {
    /// Record a KEK rotation as begun: the new KEK, wrapped under the root (MAC'd).
    pub fn rotation_begin(&self, r: &PendingRotation) -> Result<(), KeystoreError> {
        let key = self.key();
        self.lock()
            .execute(
                "INSERT INTO kek_rotations (kek, wrapped, scheme, started, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    r.kek.to_string(),
                    r.wrapped,
                    r.scheme,
                    r.started,
                    key.as_deref().map(|k| k.tag(&rotation_body(r)))
                ],
            )
            .map_err(sql("begin KEK rotation"))?;
        Ok(())
    }

    /// Every KEK rotation begun and not finished, each checked.
    pub fn rotations_pending(&self) -> Result<Vec<PendingRotation>, KeystoreError> {
        let key = self.key();
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT kek, wrapped, scheme, started, mac FROM kek_rotations ORDER BY started",
            )
            .map_err(sql("read KEK rotations"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u64>(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            })
            .map_err(sql("read KEK rotations"))?;
        let mut out = Vec::new();
        for row in rows {
            let (kek, wrapped, scheme, started, mac) = row.map_err(sql("read KEK rotations"))?;
            let r = PendingRotation {
                kek: Uuid::parse_str(&kek).map_err(|_| KeystoreError::Tampered {
                    id: kek.clone(),
                    what: "rotation journal: not a UUID".into(),
                })?,
                wrapped,
                scheme,
                started,
            };
            if let Some(k) = key.as_deref() {
                check_mac(
                    k,
                    &format!("rotation of {kek}"),
                    &rotation_body(&r),
                    mac.as_deref(),
                )?;
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Drop a rotation's journal (before its swap nothing refers to it, so this loses nothing
    /// but the work done).
    pub fn rotation_abandon(&self, kek: &Uuid) -> Result<(), KeystoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin abandon rotation"))?;
        tx.execute(
            "DELETE FROM kek_rotation_wraps WHERE kek = ?1",
            [kek.to_string()],
        )
        .map_err(sql("drop rotation wraps"))?;
        tx.execute(
            "DELETE FROM kek_rotation_items WHERE kek = ?1",
            [kek.to_string()],
        )
        .map_err(sql("drop rotation items"))?;
        tx.execute(
            "DELETE FROM kek_rotations WHERE kek = ?1",
            [kek.to_string()],
        )
        .map_err(sql("drop rotation journal"))?;
        tx.commit().map_err(sql("commit abandon rotation"))
    }

    /// The wrapped secrets under `kek` that have no item yet: (record, version, wrapped).
    pub fn rotation_todo(
        &self,
        kek: &Uuid,
    ) -> Result<Vec<(KeyRecord, u32, Vec<u8>)>, KeystoreError> {
        let key = self.key();
        let conn = self.lock();
        let done = items_done(&conn, kek)?;
        Ok(wrapped_under(&conn, key.as_deref(), kek)?
            .into_iter()
            .filter(|(r, v, _)| !done.contains(&(r.id.to_string(), *v)))
            .collect())
    }

    /// Progress of the pending rotation of `kek` (counts only, nothing decoded): `None` when
    /// none is pending, else (items rewrapped, wrapped secrets under the KEK: each child's
    /// current wrap and its older versions).
    pub fn rotation_progress(&self, kek: &Uuid) -> Result<Option<(u64, u64)>, KeystoreError> {
        let conn = self.lock();
        let id = kek.to_string();
        let count = |what: &'static str, q: &str| -> Result<u64, KeystoreError> {
            conn.prepare_cached(q)
                .and_then(|mut s| s.query_row([&id], |r| r.get::<_, i64>(0)))
                .map(|n| n.max(0) as u64)
                .map_err(sql(what))
        };
        if count(
            "read rotation journal",
            "SELECT COUNT(*) FROM kek_rotations WHERE kek = ?1",
        )? == 0
        {
            return Ok(None);
        }
        let done = count(
            "count rotation items",
            "SELECT COUNT(*) FROM kek_rotation_items WHERE kek = ?1",
        )?;
        let current = count(
            "count children",
            "SELECT COUNT(*) FROM keys WHERE parent = ?1 AND wrapped IS NOT NULL",
        )?;
        let older = count(
            "count child versions",
            "SELECT COUNT(*) FROM key_versions v JOIN keys k ON v.key = k.id \
             WHERE k.parent = ?1 AND k.wrapped IS NOT NULL",
        )?;
        Ok(Some((done, current + older)))
    }

    /// Store a batch of rewrapped children in one transaction (each MAC'd).
    pub fn rotation_put(&self, items: &[RotationItem]) -> Result<(), KeystoreError> {
        let key = self.key();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin rotation batch"))?;
        for i in items {
            tx.execute(
                "INSERT OR REPLACE INTO kek_rotation_items (kek, key, version, wrapped, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    i.kek.to_string(),
                    i.key.to_string(),
                    i.version,
                    i.wrapped,
                    key.as_deref().map(|k| k.tag(&item_body(i)))
                ],
            )
            .map_err(sql("store rotation item"))?;
        }
        tx.commit().map_err(sql("commit rotation batch"))
    }

    /// The swap, in one transaction: when every wrapped secret under the KEK has an item
    /// (checked inside the transaction, so nothing made meanwhile is missed), each child's
    /// wrap is replaced by its item (re-MAC'd), the KEK row gets the new wrap and its version
    /// plus one, and the journal is dropped. `Ok(None)` when some child has no item yet (the caller
    /// rewraps those and tries again); else the KEK's new version.
    pub fn rotation_swap(&self, pending: &PendingRotation) -> Result<Option<u32>, KeystoreError> {
        let key = self.key();
        let key = key.as_deref();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin rotation swap"))?;
        let done = items_done(&tx, &pending.kek)?;
        let all = wrapped_under(&tx, key, &pending.kek)?;
        if all
            .iter()
            .any(|(r, v, _)| !done.contains(&(r.id.to_string(), *v)))
        {
            return Ok(None);
        }
        let items: Vec<(RotationItem, Option<Vec<u8>>)> = {
            let mut stmt = tx
                .prepare("SELECT key, version, wrapped, mac FROM kek_rotation_items WHERE kek = ?1")
                .map_err(sql("read rotation items"))?;
            let rows = stmt
                .query_map([pending.kek.to_string()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                    ))
                })
                .map_err(sql("read rotation items"))?;
            let mut v = Vec::new();
            for row in rows {
                let (k, version, wrapped, mac) = row.map_err(sql("read rotation items"))?;
                let id = Uuid::parse_str(&k).map_err(|_| KeystoreError::Tampered {
                    id: k.clone(),
                    what: "rotation item: not a UUID".into(),
                })?;
                v.push((
                    RotationItem {
                        kek: pending.kek,
                        key: id,
                        version,
                        wrapped,
                    },
                    mac,
                ));
            }
            v
        };
        let records: std::collections::HashMap<Uuid, KeyRecord> =
            all.into_iter().map(|(r, _, _)| (r.id, r)).collect();
        for (i, mac) in &items {
            if let Some(k) = key {
                check_mac(
                    k,
                    &format!("rotation item {} v{}", i.key, i.version),
                    &item_body(i),
                    mac.as_deref(),
                )?;
            }
            if i.version == 1 {
                let Some(r) = records.get(&i.key) else {
                    continue;
                };
                let mut r = r.clone();
                r.wrapped = Some(i.wrapped.clone());
                tx.execute(
                    "UPDATE keys SET wrapped = ?2, mac = ?3 WHERE id = ?1",
                    params![
                        r.id.to_string(),
                        r.wrapped,
                        key.map(|k| k.tag(&record_body(&r)))
                    ],
                )
                .map_err(sql("swap key wrap"))?;
            } else {
                let created: u64 = tx
                    .query_row(
                        "SELECT created FROM key_versions WHERE key = ?1 AND version = ?2",
                        params![i.key.to_string(), i.version],
                        |r| r.get(0),
                    )
                    .map_err(sql("read key version"))?;
                let v = KeyVersion {
                    key: i.key,
                    version: i.version,
                    wrapped: i.wrapped.clone(),
                    created,
                };
                tx.execute(
                    "UPDATE key_versions SET wrapped = ?3, mac = ?4 WHERE key = ?1 AND version = ?2",
                    params![i.key.to_string(), i.version, v.wrapped, key.map(|k| k.tag(&version_body(&v)))],
                )
                .map_err(sql("swap key version wrap"))?;
            }
        }
        let Some(mut kek) =
            query_with(&tx, key, "read KEK", "id = ?1", &[&pending.kek.to_string()])?
                .into_iter()
                .next()
        else {
            return Err(KeystoreError::Corrupt {
                id: pending.kek.to_string(),
                what: "the KEK of a rotation is gone".into(),
            });
        };
        match roots::swap_wraps(&tx, key, &kek)? {
            Some((parent, scheme, wrapped)) => {
                kek.parent = Some(parent);
                kek.scheme = scheme;
                kek.wrapped = Some(wrapped);
            }
            None => {
                kek.wrapped = Some(pending.wrapped.clone());
                kek.scheme = pending.scheme.clone();
            }
        }
        kek.version = kek.version.saturating_add(1);
        kek.rotated = Some(now());
        tx.execute(
            "UPDATE keys SET wrapped = ?2, scheme = ?3, version = ?4, rotated = ?5, mac = ?6, parent = ?7 WHERE id = ?1",
            params![
                kek.id.to_string(),
                kek.wrapped,
                kek.scheme,
                kek.version,
                kek.rotated,
                key.map(|k| k.tag(&record_body(&kek))),
                kek.parent.map(|p| p.to_string())
            ],
        )
        .map_err(sql("swap KEK wrap"))?;
        tx.execute(
            "DELETE FROM kek_rotation_items WHERE kek = ?1",
            [pending.kek.to_string()],
        )
        .map_err(sql("drop rotation items"))?;
        tx.execute(
            "DELETE FROM kek_rotations WHERE kek = ?1",
            [pending.kek.to_string()],
        )
        .map_err(sql("drop rotation journal"))?;
        tx.commit().map_err(sql("commit rotation swap"))?;
        Ok(Some(kek.version))
    }
}

// ---- DEK versions ---------------------------------------------------------------------------

impl SqliteStore {
    /// Add version `r.version + 1` of DEK `id` with `wrapped`, and make it the newest, in one
    /// transaction (the key row is read, checked and re-MAC'd inside it). Returns the new
    /// version, or `None` when there is no such key.
    pub fn add_version(&self, id: &Uuid, wrapped: Vec<u8>) -> Result<Option<u32>, KeystoreError> {
        let key = self.key();
        let key = key.as_deref();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin add version"))?;
        let Some(mut r) = query_with(&tx, key, "read key", "id = ?1", &[&id.to_string()])?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let v = KeyVersion {
            key: r.id,
            version: r.version.saturating_add(1),
            wrapped,
            created: now(),
        };
        tx.execute(
            "INSERT INTO key_versions (key, version, wrapped, created, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                v.key.to_string(),
                v.version,
                v.wrapped,
                v.created,
                key.map(|k| k.tag(&version_body(&v)))
            ],
        )
        .map_err(sql("insert key version"))?;
        r.version = v.version;
        r.rotated = Some(v.created);
        let mac = key.map(|k| k.tag(&record_body(&r)));
        tx.execute(
            "UPDATE keys SET version = ?2, rotated = ?3, mac = ?4 WHERE id = ?1",
            params![id.to_string(), r.version, r.rotated, mac],
        )
        .map_err(sql("update key version"))?;
        tx.commit().map_err(sql("commit add version"))?;
        Ok(Some(v.version))
    }

    /// Version `version` (≥ 2) of key `id`, its MAC checked while the MAC key is loaded.
    pub fn version(&self, id: &Uuid, version: u32) -> Result<Option<KeyVersion>, KeystoreError> {
        let key = self.key();
        let conn = self.lock();
        let row = conn
            .prepare_cached(
                "SELECT wrapped, created, mac FROM key_versions WHERE key = ?1 AND version = ?2",
            )
            .map_err(sql("read key version"))?
            .query_row(params![id.to_string(), version], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, u64>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                ))
            })
            .optional()
            .map_err(sql("read key version"))?;
        let Some((wrapped, created, mac)) = row else {
            return Ok(None);
        };
        let v = KeyVersion {
            key: *id,
            version,
            wrapped,
            created,
        };
        if let Some(k) = key.as_deref() {
            check_mac(
                k,
                &format!("{id} version {version}"),
                &version_body(&v),
                mac.as_deref(),
            )?;
        }
        Ok(Some(v))
    }

    /// Change a key's usage limits (`usage`, `not_after`) and `exportable`, re-MACing the row,
    /// in one transaction: `change` sees the row as it is (MAC-checked) and answers the new
    /// values, or refuses. Returns the record after the change, or `None` when there is no such
    /// key.
    pub fn update_limits<E: From<KeystoreError>>(
        &self,
        id: &Uuid,
        change: impl FnOnce(&KeyRecord) -> Result<(Option<u32>, Option<u64>, bool), E>,
    ) -> Result<Option<KeyRecord>, E> {
        let key = self.key();
        let key = key.as_deref();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin set limits"))?;
        let Some(mut r) = query_with(&tx, key, "read key", "id = ?1", &[&id.to_string()])?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let (usage, not_after, exportable) = change(&r)?;
        r.usage = usage;
        r.not_after = not_after;
        r.exportable = exportable;
        let mac = key.map(|k| k.tag(&record_body(&r)));
        tx.execute(
            "UPDATE keys SET usage = ?2, not_after = ?3, exportable = ?4, mac = ?5 WHERE id = ?1",
            params![id.to_string(), r.usage, r.not_after, r.exportable, mac],
        )
        .map_err(sql("set limits"))?;
        tx.commit().map_err(sql("commit set limits"))?;
        Ok(Some(r))
    }

    /// Set a key's minimum version, re-MACing the row. Returns the record as it was before, or
    /// `None` when there is no such key.
    pub fn set_min_version(&self, id: &Uuid, min: u32) -> Result<Option<KeyRecord>, KeystoreError> {
        let key = self.key();
        let key = key.as_deref();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin set min version"))?;
        let Some(before) = query_with(&tx, key, "read key", "id = ?1", &[&id.to_string()])?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let mut r = before.clone();
        r.min_version = Some(min);
        let mac = key.map(|k| k.tag(&record_body(&r)));
        tx.execute(
            "UPDATE keys SET min_version = ?2, mac = ?3 WHERE id = ?1",
            params![id.to_string(), min, mac],
        )
        .map_err(sql("set min version"))?;
        tx.commit().map_err(sql("commit set min version"))?;
        Ok(Some(before))
    }

    /// Revoke key `id` and every key wrapped under it (its children, for a KEK) that is not
    /// revoked yet, in one transaction, re-MACing each row. Returns the ids revoked (`id`
    /// first; empty when there is no such key).
    pub fn revoke_tree(&self, id: &Uuid) -> Result<Vec<Uuid>, KeystoreError> {
        let key = self.key();
        let key = key.as_deref();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin revoke"))?;
        let mut ids = Vec::new();
        for r in query_with(&tx, key, "read key", "id = ?1", &[&id.to_string()])? {
            ids.push(r.id);
        }
        if ids.is_empty() {
            return Ok(ids);
        }
        for r in query_with(
            &tx,
            key,
            "read children",
            "parent = ?1 AND state != 'revoked'",
            &[&id.to_string()],
        )? {
            ids.push(r.id);
        }
        for i in &ids {
            set_state_with(&tx, key, i, KeyState::Revoked)?;
        }
        tx.commit().map_err(sql("commit revoke"))?;
        Ok(ids)
    }
}

impl SqliteStore {
    /// The SSH flags of every active keypair that has any (records checked like every read).
    pub fn ssh_flags(&self) -> Result<Vec<(Uuid, SshFlags)>, KeystoreError> {
        Ok(self
            .list(KeyKind::Keypair, None)?
            .into_iter()
            .filter(|r| r.ssh.0 != 0 && r.state == KeyState::Active)
            .map(|r| (r.id, r.ssh))
            .collect())
    }

    /// Set a keypair's SSH flags, re-MACing the row; false when there is no such keypair.
    pub fn set_ssh_flags(&self, id: &Uuid, flags: SshFlags) -> Result<bool, KeystoreError> {
        let key = self.key();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin set ssh flags"))?;
        let Some(mut r) = query_with(
            &tx,
            key.as_deref(),
            "read key",
            "id = ?1 AND kind = 'keypair'",
            &[&id.to_string()],
        )?
        .into_iter()
        .next() else {
            return Ok(false);
        };
        r.ssh = flags;
        let mac = key.as_deref().map(|k| k.tag(&record_body(&r)));
        tx.execute(
            "UPDATE keys SET ssh = ?2, mac = ?3 WHERE id = ?1",
            params![id.to_string(), flags.0, mac],
        )
        .map_err(sql("set ssh flags"))?;
        tx.commit().map_err(sql("commit set ssh flags"))?;
        Ok(true)
    }

    /// Insert a keypair with its SSH flags.
    pub fn insert_with_ssh_flags(
        &self,
        r: &KeyRecord,
        flags: SshFlags,
    ) -> Result<(), KeystoreError> {
        let mut r = r.clone();
        r.ssh = flags;
        self.insert(&r)
    }
}
