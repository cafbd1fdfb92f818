//! The `keyward` CLI end to end: PINs on stdin, `-i/-o` files and pipes, `--json` output, and
//! typed errors as `{"error": {code, message}}` with exit status 1.

use base64::Engine;
use keyward_tests::TestEnv;

keyward_tests::keyward_e2e_tests!(cli_round_trip, cli_dek_create_needs_kek_when_ambiguous);

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s.trim()).is_ok()
}

fn cli_round_trip(env: &mut TestEnv) {
    let pin_line = format!("{}\n", env.pin());
    let st = env.cli_json(&["status"], None);
    assert_eq!(st["initialized"], false);
    assert_eq!(st["locked"], true);
    assert_eq!(st["root_kind"], env.kind().name());

    // Text output: the new id on one line.
    let out = env.cli_ok(&env.init_args(), Some(pin_line.as_bytes()));
    assert!(
        is_uuid(&String::from_utf8_lossy(&out)),
        "init printed {out:?}"
    );
    assert_eq!(env.cli_json(&["lock"], None)["locked"], true);
    let un = env.cli_json(&["unlock", "--pin-stdin"], Some(pin_line.as_bytes()));
    assert_eq!(un["locked"], false);
    let st = env.cli_json(&["status"], None);
    assert_eq!(
        (st["initialized"].clone(), st["locked"].clone()),
        (true.into(), false.into())
    );

    let kek = env.cli_json(&["kek", "create", "--label", "cli-kek"], None)["id"]
        .as_str()
        .expect("kek id")
        .to_string();
    assert!(is_uuid(&kek));
    // One KEK: `dek create` needs no --kek. Text mode prints the id.
    let dek_text = env.cli_ok(&["dek", "create", "--label", "cli-dek"], None);
    let dek = String::from_utf8(dek_text).unwrap().trim().to_string();
    assert!(is_uuid(&dek), "dek create printed {dek:?}");
    let dek_json = env.cli_json(
        &["dek", "create", "--purpose", "sharing", "--exportable"],
        None,
    );
    let xdek = dek_json["id"].as_str().expect("dek id").to_string();
    let list = env.cli_json(&["dek", "list", "--kek", &kek], None);
    let keys = list["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2);
    let x = keys
        .iter()
        .find(|k| k["id"] == xdek.as_str())
        .expect("listed");
    assert_eq!(x["purpose"], "sharing");
    assert_eq!(x["exportable"], true);
    let text_list = String::from_utf8(env.cli_ok(&["dek", "list"], None)).unwrap();
    assert!(
        text_list.contains(&dek) && text_list.contains("cli-dek"),
        "{text_list}"
    );

    // Files: -i / -o.
    let plain: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let plain_file = env.dir().join("plain.bin");
    let ct_file = env.dir().join("cipher.txt");
    let out_file = env.dir().join("out.bin");
    std::fs::write(&plain_file, &plain).unwrap();
    let p = |f: &std::path::Path| f.to_str().unwrap().to_string();
    let o = env.cli_ok(
        &[
            "encrypt",
            "--dek",
            &dek,
            "-i",
            &p(&plain_file),
            "-o",
            &p(&ct_file),
        ],
        None,
    );
    assert!(o.is_empty(), "nothing on stdout with -o");
    let ct = std::fs::read_to_string(&ct_file).unwrap();
    assert!(ct.starts_with("Aes256Gcm."), "{ct:.40}");
    env.cli_ok(&["decrypt", "-i", &p(&ct_file), "-o", &p(&out_file)], None);
    assert_eq!(std::fs::read(&out_file).unwrap(), plain);

    // Pipes: stdin to stdout.
    let ct2 = env.cli_ok(&["encrypt", "--dek", &dek], Some(b"via pipes"));
    let back = env.cli_ok(&["decrypt"], Some(&ct2));
    assert_eq!(back, b"via pipes");
    let back = env.cli_ok(&["decrypt", "--dek", &dek], Some(&ct2));
    assert_eq!(back, b"via pipes");

    // JSON: ciphertext and base64url plaintext in the object.
    let j = env.cli_json(&["encrypt", "--dek", &xdek], Some(b"json please"));
    assert_eq!(j["dek"], xdek.as_str());
    let jct = j["ciphertext"].as_str().expect("ciphertext").to_string();
    let d = env.cli_json(&["decrypt"], Some(jct.as_bytes()));
    let pt = base64::engine::general_purpose::URL_SAFE
        .decode(d["plaintext"].as_str().expect("plaintext"))
        .unwrap();
    assert_eq!(pt, b"json please");

    // The CLI and the library agree on ciphertexts.
    let c = env.client();
    let lib_pt = c.run(|c| c.decrypt(jct.trim(), None)).unwrap();
    assert_eq!(lib_pt.expose(), b"json please");
    let lib_ct = c.run(|c| c.encrypt(&dek, b"from the library")).unwrap();
    assert_eq!(
        env.cli_ok(&["decrypt"], Some(lib_ct.as_bytes())),
        b"from the library"
    );

    // Export: JSON key, and refusals as typed JSON errors.
    let e = env.cli_json(&["dek", "export", &xdek], None);
    assert_eq!(e["id"], xdek.as_str());
    let key = base64::engine::general_purpose::URL_SAFE
        .decode(e["key"].as_str().expect("key"))
        .unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(
        env.cli_json_err(&["dek", "export", &dek], None),
        "not_exportable"
    );
    let ghost = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        env.cli_json_err(&["encrypt", "--dek", &ghost], Some(b"x")),
        "not_found"
    );
    assert_eq!(
        env.cli_json_err(&["decrypt"], Some(b"garbage")),
        "decrypt_failed"
    );
    assert_eq!(
        env.cli_json_err(&env.init_args(), Some(pin_line.as_bytes())),
        "already_initialized"
    );

    // Errors without --json: exit 1, a message on stderr, nothing on stdout.
    let out = env.cli(&["dek", "export", &dek], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("keyward:") && err.contains("not_exportable"),
        "{err}"
    );

    // A wrong PIN through the CLI: typed, with attempts left; never echoed.
    env.cli_ok(&["lock"], None);
    let out = env.cli(&["--json", "unlock", "--pin-stdin"], Some(b"not-the-pin\n"));
    assert_eq!(out.status.code(), Some(1));
    let v = keyward_tests::parse_json(&out.stdout);
    assert_eq!(v["error"]["code"], "pin_incorrect");
    assert!(v["error"]["attempts_left"].as_u64().is_some(), "{v}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("not-the-pin"), "the PIN was echoed: {all}");
    assert!(
        !env.log().contains("not-the-pin"),
        "the PIN is in the agent log"
    );
    assert!(
        !env.log().contains(env.pin()),
        "the PIN is in the agent log"
    );
    // Locked: key operations refused through the CLI as well.
    assert_eq!(
        env.cli_json_err(&["encrypt", "--dek", &dek], Some(b"x")),
        "locked"
    );
    env.cli_ok(&["unlock", "--pin-stdin"], Some(pin_line.as_bytes()));
    assert_eq!(env.cli_ok(&["decrypt", "-i", &p(&ct_file)], None), plain);
}

fn cli_dek_create_needs_kek_when_ambiguous(env: &mut TestEnv) {
    env.cli_ok(
        &env.init_args(),
        Some(format!("{}\n", env.pin()).as_bytes()),
    );
    // No KEK at all: not_found.
    assert_eq!(env.cli_json_err(&["dek", "create"], None), "not_found");
    let k1 = env.cli_json(&["kek", "create"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let d1 = env.cli_json(&["dek", "create"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let k2 = env.cli_json(&["kek", "create"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(env.cli_json_err(&["dek", "create"], None), "ambiguous");
    let d2 = env.cli_json(&["dek", "create", "--kek", &k2], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        env.cli_json(&["kek", "list"], None)["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let under = |k: &str| -> Vec<String> {
        env.cli_json(&["dek", "list", "--kek", k], None)["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(under(&k1), vec![d1]);
    assert_eq!(under(&k2), vec![d2.clone()]);
    // A DEK under the second KEK works.
    let ct = env.cli_ok(&["encrypt", "--dek", &d2], Some(b"second kek"));
    assert_eq!(env.cli_ok(&["decrypt"], Some(&ct)), b"second kek");
    // Unknown KEK, and a DEK id where a KEK id belongs.
    let ghost = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        env.cli_json_err(&["dek", "create", "--kek", &ghost], None),
        "not_found"
    );
    assert_eq!(
        env.cli_json_err(&["dek", "create", "--kek", &d2], None),
        "not_found"
    );
}
