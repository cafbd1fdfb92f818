//! `keystore migrate` (issue #17 item 6): copy the whole keystore into a new, empty keystore
//! through the backend interface, then check the copy record by record.
//!
//! The steps ([`Keystore::migrate_to`]): the destination is parsed (an absolute SQLite
//! path, or a PostgreSQL location: `postgres://...`) and opened (created and migrated to the
//! current schema); it must hold no row at all. The destination gets a copy of the MAC key
//! loaded now. Every row of the source is read with its MAC checked (`Keystore::snapshot`: one
//! consistent read), written into the destination in one transaction, MAC'd under the same key
//! (so the MACs come out byte for byte as they were), and then read back from the destination
//! with the MAC key — every row's MAC checked by the backend's own read path — and compared with
//! the source, table by table and record by record ([`verify`]). A row that does not verify or
//! differs, or a table whose count differs, fails the migration naming the record, and the
//! destination is put back as it was: a file this step created is removed, an existing empty
//! file is emptied again, and the rows a database copy wrote are deleted
//! ([`super::PgStore::discard_copy`]).
//!
//! This module must never write to the source keystore, never write into (or delete from) a
//! destination that held anything before, and never report success for a copy it has not read
//! back and checked.

use super::{Backend, Keystore, KeystoreError, RowCounts, Snapshot};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a migration failed. Nothing of the source changed in any case.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The copy is checked with the keystore MAC key, which exists only while unlocked.
    #[error("keystore migrate: the agent is locked: unlock it first")]
    Locked,
    /// The destination is not one this agent can write.
    #[error("keystore migrate: {to}: {why}")]
    BadDestination { to: String, why: &'static str },
    /// The destination already holds rows.
    #[error(
        "keystore migrate: {to} is not empty ({what}): refusing to write into it; name a new file"
    )]
    NotEmpty { to: String, what: String },
    /// Opening, writing or reading the destination failed.
    #[error("keystore migrate: destination {to}: {source}")]
    Destination {
        to: String,
        #[source]
        source: KeystoreError,
    },
    /// Reading this keystore failed (a row that does not verify is `keystore_tampered`).
    #[error("keystore migrate: reading this keystore: {0}")]
    Source(#[source] KeystoreError),
    /// A table of the copy holds another number of rows than the source's.
    #[error(
        "keystore migrate: the copy in {to} has {copied} rows in {table}, the source {source_rows}"
    )]
    CountMismatch {
        to: String,
        table: &'static str,
        source_rows: u64,
        copied: u64,
    },
    /// A row of the copy does not verify under the MAC key, or differs from the source's.
    #[error("keystore migrate: the copy in {to} does not check out: {table} record {id}: {what}")]
    Verify {
        to: String,
        table: &'static str,
        id: String,
        what: String,
    },
}

impl MigrateError {
    pub fn code(&self) -> keyward_proto::ErrorCode {
        use keyward_proto::ErrorCode;
        match self {
            MigrateError::Locked => ErrorCode::Locked,
            MigrateError::BadDestination { .. } => ErrorCode::InvalidArgs,
            MigrateError::NotEmpty { .. } => ErrorCode::AlreadyExists,
            MigrateError::Destination { source, .. } => source.code(),
            MigrateError::Source(e) => e.code(),
            MigrateError::CountMismatch { .. } => ErrorCode::KeystoreError,
            MigrateError::Verify { .. } => ErrorCode::KeystoreTampered,
        }
    }
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The destination, as given.
    pub to: String,
    /// Rows copied and checked, per table.
    pub counts: RowCounts,
    /// How long it took, in milliseconds.
    pub ms: u64,
}

/// Where a copy goes.
enum Destination {
    Sqlite(PathBuf),
    Postgres(super::postgres::PgLocation),
}

impl Destination {
    /// `serving`: the keystore this agent serves (never a destination).
    fn parse(to: &str, serving: &Keystore) -> Result<Destination, MigrateError> {
        let bad = |why| MigrateError::BadDestination {
            to: to.to_string(),
            why,
        };
        if super::postgres::looks_like_postgres(to) {
            let loc = super::postgres::PgLocation::parse(to).map_err(|what| {
                MigrateError::Destination {
                    to: to.to_string(),
                    source: KeystoreError::Database {
                        op: "parse the PostgreSQL location",
                        what,
                    },
                }
            })?;
            if let super::Backend::Postgres(p) = serving.backend() {
                if p.location().display() == loc.display() {
                    return Err(bad("is the keystore this agent serves"));
                }
            }
            return Ok(Destination::Postgres(loc));
        }
        if to.contains("://") {
            return Err(bad("not a keystore location this agent understands"));
        }
        let path = PathBuf::from(to);
        if !path.is_absolute() {
            return Err(bad("not an absolute path"));
        }
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if let Some(serving) = serving.path() {
            if path == serving || same(&path, serving) {
                return Err(bad("is the keystore this agent serves"));
            }
        }
        Ok(Destination::Sqlite(path))
    }
}

/// Remove an SQLite keystore file this migration created (and its WAL and shared memory).
fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "keystore migrate: could not remove a failed copy");
            }
        }
    }
}

/// Put back an SQLite destination that was an existing empty file: truncate it to nothing
/// again and remove the WAL and shared memory opening it made.
fn empty_sqlite(path: &Path) {
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
    {
        tracing::warn!(path = %path.display(), error = %e, "keystore migrate: could not empty the destination again");
    }
    for suffix in ["-wal", "-shm", "-journal"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "keystore migrate: could not remove a failed copy");
            }
        }
    }
}

/// Check `dest` against `src`: every table's count, then every row read back through the
/// destination's backend with the MAC key loaded (a row whose MAC does not verify fails that
/// read) and compared with the source's, in order. Returns the destination's counts.
pub fn verify(src: &Snapshot, dest: &Keystore, to: &str) -> Result<RowCounts, MigrateError> {
    let destination = |source| MigrateError::Destination {
        to: to.to_string(),
        source,
    };
    let counts = dest.row_counts().map_err(destination)?;
    for ((table, want), (_, got)) in src.counts().tables().into_iter().zip(counts.tables()) {
        if want != got {
            return Err(MigrateError::CountMismatch {
                to: to.to_string(),
                table,
                source_rows: want,
                copied: got,
            });
        }
    }
    let copy = match dest.snapshot() {
        Ok(s) => s,
        Err(KeystoreError::Tampered { id, what }) | Err(KeystoreError::Corrupt { id, what }) => {
            return Err(MigrateError::Verify {
                to: to.to_string(),
                table: "a",
                id,
                what,
            })
        }
        Err(e) => return Err(destination(e)),
    };
    fn same<T: PartialEq>(
        to: &str,
        table: &'static str,
        a: &[T],
        b: &[T],
        id: impl Fn(&T) -> String,
    ) -> Result<(), MigrateError> {
        for (x, y) in a.iter().zip(b) {
            if x != y {
                return Err(MigrateError::Verify {
                    to: to.to_string(),
                    table,
                    id: id(x),
                    what: "differs from the source's".into(),
                });
            }
        }
        if a.len() != b.len() {
            return Err(MigrateError::CountMismatch {
                to: to.to_string(),
                table,
                source_rows: a.len() as u64,
                copied: b.len() as u64,
            });
        }
        Ok(())
    }
    same(to, "keys", &src.keys, &copy.keys, |r| r.id.to_string())?;
    same(to, "devices", &src.devices, &copy.devices, |d| {
        d.id.to_string()
    })?;
    same(to, "key_versions", &src.versions, &copy.versions, |v| {
        format!("{} version {}", v.key, v.version)
    })?;
    same(
        to,
        "revocations",
        &src.revocations,
        &copy.revocations,
        |r| r.id.to_string(),
    )?;
    same(to, "kek_wraps", &src.wraps, &copy.wraps, |w| {
        format!("wrap of {} under root {}", w.kek, w.root)
    })?;
    same(to, "kek_rotations", &src.rotations, &copy.rotations, |r| {
        format!("rotation of {}", r.kek)
    })?;
    same(
        to,
        "kek_rotation_items",
        &src.rotation_items,
        &copy.rotation_items,
        |i| format!("rotation item {} v{}", i.key, i.version),
    )?;
    same(
        to,
        "kek_rotation_wraps",
        &src.rotation_wraps,
        &copy.rotation_wraps,
        |w| format!("rotation wrap of {} under root {}", w.kek, w.root),
    )?;
    same(to, "meta", &src.meta, &copy.meta, |(n, _)| n.clone())?;
    Ok(counts)
}

impl Keystore {
    /// Copy this keystore into the new, empty keystore at `to` and check the copy (module doc).
    /// Needs the MAC key (unlocked). Never changes this keystore.
    pub fn migrate_to(&self, to: &str) -> Result<MigrateReport, MigrateError> {
        let start = std::time::Instant::now();
        let key = self.mac_key().ok_or(MigrateError::Locked)?;
        let destination = |source| MigrateError::Destination {
            to: to.to_string(),
            source,
        };
        // What to undo on failure: a file this step created goes; an existing empty file is
        // emptied again; a database's rows this step wrote are deleted.
        let (dest, created) = match Destination::parse(to, self)? {
            Destination::Postgres(loc) => {
                (Keystore::open_postgres(&loc).map_err(destination)?, None)
            }
            Destination::Sqlite(path) => {
                let existed = path.exists();
                // An existing file that holds anything is never opened (opening migrates its
                // schema).
                if let Ok(m) = std::fs::metadata(&path) {
                    if !m.is_file() || m.len() > 0 {
                        return Err(MigrateError::NotEmpty {
                            to: to.to_string(),
                            what: if m.is_file() {
                                format!("an existing file of {} bytes", m.len())
                            } else {
                                "not a regular file".into()
                            },
                        });
                    }
                }
                let dest = Keystore::open(&path).map_err(destination)?;
                (dest, Some((path, existed)))
            }
        };
        let mut wrote = false;
        let result = (|| {
            let rows = dest.row_counts().map_err(destination)?.total();
            if rows > 0 {
                return Err(MigrateError::NotEmpty {
                    to: to.to_string(),
                    what: format!("{rows} rows"),
                });
            }
            dest.set_mac_key(Some(key.duplicate()));
            let snapshot = self.snapshot().map_err(MigrateError::Source)?;
            dest.load_snapshot(&snapshot).map_err(destination)?;
            // Written (in one transaction: a failed write above left nothing).
            wrote = true;
            verify(&snapshot, &dest, to)
        })();
        if result.is_err() && wrote {
            if let Backend::Postgres(p) = dest.backend() {
                // The copy does not check out: the destination goes back to the empty keystore
                // it was (the schema the open created stays, as any open leaves it).
                match p.discard_copy() {
                    Ok(n) => tracing::warn!(
                        to,
                        rows = n,
                        "keystore migrate: removed the copy that failed its check"
                    ),
                    Err(e) => {
                        tracing::error!(to, error = %e, "keystore migrate: could not remove the copy that failed its check; remove its rows before another attempt")
                    }
                }
            }
        }
        dest.set_mac_key(None);
        drop(dest);
        match result {
            Ok(counts) => Ok(MigrateReport {
                to: to.to_string(),
                counts,
                ms: start.elapsed().as_millis() as u64,
            }),
            Err(e) => {
                // A file this step created goes; an empty file that was there is emptied again
                // (opening it wrote the schema: a second attempt would find it "not empty").
                // A database copy is written in one transaction: a failed write leaves nothing,
                // and a copy that fails its check was deleted above.
                match created {
                    Some((path, false)) => remove_sqlite(&path),
                    Some((path, true)) => empty_sqlite(&path),
                    None => {}
                }
                Err(e)
            }
        }
    }
}
