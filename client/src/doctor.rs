//! `keyward doctor`: check the set-up and say how to fix each problem.
//!
//! Checks, in order: the agent's socket (path, owner, mode) and whether the agent answers
//! `hello`; the config (through `keywardd --config FILE check-config`, so the agent's own parser
//! decides; the path comes from `hello`, `--config`, `$KEYWARD_CONFIG` or the default); for a
//! PKCS#11 root, that the module loads and the token is there (`pkcs11-tool --module M -L`, with
//! the config's `[root.env]`); the PIN attempts left (from `hello`); for card roots, pcscd's
//! socket; `SSH_AUTH_SOCK`; the systemd user units; and the keystore (SQLite
//! `PRAGMA integrity_check`, opened read-only).
//!
//! Each check is `ok`, a `note` (optional for this set-up: units not installed, pcscd for a root
//! that is not a card, `SSH_AUTH_SOCK` unset or elsewhere, the agent locked) or a `problem` with
//! its fix. The exit status is 0 when there is no problem (the agent serves and its root is
//! usable). This module only reads: it never writes a file, starts a service or sends a PIN.

use keyward_client::proto::ops::HelloResult;
use keyward_client::Client;
use serde::Serialize;
use serde_json::{json, Value};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Note,
    Problem,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn ok(check: &'static str, detail: impl Into<String>) -> Check {
    Check {
        check,
        status: Status::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn note(check: &'static str, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check {
        check,
        status: Status::Note,
        detail: detail.into(),
        fix,
    }
}

fn problem(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        check,
        status: Status::Problem,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// What the user asked for.
pub struct Options {
    pub socket: PathBuf,
    pub config: Option<PathBuf>,
    pub keystore: Option<PathBuf>,
}

/// Run every check. The caller prints them ([`render`]) and exits non-zero on a problem.
pub async fn run(opts: &Options) -> Vec<Check> {
    let mut out = Vec::new();
    let socket_ok = check_socket(&opts.socket, &mut out);
    let hello = if socket_ok {
        match Client::connect(&opts.socket).await {
            Ok(c) => {
                let h = c.hello_info().clone();
                out.push(ok(
                    "agent",
                    format!(
                        "keywardd {} answers on {} (root {}: {})",
                        h.agent_version,
                        opts.socket.display(),
                        h.root_kind,
                        h.token
                    ),
                ));
                Some(h)
            }
            Err(e) => {
                out.push(problem(
                    "agent",
                    format!("no answer on {}: {e}", opts.socket.display()),
                    "start the agent: `systemctl --user start keywardd.socket` (or run `keywardd`)",
                ));
                None
            }
        }
    } else {
        None
    };
    if let Some(h) = &hello {
        check_state(h, &mut out);
    }
    let config_path = opts
        .config
        .clone()
        .or_else(|| {
            hello
                .as_ref()
                .and_then(|h| h.config.clone())
                .map(PathBuf::from)
        })
        .unwrap_or_else(default_config);
    let summary = check_config(&config_path, &mut out);
    if let Some(s) = &summary {
        check_root(s, &mut out);
    }
    check_ssh(hello.as_ref(), &mut out);
    check_units(&mut out);
    let keystore = opts
        .keystore
        .clone()
        .or_else(|| {
            hello
                .as_ref()
                .and_then(|h| h.keystore.clone())
                .map(PathBuf::from)
        })
        .or_else(|| {
            summary
                .as_ref()
                .and_then(|s| s["keystore"].as_str())
                .map(PathBuf::from)
        });
    check_keystore(keystore.as_deref(), &mut out);
    out
}

/// `$KEYWARD_CONFIG`, else `$XDG_CONFIG_HOME/keyward/keyward.toml` (as keywardd).
fn default_config() -> PathBuf {
    if let Some(p) = std::env::var_os("KEYWARD_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    config_home().join("keyward").join("keyward.toml")
}

fn config_home() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The socket file: there, a socket, ours, not open to others. True when worth connecting to.
fn check_socket(path: &Path, out: &mut Vec<Check>) -> bool {
    let start = "start the agent: `systemctl --user start keywardd.socket` (units: \
                 `systemd/install.sh --enable`), or run `keywardd`";
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) => {
            out.push(problem(
                "socket",
                format!("agent socket {}: {e}", path.display()),
                start,
            ));
            return false;
        }
    };
    if !md.file_type().is_socket() {
        out.push(problem(
            "socket",
            format!("{} is not a socket", path.display()),
            "remove what is there (keywardd never deletes a file that is not a socket), then start the agent",
        ));
        return false;
    }
    let uid = nix::unistd::getuid().as_raw();
    if md.uid() != uid {
        out.push(problem(
            "socket",
            format!(
                "{} belongs to uid {}, not to you (uid {uid})",
                path.display(),
                md.uid()
            ),
            "use your own socket (KEYWARD_SOCK / --socket), or run the agent as yourself",
        ));
        return false;
    }
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        out.push(problem(
            "socket",
            format!("{} has mode {mode:o}: others may connect", path.display()),
            "the socket must be 0600 in a 0700 directory: `SocketMode=0600` in the unit",
        ));
    } else {
        out.push(ok(
            "socket",
            format!("{} (yours, mode {mode:o})", path.display()),
        ));
    }
    true
}

/// Lock state and PIN attempts, from `hello`.
fn check_state(h: &HelloResult, out: &mut Vec<Check>) {
    if !h.initialized {
        out.push(problem(
            "root",
            "the agent has no root yet",
            "create it once: `keyward init`",
        ));
    } else if h.locked {
        out.push(note(
            "lock",
            "the agent is locked",
            Some("`keyward unlock` (or configure [prompt] pinentry)".into()),
        ));
    } else {
        out.push(ok("lock", "the agent is unlocked"));
    }
    match h.pin_attempts_left {
        Some(0) => out.push(problem(
            "pin-attempts",
            "no PIN attempts left: the agent refuses PINs",
            "stop the agent and run `keywardd reset-pin-attempts` (and check who guessed)",
        )),
        Some(n) => out.push(ok("pin-attempts", format!("{n} PIN attempts left"))),
        None => out.push(note(
            "pin-attempts",
            "this agent does not report PIN attempts",
            None,
        )),
    }
}

/// `keywardd` beside this program, else on PATH.
fn keywardd() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("keywardd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("keywardd"))
}

/// The agent's own parser on the config; its summary (JSON) when it parses.
fn check_config(path: &Path, out: &mut Vec<Check>) -> Option<Value> {
    let run = Command::new(keywardd())
        .arg("--config")
        .arg(path)
        .arg("--log")
        .arg("off")
        .arg("check-config")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .output();
    match run {
        Err(e) => {
            out.push(problem(
                "config",
                format!("could not run keywardd to check {}: {e}", path.display()),
                "install keywardd beside keyward or on PATH",
            ));
            None
        }
        Ok(o) if !o.status.success() => {
            let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
            out.push(problem(
                "config",
                format!("{}: {why}", path.display()),
                "fix the file (see README, \"Configuration\")",
            ));
            None
        }
        Ok(o) => match serde_json::from_slice::<Value>(&o.stdout) {
            Ok(v) => {
                out.push(ok("config", format!("{} parses", path.display())));
                Some(v)
            }
            Err(e) => {
                out.push(problem(
                    "config",
                    format!("keywardd check-config printed no summary: {e}"),
                    "use keyward and keywardd of the same version",
                ));
                None
            }
        },
    }
}

/// The root's device: the PKCS#11 module and token, or pcscd for card roots.
fn check_root(summary: &Value, out: &mut Vec<Check>) {
    let root = &summary["root"];
    let kind = root["kind"].as_str().unwrap_or("");
    let card = kind == "yubikey" || root["key_type"].as_str() == Some("ec");
    if kind == "pkcs11" {
        check_pkcs11(root, out);
    }
    if card {
        check_pcscd(out);
    } else {
        out.push(note(
            "pcscd",
            format!("not needed: the root is {kind}, not a card"),
            None,
        ));
    }
}

fn check_pkcs11(root: &Value, out: &mut Vec<Check>) {
    let Some(module) = root["module"].as_str() else {
        out.push(note(
            "pkcs11",
            "the URI names no module-path: the module loads by name",
            None,
        ));
        return;
    };
    if !Path::new(module).is_file() {
        out.push(problem(
            "pkcs11",
            format!("the PKCS#11 module {module} is not there"),
            "install the module's package, or fix module-path in [root] uri",
        ));
        return;
    }
    let mut cmd = Command::new("pkcs11-tool");
    cmd.arg("--module").arg(module).arg("-L");
    if let Some(env) = root["env"].as_object() {
        for (k, v) in env {
            if let Some(v) = v.as_str() {
                cmd.env(k, v);
            }
        }
    }
    match cmd.output() {
        Err(_) => out.push(note(
            "pkcs11",
            format!("pkcs11-tool is not installed: module {module} not checked"),
            Some("install opensc (`apt install opensc`) to check the token".into()),
        )),
        Ok(o) if !o.status.success() => out.push(problem(
            "pkcs11",
            format!(
                "module {module} does not load: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            "check the module's own configuration ([root.env], e.g. SOFTHSM2_CONF)",
        )),
        Ok(o) => {
            let listing = String::from_utf8_lossy(&o.stdout);
            let token = root["token"].as_str();
            let present = match token {
                Some(t) => listing
                    .lines()
                    .any(|l| l.contains("token label") && l.trim_end().ends_with(t)),
                None => listing.contains("token label"),
            };
            if present {
                out.push(ok(
                    "pkcs11",
                    format!(
                        "module {module} loads; token {} present",
                        token.unwrap_or("(any)")
                    ),
                ));
            } else {
                out.push(problem(
                    "pkcs11",
                    format!(
                        "module {module} loads, but token {} is not present",
                        token.unwrap_or("(any)")
                    ),
                    "insert the token, or fix `token=` in [root] uri",
                ));
            }
        }
    }
}

/// pcscd's socket (`$PCSCLITE_CSOCK_NAME`, else `/run/pcscd/pcscd.comm`).
fn check_pcscd(out: &mut Vec<Check>) {
    let sock = std::env::var_os("PCSCLITE_CSOCK_NAME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/pcscd/pcscd.comm"));
    let is_socket = std::fs::metadata(&sock)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket {
        out.push(ok(
            "pcscd",
            format!(
                "pcscd listens on {} (the agent's status says whether the card answers)",
                sock.display()
            ),
        ));
    } else {
        out.push(problem(
            "pcscd",
            format!("pcscd is not running (no socket at {})", sock.display()),
            "`sudo systemctl enable --now pcscd.socket` (package pcscd)",
        ));
    }
}

fn check_ssh(hello: Option<&HelloResult>, out: &mut Vec<Check>) {
    let ours = hello.and_then(|h| h.ssh_socket.clone());
    let fix = ours
        .as_ref()
        .map(|s| format!("export SSH_AUTH_SOCK={s}  (or: eval \"$(keyward ssh env)\")"));
    match (std::env::var_os("SSH_AUTH_SOCK"), &ours) {
        (None, _) => out.push(note("ssh", "SSH_AUTH_SOCK is not set", fix)),
        (Some(v), Some(s)) if Path::new(&v) == Path::new(s) => {
            out.push(ok("ssh", format!("SSH_AUTH_SOCK points at keywardd ({s})")))
        }
        (Some(v), _) => out.push(note(
            "ssh",
            format!(
                "SSH_AUTH_SOCK points at {}, not at keywardd",
                Path::new(&v).display()
            ),
            fix,
        )),
    }
}

/// The user units: installed, and the socket enabled.
fn check_units(out: &mut Vec<Check>) {
    let dir = config_home().join("systemd").join("user");
    let installed = dir.join("keywardd.socket").is_file() && dir.join("keywardd.service").is_file();
    if !installed {
        out.push(note(
            "units",
            format!(
                "the systemd user units are not installed in {}",
                dir.display()
            ),
            Some("`systemd/install.sh --enable` (optional: start keywardd yourself)".into()),
        ));
        return;
    }
    let enabled = dir
        .join("sockets.target.wants")
        .join("keywardd.socket")
        .exists();
    if enabled {
        out.push(ok("units", "keywardd.socket is installed and enabled"));
    } else {
        out.push(note(
            "units",
            "keywardd.socket is installed but not enabled",
            Some("`systemctl --user enable --now keywardd.socket`".into()),
        ));
    }
}

/// SQLite's own check of the keystore, opened read-only.
fn check_keystore(path: Option<&Path>, out: &mut Vec<Check>) {
    let Some(path) = path else {
        out.push(note(
            "keystore",
            "the keystore's path is unknown (no agent and no config)",
            Some("pass --keystore FILE or --config FILE".into()),
        ));
        return;
    };
    match integrity_check(path) {
        Ok(()) => out.push(ok(
            "keystore",
            format!("{} passes integrity_check", path.display()),
        )),
        Err(why) => out.push(problem(
            "keystore",
            format!("{}: {why}", path.display()),
            "stop the agent and restore the keystore from a backup (it holds only wrapped keys)",
        )),
    }
}

fn integrity_check(path: &Path) -> Result<(), String> {
    use rusqlite::OpenFlags;
    if !path.is_file() {
        return Err("no such file".into());
    }
    let db = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    let mut stmt = db
        .prepare("PRAGMA integrity_check")
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(format!("integrity_check: {}", rows.join("; ")))
    }
}

/// The checks as text (one line each, fixes indented) and as JSON.
pub fn render(checks: &[Check]) -> (String, Value) {
    let mut text = String::new();
    for c in checks {
        let tag = match c.status {
            Status::Ok => "ok     ",
            Status::Note => "note   ",
            Status::Problem => "PROBLEM",
        };
        text.push_str(&format!("{tag} {:<13} {}\n", c.check, c.detail));
        if let Some(f) = &c.fix {
            text.push_str(&format!("        {:<13} fix: {f}\n", ""));
        }
    }
    let problems = checks
        .iter()
        .filter(|c| c.status == Status::Problem)
        .count();
    if problems == 0 {
        text.push_str("no problems\n");
    } else {
        text.push_str(&format!("{problems} problem(s)\n"));
    }
    let json = json!({
        "ok": problems == 0,
        "problems": problems,
        "checks": checks,
    });
    (text, json)
}
