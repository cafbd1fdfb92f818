//! The offline `keyward cryppo` helpers, against Cryppo's own compatibility vectors and against
//! the agent: data the agent encrypts decrypts offline with the exported DEK, and the reverse.

use keyward_tests::TestEnv;

keyward_tests::keyward_e2e_tests!(cryppo_cli_reads_cryppo_vectors_and_interoperates_with_the_agent);

fn vectors() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../envelope/tests/vectors/cryppo/compat.json");
    serde_json::from_slice(&std::fs::read(p).expect("compat.json")).expect("json")
}

fn cryppo_cli_reads_cryppo_vectors_and_interoperates_with_the_agent(env: &mut TestEnv) {
    let v = vectors();
    // Key-encrypted vectors (Aes256Gcm, latest format): decrypt with --key.
    let mut n = 0;
    for e in v["encryption_with_key"].as_array().unwrap() {
        if e["encryption_strategy"] != "Aes256Gcm" || e["format"] != "latest_version" {
            continue;
        }
        let out = env.cli_ok(
            &["cryppo", "decrypt", "--key", e["key"].as_str().unwrap()],
            Some(e["serialized"].as_str().unwrap().as_bytes()),
        );
        assert_eq!(
            out,
            e["expected_decryption_result"].as_str().unwrap().as_bytes()
        );
        n += 1;
    }
    assert_eq!(n, 32, "every latest Aes256Gcm vector was run");
    // Passphrase vectors (5 parts): first stdin line is the passphrase, the rest the data.
    let e = &v["encryption_with_derived_key"][0];
    let input = format!(
        "{}\n{}",
        e["passphrase"].as_str().unwrap(),
        e["serialized"].as_str().unwrap()
    );
    let out = env.cli_ok(
        &["cryppo", "decrypt", "--passphrase-stdin"],
        Some(input.as_bytes()),
    );
    assert_eq!(
        out,
        e["expected_decryption_result"].as_str().unwrap().as_bytes()
    );

    // Round trips through files, and a wrong passphrase is refused.
    let data = env.dir().join("data");
    std::fs::write(&data, b"offline bytes \x00\xff").unwrap();
    let ct = env.dir().join("ct");
    let d = data.to_string_lossy();
    let c = ct.to_string_lossy();
    env.cli_ok(
        &[
            "cryppo",
            "encrypt",
            "--passphrase-stdin",
            "-i",
            &d,
            "-o",
            &c,
        ],
        Some(b"pass phrase\n"),
    );
    let s = std::fs::read_to_string(&ct).unwrap();
    assert_eq!(
        s.trim().split('.').count(),
        5,
        "passphrase output is the 5-part form: {s}"
    );
    assert_eq!(
        env.cli_ok(
            &["cryppo", "decrypt", "--passphrase-stdin", "-i", &c],
            Some(b"pass phrase\n")
        ),
        b"offline bytes \x00\xff"
    );
    assert!(!env
        .cli(
            &["cryppo", "decrypt", "--passphrase-stdin", "-i", &c],
            Some(b"wrong\n")
        )
        .status
        .success());

    // Agent <-> offline: export a DEK, decrypt the agent's ciphertext offline, and decrypt an
    // offline ciphertext in the agent (it names no DEK, so --dek is needed).
    let keys = env.init_with_keys(true, b"agent plaintext");
    let key = env.cli_json(&["dek", "export", &keys.dek], None)["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        env.cli_ok(
            &["cryppo", "decrypt", "--key", &key],
            Some(keys.ciphertext.as_bytes())
        ),
        b"agent plaintext"
    );
    let offline = env.cli_ok(&["cryppo", "encrypt", "--key", &key], Some(b"made offline"));
    assert_eq!(
        String::from_utf8_lossy(&offline).trim().split('.').count(),
        3
    );
    assert_eq!(
        env.cli_json_err(&["decrypt"], Some(&offline)),
        "decrypt_failed"
    );
    assert_eq!(
        env.cli_ok(&["decrypt", "--dek", &keys.dek], Some(&offline)),
        b"made offline"
    );
    // A key whose base64url starts with '-' (1 in 64 random keys) is a value, not a flag.
    use base64::Engine;
    let dashed = base64::engine::general_purpose::URL_SAFE.encode([0xf8u8; 32]);
    assert!(dashed.starts_with('-'), "{dashed}");
    let ct = env.cli_ok(&["cryppo", "encrypt", "--key", &dashed], Some(b"dash"));
    assert_eq!(
        env.cli_ok(&["cryppo", "decrypt", "--key", &dashed], Some(&ct)),
        b"dash"
    );
    // Bad keys are clear errors.
    let out = env.cli(&["cryppo", "encrypt", "--key", "c2hvcnQ="], Some(b"x"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("32"),
        "{out:?}"
    );
}
