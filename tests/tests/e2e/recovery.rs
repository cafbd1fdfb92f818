//! Recovery through the real CLI and agents (README "Recovery"): 2-of-3 social recovery across
//! four agents (the owner's and three trustees'), the owner's words, and the refusals (shares
//! sealed to someone else, tampered shares, fewer than K, shares of different secrets, the
//! wrong request key, wrong words); enrollment and restore from the words on a fresh token, with
//! their refusals (wrong words, another recovery secret, a tampered recovery wrap, no recovery
//! root).

use keyward_tests::{pin, RootKind, TestEnv};
use std::os::unix::fs::PermissionsExt;

keyward_tests::keyward_e2e_tests!(
    social_recovery_two_of_three_across_four_agents,
    recovery_refuses_bad_shares_and_words,
    trustee_refusals_leave_the_agent_serving,
    recovery_from_words_on_a_fresh_token_decrypts_old_data,
    restore_without_a_recovery_root_is_refused,
    restore_from_two_of_three_shares_on_a_fresh_token,
    a_crashed_restore_leaves_nothing_and_the_retry_reuses_the_token_root,
    recovery_on_a_new_machine_from_a_backup,
    created_words_give_the_printed_key_by_an_independent_implementation,
);

fn setup(env: &TestEnv) {
    let pin_line = format!("{}\n", env.pin());
    env.cli_ok(&env.init_args(), Some(pin_line.as_bytes()));
    env.cli_ok(&["kek", "create"], None);
}

/// A trustee's agent: initialized, with one P-256 keypair; returns its did:key.
fn trustee(env: &TestEnv) -> String {
    setup(env);
    let id = env.cli_json(&["keypair", "create", "--label", "trustee"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.cli_json(&["keypair", "show", &id], None)["did"]
        .as_str()
        .unwrap()
        .to_string()
}

fn path(env: &TestEnv, name: &str) -> String {
    env.dir().join(name).to_string_lossy().into_owned()
}

/// `recovery create --offline` splitting 2-of-N among `dids` into `dir`: the JSON answer.
fn create(env: &TestEnv, dids: &[&str], dir: &str) -> serde_json::Value {
    let mut args = vec![
        "recovery",
        "create",
        "--offline",
        "--threshold",
        "2",
        "-o",
        dir,
    ];
    for d in dids {
        args.extend(["--trustee", d]);
    }
    env.cli_json(&args, None)
}

fn hold(env: &TestEnv, file: &str) -> serde_json::Value {
    env.cli_json(&["recovery", "hold", "-i", file], None)
}

fn release(env: &TestEnv, id: &str, to: &str, out: &str) {
    env.cli_json(&["recovery", "release", id, "--to", to, "-o", out], None);
}

fn social_recovery_two_of_three_across_four_agents(owner: &mut TestEnv) {
    let trustees: Vec<TestEnv> = (0..3).map(|_| TestEnv::start(owner.kind())).collect();
    let dids: Vec<String> = trustees.iter().map(trustee).collect();
    let did_refs: Vec<&str> = dids.iter().map(String::as_str).collect();

    // The owner makes the secret and the three sealed shares.
    let dir = path(owner, "shares");
    let made = create(owner, &did_refs, &dir);
    let recovery = made["recovery"].as_str().unwrap().to_string();
    assert!(recovery.starts_with("did:key:zDn"), "{recovery}");
    assert_eq!(made["enrolled"], false);
    assert_eq!(made["threshold"], 2);
    let words = made["words"].as_str().unwrap();
    assert_eq!(words.split(' ').count(), 24);
    let shares = made["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 3);
    for (i, s) in shares.iter().enumerate() {
        assert_eq!(s["index"], i + 1);
        assert_eq!(s["trustee"], dids[i].as_str());
        let f = s["file"].as_str().unwrap();
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let share_file = |i: usize| shares[i]["file"].as_str().unwrap().to_string();

    // Each trustee holds its own share; the agent says what it is.
    let mut held = Vec::new();
    for (i, t) in trustees.iter().enumerate() {
        let h = hold(t, &share_file(i));
        assert_eq!(h["recovery"], recovery.as_str());
        assert_eq!(h["index"], i + 1);
        assert_eq!(h["threshold"], 2);
        assert_eq!(h["trustees"].as_array().unwrap().len(), 3);
        assert_eq!(h["tag"], made["tag"]);
        let id = h["id"].as_str().unwrap().to_string();
        let list = t.cli_json(&["recovery", "held"], None);
        let keys = list["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{list}");
        assert_eq!(keys[0]["id"], id.as_str());
        assert!(
            keys[0]["label"].as_str().unwrap().contains(&recovery),
            "{list}"
        );
        held.push(id);
    }
    // The held share survives a restart of the trustee's agent (it is in the keystore, wrapped).
    let pin_line = format!("{}\n", trustees[2].pin());
    let mut trustees = trustees;
    trustees[2].restart();
    trustees[2].cli_ok(&["unlock", "--pin-stdin"], Some(pin_line.as_bytes()));

    // On the new machine: the one-time request key, 0600, its did:key printed.
    let req = path(owner, "request.key");
    let r = owner.cli_json(&["recovery", "request", "-o", &req], None);
    let req_did = r["did"].as_str().unwrap().to_string();
    assert!(req_did.starts_with("did:key:zDn"), "{req_did}");
    assert_eq!(
        std::fs::metadata(&req).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Trustees 1 and 3 release their shares to the request key.
    let r1 = path(owner, "released-1");
    let r3 = path(owner, "released-3");
    release(&trustees[0], &held[0], &req_did, &r1);
    release(&trustees[2], &held[2], &req_did, &r3);

    // Two shares combine into the secret whose key `create` printed; so do the words.
    let checked = owner.cli_json(
        &[
            "recovery",
            "check",
            "--request",
            &req,
            "--share",
            &r1,
            "--share",
            &r3,
            "--expect",
            &recovery,
        ],
        None,
    );
    assert_eq!(checked["recovery"], recovery.as_str());
    assert_eq!(checked["from"]["shares"], 2);
    let words_file = path(owner, "words.txt");
    std::fs::write(&words_file, words).unwrap();
    let from_words = owner.cli_json(&["recovery", "check", "--words-file", &words_file], None);
    assert_eq!(from_words["recovery"], recovery.as_str());
    // Text mode prints the did alone on stdout.
    let text = owner.cli_ok(&["recovery", "check", "--words-file", &words_file], None);
    assert_eq!(String::from_utf8(text).unwrap(), format!("{recovery}\n"));

    // Any two of three: trustee 2's share with trustee 1's gives the same key.
    let r2 = path(owner, "released-2");
    release(&trustees[1], &held[1], &req_did, &r2);
    let checked = owner.cli_json(
        &[
            "recovery",
            "check",
            "--request",
            &req,
            "--share",
            &r2,
            "--share",
            &r1,
        ],
        None,
    );
    assert_eq!(checked["recovery"], recovery.as_str());
}

fn recovery_refuses_bad_shares_and_words(owner: &mut TestEnv) {
    let trustees: Vec<TestEnv> = (0..2).map(|_| TestEnv::start(owner.kind())).collect();
    let dids: Vec<String> = trustees.iter().map(trustee).collect();
    let did_refs: Vec<&str> = dids.iter().map(String::as_str).collect();
    let a = create(owner, &did_refs, &path(owner, "a"));
    let b = create(owner, &did_refs, &path(owner, "b"));
    let file =
        |set: &serde_json::Value, i: usize| set["shares"][i]["file"].as_str().unwrap().to_string();

    let req = path(owner, "req");
    let req_did = owner.cli_json(&["recovery", "request", "-o", &req], None)["did"]
        .as_str()
        .unwrap()
        .to_string();
    // A second request key file is never written over the first.
    assert_eq!(
        owner.cli_json_err(&["recovery", "request", "-o", &req], None),
        "already_exists"
    );
    // Trustee 1 holds a share of each secret, trustee 2 one of secret A; all three released.
    let mut released = Vec::new();
    for (t, set, i, name) in [
        (&trustees[0], &a, 0, "a1"),
        (&trustees[0], &b, 0, "b1"),
        (&trustees[1], &a, 1, "a2"),
    ] {
        let id = hold(t, &file(set, i))["id"].as_str().unwrap().to_string();
        let out = path(owner, name);
        release(t, &id, &req_did, &out);
        released.push(out);
    }
    let (a1, b1, a2) = (
        released[0].as_str(),
        released[1].as_str(),
        released[2].as_str(),
    );
    let check = |shares: &[&str]| {
        let mut args = vec!["recovery", "check", "--request", req.as_str()];
        for s in shares {
            args.extend(["--share", s]);
        }
        owner.cli_json_err(&args, None)
    };
    // Fewer than K.
    assert_eq!(check(&[a1]), "not_enough_shares");
    // Shares of two different secrets.
    assert_eq!(check(&[a1, b1]), "different_secrets");
    // The same share twice is not two shares.
    assert_eq!(check(&[a1, a1]), "duplicate_share");
    // A tampered share: one bit of its ciphertext flipped.
    let mut t = std::fs::read(a2).unwrap();
    let n = t.len() - 1;
    t[n] ^= 1;
    let tampered = path(owner, "a2-tampered");
    std::fs::write(&tampered, &t).unwrap();
    assert_eq!(check(&[a1, tampered.as_str()]), "tampered_share");
    // Garbage is not a share.
    let junk = path(owner, "junk");
    std::fs::write(&junk, b"not a share").unwrap();
    assert_eq!(check(&[a1, junk.as_str()]), "malformed_share");
    // The right shares with someone else's request key.
    let other = path(owner, "other-req");
    owner.cli_ok(&["recovery", "request", "-o", &other], None);
    assert_eq!(
        owner.cli_json_err(
            &[
                "recovery",
                "check",
                "--request",
                &other,
                "--share",
                a1,
                "--share",
                a2
            ],
            None
        ),
        "wrong_request_key"
    );
    // A request file others can read is refused.
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        owner.cli_json_err(
            &[
                "recovery",
                "check",
                "--request",
                &other,
                "--share",
                a1,
                "--share",
                a2
            ],
            None
        ),
        "insecure_permissions"
    );
    // The right shares, but not the recovery root the caller expects.
    let b_did = b["recovery"].as_str().unwrap();
    assert_eq!(
        owner.cli_json_err(
            &[
                "recovery",
                "check",
                "--request",
                &req,
                "--share",
                a1,
                "--share",
                a2,
                "--expect",
                b_did
            ],
            None
        ),
        "wrong_recovery_root"
    );
    // And they do give A's key.
    let ok = owner.cli_json(
        &[
            "recovery",
            "check",
            "--request",
            &req,
            "--share",
            a1,
            "--share",
            a2,
        ],
        None,
    );
    assert_eq!(ok["recovery"], a["recovery"]);

    // Wrong words: a changed last word (checksum), an unknown word, 23 words.
    let words: Vec<String> = a["words"]
        .as_str()
        .unwrap()
        .split(' ')
        .map(str::to_string)
        .collect();
    let try_words = |w: &[String]| {
        let f = path(owner, "words");
        std::fs::write(&f, w.join(" ")).unwrap();
        owner.cli_json_err(&["recovery", "check", "--words-file", &f], None)
    };
    // Every word known, the checksum wrong (24 x "abandon": the zero entropy ends in "art").
    let abandon: Vec<String> = vec!["abandon".to_string(); 24];
    assert_eq!(try_words(&abandon), "bad_checksum");
    let mut unknown = words.clone();
    unknown[5] = "keyward".into();
    assert_eq!(try_words(&unknown), "unknown_word");
    assert_eq!(try_words(&words[..23]), "wrong_word_count");
    // The right words, but not the expected root.
    let f = path(owner, "words-ok");
    std::fs::write(&f, words.join("\n")).unwrap();
    assert_eq!(
        owner.cli_json_err(
            &["recovery", "check", "--words-file", &f, "--expect", b_did],
            None
        ),
        "wrong_recovery_root"
    );
}

fn trustee_refusals_leave_the_agent_serving(env: &mut TestEnv) {
    let other = TestEnv::start(env.kind());
    let mine = trustee(env);
    let theirs = trustee(&other);
    let dir = path(env, "s");
    let made = create(env, &[mine.as_str(), theirs.as_str()], &dir);
    let file = |i: usize| made["shares"][i]["file"].as_str().unwrap().to_string();

    // A share sealed to someone else's key.
    assert_eq!(
        env.cli_json_err(&["recovery", "hold", "-i", &file(1)], None),
        "wrong_key"
    );
    // Not a share at all, and a tampered one (its ciphertext's last byte flipped).
    let junk = path(env, "junk");
    std::fs::write(&junk, b"\xa1\x01\x02").unwrap();
    assert_eq!(
        env.cli_json_err(&["recovery", "hold", "-i", &junk], None),
        "invalid_args"
    );
    let mut t = std::fs::read(file(0)).unwrap();
    let n = t.len() - 1;
    t[n] ^= 0x40;
    let tampered = path(env, "tampered");
    std::fs::write(&tampered, &t).unwrap();
    assert_eq!(
        env.cli_json_err(&["recovery", "hold", "-i", &tampered], None),
        "verify_failed"
    );
    // Nothing was stored by the refusals.
    let list = env.cli_json(&["recovery", "held"], None);
    assert!(list["keys"].as_array().unwrap().is_empty(), "{list}");

    // The good share is held; releases with bad arguments are refused.
    let id = hold(env, &file(0))["id"].as_str().unwrap().to_string();
    let out = path(env, "released");
    let req = path(env, "req");
    let req_did = env.cli_json(&["recovery", "request", "-o", &req], None)["did"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        env.cli_json_err(
            &[
                "recovery",
                "release",
                &id,
                "--to",
                "did:key:nope",
                "-o",
                &out
            ],
            None
        ),
        "invalid_args"
    );
    let recovery = made["recovery"].as_str().unwrap();
    assert_eq!(
        env.cli_json_err(
            &["recovery", "release", &id, "--to", recovery, "-o", &out],
            None
        ),
        "invalid_args",
        "a share is never released to the recovery key itself"
    );
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_eq!(
        env.cli_json_err(
            &["recovery", "release", unknown, "--to", &req_did, "-o", &out],
            None
        ),
        "not_found"
    );
    // A KEK's id is not a held share's.
    let kek = env.cli_json(&["kek", "list"], None)["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        env.cli_json_err(
            &["recovery", "release", &kek, "--to", &req_did, "-o", &out],
            None
        ),
        "not_found"
    );
    assert!(!std::path::Path::new(&out).exists());
    // Locked: hold and release are refused, the list still answers.
    env.cli_ok(&["lock"], None);
    assert_eq!(
        env.cli_json_err(
            &["recovery", "release", &id, "--to", &req_did, "-o", &out],
            None
        ),
        "locked"
    );
    assert_eq!(
        env.cli_json_err(&["recovery", "hold", "-i", &file(0)], None),
        "locked"
    );
    assert_eq!(
        env.cli_json(&["recovery", "held"], None)["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Unlocked again, the agent serves and releases.
    let pin_line = format!("{}\n", env.pin());
    env.cli_ok(&["unlock", "--pin-stdin"], Some(pin_line.as_bytes()));
    release(env, &id, &req_did, &out);
    assert!(std::fs::metadata(&out).unwrap().len() > 100);

    // One share is held once; a share of another split is another.
    assert_eq!(
        env.cli_json_err(&["recovery", "hold", "-i", &file(0)], None),
        "already_exists"
    );
    let made2 = create(env, &[mine.as_str(), theirs.as_str()], &path(env, "s2"));
    let second = hold(env, made2["shares"][0]["file"].as_str().unwrap());
    let keypair = second["keypair"].as_str().unwrap().to_string();
    let second = second["id"].as_str().unwrap().to_string();
    // Paged: one at a time, then the rest.
    let p1 = env.cli_json(&["recovery", "held", "--limit", "1"], None);
    assert_eq!(p1["keys"].as_array().unwrap().len(), 1, "{p1}");
    let next = p1["next"].as_str().unwrap();
    let p2 = env.cli_json(&["recovery", "held", "--limit", "1", "--after", next], None);
    assert_eq!(p2["keys"].as_array().unwrap().len(), 1, "{p2}");
    assert!(p2.get("next").is_none(), "{p2}");
    for bad in [
        vec!["recovery", "held", "--limit", "0"],
        vec!["recovery", "held", "--limit", "1001"],
        vec!["recovery", "held", "--limit", "1", "--after", "x"],
    ] {
        assert_eq!(env.cli_json_err(&bad, None), "invalid_args", "{bad:?}");
    }
    let mut ids = vec![p1["keys"][0]["id"].clone(), p2["keys"][0]["id"].clone()];
    ids.sort_by_key(|v| v.to_string());
    let mut want = vec![serde_json::json!(id), serde_json::json!(second)];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(ids, want);
    // The trustee keypair stays while shares need it; deleting the shares frees it.
    assert_eq!(
        env.cli_json_err(&["keypair", "delete", &keypair], None),
        "wrong_key"
    );
    assert_eq!(
        env.cli_json_err(&["recovery", "delete", &kek], None),
        "not_found"
    );
    for held in [&id, &second] {
        env.cli_json(&["recovery", "delete", held], None);
    }
    let list = env.cli_json(&["recovery", "held"], None);
    assert!(list["keys"].as_array().unwrap().is_empty(), "{list}");
    env.cli_json(&["keypair", "delete", &keypair], None);
}

/// `create` enrolls the recovery root (listed by `root list`; every KEK, existing and new, gets
/// a wrap for it); the first token is lost; an agent on a fresh token (PKCS#11: a new token
/// `backup`, the first token's files deleted; soft: a new passphrase) with the keystore refuses
/// wrong words, the words of another recovery secret and a tampered recovery wrap (the fresh
/// token still without a root object), then restores from the words, unlocks with the new PIN,
/// decrypts the old data and drops the absent root.
fn recovery_from_words_on_a_fresh_token_decrypts_old_data(env: &mut TestEnv) {
    if !env.requires_sqlite("tampers with a recovery wrap in the SQLite file") {
        return;
    }
    let keys = env.init_with_keys(false, b"old data");
    let first = crate::roots::current(&crate::roots::roots(env));
    let made = env.cli_json(&["recovery", "create"], None);
    assert_eq!(made["enrolled"], true, "{made}");
    // The KEK and the keystore integrity KEK.
    assert_eq!(made["keks"], 2, "{made}");
    let recovery = made["id"].as_str().unwrap().to_string();
    let listed = crate::roots::roots(env);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let entry = listed
        .iter()
        .find(|r| r["id"] == recovery.as_str())
        .unwrap();
    assert_eq!(entry["scheme"], "public-p256", "{entry}");
    // Enrolling the same key again is refused.
    let did = made["recovery"].as_str().unwrap();
    assert_eq!(
        env.cli_json_err(&["recovery", "enroll", did], None),
        "already_exists"
    );
    assert_eq!(
        env.cli_json_err(&["recovery", "enroll", "did:key:zBad"], None),
        "invalid_args"
    );
    // A KEK made after the enrollment is wrapped to the recovery root too.
    let c = env.client();
    let kek2 = c.run(|c| c.kek_create(None)).expect("kek").id;
    let args = keyward_tests::keyward_proto::ops::DekCreateArgs {
        kek: Some(kek2.clone()),
        ..Default::default()
    };
    let dek2 = c.run(|c| c.dek_create(&args)).expect("dek").id;
    let mut data = vec![(keys.ciphertext.clone(), keys.plaintext.clone())];
    let pt = b"under the KEK made after the enrollment".to_vec();
    data.push((c.run(|c| c.encrypt(&dek2, &pt)).unwrap(), pt));
    drop(c);
    let db = rusqlite::Connection::open(env.keystore_path()).unwrap();
    let keks: Vec<String> = {
        let mut st = db
            .prepare("SELECT id FROM keys WHERE kind = 'kek' OR (kind = 'integrity' AND parent IN (SELECT id FROM keys WHERE kind = 'root'))")
            .unwrap();
        let rows = st.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(keks.len(), 3);
    for k in &keks {
        let n: i64 = db
            .query_row(
                "SELECT count(*) FROM kek_wraps WHERE kek = ?1 AND root = ?2",
                [k, &recovery],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "KEK {k} has no wrap for the recovery root");
    }
    let words = path(env, "words");
    std::fs::write(&words, made["words"].as_str().unwrap()).unwrap();

    // The first token is lost; the agent starts on a fresh one with the keystore.
    let (config, secret) = crate::roots::second_root(env);
    env.stop();
    if env.kind() == RootKind::Pkcs11 {
        std::fs::remove_dir_all(crate::roots::token_dir(env, "keyward")).unwrap();
        std::fs::copy(&config, env.config_path()).unwrap();
    }
    env.start_agent();
    let pin_line = format!("{secret}\n");
    let restore = |env: &TestEnv, words: &str| {
        env.cli_json_err(
            &["recovery", "restore", "--words-file", words, "--pin-stdin"],
            Some(pin_line.as_bytes()),
        )
    };
    // Wrong words: refused by the CLI (checksum) before the agent is asked.
    let bad = path(env, "bad-words");
    std::fs::write(&bad, "abandon ".repeat(24)).unwrap();
    assert_eq!(restore(env, &bad), "bad_checksum");
    // The words of another recovery secret: the wrong recovery root.
    let other = env.cli_json(&["recovery", "create", "--offline"], None);
    std::fs::write(&bad, other["words"].as_str().unwrap()).unwrap();
    assert_eq!(restore(env, &bad), "wrong_key");
    assert!(fresh_token_is_empty(env));
    // A tampered recovery wrap: refused by the keystore MAC before the token is touched.
    env.stop();
    let orig: Vec<u8> = db
        .query_row(
            "SELECT wrapped FROM kek_wraps WHERE kek = ?1 AND root = ?2",
            [&keys.kek, &recovery],
            |r| r.get(0),
        )
        .unwrap();
    let mut tampered = orig.clone();
    let n = tampered.len() - 1;
    tampered[n] ^= 1;
    let set = |v: &Vec<u8>| {
        db.execute(
            "UPDATE kek_wraps SET wrapped = ?1 WHERE kek = ?2 AND root = ?3",
            rusqlite::params![v, &keys.kek, &recovery],
        )
        .unwrap()
    };
    set(&tampered);
    env.start_agent();
    assert_eq!(restore(env, &words), "keystore_tampered");
    assert!(fresh_token_is_empty(env));
    assert_eq!(count_roots(env), 2);
    env.stop();
    set(&orig);
    env.start_agent();

    // The restore.
    let r = env.cli_json(
        &["recovery", "restore", "--words-file", &words, "--pin-stdin"],
        Some(pin_line.as_bytes()),
    );
    assert_eq!(r["keks"], 3, "{r}");
    assert_eq!(r["absent_roots"], serde_json::json!([first]), "{r}");
    assert_eq!(r["recovery"], did, "{r}");
    let restored = r["root"].as_str().unwrap().to_string();
    assert!(!fresh_token_is_empty(env) || env.kind() != RootKind::Pkcs11);
    let c = env.client();
    c.run(|c| c.unlock(pin(secret)))
        .expect("unlock on the restored root");
    for (ct, pt) in &data {
        assert_eq!(
            c.run(|c| c.decrypt(ct, None)).expect("decrypt").expose(),
            &pt[..]
        );
    }
    assert_eq!(crate::roots::current(&crate::roots::roots(env)), restored);
    // A second restore on the running root is refused.
    assert_eq!(restore(env, &words), "already_initialized");
    // The absent root is dropped; new KEKs work (the recovery root needs no secret).
    env.cli_ok(&["root", "remove", &first], None);
    assert_eq!(crate::roots::roots(env).len(), 2);
    c.run(|c| c.kek_create(None))
        .expect("a KEK after the restore");
    drop(c);
    env.restart();
    let c = env.client();
    c.run(|c| c.unlock(pin(secret)))
        .expect("unlock after restart");
    for (ct, pt) in &data {
        assert_eq!(
            c.run(|c| c.decrypt(ct, None)).expect("decrypt").expose(),
            &pt[..]
        );
    }
}

/// The share path end to end: `create` (online) enrolls the recovery root and seals 2-of-3
/// shares to three trustees' agents, which hold them; the owner's token is lost; on the fresh
/// token the owner makes a request key, two trustees release their shares to it, and `restore
/// --request --share --share` restores; the request file is deleted; the old data decrypts.
fn restore_from_two_of_three_shares_on_a_fresh_token(owner: &mut TestEnv) {
    let trustees: Vec<TestEnv> = (0..3).map(|_| TestEnv::start(owner.kind())).collect();
    let dids: Vec<String> = trustees.iter().map(trustee).collect();
    let keys = owner.init_with_keys(false, b"old data, shared recovery");
    let first = crate::roots::current(&crate::roots::roots(owner));
    let dir = path(owner, "shares");
    let mut args = vec!["recovery", "create", "--threshold", "2", "-o", &dir];
    for d in &dids {
        args.extend(["--trustee", d.as_str()]);
    }
    let made = owner.cli_json(&args, None);
    assert_eq!(made["enrolled"], true, "{made}");
    let shares = made["shares"].as_array().unwrap().clone();
    let held: Vec<String> = trustees
        .iter()
        .zip(&shares)
        .map(|(t, s)| {
            hold(t, s["file"].as_str().unwrap())["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    let (config, secret) = crate::roots::second_root(owner);
    owner.stop();
    if owner.kind() == RootKind::Pkcs11 {
        std::fs::remove_dir_all(crate::roots::token_dir(owner, "keyward")).unwrap();
        std::fs::copy(&config, owner.config_path()).unwrap();
    }
    owner.start_agent();
    let req = path(owner, "request.key");
    let req_did = owner.cli_json(&["recovery", "request", "-o", &req], None)["did"]
        .as_str()
        .unwrap()
        .to_string();
    let r1 = path(owner, "released-1");
    let r3 = path(owner, "released-3");
    release(&trustees[0], &held[0], &req_did, &r1);
    release(&trustees[2], &held[2], &req_did, &r3);
    let pin_line = format!("{secret}\n");
    let restore = [
        "recovery",
        "restore",
        "--request",
        &req,
        "--share",
        &r1,
        "--share",
        &r3,
        "--pin-stdin",
    ];
    // One share is not enough: refused by the CLI, the request file kept.
    assert_eq!(
        owner.cli_json_err(&restore[..6], Some(pin_line.as_bytes())),
        "not_enough_shares"
    );
    assert!(std::path::Path::new(&req).exists());
    let r = owner.cli_json(&restore, Some(pin_line.as_bytes()));
    assert_eq!(r["absent_roots"], serde_json::json!([first]), "{r}");
    assert_eq!(r["recovery"], made["recovery"], "{r}");
    assert!(
        !std::path::Path::new(&req).exists(),
        "the request file is deleted after a successful restore"
    );
    let c = owner.client();
    c.run(|c| c.unlock(pin(secret)))
        .expect("unlock on the restored root");
    assert_eq!(
        c.run(|c| c.decrypt(&keys.ciphertext, None))
            .expect("decrypt")
            .expose(),
        &keys.plaintext[..]
    );
}

/// A restore killed (abort, as `kill -9`) after it made the root object on the fresh token, or
/// after it wrapped every KEK but before its transaction: the keystore has nothing of it (no
/// record, no wrap); the retry reuses the root object left on the token (PKCS#11) and succeeds;
/// the old data decrypts.
fn a_crashed_restore_leaves_nothing_and_the_retry_reuses_the_token_root(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"survives a crashed restore");
    let made = env.cli_json(&["recovery", "create"], None);
    let words = path(env, "words");
    std::fs::write(&words, made["words"].as_str().unwrap()).unwrap();
    let (config, secret) = crate::roots::second_root(env);
    env.stop();
    if env.kind() == RootKind::Pkcs11 {
        std::fs::remove_dir_all(crate::roots::token_dir(env, "keyward")).unwrap();
        std::fs::copy(&config, env.config_path()).unwrap();
    }
    let wraps = |env: &TestEnv| -> i64 { env.keystore_count("kek_wraps") };
    let before = (count_roots(env), wraps(env));
    let pin_line = format!("{secret}\n");
    let args = ["recovery", "restore", "--words-file", &words, "--pin-stdin"];
    for point in ["restore-root-created", "restore-wrapped"] {
        let mut cmd = env.agent_command();
        cmd.env("KEYWARD_TEST_CRASH_AFTER", point)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("spawn keywardd");
        let sock = env.socket_path().to_path_buf();
        keyward_tests::wait_for("the crashing agent to listen", || {
            std::os::unix::net::UnixStream::connect(&sock).ok()
        });
        let out = env.cli(&args, Some(pin_line.as_bytes()));
        assert!(!out.status.success(), "{point}: {out:?}");
        assert!(!keyward_tests::wait_exit(&mut child, "the agent to abort").success());
        assert_eq!((count_roots(env), wraps(env)), before, "{point}");
        if env.kind() == RootKind::Pkcs11 {
            assert!(!fresh_token_is_empty(env), "{point}: the root object stays");
        }
    }
    env.start_agent();
    let r = env.cli_json(&args, Some(pin_line.as_bytes()));
    assert_eq!(r["keks"], 2, "{r}");
    assert_eq!(count_roots(env), before.0 + 1);
    if env.kind() == RootKind::Pkcs11 {
        assert!(
            env.log().contains("reusing the root object"),
            "{}",
            env.log()
        );
    }
    let c = env.client();
    c.run(|c| c.unlock(pin(secret)))
        .expect("unlock after the retry");
    assert_eq!(
        c.run(|c| c.decrypt(&keys.ciphertext, None))
            .expect("decrypt")
            .expose(),
        &keys.plaintext[..]
    );
}

/// A new machine: agent B in its own directory (its own SoftHSM token and config, or a soft
/// root with another passphrase), never initialized, gets A's keystore by `backup export` on A
/// and `backup import` on B, restores from the words, unlocks and decrypts A's data; A's root
/// is listed absent and removed.
fn recovery_on_a_new_machine_from_a_backup(a: &mut TestEnv) {
    if !a.requires_sqlite("backup export and import copy the SQLite file") {
        return;
    }
    let keys = a.init_with_keys(false, b"old data, new machine");
    let first = crate::roots::current(&crate::roots::roots(a));
    let made = a.cli_json(&["recovery", "create"], None);
    let backup = path(a, "keystore.backup");
    a.cli_ok(&["backup", "export", "-o", &backup], None);
    let words = path(a, "words");
    std::fs::write(&words, made["words"].as_str().unwrap()).unwrap();

    let mut b = TestEnv::start(a.kind());
    b.stop();
    let ks = b.keystore_path();
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", ks.display()));
    }
    b.cli_json(
        &[
            "backup",
            "import",
            "-i",
            &backup,
            "--keystore",
            ks.to_str().unwrap(),
        ],
        None,
    );
    b.start_agent();
    let secret = match b.kind() {
        RootKind::Soft => "another-passphrase-on-the-new-machine-2026",
        _ => b.pin(),
    };
    let pin_line = format!("{secret}\n");
    let r = b.cli_json(
        &["recovery", "restore", "--words-file", &words, "--pin-stdin"],
        Some(pin_line.as_bytes()),
    );
    assert_eq!(r["absent_roots"], serde_json::json!([first]), "{r}");
    let c = b.client();
    c.run(|c| c.unlock(pin(secret))).expect("unlock on B");
    assert_eq!(
        c.run(|c| c.decrypt(&keys.ciphertext, None))
            .expect("decrypt")
            .expose(),
        &keys.plaintext[..]
    );
    b.cli_ok(&["root", "remove", &first], None);
    assert_eq!(crate::roots::roots(&b).len(), 2);
}

fn count_roots(env: &TestEnv) -> i64 {
    env.keystore_count("keys WHERE kind = 'root'")
}

/// PKCS#11: the fresh token `backup` has no secret or private key object (no root). Soft: true.
fn fresh_token_is_empty(env: &TestEnv) -> bool {
    if env.kind() != RootKind::Pkcs11 {
        return true;
    }
    let out = std::process::Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", env.dir().join("softhsm2.conf"))
        .args([
            "--module",
            "/usr/lib/softhsm/libsofthsm2.so",
            "--token-label",
            "backup",
            "--login",
            "--pin",
            keyward_tests::TEST_PIN,
            "--list-objects",
        ])
        .output()
        .expect("pkcs11-tool");
    assert!(out.status.success(), "pkcs11-tool: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    !text.contains("Secret Key Object") && !text.contains("Private Key Object")
}

/// Restore on a keystore with no recovery root (`not_found`), and on an agent unlocked on its
/// root (`already_initialized`); the agent keeps serving and nothing changes.
fn restore_without_a_recovery_root_is_refused(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"stays");
    let made = env.cli_json(&["recovery", "create", "--offline"], None);
    let words = path(env, "words");
    std::fs::write(&words, made["words"].as_str().unwrap()).unwrap();
    let pin_line = format!("{}\n", env.pin());
    let args = ["recovery", "restore", "--words-file", &words, "--pin-stdin"];
    assert_eq!(
        env.cli_json_err(&args, Some(pin_line.as_bytes())),
        "already_initialized"
    );
    env.cli_ok(&["lock"], None);
    assert_eq!(
        env.cli_json_err(&args, Some(pin_line.as_bytes())),
        "not_found"
    );
    env.assert_intact(&keys);
    assert_eq!(crate::roots::roots(env).len(), 1);
}

/// The words `recovery create` shows give the key it prints, recomputed by Debian's
/// python3-mnemonic (words -> entropy) and python3-cryptography (the frozen HKDF derivation):
/// `recovery/tests/vectors/crosscheck.py dids`. Never skipped: a missing module fails the test
/// and names the script that installs it.
fn created_words_give_the_printed_key_by_an_independent_implementation(env: &mut TestEnv) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    const PYTHON: &str = "/usr/bin/python3";
    for module in ["mnemonic", "cryptography"] {
        let ok = Command::new(PYTHON)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{PYTHON} cannot import `{module}`: run `./softhsm-setup.sh --install-only`"
        );
    }
    let items: Vec<serde_json::Value> = (0..8)
        .map(|_| {
            let made = env.cli_json(&["recovery", "create", "--offline"], None);
            serde_json::json!({"words": made["words"], "did_key": made["recovery"]})
        })
        .collect();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../recovery/tests/vectors/crosscheck.py");
    let mut child = Command::new(PYTHON)
        .arg(script)
        .arg("dids")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::Value::from(items).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "crosscheck.py dids: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 8");
}
