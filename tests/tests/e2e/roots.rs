//! Several roots per KEK through the real socket and CLI (`keyward root add|list|remove`,
//! `kek rotate --drop-root`): a second root enrolled on the same keystore unlocks it alone and
//! decrypts everything (PKCS#11: a second token of the same SoftHSM config, the first token's
//! files deleted; soft: a second passphrase); and the refusals for bad input (unknown root id,
//! malformed config, removing the agent's own root, an absent AES root, a forged root row), each
//! typed, with the agent still serving and the keystore intact.

use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::TEST_PIN;
use keyward_tests::{expect_code, pin, repo_root, wait_exit, wait_for, RootKind, TestEnv};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

keyward_tests::keyward_e2e_tests!(
    a_second_root_unlocks_the_keystore_alone_and_decrypts_everything,
    root_bad_input_is_typed_and_the_agent_keeps_serving,
    an_ec_backup_root_receives_new_and_rotated_keks_by_its_public_key,
    a_rotation_a_crash_interrupted_is_finished_on_the_other_root,
    a_second_object_on_the_agent_s_own_token_is_enrolled_beside_it,
);

const SECOND_PASSPHRASE: &str = "second-passphrase-for-the-backup-root-2026";

/// A second root for `env`: the config file that describes it and its secret. PKCS#11: a token
/// `backup` in the same SoftHSM config (`softhsm-setup.sh --add-token`); soft: the same config
/// (a soft root is its passphrase).
pub(crate) fn second_root(env: &TestEnv) -> (PathBuf, &'static str) {
    match env.kind() {
        RootKind::Pkcs11 => {
            // The script rewrites keyward.toml: keep the test's (with its [unlock]).
            let config = std::fs::read_to_string(env.config_path()).expect("config");
            let out = Command::new("bash")
                .arg(repo_root().join("softhsm-setup.sh"))
                .arg("--dir")
                .arg(env.dir())
                .args(["--add-token", "backup"])
                .env("KEYWARD_DEV_PIN", TEST_PIN)
                .env("KEYWARD_DEV_SO_PIN", "test-so-pin-87654321")
                .stdin(Stdio::null())
                .output()
                .expect("softhsm-setup.sh --add-token");
            assert!(
                out.status.success(),
                "softhsm-setup.sh --add-token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(env.config_path(), &config).expect("restore config");
            assert!(config.contains("token=keyward;"), "{config}");
            let backup = env.dir().join("backup.toml");
            std::fs::write(&backup, config.replace("token=keyward;", "token=backup;"))
                .expect("backup config");
            (backup, TEST_PIN)
        }
        RootKind::Soft => (env.config_path().to_path_buf(), SECOND_PASSPHRASE),
        other => panic!("no second root for {other:?}"),
    }
}

/// PKCS#11 only: the agent's config with the root object `label` on the same token (`ec`: a
/// P-256 root, `key_type = "ec"`).
pub(crate) fn same_token_config(env: &TestEnv, name: &str, label: &str, ec: bool) -> PathBuf {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(text.contains("object=keyward-root"), "{text}");
    let mut text = text.replacen("object=keyward-root", &format!("object={label}"), 1);
    if ec {
        assert!(text.contains("kind = \"pkcs11\"\n"), "{text}");
        text = text.replacen(
            "kind = \"pkcs11\"\n",
            "kind = \"pkcs11\"\nkey_type = \"ec\"\n",
            1,
        );
    }
    let path = env.dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// PKCS#11 only: the backup token enrolled as an EC P-256 root (`key_type = "ec"`). Its public
/// key is all later wraps need, so with it enrolled (and absent) KEKs are still made and
/// rotated; the agent then started on it alone, the first token deleted, decrypts all of it.
fn an_ec_backup_root_receives_new_and_rotated_keks_by_its_public_key(env: &mut TestEnv) {
    if env.kind() != RootKind::Pkcs11 {
        return;
    }
    let keys = env.init_with_keys(false, b"under the first KEK");
    let (config, secret, second) = enroll_ec_backup(env);
    let entry = roots(env)
        .into_iter()
        .find(|r| r["id"] == second.as_str())
        .unwrap();
    assert_eq!(entry["scheme"], "pkcs11-ec-p256", "{entry}");
    let c = env.client();
    let mut data = vec![(keys.ciphertext.clone(), keys.plaintext.clone())];
    // A KEK made now is wrapped to the EC root's public key (no PIN, no token needed).
    let kek2 = c
        .run(|c| c.kek_create(None))
        .expect("kek with an EC root enrolled")
        .id;
    let args = keyward_tests::keyward_proto::ops::DekCreateArgs {
        kek: Some(kek2.clone()),
        ..Default::default()
    };
    let dek2 = c.run(|c| c.dek_create(&args)).expect("dek").id;
    let pt = b"under the second KEK".to_vec();
    data.push((c.run(|c| c.encrypt(&dek2, &pt)).unwrap(), pt));
    // A rotation wraps the new version under both roots.
    let r = c.run(|c| c.kek_rotate(&keys.kek)).expect("rotate");
    assert_eq!(r.version, 2);
    let pt = b"after the rotation".to_vec();
    data.push((c.run(|c| c.encrypt(&keys.dek, &pt)).unwrap(), pt));
    drop(c);
    env.stop();
    std::fs::remove_dir_all(token_dir(env, "keyward")).expect("delete the first token");
    std::fs::copy(&config, env.config_path()).expect("config of the EC token");
    env.start_agent();
    let c = env.client();
    c.run(|c| c.unlock(pin(secret)))
        .expect("unlock on the EC root");
    for (ct, pt) in &data {
        assert_eq!(
            c.run(|c| c.decrypt(ct, None)).expect("decrypt").expose(),
            &pt[..]
        );
    }
    assert_eq!(current(&roots(env)), second);
    // The first root (an absent AES token) refuses new KEKs until it is dropped.
    expect_code(c.run(|c| c.kek_create(None)), ErrorCode::TokenUnavailable);
    let first = roots(env)
        .into_iter()
        .find(|r| r["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rotated = env.cli_json(&["kek", "rotate", &kek2, "--drop-root", &first], None);
    assert_eq!(rotated["version"], 2, "{rotated}");
    assert_eq!(roots(env).len(), 1);
    for (ct, pt) in &data {
        assert_eq!(
            c.run(|c| c.decrypt(ct, None)).expect("decrypt").expose(),
            &pt[..]
        );
    }
}

/// The token directory of SoftHSM token `label` (its `token.object` holds the label).
pub(crate) fn token_dir(env: &TestEnv, label: &str) -> PathBuf {
    let padded = format!("{label:<32}");
    for entry in std::fs::read_dir(env.dir().join("tokens")).expect("tokens dir") {
        let dir = entry.expect("entry").path();
        let Ok(obj) = std::fs::read(dir.join("token.object")) else {
            continue;
        };
        if obj.windows(32).any(|w| w == padded.as_bytes()) {
            return dir;
        }
    }
    panic!("no SoftHSM token `{label}` in {}", env.dir().display());
}

pub(crate) fn roots(env: &TestEnv) -> Vec<serde_json::Value> {
    env.cli_json(&["root", "list"], None)["roots"]
        .as_array()
        .expect("roots")
        .clone()
}

pub(crate) fn current(roots: &[serde_json::Value]) -> String {
    let cur: Vec<_> = roots.iter().filter(|r| r["current"] == true).collect();
    assert_eq!(cur.len(), 1, "{roots:?}");
    cur[0]["id"].as_str().unwrap().to_string()
}

fn enroll(env: &TestEnv, config: &Path, secret: &str) -> String {
    let added = env.cli_json(
        &[
            "root",
            "add",
            "--config",
            config.to_str().unwrap(),
            "--pin-stdin",
            "--label",
            "backup",
        ],
        Some(format!("{secret}\n").as_bytes()),
    );
    assert_eq!(added["created"], true, "{added}");
    // The KEK and the keystore integrity KEK.
    assert_eq!(added["wrapped"], 2, "{added}");
    added["id"].as_str().unwrap().to_string()
}

fn a_second_root_unlocks_the_keystore_alone_and_decrypts_everything(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"before the second root");
    let c = env.client();
    let mut data = vec![(keys.ciphertext.clone(), b"before the second root".to_vec())];
    let (config, secret) = second_root(env);
    let first = current(&roots(env));
    let second = enroll(env, &config, secret);
    let listed = roots(env);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(current(&listed), first);
    let entry = listed.iter().find(|r| r["id"] == second.as_str()).unwrap();
    assert_eq!(entry["label"], "backup");
    // Data written after the enrollment, under a new DEK of the same KEK.
    let args = keyward_tests::keyward_proto::ops::DekCreateArgs {
        kek: Some(keys.kek.clone()),
        ..Default::default()
    };
    let dek2 = c.run(|c| c.dek_create(&args)).expect("dek").id;
    for (i, dek) in [&keys.dek, &dek2].into_iter().enumerate() {
        let pt = format!("after the second root, {i}").into_bytes();
        let ct = c.run(|c| c.encrypt(dek, &pt)).expect("encrypt");
        data.push((ct, pt));
    }
    // A new KEK needs the second root's secret (an AES token, a passphrase): refused, naming it.
    let e = expect_code(c.run(|c| c.kek_create(None)), ErrorCode::TokenUnavailable);
    assert!(e.to_string().contains(&second), "{e}");
    drop(c);

    env.stop();
    if env.kind() == RootKind::Pkcs11 {
        // The first token is gone; the agent runs on the backup token's config.
        std::fs::remove_dir_all(token_dir(env, "keyward")).expect("delete the first token");
        // (backup.toml is the test's config, [unlock] included, naming the other token.)
        std::fs::copy(&config, env.config_path()).expect("config of the backup token");
    }
    env.start_agent();
    let c = env.client();
    c.run(|c| c.unlock(pin(secret)))
        .expect("unlock on the second root");
    for (ct, pt) in &data {
        assert_eq!(
            c.run(|c| c.decrypt(ct, None)).expect("decrypt").expose(),
            &pt[..]
        );
    }
    let listed = roots(env);
    assert_eq!(current(&listed), second);
    // The agent's own root is not removed; the other one is, and then KEKs can be made again.
    assert_eq!(
        env.cli_json_err(&["root", "remove", &second], None),
        "wrong_key"
    );
    env.cli_ok(&["root", "remove", &first], None);
    assert_eq!(roots(env).len(), 1);
    let kek2 = c.run(|c| c.kek_create(None)).expect("a KEK with one root");
    assert!(!kek2.id.is_empty());
    // And a KEK rotation on the second root keeps every ciphertext readable.
    let r = c.run(|c| c.kek_rotate(&keys.kek)).expect("kek rotate");
    assert_eq!(r.version, 2);
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

fn root_bad_input_is_typed_and_the_agent_keeps_serving(env: &mut TestEnv) {
    if !env.requires_sqlite("forges a root row into the SQLite file") {
        return;
    }
    let keys = env.init_with_keys(false, b"stays readable");
    let own = current(&roots(env));
    // Unknown and malformed root ids.
    let unknown = "6f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e";
    assert_eq!(
        env.cli_json_err(&["root", "remove", unknown], None),
        "not_found"
    );
    assert_eq!(
        env.cli_json_err(&["root", "remove", "nope"], None),
        "not_found"
    );
    // A KEK's id is not a root's.
    assert_eq!(
        env.cli_json_err(&["root", "remove", &keys.kek], None),
        "not_found"
    );
    // The agent's own (and last) root.
    assert_eq!(
        env.cli_json_err(&["root", "remove", &own], None),
        "wrong_key"
    );
    // --drop-root of an unknown root, and of the agent's own.
    assert_eq!(
        env.cli_json_err(&["kek", "rotate", &keys.kek, "--drop-root", unknown], None),
        "not_found"
    );
    assert_eq!(
        env.cli_json_err(&["kek", "rotate", &keys.kek, "--drop-root", &own], None),
        "wrong_key"
    );
    // Malformed config files: not TOML, no [root], an unknown root kind.
    for (name, text) in [
        ("garbage.toml", "this is = not [ toml"),
        ("noroot.toml", "keystore = \"k.db\"\n"),
        ("badkind.toml", "[root]\nkind = \"floppy\"\n"),
    ] {
        let path = env.dir().join(name);
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            env.cli_json_err(
                &[
                    "root",
                    "add",
                    "--config",
                    path.to_str().unwrap(),
                    "--pin-stdin"
                ],
                Some(format!("{}\n", env.pin()).as_bytes())
            ),
            "invalid_args",
            "{name}"
        );
    }
    // Enrolling the agent's own root again.
    assert_eq!(
        env.cli_json_err(
            &[
                "root",
                "add",
                "--config",
                env.config_path().to_str().unwrap(),
                "--pin-stdin"
            ],
            Some(format!("{}\n", env.pin()).as_bytes())
        ),
        "already_exists"
    );
    // Nothing changed; the agent serves.
    assert_eq!(roots(env).len(), 1);
    let c = env.client();
    assert_eq!(
        c.run(|c| c.decrypt(&keys.ciphertext, None))
            .unwrap()
            .expose(),
        b"stays readable"
    );
    drop(c);
    // A root row forged into the file (no MAC): the next unlock is refused as tampering.
    env.stop();
    {
        let db = rusqlite::Connection::open(env.keystore_path()).expect("keystore");
        db.execute(
            "INSERT INTO keys (id, kind, label, scheme, created) VALUES (?1, 'root', 'attacker', 'pkcs11-ec-p256', 1)",
            ["0b8e3c8e-3f55-4d0a-9d9e-6a2b4a8f9a11"],
        )
        .expect("forge a root row");
    }
    env.start_agent();
    let c = env.client();
    expect_code(
        c.run(|c| c.unlock(pin(env.pin()))),
        ErrorCode::KeystoreTampered,
    );
    assert!(c.run(|c| c.status()).expect("still serving").locked);
    drop(c);
    env.stop();
    {
        let db = rusqlite::Connection::open(env.keystore_path()).expect("keystore");
        db.execute("DELETE FROM keys WHERE label = 'attacker'", [])
            .expect("remove the forged row");
    }
    env.start_agent();
    let c = env.client();
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock without the forged row");
    assert_eq!(
        c.run(|c| c.decrypt(&keys.ciphertext, None))
            .unwrap()
            .expose(),
        b"stays readable"
    );
}

/// PKCS#11: enroll the `backup` token as an EC P-256 root; its config, PIN and root id.
fn enroll_ec_backup(env: &TestEnv) -> (PathBuf, &'static str, String) {
    let (config, secret) = second_root(env);
    let text = std::fs::read_to_string(&config).unwrap();
    let ec = text.replace(
        "kind = \"pkcs11\"\n",
        "kind = \"pkcs11\"\nkey_type = \"ec\"\n",
    );
    assert_ne!(ec, text, "{text}");
    std::fs::write(&config, ec).unwrap();
    let id = enroll(env, &config, secret);
    (config, secret, id)
}

/// PKCS#11 only: a KEK rotation with an EC backup enrolled, killed (abort) right after its
/// journal (the new KEK's wrap under both roots) was written. The first token is then deleted
/// and the agent started on the backup token alone: its unlock finishes the rotation from the
/// journal's wrap for the backup root, and everything decrypts.
fn a_rotation_a_crash_interrupted_is_finished_on_the_other_root(env: &mut TestEnv) {
    if env.kind() != RootKind::Pkcs11 {
        return;
    }
    let keys = env.init_with_keys(false, b"before the crash");
    let (config, secret, second) = enroll_ec_backup(env);
    env.stop();
    let mut cmd = env.agent_command();
    cmd.env("KEYWARD_TEST_CRASH_AFTER", "kek-rotate-begun")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn keywardd");
    let sock = env.socket_path().to_path_buf();
    wait_for("the crashing agent to listen", || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    let c = env.client();
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    let r = c.run(|c| c.kek_rotate(&keys.kek));
    assert!(
        r.as_ref().is_err_and(|e| e.code().is_none()),
        "not a crash: {r:?}"
    );
    drop(c);
    assert!(!wait_exit(&mut child, "the agent to abort").success());
    let journal = |env: &TestEnv, table: &str| -> i64 { env.keystore_count(table) };
    // The new KEK under both roots, journaled.
    assert_eq!(journal(env, "kek_rotation_wraps"), 2);
    assert_eq!(journal(env, "kek_rotations"), 1);

    std::fs::remove_dir_all(token_dir(env, "keyward")).expect("delete the first token");
    std::fs::copy(&config, env.config_path()).expect("config of the EC token");
    env.start_agent();
    let c = env.client();
    c.run(|c| c.unlock(pin(secret)))
        .expect("unlock on the EC root");
    assert_eq!(journal(env, "kek_rotations"), 0);
    assert_eq!(journal(env, "kek_rotation_wraps"), 0);
    let kek = c
        .run(|c| c.kek_list())
        .unwrap()
        .keys
        .into_iter()
        .find(|k| k.id == keys.kek)
        .unwrap();
    assert_eq!(kek.version, 2);
    assert_eq!(current(&roots(env)), second);
    assert_eq!(
        c.run(|c| c.decrypt(&keys.ciphertext, None))
            .unwrap()
            .expose(),
        b"before the crash"
    );
    // And after a restart (the swapped wraps, not a cache).
    drop(c);
    env.restart();
    let c = env.client();
    c.run(|c| c.unlock(pin(secret))).expect("unlock again");
    assert_eq!(
        c.run(|c| c.decrypt(&keys.ciphertext, None))
            .unwrap()
            .expose(),
        b"before the crash"
    );
}

/// PKCS#11 only: `root add` of another object (`keyward-root-2`) on the agent's own token. The
/// two roots share the token's login: enrolling (and locking the new root afterwards) leaves the
/// agent unlocked and serving; enrolling it again is `already_exists`; the agent locks and
/// unlocks as before; started on the second object's configuration alone, with the first
/// object deleted from the token, it decrypts everything.
fn a_second_object_on_the_agent_s_own_token_is_enrolled_beside_it(env: &mut TestEnv) {
    if env.kind() != RootKind::Pkcs11 {
        return;
    }
    let keys = env.init_with_keys(false, b"before the second object");
    let mut data = vec![(keys.ciphertext.clone(), keys.plaintext.clone())];
    let second = same_token_config(env, "same-token.toml", "keyward-root-2", false);
    let id = enroll(env, &second, env.pin());
    // The agent is still logged in: its opened KEK and new data work.
    let c = env.client();
    assert!(!c.hello_info().locked);
    let pt = b"after the second object".to_vec();
    data.push((c.run(|c| c.encrypt(&keys.dek, &pt)).unwrap(), pt));
    decrypts(&c, &data);
    drop(c);
    assert_eq!(
        env.cli_json_err(
            &[
                "root",
                "add",
                "--config",
                second.to_str().unwrap(),
                "--pin-stdin"
            ],
            Some(format!("{}\n", env.pin()).as_bytes())
        ),
        "already_exists"
    );
    let listed = roots(env);
    assert_eq!(listed.len(), 2, "{listed:?}");
    // Lock and unlock with two roots on the token.
    let c = env.client();
    decrypts(&c, &data);
    c.run(|c| c.lock()).unwrap();
    expect_code(
        c.run(|c| c.decrypt(&keys.ciphertext, None)),
        ErrorCode::Locked,
    );
    c.run(|c| c.unlock(pin(env.pin()))).unwrap();
    decrypts(&c, &data);
    drop(c);
    // The first object deleted from the token; the agent on the second object alone.
    env.stop();
    let out = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", env.dir().join("softhsm2.conf"))
        .args(["--module", "/usr/lib/softhsm/libsofthsm2.so"])
        .args(["--token-label", "keyward", "--login", "--pin", env.pin()])
        .args([
            "--delete-object",
            "--type",
            "secrkey",
            "--label",
            "keyward-root",
        ])
        .output()
        .expect("pkcs11-tool");
    assert!(out.status.success(), "pkcs11-tool: {out:?}");
    std::fs::copy(&second, env.config_path()).unwrap();
    env.start_agent();
    let c = env.client();
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock on the second object");
    decrypts(&c, &data);
    drop(c);
    assert_eq!(current(&roots(env)), id);
}

fn decrypts(c: &keyward_client::BlockingClient, data: &[(String, Vec<u8>)]) {
    for (ct, pt) in data {
        assert_eq!(
            c.run(|c| c.decrypt(ct, None)).expect("decrypt").expose(),
            &pt[..]
        );
    }
}
