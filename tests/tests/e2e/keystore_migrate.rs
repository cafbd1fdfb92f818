//! `keyward keystore migrate --to DEST`: the copy serves every key on the same token once the
//! agent is switched to it (stop, `keystore = DEST`, start); the source is never changed; bad
//! destinations get typed errors and the agent keeps serving.

use keyward_tests::keyward_proto::ops::KeypairCreateArgs;
use keyward_tests::{pin, TestEnv};
use std::path::Path;

keyward_tests::keyward_e2e_tests!(
    keystore_migrate_copy_serves_every_key_on_the_same_token,
    keystore_migrate_refuses_bad_destinations_and_keeps_serving,
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
    // A PostgreSQL URL: this agent has no such backend yet.
    let code = env.cli_json_err(
        &[
            "keystore",
            "migrate",
            "--to",
            "postgres://localhost/keyward",
        ],
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
