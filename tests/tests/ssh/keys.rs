//! Which keys appear, git signing, ssh-add of file keys, lifetimes, removal, locks, confirm.

use keyward_tests::ssh::*;
use keyward_tests::{RootKind, TestEnv};

#[test]
fn agent_keypairs_are_listed_and_sign_for_git() {
    let env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let p256 = ssh_keypair(&env, &[], "laptop-p256");
    let ed = ssh_keypair(&env, &["--alg", "ed25519"], "laptop-ed25519");
    let token = ssh_keypair(&env, &["--on-token"], "token-key");
    // A keypair not marked for SSH does not appear.
    let hidden =
        String::from_utf8(env.cli_ok(&["keypair", "create", "--label", "hidden"], None)).unwrap();
    let l = run_ok(&env, "ssh-add", &["-L"], None);
    for k in [&p256, &ed, &token] {
        let line = k["ssh"].as_str().expect("ssh line");
        assert!(l.contains(line), "ssh-add -L lacks {line}:\n{l}");
        assert_eq!(k["ssh_mode"], "on");
        let fp = k["ssh_fingerprint"].as_str().unwrap();
        assert!(fp.starts_with("SHA256:"));
        assert!(listed(&env).contains(fp));
    }
    assert!(p256["ssh"]
        .as_str()
        .unwrap()
        .starts_with("ecdsa-sha2-nistp256 "));
    assert!(p256["ssh"].as_str().unwrap().ends_with(" laptop-p256"));
    assert!(ed["ssh"].as_str().unwrap().starts_with("ssh-ed25519 "));
    assert_eq!(l.lines().count(), 3, "{l}");
    let hidden_show = env.cli_json(&["keypair", "show", hidden.trim()], None);
    assert!(hidden_show.get("ssh_mode").is_none());
    assert!(!l.contains(hidden_show["ssh"].as_str().unwrap()));
    for (k, tag) in [(&p256, "p256"), (&ed, "ed"), (&token, "token")] {
        git_sign_and_verify(&env, k["ssh"].as_str().unwrap(), tag);
    }
    // --off stops offering; --on brings it back.
    let id = p256["id"].as_str().unwrap();
    env.cli_ok(&["keypair", "ssh", id, "--off"], None);
    assert!(!listed(&env).contains(p256["ssh_fingerprint"].as_str().unwrap()));
    env.cli_ok(&["keypair", "ssh", id, "--on"], None);
    assert!(listed(&env).contains(p256["ssh_fingerprint"].as_str().unwrap()));
    // status reports the socket; `ssh env` prints it in three shells' syntax.
    let st = env.cli_json(&["status"], None);
    let sock = ssh_sock(&env);
    assert_eq!(st["ssh_socket"], sock.display().to_string());
    let env_line = String::from_utf8(env.cli_ok(&["ssh", "env"], None)).unwrap();
    assert_eq!(
        env_line,
        format!("export SSH_AUTH_SOCK={};\n", sock.display())
    );
    let fish = String::from_utf8(env.cli_ok(&["ssh", "env", "--fish"], None)).unwrap();
    assert!(fish.starts_with("set -gx SSH_AUTH_SOCK "), "{fish}");
    let csh = String::from_utf8(env.cli_ok(&["ssh", "env", "--csh"], None)).unwrap();
    assert!(csh.starts_with("setenv SSH_AUTH_SOCK "), "{csh}");
    assert_eq!(keyward_tests::mode(&sock) & 0o777, 0o600);
}

/// P-256 signatures made back to back, most with the agent's precomputed nonces (`[server]
/// ecdsa_nonces`, on by default), all verify, never share a nonce, and `ssh-keygen` accepts one
/// made in the middle of the run.
#[test]
fn p256_signatures_back_to_back_verify_and_never_share_a_nonce() {
    use p256::ecdsa::signature::Verifier as _;
    use ssh_encoding::{Decode as _, Encode as _};
    let env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let k = ssh_keypair(&env, &[], "burst");
    let line = k["ssh"].as_str().unwrap();
    let public = ssh_key::PublicKey::from_openssh(line).unwrap();
    let blob = public.to_bytes().unwrap();
    let mut conn = RawSsh::connect(&env);
    let mut sign = |data: &[u8]| -> ssh_key::Signature {
        let mut body = vec![13u8]; // SSH_AGENTC_SIGN_REQUEST
        blob.as_slice().encode(&mut body).unwrap();
        data.encode(&mut body).unwrap();
        0u32.encode(&mut body).unwrap();
        conn.send(&body);
        let answer = conn.recv().expect("an answer");
        assert_eq!(answer[0], 14, "not SIGN_RESPONSE: {answer:?}");
        let mut rest = &answer[1..];
        let sig_blob = Vec::<u8>::decode(&mut rest).unwrap();
        ssh_key::Signature::try_from(sig_blob.as_slice()).unwrap()
    };
    // The first signature caches the key, which starts the refill; give it a moment.
    sign(b"warm-up");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut rs = std::collections::HashSet::new();
    for i in 0..600u32 {
        let data = format!("message {i}");
        let sig = sign(data.as_bytes());
        public
            .key_data()
            .verify(data.as_bytes(), &sig)
            .unwrap_or_else(|e| panic!("signature {i} does not verify: {e}"));
        // r is the first mpint of the signature's blob: a repeat means a reused nonce.
        let mut r = sig.as_bytes();
        let r = Vec::<u8>::decode(&mut r).unwrap();
        assert!(rs.insert(r), "signature {i} repeats an r: a reused nonce");
        if i == 300 {
            git_sign_and_verify(&env, line, "burst");
        }
    }
}

#[test]
fn file_keys_persist_expire_and_are_removed() {
    let mut env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let agent_key = ssh_keypair(&env, &[], "made-in-agent");
    let ed = file_key(&env, "ed25519", "file-ed25519");
    let ec = file_key(&env, "ecdsa", "file-ecdsa");
    let tmp = file_key(&env, "ed25519", "file-lifetime");
    run_ok(
        &env,
        "ssh-add",
        &[ed.to_str().unwrap(), ec.to_str().unwrap()],
        None,
    );
    run_ok(&env, "ssh-add", &["-t", "2", tmp.to_str().unwrap()], None);
    let l = listed(&env);
    for c in [
        "file-ed25519",
        "file-ecdsa",
        "file-lifetime",
        "made-in-agent",
    ] {
        assert!(l.contains(c), "{c} missing:\n{l}");
    }
    // The persisted file keys are keypairs now, wrapped under the KEK.
    let kp = env.cli_json(&["keypair", "list"], None).to_string();
    assert!(kp.contains("file-ed25519") && kp.contains("file-ecdsa"));
    assert!(
        !kp.contains("file-lifetime"),
        "a -t key must stay in memory only"
    );
    std::thread::sleep(std::time::Duration::from_millis(3000));
    assert!(
        !listed(&env).contains("file-lifetime"),
        "-t 2 did not expire"
    );
    env.restart();
    env.cli_ok(
        &["unlock", "--pin-stdin"],
        Some(format!("{}\n", env.pin()).as_bytes()),
    );
    let l = listed(&env);
    assert!(
        l.contains("file-ed25519") && l.contains("file-ecdsa"),
        "{l}"
    );
    let pubkey = std::fs::read_to_string(ed.with_extension("pub")).unwrap();
    git_sign_and_verify(&env, pubkey.trim(), "after-restart");
    // -d removes one added key (deleted from the keystore).
    run_ok(&env, "ssh-add", &["-d", ed.to_str().unwrap()], None);
    assert!(!listed(&env).contains("file-ed25519"));
    assert!(!env
        .cli_json(&["keypair", "list"], None)
        .to_string()
        .contains("file-ed25519"));
    // -D: added keys are deleted; keypairs made in the agent only stop being offered.
    run_ok(&env, "ssh-add", &["-D"], None);
    assert!(listed(&env).trim().is_empty() || listed(&env).contains("no identities"));
    let kp = env.cli_json(&["keypair", "list"], None).to_string();
    assert!(!kp.contains("file-ecdsa"));
    assert!(
        kp.contains(agent_key["id"].as_str().unwrap()),
        "an agent keypair was deleted"
    );
    let shown = env.cli_json(
        &["keypair", "show", agent_key["id"].as_str().unwrap()],
        None,
    );
    assert!(shown.get("ssh_mode").is_none());
}

#[test]
fn locks_refuse_signing() {
    let env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let k = ssh_keypair(&env, &[], "lockme");
    let line = k["ssh"].as_str().unwrap();
    // ssh-add -x / -X: the door's own lock.
    run_ok(&env, "ssh-add", &["-x"], Some(b"door-pass\ndoor-pass\n"));
    assert!(
        !listed(&env).contains("lockme"),
        "a locked door lists nothing"
    );
    let bad = run(&env, "ssh-add", &["-X"], Some(b"wrong\n"));
    assert!(!bad.status.success());
    run_ok(&env, "ssh-add", &["-X"], Some(b"door-pass\n"));
    assert!(listed(&env).contains("lockme"));
    // keyward lock: identities still listed, signing refused with a log line.
    env.cli_ok(&["lock"], None);
    assert!(listed(&env).contains("lockme"));
    std::fs::write(env.dir().join("l.pub"), format!("{line}\n")).unwrap();
    std::fs::write(env.dir().join("l.msg"), b"x").unwrap();
    let out = run(
        &env,
        "ssh-keygen",
        &["-Y", "sign", "-n", "git", "-f", "l.pub", "l.msg"],
        None,
    );
    assert!(!out.status.success(), "signed while locked");
    assert!(env.log().contains("keywardd is locked"), "{}", env.log());
    env.cli_ok(
        &["unlock", "--pin-stdin"],
        Some(format!("{}\n", env.pin()).as_bytes()),
    );
    git_sign_and_verify(&env, line, "unlocked");
}

#[test]
fn confirmation_asks_with_key_and_process_and_denial_fails() {
    let mut env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let k = ssh_keypair(&env, &[], "confirm-me");
    let id = k["id"].as_str().unwrap();
    let shown = String::from_utf8(env.cli_ok(&["--json", "keypair", "ssh", id, "--confirm"], None))
        .unwrap();
    assert!(shown.contains("\"ssh_mode\":\"confirm\""), "{shown}");
    // An SSH_ASKPASS-compatible program: records the prompt, answers from a file.
    let dir = env.dir().to_path_buf();
    let script = dir.join("askpass.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >> {d}/prompts\n[ \"$SSH_ASKPASS_PROMPT\" = confirm ] || exit 3\nexit $(cat {d}/answer)\n",
            d = dir.display()
        ),
    )
    .unwrap();
    keyward_tests::chmod(&script, 0o755);
    // The agent reads SSH_ASKPASS from its config.
    let mut cfg = std::fs::read_to_string(env.config_path()).unwrap();
    cfg.push_str(&format!("\n[ssh]\naskpass = \"{}\"\n", script.display()));
    std::fs::write(env.config_path(), cfg).unwrap();
    env.restart();
    env.cli_ok(
        &["unlock", "--pin-stdin"],
        Some(format!("{}\n", env.pin()).as_bytes()),
    );
    std::fs::write(dir.join("answer"), "0").unwrap();
    git_sign_and_verify(&env, k["ssh"].as_str().unwrap(), "yes");
    let prompts = std::fs::read_to_string(dir.join("prompts")).unwrap();
    assert!(prompts.contains("confirm-me"), "{prompts}");
    assert!(
        prompts.contains(k["ssh_fingerprint"].as_str().unwrap()),
        "{prompts}"
    );
    assert!(
        prompts.contains("ssh-keygen"),
        "the prompt names the requesting process: {prompts}"
    );
    std::fs::write(dir.join("answer"), "1").unwrap();
    let out = git_sign_attempt(&env, k["ssh"].as_str().unwrap(), "n");
    assert!(!out.status.success(), "signed although the user said no");
    // ssh-add -c: a file key marked for confirmation.
    let f = file_key(&env, "ed25519", "file-confirm");
    run_ok(&env, "ssh-add", &["-c", f.to_str().unwrap()], None);
    let pubkey = std::fs::read_to_string(f.with_extension("pub")).unwrap();
    std::fs::write(dir.join("answer"), "0").unwrap();
    git_sign_and_verify(&env, pubkey.trim(), "file-confirm");
    assert!(std::fs::read_to_string(dir.join("prompts"))
        .unwrap()
        .contains("file-confirm"));
}

#[test]
fn revoked_keypairs_and_keypairs_under_a_revoked_kek_are_not_offered() {
    let env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let a = ssh_keypair(&env, &[], "to-revoke");
    let b = ssh_keypair(&env, &["--alg", "ed25519"], "under-kek");
    let line = |k: &serde_json::Value| k["ssh"].as_str().expect("ssh line").to_string();
    let l = run_ok(&env, "ssh-add", &["-L"], None);
    assert!(l.contains(&line(&a)) && l.contains(&line(&b)), "{l}");
    // Signed once, so the unwrapped key is in the door's cache.
    git_sign_and_verify(&env, &line(&a), "before");
    env.cli_ok(&["keypair", "revoke", a["id"].as_str().unwrap()], None);
    let l = run_ok(&env, "ssh-add", &["-L"], None);
    assert!(!l.contains(&line(&a)), "a revoked keypair is offered:\n{l}");
    // And it signs nothing, though it was cached.
    std::fs::write(env.dir().join("after.msg"), b"commit tree 5678\n").unwrap();
    let out = run(
        &env,
        "ssh-keygen",
        &["-Y", "sign", "-n", "git", "-f", "before.pub", "after.msg"],
        None,
    );
    assert!(!out.status.success(), "a revoked keypair signed");
    assert!(l.contains(&line(&b)), "{l}");
    // The KEK: its keypair leaves too.
    let kek = env.cli_json(&["kek", "list"], None)["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.cli_ok(&["kek", "revoke", &kek], None);
    assert_eq!(
        listed(&env)
            .lines()
            .filter(|l| l.contains("SHA256:"))
            .count(),
        0
    );
}

#[test]
fn confirmation_goes_through_pinentry_confirm_when_a_prompt_is_configured() {
    let mut env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let k = ssh_keypair(&env, &[], "pinentry-confirm");
    env.cli_ok(
        &["keypair", "ssh", k["id"].as_str().unwrap(), "--confirm"],
        None,
    );
    let dir = env.dir().to_path_buf();
    // A fake Assuan pinentry: logs every command, answers CONFIRM from the file `answer`
    // (`OK` is yes; pinentry's cancel error is no).
    let confirm = keyward_tests::pinentry::confirm_from_file();
    let script = keyward_tests::pinentry::fake(&dir, "echo OK", &confirm);
    keyward_tests::pinentry::configure(&env, &script, 20);
    env.restart();
    env.cli_ok(
        &["unlock", "--pin-stdin"],
        Some(format!("{}\n", env.pin()).as_bytes()),
    );
    std::fs::write(dir.join("answer"), "yes").unwrap();
    git_sign_and_verify(&env, k["ssh"].as_str().unwrap(), "yes");
    let log = keyward_tests::pinentry::log(&dir);
    let desc = log
        .lines()
        .find(|l| l.starts_with("SETDESC "))
        .unwrap_or_else(|| panic!("no SETDESC in {log}"));
    assert!(desc.contains("pinentry-confirm"), "names the key: {desc}");
    assert!(desc.contains("ssh-keygen"), "names the process: {desc}");
    assert!(log.lines().any(|l| l.starts_with("CONFIRM")), "{log}");

    std::fs::write(dir.join("answer"), "no").unwrap();
    let out = git_sign_attempt(&env, k["ssh"].as_str().unwrap(), "n");
    assert!(!out.status.success(), "signed although the user said no");
    assert!(
        env.log().contains("use not confirmed"),
        "the denial is logged: {}",
        env.log()
    );
}
