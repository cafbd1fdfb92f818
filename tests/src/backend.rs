//! Which keystore backend the end-to-end tests run their agents on: SQLite (the default, a
//! `keystore.db` file beside each test's config) or, with `KEYWARD_TEST_KEYSTORE=postgres`, a
//! fresh PostgreSQL database per [`TestEnv`] on the test process's throwaway server
//! ([`crate::postgres::server`]). `test.sh` runs the end-to-end suite once on each.
//!
//! A test that edits or inspects the SQLite file itself (tampering, fault injection on the
//! file, backups of the file, `keystore check` of a path...) calls [`requires_sqlite`] (or
//! [`TestEnv::requires_sqlite`]) first: on PostgreSQL it prints `not on postgres: <test>: <why>`
//! on the real stderr (never captured, so every run lists what it left out) and returns false,
//! and the test returns. Never a silent skip: [`TestEnv::keystore_path`] panics on PostgreSQL,
//! so a test that needs the file and does not say so fails.
//!
//! Unknown values of `KEYWARD_TEST_KEYSTORE` fail the test rather than fall back to SQLite.

use crate::env::TestEnv;
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The environment variable that selects the backend (`sqlite`, the default, or `postgres`).
pub const VAR: &str = "KEYWARD_TEST_KEYSTORE";

/// A keystore backend the suite can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backend this test process runs on (read once from [`VAR`]).
pub fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| match std::env::var(VAR) {
        Err(std::env::VarError::NotPresent) => Backend::Sqlite,
        Ok(v) if v.is_empty() || v == "sqlite" => Backend::Sqlite,
        Ok(v) if v == "postgres" => Backend::Postgres,
        Ok(v) => panic!("{VAR}={v:?}: expected `sqlite` or `postgres`"),
        Err(e) => panic!("{VAR}: {e}"),
    })
}

/// Whether this run's agents keep their keystore in PostgreSQL.
pub fn on_postgres() -> bool {
    backend() == Backend::Postgres
}

/// `true` when the test may go on (SQLite); on PostgreSQL, prints `not on postgres: <test>:
/// <why>` where the run's output shows it and returns `false` (the test then returns).
pub fn requires_sqlite(why: &str) -> bool {
    if !on_postgres() {
        return true;
    }
    let current = std::thread::current();
    let test = current.name().unwrap_or("?");
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "not on postgres: {test}: {why}");
    false
}

/// Like [`requires_sqlite`] for one part of a test that otherwise runs on both backends:
/// `true` on SQLite; on PostgreSQL prints `not on postgres (part): <test>: <why>` and returns
/// `false` (the test skips that part only). Said once per test and part (a loop may ask often).
pub fn sqlite_part(why: &str) -> bool {
    if !on_postgres() {
        return true;
    }
    static SAID: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let current = std::thread::current();
    let line = format!("{}: {why}", current.name().unwrap_or("?"));
    if SAID
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(line.clone())
    {
        let _ = writeln!(std::io::stderr(), "not on postgres (part): {line}");
    }
    false
}

impl TestEnv {
    /// [`requires_sqlite`] for a test whose environment already exists (the per-kind tests of
    /// `keyward_e2e_tests!`).
    pub fn requires_sqlite(&self, why: &str) -> bool {
        requires_sqlite(why)
    }

    /// The first column of every row `sql` selects from this environment's keystore, as text,
    /// on either backend (SQLite: the file, opened read-write so that a killed agent's
    /// committed WAL is recovered; PostgreSQL: as the superuser, so every identity's rows).
    /// Read only: a test that edits rows says so with [`TestEnv::requires_sqlite`].
    pub fn keystore_rows(&self, sql: &str) -> Vec<String> {
        match self.database.as_ref().filter(|_| self.keystore.is_none()) {
            Some(db) => crate::postgres::server()
                .admin(db, sql)
                .lines()
                .map(str::to_string)
                .collect(),
            None => {
                let db = rusqlite::Connection::open(self.keystore_path()).expect("keystore");
                let mut st = db.prepare(sql).expect("prepare");
                let rows = st
                    .query_map([], |r| {
                        Ok(match r.get::<_, rusqlite::types::Value>(0)? {
                            rusqlite::types::Value::Null => String::new(),
                            rusqlite::types::Value::Integer(i) => i.to_string(),
                            rusqlite::types::Value::Real(f) => f.to_string(),
                            rusqlite::types::Value::Text(t) => t,
                            rusqlite::types::Value::Blob(b) => {
                                b.iter().map(|x| format!("{x:02x}")).collect()
                            }
                        })
                    })
                    .expect("query");
                rows.collect::<Result<_, _>>().expect("rows")
            }
        }
    }

    /// `SELECT count(*) FROM {from}` on this environment's keystore ([`TestEnv::keystore_rows`]).
    pub fn keystore_count(&self, from: &str) -> i64 {
        self.keystore_rows(&format!("SELECT count(*) FROM {from}"))[0]
            .trim()
            .parse()
            .expect("a count")
    }

    /// Replace the (stopped) agent's keystore with a new, empty one: the SQLite file and its
    /// sidecars deleted, or a fresh database (the old one dropped).
    pub fn fresh_keystore(&mut self) {
        assert!(self.child.is_none(), "stop the agent first");
        if self.database.is_some() && self.keystore.is_none() {
            self.drop_database();
            self.use_fresh_database();
            return;
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.keystore_path().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }

    /// Point this (not yet started) environment's config at a fresh database on the process's
    /// server. The password file is copied into the test's directory, so an agent running as
    /// another user ([`crate::Options::run_as`]) reads it too.
    pub(crate) fn use_fresh_database(&mut self) {
        let server = crate::postgres::server();
        let name = format!("kwe2e_{}", uuid::Uuid::new_v4().simple());
        server.admin("postgres", &format!("CREATE DATABASE {name} OWNER keyward"));
        let passfile = self.dir().join("pgpass");
        std::fs::copy(server.passfile(), &passfile).expect("copy the password file");
        if let Some((uid, gid)) = self.opts.run_as {
            std::os::unix::fs::chown(&passfile, Some(uid), Some(gid)).expect("chown pgpass");
        }
        let location = format!(
            "postgres://keyward@{}:{}/{name}?sslmode=disable&passfile={}",
            server.host,
            server.port,
            passfile.display()
        );
        self.set_keystore(&location);
        self.database = Some(name);
    }

    /// Drop this environment's database (best effort: the agent is gone; the server and
    /// whatever is left go when the test process ends).
    pub(crate) fn drop_database(&mut self) {
        let Some(name) = self.database.take() else {
            return;
        };
        let server = crate::postgres::server();
        let _ = Command::new(crate::postgres::psql())
            .args([
                "-X",
                "-q",
                "-h",
                &server.host,
                "-p",
                &server.port.to_string(),
            ])
            .args(["-U", "pgowner", "-d", "postgres", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .env("PGPASSFILE", server.passfile())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
