//! The agent's configuration file (TOML).
//!
//! ```toml
//! # socket = "/run/user/1000/keyward/agent.sock"   # else KEYWARD_SOCK, else the default
//! keystore = "keystore.db"                          # relative paths are relative to this file
//! # policy = "policy.toml"   # per-client rules (README "Policy"); none: everything allowed
//! [root]
//! kind = "pkcs11"
//! uri = "pkcs11:token=keyward;object=keyward-root?module-path=/usr/lib/softhsm/libsofthsm2.so"
//! [root.env]                                        # set once at start-up, before any thread
//! SOFTHSM2_CONF = "softhsm2.conf"
//! # [[extra_root]]        # a further root this agent uses (same keys as [root]); its env is
//! # kind = "pkcs11"       # applied at start-up too, and must agree with every other root's
//! # uri = "pkcs11:token=keyward-backup?module-path=/usr/lib/softhsm/libsofthsm2.so"
//! [unlock]
//! max_attempts = 10       # wrong PINs in a row before the agent refuses PINs altogether
//! free_attempts = 3       # wrong PINs before back-off starts
//! backoff_base_ms = 1000  # first wait; doubles with each further wrong PIN
//! backoff_max_ms = 300000
//! # idle_lock = "15m"     # lock when no request used the root for this long (idle.rs)
//! # max_unlocked = "8h"   # lock this long after unlocking, however busy
//! [limits]                # every key optional; these are the defaults
//! max_connections = 1024  # open connections; more get `busy` and are closed. Also bounded by
//!                         # the descriptor limit: RLIMIT_NOFILE (soft raised to hard at start)
//!                         # minus fd_reserve
//! fd_reserve = 64         # descriptors kept for the token, the keystore and logs
//! hello_timeout_ms = 10000  # a connection must say `hello` within this, or is closed
//! frame_timeout_ms = 10000  # a frame, once its first byte arrived, must arrive whole within this
//! write_timeout_ms = 10000  # a response must be taken by the client within this
//! max_depth = 16            # CBOR nesting depth of a request
//! max_items = 4096          # CBOR items (every key, value and element) in a request
//! blocking_decode_bytes = 65536  # frames larger than this are decoded off the async workers
//! [server]                # both sockets; every key optional, these are the defaults
//! spin_us = 50            # after an answer, poll for a looping client's next request this
//!                         # long before sleeping (0: off); never for idle
//!                         # connections, nor with more looping clients than half the cores
//!                         # (server::Spin)
//! ecdsa_nonces = 256      # P-256 signature nonces made ahead on idle CPU while a key is
//!                         # cached (nonces.rs); 0: off
//! [ssh]
//! enabled = true          # the SSH-agent socket (default: on)
//! # socket = "/run/user/1000/keyward/ssh.sock"     # else KEYWARD_SSH_SOCK, else beside the socket
//! # askpass = "/usr/bin/ssh-askpass"              # confirmation prompts; else $SSH_ASKPASS
//! [prompt]                # the agent asks for the PIN itself when locked (prompt.rs)
//! # pinentry = "pinentry" # unset: never prompts
//! # timeout_s = 60
//! # tty = "/dev/pts/3"    # for pinentry-tty / pinentry-curses
//! [audit]                 # the audit log (audit.rs); kept by default, even without this table
//! # enabled = true        # false: no audit log
//! # path = "audit.log"    # default: audit.log beside the keystore (PostgreSQL: the config)
//! # required = true       # refuse key operations while the log cannot be written
//! # checkpoint_every = 1000  # a signed checkpoint every N entries (and at lock/unlock/stop)
//! # max_bytes = 67108864  # rotate the live file past this size (PATH.1, PATH.2, ...)
//! # sync_ms = 100         # fdatasync within this many ms of a write (0: before answering)
//! ```
//! Idle connections that have said `hello` have no deadline: SSH clients keep theirs open.
//! Other roots: `kind = "pkcs11"` with `key_type = "ec"` (a P-256 key pair on a token without AES
//! key wrap), `kind = "yubikey"` (`serial`, `slot`, `pin_policy`, `touch_policy`,
//! `management_key_hex`), `kind = "soft"` (`iterations`); see README.md.
//!
//! This module only reads and checks the file; it never holds PINs (a config with a PIN in it,
//! e.g. `pin-value` in the URI, is refused).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration, paths resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: Option<PathBuf>,
    /// The SQLite keystore file (with a PostgreSQL keystore: the default path, used only to
    /// place files kept beside the keystore, such as the audit log).
    pub keystore: PathBuf,
    /// `keystore = "postgres://..."` (or a libpq `host=... dbname=...` string): the PostgreSQL
    /// keystore's location (`keystore/postgres/location.rs`). `None`: SQLite at `keystore`.
    pub postgres: Option<crate::keystore::postgres::PgLocation>,
    /// The policy file (`policy`), when one is named: rules on which client may do what.
    pub policy: Option<PathBuf>,
    pub root: RootConfig,
    /// Further roots this agent may use besides `[root]` (`[[extra_root]]`, same keys): a
    /// backup token on the same module, a card. Only their environment matters at start-up:
    /// every root's `env` is applied then ([`Config::root_env`]).
    pub extra_roots: Vec<RootConfig>,
    pub unlock: UnlockPolicy,
    pub limits: Limits,
    pub server: ServerConfig,
    pub ssh: SshConfig,
    pub prompt: crate::prompt::PromptConfig,
    /// `[audit]`, when present: the audit log, its path resolved (default: beside the keystore).
    pub audit: Option<crate::audit::AuditConfig>,
}

/// Connection limits and deadlines (`[limits]`); see the module doc for what each one bounds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub fd_reserve: u64,
    pub hello_timeout_ms: u64,
    pub frame_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub max_depth: usize,
    pub max_items: usize,
    pub blocking_decode_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            fd_reserve: 64,
            hello_timeout_ms: 10_000,
            frame_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            max_depth: 16,
            max_items: 4096,
            blocking_decode_bytes: 64 * 1024,
        }
    }
}

impl Limits {
    fn check(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("hello_timeout_ms", self.hello_timeout_ms),
            ("frame_timeout_ms", self.frame_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("limits: {name} must be over 0"));
            }
        }
        // A request is a map holding `args`, a map: depth 2 and 7 items at the least.
        if self.max_depth < 4 || self.max_items < 16 {
            return Err("limits: need max_depth >= 4 and max_items >= 16".into());
        }
        Ok(())
    }
}

/// `[server]`: how both sockets serve their connections.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// After answering a client that sends its requests back to back, poll its socket without
    /// blocking for up to this many microseconds before sleeping (`server::Spin`); 0: never.
    /// Default [`DEFAULT_SPIN_US`]: on the idle 2-core VM it took one client's SSH signatures
    /// from ~8.8k/s to ~13.3k/s and `kek.list` from 0.72x to 1.07x a bare round trip, with less
    /// agent CPU per request (README "The spin after an answer").
    pub spin_us: u64,
    /// How many ECDSA P-256 nonces a low-priority thread keeps made ahead while a software key
    /// is cached, so a signature only pays its online half (`nonces.rs`); 0: off. Default
    /// [`crate::nonces::DEFAULT_POOL`].
    pub ecdsa_nonces: usize,
}

/// The default `[server] spin_us`.
pub const DEFAULT_SPIN_US: u64 = 50;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            spin_us: DEFAULT_SPIN_US,
            ecdsa_nonces: crate::nonces::DEFAULT_POOL,
        }
    }
}

/// The longest spin `[server] spin_us` may ask for: a spin is there to bridge a wake-up, not
/// to wait.
pub const MAX_SPIN_US: u64 = 1000;

/// `[ssh]`: the SSH-agent socket.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Serve the SSH-agent socket (default: yes).
    pub enabled: bool,
    /// Its path (KEYWARD_SSH_SOCK overrides; default: `ssh.sock` beside the CBOR socket).
    pub socket: Option<PathBuf>,
    /// The confirmation program (SSH_ASKPASS protocol); default: $SSH_ASKPASS, else ssh-askpass.
    pub askpass: Option<PathBuf>,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            enabled: true,
            socket: None,
            askpass: None,
        }
    }
}

/// Which root backend, and how to reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum RootConfig {
    /// A PKCS#11 token, selected by an RFC 7512 URI.
    Pkcs11 {
        uri: String,
        /// Environment variables set before the module loads (e.g. `SOFTHSM2_CONF`).
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// `aes` (default): an AES-256 root, scheme `aes-kwp`. `ec`: a P-256 key pair, scheme
        /// `ecdh-p256`, for tokens without AES key wrap (PIV cards through ykcs11 or OpenSC).
        #[serde(default)]
        key_type: Pkcs11KeyType,
        /// EC roots only: `init` generates the key pair logged in as SO with this value (48 hex
        /// digits), for tokens where only the SO may generate keys (ykcs11: the SO PIN is the
        /// PIV management key). Without it `init` generates as the user.
        management_key_hex: Option<String>,
    },
    /// A P-256 key in a PIV slot of a YubiKey, through PC/SC (scheme `ecdh-p256`).
    #[serde(rename = "yubikey")]
    YubiKey {
        /// The card's serial. Without it: the only card present (several: an error).
        serial: Option<u32>,
        /// `9d` (default) or a retired slot `82`..`95`.
        #[serde(default = "default_slot")]
        slot: String,
        /// `once` (default), `always`, `never`, `default`: set at `init` on the card.
        #[serde(default = "default_pin_policy")]
        pin_policy: String,
        /// `cached` (default), `always`, `never`, `default`: set at `init` on the card.
        #[serde(default = "default_touch_policy")]
        touch_policy: String,
        /// The 3DES management key `init` authenticates with (48 hex digits); default: the
        /// factory key 010203040506070801020304050607080102030405060708.
        management_key_hex: Option<String>,
    },
    /// A passphrase root (no hardware): PBKDF2-HMAC-SHA256 with at least 600,000 iterations.
    Soft {
        #[serde(default = "default_iterations")]
        iterations: u32,
    },
}

fn default_iterations() -> u32 {
    600_000
}

fn default_slot() -> String {
    "9d".into()
}

fn default_pin_policy() -> String {
    "once".into()
}

fn default_touch_policy() -> String {
    "cached".into()
}

/// The kind of root key on a PKCS#11 token.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pkcs11KeyType {
    #[default]
    Aes,
    Ec,
}

/// How the agent limits PIN guessing. SoftHSM never locks a token, so the agent must.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UnlockPolicy {
    pub max_attempts: u32,
    pub free_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Lock when no request has used the root for this long (`"15m"`; unset: never).
    #[serde(deserialize_with = "crate::idle::deserialize_opt_duration")]
    pub idle_lock: Option<std::time::Duration>,
    /// Lock this long after an unlock, however busy (`"8h"`; unset: never).
    #[serde(deserialize_with = "crate::idle::deserialize_opt_duration")]
    pub max_unlocked: Option<std::time::Duration>,
}

impl UnlockPolicy {
    /// The lock deadlines (`idle.rs`).
    pub fn deadlines(&self) -> crate::idle::Deadlines {
        crate::idle::Deadlines {
            idle_lock: self.idle_lock,
            max_unlocked: self.max_unlocked,
        }
    }
}

impl Default for UnlockPolicy {
    fn default() -> Self {
        UnlockPolicy {
            max_attempts: 10,
            free_attempts: 3,
            backoff_base_ms: 1000,
            backoff_max_ms: 300_000,
            idle_lock: None,
            max_unlocked: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: Option<PathBuf>,
    keystore: Option<PathBuf>,
    policy: Option<PathBuf>,
    root: RootConfig,
    #[serde(default)]
    extra_root: Vec<RootConfig>,
    #[serde(default)]
    unlock: UnlockPolicy,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    ssh: SshConfig,
    #[serde(default)]
    prompt: crate::prompt::PromptConfig,
    audit: Option<crate::audit::AuditConfig>,
}

/// `keystore` names a SQLite file, or a PostgreSQL keystore: a `postgres://` (`postgresql://`)
/// URL or a libpq keyword string (`host=... dbname=...`), parsed here (`Ok(Some(..))`; what it
/// does not understand, and any password, is an error). Any other URI (`sqlite://...`) or
/// keyword-like string is refused rather than taken as a relative file name: creating a file
/// called `postgres:` beside the config would hide the mistake until the keys were needed on
/// another machine.
fn check_keystore_path(
    path: &Path,
) -> Result<Option<crate::keystore::postgres::PgLocation>, String> {
    let text = path.to_string_lossy();
    if text.trim().is_empty() {
        return Err("keystore: empty path".into());
    }
    if crate::keystore::postgres::looks_like_postgres(&text) {
        return crate::keystore::postgres::PgLocation::parse(&text)
            .map(Some)
            .map_err(|e| format!("keystore: PostgreSQL location: {e}"));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        let is_scheme = scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme {
            return Err(format!(
                "keystore: {scheme}:// is not supported; `keystore` names a SQLite file or a \
                 PostgreSQL database (postgres://... or host=... dbname=...)"
            ));
        }
    }
    const LIBPQ_KEYS: &[&str] = &[
        "host", "hostaddr", "dbname", "user", "port", "sslmode", "password",
    ];
    let libpq = text.split_whitespace().any(|word| {
        word.split_once('=')
            .is_some_and(|(k, _)| LIBPQ_KEYS.contains(&k))
    });
    if libpq && text.contains(char::is_whitespace) {
        return Err(
            "keystore: looks like a PostgreSQL connection string but does not start with a \
             keyword (host=... dbname=...); not taken as a file name"
                .into(),
        );
    }
    Ok(None)
}

/// The default keystore: `$XDG_DATA_HOME/keyward/keystore.db` (`~/.local/share/...`).
pub fn default_keystore() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("keyward").join("keystore.db")
}

/// Resolve relative paths in a root's values (`env` values of `*_CONF` variables are relative
/// to the config file) and refuse what no root may have (a PIN in the URI).
fn resolve_root(root: RootConfig, base: &Path) -> Result<RootConfig, String> {
    Ok(match root {
        RootConfig::Pkcs11 {
            uri,
            env,
            key_type,
            management_key_hex,
        } => {
            if management_key_hex.is_some() && key_type != Pkcs11KeyType::Ec {
                return Err("management_key_hex is for key_type = \"ec\" roots only".into());
            }
            if uri.contains("pin-value=") {
                return Err(
                    "the PKCS#11 URI holds a pin-value: PINs never go in config files".into(),
                );
            }
            // Relative paths in env values (SOFTHSM2_CONF) are relative to this file.
            let env = env
                .into_iter()
                .map(|(k, v)| {
                    let p = PathBuf::from(&v);
                    let v = if k.ends_with("_CONF") && p.is_relative() {
                        base.join(p).to_string_lossy().into_owned()
                    } else {
                        v
                    };
                    (k, v)
                })
                .collect();
            RootConfig::Pkcs11 {
                uri,
                env,
                key_type,
                management_key_hex,
            }
        }
        soft @ RootConfig::Soft { .. } => soft,
        yk @ RootConfig::YubiKey { .. } => yk,
    })
}

/// The environment of all `roots` together (`[root.env]` of each), as `keywardd` applies it at
/// start-up. Two roots that set one variable to different values are refused: a module reads
/// its environment once per process, so both could not be served.
pub fn merge_env<'a>(
    roots: impl IntoIterator<Item = &'a RootConfig>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for r in roots {
        if let RootConfig::Pkcs11 { uri, env, .. } = r {
            for (k, v) in env {
                match out.get(k) {
                    Some(have) if have != v => {
                        return Err(format!(
                            "the roots disagree on [root.env] {k}: {have:?} and {v:?} (for                              {uri}); a PKCS#11 module reads its environment once per process, so                              every root of one agent must use the same value (put a second                              SoftHSM token in the same SoftHSM config: softhsm-setup.sh                              --add-token LABEL)"
                        ))
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    Ok(out)
}

impl Config {
    /// The environment of every root this agent may use (`[root]` and `[[extra_root]]`), to
    /// apply once at start-up ([`crate::root::env::apply_at_startup`]). `parse` has checked that
    /// the roots agree.
    pub fn root_env(&self) -> Result<BTreeMap<String, String>, crate::root::RootError> {
        merge_env(std::iter::once(&self.root).chain(&self.extra_roots))
            .map_err(crate::root::RootError::Config)
    }

    /// What `keywardd check-config` prints (JSON): the paths and what the root needs, for
    /// `keyward doctor`. Never a secret (the config holds none).
    pub fn summary(&self, path: &Path) -> serde_json::Value {
        let root = match &self.root {
            RootConfig::Pkcs11 {
                uri, env, key_type, ..
            } => {
                let u = crate::root::uri::Pkcs11Uri::parse(uri).ok();
                serde_json::json!({
                    "kind": "pkcs11",
                    "key_type": match key_type { Pkcs11KeyType::Aes => "aes", Pkcs11KeyType::Ec => "ec" },
                    "module": u.as_ref().and_then(|u| u.module_path()),
                    "token": u.as_ref().and_then(|u| u.token()),
                    "env": env,
                })
            }
            RootConfig::YubiKey { serial, slot, .. } => {
                serde_json::json!({ "kind": "yubikey", "serial": serial, "slot": slot })
            }
            RootConfig::Soft { .. } => serde_json::json!({ "kind": "soft" }),
        };
        serde_json::json!({
            "config": path.display().to_string(),
            "keystore": match &self.postgres {
                Some(pg) => pg.display(),
                None => self.keystore.display().to_string(),
            },
            "policy": self.policy.as_ref().map(|p| p.display().to_string()),
            "audit_log": self.audit.as_ref().and_then(|a| a.path.as_ref()).map(|p| p.display().to_string()),
            "socket": self.socket.as_ref().map(|s| s.display().to_string()),
            "root": root,
        })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let root = resolve_root(raw.root, base).map_err(invalid)?;
        let extra_roots = raw
            .extra_root
            .into_iter()
            .map(|r| resolve_root(r, base))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| invalid(format!("extra_root: {m}")))?;
        for r in &extra_roots {
            crate::root::check_config(r).map_err(|e| invalid(format!("extra_root: {e}")))?;
        }
        merge_env(std::iter::once(&root).chain(&extra_roots)).map_err(invalid)?;
        crate::root::check_config(&root).map_err(|e| invalid(e.to_string()))?;
        let u = raw.unlock;
        if u.max_attempts == 0 || u.free_attempts > u.max_attempts {
            return Err(invalid(
                "unlock: need 0 < max_attempts and free_attempts <= max_attempts".into(),
            ));
        }
        raw.limits.check().map_err(invalid)?;
        if raw.server.spin_us > MAX_SPIN_US {
            return Err(invalid(format!(
                "server: spin_us must be at most {MAX_SPIN_US}"
            )));
        }
        if raw.server.ecdsa_nonces > crate::nonces::MAX_POOL {
            return Err(invalid(format!(
                "server: ecdsa_nonces must be at most {}",
                crate::nonces::MAX_POOL
            )));
        }
        let postgres = match &raw.keystore {
            Some(k) => check_keystore_path(k).map_err(invalid)?,
            None => None,
        };
        let raw_keystore = if postgres.is_some() {
            None
        } else {
            raw.keystore
        };
        // The audit log is kept unless `[audit] enabled = false`: without the table, the
        // defaults (beside the keystore file, or, for a PostgreSQL keystore, which has no file
        // and is shared by many agents, beside this config file; required). A request waits for its entry's `write`,
        // not its `fdatasync` (audit.rs), so this costs no speed target (README "Audit log").
        let raw_audit = raw.audit.unwrap_or_default();
        raw_audit.check().map_err(invalid)?;
        let keystore = raw_keystore.map(resolve).unwrap_or_else(default_keystore);
        let audit = Some(raw_audit)
            .filter(|a| a.enabled)
            .map(|a| crate::audit::AuditConfig {
                path: Some(
                    a.path
                        .clone()
                        .map(resolve)
                        .unwrap_or_else(|| match &postgres {
                            Some(_) => resolve(PathBuf::from("audit.log")),
                            None => keystore.with_file_name("audit.log"),
                        }),
                ),
                ..a
            });
        Ok(Config {
            socket: raw.socket.map(resolve),
            keystore,
            postgres,
            policy: raw.policy.map(resolve),
            root,
            extra_roots,
            unlock: u,
            limits: raw.limits,
            server: raw.server,
            ssh: SshConfig {
                socket: raw.ssh.socket.map(resolve),
                askpass: raw.ssh.askpass.map(resolve),
                ..raw.ssh
            },
            prompt: raw.prompt,
            audit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_table_defaults_beside_the_keystore_and_is_checked() {
        let p = Path::new("/etc/kw/keyward.toml");
        let base = "keystore = \"data/ks.db\"\n[root]\nkind = \"soft\"\n";
        // No table, or an empty one: kept beside the keystore, required, the default intervals.
        for text in [
            base.to_string(),
            format!("{base}[audit]\n"),
            format!("{base}[audit]\nenabled = true\n"),
        ] {
            let a = Config::parse(&text, p)
                .unwrap()
                .audit
                .expect("audit on by default");
            assert_eq!(a.path.as_deref(), Some(Path::new("/etc/kw/data/audit.log")));
            assert!(a.required);
            assert_eq!((a.checkpoint_every, a.max_bytes), (1000, 64 << 20));
            assert_eq!(a.sync_ms, 100);
        }
        let c = Config::parse(&format!("{base}[audit]\nsync_ms = 0\n"), p).unwrap();
        assert_eq!(c.audit.map(|a| a.sync_ms), Some(0));
        // Turned off.
        let c = Config::parse(&format!("{base}[audit]\nenabled = false\n"), p).unwrap();
        assert_eq!(c.audit, None);
        // A relative path is relative to the config file.
        let c = Config::parse(
            &format!("{base}[audit]\npath = \"logs/a.log\"\nrequired = false\n"),
            p,
        )
        .unwrap();
        let a = c.audit.unwrap();
        assert_eq!(a.path.as_deref(), Some(Path::new("/etc/kw/logs/a.log")));
        assert!(!a.required);
        // Nonsense is refused with the table named; unknown keys too.
        for bad in [
            "checkpoint_every = 0",
            "max_bytes = 10",
            "sync_ms = 10001",
            "requried = true",
        ] {
            let e = Config::parse(&format!("{base}[audit]\n{bad}\n"), p).unwrap_err();
            assert!(
                e.to_string().contains("audit") || e.to_string().contains("requried"),
                "{e}"
            );
        }
    }

    #[test]
    fn extra_roots_share_the_environment_or_are_refused() {
        let p = Path::new("/etc/kw/keyward.toml");
        let main = "[root]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=a\"\n[root.env]\nSOFTHSM2_CONF = \"s.conf\"\n";
        // One config, one variable, two roots: fine, and applied once.
        let c = Config::parse(
            &format!("{main}[[extra_root]]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=b\"\n[extra_root.env]\nSOFTHSM2_CONF = \"/etc/kw/s.conf\"\nOTHER = \"1\"\n"),
            p,
        )
        .unwrap();
        assert_eq!(c.extra_roots.len(), 1);
        let env = c.root_env().unwrap();
        assert_eq!(env["SOFTHSM2_CONF"], "/etc/kw/s.conf");
        assert_eq!(env["OTHER"], "1");
        // Two values for one variable: refused at load, naming the variable and both values.
        let e = Config::parse(
            &format!("{main}[[extra_root]]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=b\"\n[extra_root.env]\nSOFTHSM2_CONF = \"other.conf\"\n"),
            p,
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, ConfigError::Invalid { .. }), "{m}");
        assert!(m.contains("disagree on [root.env] SOFTHSM2_CONF"), "{m}");
        assert!(
            m.contains("/etc/kw/s.conf") && m.contains("/etc/kw/other.conf"),
            "{m}"
        );
        // A single-root config is unchanged: no extra roots, its env as before.
        let c = Config::parse(main, p).unwrap();
        assert!(c.extra_roots.is_empty());
        assert_eq!(c.root_env().unwrap()["SOFTHSM2_CONF"], "/etc/kw/s.conf");
        // An extra root is checked like [root].
        assert!(Config::parse(
            &format!(
                "{main}[[extra_root]]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=b?pin-value=1\"\n"
            ),
            p
        )
        .is_err());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let c = Config::parse(
            "keystore = \"ks.db\"\n[root]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=t\"\n[root.env]\nSOFTHSM2_CONF = \"s.conf\"\n",
            Path::new("/etc/kw/keyward.toml"),
        )
        .unwrap();
        assert_eq!(c.keystore, PathBuf::from("/etc/kw/ks.db"));
        let RootConfig::Pkcs11 { env, .. } = c.root else {
            panic!("expected pkcs11")
        };
        assert_eq!(env["SOFTHSM2_CONF"], "/etc/kw/s.conf");
        assert_eq!(c.unlock, UnlockPolicy::default());
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn limits_parse_and_are_checked() {
        let p = Path::new("/x.toml");
        let root = "[root]\nkind = \"soft\"\n";
        let c = Config::parse(
            &format!("{root}[limits]\nmax_connections = 8\nhello_timeout_ms = 500\n"),
            p,
        )
        .unwrap();
        assert_eq!(c.limits.max_connections, 8);
        assert_eq!(c.limits.hello_timeout_ms, 500);
        assert_eq!(
            c.limits.frame_timeout_ms,
            Limits::default().frame_timeout_ms
        );
        for bad in [
            "max_connections = 0",
            "frame_timeout_ms = 0",
            "max_depth = 1",
            "colour = 1",
        ] {
            assert!(
                Config::parse(&format!("{root}[limits]\n{bad}\n"), p).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn server_section_parses_defaults_and_is_bounded() {
        let p = Path::new("/x.toml");
        let root = "[root]\nkind = \"soft\"\n";
        assert_eq!(Config::parse(root, p).unwrap().server.spin_us, 50);
        assert_eq!(
            Config::parse(root, p).unwrap().server.ecdsa_nonces,
            crate::nonces::DEFAULT_POOL
        );
        let c = Config::parse(&format!("{root}[server]\necdsa_nonces = 0\n"), p).unwrap();
        assert_eq!(c.server.ecdsa_nonces, 0);
        let big = format!("{root}[server]\necdsa_nonces = 65537\n");
        assert!(Config::parse(&big, p).is_err());
        let c = Config::parse(&format!("{root}[server]\nspin_us = 0\n"), p).unwrap();
        assert_eq!(c.server.spin_us, 0);
        let c = Config::parse(&format!("{root}[server]\nspin_us = 50\n"), p).unwrap();
        assert_eq!(c.server.spin_us, 50);
        let c = Config::parse(&format!("{root}[server]\nspin_us = 1000\n"), p).unwrap();
        assert_eq!(c.server.spin_us, 1000);
        for bad in ["spin_us = 1001", "spin_us = -1", "spin = 5"] {
            assert!(
                Config::parse(&format!("{root}[server]\n{bad}\n"), p).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn yubikey_and_ec_roots_parse_and_are_checked() {
        let p = Path::new("/x.toml");
        let c = Config::parse("[root]\nkind = \"yubikey\"\nserial = 5437251\n", p).unwrap();
        let RootConfig::YubiKey {
            serial,
            slot,
            pin_policy,
            touch_policy,
            management_key_hex,
        } = c.root
        else {
            panic!("expected yubikey")
        };
        assert_eq!(serial, Some(5437251));
        assert_eq!((slot.as_str(), pin_policy.as_str()), ("9d", "once"));
        assert_eq!(touch_policy, "cached");
        assert!(management_key_hex.is_none());
        for bad in [
            "slot = \"9a\"",
            "pin_policy = \"often\"",
            "management_key_hex = \"0102\"",
        ] {
            assert!(matches!(
                Config::parse(&format!("[root]\nkind = \"yubikey\"\n{bad}\n"), p),
                Err(ConfigError::Invalid { .. })
            ));
        }
        let c = Config::parse(
            "[root]\nkind = \"pkcs11\"\nkey_type = \"ec\"\nuri = \"pkcs11:token=t\"\n",
            p,
        )
        .unwrap();
        assert!(matches!(
            c.root,
            RootConfig::Pkcs11 {
                key_type: Pkcs11KeyType::Ec,
                ..
            }
        ));
        assert!(matches!(
            Config::parse(
                "[root]\nkind = \"pkcs11\"\nuri = \"pkcs11:\"\nmanagement_key_hex = \"010203040506070801020304050607080102030405060708\"\n",
                p
            ),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn pins_in_config_and_unknown_keys_are_refused() {
        let p = Path::new("/x.toml");
        assert!(matches!(
            Config::parse(
                "[root]\nkind=\"pkcs11\"\nuri=\"pkcs11:token=t?pin-value=1234\"\n",
                p
            ),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            Config::parse("colour = 1\n[root]\nkind=\"pkcs11\"\nuri=\"pkcs11:\"\n", p),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn lock_deadlines_parse_as_durations() {
        let p = Path::new("/x.toml");
        let root = "[root]\nkind = \"soft\"\n";
        let c = Config::parse(
            &format!("{root}[unlock]\nidle_lock = \"15m\"\nmax_unlocked = \"8h\"\n"),
            p,
        )
        .unwrap();
        assert_eq!(
            c.unlock.idle_lock,
            Some(std::time::Duration::from_secs(900))
        );
        assert_eq!(
            c.unlock.max_unlocked,
            Some(std::time::Duration::from_secs(8 * 3600))
        );
        assert_eq!(c.unlock.max_attempts, 10);
        for bad in [
            "idle_lock = \"15\"",
            "idle_lock = 15",
            "max_unlocked = \"0s\"",
        ] {
            assert!(
                matches!(
                    Config::parse(&format!("{root}[unlock]\n{bad}\n"), p),
                    Err(ConfigError::Parse { .. })
                ),
                "{bad}"
            );
        }
    }

    /// Found bug: `keystore = "postgres://..."` was taken as a relative SQLite file path (a file
    /// named `postgres:` appeared beside the config). What is not understood is refused.
    #[test]
    fn a_keystore_that_is_not_a_file_path_is_refused() {
        let p = Path::new("/etc/kw/keyward.toml");
        let root = "[root]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=a\"\n";
        for bad in [
            "postgres://kw:pw@db.example/keyward",
            "postgresql://db/keyward?sslmode=sometimes",
            "host=db.example dbname=keyward password=x",
            "host=db.example frobnicate=1",
            "postgres://db/keyward?application_name=x",
            "mydb host=db.example dbname=keyward",
            "sqlite://ks.db",
            "",
        ] {
            let text = format!("keystore = {bad:?}\n{root}");
            let err = Config::parse(&text, p).expect_err(bad);
            let msg = err.to_string();
            assert!(
                matches!(err, ConfigError::Invalid { .. }) && msg.contains("keystore"),
                "{bad}: {msg}"
            );
        }
        // Ordinary paths still work, even with '=' or ':' inside a file name.
        for good in ["ks.db", "/var/lib/kw/ks.db", "dir/a=b.db", "c:d.db"] {
            let text = format!("keystore = {good:?}\n{root}");
            let c = Config::parse(&text, p).expect(good);
            assert!(c.postgres.is_none(), "{good}");
        }
    }

    /// `keystore = "postgres://..."` and libpq strings are PostgreSQL locations, parsed
    /// (sslmode default prefer, connect timeout default 5 s), never file paths.
    #[test]
    fn a_postgres_keystore_is_parsed() {
        use crate::keystore::postgres::SslMode;
        let p = Path::new("/etc/kw/keyward.toml");
        let root = "[root]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=a\"\n";
        let text = format!("keystore = \"postgres://kw@db.example/keyward\"\n{root}");
        let c = Config::parse(&text, p).unwrap();
        // No keystore file: the audit log's default is beside the config file.
        let audit = c.audit.as_ref().and_then(|a| a.path.as_deref());
        assert_eq!(audit, Some(Path::new("/etc/kw/audit.log")));
        let l = c.postgres.expect("a PostgreSQL location");
        assert_eq!(l.hosts, vec!["db.example"]);
        assert_eq!(l.sslmode, SslMode::Prefer);
        assert_eq!(l.connect_timeout, std::time::Duration::from_secs(5));
        assert!(!c.keystore.to_string_lossy().contains("postgres"));
        let text = format!(
            "keystore = \"host=db dbname=ks user=kw sslmode=verify-full passfile=/etc/kw/pgpass\"\n{root}"
        );
        let l = Config::parse(&text, p).unwrap().postgres.unwrap();
        assert_eq!(l.sslmode, SslMode::VerifyFull);
        assert_eq!(l.passfile.as_deref(), Some(Path::new("/etc/kw/pgpass")));
    }
}
