//! Client identity and the policy file: the agent knows which program is asking (its executable,
//! read from `/proc` when the connection is accepted), and rules of a policy file allow, confirm
//! or deny requests by client, key, operation and door.

use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::python::python_call;
use keyward_tests::ssh::{init_with_kek, run, ssh_keypair};
use keyward_tests::{bin, RootKind, TestEnv};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

keyward_tests::keyward_e2e_tests!(agent_identifies_the_client_executable,);

/// The agent's log line for a connection names the peer's executable: the `keyward` CLI for a
/// CLI command, and this test binary for a raw connection from the test process itself.
fn agent_identifies_the_client_executable(env: &mut TestEnv) {
    env.cli_ok(&["status"], None);
    let cli = std::fs::canonicalize(bin("keyward")).expect("keyward binary");
    let me = std::env::current_exe().expect("current exe");
    let mut raw = env.raw();
    raw.hello(1);
    drop(raw);
    let log = env.log();
    let connected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("client connected"))
        .collect();
    assert!(
        connected
            .iter()
            .any(|l| l.contains(&format!("exe=\"{}\"", cli.display()))
                && l.contains("door=\"socket\"")),
        "no connection from {} in the log:\n{log}",
        cli.display()
    );
    let pid = std::process::id();
    assert!(
        connected
            .iter()
            .any(|l| l.contains(&format!("exe=\"{}\"", me.display()))
                && l.contains(&format!("pid={pid}"))),
        "no connection from this test process ({}, pid {pid}) in the log:\n{log}",
        me.display()
    );
}

/// A fresh soft-root agent (not yet initialised) whose config names `policy.toml` (written
/// with `policy`) and has `extra` appended (e.g. a `[prompt]` table).
fn env_with_policy(policy: &str, extra: &str) -> TestEnv {
    let mut env = TestEnv::start(RootKind::Soft);
    env.stop();
    std::fs::write(policy_path(&env), policy).unwrap();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!("policy = \"policy.toml\"\n{cfg}\n{extra}\n"),
    )
    .unwrap();
    env.start_agent();
    env
}

fn policy_path(env: &TestEnv) -> PathBuf {
    env.config_path().with_file_name("policy.toml")
}

/// `keyward --json dek export ID`: the error object on failure, else `None`.
fn export(env: &TestEnv, dek: &str) -> Option<serde_json::Value> {
    let out = env.cli(&["--json", "dek", "export", dek], None);
    if out.status.success() {
        return None;
    }
    let v = keyward_tests::parse_json(&out.stdout);
    Some(v["error"].clone())
}

#[test]
fn policy_deny_rule_refuses_export_and_names_the_rule() {
    let env = env_with_policy(
        "[[rule]]\nname = \"no export\"\nops = [\"dek.export\"]\neffect = \"deny\"\n",
        "",
    );
    let keys = env.init_with_keys(true, b"policy");
    let err = export(&env, &keys.dek).expect("export must be refused");
    assert_eq!(err["code"], "policy_denied", "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains("rule 1 (\"no export\")"), "{msg}");
    assert!(msg.contains("dek.export"), "{msg}");
    // The plain-text CLI says so too, and exits 1.
    let out = env.cli(&["dek", "export", &keys.dek], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policy_denied"), "{stderr}");
    // Other ops are allowed (default allow), and the agent keeps serving.
    let c = env.client();
    let pt = c
        .run(|c| c.decrypt(&keys.ciphertext, None))
        .expect("decrypt");
    assert_eq!(pt.expose(), b"policy");
    assert!(env.log().contains("policy rule 1"), "logged");
}

#[test]
fn policy_exe_rule_tells_the_cli_from_a_python_client() {
    let cli = std::fs::canonicalize(bin("keyward")).unwrap();
    let env = env_with_policy(
        &format!(
            "[[rule]]\nname = \"only the CLI exports\"\nops = [\"dek.export\"]\nexe = \"{}\"\neffect = \"allow\"\n\
             [[rule]]\nname = \"nobody else\"\nops = [\"dek.export\"]\neffect = \"deny\"\n",
            cli.display()
        ),
        "",
    );
    let keys = env.init_with_keys(true, b"exe");
    assert_eq!(export(&env, &keys.dek), None, "the CLI may export");
    let r = python_call(&env, "dek.export", &keys.dek);
    let err = r.err.expect("python must be refused");
    assert_eq!(err.code, ErrorCode::PolicyDenied);
    assert!(
        err.message.contains("rule 2 (\"nobody else\")"),
        "{}",
        err.message
    );
    // The same Python client may do what no rule forbids.
    let r = python_call(&env, "keypair.show", "00000000-0000-0000-0000-000000000000");
    assert_eq!(r.err.map(|e| e.code), Some(ErrorCode::NotFound));
    // The log names the Python interpreter as the refused client.
    let log = env.log();
    assert!(
        log.lines()
            .any(|l| l.contains("denies `dek.export`") && l.contains("python")),
        "{log}"
    );
}

/// A fake Assuan pinentry that answers CONFIRM from the file `answer` beside it and logs every
/// command to `pinentry.log`.
fn fake_pinentry(dir: &Path) -> PathBuf {
    keyward_tests::pinentry::fake(
        dir,
        "echo OK",
        &keyward_tests::pinentry::confirm_from_file(),
    )
}

#[test]
fn policy_confirm_asks_pinentry_yes_and_no() {
    let dir = tempfile::tempdir().unwrap();
    let pinentry = fake_pinentry(dir.path());
    let env = env_with_policy(
        "[[rule]]\nname = \"ask\"\nops = [\"dek.export\"]\neffect = \"confirm\"\n",
        &format!(
            "[prompt]\npinentry = \"{}\"\ntimeout_s = 20\n",
            pinentry.display()
        ),
    );
    let keys = env.init_with_keys(true, b"confirm");
    std::fs::write(dir.path().join("answer"), "yes").unwrap();
    assert_eq!(export(&env, &keys.dek), None, "confirmed: exported");
    let log = keyward_tests::pinentry::log(dir.path());
    let desc = log
        .lines()
        .find(|l| l.starts_with("SETDESC "))
        .unwrap_or_else(|| panic!("no SETDESC in {log}"));
    assert!(desc.contains("dek.export"), "names the op: {desc}");
    assert!(desc.contains("keyward"), "names the program: {desc}");
    std::fs::write(dir.path().join("answer"), "no").unwrap();
    let err = export(&env, &keys.dek).expect("refused at the prompt");
    assert_eq!(err["code"], "policy_denied", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("not confirmed"),
        "{err}"
    );
}

#[test]
fn policy_confirm_without_a_prompt_is_denied() {
    let env = env_with_policy(
        "[[rule]]\nops = [\"dek.export\"]\neffect = \"confirm\"\n",
        "",
    );
    let keys = env.init_with_keys(true, b"nobody");
    let err = export(&env, &keys.dek).expect("nobody to ask");
    assert_eq!(err["code"], "policy_denied", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("no pinentry"),
        "{err}"
    );
}

fn hup_and_wait(env: &TestEnv, line: &str) {
    let before = env.log().matches(line).count();
    let st = Command::new("kill")
        .args(["-HUP", &env.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let start = Instant::now();
    while env.log().matches(line).count() == before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {line:?} after SIGHUP; log:\n{}",
            env.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn policy_sighup_reloads_a_good_file_and_keeps_the_old_on_a_bad_one() {
    let mut env = env_with_policy("[[rule]]\nops = [\"random\"]\neffect = \"deny\"\n", "");
    let keys = env.init_with_keys(true, b"hup");
    assert_eq!(export(&env, &keys.dek), None, "first policy allows export");
    std::fs::write(
        policy_path(&env),
        "[[rule]]\nname = \"reloaded\"\nops = [\"dek.export\"]\neffect = \"deny\"\n",
    )
    .unwrap();
    hup_and_wait(&env, "policy reloaded");
    let err = export(&env, &keys.dek).expect("the reloaded policy denies");
    assert!(
        err["message"].as_str().unwrap().contains("\"reloaded\""),
        "{err}"
    );
    std::fs::write(policy_path(&env), "[[rule]]\neffect = \"maybe\"\n").unwrap();
    hup_and_wait(&env, "policy reload failed");
    assert!(env.is_running(), "a bad file does not stop the agent");
    let err = export(&env, &keys.dek).expect("the old policy is kept");
    assert!(
        err["message"].as_str().unwrap().contains("\"reloaded\""),
        "{err}"
    );
    assert!(env.log().contains("keeping the policy in force"));
    env.assert_intact(&keys);
}

#[test]
fn policy_bad_file_at_start_stops_the_agent() {
    let mut env = TestEnv::start(RootKind::Soft);
    env.stop();
    std::fs::write(
        policy_path(&env),
        "[[rule]]\nops = [\"nope\"]\neffect = \"deny\"\n",
    )
    .unwrap();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!("policy = \"policy.toml\"\n{cfg}"),
    )
    .unwrap();
    let out = env.agent_command().output().expect("keywardd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("policy") && stderr.contains("unknown op"),
        "{stderr}"
    );
    // `keywardd check-config` says so too.
    let out = env
        .agent_command()
        .arg("check-config")
        .output()
        .expect("keywardd check-config");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown op \"nope\""), "{stderr}");
}

#[test]
fn policy_ssh_door_denies_a_signature_by_rule() {
    let env = env_with_policy(
        "[[rule]]\nname = \"no ssh with work keys\"\ndoor = \"ssh\"\nops = [\"sign\"]\nlabel = \"work-*\"\neffect = \"deny\"\n",
        "",
    );
    init_with_kek(&env);
    let work = ssh_keypair(&env, &[], "work-laptop");
    let home = ssh_keypair(&env, &[], "home-laptop");
    let sign = |k: &serde_json::Value, tag: &str| {
        let dir = env.dir();
        std::fs::write(
            dir.join(format!("{tag}.pub")),
            format!("{}\n", k["ssh"].as_str().unwrap()),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{tag}.msg")), b"x").unwrap();
        run(
            &env,
            "ssh-keygen",
            &[
                "-Y",
                "sign",
                "-n",
                "git",
                "-f",
                &format!("{tag}.pub"),
                &format!("{tag}.msg"),
            ],
            None,
        )
    };
    let out = sign(&home, "home");
    assert!(
        out.status.success(),
        "home key signs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sign(&work, "work");
    assert!(!out.status.success(), "the work key must not sign over SSH");
    let log = env.log();
    assert!(
        log.contains("policy rule 1 (\"no ssh with work keys\") denies `sign`")
            && log.contains("door=\"ssh\""),
        "{log}"
    );
    // The same key still signs through the socket (the rule is for the SSH door).
    let id = work["id"].as_str().unwrap();
    env.cli_ok(&["sign", "--key", id], Some(b"m"));
}

/// `keyward policy check` works offline (no agent): it validates a file, lists its rules, and
/// says which rule a request hits and why the rules before it did not match.
#[test]
fn policy_check_explains_offline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname = \"git signs\"\nops = [\"sign\"]\nlabel = \"ssh-*\"\nexe = [\"/usr/bin/git\", \"/usr/bin/ssh\"]\neffect = \"allow\"\n\
         [[rule]]\nname = \"nobody else\"\nops = [\"sign\"]\nlabel = \"ssh-*\"\neffect = \"deny\"\n\
         [default]\neffect = \"allow\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let check = |extra: &[&str]| {
        let mut c = Command::new(bin("keyward"));
        c.args([
            "--json",
            "--socket",
            "/nonexistent/agent.sock",
            "policy",
            "check",
            "--policy",
            f,
        ])
        .args(extra);
        c.output().unwrap()
    };
    let out = check(&[]);
    assert!(out.status.success());
    let v = keyward_tests::parse_json(&out.stdout);
    assert_eq!(
        (v["valid"].as_bool(), v["rules"].as_u64()),
        (Some(true), Some(2))
    );
    let key = ["--op", "sign", "--key", "k1", "--label", "ssh-laptop"];
    let mut args = key.to_vec();
    args.extend(["--exe", "/usr/bin/git"]);
    let v = keyward_tests::parse_json(&check(&args).stdout);
    assert_eq!(v["decision"]["effect"], "allow");
    assert_eq!(v["decision"]["rule"], 1);
    let mut args = key.to_vec();
    args.extend(["--exe", "/usr/bin/python3"]);
    let v = keyward_tests::parse_json(&check(&args).stdout);
    assert_eq!(v["decision"]["effect"], "deny");
    assert_eq!(v["decision"]["text"], "rule 2 (\"nobody else\")");
    assert_eq!(v["skipped"][0]["criterion"], "exe");
    let v = keyward_tests::parse_json(&check(&["--op", "encrypt"]).stdout);
    assert_eq!(v["decision"]["text"], "the default rule");
    // Plain text names the rule too.
    let mut c = Command::new(bin("keyward"));
    c.args(["policy", "check", "--policy", f]).args(args);
    let text = String::from_utf8(c.output().unwrap().stdout).unwrap();
    assert!(text.contains("rule 1 does not match: exe"), "{text}");
    assert!(
        text.contains("rule 2 (\"nobody else\"): deny `sign`"),
        "{text}"
    );
    // A bad file fails with the rule and the reason; an unknown op too.
    std::fs::write(
        &file,
        "[[rule]]\nops = [\"dek.exprot\"]\neffect = \"deny\"\n",
    )
    .unwrap();
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rule 1: unknown op \"dek.exprot\""),
        "{stderr}"
    );
}

/// Under a default-deny policy: `hello` still answers, an op no rule allows is `policy_denied`
/// (unknown ops and malformed arguments included, before they are decoded), an allowed op with
/// malformed arguments is `invalid_args`, and the agent keeps serving with its keystore intact.
#[test]
fn policy_default_deny_with_unknown_and_malformed_requests() {
    use keyward_tests::{int, map, request, text};
    let mut env = env_with_policy(
        "[[rule]]\nname = \"the basics\"\nops = [\"init\", \"unlock\", \"kek.create\", \"kek.list\", \"dek.create\", \"dek.list\", \"encrypt\", \"decrypt\"]\neffect = \"allow\"\n\
         [default]\nname = \"closed\"\neffect = \"deny\"\n",
        "",
    );
    let keys = env.init_with_keys(true, b"closed");
    let mut raw = env.raw();
    raw.hello(1);
    let r = raw.call(&request(2, "frobnicate", map(&[])));
    assert_eq!(
        r.err.as_ref().map(|e| e.code),
        Some(ErrorCode::PolicyDenied)
    );
    assert!(r
        .err
        .unwrap()
        .message
        .contains("the default rule (\"closed\")"));
    let r = raw.call(&request(3, "dek.export", map(&[("id", int(5))])));
    assert_eq!(r.err.map(|e| e.code), Some(ErrorCode::PolicyDenied));
    let r = raw.call(&request(4, "dek.export", map(&[("id", text(&keys.dek))])));
    assert_eq!(r.err.map(|e| e.code), Some(ErrorCode::PolicyDenied));
    let r = raw.call(&request(5, "encrypt", map(&[("dek", int(7))])));
    assert_eq!(r.err.map(|e| e.code), Some(ErrorCode::InvalidArgs));
    let r = raw.call(&request(6, "kek.list", map(&[])));
    assert!(r.ok.is_some(), "{:?}", r.err);
    env.assert_intact(&keys);
}
