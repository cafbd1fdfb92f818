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
