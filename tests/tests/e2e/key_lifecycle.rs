//! Key life cycle through the real socket and CLI: DEK versions (`dek rotate`, `rewrap`,
//! `dek min-version`, `dek show`), the versioned Cryppo `ad`, streams across a rotation, and
//! revocation of KEKs, DEKs and keypairs; with the refusals for bad input.

use keyward_envelope::Serialized;
use keyward_tests::faults::Rng;
use keyward_tests::keyward_proto::ops::{DekCreateArgs, GcmArgs, KeypairCreateArgs};
use keyward_tests::keyward_proto::secret::SecretBytes;
use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::{expect_code, pin, wait_exit, wait_for, TestEnv};
use std::process::Stdio;
use std::time::{Duration, Instant};

keyward_tests::keyward_e2e_tests!(
    rotate_keeps_old_ciphertexts_and_rewrap_moves_them_to_the_newest_version,
    min_version_retires_versions_with_a_warning_and_survives_a_restart,
    streams_and_raw_gcm_across_a_rotation,
    cli_rotate_rewrap_min_version_show_and_revoke,
    lifecycle_bad_input_is_typed_and_the_agent_keeps_serving,
    revocation_refuses_every_use_and_a_kek_takes_its_children,
    kek_rotate_rewraps_every_child_from_the_cli,
    kek_rotate_resumes_after_a_crash_at_each_point,
    kek_rotate_progress_is_shown_from_the_journal,
    kek_rotate_survives_kill_9_at_random_moments,
);

/// The `ad` of a Cryppo string.
fn ad_of(ct: &str) -> String {
    let Serialized::Encrypted(d) = Serialized::parse(ct.trim()).expect("cryppo") else {
        panic!("not encrypted data")
    };
    d.gcm().expect("gcm").ad.to_string()
}

fn rotate_keeps_old_ciphertexts_and_rewrap_moves_them_to_the_newest_version(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"written at version 1");
    let c = env.client();
    let dek = keys.dek.as_str();
    // Version 1 ciphertexts are written as before versions existed (older agents read them).
    assert_eq!(ad_of(&keys.ciphertext), format!("keyward:dek:{dek}"));
    let info = c.run(|c| c.dek_show(dek)).unwrap();
    assert_eq!((info.version, info.min_version), (1, None));

    assert_eq!(c.run(|c| c.dek_rotate(dek)).unwrap().version, 2);
    let v2 = c.run(|c| c.encrypt(dek, b"written at version 2")).unwrap();
    assert_eq!(ad_of(&v2), format!("keyward:dek:{dek}:v2"));
    assert_eq!(c.run(|c| c.dek_rotate(dek)).unwrap().version, 3);
    let info = c.run(|c| c.dek_show(dek)).unwrap();
    assert_eq!(info.version, 3);
    assert!(info.rotated.is_some());

    // Every version still decrypts.
    let pt = c.run(|c| c.decrypt(&keys.ciphertext, None)).unwrap();
    assert_eq!(pt.expose(), b"written at version 1");
    let pt = c.run(|c| c.decrypt(&v2, None)).unwrap();
    assert_eq!(pt.expose(), b"written at version 2");

    // Rewrap: the newest version, the same plaintext, a different ciphertext.
    let re = c.run(|c| c.rewrap(&keys.ciphertext, None)).unwrap();
    assert_eq!(ad_of(&re), format!("keyward:dek:{dek}:v3"));
    assert_ne!(re, keys.ciphertext);
    let pt = c.run(|c| c.decrypt(&re, None)).unwrap();
    assert_eq!(pt.expose(), b"written at version 1");
    let re2 = c.run(|c| c.rewrap(&v2, None)).unwrap();
    assert_eq!(ad_of(&re2), format!("keyward:dek:{dek}:v3"));
    // Rewrapping what is already at the newest version gives another version-3 ciphertext.
    let re3 = c.run(|c| c.rewrap(&re, None)).unwrap();
    assert_eq!(ad_of(&re3), format!("keyward:dek:{dek}:v3"));
    assert_eq!(
        c.run(|c| c.decrypt(&re3, None)).unwrap().expose(),
        b"written at version 1"
    );
    // Naming the DEK is fine; naming another is refused.
    c.run(|c| c.rewrap(&keys.ciphertext, Some(dek))).unwrap();
    let default_args = DekCreateArgs::default();
    let other = c.run(|c| c.dek_create(&default_args)).unwrap().id;
    expect_code(
        c.run(|c| c.rewrap(&keys.ciphertext, Some(&other))),
        ErrorCode::DecryptFailed,
    );
    // A restart keeps the versions.
    env.restart();
    let c = env.client();
    c.run(|c| c.unlock(pin(env.pin()))).unwrap();
    assert_eq!(c.run(|c| c.dek_show(dek)).unwrap().version, 3);
    for (ct, want) in [
        (&keys.ciphertext, &b"written at version 1"[..]),
        (&v2, b"written at version 2"),
        (&re, b"written at version 1"),
    ] {
        assert_eq!(c.run(|c| c.decrypt(ct, None)).unwrap().expose(), want);
    }
}

fn min_version_retires_versions_with_a_warning_and_survives_a_restart(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"old");
    let c = env.client();
    let dek = keys.dek.as_str();
    c.run(|c| c.dek_rotate(dek)).unwrap();
    let v2 = c.run(|c| c.encrypt(dek, b"new")).unwrap();
    // Out of range: 0 and above the newest version.
    for n in [0, 3, u32::MAX] {
        expect_code(c.run(|c| c.dek_min_version(dek, n)), ErrorCode::InvalidArgs);
    }
    let r = c.run(|c| c.dek_min_version(dek, 2)).unwrap();
    assert_eq!((r.version, r.min_version), (2, 2));
    let w = r
        .warning
        .expect("a warning: version 1 was not retired before");
    assert!(w.contains("version 1") && w.contains("rewrap"), "{w}");
    let e = expect_code(
        c.run(|c| c.decrypt(&keys.ciphertext, None)),
        ErrorCode::VersionRetired,
    );
    assert!(e.to_string().contains("version 1"), "{e}");
    expect_code(
        c.run(|c| c.rewrap(&keys.ciphertext, None)),
        ErrorCode::VersionRetired,
    );
    assert_eq!(c.run(|c| c.decrypt(&v2, None)).unwrap().expose(), b"new");
    // Encrypting is unaffected.
    c.run(|c| c.encrypt(dek, b"more")).unwrap();
    // The same minimum again: nothing newly retired, no warning.
    assert_eq!(c.run(|c| c.dek_min_version(dek, 2)).unwrap().warning, None);
    assert_eq!(c.run(|c| c.dek_show(dek)).unwrap().min_version, Some(2));
    let listed = c.run(|c| c.dek_list(None)).unwrap().keys;
    assert_eq!(listed[0].min_version, Some(2));
    // Kept across a restart.
    env.restart();
    let c = env.client();
    c.run(|c| c.unlock(pin(env.pin()))).unwrap();
    expect_code(
        c.run(|c| c.decrypt(&keys.ciphertext, None)),
        ErrorCode::VersionRetired,
    );
    // Lowered again, version 1 decrypts again (its key was kept).
    assert_eq!(c.run(|c| c.dek_min_version(dek, 1)).unwrap().warning, None);
    assert_eq!(
        c.run(|c| c.decrypt(&keys.ciphertext, None))
            .unwrap()
            .expose(),
        b"old"
    );
}

fn streams_and_raw_gcm_across_a_rotation(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"x");
    let dek = keys.dek.as_str();
    let dir = env.dir().to_path_buf();
    let plain: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let p = dir.join("plain");
    std::fs::write(&p, &plain).unwrap();
    let enc = |out: &str| {
        let o = dir.join(out);
        env.cli_ok(
            &[
                "encrypt",
                "--dek",
                dek,
                "--stream",
                "-i",
                p.to_str().unwrap(),
                "-o",
                o.to_str().unwrap(),
            ],
            None,
        );
        o
    };
    let dec_args = |i: &std::path::Path, o: &str| -> Vec<String> {
        vec![
            "decrypt".into(),
            "-i".into(),
            i.to_str().unwrap().into(),
            "-o".into(),
            dir.join(o).to_str().unwrap().into(),
        ]
    };
    let s1 = enc("s1");
    let c = env.client();
    // Raw GCM (the PKCS#11 door) before the rotation.
    let gcm = |data: &[u8], tag_len: u8| GcmArgs {
        dek: dek.into(),
        iv: serde_bytes::ByteBuf::from(vec![5; 12]),
        aad: serde_bytes::ByteBuf::from(b"hdr".to_vec()),
        tag_len,
        data: SecretBytes::new(data.to_vec()),
    };
    let seal = |a: GcmArgs| c.run(|c| c.gcm_seal(&a));
    let open = |a: GcmArgs| c.run(|c| c.gcm_open(&a));
    let g1 = seal(gcm(b"raw before", 16)).unwrap();
    let g1_short = seal(gcm(b"raw short", 8)).unwrap();
    let dk1 = c.run(|c| c.datakey_create(dek)).unwrap();
    assert_eq!(dk1.version, 1);

    c.run(|c| c.dek_rotate(dek)).unwrap();
    let dk2 = c.run(|c| c.datakey_create(dek)).unwrap();
    assert_eq!(dk2.version, 2);
    let s2 = enc("s2");
    for (s, out) in [(&s1, "b1"), (&s2, "b2")] {
        let a = dec_args(s, out);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        env.cli_ok(&a, None);
        assert_eq!(std::fs::read(dir.join(out)).unwrap(), plain);
    }
    // Raw GCM: the newest version seals; what version 1 sealed still opens (full and short tag).
    let g2 = seal(gcm(b"raw before", 16)).unwrap();
    assert_ne!(g1, g2);
    assert_eq!(open(gcm(&g1, 16)).unwrap().expose(), b"raw before");
    assert_eq!(open(gcm(&g1_short, 8)).unwrap().expose(), b"raw short");
    // A data key's version must be the one it was wrapped under.
    expect_code(
        c.run(|c| c.datakey_open(dek, 2, dk1.wrapped.as_ref())),
        ErrorCode::DecryptFailed,
    );
    expect_code(
        c.run(|c| c.datakey_open(dek, 7, dk1.wrapped.as_ref())),
        ErrorCode::DecryptFailed,
    );
    assert_eq!(
        c.run(|c| c.datakey_open(dek, 1, dk1.wrapped.as_ref()))
            .unwrap()
            .expose(),
        dk1.key.expose()
    );
    // Retiring version 1: the old stream is version_retired, the new one still decrypts.
    c.run(|c| c.dek_min_version(dek, 2)).unwrap();
    let a = dec_args(&s1, "b3");
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    a.insert(0, "--json");
    let out = env.cli(&a, None);
    assert!(!out.status.success());
    let v = keyward_tests::parse_json(&out.stdout);
    assert_eq!(v["error"]["code"], "version_retired", "{v}");
    let a = dec_args(&s2, "b4");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    env.cli_ok(&a, None);
    expect_code(open(gcm(&g1, 16)), ErrorCode::DecryptFailed);
}

fn cli_rotate_rewrap_min_version_show_and_revoke(env: &mut TestEnv) {
    env.init();
    let kek = String::from_utf8(env.cli_ok(&["kek", "create"], None)).unwrap();
    let kek = kek.trim();
    let dek = String::from_utf8(env.cli_ok(&["dek", "create"], None)).unwrap();
    let dek = dek.trim();
    let ct1 = env.cli_ok(&["encrypt", "--dek", dek], Some(b"cli plaintext"));
    // `dek rotate` prints the new version.
    assert_eq!(env.cli_ok(&["dek", "rotate", dek], None), b"2\n");
    let j = env.cli_json(&["dek", "rotate", dek], None);
    assert_eq!(
        (j["id"].as_str(), j["version"].as_u64()),
        (Some(dek), Some(3))
    );
    // rewrap: stdin to stdout, and -i / -o.
    let re = env.cli_ok(&["rewrap"], Some(&ct1));
    let re = String::from_utf8(re).unwrap();
    assert_eq!(ad_of(&re), format!("keyward:dek:{dek}:v3"));
    assert_eq!(
        env.cli_ok(&["decrypt"], Some(re.as_bytes())),
        b"cli plaintext"
    );
    let (i, o) = (env.dir().join("ct1"), env.dir().join("ct1.new"));
    std::fs::write(&i, &ct1).unwrap();
    env.cli_ok(
        &[
            "rewrap",
            "-i",
            i.to_str().unwrap(),
            "-o",
            o.to_str().unwrap(),
        ],
        None,
    );
    let from_file = std::fs::read_to_string(&o).unwrap();
    assert_eq!(ad_of(&from_file), format!("keyward:dek:{dek}:v3"));
    let j = env.cli_json(&["rewrap"], Some(&ct1));
    assert_eq!(ad_of(j["ciphertext"].as_str().unwrap()), ad_of(&re));
    // dek show / dek list.
    let j = env.cli_json(&["dek", "show", dek], None);
    assert_eq!(j["version"], 3);
    assert!(j.get("min_version").is_none(), "{j}");
    let table = String::from_utf8(env.cli_ok(&["dek", "list"], None)).unwrap();
    assert!(
        table.contains("VERSION") && table.contains("MIN"),
        "{table}"
    );
    // min-version: the warning goes to stderr, the result to stdout.
    let out = env.cli(&["dek", "min-version", dek, "3"], None);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("versions 1 to 2"),
        "{err}"
    );
    let j = env.cli_json(&["dek", "show", dek], None);
    assert_eq!(j["min_version"], 3);
    assert_eq!(
        env.cli_json_err(&["decrypt"], Some(&ct1)),
        "version_retired"
    );
    let out = env.cli(&["decrypt"], Some(&ct1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retired"), "{err}");
    assert_eq!(
        env.cli_json_err(&["dek", "min-version", dek, "4"], None),
        "invalid_args"
    );
    assert_eq!(
        env.cli_json_err(&["dek", "min-version", dek, "0"], None),
        "invalid_args"
    );
    // Revocation from the CLI: the DEK, then its KEK (with its remaining children).
    let kp = String::from_utf8(env.cli_ok(&["keypair", "create"], None)).unwrap();
    let kp = kp.trim();
    let j = env.cli_json(&["keypair", "revoke", kp], None);
    assert_eq!(j["revoked"][0], kp);
    assert_eq!(
        env.cli_json_err(&["sign", "--key", kp], Some(b"m")),
        "key_inactive"
    );
    let text = String::from_utf8(env.cli_ok(&["dek", "revoke", dek], None)).unwrap();
    assert_eq!(text, format!("revoked {dek}\n"));
    assert_eq!(
        env.cli_json_err(&["dek", "revoke", dek], None),
        "key_inactive"
    );
    assert_eq!(
        env.cli_json_err(&["decrypt"], Some(re.as_bytes())),
        "key_inactive"
    );
    let dek2 = String::from_utf8(env.cli_ok(&["dek", "create"], None)).unwrap();
    let j = env.cli_json(&["kek", "revoke", kek], None);
    let revoked: Vec<&str> = j["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(revoked[0], kek);
    assert!(revoked.contains(&dek2.trim()), "{j}");
    assert!(!revoked.contains(&dek), "already revoked: {j}");
    assert_eq!(
        env.cli_json_err(&["encrypt", "--dek", dek2.trim()], Some(b"x")),
        "key_inactive"
    );
    assert_eq!(
        env.cli_json_err(&["dek", "create", "--kek", kek], None),
        "key_inactive"
    );
    let keks = env.cli_json(&["kek", "list"], None);
    assert_eq!(keks["keys"][0]["state"], "revoked");
}

fn lifecycle_bad_input_is_typed_and_the_agent_keeps_serving(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"stays intact");
    let c = env.client();
    let ghost = uuid::Uuid::new_v4().to_string();
    let nf = ErrorCode::NotFound;
    for id in [
        ghost.as_str(),
        "not-a-uuid",
        "",
        "'; DROP TABLE key_versions; --",
    ] {
        expect_code(c.run(|c| c.dek_rotate(id)), nf);
        expect_code(c.run(|c| c.dek_min_version(id, 1)), nf);
        expect_code(c.run(|c| c.dek_show(id)), nf);
        expect_code(c.run(|c| c.dek_revoke(id)), nf);
        expect_code(c.run(|c| c.kek_revoke(id)), nf);
        expect_code(c.run(|c| c.keypair_revoke(id)), nf);
    }
    // Ids of the wrong kind.
    expect_code(c.run(|c| c.dek_rotate(&keys.kek)), nf);
    expect_code(c.run(|c| c.kek_revoke(&keys.dek)), nf);
    expect_code(c.run(|c| c.keypair_revoke(&keys.dek)), nf);
    // Rewrap of garbage, of a non-agent ciphertext, of a tampered one.
    for garbage in ["", "garbage", "Aes256Gcm.x.y", "Aes256Gcm.AAAA.AAAA.AAAA"] {
        expect_code(c.run(|c| c.rewrap(garbage, None)), ErrorCode::DecryptFailed);
    }
    let foreign = keyward_envelope::aes256gcm::encrypt(&[7u8; 32], b"f", "elsewhere").unwrap();
    expect_code(
        c.run(|c| c.rewrap(&foreign, None)),
        ErrorCode::DecryptFailed,
    );
    expect_code(
        c.run(|c| c.rewrap(&foreign, Some(&keys.dek))),
        ErrorCode::DecryptFailed,
    );
    // Forged versions: one that does not exist, one that is not canonical, one of another DEK.
    for ad in [
        format!("keyward:dek:{}:v2", keys.dek),
        format!("keyward:dek:{}:v02", keys.dek),
        format!("keyward:dek:{}:v0", keys.dek),
        format!("keyward:dek:{}:v", keys.dek),
    ] {
        let forged = keyward_envelope::aes256gcm::encrypt(&[7u8; 32], b"f", &ad).unwrap();
        expect_code(c.run(|c| c.rewrap(&forged, None)), ErrorCode::DecryptFailed);
        expect_code(
            c.run(|c| c.decrypt(&forged, None)),
            ErrorCode::DecryptFailed,
        );
    }
    let forged =
        keyward_envelope::aes256gcm::encrypt(&[7u8; 32], b"f", &format!("keyward:dek:{ghost}:v3"))
            .unwrap();
    expect_code(c.run(|c| c.rewrap(&forged, None)), nf);
    // Version 0 and too large.
    expect_code(
        c.run(|c| c.dek_min_version(&keys.dek, 0)),
        ErrorCode::InvalidArgs,
    );
    expect_code(
        c.run(|c| c.dek_min_version(&keys.dek, 2)),
        ErrorCode::InvalidArgs,
    );
    // Sharing DEKs are not rotated (their recipients hold version 1).
    let sharing_args = DekCreateArgs {
        purpose: keyward_tests::keyward_proto::ops::Purpose::Sharing,
        ..Default::default()
    };
    let sharing = c.run(|c| c.dek_create(&sharing_args)).unwrap().id;
    expect_code(c.run(|c| c.dek_rotate(&sharing)), ErrorCode::WrongKey);
    // Revoke twice.
    c.run(|c| c.dek_revoke(&sharing)).unwrap();
    expect_code(c.run(|c| c.dek_revoke(&sharing)), ErrorCode::KeyInactive);
    // Locked: every lifecycle op refused as locked, nothing changed.
    c.run(|c| c.lock()).unwrap();
    let locked = ErrorCode::Locked;
    expect_code(c.run(|c| c.dek_rotate(&keys.dek)), locked);
    expect_code(c.run(|c| c.dek_min_version(&keys.dek, 1)), locked);
    expect_code(c.run(|c| c.rewrap(&keys.ciphertext, None)), locked);
    expect_code(c.run(|c| c.dek_revoke(&keys.dek)), locked);
    expect_code(c.run(|c| c.kek_revoke(&keys.kek)), locked);
    expect_code(c.run(|c| c.keypair_revoke(&ghost)), locked);
    // dek.show needs no unlock.
    assert_eq!(c.run(|c| c.dek_show(&keys.dek)).unwrap().version, 1);
    env.assert_intact(&keys);
    let c = env.client();
    assert_eq!(c.run(|c| c.dek_show(&keys.dek)).unwrap().state, "active");
}

fn revocation_refuses_every_use_and_a_kek_takes_its_children(env: &mut TestEnv) {
    let keys = env.init_with_keys(true, b"under the first KEK");
    let c = env.client();
    let under_kek1 = KeypairCreateArgs {
        kek: Some(keys.kek.clone()),
        ..Default::default()
    };
    let kp = c.run(|c| c.keypair_create(&under_kek1)).unwrap().id;
    c.run(|c| c.sign(&kp, b"m", false)).unwrap();
    let kek2 = c.run(|c| c.kek_create(Some("second".into()))).unwrap().id;
    let dek_under_kek2 = DekCreateArgs {
        kek: Some(kek2.clone()),
        ..Default::default()
    };
    let dek2 = c.run(|c| c.dek_create(&dek_under_kek2)).unwrap().id;
    let ct2 = c.run(|c| c.encrypt(&dek2, b"under the second")).unwrap();
    let inactive = ErrorCode::KeyInactive;

    // A keypair.
    let kp_under_kek2 = KeypairCreateArgs {
        kek: Some(kek2.clone()),
        ..Default::default()
    };
    let kp2 = c.run(|c| c.keypair_create(&kp_under_kek2)).unwrap().id;
    assert_eq!(
        c.run(|c| c.keypair_revoke(&kp2)).unwrap().revoked,
        vec![kp2.clone()]
    );
    expect_code(c.run(|c| c.sign(&kp2, b"m", false)), inactive);
    expect_code(c.run(|c| c.keypair_revoke(&kp2)), inactive);
    assert_eq!(c.run(|c| c.keypair_show(&kp2)).unwrap().state, "revoked");

    // The first KEK: it, its DEK and its keypair.
    let r = c.run(|c| c.kek_revoke(&keys.kek)).unwrap();
    assert_eq!(r.id, keys.kek);
    let mut got = r.revoked.clone();
    got.sort();
    let mut want = vec![keys.kek.clone(), keys.dek.clone(), kp.clone()];
    want.sort();
    assert_eq!(got, want);
    expect_code(c.run(|c| c.decrypt(&keys.ciphertext, None)), inactive);
    expect_code(c.run(|c| c.encrypt(&keys.dek, b"x")), inactive);
    expect_code(c.run(|c| c.dek_export(&keys.dek)), inactive);
    expect_code(c.run(|c| c.dek_rotate(&keys.dek)), inactive);
    expect_code(c.run(|c| c.rewrap(&keys.ciphertext, None)), inactive);
    expect_code(c.run(|c| c.datakey_create(&keys.dek)), inactive);
    expect_code(c.run(|c| c.sign(&kp, b"m", false)), inactive);
    let dek_under_kek1 = DekCreateArgs {
        kek: Some(keys.kek.clone()),
        ..Default::default()
    };
    expect_code(c.run(|c| c.dek_create(&dek_under_kek1)), inactive);
    expect_code(c.run(|c| c.keypair_create(&under_kek1)), inactive);
    expect_code(c.run(|c| c.kek_revoke(&keys.kek)), inactive);
    // Listings say so.
    let deks = c.run(|c| c.dek_list(None)).unwrap().keys;
    let d = deks.iter().find(|k| k.id == keys.dek).unwrap();
    assert_eq!(d.state, "revoked");
    // The other KEK's keys are untouched, also after a restart.
    assert_eq!(
        c.run(|c| c.decrypt(&ct2, None)).unwrap().expose(),
        b"under the second"
    );
    env.restart();
    let c = env.client();
    c.run(|c| c.unlock(pin(env.pin()))).unwrap();
    assert_eq!(
        c.run(|c| c.decrypt(&ct2, None)).unwrap().expose(),
        b"under the second"
    );
    expect_code(c.run(|c| c.decrypt(&keys.ciphertext, None)), inactive);
    expect_code(c.run(|c| c.sign(&kp, b"m", false)), inactive);
}

// ---- KEK rotation ---------------------------------------------------------------------------

/// (DEK, ciphertext, plaintext).
type Sample = (String, String, Vec<u8>);

/// `n` DEKs under `kek` (every third with a second version), a ciphertext from each version,
/// and a P-256 and an Ed25519 keypair: (dek, ciphertext, plaintext) and the keypairs.
fn many_children(env: &TestEnv, kek: &str, n: usize) -> (Vec<Sample>, Vec<String>) {
    let c = env.client();
    let args = DekCreateArgs {
        kek: Some(kek.into()),
        ..Default::default()
    };
    let mut cts = Vec::new();
    for i in 0..n {
        let d = c.run(|c| c.dek_create(&args)).unwrap().id;
        let pt = format!("dek {i} version 1").into_bytes();
        cts.push((d.clone(), c.run(|c| c.encrypt(&d, &pt)).unwrap(), pt));
        if i % 3 == 0 {
            c.run(|c| c.dek_rotate(&d)).unwrap();
            let pt = format!("dek {i} version 2").into_bytes();
            cts.push((d.clone(), c.run(|c| c.encrypt(&d, &pt)).unwrap(), pt));
        }
    }
    let mut kps = Vec::new();
    for alg in ["p256", "ed25519"] {
        let a = KeypairCreateArgs {
            kek: Some(kek.into()),
            alg: Some(alg.into()),
            ..Default::default()
        };
        kps.push(c.run(|c| c.keypair_create(&a)).unwrap().id);
    }
    (cts, kps)
}

/// Every ciphertext decrypts to what it held, every keypair signs, every DEK encrypts.
fn all_decrypt(env: &TestEnv, cts: &[Sample], kps: &[String], when: &str) {
    let c = env.client();
    if c.hello_info().locked {
        c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    }
    for (d, ct, pt) in cts {
        let got = c
            .run(|c| c.decrypt(ct, None))
            .unwrap_or_else(|e| panic!("{when}: DEK {d}: {e}\nagent log:\n{}", env.log()));
        assert_eq!(got.expose(), &pt[..], "{when}: DEK {d}");
    }
    for k in kps {
        c.run(|c| c.sign(k, b"m", false))
            .unwrap_or_else(|e| panic!("{when}: keypair {k}: {e}"));
    }
}

/// (journal rows, item rows) of the rotation journal, read from the keystore (the SQLite file
/// is opened read-write: after a kill, only a writer recovers the WAL's committed transactions).
fn journal(env: &TestEnv) -> (i64, i64) {
    (
        env.keystore_count("kek_rotations"),
        env.keystore_count("kek_rotation_items"),
    )
}

fn kek_version(env: &TestEnv, kek: &str) -> u32 {
    let c = env.client();
    let keks = c.run(|c| c.kek_list()).unwrap().keys;
    keks.iter()
        .find(|k| k.id == kek)
        .expect("kek listed")
        .version
}

fn kek_rotate_rewraps_every_child_from_the_cli(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"first");
    let (mut cts, kps) = many_children(env, &keys.kek, 20);
    cts.push((
        keys.dek.clone(),
        keys.ciphertext.clone(),
        keys.plaintext.clone(),
    ));
    let out = env.cli(&["kek", "rotate", &keys.kek], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"2\n");
    // 21 DEKs, 7 second versions, 2 keypairs.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("30 wrapped keys moved to version 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    all_decrypt(env, &cts, &kps, "after rotate");
    let j = env.cli_json(&["kek", "rotate", &keys.kek], None);
    assert_eq!(
        (j["version"].as_u64(), j["rewrapped"].as_u64()),
        (Some(3), Some(30))
    );
    env.restart();
    all_decrypt(env, &cts, &kps, "after restart");
    assert_eq!(kek_version(env, &keys.kek), 3);
    // Refusals.
    let ghost = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        env.cli_json_err(&["kek", "rotate", &ghost], None),
        "not_found"
    );
    assert_eq!(
        env.cli_json_err(&["kek", "rotate", "nope"], None),
        "not_found"
    );
    assert_eq!(
        env.cli_json_err(&["kek", "rotate", &keys.dek], None),
        "not_found"
    );
    let other = String::from_utf8(env.cli_ok(&["kek", "create"], None)).unwrap();
    env.cli_ok(&["kek", "revoke", other.trim()], None);
    assert_eq!(
        env.cli_json_err(&["kek", "rotate", other.trim()], None),
        "key_inactive"
    );
    env.cli_ok(&["lock"], None);
    assert_eq!(
        env.cli_json_err(&["kek", "rotate", &keys.kek], None),
        "locked"
    );
    all_decrypt(env, &cts, &kps, "after refusals");
}

/// Start an agent that aborts at `point`, unlock it, ask for a rotation (never answered),
/// and wait for it to die.
fn crash_rotation_at(env: &mut TestEnv, kek: &str, point: &str) {
    env.stop();
    let mut cmd = env.agent_command();
    cmd.env("KEYWARD_TEST_CRASH_AFTER", point)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn keywardd");
    let sock = env.socket_path().to_path_buf();
    wait_for("the crashing agent to listen", || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    let c = env.client();
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    let r = c.run(|c| c.kek_rotate(kek));
    assert!(r.is_err(), "{point}: the rotation was answered: {r:?}");
    assert!(
        r.unwrap_err().code().is_none(),
        "{point}: an agent error, not a crash"
    );
    let st = wait_exit(&mut child, "the agent to abort");
    assert!(!st.success(), "{point}");
    env.start_agent();
}

fn kek_rotate_resumes_after_a_crash_at_each_point(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"first");
    // More than one batch (64) of children.
    let (mut cts, kps) = many_children(env, &keys.kek, 100);
    cts.push((
        keys.dek.clone(),
        keys.ciphertext.clone(),
        keys.plaintext.clone(),
    ));
    let mut version = 1;
    for point in ["kek-rotate-begun", "kek-rotate-batch", "kek-rotate-swapped"] {
        crash_rotation_at(env, &keys.kek, point);
        let want = match point {
            "kek-rotate-begun" => (1, 0),
            "kek-rotate-batch" => (1, 64),
            _ => (0, 0),
        };
        assert_eq!(journal(env), want, "{point}: the journal the crash left");
        // `kek.rotation` reports the journal while locked, before the unlock finishes it.
        let c = env.client();
        let s = c.run(|c| c.kek_rotation(&keys.kek)).expect("kek.rotation");
        assert_eq!(
            (s.pending, s.done),
            (want.0 == 1, want.1 as u64),
            "{point}: {s:?}"
        );
        // Every DEK version and both keypairs are under the KEK.
        let total = if s.pending {
            (cts.len() + kps.len()) as u64
        } else {
            0
        };
        assert_eq!(s.total, total, "{point}: {s:?}");
        drop(c);
        // Locked after the restart: whatever the crash left, the unlock finishes it.
        all_decrypt(env, &cts, &kps, point);
        version += 1;
        assert_eq!(kek_version(env, &keys.kek), version, "{point}");
        // And a rotation afterwards works as usual.
        let c = env.client();
        version = c.run(|c| c.kek_rotate(&keys.kek)).unwrap().version;
        all_decrypt(env, &cts, &kps, &format!("{point}, rotated again"));
    }
}

/// `kek rotate --progress`: with the rotation slowed down (a debug-build delay after each batch
/// of 64), the CLI prints the journal's count on stderr (not a terminal here: lines), and the
/// result is the same as without it; `kek.rotation` afterwards says nothing is pending.
fn kek_rotate_progress_is_shown_from_the_journal(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"first");
    let (cts, kps) = many_children(env, &keys.kek, 150);
    let total = cts.len() + kps.len() + 1;
    env.stop();
    let mut cmd = env.agent_command();
    cmd.env("KEYWARD_TEST_ROTATION_BATCH_DELAY_MS", "400")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn keywardd");
    let sock = env.socket_path().to_path_buf();
    wait_for("the slowed agent to listen", || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    let c = env.client();
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    let out = env.cli(&["kek", "rotate", "--progress", &keys.kek], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(out.stdout, b"2\n", "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("keyward: kek rotate: "))
        .collect();
    assert!(!lines.is_empty(), "no progress line: {err}");
    for l in &lines {
        let (done, of) = l
            .trim_start_matches("keyward: kek rotate: ")
            .trim_end_matches(" wrapped keys")
            .split_once('/')
            .unwrap_or_else(|| panic!("{l}"));
        let (done, of): (usize, usize) = (done.parse().unwrap(), of.parse().unwrap());
        assert_eq!(of, total, "{l}");
        assert!(done <= of, "{l}");
    }
    assert!(
        err.contains(&format!("{total} wrapped keys moved to version 2")),
        "{err}"
    );
    let s = c.run(|c| c.kek_rotation(&keys.kek)).expect("kek.rotation");
    assert!(!s.pending && s.done == 0 && s.total == 0, "{s:?}");
    // Unknown and malformed ids are typed, as for the other KEK operations.
    let e = c.run(|c| c.kek_rotation("00000000-0000-4000-8000-000000000000"));
    assert_eq!(e.unwrap_err().code(), Some(ErrorCode::NotFound));
    let e = c.run(|c| c.kek_rotation("not-an-id"));
    assert!(e.unwrap_err().code().is_some());
    drop(c);
    let _ = child.kill();
    let _ = child.wait();
    env.start_agent();
}

fn kek_rotate_survives_kill_9_at_random_moments(env: &mut TestEnv) {
    const ROUNDS: usize = 20;
    let keys = env.init_with_keys(false, b"first");
    // The numbers: 1,000 DEKs (a third with a second version), 20 kills.
    let (mut cts, kps) = many_children(env, &keys.kek, 1000);
    cts.push((
        keys.dek.clone(),
        keys.ciphertext.clone(),
        keys.plaintext.clone(),
    ));
    // Uninterrupted rotations, to know how long one takes here (the fastest of three). Waited
    // for up to 2 minutes: on a loaded machine one rotation of 1,000 children on PostgreSQL
    // took longer than the client's default 30 s.
    let c = keyward_tests::keyward_client::BlockingClient::connect_with(
        env.socket_path(),
        &keyward_tests::keyward_client::ClientOptions {
            request_timeout: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .expect("connect");
    let full = (0..3)
        .map(|_| {
            let t0 = Instant::now();
            c.run(|c| c.kek_rotate(&keys.kek)).unwrap();
            t0.elapsed().as_millis() as u64
        })
        .min()
        .unwrap_or(0)
        .max(5);
    eprintln!("one rotation: {full} ms");
    drop(c);
    let mut rng = Rng::from_env("kek_rotate_survives_kill_9_at_random_moments");
    let mut killed_mid = 0;
    let mut journals: Vec<i64> = Vec::new();
    for round in 0..ROUNDS {
        let before = kek_version(env, &keys.kek);
        let sock = env.socket_path().to_path_buf();
        let kek = keys.kek.clone();
        // A kill before the client has connected is a round where nothing began.
        let h = std::thread::spawn(move || {
            let c = keyward_tests::keyward_client::BlockingClient::connect(&sock)
                .map_err(|e| (None, e.to_string()))?;
            c.run(|c| c.kek_rotate(&kek))
                .map(|r| r.version)
                .map_err(|e| (e.code(), e.to_string()))
        });
        let delay = rng.range(0, full + full / 2);
        std::thread::sleep(Duration::from_millis(delay));
        env.kill();
        let answered = h.join().unwrap();
        if env.softhsm_token_lost() {
            eprintln!("!!!! round {round}: SoftHSM emptied its token.object when killed (a SoftHSM limitation): stopping here");
            return;
        }
        // What the kill left in the keystore: a journal and how many children it had reached.
        let (pending, items) = journal(env);
        if pending > 0 {
            journals.push(items);
        }
        env.start_agent();
        all_decrypt(
            env,
            &cts,
            &kps,
            &format!("round {round} (killed after {delay} ms)"),
        );
        // The unlock in all_decrypt finished any journal.
        assert_eq!(
            journal(env),
            (0, 0),
            "round {round}: the journal is still there after unlock"
        );
        let after = kek_version(env, &keys.kek);
        eprintln!("round {round}: killed after {delay} ms; journal {pending}/{items}; version {before} -> {after}; answered {:?}", answered.as_ref().map_err(|e| &e.1));
        match answered {
            Ok(v) => assert_eq!(after, v, "round {round}: an answered rotation is kept"),
            // Not answered: it happened (finished at unlock) or it had not begun.
            Err((code, e)) => {
                assert!(code.is_none(), "round {round}: refused by the agent: {e}");
                assert!(
                    after == before || after == before + 1,
                    "round {round}: {before} -> {after}"
                );
                killed_mid += 1;
            }
        }
    }
    eprintln!(
        "kek rotate kill -9: {ROUNDS} rounds over {} DEK versions, {killed_mid} killed before the answer, {} left a journal (items written: {journals:?}); a full rotation took {full} ms",
        cts.len(),
        journals.len()
    );
}
