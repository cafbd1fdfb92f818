//! The audit log: every operation appended with its client, door and result; `keyward audit
//! verify` catches edits, removals, reordering and a cut tail; an unwritable log refuses key
//! operations (`audit_unavailable`) unless the config opts out, and the agent keeps serving.

use keyward_tests::faults::{fill, Tmpfs};
use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::python::python_call;
use keyward_tests::{bin, parse_json, pin, RootKind, TestEnv};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A fresh soft-root agent (not initialised) whose config ends with `audit` (an `[audit]` table).
fn env_with_audit(audit: &str) -> TestEnv {
    let mut env = TestEnv::start(RootKind::Soft);
    env.stop();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(env.config_path(), format!("{cfg}\n{audit}\n")).unwrap();
    env.start_agent();
    env
}

/// The default audit log: beside the keystore file, or beside the config on PostgreSQL (the
/// same directory here).
fn log_path(env: &TestEnv) -> PathBuf {
    if keyward_tests::backend::on_postgres() {
        env.config_path().with_file_name("audit.log")
    } else {
        env.keystore_path().with_file_name("audit.log")
    }
}

/// `keyward --json audit show`: the entries.
fn show(env: &TestEnv, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--json", "audit", "show"];
    args.extend_from_slice(extra);
    match parse_json(&env.cli_ok(&args, None)) {
        Value::Array(a) => a,
        v => panic!("not an array: {v}"),
    }
}

/// `keyward --json audit verify [--file F]`: (exit ok, report).
fn verify(env: &TestEnv, file: Option<&Path>) -> (bool, Value) {
    let mut args = vec!["--json".to_string(), "audit".into(), "verify".into()];
    if let Some(f) = file {
        args.push("--file".into());
        args.push(f.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.cli(&args, None);
    (out.status.success(), parse_json(&out.stdout))
}

#[test]
fn audit_entries_name_the_client_door_key_and_result_of_every_op() {
    let env = env_with_audit("[audit]\ncheckpoint_every = 8\n");
    let cli = std::fs::canonicalize(bin("keyward")).unwrap();
    let cli = cli.display().to_string();
    // Ops through the CLI, one of them failing.
    let init = parse_json(&env.cli_ok(&["--json", "init", "--soft"], None));
    let root = init["id"].as_str().unwrap().to_string();
    let passphrase = init["passphrase"]
        .as_str()
        .expect("a soft root's passphrase")
        .to_string();
    let kek = parse_json(&env.cli_ok(&["--json", "kek", "create", "--label", "audited-kek"], None));
    let kek = kek["id"].as_str().unwrap().to_string();
    let dek = parse_json(&env.cli_ok(
        &[
            "--json",
            "dek",
            "create",
            "--kek",
            &kek,
            "--label",
            "audited-dek",
            "--exportable",
        ],
        None,
    ));
    let dek = dek["id"].as_str().unwrap().to_string();
    let secret = b"plaintext-that-must-never-be-logged";
    let ct = parse_json(&env.cli_ok(&["--json", "encrypt", "--dek", &dek], Some(secret)));
    let ct = ct["ciphertext"].as_str().unwrap().to_string();
    env.cli_ok(&["decrypt"], Some(ct.as_bytes()));
    env.cli_ok(&["dek", "export", &dek], None);
    let missing = "00000000-0000-0000-0000-000000000000";
    assert!(!env.cli(&["dek", "show", missing], None).status.success());
    env.cli_ok(&["lock"], None);
    env.cli_ok(&["--json", "status"], None);
    // The same op from a Python client is told apart by its executable.
    let c = env.client();
    c.run(|c| c.unlock(pin(&passphrase))).expect("unlock");
    let r = python_call(&env, "dek.export", &dek);
    assert!(r.err.is_none(), "{:?}", r.err);
    drop(c);

    let entries = show(&env, &[]);
    let find = |op: &str, exe_has: &str| -> &Value {
        entries
            .iter()
            .find(|e| e["op"] == op && e["exe"].as_str().is_some_and(|x| x.contains(exe_has)))
            .unwrap_or_else(|| panic!("no `{op}` entry by {exe_has}: {entries:#?}"))
    };
    let me = std::env::current_exe().unwrap().display().to_string();
    for op in [
        "init",
        "kek.create",
        "dek.create",
        "encrypt",
        "decrypt",
        "dek.export",
        "dek.show",
        "lock",
    ] {
        let e = find(op, &cli);
        assert_eq!(e["door"], "socket", "{e}");
        assert_eq!(e["uid"], nix::unistd::geteuid().as_raw(), "{e}");
        assert!(e["pid"].as_i64().is_some_and(|p| p > 0), "{e}");
    }
    assert_eq!(find("init", &cli)["key"], root.as_str());
    let created = find("kek.create", &cli);
    assert_eq!(
        created["key"],
        kek.as_str(),
        "a created key is named: {created}"
    );
    assert_eq!(created["label"], "audited-kek");
    let exported = find("dek.export", &cli);
    assert_eq!(exported["key"], dek.as_str());
    assert_eq!(exported["label"], "audited-dek");
    assert_eq!(exported["result"], "ok");
    assert_eq!(find("encrypt", &cli)["key"], dek.as_str());
    assert_eq!(find("dek.show", &cli)["result"], "not_found");
    // The unlock came from this test process; the second export from Python.
    assert_eq!(find("unlock", &me)["result"], "ok");
    let py = find("dek.export", "python");
    assert_eq!(py["key"], dek.as_str());
    assert_eq!(py["door"], "socket");
    // Checkpoints at init, lock and unlock (and every 8), signed by the audit key.
    let reasons: Vec<&str> = entries
        .iter()
        .filter(|e| e["op"] == "audit.checkpoint")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    for r in ["init", "lock", "unlock"] {
        assert!(reasons.contains(&r), "no `{r}` checkpoint: {reasons:?}");
    }
    // Never data: no plaintext, ciphertext, exported key or PIN in the file.
    let raw = std::fs::read_to_string(log_path(&env)).unwrap();
    for bad in [
        String::from_utf8_lossy(secret).to_string(),
        ct.clone(),
        passphrase.clone(),
    ] {
        assert!(!raw.contains(&bad), "the log holds {bad}");
    }
    // `status` names the log; `audit verify` finds the chain intact and signed.
    let st = parse_json(&env.cli_ok(&["--json", "status"], None));
    assert_eq!(st["audit_log"], log_path(&env).display().to_string());
    let (ok, report) = verify(&env, None);
    assert!(ok, "{report}");
    assert!(report["signed_through"].as_u64().is_some(), "{report}");
    assert_eq!(report["head_matched"], true, "{report}");
    assert_eq!(report["keystore_checked"], true, "{report}");
    // `--since` in the future shows nothing.
    assert!(show(&env, &["--since", "99999999999"]).is_empty());
}

#[test]
fn audit_verify_names_an_edited_removed_or_swapped_entry_and_a_cut_tail() {
    let mut env = env_with_audit("[audit]\ncheckpoint_every = 4\n");
    let keys = env.init_with_keys(false, b"chain");
    let c = env.client();
    for _ in 0..12 {
        c.run(|c| c.encrypt(&keys.dek, b"x")).expect("encrypt");
    }
    // Locked, the head in the keystore stays where the lock checkpoint put it.
    c.run(|c| c.lock()).expect("lock");
    drop(c);
    let live = log_path(&env);
    let copy = env.dir().join("copy.log");
    let lines: Vec<String> = std::fs::read_to_string(&live)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let write = |ls: &[String]| std::fs::write(&copy, ls.join("\n") + "\n").unwrap();
    write(&lines);
    let (ok, r) = verify(&env, Some(&copy));
    assert!(ok, "the untouched copy verifies: {r}");
    let head = r["head_seq"].as_u64().expect("a head");
    assert!(head > 10, "{r}");

    let expect = |ls: &[String], kind: &str, seq: u64| {
        write(ls);
        let (ok, r) = verify(&env, Some(&copy));
        assert!(!ok, "{kind} must fail: {r}");
        assert_eq!(r["problem"]["kind"], kind, "{r}");
        assert_eq!(r["problem"]["seq"], seq, "{r}");
    };
    // One edited byte (in the op of entry 6).
    let mut edited = lines.clone();
    assert!(edited[5].contains("\"op\":\""));
    edited[5] = edited[5].replacen("\"op\":\"", "\"op\":\"x", 1);
    expect(&edited, "changed", 6);
    // A removed line.
    let mut removed = lines.clone();
    removed.remove(6);
    expect(&removed, "removed", 7);
    // A swapped pair.
    let mut swapped = lines.clone();
    swapped.swap(7, 8);
    expect(&swapped, "reordered", 8);
    // A cut tail: the last lines up to before the keystore's head.
    let cut: Vec<String> = lines[..(head as usize - 3)].to_vec();
    expect(&cut, "tail_cut", head - 2);
    // The text report names the entry too.
    write(&removed);
    let out = env.cli(&["audit", "verify", "--file", copy.to_str().unwrap()], None);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("entries 7 to 7 were removed"), "{text}");
    // The agent's own log still verifies, and it keeps serving.
    let (ok, r) = verify(&env, None);
    assert!(ok, "{r}");
    env.assert_intact(&keys);
}

/// An agent whose audit log is on its own small tmpfs; `None` where none can be mounted.
fn audit_on_tmpfs(test: &str, required: bool) -> Option<(TestEnv, Tmpfs)> {
    let mut env = TestEnv::start(RootKind::Soft);
    env.stop();
    let fs = Tmpfs::mount_or_skip(&env.dir().join("auditfs"), "256k", test)?;
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!(
            "{cfg}\n[audit]\npath = \"{}\"\nrequired = {required}\n",
            fs.path().join("audit.log").display()
        ),
    )
    .unwrap();
    env.start_agent();
    Some((env, fs))
}

#[test]
fn a_full_audit_log_refuses_key_ops_with_audit_unavailable_and_the_agent_keeps_serving() {
    let Some((mut env, fs)) = audit_on_tmpfs("audit_full", true) else {
        return;
    };
    let keys = env.init_with_keys(true, b"audit full");
    let c = env.client();
    let filler = fill(fs.path());
    // Entries fill the log's last allocated page; then an entry cannot be written and its key
    // operation is refused, and so is every other.
    let mut refused = None;
    for _ in 0..200 {
        if let Err(e) = c.run(|c| c.encrypt(&keys.dek, b"x")) {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("no audit write failed on a full file system");
    assert_eq!(
        e.body().map(|b| b.code),
        Some(ErrorCode::AuditUnavailable),
        "{e}"
    );
    for r in [
        c.run(|c| c.decrypt(&keys.ciphertext, None)).map(|_| ()),
        c.run(|c| c.dek_export(&keys.dek)).map(|_| ()),
        c.run(|c| c.kek_create(None)).map(|_| ()),
    ] {
        let e = r.expect_err("must be refused");
        assert_eq!(
            e.body().map(|b| b.code),
            Some(ErrorCode::AuditUnavailable),
            "{e}"
        );
        assert!(e.to_string().contains("audit log cannot be written"), "{e}");
    }
    // Still serving: status, the log's state, a new connection; a CLI refusal is typed.
    assert!(!c.run(|c| c.status()).expect("status").locked);
    let info = c.run(|c| c.audit_info()).expect("audit.info");
    assert!(info.failing && info.required);
    let out = env.cli(&["--json", "encrypt", "--dek", &keys.dek], Some(b"y"));
    assert!(!out.status.success());
    assert_eq!(
        parse_json(&out.stdout)["error"]["code"],
        "audit_unavailable"
    );
    // Space returns: work resumes on the same connection, and the chain has no torn entry.
    std::fs::remove_file(&filler).unwrap();
    // (A refused request's own entry is the retry: the first one written clears the refusal.)
    let start = std::time::Instant::now();
    let ct = loop {
        match c.run(|c| c.encrypt(&keys.dek, b"back")) {
            Ok(ct) => break ct,
            Err(e) if start.elapsed() < std::time::Duration::from_secs(10) => {
                assert_eq!(
                    e.body().map(|b| b.code),
                    Some(ErrorCode::AuditUnavailable),
                    "{e}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("encrypt after space returned: {e}"),
        }
    };
    assert_eq!(
        c.run(|c| c.decrypt(&ct, None)).expect("decrypt").expose(),
        b"back"
    );
    drop(c);
    let (ok, r) = verify(&env, None);
    assert!(ok, "{r}");
    // The entries that could not be written are counted in the log once it works again.
    let lost = show(&env, &[]);
    let lost = lost
        .iter()
        .find(|e| e["op"] == "audit.lost")
        .expect("an audit.lost entry");
    assert_eq!(lost["result"], "audit_unavailable");
    assert!(
        lost["detail"]
            .as_str()
            .unwrap()
            .contains("entries could not be written"),
        "{lost}"
    );
    env.assert_intact(&keys);
    env.stop();
}

#[test]
fn audit_required_false_keeps_key_ops_working_on_a_full_log() {
    let Some((mut env, fs)) = audit_on_tmpfs("audit_optional", false) else {
        return;
    };
    let keys = env.init_with_keys(true, b"audit optional");
    let c = env.client();
    let _filler = fill(fs.path());
    // Until the log's writes fail (what `fill` left free, if anything, runs out: a flaky
    // version of this test stopped after a fixed 60 rounds), and well past that, every
    // operation still answers.
    let mut failing_since = None;
    for round in 0..2000 {
        let ct = c.run(|c| c.encrypt(&keys.dek, b"works")).expect("encrypt");
        assert_eq!(
            c.run(|c| c.decrypt(&ct, None)).expect("decrypt").expose(),
            b"works"
        );
        if failing_since.is_none() && round % 20 == 19 {
            let info = c.run(|c| c.audit_info()).expect("audit.info");
            assert!(!info.required);
            if info.failing {
                failing_since = Some(round);
            }
        }
        if failing_since.is_some_and(|r| round >= r + 60) {
            break;
        }
    }
    assert!(
        failing_since.is_some(),
        "the log never failed on a full file system"
    );
    let info = c.run(|c| c.audit_info()).expect("audit.info");
    assert!(info.failing && !info.required);
    drop(c);
    env.stop();
}

#[test]
fn a_second_agent_on_the_same_audit_log_refuses_to_start() {
    let env = env_with_audit("[audit]\n");
    env.init();
    // A second config: its own socket and keystore, the first agent's audit log.
    let other = TestEnv::start(RootKind::Soft);
    let mut other = other;
    other.stop();
    let cfg = std::fs::read_to_string(other.config_path()).unwrap();
    std::fs::write(
        other.config_path(),
        format!("{cfg}\n[audit]\npath = \"{}\"\n", log_path(&env).display()),
    )
    .unwrap();
    let out = other.agent_command().output().expect("run keywardd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("opening the audit log") && err.contains("held by another agent"),
        "{err}"
    );
    // The first agent is unaffected.
    env.cli_ok(&["status"], None);
}

#[test]
fn ssh_signatures_are_audited_with_the_ssh_door_and_the_signing_program() {
    keyward_tests::ssh::ensure_openssh();
    let env = env_with_audit("[audit]\n");
    keyward_tests::ssh::init_with_kek(&env);
    let k = keyward_tests::ssh::ssh_keypair(&env, &[], "audited-ssh");
    let id = k["id"].as_str().unwrap();
    keyward_tests::ssh::git_sign_and_verify(&env, k["ssh"].as_str().unwrap(), "audited");
    let entries = show(&env, &[]);
    let signed = entries
        .iter()
        .find(|e| e["op"] == "sign" && e["door"] == "ssh")
        .unwrap_or_else(|| panic!("no SSH signature entry: {entries:#?}"));
    assert_eq!(signed["key"], id, "{signed}");
    assert_eq!(signed["label"], "audited-ssh", "{signed}");
    assert_eq!(signed["result"], "ok", "{signed}");
    assert!(
        signed["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("ssh-keygen")),
        "{signed}"
    );
    assert!(entries
        .iter()
        .any(|e| e["op"] == "keypair.list" && e["door"] == "ssh"));
    let (ok, r) = verify(&env, None);
    assert!(ok, "{r}");
}

/// Unknown, malformed and refused requests are entries too (typed errors, the agent keeps
/// serving), an op name built to forge a line stays inside its own entry, and a policy denial
/// names the refused client.
#[test]
fn unknown_malformed_and_denied_requests_are_audited_and_cannot_forge_lines() {
    let env = TestEnv::start(RootKind::Soft);
    let mut env = env;
    env.stop();
    std::fs::write(
        env.config_path().with_file_name("policy.toml"),
        "[[rule]]\nname = \"nobody exports\"\nops = [\"dek.export\"]\neffect = \"deny\"\n",
    )
    .unwrap();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!("policy = \"policy.toml\"\n{cfg}\n[audit]\n"),
    )
    .unwrap();
    env.start_agent();
    let keys = env.init_with_keys(true, b"forge");
    let mut raw = env.raw();
    raw.hello(1);
    use keyward_tests::{err_code, int, map, request, text};
    // An op name with a newline and a whole fake entry in it, and a very long one.
    let forged = "x\"}\n{\"seq\":1,\"op\":\"forged\"}\n";
    let r = raw.call(&request(2, forged, map(&[])));
    assert_eq!(err_code(&r), ErrorCode::UnknownOp);
    let long = "y".repeat(5000);
    let r = raw.call(&request(3, &long, map(&[])));
    assert_eq!(err_code(&r), ErrorCode::UnknownOp);
    // Malformed arguments of the audit op itself.
    let r = raw.call(&request(4, "audit.info", map(&[("bogus", int(1))])));
    assert_eq!(err_code(&r), ErrorCode::InvalidArgs);
    let r = raw.call(&request(5, "dek.show", map(&[("id", int(7))])));
    assert_eq!(err_code(&r), ErrorCode::InvalidArgs);
    // A denial, from Python.
    let r = python_call(&env, "dek.export", &keys.dek);
    assert_eq!(r.err.map(|e| e.code), Some(ErrorCode::PolicyDenied));
    let r = raw.call(&request(6, "dek.show", map(&[("id", text(&keys.dek))])));
    assert!(r.err.is_none(), "still serving: {:?}", r.err);
    drop(raw);

    let entries = show(&env, &[]);
    let forged_entry = entries
        .iter()
        .find(|e| e["op"] == forged)
        .unwrap_or_else(|| panic!("the forged op is one entry: {entries:#?}"));
    assert_eq!(forged_entry["result"], "unknown_op");
    assert!(!entries.iter().any(|e| e["op"] == "forged"));
    let long_entry = entries
        .iter()
        .find(|e| e["op"].as_str().is_some_and(|o| o.starts_with("yyy")))
        .expect("the long op");
    assert_eq!(long_entry["op"].as_str().unwrap().len(), 256, "clipped");
    assert!(entries
        .iter()
        .any(|e| e["op"] == "audit.info" && e["result"] == "invalid_args"));
    let denied = entries
        .iter()
        .find(|e| e["op"] == "dek.export")
        .expect("the denial");
    assert_eq!(denied["result"], "policy_denied");
    assert!(
        denied["exe"].as_str().unwrap().contains("python"),
        "{denied}"
    );
    let (ok, r) = verify(&env, None);
    assert!(ok, "{r}");
    env.assert_intact(&keys);
}

/// Every op of the table, sent by this test process with empty arguments (most are refused,
/// some run): each gets one entry naming this executable, the socket door and the code it got.
#[test]
fn every_op_of_the_table_gets_an_entry_with_its_client_and_result() {
    use keyward_tests::keyward_proto::ops::Op;
    use keyward_tests::{map, request};
    let env = env_with_audit("[audit]\n");
    env.init();
    let mut raw = env.raw();
    raw.hello(1);
    let mut sent = Vec::new();
    for (i, op) in Op::ALL.iter().enumerate() {
        if *op == Op::Hello {
            continue;
        }
        let r = raw.call(&request(10 + i as u64, op.name(), map(&[])));
        let result = r
            .err
            .map(|e| e.code.as_str().to_string())
            .unwrap_or_else(|| "ok".into());
        sent.push((op.name(), result));
    }
    drop(raw);
    let me = std::env::current_exe().unwrap().display().to_string();
    let entries = show(&env, &[]);
    for (op, result) in &sent {
        // The last one: `init` and `unlock` also came from this process before.
        let e = entries
            .iter()
            .rev()
            .find(|e| e["op"] == *op && e["exe"] == me.as_str())
            .unwrap_or_else(|| panic!("no `{op}` entry by {me}"));
        assert_eq!(e["result"], result.as_str(), "{op}: {e}");
        assert_eq!(e["door"], "socket", "{op}: {e}");
        assert_eq!(e["pid"], std::process::id(), "{op}: {e}");
    }
    assert!(!entries.iter().any(|e| e["op"] == "hello"));
    let (ok, r) = verify(&env, None);
    assert!(ok, "{r}");
}

/// A log path the agent cannot open at start (a directory there): the agent starts and serves,
/// key operations are refused while the log is required, and work once the path is free.
#[test]
fn an_audit_log_that_cannot_be_opened_at_start_refuses_key_ops_until_it_can() {
    let mut env = TestEnv::start(RootKind::Soft);
    env.stop();
    let path = env.dir().join("audit.log");
    // A log the agent may have kept so far makes way for a directory.
    let _ = std::fs::remove_file(&path);
    std::fs::create_dir(&path).unwrap();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!("{cfg}\n[audit]\npath = \"{}\"\n", path.display()),
    )
    .unwrap();
    env.start_agent();
    let c = env.client();
    let st = c.run(|c| c.status()).expect("status answers");
    assert_eq!(st.audit_log.as_deref(), Some(path.to_str().unwrap()));
    let e = c
        .run(|c| c.init(pin(env.pin())))
        .expect_err("init is refused");
    assert_eq!(
        e.body().map(|b| b.code),
        Some(ErrorCode::AuditUnavailable),
        "{e}"
    );
    std::fs::remove_dir(&path).unwrap();
    let start = std::time::Instant::now();
    loop {
        match c.run(|c| c.init(pin(env.pin()))) {
            Ok(_) => break,
            Err(e) if start.elapsed() < std::time::Duration::from_secs(10) => {
                assert_eq!(
                    e.body().map(|b| b.code),
                    Some(ErrorCode::AuditUnavailable),
                    "{e}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("init after the path was freed: {e}"),
        }
    }
    drop(c);
    let (ok, r) = verify(&env, None);
    assert!(ok, "{r}");
    env.stop();
}

/// The agent started by hand (with a test hook), killed and reaped on drop.
struct HookedAgent(std::process::Child);

impl Drop for HookedAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The log is on without any `[audit]` table (beside the keystore), and a failing `fdatasync`
/// (the debug-build hook `KEYWARD_TEST_AUDIT_SYNC_FAIL`) fails it as a failed write does: key
/// operations are refused with `audit_unavailable` while `status` answers; started again
/// without the hook, the agent works and the log verifies.
#[test]
fn the_log_is_on_by_default_and_a_failing_sync_refuses_key_ops() {
    let mut env = TestEnv::start(RootKind::Soft);
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(
        !cfg.contains("[audit]"),
        "the harness config has no [audit] table"
    );
    let st = env.client().run(|c| c.status()).expect("status");
    assert_eq!(
        st.audit_log.as_deref(),
        Some(log_path(&env).to_str().unwrap())
    );
    env.stop();
    let stderr = std::fs::File::create(env.dir().join("sync-fail.log")).unwrap();
    let agent = HookedAgent(
        env.agent_command()
            .env("KEYWARD_TEST_AUDIT_SYNC_FAIL", "1")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("keywardd"),
    );
    keyward_tests::wait_for("the socket", || {
        std::os::unix::net::UnixStream::connect(env.socket_path()).ok()
    });
    let c = env.client();
    // `agent.start` is written at once; its sync (on the timer, or the one `audit.info`'s
    // flush makes) fails, and from then on every batch must be synced to count.
    let info = c.run(|c| c.audit_info()).expect("audit.info answers");
    assert!(info.failing, "{info:?}");
    let e = c
        .run(|c| c.init(pin(env.pin())))
        .expect_err("init is refused");
    assert!(c.run(|c| c.status()).is_ok(), "status answers");
    assert_eq!(
        e.body().map(|b| b.code),
        Some(ErrorCode::AuditUnavailable),
        "{e}"
    );
    drop(c);
    drop(agent);
    let log = std::fs::read_to_string(env.dir().join("sync-fail.log")).unwrap();
    assert!(log.contains("syncing the log failed"), "{log}");
    env.start_agent();
    env.client()
        .run(|c| c.init(pin(env.pin())))
        .expect("init without the hook");
    let (ok, r) = verify(&env, None);
    assert!(ok, "{r}");
    env.stop();
}
