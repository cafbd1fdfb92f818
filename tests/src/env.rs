//! One test's environment ([`TestEnv`]): a temporary directory holding the token, the
//! keystore, the agent config, the agent's log and its socket, and the agent running on them.
//! This module builds it and answers where things are; the other modules add what a test does
//! with it (processes, CLI, client library, raw frames, token listings).

use crate::kind::RootKind;
use crate::token::{self, UnlockPolicy};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// Options for [`TestEnv::start_with`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub unlock: UnlockPolicy,
    /// Run the agent as this (uid, gid) instead of the test's own user (the whole temporary
    /// directory is handed to that user first). Needs root.
    pub run_as: Option<(u32, u32)>,
}

/// One agent with its own token, keystore and socket in a temporary directory.
pub struct TestEnv {
    pub(crate) kind: RootKind,
    pub(crate) opts: Options,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) log: PathBuf,
    /// The running agent ([`crate::process`]); `None` while it is stopped.
    pub(crate) child: Option<Child>,
    /// The keystore when a test moved it ([`TestEnv::move_keystore_to`]).
    pub(crate) keystore: Option<PathBuf>,
    /// The PostgreSQL database of this environment's agent on the PostgreSQL backend
    /// ([`crate::backend`]), dropped with the environment.
    pub(crate) database: Option<String>,
}

impl TestEnv {
    /// Set up a root of `kind` with the default fast unlock policy and start the agent.
    pub fn start(kind: RootKind) -> TestEnv {
        Self::start_with(kind, Options::default())
    }

    pub fn start_with(kind: RootKind, opts: Options) -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("keyward-e2e-")
            .tempdir()
            .expect("temp dir");
        let config = token::setup(kind, dir.path());
        token::append_unlock_policy(&config, &opts.unlock);
        if let Some((uid, gid)) = opts.run_as {
            let st = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown -R of the test dir failed");
        }
        let mut env = TestEnv {
            kind,
            opts,
            // The socket's directory does not exist yet: the agent must make it 0700.
            socket: dir.path().join("run").join("agent.sock"),
            log: dir.path().join("keywardd.log"),
            config,
            dir,
            child: None,
            keystore: None,
            database: None,
        };
        if crate::backend::on_postgres() {
            env.use_fresh_database();
        }
        env.spawn_agent();
        env
    }

    pub fn kind(&self) -> RootKind {
        self.kind
    }

    /// The CLI arguments that initialise this kind of root with the secret on stdin.
    pub fn init_args(&self) -> Vec<&'static str> {
        self.kind.init_args()
    }

    /// The secret `init` and `unlock` take.
    pub fn pin(&self) -> &'static str {
        self.kind.secret()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The keystore file (as `softhsm-setup.sh` configures it: next to the config, unless a
    /// test moved it). On the PostgreSQL backend ([`crate::backend`]) there is no file unless
    /// the test made one: the test must say so first ([`TestEnv::requires_sqlite`]).
    pub fn keystore_path(&self) -> PathBuf {
        self.keystore.clone().unwrap_or_else(|| {
            assert!(
                !crate::backend::on_postgres(),
                "this test uses the SQLite keystore file, which the PostgreSQL backend has not: \
                 call `requires_sqlite(why)` first"
            );
            self.dir.path().join("keystore.db")
        })
    }

    /// Everything the agent has written to stderr so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The (uid, gid) the agent runs as when it is not the test's own user ([`Options::run_as`]).
    pub fn agent_user(&self) -> Option<(u32, u32)> {
        self.opts.run_as
    }
}
