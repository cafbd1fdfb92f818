//! `ssh` logging in to a real `sshd` through the agent, and destination restrictions.

use keyward_tests::ssh::*;
use keyward_tests::{RootKind, TestEnv};

#[test]
fn ssh_logs_in_with_p256_ed25519_and_token_keys() {
    let env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let keys = [
        ssh_keypair(&env, &[], "login-p256"),
        ssh_keypair(&env, &["--alg", "ed25519"], "login-ed25519"),
        ssh_keypair(&env, &["--on-token"], "login-token"),
    ];
    let lines: Vec<&str> = keys.iter().map(|k| k["ssh"].as_str().unwrap()).collect();
    let sshd = Sshd::start(&env, &lines);
    for (k, line) in keys.iter().zip(&lines) {
        let p = env
            .dir()
            .join(format!("{}.pub", k["label"].as_str().unwrap()));
        std::fs::write(&p, format!("{line}\n")).unwrap();
        let out = sshd.login(&env, &p);
        assert!(
            out.status.success(),
            "ssh with {} failed: {}\nsshd log:\n{}\nagent log:\n{}",
            k["label"],
            String::from_utf8_lossy(&out.stderr),
            sshd.log(),
            env.log()
        );
        assert!(
            sshd.log().contains(k["ssh_fingerprint"].as_str().unwrap()),
            "{}",
            sshd.log()
        );
    }
    assert!(
        env.log().contains("ssh: session bound"),
        "no session binding recorded:\n{}",
        env.log()
    );
}

#[test]
fn destination_restricted_keys_sign_only_for_their_host() {
    let env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let allowed = file_key(&env, "ed25519", "to-allowed");
    let other = file_key(&env, "ecdsa", "to-other");
    let pubs: Vec<String> = [&allowed, &other]
        .iter()
        .map(|p| {
            std::fs::read_to_string(p.with_extension("pub"))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    let sshd = Sshd::start(&env, &[&pubs[0], &pubs[1]]);
    // known_hosts for ssh-add -h: `allowed` is this sshd's host key, `elsewhere` another key.
    let elsewhere = file_key(&env, "ed25519", "elsewhere-host");
    let elsewhere_pub = std::fs::read_to_string(elsewhere.with_extension("pub")).unwrap();
    let kh = env.dir().join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "allowed {}\nelsewhere {}\n",
            sshd.host_key,
            elsewhere_pub.trim()
        ),
    )
    .unwrap();
    let khs = kh.to_str().unwrap();
    run_ok(
        &env,
        "ssh-add",
        &["-H", khs, "-h", "allowed", allowed.to_str().unwrap()],
        None,
    );
    run_ok(
        &env,
        "ssh-add",
        &["-H", khs, "-h", "elsewhere", other.to_str().unwrap()],
        None,
    );
    // Locally (no binding) both are listed.
    let l = listed(&env);
    assert!(l.contains("to-allowed") && l.contains("to-other"), "{l}");
    let ok = sshd.login(&env, &allowed.with_extension("pub"));
    assert!(
        ok.status.success(),
        "restricted key refused at its host: {}\nagent log:\n{}",
        String::from_utf8_lossy(&ok.stderr),
        env.log()
    );
    let refused = sshd.login(&env, &other.with_extension("pub"));
    assert!(
        !refused.status.success(),
        "a key restricted to another host logged in"
    );
    // Kept in memory only: not in the keystore.
    let kp = env.cli_json(&["keypair", "list"], None).to_string();
    assert!(!kp.contains("to-allowed") && !kp.contains("to-other"));
}

/// `ssh-add` of an RSA file key: wrapped under a KEK (the agent's RSA keypair format), it
/// survives a restart; `ssh-keygen -Y sign` with it verifies (rsa-sha2-512), `ssh` logs in with
/// it (the rsa-sha2-* flags), and a SHA-1 `ssh-rsa` request (no flag) gets FAILURE.
#[test]
fn rsa_file_keys_sign_for_git_and_log_in() {
    use base64::Engine as _;
    let mut env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let key = file_key(&env, "rsa", "file-rsa");
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let pubkey = pubkey.trim().to_string();
    run_ok(&env, "ssh-add", &[key.to_str().unwrap()], None);
    env.restart();
    env.cli_ok(
        &["unlock", "--pin-stdin"],
        Some(format!("{}\n", env.pin()).as_bytes()),
    );
    let l = listed(&env);
    assert!(l.contains("file-rsa") && l.contains("(RSA)"), "{l}");
    // Wrapped like every RSA keypair, and shown with its SSH line.
    let list = env.cli_json(&["keypair", "list"], None);
    assert!(list.to_string().contains("file-rsa"), "{list}");
    git_sign_and_verify(&env, &pubkey, "rsa");
    // A real login (ssh asks for rsa-sha2-512 or -256).
    let sshd = Sshd::start(&env, &[&pubkey]);
    let out = sshd.login(&env, &key.with_extension("pub"));
    assert!(
        out.status.success(),
        "ssh with the RSA key failed: {}\nsshd log:\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log(),
        env.log()
    );
    // SIGN_REQUEST without a flag asks for SHA-1 `ssh-rsa`: refused.
    let blob = base64::engine::general_purpose::STANDARD
        .decode(pubkey.split_whitespace().nth(1).unwrap())
        .unwrap();
    let mut req = vec![13];
    req.extend_from_slice(&(blob.len() as u32).to_be_bytes());
    req.extend_from_slice(&blob);
    req.extend_from_slice(&[0, 0, 0, 4, 1, 2, 3, 4]);
    let mut with_flag = req.clone();
    req.extend_from_slice(&0u32.to_be_bytes());
    with_flag.extend_from_slice(&2u32.to_be_bytes());
    let mut c = RawSsh::connect(&env);
    c.send(&req);
    assert_eq!(
        c.recv(),
        Some(vec![5]),
        "a SHA-1 ssh-rsa signature was made"
    );
    c.send(&with_flag);
    let ans = c.recv().expect("answer");
    assert_eq!(ans[0], 14, "no rsa-sha2-256 signature: {ans:?}");
    assert!(String::from_utf8_lossy(&ans).contains("rsa-sha2-256"));
}
