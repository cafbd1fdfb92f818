//! The keystore: wrapped keys and their metadata, in SQLite.
//!
//! One row per key (root, KEK, DEK, keypair) with the fields ARCHITECTURE.md lists: id, kind, label,
//! parent, scheme, wrapped bytes, public key, purpose, version, times and state. The file is opened
//! with WAL and `synchronous=FULL`, so a write that returned is on disk; writes that replace keys
//! run in transactions, so a crash leaves the old or the new state, never neither. The schema is
//! versioned (`PRAGMA user_version`) and migrated forward in one transaction at open.
//!
//! It must never hold a key in the clear: every key material column is wrapped by its parent
//! (or, for the root, is only a reference to where the root lives).

use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeystoreError {
    #[error("keystore {op}: {source}")]
    Sql {
        op: &'static str,
        source: rusqlite::Error,
    },
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
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> KeystoreError {
    move |source| KeystoreError::Sql { op, source }
}

/// Schema migrations: entry `n` takes the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
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
    // v4: SSH-agent flags of a keypair (`SshFlags`: offered, confirm on use, added by ssh-add).
    "ALTER TABLE keys ADD COLUMN ssh INTEGER NOT NULL DEFAULT 0;",
];

/// What a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Root,
    Kek,
    Dek,
    Keypair,
    /// A secret that is not a key of its own (a node-key derivation secret).
    Secret,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Root => "root",
            KeyKind::Kek => "kek",
            KeyKind::Dek => "dek",
            KeyKind::Keypair => "keypair",
            KeyKind::Secret => "secret",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "root" => KeyKind::Root,
            "kek" => KeyKind::Kek,
            "dek" => KeyKind::Dek,
            "keypair" => KeyKind::Keypair,
            "secret" => KeyKind::Secret,
            _ => return None,
        })
    }
}

/// A key's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Retired,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => KeyState::Active,
            "retired" => KeyState::Retired,
            "revoked" => KeyState::Revoked,
            _ => return None,
        })
    }
}

/// One keystore row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: Uuid,
    pub kind: KeyKind,
    pub label: Option<String>,
    pub parent: Option<Uuid>,
    /// Wrapping scheme (`aes-kwp`, `ecdh-p256`, `pbkdf2`, ...) or, for a root, its kind.
    pub scheme: String,
    pub wrapped: Option<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    /// Where a key that is not wrapped lives (a PKCS#11 URI for a token root).
    pub locator: Option<String>,
    pub purpose: Option<Purpose>,
    pub exportable: bool,
    pub version: u32,
    pub created: u64,
    pub rotated: Option<u64>,
    pub state: KeyState,
    /// A node key's name (unique among active keys).
    pub name: Option<String>,
    /// The keypair that vouched for this one (node keys).
    pub issuer: Option<Uuid>,
    /// The signed statement that vouches for this key (a COSE_Sign1 delegation).
    pub statement: Option<Vec<u8>>,
    /// Keypairs: their algorithm.
    pub algorithm: Option<Algorithm>,
}

/// A signed revocation of a key, as kept for chain export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub id: Uuid,
    pub revoked: Uuid,
    pub issuer: Uuid,
    pub statement: Vec<u8>,
    pub created: u64,
}

impl KeyRecord {
    /// A fresh active record of `kind`, created now.
    pub fn new(kind: KeyKind, scheme: &str) -> Self {
        KeyRecord {
            id: Uuid::new_v4(),
            kind,
            label: None,
            parent: None,
            scheme: scheme.to_string(),
            wrapped: None,
            public_key: None,
            locator: None,
            purpose: None,
            exportable: false,
            version: 1,
            created: now(),
            rotated: None,
            state: KeyState::Active,
            name: None,
            issuer: None,
            statement: None,
            algorithm: None,
        }
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a DEK is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Purpose {
    /// The owner's own data.
    #[default]
    Personal,
    /// Data shared with someone else.
    Sharing,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Personal => "personal",
            Purpose::Sharing => "sharing",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        match s {
            "personal" => Some(Purpose::Personal),
            "sharing" => Some(Purpose::Sharing),
            _ => None,
        }
    }
}

/// A keypair's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA P-256 / ECDH: signing, key agreement, sharing, node keys.
    P256,
    /// Ed25519: signing only.
    Ed25519,
    /// RSA keys imported for Cryppo `Rsa4096` shares.
    Rsa,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::P256 => "p256",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa => "rsa",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "p256" => Some(Algorithm::P256),
            "ed25519" => Some(Algorithm::Ed25519),
            "rsa" => Some(Algorithm::Rsa),
            _ => None,
        }
    }
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Result<KeyRecord, KeystoreError>> {
    let id: String = row.get("id")?;
    let kind: String = row.get("kind")?;
    let parent: Option<String> = row.get("parent")?;
    let purpose: Option<String> = row.get("purpose")?;
    let algorithm: Option<String> = row.get("algorithm")?;
    let state: String = row.get("state")?;
    let corrupt = |what: String| KeystoreError::Corrupt {
        id: id.clone(),
        what,
    };
    let build = || -> Result<KeyRecord, KeystoreError> {
        Ok(KeyRecord {
            id: Uuid::parse_str(&id).map_err(|_| corrupt("id is not a UUID".into()))?,
            kind: KeyKind::parse(&kind).ok_or_else(|| corrupt(format!("kind {kind}")))?,
            label: row.get("label").map_err(sql("read label"))?,
            parent: parent
                .as_deref()
                .map(Uuid::parse_str)
                .transpose()
                .map_err(|_| corrupt("parent is not a UUID".into()))?,
            scheme: row.get("scheme").map_err(sql("read scheme"))?,
            wrapped: row.get("wrapped").map_err(sql("read wrapped"))?,
            public_key: row.get("public_key").map_err(sql("read public_key"))?,
            locator: row.get("locator").map_err(sql("read locator"))?,
            purpose: match purpose.as_deref() {
                None => None,
                Some(p) => Some(Purpose::parse(p).ok_or_else(|| corrupt(format!("purpose {p}")))?),
            },
            exportable: row.get("exportable").map_err(sql("read exportable"))?,
            version: row.get("version").map_err(sql("read version"))?,
            created: row.get("created").map_err(sql("read created"))?,
            rotated: row.get("rotated").map_err(sql("read rotated"))?,
            state: KeyState::parse(&state).ok_or_else(|| corrupt(format!("state {state}")))?,
            name: row.get("name").map_err(sql("read name"))?,
            issuer: row
                .get::<_, Option<String>>("issuer")
                .map_err(sql("read issuer"))?
                .as_deref()
                .map(Uuid::parse_str)
                .transpose()
                .map_err(|_| corrupt("issuer is not a UUID".into()))?,
            statement: row.get("statement").map_err(sql("read statement"))?,
            algorithm: match algorithm.as_deref() {
                None => None,
                Some(a) => {
                    Some(Algorithm::parse(a).ok_or_else(|| corrupt(format!("algorithm {a}")))?)
                }
            },
        })
    };
    Ok(build())
}

fn insert_with(conn: &Connection, r: &KeyRecord) -> Result<(), KeystoreError> {
    conn.execute(
        "INSERT INTO keys (id, kind, label, parent, scheme, wrapped, public_key, locator,
                           purpose, exportable, version, created, rotated, state,
                           name, issuer, statement, algorithm)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
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
        ],
    )
    .map_err(sql("insert key"))?;
    Ok(())
}

fn insert_revocation_with(conn: &Connection, r: &Revocation) -> Result<(), KeystoreError> {
    conn.execute(
        "INSERT INTO revocations (id, revoked, issuer, statement, created) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            r.id.to_string(),
            r.revoked.to_string(),
            r.issuer.to_string(),
            r.statement,
            r.created
        ],
    )
    .map_err(sql("store revocation"))?;
    Ok(())
}

/// The keystore. Cheap to share: one connection behind a mutex (SQLite serialises writers anyway,
/// and every call here is a few index lookups).
pub struct Keystore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Keystore {
    /// Open (creating if needed) the keystore at `path`; its directory is made 0700 and the file
    /// 0600.
    pub fn open(path: &Path) -> Result<Keystore, KeystoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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
        let conn = Connection::open(path).map_err(sql("open"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("set permissions", e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("set WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("set synchronous=FULL"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql("enable foreign keys"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("set busy timeout"))?;
        let ks = Keystore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        };
        ks.migrate()?;
        Ok(ks)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (it has its own
        // transactions), so a poisoned mutex is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Insert a new record.
    pub fn insert(&self, r: &KeyRecord) -> Result<(), KeystoreError> {
        insert_with(&self.lock(), r)
    }

    fn query(
        &self,
        op: &'static str,
        where_: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<KeyRecord>, KeystoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT * FROM keys WHERE {where_} ORDER BY created, id"
            ))
            .map_err(sql(op))?;
        let rows = stmt.query_map(args, from_row).map_err(sql(op))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(sql(op))??);
        }
        Ok(out)
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
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin replace"))?;
        tx.execute(
            "UPDATE keys SET state = ?2, rotated = ?3 WHERE id = ?1",
            params![old.to_string(), state.as_str(), now()],
        )
        .map_err(sql("retire key"))?;
        insert_with(&tx, new)?;
        if let Some(r) = revocation {
            insert_revocation_with(&tx, r)?;
        }
        tx.commit().map_err(sql("commit replace"))
    }

    /// Mark a key revoked and keep the signed revocation, in one transaction.
    pub fn revoke(&self, r: &Revocation) -> Result<(), KeystoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin revoke"))?;
        tx.execute(
            "UPDATE keys SET state = 'revoked', rotated = ?2 WHERE id = ?1",
            params![r.revoked.to_string(), now()],
        )
        .map_err(sql("mark key revoked"))?;
        insert_revocation_with(&tx, r)?;
        tx.commit().map_err(sql("commit revoke"))
    }

    /// Every stored revocation, oldest first.
    pub fn revocations(&self) -> Result<Vec<Revocation>, KeystoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT id, revoked, issuer, statement, created FROM revocations ORDER BY created, id")
            .map_err(sql("list revocations"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, u64>(4)?,
                ))
            })
            .map_err(sql("list revocations"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, revoked, issuer, statement, created) = row.map_err(sql("list revocations"))?;
            let uuid = |s: &str| {
                Uuid::parse_str(s).map_err(|_| KeystoreError::Corrupt {
                    id: id.clone(),
                    what: "revocation id is not a UUID".into(),
                })
            };
            out.push(Revocation {
                id: uuid(&id)?,
                revoked: uuid(&revoked)?,
                issuer: uuid(&issuer)?,
                statement,
                created,
            });
        }
        Ok(out)
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
        self.lock()
            .execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                [name, value],
            )
            .map_err(sql("write meta"))?;
        Ok(())
    }
}

/// A keypair's SSH-agent flags (the `ssh` column; 0 = not offered to SSH).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SshFlags(pub u32);

impl SshFlags {
    /// Offered on the SSH-agent socket.
    pub const OFFERED: u32 = 1;
    /// Each signature is confirmed by the user first.
    pub const CONFIRM: u32 = 2;
    /// Added through the SSH door (`ssh-add`): removed through it too.
    pub const ADDED: u32 = 4;

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

impl Keystore {
    /// The SSH flags of every active keypair that has any.
    pub fn ssh_flags(&self) -> Result<Vec<(Uuid, SshFlags)>, KeystoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, ssh FROM keys WHERE kind = 'keypair' AND ssh != 0 AND state = 'active'",
            )
            .map_err(sql("list ssh flags"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
            .map_err(sql("list ssh flags"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, flags) = row.map_err(sql("list ssh flags"))?;
            let id = Uuid::parse_str(&id).map_err(|_| KeystoreError::Corrupt {
                id: id.clone(),
                what: "id is not a UUID".into(),
            })?;
            out.push((id, SshFlags(flags)));
        }
        Ok(out)
    }

    /// Set a keypair's SSH flags; false when there is no such keypair.
    pub fn set_ssh_flags(&self, id: &Uuid, flags: SshFlags) -> Result<bool, KeystoreError> {
        let n = self
            .lock()
            .execute(
                "UPDATE keys SET ssh = ?2 WHERE id = ?1 AND kind = 'keypair'",
                params![id.to_string(), flags.0],
            )
            .map_err(sql("set ssh flags"))?;
        Ok(n > 0)
    }

    /// Insert a keypair with its SSH flags in one transaction.
    pub fn insert_with_ssh_flags(
        &self,
        r: &KeyRecord,
        flags: SshFlags,
    ) -> Result<(), KeystoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin insert"))?;
        insert_with(&tx, r)?;
        tx.execute(
            "UPDATE keys SET ssh = ?2 WHERE id = ?1",
            params![r.id.to_string(), flags.0],
        )
        .map_err(sql("set ssh flags"))?;
        tx.commit().map_err(sql("commit insert"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_flags_round_trip() {
        let (_d, ks) = temp();
        let k = KeyRecord::new(KeyKind::Keypair, "aes-kwp");
        ks.insert(&k).unwrap();
        assert!(ks.ssh_flags().unwrap().is_empty());
        assert!(ks
            .set_ssh_flags(&k.id, SshFlags(SshFlags::OFFERED | SshFlags::CONFIRM))
            .unwrap());
        assert_eq!(ks.ssh_flags().unwrap(), vec![(k.id, SshFlags(3))]);
        let k2 = KeyRecord::new(KeyKind::Keypair, "aes-kwp");
        ks.insert_with_ssh_flags(&k2, SshFlags(SshFlags::OFFERED | SshFlags::ADDED))
            .unwrap();
        assert_eq!(ks.ssh_flags().unwrap().len(), 2);
        assert!(!ks.set_ssh_flags(&Uuid::new_v4(), SshFlags(1)).unwrap());
    }

    fn temp() -> (tempfile::TempDir, Keystore) {
        let dir = tempfile::tempdir().unwrap();
        let ks = Keystore::open(&dir.path().join("sub/keystore.db")).unwrap();
        (dir, ks)
    }

    #[test]
    fn records_round_trip_and_list_by_parent() {
        let (_d, ks) = temp();
        let root = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
        ks.insert(&root).unwrap();
        let mut kek = KeyRecord::new(KeyKind::Kek, "aes-kwp");
        kek.parent = Some(root.id);
        kek.wrapped = Some(vec![1; 40]);
        ks.insert(&kek).unwrap();
        let mut dek = KeyRecord::new(KeyKind::Dek, "aes-kwp");
        dek.parent = Some(kek.id);
        dek.purpose = Some(Purpose::Sharing);
        dek.exportable = true;
        dek.label = Some("photos".into());
        ks.insert(&dek).unwrap();
        assert_eq!(ks.get(&dek.id).unwrap().unwrap(), dek);
        assert_eq!(ks.root().unwrap().unwrap(), root);
        assert_eq!(ks.list(KeyKind::Dek, Some(&kek.id)).unwrap(), vec![dek]);
        assert!(ks.list(KeyKind::Dek, Some(&root.id)).unwrap().is_empty());
        assert!(ks.get(&Uuid::new_v4()).unwrap().is_none());
    }

    #[test]
    fn a_parent_must_exist() {
        let (_d, ks) = temp();
        let mut orphan = KeyRecord::new(KeyKind::Kek, "aes-kwp");
        orphan.parent = Some(Uuid::new_v4());
        assert!(matches!(ks.insert(&orphan), Err(KeystoreError::Sql { .. })));
    }

    #[test]
    fn reopen_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.db");
        let r = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
        {
            let ks = Keystore::open(&p).unwrap();
            ks.insert(&r).unwrap();
            ks.set_meta("pin_failures", "2").unwrap();
        }
        let ks = Keystore::open(&p).unwrap();
        assert_eq!(ks.root().unwrap().unwrap(), r);
        assert_eq!(ks.meta("pin_failures").unwrap().as_deref(), Some("2"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_v1_keystore_migrates_to_v2_keeping_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.db");
        {
            let conn = Connection::open(&p).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                "INSERT INTO keys (id, kind, scheme, created) VALUES ('6f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e', 'root', 'pkcs11-aes', 1);
                 INSERT INTO keys (id, kind, parent, scheme, wrapped, created) VALUES ('7f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e', 'kek', '6f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e', 'aes-kwp', x'0102', 2);",
            )
            .unwrap();
        }
        let ks = Keystore::open(&p).unwrap();
        let kek = ks
            .get(&Uuid::parse_str("7f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(kek.wrapped.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(kek.parent, ks.root().unwrap().map(|r| r.id));
        let mut secret = KeyRecord::new(KeyKind::Secret, "aes-kwp");
        secret.parent = Some(kek.id);
        ks.insert(&secret).unwrap();
        let version: i64 = ks
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, Keystore::SCHEMA_VERSION);
        // Foreign keys are back on after the migration.
        let mut orphan = KeyRecord::new(KeyKind::Dek, "aes-kwp");
        orphan.parent = Some(Uuid::new_v4());
        assert!(ks.insert(&orphan).is_err());
    }

    #[test]
    fn revoke_marks_the_key_and_keeps_the_statement() {
        let (_d, ks) = temp();
        let k = KeyRecord::new(KeyKind::Keypair, "aes-kwp");
        ks.insert(&k).unwrap();
        let r = Revocation {
            id: Uuid::new_v4(),
            revoked: k.id,
            issuer: k.id,
            statement: vec![9, 9],
            created: 5,
        };
        ks.revoke(&r).unwrap();
        assert_eq!(ks.get(&k.id).unwrap().unwrap().state, KeyState::Revoked);
        assert_eq!(ks.revocations().unwrap(), vec![r]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.db");
        Connection::open(&p)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Keystore::open(&p),
            Err(KeystoreError::TooNew { found: 99, .. })
        ));
    }
}
