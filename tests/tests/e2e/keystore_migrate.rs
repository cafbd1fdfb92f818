//! `keyward keystore migrate --to DEST`: the copy serves every key on the same token once the
//! agent is switched to it (stop, `keystore = DEST`, start); the source is never changed; bad
//! destinations get typed errors and the agent keeps serving.

use keyward_tests::keyward_proto::ops::KeypairCreateArgs;
use keyward_tests::{pin, TestEnv};
use std::path::Path;
use std::process::{Command, Stdio};

keyward_tests::keyward_e2e_tests!(
    keystore_migrate_copy_serves_every_key_on_the_same_token,
    keystore_migrate_refuses_bad_destinations_and_keeps_serving,
    keystore_migrate_a_second_agent_serves_the_copy_on_the_same_token,
);

/// Rows per table of a keystore file, read directly.
fn rows(path: &Path) -> Vec<(String, i64)> {
    let db = rusqlite::Connection::open(path).expect("keystore");
    [
        "keys",
        "key_versions",
        "revocations",
        "kek_wraps",
        "kek_rotations",
        "kek_rotation_items",
        "kek_rotation_wraps",
        "meta",
        "devices",
    ]
    .iter()
    .map(|t| {
        let n: i64 = db
            .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .expect("count");
        (t.to_string(), n)
    })
    .collect()
}

fn keystore_migrate_copy_serves_every_key_on_the_same_token(env: &mut TestEnv) {
    if !env.requires_sqlite("migrates a SQLite file to another file") {
        return;
    }
    let keys = env.init_with_keys(true, b"migrated data");
    let c = env.client();
    let args = KeypairCreateArgs {
        kek: Some(keys.kek.clone()),
        label: Some("signer".into()),
        on_token: false,
        alg: Some("ed25519".into()),
        ssh: None,
        limits: None,
    };
    let kp = c
        .run(|c| c.keypair_create(&args))
        .expect("keypair.create")
        .id;
    let sig = c.run(|c| c.sign(&kp, b"hello", false)).expect("sign");
    let exported = c.run(|c| c.dek_export(&keys.dek)).expect("dek.export");
    let source = env.keystore_path();
    let before = rows(&source);

    let dest_dir = env.dir().join("moved");
    let dest = dest_dir.join("keystore.db");
    let v = env.cli_json(
        &["keystore", "migrate", "--to", dest.to_str().unwrap()],
        None,
    );
    assert_eq!(v["to"], dest.to_str().unwrap());
    let tables = &v["tables"];
    for (table, n) in &before {
        assert_eq!(tables[table].as_i64(), Some(*n), "{table}: {v}");
    }
    assert!(tables["keys"].as_i64().unwrap() >= 5, "{v}");
    // The first device's row (made at `init`) came along.
    assert_eq!(tables["devices"].as_i64(), Some(1), "{v}");
    // The source is unchanged, and the agent still serves it.
    assert_eq!(rows(&source), before);
    env.assert_intact(&keys);

    // Switch: stop, point `keystore` at the copy, start on the same token.
    drop(c);
    env.stop();
    env.move_keystore_to(&dest_dir);
    env.start_agent();
    let c = env.client();
    assert!(c.hello_info().locked);
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock on the copy");
    env.assert_intact(&keys);
    let c = env.client();
    let again = c.run(|c| c.dek_export(&keys.dek)).expect("dek.export");
    assert_eq!(again.key.expose(), exported.key.expose(), "the same DEK");
    // Ed25519 signatures are deterministic: the same key signs the same bytes.
    assert_eq!(c.run(|c| c.sign(&kp, b"hello", false)).expect("sign"), sig);
    let ct = c
        .run(|c| c.encrypt(&keys.dek, b"after the move"))
        .expect("encrypt");
    let pt = c.run(|c| c.decrypt(&ct, None)).expect("decrypt");
    assert_eq!(pt.expose(), b"after the move");
    // The copy is now the keystore in use: new keys land in it, the old file stays as it was.
    c.run(|c| c.kek_create(Some("new".into()))).expect("kek");
    assert_eq!(rows(&source), before);
}

fn keystore_migrate_refuses_bad_destinations_and_keeps_serving(env: &mut TestEnv) {
    if !env.requires_sqlite("migrates a SQLite file to another file") {
        return;
    }
    let keys = env.init_with_keys(false, b"stays put");
    let source = env.keystore_path();
    let before = rows(&source);

    // An existing, non-empty file: refused, and left as it was.
    let busy = env.dir().join("busy.db");
    std::fs::write(&busy, b"not yours").unwrap();
    let code = env.cli_json_err(
        &["keystore", "migrate", "--to", busy.to_str().unwrap()],
        None,
    );
    assert_eq!(code, "already_exists");
    assert_eq!(std::fs::read(&busy).unwrap(), b"not yours");
    // The keystore it serves.
    let code = env.cli_json_err(
        &["keystore", "migrate", "--to", source.to_str().unwrap()],
        None,
    );
    assert_eq!(code, "invalid_args");
    // A place nobody can write.
    let code = env.cli_json_err(
        &[
            "keystore",
            "migrate",
            "--to",
            "/proc/keyward-migrate/keystore.db",
        ],
        None,
    );
    assert_eq!(code, "keystore_error");
    // A URL of no backend this agent has (PostgreSQL destinations: keystore_postgres.rs).
    let code = env.cli_json_err(
        &["keystore", "migrate", "--to", "mysql://localhost/keyward"],
        None,
    );
    assert_eq!(code, "invalid_args");
    // Locked: refused before anything is opened.
    let fresh = env.dir().join("fresh.db");
    env.client().run(|c| c.lock()).expect("lock");
    let code = env.cli_json_err(
        &["keystore", "migrate", "--to", fresh.to_str().unwrap()],
        None,
    );
    assert_eq!(code, "locked");
    assert!(!fresh.exists());

    // Through all of it the agent kept serving, and its keystore did not change.
    env.assert_intact(&keys);
    assert_eq!(rows(&source), before);
}

/// A second `keywardd`, on the same token, started on the copy while the first keeps serving the
/// source: every key works through it.
fn keystore_migrate_a_second_agent_serves_the_copy_on_the_same_token(env: &mut TestEnv) {
    if !env.requires_sqlite("migrates a SQLite file to another file") {
        return;
    }
    let keys = env.init_with_keys(true, b"two agents");
    let c = env.client();
    let args = KeypairCreateArgs {
        kek: Some(keys.kek.clone()),
        label: Some("signer".into()),
        on_token: false,
        alg: Some("ed25519".into()),
        ssh: None,
        limits: None,
    };
    let kp = c
        .run(|c| c.keypair_create(&args))
        .expect("keypair.create")
        .id;
    let sig = c.run(|c| c.sign(&kp, b"hello", false)).expect("sign");
    let exported = c.run(|c| c.dek_export(&keys.dek)).expect("dek.export");
    let copy = env.dir().join("second").join("keystore.db");
    env.cli_json(
        &["keystore", "migrate", "--to", copy.to_str().unwrap()],
        None,
    );

    // The same config (same token) but `keystore` = the copy, and a socket of its own.
    let config = std::fs::read_to_string(env.config_path()).expect("config");
    let config: Vec<String> = config
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("keystore") && l.contains('=') {
                format!("keystore = {:?}", copy.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect();
    let config_path = env.dir().join("second.toml");
    std::fs::write(&config_path, config.join("\n") + "\n").expect("write config");
    let sock = env.dir().join("run2").join("agent.sock");
    let log = std::fs::File::create(env.dir().join("second.log")).expect("log");
    let mut second = Command::new(keyward_tests::process::bin("keywardd"))
        .arg("--config")
        .arg(&config_path)
        .env("KEYWARD_SOCK", &sock)
        .env_remove("KEYWARD_CONFIG")
        .env_remove("KEYWARD_LOG")
        .env_remove("KEYWARD_SSH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("second keywardd");
    let start = std::time::Instant::now();
    let c2 = loop {
        if let Ok(c) = keyward_tests::keyward_client::BlockingClient::connect(&sock) {
            break c;
        }
        assert!(
            second.try_wait().expect("try_wait").is_none(),
            "the second agent exited: {}",
            std::fs::read_to_string(env.dir().join("second.log")).unwrap_or_default()
        );
        assert!(
            start.elapsed().as_secs() < 30,
            "the second agent did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let checks = (|| -> Result<(), String> {
        c2.run(|c| c.unlock(pin(env.pin())))
            .map_err(|e| format!("unlock: {e}"))?;
        let pt = c2
            .run(|c| c.decrypt(&keys.ciphertext, None))
            .map_err(|e| format!("decrypt: {e}"))?;
        if pt.expose() != &keys.plaintext[..] {
            return Err("decrypt: another plaintext".into());
        }
        let again = c2
            .run(|c| c.dek_export(&keys.dek))
            .map_err(|e| format!("dek.export: {e}"))?;
        if again.key.expose() != exported.key.expose() {
            return Err("dek.export: another DEK".into());
        }
        let sig2 = c2
            .run(|c| c.sign(&kp, b"hello", false))
            .map_err(|e| format!("sign: {e}"))?;
        if sig2 != sig {
            return Err("sign: another signature (another key)".into());
        }
        let ct = c2
            .run(|c| c.encrypt(&keys.dek, b"from the second agent"))
            .map_err(|e| format!("encrypt: {e}"))?;
        // The first agent, on the source, opens what the second sealed: the same DEK.
        let pt = c
            .run(|c| c.decrypt(&ct, None))
            .map_err(|e| format!("decrypt on the first agent: {e}"))?;
        if pt.expose() != b"from the second agent" {
            return Err("decrypt on the first agent: another plaintext".into());
        }
        Ok(())
    })();
    drop(c2);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let st = keyward_tests::process::wait_exit(&mut second, "the second keywardd to stop");
    checks.unwrap_or_else(|e| {
        panic!(
            "{e}; second agent's log:\n{}",
            std::fs::read_to_string(env.dir().join("second.log")).unwrap_or_default()
        )
    });
    assert!(st.success(), "the second agent exited with {st}");
    env.assert_intact(&keys);
}
