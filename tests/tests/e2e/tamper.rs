//! Issue 9, findings 1, 2, 5, 6, 7 (keystore file) and 9: a keystore edited behind the agent's
//! back (record MACs, the PIN counter), a wrong PIN sent to an unlocked agent, `init`
//! interrupted between making the root and recording it, deleting while locked, and a damaged
//! or freshly created keystore file.
//!
//! The edits are what any process of the user's uid can do: open the SQLite file and change it,
//! here while the agent runs (it sees the change at its next read) or while it is stopped.

use keyward_tests::keyward_client::BlockingClient;
use keyward_tests::keyward_proto::ops::{DekCreateArgs, NodeDeriveArgs, NodeRevokeArgs};
use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::{
    expect_code, mode, pin, wait_exit, wait_for, Keys, Options, TestEnv, UnlockPolicy, WRONG_PIN,
};
use rusqlite::Connection;
use std::process::Stdio;

keyward_tests::keyward_e2e_tests!(
    record_edits_are_refused_as_tampered,
    v3_keystore_is_adopted_at_first_unlock_then_protected,
    pin_counter_lowered_while_running_keeps_counting with Options {
        unlock: UnlockPolicy { max_attempts: 6, free_attempts: 6, backoff_base_ms: 1000, backoff_max_ms: 1000 },
        ..Options::default()
    },
    unreadable_pin_counter_counts_as_the_limit with Options {
        unlock: UnlockPolicy { max_attempts: 6, free_attempts: 6, backoff_base_ms: 1000, backoff_max_ms: 1000 },
        ..Options::default()
    },
    edited_pin_counter_is_tampered_at_the_next_unlock with Options {
        unlock: UnlockPolicy { max_attempts: 6, free_attempts: 6, backoff_base_ms: 1000, backoff_max_ms: 1000 },
        ..Options::default()
    },
    wrong_pin_to_an_unlocked_agent_counts_and_keeps_it_unlocked with Options {
        unlock: UnlockPolicy { max_attempts: 6, free_attempts: 6, backoff_base_ms: 1000, backoff_max_ms: 1000 },
        ..Options::default()
    },
    init_interrupted_after_the_root_is_made_completes_on_retry,
    keypair_delete_while_locked_is_refused,
    damaged_keystore_is_refused_naming_the_file,
    keystore_is_created_0600_under_umask_000,
);

fn db(env: &TestEnv) -> Connection {
    let c = Connection::open(env.keystore_path()).expect("open keystore");
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    c
}

/// `UPDATE table SET column = value WHERE id = id`; returns the statement that puts it back.
fn edit(c: &Connection, table: &str, id: &str, column: &str, value: &str) -> String {
    let old: String = c
        .query_row(
            &format!("SELECT quote({column}) FROM {table} WHERE id = ?1"),
            [id],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("read {table}.{column} of {id}: {e}"));
    let n = c
        .execute(
            &format!("UPDATE {table} SET {column} = {value} WHERE id = ?1"),
            [id],
        )
        .unwrap_or_else(|e| panic!("edit {table}.{column} of {id}: {e}"));
    assert_eq!(n, 1, "{table} {id}");
    format!("UPDATE {table} SET {column} = {old} WHERE id = '{id}'")
}

/// The call must be refused as `keystore_tampered`, naming `id`.
fn tampered<T: std::fmt::Debug>(
    r: Result<T, keyward_tests::keyward_client::ClientError>,
    id: &str,
    what: &str,
) {
    let e = expect_code(r, ErrorCode::KeystoreTampered);
    let msg = e.body().map(|b| b.message.clone()).unwrap_or_default();
    assert!(msg.contains(id), "{what}: the error names {id}: {msg}");
}

fn exportable_dek(c: &BlockingClient, kek: &str) -> String {
    let args = DekCreateArgs {
        kek: Some(kek.to_string()),
        exportable: true,
        ..Default::default()
    };
    c.run(|c| c.dek_create(&args)).expect("dek").id
}

fn record_edits_are_refused_as_tampered(env: &mut TestEnv) {
    if !env.requires_sqlite("edits rows in the SQLite file") {
        return;
    }
    let keys = env.init_with_keys(false, b"tamper");
    let c = env.client();
    let open_dek = exportable_dek(&c, &keys.kek);
    let kek2 = c.run(|c| c.kek_create(Some("other".into()))).unwrap().id;
    let node_args = NodeDeriveArgs {
        name: "web-1".into(),
        kek: Some(keys.kek.clone()),
        ..Default::default()
    };
    let node = c
        .run(|c| c.node_derive(&node_args))
        .expect("node derive")
        .id;
    let k = db(env);

    // Finding 1 as reported: one UPDATE made a non-exportable DEK exportable.
    let undo = edit(&k, "keys", &keys.dek, "exportable", "1");
    tampered(c.run(|c| c.dek_export(&keys.dek)), &keys.dek, "exportable");
    k.execute_batch(&undo).unwrap();
    expect_code(c.run(|c| c.dek_export(&keys.dek)), ErrorCode::NotExportable);

    // Every other column of a DEK: decrypt reads the record.
    let dek_edits: &[(&str, &str)] = &[
        ("purpose", "'sharing'"),
        ("state", "'retired'"),
        ("parent", &format!("'{kek2}'")),
        ("label", "'renamed'"),
        ("scheme", "'aes-kw'"),
        ("version", "7"),
        ("created", "1"),
        ("rotated", "5"),
        ("public_key", "x'01'"),
        ("locator", "'pkcs11:object=x'"),
        ("mac", "NULL"),
        ("mac", "x'00'"),
        ("wrapped", "x'0011223344556677'"),
    ];
    for (column, value) in dek_edits {
        let undo = edit(&k, "keys", &keys.dek, column, value);
        tampered(
            c.run(|c| c.decrypt(&keys.ciphertext, None)),
            &keys.dek,
            column,
        );
        k.execute_batch(&undo).unwrap();
        let pt = c.run(|c| c.decrypt(&keys.ciphertext, None)).unwrap();
        assert_eq!(pt.expose(), &keys.plaintext[..], "after undoing {column}");
    }

    // The wrapped bytes of an exportable and a non-exportable DEK swapped: exporting the first
    // must not hand out the second's key.
    k.execute_batch(&format!(
        "UPDATE keys SET wrapped = (SELECT wrapped FROM keys WHERE id = '{b}') WHERE id = '{a}';",
        a = open_dek,
        b = keys.dek
    ))
    .unwrap();
    tampered(
        c.run(|c| c.dek_export(&open_dek)),
        &open_dek,
        "swapped wrapped",
    );
    // A whole row's MAC moved with its bytes is still wrong (the MAC covers the id).
    k.execute_batch(&format!(
        "UPDATE keys SET mac = (SELECT mac FROM keys WHERE id = '{b}') WHERE id = '{a}';",
        a = open_dek,
        b = keys.dek
    ))
    .unwrap();
    tampered(c.run(|c| c.dek_export(&open_dek)), &open_dek, "swapped mac");

    // A KEK, a node key's name, issuer, statement and algorithm.
    let undo = edit(&k, "keys", &keys.kek, "label", "'x'");
    tampered(c.run(|c| c.kek_list()), &keys.kek, "kek label");
    k.execute_batch(&undo).unwrap();
    for (column, value) in [
        ("name", "'web-2'"),
        ("issuer", "NULL"),
        ("statement", "x'a0'"),
        ("algorithm", "'ed25519'"),
    ] {
        let undo = edit(&k, "keys", &node, column, value);
        tampered(c.run(|c| c.keypair_show(&node)), &node, column);
        k.execute_batch(&undo).unwrap();
        c.run(|c| c.keypair_show(&node)).expect("after undo");
    }

    // A revocation.
    let revoke = NodeRevokeArgs {
        name: "web-1".into(),
        by: None,
    };
    c.run(|c| c.node_revoke(&revoke)).expect("revoke");
    let rev: String = k
        .query_row("SELECT id FROM revocations", [], |r| r.get(0))
        .unwrap();
    let undo = edit(&k, "revocations", &rev, "statement", "x'a1'");
    tampered(c.run(|c| c.node_chain(None)), &rev, "revocation");
    k.execute_batch(&undo).unwrap();
    c.run(|c| c.node_chain(None)).expect("chain after undo");

    // The root record is read at unlock.
    let root: String = k
        .query_row("SELECT id FROM keys WHERE kind = 'root'", [], |r| r.get(0))
        .unwrap();
    c.run(|c| c.lock()).unwrap();
    let undo = edit(&k, "keys", &root, "label", "'not the root'");
    tampered(c.run(|c| c.unlock(pin(env.pin()))), &root, "root");
    assert!(
        c.run(|c| c.status()).unwrap().locked,
        "a refused unlock stays locked"
    );
    k.execute_batch(&undo).unwrap();
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock after undo");

    // The integrity key itself: removed (with every MAC) it is not re-made.
    c.run(|c| c.lock()).unwrap();
    k.execute_batch(
        "PRAGMA foreign_keys = OFF;
         DELETE FROM keys WHERE kind = 'integrity';
         UPDATE keys SET mac = NULL; UPDATE revocations SET mac = NULL;",
    )
    .unwrap();
    expect_code(
        c.run(|c| c.unlock(pin(env.pin()))),
        ErrorCode::KeystoreTampered,
    );
    drop(c);
    assert!(env.log().contains("keystore"), "the refusal is logged");
}

/// A keystore as an agent before schema v4 left it: no MACs, no integrity key.
fn downgrade_to_v3(env: &TestEnv) {
    let k = db(env);
    k.execute_batch(
        "PRAGMA foreign_keys = OFF;
         DELETE FROM keys WHERE kind = 'integrity';
         ALTER TABLE keys DROP COLUMN mac;
         ALTER TABLE revocations DROP COLUMN mac;
         DELETE FROM meta WHERE name LIKE 'pin_failures%' OR name LIKE 'integrity%' OR name LIKE 'root_set%';
         DROP TABLE IF EXISTS kek_rotation_wraps;
         DROP TABLE IF EXISTS kek_wraps;
         DROP TABLE IF EXISTS kek_rotation_items;
         DROP TABLE IF EXISTS kek_rotations;
         DROP TABLE IF EXISTS key_versions;
         PRAGMA user_version = 3;",
    )
    .unwrap();
}

fn v3_keystore_is_adopted_at_first_unlock_then_protected(env: &mut TestEnv) {
    if !env.requires_sqlite("rewrites the SQLite file as a v3 keystore") {
        return;
    }
    let keys = env.init_with_keys(false, b"upgrade");
    env.stop();
    downgrade_to_v3(env);
    env.start_agent();
    let c = env.client();
    assert!(c.hello_info().locked);
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("first unlock after the migration");
    assert!(
        env.log().contains("trust-on-upgrade"),
        "the trust-on-upgrade step is logged"
    );
    let pt = c.run(|c| c.decrypt(&keys.ciphertext, None)).unwrap();
    assert_eq!(pt.expose(), &keys.plaintext[..]);
    // From now on the records are protected, across restarts.
    drop(c);
    env.restart();
    let c = env.client();
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    let k = db(env);
    edit(&k, "keys", &keys.dek, "exportable", "1");
    tampered(
        c.run(|c| c.dek_export(&keys.dek)),
        &keys.dek,
        "after upgrade",
    );
    // Marking the file "upgrade pending" again adopts nothing: the integrity key exists.
    k.execute("UPDATE keys SET mac = NULL WHERE id = ?1", [&keys.dek])
        .unwrap();
    k.execute(
        "INSERT INTO meta (name, value) VALUES ('integrity_upgrade', 'pending')",
        [],
    )
    .unwrap();
    c.run(|c| c.lock()).unwrap();
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    tampered(c.run(|c| c.dek_export(&keys.dek)), &keys.dek, "re-marked");
}

fn wrong(c: &BlockingClient) -> u32 {
    let e = expect_code(c.run(|c| c.unlock(pin(WRONG_PIN))), ErrorCode::PinIncorrect);
    e.body().unwrap().attempts_left.expect("attempts_left")
}

fn set_meta(env: &TestEnv, name: &str, value: &str) {
    db(env)
        .execute(
            "INSERT INTO meta (name, value) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [name, value],
        )
        .unwrap();
}

fn reset_pin_attempts(env: &mut TestEnv) {
    let mut cmd = env.agent_command();
    cmd.arg("reset-pin-attempts")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn reset-pin-attempts");
    let st = wait_exit(&mut child, "keywardd reset-pin-attempts");
    assert!(st.success(), "reset-pin-attempts failed");
}

fn pin_counter_lowered_while_running_keeps_counting(env: &mut TestEnv) {
    if !env.requires_sqlite("edits the PIN counter in the SQLite file") {
        return;
    }
    env.init_with_keys(false, b"counter");
    let c = env.client();
    c.run(|c| c.lock()).unwrap();
    assert_eq!(wrong(&c), 5);
    assert_eq!(wrong(&c), 4);
    // Another process of the user resets the stored counter: the agent remembers.
    set_meta(env, "pin_failures", "0");
    assert_eq!(wrong(&c), 3, "the running agent never lowers its count");
    c.run(|c| c.unlock(pin(env.pin()))).expect("right PIN");
    c.run(|c| c.lock()).unwrap();
    assert_eq!(wrong(&c), 5, "a good unlock resets the count");
}

fn unreadable_pin_counter_counts_as_the_limit(env: &mut TestEnv) {
    if !env.requires_sqlite("edits the PIN counter in the SQLite file") {
        return;
    }
    let keys = env.init_with_keys(false, b"counter");
    env.stop();
    set_meta(env, "pin_failures", "zero");
    env.start_agent();
    let c = env.client();
    expect_code(c.run(|c| c.unlock(pin(env.pin()))), ErrorCode::PinLocked);
    drop(c);
    env.stop();
    reset_pin_attempts(env);
    env.start_agent();
    env.assert_intact(&keys);
}

fn edited_pin_counter_is_tampered_at_the_next_unlock(env: &mut TestEnv) {
    if !env.requires_sqlite("edits the PIN counter in the SQLite file") {
        return;
    }
    let keys = env.init_with_keys(false, b"counter");
    let c = env.client();
    // While unlocked, a wrong PIN is counted and the count is MAC'd.
    assert_eq!(wrong(&c), 5);
    c.run(|c| c.lock()).unwrap();
    assert_eq!(wrong(&c), 4);
    assert_eq!(wrong(&c), 3);
    drop(c);
    // Stopped agent, count lowered to what the MAC'd value said plus nothing: the stored MAC no
    // longer matches.
    env.stop();
    let k = db(env);
    let mac: Option<String> = k
        .query_row(
            "SELECT value FROM meta WHERE name = 'pin_failures_mac'",
            [],
            |r| r.get(0),
        )
        .ok();
    drop(k);
    // Forge: count 0 with the MAC of an earlier count (or any MAC).
    set_meta(env, "pin_failures", "0");
    set_meta(
        env,
        "pin_failures_mac",
        mac.as_deref().unwrap_or("00112233"),
    );
    env.start_agent();
    let c = env.client();
    tampered(
        c.run(|c| c.unlock(pin(env.pin()))),
        "pin_failures",
        "counter",
    );
    assert!(c.run(|c| c.status()).unwrap().locked);
    assert!(
        env.log().contains("PIN counter"),
        "the tampered counter is logged"
    );
    drop(c);
    env.stop();
    reset_pin_attempts(env);
    env.start_agent();
    env.assert_intact(&keys);
}

fn wrong_pin_to_an_unlocked_agent_counts_and_keeps_it_unlocked(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"finding 5");
    let c = env.client();
    assert_eq!(wrong(&c), 5);
    assert!(!c.run(|c| c.status()).unwrap().locked);
    // The token is still logged in: key operations work.
    let pt = c
        .run(|c| c.decrypt(&keys.ciphertext, None))
        .expect("decrypt");
    assert_eq!(pt.expose(), &keys.plaintext[..]);
    assert_eq!(wrong(&c), 4, "counted");
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("the right PIN is OK");
    c.run(|c| c.kek_create(None)).expect("still unlocked");
    c.run(|c| c.lock()).unwrap();
    assert_eq!(wrong(&c), 5, "the right PIN reset the count");
}

fn init_interrupted_after_the_root_is_made_completes_on_retry(env: &mut TestEnv) {
    env.stop();
    // Start an agent that aborts (like kill -9) right after the root exists in the token and
    // before the keystore records it.
    let mut cmd = env.agent_command();
    cmd.env("KEYWARD_TEST_CRASH_AFTER", "root-created")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn keywardd");
    let sock = env.socket_path().to_path_buf();
    wait_for("the crashing agent to listen", || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    let mut args = env.init_args();
    args.insert(0, "--json");
    let out = env.cli(&args, Some(env.pin().as_bytes()));
    assert!(!out.status.success(), "init should not have been answered");
    let st = wait_exit(&mut child, "the agent to abort");
    assert!(!st.success());

    env.start_agent();
    let c = env.client();
    assert!(!c.hello_info().initialized);
    // The retried init completes with the root the token now holds.
    c.run(|c| c.init(pin(env.pin())))
        .expect("init after the crash");
    let keys = {
        let kek = c.run(|c| c.kek_create(None)).unwrap().id;
        let args = DekCreateArgs {
            kek: Some(kek.clone()),
            ..Default::default()
        };
        let dek = c.run(|c| c.dek_create(&args)).unwrap().id;
        let ciphertext = c.run(|c| c.encrypt(&dek, b"after crash")).unwrap();
        Keys {
            kek,
            dek,
            ciphertext,
            plaintext: b"after crash".to_vec(),
        }
    };
    drop(c);
    env.restart();
    env.assert_intact(&keys);
}

fn keypair_delete_while_locked_is_refused(env: &mut TestEnv) {
    env.init_with_keys(false, b"k");
    let c = env.client();
    let args = Default::default();
    let kp = c.run(|c| c.keypair_create(&args)).expect("keypair").id;
    c.run(|c| c.lock()).unwrap();
    expect_code(c.run(|c| c.keypair_delete(&kp)), ErrorCode::Locked);
    c.run(|c| c.unlock(pin(env.pin()))).unwrap();
    c.run(|c| c.keypair_show(&kp)).expect("still there");
    c.run(|c| c.keypair_delete(&kp))
        .expect("deleted when unlocked");
}

fn damaged_keystore_is_refused_naming_the_file(env: &mut TestEnv) {
    if !env.requires_sqlite("damages the SQLite file") {
        return;
    }
    env.init_with_keys(false, b"damage");
    let c = env.client();
    let kek = c.run(|c| c.kek_list()).unwrap().keys[0].id.clone();
    // Enough keys for several pages of rows and of index.
    for _ in 0..60 {
        exportable_dek(&c, &kek);
    }
    drop(c);
    env.stop();
    let path = env.keystore_path();
    let (page_size, index_page): (u64, u64) = {
        let k = db(env);
        let ps = k
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64;
        let ip = k
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'keys_by_parent'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as u64;
        (ps, ip)
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let pages = bytes.len() as u64 / page_size;
    assert!(pages >= 4, "only {pages} pages");
    // The end of the index's root page (where its cells are: the header stays intact), and a
    // whole page in the middle of the file.
    let mut flip = |from: u64, len: u64| {
        for b in &mut bytes[from as usize..(from + len) as usize] {
            *b ^= 0x5a;
        }
    };
    flip(index_page * page_size - 1024, 1024);
    flip((pages / 2) * page_size, page_size);
    std::fs::write(&path, &bytes).unwrap();

    // SQLite's full check runs just after the socket is up (integrity.rs). Damage that already
    // breaks opening stops keywardd at start; damage only the check finds leaves it serving
    // `status` and refusing every key operation. Either way the message names the file.
    let errlog = env.dir().join("damaged.log");
    let mut child = env
        .agent_command()
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errlog).unwrap())
        .spawn()
        .expect("run keywardd");
    let start = std::time::Instant::now();
    let exited = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::os::unix::net::UnixStream::connect(env.socket_path()).is_ok() {
            break None;
        }
        if start.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "keywardd neither listened nor stopped: {}",
                std::fs::read_to_string(&errlog).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let err = match exited {
        Some(st) => {
            let err = std::fs::read_to_string(&errlog).unwrap_or_default();
            assert!(!st.success(), "{err}");
            assert!(!env.socket_path().exists(), "no socket");
            err
        }
        None => {
            let s = keyward_tests::wait_for("the keystore check to end", || {
                let s = env.cli_json(&["status"], None);
                (s["keystore_check"]["state"] != "checking").then_some(s)
            });
            assert_eq!(s["keystore_check"]["state"], "failed", "{s}");
            let pin_line = format!("{}\n", env.pin());
            let out = env.cli(&["unlock", "--pin-stdin"], Some(pin_line.as_bytes()));
            assert_eq!(out.status.code(), Some(1), "unlock is refused");
            assert_eq!(env.cli_json_err(&["kek", "list"], None), "keystore_error");
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            child.wait().unwrap();
            let log = std::fs::read_to_string(&errlog).unwrap_or_default();
            assert!(log.contains("keystore check FAILED"), "{log}");
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };
    assert!(
        err.contains(&path.display().to_string()),
        "the message names the file: {err}"
    );
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "never re-created");
}

fn keystore_is_created_0600_under_umask_000(env: &mut TestEnv) {
    if !env.requires_sqlite("checks the SQLite file's mode") {
        return;
    }
    env.stop();
    let path = env.keystore_path();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    // `keywardd reset-pin-attempts` opens (so creates) the keystore and exits. Under umask 000,
    // and traced where strace works: the keystore must be created 0600, not created with the
    // umask's mode and chmod-ed after.
    let trace = env.dir().join("open.trace");
    let traced = std::process::Command::new("strace")
        .args(["-o", "/dev/null", "true"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let agent = env.agent_command();
    let mut cmd = if traced {
        let mut c = std::process::Command::new("strace");
        c.args([
            "-f",
            "-qq",
            "-e",
            "trace=openat,chmod,fchmod,fchmodat",
            "-o",
        ])
        .arg(&trace)
        .arg("sh");
        c
    } else {
        std::process::Command::new("sh")
    };
    cmd.arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(agent.get_program())
        .args(agent.get_args())
        .arg("reset-pin-attempts");
    for (k, v) in agent.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run keywardd");
    assert!(
        out.status.success(),
        "keywardd reset-pin-attempts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&path), 0o600);
    if traced {
        let t = std::fs::read_to_string(&trace).unwrap_or_default();
        let name = format!("{}\"", path.display());
        let created = t
            .lines()
            .find(|l| l.contains("openat(") && l.contains(&name) && l.contains("O_CREAT"))
            .unwrap_or_else(|| panic!("no O_CREAT open of the keystore in the trace:\n{t}"));
        assert!(
            created.contains(", 0600)"),
            "the keystore is created 0600: {created}"
        );
    } else {
        eprintln!("strace does not work here: checked the final mode only");
    }
    env.start_agent();
    env.init();
    for suffix in ["", "-wal", "-shm"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
}
