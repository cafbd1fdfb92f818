//! `keyward backup export|import`: a consistent copy of the keystore, and putting one back.
//!
//! The keystore holds only wrapped keys, public keys and MACs, so a backup holds nothing that is
//! not wrapped: without the root (the token and its PIN, or the passphrase) or a recovery secret
//! it opens nothing. The copy is made with SQLite's online backup API, page by page under one
//! read transaction of the source, so it is a snapshot even while the agent writes; it is
//! written to a temporary file beside the target (mode 0600), checked with `integrity_check`,
//! synced, and only then renamed into place. Import never writes over a keystore that an agent
//! is serving, and never over an existing one unless asked, when the old one is kept beside it.
//!
//! This module reads and writes files only; it must never talk to a token, and never change the
//! source of an export.

use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// What a backup holds (read from the copy that was written or checked).
#[derive(Debug)]
pub struct Summary {
    pub schema: i64,
    pub roots: i64,
    pub keks: i64,
    pub deks: i64,
    pub keypairs: i64,
    pub others: i64,
    pub bytes: u64,
}

impl Summary {
    pub fn to_json(&self, path: &Path) -> Value {
        json!({
            "path": path.display().to_string(),
            "schema": self.schema,
            "roots": self.roots,
            "keks": self.keks,
            "deks": self.deks,
            "keypairs": self.keypairs,
            "other_records": self.others,
            "bytes": self.bytes,
        })
    }

    pub fn to_text(&self, verb: &str, path: &Path) -> String {
        format!(
            "{verb} {} ({} bytes, keystore schema v{}): {} root(s), {} KEK(s), {} DEK(s), {} keypair(s), {} other record(s)\n",
            path.display(),
            self.bytes,
            self.schema,
            self.roots,
            self.keks,
            self.deks,
            self.keypairs,
            self.others
        )
    }
}

fn err(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Open an existing database without creating it. Read-write (never written here): SQLite needs
/// write access to a WAL file's `-shm` to read it consistently alongside a running agent.
fn open_existing(path: &Path, what: &str) -> Result<Connection, String> {
    if !path.is_file() {
        return Err(err(what, path, "no such file"));
    }
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| err(what, path, e))?;
    c.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| err(what, path, e))?;
    Ok(c)
}

/// SQLite's `integrity_check`, and that the file is a Keyward keystore with a root: its
/// summary.
fn check(c: &Connection, path: &Path) -> Result<Summary, String> {
    let rows: Vec<String> = c
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(|e| err("checking", path, e))?;
    if rows != ["ok"] {
        return Err(err(
            "checking",
            path,
            format!("damaged: integrity_check: {}", rows.join("; ")),
        ));
    }
    let schema: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| err("checking", path, e))?;
    let count = |kind: &str| -> Result<i64, String> {
        c.query_row("SELECT count(*) FROM keys WHERE kind = ?1", [kind], |r| {
            r.get(0)
        })
        .map_err(|e| {
            err(
                "checking",
                path,
                format!("not a Keyward keystore (no keys table: {e})"),
            )
        })
    };
    let all: i64 = c
        .query_row("SELECT count(*) FROM keys", [], |r| r.get(0))
        .map_err(|e| {
            err(
                "checking",
                path,
                format!("not a Keyward keystore (no keys table: {e})"),
            )
        })?;
    let s = Summary {
        schema,
        roots: count("root")?,
        keks: count("kek")?,
        deks: count("dek")?,
        keypairs: count("keypair")?,
        others: 0,
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    };
    if schema < 1 || s.roots == 0 {
        return Err(err(
            "checking",
            path,
            "not an initialized Keyward keystore (it has no root record)",
        ));
    }
    Ok(Summary {
        others: all - s.roots - s.keks - s.deks - s.keypairs,
        ..s
    })
}

/// Copy `src` into a new temporary file in `dest`'s directory with the online backup API, check
/// the copy, sync it, and rename it to `dest`. The caller has decided that `dest` may be
/// replaced.
fn copy_into_place(src: &Connection, dest: &Path) -> Result<Summary, String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| err("creating directory", &dir, e))?;
    // NamedTempFile is created 0600; SQLite writes into the file as it is.
    let tmp = tempfile::Builder::new()
        .prefix(".keyward-backup-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| err("writing", dest, e))?;
    {
        let mut out = Connection::open(tmp.path()).map_err(|e| err("writing", dest, e))?;
        let backup = rusqlite::backup::Backup::new(src, &mut out)
            .map_err(|e| err("starting the backup to", dest, e))?;
        // All pages in one step (-1): one read transaction of the source, so a consistent
        // snapshot. A source busy with a write is retried for up to ten seconds.
        use rusqlite::backup::StepResult;
        let mut waited = 0;
        loop {
            match backup.step(-1).map_err(|e| err("copying to", dest, e))? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked if waited < 200 => {
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                _ => return Err(err("copying to", dest, "the keystore stayed busy for 10 s")),
            }
        }
        drop(backup);
        // A backup is a single file: no WAL beside it.
        out.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| err("writing", dest, e))?;
    }
    let summary = {
        let c = Connection::open_with_flags(tmp.path(), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| err("checking the copy for", dest, e))?;
        check(&c, tmp.path())?
    };
    tmp.as_file()
        .sync_all()
        .map_err(|e| err("syncing", dest, e))?;
    tmp.persist(dest)
        .map_err(|e| err("renaming into place", dest, e.error))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    Ok(Summary { bytes, ..summary })
}

/// `backup export`: a snapshot of `keystore` (which a running agent may be writing) at `out`.
pub fn export(keystore: &Path, out: &Path, force: bool) -> Result<Summary, String> {
    if out.exists() && !force {
        return Err(err(
            "refusing to write",
            out,
            "it exists (give --force to replace it)",
        ));
    }
    if same_file(keystore, out) {
        return Err(err("refusing to write", out, "it is the keystore itself"));
    }
    let src = open_existing(keystore, "reading the keystore")?;
    check(&src, keystore)?;
    copy_into_place(&src, out)
}

/// `backup import`: put the backup `from` in place as the keystore `keystore`. `serving` is the
/// keystore path the agent on the socket reports, if one answers.
pub fn import(
    from: &Path,
    keystore: &Path,
    force: bool,
    serving: Option<&Path>,
) -> Result<(Summary, Option<PathBuf>), String> {
    if serving.is_some_and(|s| same_file(s, keystore)) {
        return Err(err(
            "refusing to replace",
            keystore,
            "the agent on the socket is serving it; stop it first (`systemctl --user stop keywardd`)",
        ));
    }
    let src = open_existing(from, "reading the backup")?;
    check(&src, from)?;
    let wal = sidecar(keystore, "-wal");
    if keystore.exists() && !force {
        return Err(err(
            "refusing to replace",
            keystore,
            "it exists (give --force: the old keystore is kept beside it)",
        ));
    }
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Err(err(
            "refusing to replace",
            keystore,
            "it has changes not yet checkpointed (a -wal file): an agent is using it or did not stop cleanly; start and stop the agent once",
        ));
    }
    let kept = if keystore.exists() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let kept = PathBuf::from(format!("{}.before-import-{secs}", keystore.display()));
        std::fs::rename(keystore, &kept).map_err(|e| err("moving aside", keystore, e))?;
        let _ = std::fs::remove_file(sidecar(keystore, "-shm"));
        let _ = std::fs::remove_file(&wal);
        Some(kept)
    } else {
        None
    };
    let s = copy_into_place(&src, keystore)?;
    Ok((s, kept))
}

fn sidecar(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", p.display()))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
