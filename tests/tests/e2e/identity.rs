//! Keypairs, signatures, sharing between users, node keys and sealed messages, through the real
//! CLI and agent. Cross-checks with independent implementations where they exist here
//! (`openssl dgst -verify` for ECDSA).

use keyward_tests::{RootKind, TestEnv};
use std::process::Command;

keyward_tests::keyward_e2e_tests!(
    keypairs_sign_and_verify_offline_and_with_openssl,
    sharing_a_dek_between_three_agents,
    node_keys_chain_revocation_and_expiry,
    sealed_messages_between_nodes,
    token_keypairs_sign_but_never_leave_the_token,
    cryppo_rsa4096_shares_with_imported_rsa_keys,
    ed25519_keypairs_sign_and_openssl_verifies,
    node_root_rotate_old_root_vouches_for_the_new_chain,
    node_root_rotate_compromised_refuses_the_old_root,
);

/// A fresh P-256 peer keypair and sharing DEK, and the check that keypair `id` is refused as the
/// sender of a share (`wrong_key`). Returns the peer's `keypair show` and the DEK id.
fn refused_as_share_sender(env: &TestEnv, id: &str) -> (serde_json::Value, String) {
    let (_, peer) = keypair(env, "peer");
    let dek = env.cli_json(&["dek", "create", "--purpose", "sharing"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let to = peer["did"].as_str().unwrap();
    let args = ["share", "seal", "--dek", &dek, "--to", to, "--from", id];
    assert_eq!(env.cli_json_err(&args, None), "wrong_key");
    (peer, dek)
}

fn setup(env: &TestEnv) {
    let pin_line = format!("{}\n", env.pin());
    env.cli_ok(&env.init_args(), Some(pin_line.as_bytes()));
    env.cli_ok(&["kek", "create"], None);
}

fn keypair(env: &TestEnv, label: &str) -> (String, serde_json::Value) {
    let id = env.cli_json(&["keypair", "create", "--label", label], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = env.cli_json(&["keypair", "show", &id], None);
    (id, show)
}

fn write(env: &TestEnv, name: &str, data: &[u8]) -> String {
    let p = env.dir().join(name);
    std::fs::write(&p, data).unwrap();
    p.to_string_lossy().into_owned()
}

fn keypairs_sign_and_verify_offline_and_with_openssl(env: &mut TestEnv) {
    setup(env);
    let (id, show) = keypair(env, "me");
    // Three encodings of one public key.
    let did = show["did"].as_str().unwrap();
    assert!(did.starts_with("did:key:zDn"), "{did}");
    assert_eq!(show["jwk"]["kty"], "EC");
    assert_eq!(show["jwk"]["crv"], "P-256");
    let pem = show["pem"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let listed = env.cli_json(&["keypair", "list"], None);
    assert!(listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == id.as_str()));

    let data = write(env, "data", b"the message to sign");
    let sig_der = env.dir().join("sig.der").to_string_lossy().into_owned();
    env.cli_ok(&["sign", "--key", &id, "-i", &data, "-o", &sig_der], None);
    let sig_raw = env.dir().join("sig.raw").to_string_lossy().into_owned();
    env.cli_ok(
        &["sign", "--key", &id, "--raw", "-i", &data, "-o", &sig_raw],
        None,
    );
    assert_eq!(std::fs::read(&sig_raw).unwrap().len(), 64, "raw r||s");

    // Offline verify with each key form (no agent involved in `verify`).
    let pem_file = write(env, "pub.pem", pem.as_bytes());
    let jwk_file = write(env, "pub.jwk", show["jwk"].to_string().as_bytes());
    for key in [did, pem_file.as_str(), jwk_file.as_str()] {
        for sig in [&sig_der, &sig_raw] {
            let v = env.cli_json(
                &["verify", "--key", key, "--signature", sig, "-i", &data],
                None,
            );
            assert_eq!(v["valid"], true);
        }
    }
    // The real peer: OpenSSL checks the DER signature.
    let out = Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            &pem_file,
            "-signature",
            &sig_der,
            &data,
        ])
        .output()
        .expect("run openssl (the test needs it, it is not skipped)");
    assert!(out.status.success(), "openssl: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Verified OK"));

    // A tampered signature and tampered data fail, with a clear error.
    let mut bad = std::fs::read(&sig_raw).unwrap();
    bad[10] ^= 1;
    let bad_sig = write(env, "bad.sig", &bad);
    let out = env.cli(
        &["verify", "--key", did, "--signature", &bad_sig, "-i", &data],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verify"),
        "{out:?}"
    );
    let other = write(env, "other", b"another message");
    let out = env.cli(
        &[
            "verify",
            "--key",
            did,
            "--signature",
            &sig_der,
            "-i",
            &other,
        ],
        None,
    );
    assert!(!out.status.success());
    // A malformed did:key is a clear error, not a crash.
    let out = env.cli(
        &[
            "verify",
            "--key",
            "did:key:zDnaeNOTBASE58!!",
            "--signature",
            &sig_der,
            "-i",
            &data,
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did:key"),
        "{out:?}"
    );

    // Unknown and deleted keys.
    assert_eq!(
        env.cli_json_err(
            &[
                "sign",
                "--key",
                "9b2d1c8e-0000-4000-8000-000000000000",
                "-i",
                &data
            ],
            None
        ),
        "not_found"
    );
    env.cli_json(&["keypair", "delete", &id], None);
    assert_eq!(
        env.cli_json_err(&["keypair", "show", &id], None),
        "not_found"
    );
}

fn sharing_a_dek_between_three_agents(alice: &mut TestEnv) {
    let bob = TestEnv::start(alice.kind());
    let carol = TestEnv::start(alice.kind());
    for env in [&*alice, &bob, &carol] {
        setup(env);
    }
    let (_a_key, a_show) = keypair(alice, "alice");
    let (_b_key, b_show) = keypair(&bob, "bob");
    keypair(&carol, "carol");
    let a_did = a_show["did"].as_str().unwrap().to_string();
    let b_did = b_show["did"].as_str().unwrap().to_string();

    // Alice encrypts under a sharing DEK and seals the DEK to Bob.
    let dek = alice.cli_json(&["dek", "create", "--purpose", "sharing"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ct = alice.cli_ok(&["encrypt", "--dek", &dek], Some(b"for bob's eyes"));
    let sealed = alice.cli_json(&["share", "seal", "--dek", &dek, "--to", &b_did], None)["sealed"]
        .as_str()
        .unwrap()
        .to_string();
    let share = write(&bob, "share", sealed.as_bytes());

    // Carol cannot open it, and Bob refuses it when he expects another sender.
    assert_eq!(
        carol.cli_json_err(&["share", "open", "-i", &share], None),
        "wrong_key"
    );
    let c_did = carol.cli_json(&["keypair", "list"], None)["keys"][0]["did"].clone();
    assert!(c_did.as_str().unwrap().starts_with("did:key:"), "{c_did}");
    assert_eq!(
        bob.cli_json_err(&["share", "open", "-i", &share, "--from", &b_did], None),
        "verify_failed",
        "a share from Alice is refused when Bob expects himself"
    );
    // Bob opens it (naming Alice as the expected sender): same DEK id, and Alice's data decrypts.
    let opened = bob.cli_json(&["share", "open", "-i", &share, "--from", &a_did], None);
    assert_eq!(opened["id"], dek.as_str());
    assert_eq!(opened["sender"], a_did.as_str());
    let pt = bob.cli_ok(&["decrypt"], Some(&ct));
    assert_eq!(pt, b"for bob's eyes");
    // Carol cannot decrypt Alice's data: she has no such DEK.
    assert_eq!(carol.cli_json_err(&["decrypt"], Some(&ct)), "not_found");
    // Opening twice is refused; a tampered share fails; a personal DEK is never sealed.
    assert_eq!(
        bob.cli_json_err(&["share", "open", "-i", &share], None),
        "already_exists"
    );
    let mut t = sealed.into_bytes();
    let n = t.len() - 5;
    t[n] = if t[n] == b'A' { b'B' } else { b'A' };
    let tampered = write(&carol, "tampered", &t);
    let code = bob.cli_json_err(&["share", "open", "-i", &tampered], None);
    assert!(
        ["verify_failed", "invalid_args", "wrong_key"].contains(&code.as_str()),
        "{code}"
    );
    let personal = alice.cli_json(&["dek", "create"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        alice.cli_json_err(&["share", "seal", "--dek", &personal, "--to", &b_did], None),
        "wrong_key"
    );
    assert_eq!(
        alice.cli_json_err(
            &["share", "seal", "--dek", &dek, "--to", "did:key:zDnaXXXX"],
            None
        ),
        "invalid_args"
    );
    // And the shared key keeps working across Bob's restart.
    let mut bob = bob;
    bob.restart();
    let unlock = format!("{}\n", bob.pin());
    bob.cli_ok(&["unlock", "--pin-stdin"], Some(unlock.as_bytes()));
    assert_eq!(bob.cli_ok(&["decrypt"], Some(&ct)), b"for bob's eyes");
}

fn did_of(env: &TestEnv, name: &str) -> String {
    let nodes = env.cli_json(&["node", "list"], None);
    let id = nodes["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name && k["state"] == "active")
        .unwrap_or_else(|| panic!("no active node {name}: {nodes}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.cli_json(&["keypair", "show", &id], None)["did"]
        .as_str()
        .unwrap()
        .to_string()
}

fn export_chain(env: &TestEnv, file: &str) -> String {
    let p = env.dir().join(file).to_string_lossy().into_owned();
    env.cli_ok(&["node", "chain", "export", "-o", &p], None);
    p
}

fn node_keys_chain_revocation_and_expiry(env: &mut TestEnv) {
    setup(env);
    env.cli_json(&["node", "derive", "web1"], None);
    env.cli_json(&["node", "derive", "web2"], None);
    let web1 = did_of(env, "web1");
    let web2 = did_of(env, "web2");
    assert_eq!(
        env.cli_json_err(&["node", "derive", "web1"], None),
        "already_exists"
    );
    let chain = export_chain(env, "chain1");
    let v = env.cli_json(&["node", "verify", "--chain", &chain, "--key", &web1], None);
    assert_eq!(v["vouched"], true);
    assert_eq!(v["name"], "web1");

    // A key outside the cluster is not vouched for.
    let (_, stranger) = keypair(env, "stranger");
    let out = env.cli(
        &[
            "node",
            "verify",
            "--chain",
            &chain,
            "--key",
            stranger["did"].as_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success(), "{out:?}");

    // Rekey: a fresh key, vouched for by the same parent.
    env.cli_json(&["node", "rekey", "web2"], None);
    let web2b = did_of(env, "web2");
    assert_ne!(web2, web2b, "rekey makes a new key");
    let chain = export_chain(env, "chain2");
    assert_eq!(
        env.cli_json(
            &["node", "verify", "--chain", &chain, "--key", &web2b],
            None
        )["name"],
        "web2"
    );

    // Revoke web1: the new chain says no; the old chain file still says yes (it predates it).
    env.cli_json(&["node", "revoke", "web1"], None);
    let chain3 = export_chain(env, "chain3");
    let out = env.cli(
        &["node", "verify", "--chain", &chain3, "--key", &web1],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{out:?}"
    );
    assert_eq!(
        env.cli_json(&["node", "verify", "--chain", &chain, "--key", &web1], None)["vouched"],
        true
    );
    assert_eq!(
        env.cli_json_err(&["node", "revoke", "web1"], None),
        "not_found"
    );

    // Only an ancestor may revoke: the stranger keypair is not one.
    let sid = env.cli_json(&["keypair", "list"], None)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "stranger")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        env.cli_json_err(&["node", "revoke", "web2", "--by", &sid], None),
        "wrong_key"
    );

    // A zero lifetime is refused. A delegation valid for one hour is vouched for now and was
    // not yet two hours from now (judged with --at, so no test depends on the clock's speed).
    assert_eq!(
        env.cli_json_err(&["node", "derive", "never", "--ttl", "0s"], None),
        "invalid_args"
    );
    env.cli_json(&["node", "derive", "shortlived", "--ttl", "1h"], None);
    let short = did_of(env, "shortlived");
    let chain4 = export_chain(env, "chain4");
    assert_eq!(
        env.cli_json(
            &["node", "verify", "--chain", &chain4, "--key", &short],
            None
        )["vouched"],
        true
    );
    let later = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 7200)
        .to_string();
    let out = env.cli(
        &[
            "node", "verify", "--chain", &chain4, "--key", &short, "--at", &later,
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("xpire"),
        "{out:?}"
    );
    // A corrupted chain file is an error, not a crash.
    let junk = write(env, "junk", b"\xa1\x01");
    assert!(!env
        .cli(&["node", "verify", "--chain", &junk, "--key", &web2b], None)
        .status
        .success());
}

fn sealed_messages_between_nodes(env: &mut TestEnv) {
    setup(env);
    env.cli_json(&["node", "derive", "web1"], None);
    env.cli_json(&["node", "derive", "web2"], None);
    let nodes = env.cli_json(&["node", "list"], None);
    let id_of = |name: &str| {
        nodes["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (web1, web2) = (id_of("web1"), id_of("web2"));
    let web2_did = did_of(env, "web2");
    let sealed = env.cli_json(
        &["seal", "--to", &web2_did, "--sign-with", &web1],
        Some(b"hello web2"),
    )["sealed"]
        .as_str()
        .unwrap()
        .to_string();
    let chain = export_chain(env, "chain");
    let msg = write(env, "msg", sealed.as_bytes());
    let opened = env.cli_json(&["open", "--from", &chain, "-i", &msg], None);
    assert_eq!(opened["sender_name"], "web1");
    use base64::Engine;
    let pt = base64::engine::general_purpose::URL_SAFE
        .decode(opened["plaintext"].as_str().unwrap())
        .unwrap();
    assert_eq!(pt, b"hello web2");
    let _ = web2;

    // Tampered: refused.
    let mut t = sealed.clone().into_bytes();
    let n = t.len() - 3;
    t[n] = if t[n] == b'A' { b'B' } else { b'A' };
    let tampered = write(env, "tampered", &t);
    let code = env.cli_json_err(&["open", "-i", &tampered], None);
    assert!(
        ["verify_failed", "invalid_args"].contains(&code.as_str()),
        "{code}"
    );
    // After web1 is revoked, a chain that knows it refuses the sender.
    env.cli_json(&["node", "revoke", "web1"], None);
    let chain2 = export_chain(env, "chain2");
    assert_eq!(
        env.cli_json_err(&["open", "--from", &chain2, "-i", &msg], None),
        "verify_failed"
    );
    // A message to a key this agent does not hold.
    let other = TestEnv::start(RootKind::Soft);
    setup(&other);
    let (oid, _) = keypair(&other, "o");
    let to_other = env.cli_json(
        &["seal", "--to", &web2_did, "--sign-with", &web2],
        Some(b"x"),
    )["sealed"]
        .clone();
    let f = write(&other, "m", to_other.as_str().unwrap().as_bytes());
    assert_eq!(other.cli_json_err(&["open", "-i", &f], None), "wrong_key");
    let _ = oid;
}

fn token_keypairs_sign_but_never_leave_the_token(env: &mut TestEnv) {
    setup(env);
    if env.kind() != RootKind::Pkcs11 {
        // Only a token root can hold keypairs; others say so with a typed error.
        assert_eq!(
            env.cli_json_err(&["keypair", "create", "--on-token"], None),
            "invalid_args"
        );
        return;
    }
    let id = env.cli_json(
        &["keypair", "create", "--on-token", "--label", "tokenkey"],
        None,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = env.cli_json(&["keypair", "show", &id], None);
    assert_eq!(show["scheme"], "pkcs11-token");
    let pem = write(env, "tok.pem", show["pem"].as_str().unwrap().as_bytes());
    let data = write(env, "data", b"signed inside the token");
    let sig = env.dir().join("tok.sig").to_string_lossy().into_owned();
    env.cli_ok(&["sign", "--key", &id, "-i", &data, "-o", &sig], None);
    let out = Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            &pem,
            "-signature",
            &sig,
            &data,
        ])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {out:?}");

    // The real peer: pkcs11-tool sees a sensitive, never-extractable EC private key.
    let listing = env.token_objects(Some("privkey"));
    let block = listing
        .split("Private Key Object")
        .find(|b| b.contains("tokenkey"))
        .unwrap_or_else(|| panic!("token key not listed:\n{listing}"));
    assert!(block.contains("EC"), "{block}");
    assert!(block.contains("never extractable"), "{block}");
    assert!(block.contains("sensitive"), "{block}");

    // It vouches for a node (the delegation is signed in the token) ...
    env.cli_json(&["node", "derive", "edge1", "--parent", &id], None);
    let chain = env.dir().join("chain").to_string_lossy().into_owned();
    env.cli_ok(
        &["node", "chain", "export", "--root", &id, "-o", &chain],
        None,
    );
    let edge = did_of(env, "edge1");
    assert_eq!(
        env.cli_json(&["node", "verify", "--chain", &chain, "--key", &edge], None)["vouched"],
        true
    );
    // ... but cannot authenticate a share (HPKE needs the scalar): a typed refusal.
    refused_as_share_sender(env, &id);
    // A keypair that vouched for a node stays (the chain's history needs it), even revoked.
    assert_eq!(
        env.cli_json_err(&["keypair", "delete", &id], None),
        "wrong_key"
    );
    env.cli_json(&["node", "revoke", "edge1"], None);
    assert_eq!(
        env.cli_json_err(&["keypair", "delete", &id], None),
        "wrong_key"
    );
    // Deleting one that vouched for nothing destroys its token objects too.
    let other = env.cli_json(
        &["keypair", "create", "--on-token", "--label", "shortterm"],
        None,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let objects = || env.token_objects(None);
    assert_eq!(
        objects().matches("shortterm").count(),
        2,
        "private and public key"
    );
    env.cli_json(&["keypair", "delete", &other], None);
    assert_eq!(objects().matches("shortterm").count(), 0);
    assert!(
        objects().contains("tokenkey"),
        "the other token keypair is untouched"
    );
    assert_eq!(
        env.cli_json_err(&["keypair", "show", &other], None),
        "not_found"
    );
}

fn cryppo_rsa4096_shares_with_imported_rsa_keys(alice: &mut TestEnv) {
    let bob = TestEnv::start(alice.kind());
    setup(alice);
    setup(&bob);
    // Bob imports an RSA-4096 private key (one of Cryppo's own test keys).
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../envelope/tests/vectors/cryppo/compat.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    let private = v["encryption_with_key"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["encryption_strategy"] == "Rsa4096")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let key_file = write(&bob, "rsa.pem", private.as_bytes());
    let rid = bob.cli_json(&["keypair", "import", "--pem", &key_file], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let public = bob.cli_json(&["keypair", "show", &rid], None)["pem"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    let pub_file = write(alice, "bob-rsa.pem", public.as_bytes());

    // Alice seals a sharing DEK to Bob's RSA key: a Cryppo Rsa4096 string.
    let dek = alice.cli_json(&["dek", "create", "--purpose", "sharing"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ct = alice.cli_ok(
        &["encrypt", "--dek", &dek],
        Some(b"for bob, the Cryppo way"),
    );
    let sealed = alice.cli_json(&["share", "seal", "--dek", &dek, "--to", &pub_file], None)
        ["sealed"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sealed.starts_with("Rsa4096."), "{sealed}");
    // The PEM given as text (it starts with '-----BEGIN') is a value too, not a flag.
    let again = alice.cli_json(&["share", "seal", "--dek", &dek, "--to", &public], None);
    assert!(again["sealed"].as_str().unwrap().starts_with("Rsa4096."));
    let share = write(&bob, "share", sealed.as_bytes());
    let opened = bob.cli_json(&["share", "open", "--id", &dek, "-i", &share], None);
    assert_eq!(opened["id"], dek.as_str());
    assert_eq!(
        bob.cli_ok(&["decrypt"], Some(&ct)),
        b"for bob, the Cryppo way"
    );

    // An independent peer: openssl RSA-OAEP(SHA-1) encrypts a DEK; wrapped as Cryppo, it opens.
    let dek_bytes: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(7).wrapping_add(3))
        .collect();
    let raw = write(&bob, "dek.bin", &dek_bytes);
    let enc = bob.dir().join("dek.enc");
    let out = Command::new("openssl")
        .args([
            "pkeyutl", "-encrypt", "-pubin", "-inkey", &pub_file, "-in", &raw, "-out",
        ])
        .arg(&enc)
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha1",
            "-pkeyopt",
            "rsa_mgf1_md:sha1",
        ])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{out:?}");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE.encode(std::fs::read(&enc).unwrap());
    let foreign = write(
        &bob,
        "foreign",
        format!("Rsa4096.{b64}.QQUAAAAA").as_bytes(),
    );
    let new_id = "0b6e3c1a-5d2f-4e8b-9a7c-1f2e3d4c5b6a";
    bob.cli_json(&["share", "open", "--id", new_id, "-i", &foreign], None);
    // The imported key is exactly openssl's DEK: data encrypted offline with it decrypts.
    let key_b64 = base64::engine::general_purpose::URL_SAFE.encode(&dek_bytes);
    let offline = bob.cli_ok(
        &["cryppo", "encrypt", "--key", &key_b64],
        Some(b"from openssl's key"),
    );
    assert_eq!(
        bob.cli_ok(&["decrypt", "--dek", new_id], Some(&offline)),
        b"from openssl's key"
    );

    // Alice has no RSA key: a typed refusal; a personal DEK is never sealed, to RSA either.
    assert_eq!(
        alice.cli_json_err(&["share", "open", "--id", new_id, "-i", &share], None),
        "wrong_key"
    );
    let personal = alice.cli_json(&["dek", "create"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        alice.cli_json_err(
            &["share", "seal", "--dek", &personal, "--to", &pub_file],
            None
        ),
        "wrong_key"
    );
    let junk = write(
        &bob,
        "junk.pem",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    assert_eq!(
        bob.cli_json_err(&["keypair", "import", "--pem", &junk], None),
        "invalid_args"
    );
}

fn ed25519_keypairs_sign_and_openssl_verifies(env: &mut TestEnv) {
    setup(env);
    let id = env.cli_json(
        &["keypair", "create", "--alg", "ed25519", "--label", "ed"],
        None,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = env.cli_json(&["keypair", "show", &id], None);
    assert_eq!(show["algorithm"], "ed25519");
    let did = show["did"].as_str().unwrap().to_string();
    assert!(did.starts_with("did:key:z6Mk"), "{did}");
    assert_eq!(show["jwk"]["kty"], "OKP");
    assert_eq!(show["jwk"]["crv"], "Ed25519");
    let pem = write(env, "ed.pem", show["pem"].as_str().unwrap().as_bytes());
    let jwk = write(env, "ed.jwk", show["jwk"].to_string().as_bytes());
    let data = write(env, "data", b"signed with ed25519");
    let sig = env.dir().join("ed.sig").to_string_lossy().into_owned();
    env.cli_ok(&["sign", "--key", &id, "-i", &data, "-o", &sig], None);
    assert_eq!(std::fs::read(&sig).unwrap().len(), 64);
    for key in [did.as_str(), pem.as_str(), jwk.as_str()] {
        let v = env.cli_json(
            &["verify", "--key", key, "--signature", &sig, "-i", &data],
            None,
        );
        assert_eq!(v["algorithm"], "ed25519");
    }
    // The real peer: OpenSSL verifies the pure Ed25519 signature.
    let out = Command::new("openssl")
        .args([
            "pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-rawin", "-in", &data, "-sigfile",
            &sig,
        ])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    let other = write(env, "other", b"not what was signed");
    assert!(!env
        .cli(
            &["verify", "--key", &did, "--signature", &sig, "-i", &other],
            None
        )
        .status
        .success());
    // Ed25519 keys sign; sharing, sealed messages and node keys stay P-256: typed refusals.
    let (peer, dek) = refused_as_share_sender(env, &id);
    assert_eq!(
        env.cli_json_err(&["node", "derive", "n1", "--parent", &id], None),
        "wrong_key"
    );
    assert_eq!(
        env.cli_json_err(&["share", "seal", "--dek", &dek, "--to", &did], None),
        "invalid_args"
    );
    assert_eq!(
        env.cli_json_err(
            &["keypair", "create", "--alg", "ed25519", "--on-token"],
            None
        ),
        "invalid_args"
    );
    // A P-256 default sender is still chosen when an Ed25519 keypair also exists.
    let sealed = env.cli_json(
        &[
            "share",
            "seal",
            "--dek",
            &dek,
            "--to",
            peer["did"].as_str().unwrap(),
        ],
        None,
    );
    assert!(sealed["sealed"].is_string());
}

/// The cluster root's id and did:key (`node list` names it `/`).
fn cluster_root(env: &TestEnv) -> (String, String) {
    let nodes = env.cli_json(&["node", "list"], None);
    let id = nodes["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "/" && k["state"] == "active")
        .unwrap_or_else(|| panic!("no active cluster root: {nodes}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let did = env.cli_json(&["keypair", "show", &id], None)["did"]
        .as_str()
        .unwrap()
        .to_string();
    (id, did)
}

fn node_verify(env: &TestEnv, chain: &str, key: &str, anchor: &str) -> std::process::Output {
    env.cli(
        &[
            "node", "verify", "--chain", chain, "--key", key, "--anchor", anchor,
        ],
        None,
    )
}

/// `node root rotate`: a peer that trusts only the old root accepts the fresh chain (the old root
/// vouches for the new one); the children keep their keys under a new parent; a sealed message
/// from a node opens with the new chain.
fn node_root_rotate_old_root_vouches_for_the_new_chain(env: &mut TestEnv) {
    setup(env);
    env.cli_json(&["node", "derive", "web1"], None);
    let web1_id = env.cli_json(&["node", "derive", "web1/db"], None);
    assert!(web1_id["id"].is_string());
    let (old_id, old_did) = cluster_root(env);
    let web1 = did_of(env, "web1");
    let db = did_of(env, "web1/db");

    let r = env.cli_json(&["node", "root", "rotate"], None);
    assert_eq!(r["old"], old_id.as_str());
    assert_eq!(r["compromised"], false);
    assert_eq!(r["redelegated"], 2, "web1 and web1/db hang off the root");
    let (new_id, new_did) = cluster_root(env);
    assert_eq!(r["id"], new_id.as_str());
    assert_ne!(new_did, old_did);
    // Same child keys; the old root is retired, not revoked.
    assert_eq!(did_of(env, "web1"), web1);
    assert_eq!(
        env.cli_json(&["keypair", "show", &old_id], None)["state"],
        "retired"
    );

    let chain = export_chain(env, "rotated-chain");
    for (key, name) in [(&web1, "web1"), (&db, "web1/db")] {
        // The old trust anchor: through the old root's rekey statement.
        let out = node_verify(env, &chain, key, &old_did);
        assert!(out.status.success(), "{out:?}");
        // The chain's own (new) root, and no anchor at all.
        let v = env.cli_json(
            &[
                "node", "verify", "--chain", &chain, "--key", key, "--anchor", &new_did,
            ],
            None,
        );
        assert_eq!(v["name"], name);
        let v = env.cli_json(&["node", "verify", "--chain", &chain, "--key", key], None);
        assert_eq!(v["vouched"], true);
    }
    // A stranger's key as anchor vouches for nothing.
    let (_, stranger) = keypair(env, "stranger");
    let out = node_verify(env, &chain, &web1, stranger["did"].as_str().unwrap());
    assert!(!out.status.success(), "{out:?}");
    // A statement by a child (a sealed message signed by web1) opens with the fresh chain.
    let (me, _) = keypair(env, "me");
    let me_did = env.cli_json(&["keypair", "show", &me], None)["did"]
        .as_str()
        .unwrap()
        .to_string();
    let nodes = env.cli_json(&["node", "list"], None);
    let web1_key = nodes["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "web1")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sealed = env.cli_json(
        &["seal", "--to", &me_did, "--sign-with", &web1_key],
        Some(b"hello cluster"),
    )["sealed"]
        .as_str()
        .unwrap()
        .to_string();
    let msg = write(env, "msg", sealed.as_bytes());
    let opened = env.cli_json(&["open", "--from", &chain, "-i", &msg], None);
    assert_eq!(opened["sender_name"], "web1");
    // New nodes derive under the new root; a second rotation still reaches the first root.
    env.cli_json(&["node", "derive", "web2"], None);
    env.cli_json(&["node", "root", "rotate"], None);
    let chain2 = export_chain(env, "rotated-chain-2");
    for key in [&web1, &db, &did_of(env, "web2")] {
        let out = node_verify(env, &chain2, key, &old_did);
        assert!(out.status.success(), "{out:?}");
    }
}

/// `node root rotate --compromised`: the old root revokes itself; the fresh chain carries that
/// revocation, so a peer still trusting the old root is refused, and the old root's chain too;
/// only the re-imported new root vouches. Bad input on the wire is typed; the agent keeps serving.
fn node_root_rotate_compromised_refuses_the_old_root(env: &mut TestEnv) {
    use keyward_tests::keyward_proto::ErrorCode;
    use keyward_tests::raw::{map, request, text};
    setup(env);
    // No cluster root yet: not_found, and nothing is made.
    assert_eq!(
        env.cli_json_err(&["node", "root", "rotate"], None),
        "not_found"
    );
    env.cli_json(&["node", "derive", "web1"], None);
    let (old_id, old_did) = cluster_root(env);
    let web1 = did_of(env, "web1");
    let old_chain = export_chain(env, "old-chain");
    let out = node_verify(env, &old_chain, &web1, &old_did);
    assert!(out.status.success(), "{out:?}");

    let r = env.cli_json(&["node", "root", "rotate", "--compromised"], None);
    assert_eq!(r["compromised"], true);
    assert_eq!(r["redelegated"], 1);
    let (_, new_did) = cluster_root(env);
    assert_eq!(
        env.cli_json(&["keypair", "show", &old_id], None)["state"],
        "revoked"
    );
    let chain = export_chain(env, "new-chain");
    let out = node_verify(env, &chain, &web1, &old_did);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{out:?}"
    );
    let v = env.cli_json(
        &[
            "node", "verify", "--chain", &chain, "--key", &web1, "--anchor", &new_did,
        ],
        None,
    );
    assert_eq!(v["vouched"], true);
    // The old root's chain, exported again, carries the self-revocation: refused.
    let p = env
        .dir()
        .join("old-chain-now")
        .to_string_lossy()
        .into_owned();
    env.cli_ok(
        &["node", "chain", "export", "--root", &old_id, "-o", &p],
        None,
    );
    let out = env.cli(&["node", "verify", "--chain", &p, "--key", &old_did], None);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{out:?}"
    );

    // Typed bad input: a mistyped and an unknown field are invalid_args; nothing changed.
    let mut raw = env.raw();
    raw.hello(1);
    for (i, args) in [
        map(&[("compromised", text("yes"))]),
        map(&[("root", text(&old_id))]),
    ]
    .into_iter()
    .enumerate()
    {
        let id = 10 + i as u64;
        let r = raw.call(&request(id, "node.root_rotate", args));
        assert_eq!(r.id, Some(id));
        assert_eq!(r.err.map(|b| b.code), Some(ErrorCode::InvalidArgs));
    }
    assert_eq!(cluster_root(env).1, new_did, "the root did not change");
    // Locked: refused with `locked`, the agent keeps serving.
    env.cli_ok(&["lock"], None);
    assert_eq!(
        env.cli_json_err(&["node", "root", "rotate"], None),
        "locked"
    );
    assert_eq!(cluster_root(env).1, new_did);
}
