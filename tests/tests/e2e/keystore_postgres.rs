//! keywardd on a PostgreSQL keystore (`keystore = "postgres://..."`), on a SoftHSM token, against
//! a real PostgreSQL server (`postgres-setup.sh`, never skipped): init, KEK and DEK, encrypt and
//! decrypt, a restart on the same database; and `keystore migrate` SQLite -> PostgreSQL ->
//! SQLite, the agent switched to each copy in turn with every key working.

use keyward_tests::keyward_proto::ops::KeypairCreateArgs;
use keyward_tests::postgres::server;
use keyward_tests::{pin, RootKind, TestEnv};

/// An agent whose config names a fresh PostgreSQL database (it starts on SQLite: stop, switch,
/// start).
fn agent_on_postgres() -> (TestEnv, String) {
    let mut env = TestEnv::start(RootKind::Pkcs11);
    let location = server().database();
    env.stop();
    env.set_keystore(&location);
    env.start_agent();
    (env, location)
}

#[test]
fn keystore_postgres_serves_keys_and_keeps_them_across_a_restart() {
    let (mut env, location) = agent_on_postgres();
    let c = env.client();
    let status = c.run(|c| c.status()).expect("status");
    let shown = status.keystore.clone().unwrap_or_default();
    assert!(shown.starts_with("postgres://keyward@"), "{shown}");
    assert!(!shown.contains("passfile"), "{shown}");
    drop(c);

    let keys = env.init_with_keys(true, b"kept in postgres");
    let c = env.client();
    let ct = c
        .run(|c| c.encrypt(&keys.dek, b"round trip"))
        .expect("encrypt");
    let pt = c.run(|c| c.decrypt(&ct, None)).expect("decrypt");
    assert_eq!(pt.expose(), b"round trip");
    let exported = c.run(|c| c.dek_export(&keys.dek)).expect("dek.export");
    // The rows are in the database, not in a file beside the config.
    assert!(server().count(&location, "keys") >= 4);
    drop(c);

    // Restart: the same database, locked until unlocked, every key as it was.
    env.stop();
    env.start_agent();
    let c = env.client();
    assert!(c.hello_info().locked);
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    let pt = c
        .run(|c| c.decrypt(&ct, None))
        .expect("decrypt after restart");
    assert_eq!(pt.expose(), b"round trip");
    let again = c.run(|c| c.dek_export(&keys.dek)).expect("dek.export");
    assert_eq!(again.key.expose(), exported.key.expose(), "the same DEK");
    drop(c);
    env.assert_intact(&keys);
    // The audit log of an agent on a database lies beside its config file.
    assert!(
        env.config_path().with_file_name("audit.log").exists(),
        "audit log beside the config; log:\n{}",
        env.log()
    );
}

#[test]
fn keystore_postgres_migrate_sqlite_to_postgres_and_back_keeps_every_key() {
    if !keyward_tests::requires_sqlite("starts from a SQLite keystore file") {
        return;
    }
    let mut env = TestEnv::start(RootKind::Pkcs11);
    let keys = env.init_with_keys(true, b"moved twice");
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
    drop(c);

    // SQLite -> PostgreSQL, copied and checked by the agent serving the file.
    let location = server().database();
    let v = env.cli_json(&["keystore", "migrate", "--to", &location], None);
    assert_eq!(v["to"], location.as_str(), "{v}");
    let copied = v["tables"]["keys"].as_i64().expect("keys copied");
    assert!(copied >= 5, "{v}");
    assert_eq!(server().count(&location, "keys"), copied);
    // Not twice into the same database.
    let code = env.cli_json_err(&["keystore", "migrate", "--to", &location], None);
    assert_eq!(code, "already_exists");

    // Switch the agent to the database: every key works.
    let check = |env: &mut TestEnv| {
        let c = env.client();
        assert!(c.hello_info().locked);
        c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
        let again = c.run(|c| c.dek_export(&keys.dek)).expect("dek.export");
        assert_eq!(again.key.expose(), exported.key.expose(), "the same DEK");
        assert_eq!(c.run(|c| c.sign(&kp, b"hello", false)).expect("sign"), sig);
        drop(c);
        env.assert_intact(&keys);
    };
    env.stop();
    env.set_keystore(&location);
    env.start_agent();
    check(&mut env);
    // The database it serves is no destination.
    let code = env.cli_json_err(&["keystore", "migrate", "--to", &location], None);
    assert_eq!(code, "invalid_args");
    // `backup export` copies files: refused for a database, naming why.
    let dump = env.dir().join("b.db");
    let out = env.cli(
        &["backup", "export", "--output", dump.to_str().unwrap()],
        None,
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("PostgreSQL keystore"), "{said}");
    assert!(!dump.exists());

    // PostgreSQL -> SQLite, and the agent on that file: every key still works.
    let back = env.dir().join("back").join("keystore.db");
    let v = env.cli_json(
        &["keystore", "migrate", "--to", back.to_str().unwrap()],
        None,
    );
    assert_eq!(v["tables"]["keys"].as_i64(), Some(copied), "{v}");
    env.stop();
    env.set_keystore(back.to_str().unwrap());
    env.start_agent();
    check(&mut env);
}

/// A database that does not answer: keywardd stops at start within the connect timeout, saying
/// the keystore is unavailable, and never falls back to a SQLite file.
#[test]
fn keystore_postgres_down_at_start_stops_the_agent_naming_it() {
    let mut env = TestEnv::start(RootKind::Pkcs11);
    env.stop();
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let passfile = server().passfile();
    env.set_keystore(&format!(
        "postgres://keyward@127.0.0.1:{port}/keyward?sslmode=disable&connect_timeout=2&passfile={}",
        passfile.display()
    ));
    // The SQLite file the config named before (none on the PostgreSQL backend).
    let file = env.dir().join("keystore.db");
    let before = std::fs::metadata(&file).map(|m| m.len()).ok();
    let started = std::time::Instant::now();
    let out = env
        .agent_command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run keywardd");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("unavailable"), "{said}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{said}"
    );
    assert!(!env.socket_path().exists());
    // The SQLite file beside the config was not touched.
    assert_eq!(std::fs::metadata(&file).map(|m| m.len()).ok(), before);
}
