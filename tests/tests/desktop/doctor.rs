//! `keyward doctor`: a healthy agent on a SoftHSM token (exit 0, optional things as notes), a
//! stopped agent (non-zero, naming the socket), a damaged copy of the keystore (reported).

use keyward_tests::{RootKind, TestEnv};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// `keyward --json doctor ARGS` with no units installed (an empty XDG_CONFIG_HOME) and no
/// SSH_AUTH_SOCK: both must be notes, not problems.
fn doctor(env: &TestEnv, xdg: &Path, args: &[&str]) -> (Output, Value) {
    let mut all = vec!["--json", "doctor"];
    all.extend_from_slice(args);
    let mut cmd = env.cli_command(&all);
    cmd.env("XDG_CONFIG_HOME", xdg).env_remove("SSH_AUTH_SOCK");
    let out = cmd.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, v)
}

fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {v:#}"))
}

#[test]
fn doctor_healthy_agent_exits_0_with_notes() {
    let env = TestEnv::start(RootKind::Pkcs11);
    env.init();
    let status = env.cli_json(&["status"], None);
    let config = std::fs::canonicalize(env.config_path()).unwrap();
    assert_eq!(status["config"], config.display().to_string(), "{status:#}");
    assert_eq!(
        status["keystore"],
        env.keystore_path().display().to_string(),
        "{status:#}"
    );
    assert!(status["pin_attempts_left"].as_u64().unwrap() > 0);

    let xdg = tempfile::tempdir().unwrap();
    let (out, v) = doctor(&env, xdg.path(), &[]);
    assert!(out.status.success(), "{v:#}");
    assert_eq!(v["ok"], true);
    for ok in [
        "socket",
        "agent",
        "config",
        "pkcs11",
        "pin-attempts",
        "keystore",
    ] {
        assert_eq!(check(&v, ok)["status"], "ok", "{ok}: {v:#}");
    }
    for n in ["units", "ssh", "pcscd"] {
        assert_eq!(check(&v, n)["status"], "note", "{n}: {v:#}");
    }
    assert!(check(&v, "units")["fix"]
        .as_str()
        .unwrap()
        .contains("install.sh"));
    // Text form: the same verdict.
    let mut cmd = env.cli_command(&["doctor"]);
    cmd.env("XDG_CONFIG_HOME", xdg.path())
        .env_remove("SSH_AUTH_SOCK");
    let text = cmd.output().unwrap();
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("no problems"), "{text}");
}

#[test]
fn doctor_stopped_agent_is_a_problem_naming_the_socket() {
    let mut env = TestEnv::start(RootKind::Soft);
    env.init();
    env.stop();
    let xdg = tempfile::tempdir().unwrap();
    let config = env.config_path().display().to_string();
    let (out, v) = doctor(&env, xdg.path(), &["--config", &config]);
    assert!(!out.status.success(), "{v:#}");
    assert_eq!(v["ok"], false);
    let socket = check(&v, "socket");
    assert_eq!(socket["status"], "problem", "{v:#}");
    assert!(
        socket["detail"]
            .as_str()
            .unwrap()
            .contains(&env.socket_path().display().to_string()),
        "{socket:#}"
    );
    assert!(socket["fix"].as_str().unwrap().contains("keywardd"));
    // What can be checked without the agent still is.
    assert_eq!(check(&v, "config")["status"], "ok", "{v:#}");
    assert_eq!(check(&v, "keystore")["status"], "ok", "{v:#}");
}

#[test]
fn doctor_reports_a_damaged_keystore() {
    let mut env = TestEnv::start(RootKind::Soft);
    env.init_with_keys(false, b"doctor");
    // Stopped, the agent checkpoints its WAL into the file; copy that and damage the copy.
    env.stop();
    let copy = env.dir().join("damaged.db");
    std::fs::copy(env.keystore_path(), &copy).unwrap();
    env.start_agent();
    let mut bytes = std::fs::read(&copy).unwrap();
    assert!(bytes.len() > 3 * 4096, "keystore of {} bytes", bytes.len());
    for b in &mut bytes[4096 + 100..3 * 4096] {
        *b = 0xA5;
    }
    std::fs::write(&copy, bytes).unwrap();

    let xdg = tempfile::tempdir().unwrap();
    let copy_s = copy.display().to_string();
    let (out, v) = doctor(&env, xdg.path(), &["--keystore", &copy_s]);
    assert!(!out.status.success(), "{v:#}");
    let ks = check(&v, "keystore");
    assert_eq!(ks["status"], "problem", "{v:#}");
    assert!(
        ks["detail"].as_str().unwrap().contains("damaged.db"),
        "{ks:#}"
    );
    assert!(ks["fix"].as_str().unwrap().contains("backup"), "{ks:#}");
    // The agent's own keystore is fine.
    let (out, v) = doctor(&env, xdg.path(), &[]);
    assert!(out.status.success(), "{v:#}");
}
