//! Agent authorization (DKMS, issue 15 part 5): `keyward agents add/revoke/policy export`
//! through the real agent, `keyward agents verify` offline on the exported file (sign, verify,
//! revoke, expiry, a tampered file, the wrong signer, each with its exit code), and `open`
//! refusing a message from an agent key the policy revoked.

use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::{parse_json, TestEnv};

keyward_tests::keyward_e2e_tests!(
    agents_authorize_verify_revoke_and_expire_through_the_cli,
    agents_open_refuses_a_message_from_a_revoked_agent_key,
    agents_refuse_bad_arguments_and_keep_serving,
    agents_open_refuses_a_sender_a_peers_published_policy_revoked,
);

fn setup(env: &TestEnv) {
    let pin_line = format!("{}\n", env.pin());
    env.cli_ok(&env.init_args(), Some(pin_line.as_bytes()));
    env.cli_ok(&["kek", "create"], None);
}

/// A new P-256 keypair: (id, did:key).
fn keypair(env: &TestEnv, label: &str) -> (String, String) {
    let id = env.cli_json(&["keypair", "create", "--label", label], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let did = env.cli_json(&["keypair", "show", &id], None)["did"]
        .as_str()
        .unwrap()
        .to_string();
    (id, did)
}

/// `keyward agents verify` (offline): (exit code, JSON).
fn verify(env: &TestEnv, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["--json", "agents", "verify"];
    args.extend_from_slice(extra);
    let out = env.cli(&args, None);
    (out.status.code().unwrap_or(-1), parse_json(&out.stdout))
}

fn export(env: &TestEnv, name: &str) -> String {
    let p = env.dir().join(name).to_string_lossy().into_owned();
    let r = env.cli_json(&["agents", "policy", "export", "-o", &p], None);
    assert_eq!(r["written"], true, "{r}");
    p
}

fn agents_authorize_verify_revoke_and_expire_through_the_cli(env: &mut TestEnv) {
    setup(env);
    assert_eq!(
        env.cli_json_err(&["agents", "policy", "export"], None),
        "not_found",
        "no policy before the first change"
    );
    let (_, a) = keypair(env, "laptop");
    let (_, b) = keypair(env, "phone");
    let (_, c) = keypair(env, "never listed");
    let r = env.cli_json(
        &["agents", "add", &a, "--cap", "sign", "--cap", "decrypt"],
        None,
    );
    assert_eq!(r["seq"], 1, "{r}");
    let root = r["root"].as_str().unwrap().to_string();
    assert!(root.starts_with("did:key:zDn"), "{root}");
    let r = env.cli_json(
        &[
            "agents",
            "add",
            &b,
            "--cap",
            "sign",
            "--expires",
            "2030-01-01",
        ],
        None,
    );
    assert_eq!(r["seq"], 2);
    let file = export(env, "policy.cbor");

    // Authorized: exit 0, with the signer pinned too.
    let (code, v) = verify(
        env,
        &["--policy", &file, "--key", &a, "--capability", "sign"],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["authorized"], true);
    assert_eq!(v["root"], root.as_str());
    let (code, v) = verify(
        env,
        &[
            "--policy",
            &file,
            "--key",
            &a,
            "--capability",
            "decrypt",
            "--signer",
            &root,
        ],
    );
    assert_eq!(code, 0, "{v}");
    // Missing capability (7), never listed (4), expired (6, checked at a later time).
    let (code, v) = verify(
        env,
        &["--policy", &file, "--key", &a, "--capability", "admin"],
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (7, Some("missing_capability")),
        "{v}"
    );
    let (code, v) = verify(
        env,
        &["--policy", &file, "--key", &c, "--capability", "sign"],
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (4, Some("not_listed")),
        "{v}"
    );
    let (code, _) = verify(
        env,
        &[
            "--policy",
            &file,
            "--key",
            &b,
            "--capability",
            "sign",
            "--at",
            "2029-12-31",
        ],
    );
    assert_eq!(code, 0, "before its expiry");
    let (code, v) = verify(
        env,
        &[
            "--policy",
            &file,
            "--key",
            &b,
            "--capability",
            "sign",
            "--at",
            "2030-01-01",
        ],
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (6, Some("expired")),
        "{v}"
    );

    // The wrong signer (3): another identity's key pinned as the signer.
    let (code, v) = verify(
        env,
        &[
            "--policy",
            &file,
            "--key",
            &a,
            "--capability",
            "sign",
            "--signer",
            &c,
        ],
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (3, Some("wrong_signer")),
        "{v}"
    );

    // A tampered file (2): the signature's last byte changed.
    let mut bytes = std::fs::read(&file).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    let bad = env.dir().join("tampered.cbor");
    std::fs::write(&bad, &bytes).unwrap();
    let bad = bad.to_string_lossy().into_owned();
    let (code, v) = verify(
        env,
        &["--policy", &bad, "--key", &a, "--capability", "sign"],
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (2, Some("bad_signature")),
        "{v}"
    );
    // Not a policy at all (1).
    let junk = env.dir().join("junk");
    std::fs::write(&junk, b"\x01\x02junk").unwrap();
    let (code, _) = verify(
        env,
        &[
            "--policy",
            junk.to_str().unwrap(),
            "--key",
            &a,
            "--capability",
            "sign",
        ],
    );
    assert_eq!(code, 1);

    // Revoke (5): final; listing it again is key_inactive.
    let r = env.cli_json(&["agents", "revoke", &a], None);
    assert_eq!(r["seq"], 3);
    let file2 = export(env, "policy2.cbor");
    let (code, v) = verify(
        env,
        &["--policy", &file2, "--key", &a, "--capability", "sign"],
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (5, Some("revoked")),
        "{v}"
    );
    let (code, _) = verify(
        env,
        &[
            "--policy",
            &file2,
            "--key",
            &b,
            "--capability",
            "sign",
            "--at",
            "2029-01-01",
        ],
    );
    assert_eq!(code, 0, "the other agent is untouched");
    assert_eq!(
        env.cli_json_err(&["agents", "add", &a, "--cap", "sign"], None),
        "key_inactive"
    );
    // The text form says why, on stderr, with the exit code.
    let out = env.cli(
        &[
            "agents",
            "verify",
            "--policy",
            &file2,
            "--key",
            &a,
            "--capability",
            "sign",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    // The policy survives a restart (kept in the keystore, MAC and signature checked).
    env.restart();
    let pin_line = format!("{}\n", env.pin());
    env.cli_ok(&["unlock", "--pin-stdin"], Some(pin_line.as_bytes()));
    let r = env.cli_json(&["agents", "policy", "export"], None);
    assert_eq!(r["seq"], 3);
    let file3 = export(env, "policy3.cbor");
    assert_eq!(
        std::fs::read(&file3).unwrap(),
        std::fs::read(&file2).unwrap()
    );
}

fn agents_open_refuses_a_message_from_a_revoked_agent_key(env: &mut TestEnv) {
    setup(env);
    let (_, me) = keypair(env, "me");
    let (sender, sender_did) = keypair(env, "agent");
    env.cli_json(&["agents", "add", &sender_did, "--cap", "sign"], None);
    let sealed = env.cli_json(
        &["seal", "--to", &me, "--sign-with", &sender],
        Some(b"hello"),
    )["sealed"]
        .as_str()
        .unwrap()
        .to_string();
    let msg = env.dir().join("msg");
    std::fs::write(&msg, sealed.as_bytes()).unwrap();
    let msg = msg.to_string_lossy().into_owned();
    let opened = env.cli_json(&["open", "-i", &msg], None);
    assert_eq!(
        opened["sender"],
        sender_did.as_str(),
        "opens while authorized"
    );
    env.cli_json(&["agents", "revoke", &sender_did], None);
    assert_eq!(
        env.cli_json_err(&["open", "-i", &msg], None),
        "verify_failed"
    );
    let out = env.cli(&["open", "-i", &msg], None);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn agents_refuse_bad_arguments_and_keep_serving(env: &mut TestEnv) {
    setup(env);
    let (_, a) = keypair(env, "a");
    assert_eq!(
        env.cli_json_err(
            &["agents", "add", "did:key:zNotAKey", "--cap", "sign"],
            None
        ),
        "client",
        "the CLI refuses a key it cannot parse"
    );
    // Past expiry: the agent refuses (invalid_args), nothing is signed.
    assert_eq!(
        env.cli_json_err(
            &["agents", "add", &a, "--cap", "sign", "--expires", "1000"],
            None
        ),
        "invalid_args"
    );
    assert_eq!(
        env.cli_json_err(&["agents", "policy", "export"], None),
        "not_found"
    );
    // An unknown capability never reaches the agent.
    let out = env.cli(&["agents", "add", &a, "--cap", "root"], None);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    // Over the wire, an unknown capability is a typed refusal.
    let c = env.client();
    let r = c.run(|c| c.agents_add(&a, vec!["root".into()], None));
    assert_eq!(keyward_tests::code(r), ErrorCode::InvalidArgs);
    drop(c);
    // Locked: agents.add needs the agent unlocked.
    env.cli_ok(&["lock"], None);
    assert_eq!(
        env.cli_json_err(&["agents", "add", &a, "--cap", "sign"], None),
        "locked"
    );
    // Still serving.
    env.cli_json(&["status"], None);
}

/// Two identities: the sender's publishes a policy revoking its agent key; the recipient's
/// agent, whose own policy says nothing about that key, refuses it with `open --agents FILE`.
fn agents_open_refuses_a_sender_a_peers_published_policy_revoked(env: &mut TestEnv) {
    setup(env);
    let (_, me) = keypair(env, "me");
    let peer = TestEnv::start(env.kind());
    setup(&peer);
    let (sender, sender_did) = keypair(&peer, "peer agent");
    peer.cli_json(&["agents", "add", &sender_did, "--cap", "sign"], None);
    let sealed = peer.cli_json(&["seal", "--to", &me, "--sign-with", &sender], Some(b"hi"))
        ["sealed"]
        .as_str()
        .unwrap()
        .to_string();
    let msg = env.dir().join("msg");
    std::fs::write(&msg, sealed.as_bytes()).unwrap();
    let msg = msg.to_string_lossy().into_owned();
    let listed = export(&peer, "listed.cbor");
    let opened = env.cli_json(&["open", "--agents", &listed, "-i", &msg], None);
    assert_eq!(opened["sender"], sender_did.as_str());
    peer.cli_json(&["agents", "revoke", &sender_did], None);
    let revoked = export(&peer, "revoked.cbor");
    assert_eq!(
        env.cli_json_err(&["open", "--agents", &revoked, "-i", &msg], None),
        "verify_failed"
    );
    // Without the peer's policy this agent has no reason to refuse.
    env.cli_json(&["open", "-i", &msg], None);
    // A policy file that does not verify is refused, not ignored.
    let mut bytes = std::fs::read(&revoked).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    let bad = env.dir().join("bad.cbor");
    std::fs::write(&bad, &bytes).unwrap();
    assert_eq!(
        env.cli_json_err(
            &["open", "--agents", bad.to_str().unwrap(), "-i", &msg],
            None
        ),
        "invalid_args"
    );
}
