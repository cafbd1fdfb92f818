//! A throwaway PostgreSQL server for end-to-end tests of a keystore on PostgreSQL: the repo's
//! `postgres-setup.sh` starts one per test process ([`server`]) in a temporary directory, and a
//! watcher stops it when the process ends; each test gets a fresh database of its own
//! ([`PgServer::database`]), owned by the `keyward` role the agent logs in as (its password only
//! in the server's password file, which the location names). A missing PostgreSQL is never a
//! skip: the set-up installs it or the test fails.

use crate::env::TestEnv;
use crate::util::repo_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The running server: its directory (postgres.env, pgpass), host and port.
pub struct PgServer {
    pub dir: PathBuf,
    pub host: String,
    pub port: u16,
}

fn setup_script() -> PathBuf {
    repo_root().join("postgres-setup.sh")
}

/// The server shared by this test process (started on first use).
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn start() -> PgServer {
    let dir = std::env::temp_dir().join(format!(
        "keyward-e2e-pg-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("server dir");
    let out = Command::new("bash")
        .arg(setup_script())
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("run postgres-setup.sh");
    assert!(
        out.status.success(),
        "postgres-setup.sh failed (PostgreSQL is required by these tests): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stop the server once this process has exited (never waited for, on purpose).
    let watcher = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; bash '{script}' --stop '{dir}'; \
         rm -rf '{dir}'",
        pid = std::process::id(),
        script = setup_script().display(),
        dir = dir.display()
    );
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .arg("-c")
        .arg(watcher)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server's watcher");
    let env = std::fs::read_to_string(dir.join("postgres.env")).expect("postgres.env");
    let url = env
        .lines()
        .find_map(|l| l.strip_prefix("KEYWARD_TEST_PG="))
        .expect("KEYWARD_TEST_PG in postgres.env");
    // postgres://keyward@HOST:PORT/keyward
    let hostport = url
        .trim_start_matches("postgres://keyward@")
        .split('/')
        .next()
        .expect("host:port");
    let (host, port) = hostport.rsplit_once(':').expect("host:port");
    PgServer {
        host: host.to_string(),
        port: port.parse().expect("port"),
        dir,
    }
}

/// `psql` from the PostgreSQL that `postgres-setup.sh` found or installed.
pub(crate) fn psql() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join("psql")))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions.pop().expect("psql under /usr/lib/postgresql")
}

impl PgServer {
    /// A server of the caller's own (not the one [`server`] shares): for tests that stop it
    /// ([`PgServer::halt`]). Stopped, like the shared one, when the test process ends.
    pub fn start_own() -> PgServer {
        start()
    }

    /// Stop the server, keeping its data (`postgres-setup.sh --halt`): a database that went
    /// away. Only on a server of one's own ([`PgServer::start_own`]).
    pub fn halt(&self) {
        self.setup("--halt");
    }

    /// Start a halted server again on the same port (`postgres-setup.sh --resume`).
    pub fn resume(&self) {
        self.setup("--resume");
    }

    fn setup(&self, what: &str) {
        let out = Command::new("bash")
            .arg(setup_script())
            .arg(what)
            .arg(&self.dir)
            .output()
            .expect("run postgres-setup.sh");
        assert!(
            out.status.success(),
            "postgres-setup.sh {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The database name in a location ([`PgServer::database`]'s).
    pub fn db_name(location: &str) -> &str {
        location
            .split('?')
            .next()
            .and_then(|l| l.rsplit('/').next())
            .expect("database name")
    }

    pub fn passfile(&self) -> PathBuf {
        self.dir.join("pgpass")
    }

    /// Run `sql` as the superuser on `db`; its output.
    pub fn admin(&self, db: &str, sql: &str) -> String {
        let out = Command::new(psql())
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(["-U", "pgowner", "-d", db, "-c", sql])
            .env("PGPASSFILE", self.passfile())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new, empty database owned by `keyward`: its location, as `keystore = ...` names it.
    pub fn database(&self) -> String {
        let name = format!("kwe2e_{}", uuid::Uuid::new_v4().simple());
        self.admin("postgres", &format!("CREATE DATABASE {name} OWNER keyward"));
        self.location(&name)
    }

    /// The location of database `db` for the `keyward` role.
    pub fn location(&self, db: &str) -> String {
        format!(
            "postgres://keyward@{}:{}/{db}?sslmode=disable&passfile={}",
            self.host,
            self.port,
            self.passfile().display()
        )
    }

    /// Rows of `table` in the database a location names (all identities), counted as the
    /// superuser.
    pub fn count(&self, location: &str, table: &str) -> i64 {
        let db = location
            .split('?')
            .next()
            .and_then(|l| l.rsplit('/').next())
            .expect("database name");
        self.admin(db, &format!("SELECT count(*) FROM {table}"))
            .trim()
            .parse()
            .expect("a count")
    }
}

impl TestEnv {
    /// Point the agent's config at the keystore `location` (a file path or a PostgreSQL
    /// location; the agent must be stopped). A file path is then [`TestEnv::keystore_path`].
    pub fn set_keystore(&mut self, location: &str) {
        assert!(self.child.is_none(), "stop the agent first");
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let mut found = false;
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("keystore") && l.contains('=') {
                    found = true;
                    format!("keystore = {location:?}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert!(found, "no keystore line in the config");
        std::fs::write(&self.config, text.join("\n") + "\n").expect("write config");
        if !crate::postgres::is_location(location) {
            self.keystore = Some(Path::new(location).to_path_buf());
        }
    }
}

/// Whether `text` names a PostgreSQL keystore (not a file).
pub fn is_location(text: &str) -> bool {
    text.starts_with("postgres://")
}
