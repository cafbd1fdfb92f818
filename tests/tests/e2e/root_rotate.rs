//! `keyward root rotate` through the real socket and CLI (PKCS#11: a second SoftHSM token
//! `backup`; soft: a second passphrase): the agent locks after the rotation, restarted on the new
//! root's configuration it decrypts everything, and the old root opens nothing; `--destroy-old`
//! removes the old root object from its token (as `pkcs11-tool --list-objects` sees it);
//! `--compromised` lists every DEK and rotates every KEK at the new root's unlock, and replaces
//! the keystore integrity key there (a crash before that commit leaves the old one); `kill -9` at
//! crash points and at random delays during rotations over a few hundred DEKs loses nothing;
//! bad input is typed and the agent keeps serving.

use super::roots::{same_token_config, second_root};
use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::{expect_code, pin, wait_exit, wait_for, RootKind, TestEnv};
use std::path::PathBuf;
use std::process::{Command, Stdio};

keyward_tests::keyward_e2e_tests!(
    root_rotate_moves_everything_to_the_new_root_and_the_old_opens_nothing,
    root_rotate_destroy_old_removes_the_old_root_object,
    root_rotate_compromised_lists_deks_and_rotates_every_kek,
    root_rotate_compromised_replaces_the_integrity_key_even_after_a_crash,
    root_rotate_killed_at_any_point_loses_nothing,
    root_rotate_bad_input_is_typed_and_the_agent_keeps_serving,
    root_rotate_to_another_object_on_the_same_token,
    root_rotate_on_the_same_token_killed_at_any_point_loses_nothing,
);

/// The two roots of a test: (config, secret) of each; `a` is the one `init` made.
struct Roots {
    a: (PathBuf, &'static str),
    b: (PathBuf, &'static str),
}

fn two_configs(env: &TestEnv) -> Roots {
    let a = env.dir().join("a.toml");
    std::fs::copy(env.config_path(), &a).expect("copy config");
    let (b, secret) = second_root(env);
    let b = if b == env.config_path() {
        // Soft: the same configuration, another passphrase.
        a.clone()
    } else {
        b
    };
    Roots {
        a: (a, env.pin()),
        b: (b, secret),
    }
}

fn rotate(env: &TestEnv, to: &(PathBuf, &str), extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "root",
        "rotate",
        "--config",
        to.0.to_str().unwrap(),
        "--pin-stdin",
    ];
    args.extend_from_slice(extra);
    env.cli_json(&args, Some(format!("{}\n", to.1).as_bytes()))
}

/// Restart the agent on `on`'s configuration and unlock it with its secret.
fn restart_on(env: &mut TestEnv, on: &(PathBuf, &str)) -> keyward_client::BlockingClient {
    if env.is_running() {
        env.stop();
    }
    std::fs::copy(&on.0, env.config_path()).expect("config");
    env.start_agent();
    let c = env.client();
    c.run(|c| c.unlock(pin(on.1))).expect("unlock");
    c
}

fn decrypts(c: &keyward_client::BlockingClient, data: &[(String, Vec<u8>)]) {
    for (ct, pt) in data {
        assert_eq!(
            c.run(|c| c.decrypt(ct, None)).expect("decrypt").expose(),
            &pt[..]
        );
    }
}

/// The root rows' ids, read from the keystore (either backend).
fn root_ids(env: &TestEnv) -> Vec<String> {
    env.keystore_rows("SELECT id FROM keys WHERE kind = 'root' ORDER BY created, id")
}

fn current(env: &TestEnv) -> String {
    let v = env.cli_json(&["root", "list"], None);
    v["roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What `pkcs11-tool --list-objects` shows on SoftHSM token `label` of this test.
fn objects(env: &TestEnv, label: &str, pin: &str) -> String {
    let out = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", env.dir().join("softhsm2.conf"))
        .args(["--module", "/usr/lib/softhsm/libsofthsm2.so"])
        .args([
            "--token-label",
            label,
            "--login",
            "--pin",
            pin,
            "--list-objects",
        ])
        .output()
        .expect("pkcs11-tool");
    assert!(out.status.success(), "pkcs11-tool: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn root_rotate_moves_everything_to_the_new_root_and_the_old_opens_nothing(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"before the rotation");
    let roots = two_configs(env);
    let old = current(env);
    let data = vec![(keys.ciphertext.clone(), keys.plaintext.clone())];
    let r = rotate(env, &roots.b, &["--label", "new"]);
    assert_eq!(r["old"], old.as_str(), "{r}");
    assert_eq!(r["enrolled"], true, "{r}");
    // The KEK and the keystore integrity KEK.
    assert_eq!(r["moved"], 2, "{r}");
    let new = r["id"].as_str().unwrap().to_string();
    // The agent locked itself; only the new root is enrolled.
    let c = env.client();
    assert!(c.hello_info().locked);
    assert_eq!(root_ids(env), vec![new.clone()]);
    drop(c);
    // Restarted on the new root's configuration: everything decrypts, and new data too.
    let c = restart_on(env, &roots.b);
    decrypts(&c, &data);
    assert_eq!(current(env), new);
    let kek2 = c
        .run(|c| c.kek_create(None))
        .expect("a KEK under the new root");
    assert!(!kek2.id.is_empty());
    drop(c);
    // The old root (its token object, or its passphrase) opens nothing any more.
    env.stop();
    std::fs::copy(&roots.a.0, env.config_path()).unwrap();
    env.start_agent();
    let c = env.client();
    let e = c
        .run(|c| c.unlock(pin(roots.a.1)))
        .expect_err("the old root must not unlock");
    eprintln!("unlock on the old root: {e}");
    assert!(c.hello_info().locked);
    drop(c);
    let c = restart_on(env, &roots.b);
    decrypts(&c, &data);
}

fn root_rotate_destroy_old_removes_the_old_root_object(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"destroy the old one");
    let roots = two_configs(env);
    let pkcs11 = env.kind() == RootKind::Pkcs11;
    if pkcs11 {
        assert!(objects(env, "keyward", env.pin()).contains("keyward-root"));
    }
    let r = rotate(env, &roots.b, &["--destroy-old"]);
    if pkcs11 {
        assert!(
            r["destroyed"]
                .as_str()
                .is_some_and(|d| d.contains("keyward-root")),
            "{r}"
        );
        let left = objects(env, "keyward", env.pin());
        assert!(!left.contains("keyward-root"), "{left}");
        // The new root's object is on the backup token.
        assert!(objects(env, "backup", roots.b.1).contains("keyward-root"));
    } else {
        // A passphrase root is no object.
        assert!(r["destroyed"].is_null(), "{r}");
        assert!(r["not_destroyed"].as_str().is_some(), "{r}");
    }
    let c = restart_on(env, &roots.b);
    decrypts(&c, &[(keys.ciphertext.clone(), keys.plaintext.clone())]);
}

fn root_rotate_compromised_lists_deks_and_rotates_every_kek(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"compromised");
    let c = env.client();
    let kek2 = c.run(|c| c.kek_create(None)).unwrap().id;
    let args = keyward_tests::keyward_proto::ops::DekCreateArgs {
        kek: Some(kek2.clone()),
        ..Default::default()
    };
    let dek2 = c.run(|c| c.dek_create(&args)).unwrap().id;
    let pt2 = b"under the second KEK".to_vec();
    let data = vec![
        (keys.ciphertext.clone(), keys.plaintext.clone()),
        (c.run(|c| c.encrypt(&dek2, &pt2)).unwrap(), pt2),
    ];
    drop(c);
    let roots = two_configs(env);
    let r = rotate(env, &roots.b, &["--compromised"]);
    let mut deks: Vec<&str> = r["deks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    deks.sort();
    let mut want = vec![keys.dek.as_str(), dek2.as_str()];
    want.sort();
    assert_eq!(deks, want, "{r}");
    assert_eq!(r["keks"].as_array().unwrap().len(), 2, "{r}");
    // The agent on the new root rotates every KEK at its unlock: version 2 each.
    let c = restart_on(env, &roots.b);
    let listed = c.run(|c| c.kek_list()).unwrap().keys;
    for kek in [&keys.kek, &kek2] {
        let k = listed.iter().find(|k| &k.id == kek).unwrap();
        assert_eq!(k.version, 2, "{kek}");
    }
    decrypts(&c, &data);
    // Only once: another restart leaves them at version 2.
    drop(c);
    let c = restart_on(env, &roots.b);
    let listed = c.run(|c| c.kek_list()).unwrap().keys;
    assert!(listed.iter().all(|k| k.version == 2));
    decrypts(&c, &data);
}

/// The ids of the keystore integrity records, read straight from the keystore.
fn integrity_ids(env: &TestEnv) -> Vec<String> {
    env.keystore_rows("SELECT id FROM keys WHERE kind = 'integrity' ORDER BY id")
}

fn rekey_mark(env: &TestEnv) -> bool {
    env.keystore_count("meta WHERE name = 'root_rotate_rekey_integrity'") == 1
}

/// `--compromised`: the first unlock on the new root replaces the integrity key. Killed just
/// before that commit, the keystore keeps the old integrity records and the mark; the next
/// unlock replaces them, and everything decrypts throughout.
fn root_rotate_compromised_replaces_the_integrity_key_even_after_a_crash(env: &mut TestEnv) {
    // With an audit log: its signing key derives from the integrity key, so it changes too.
    env.stop();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!("{cfg}\n[audit]\ncheckpoint_every = 4\n"),
    )
    .unwrap();
    env.start_agent();
    let keys = env.init_with_keys(false, b"integrity");
    let data = vec![(keys.ciphertext.clone(), keys.plaintext.clone())];
    let before = integrity_ids(env);
    assert_eq!(before.len(), 2);
    let roots = two_configs(env);
    rotate(env, &roots.b, &["--compromised"]);
    assert!(rekey_mark(env));
    // The first unlock on the new root aborts just before the replacement's commit.
    env.stop();
    std::fs::copy(&roots.b.0, env.config_path()).unwrap();
    let mut cmd = env.agent_command();
    cmd.env("KEYWARD_TEST_CRASH_AFTER", "integrity-rekey-before-commit")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn keywardd");
    let sock = env.socket_path().to_path_buf();
    wait_for("the crashing agent to listen", || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    let c = env.client();
    assert!(c.run(|c| c.unlock(pin(roots.b.1))).is_err(), "not a crash");
    drop(c);
    assert!(!wait_exit(&mut child, "the agent to abort").success());
    assert_eq!(integrity_ids(env), before);
    assert!(rekey_mark(env));
    // The next unlock replaces it.
    let c = restart_on(env, &roots.b);
    decrypts(&c, &data);
    let after = integrity_ids(env);
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|id| !before.contains(id)), "{after:?}");
    assert!(!rekey_mark(env));
    // And only once.
    drop(c);
    let c = restart_on(env, &roots.b);
    decrypts(&c, &data);
    assert_eq!(integrity_ids(env), after);
    // The audit log spans the switch: checkpoints before it are signed by the old audit key
    // (kept, MAC'd, in `audit_key_previous`), those after by the new one; `audit verify` checks
    // each with the key of its time, and the keystore's rows verify under the new MAC key.
    let out = env.cli(&["--json", "audit", "verify"], None);
    let report = keyward_tests::parse_json(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["keystore_checked"], true, "{report}");
    assert_eq!(report["key_checked"], true, "{report}");
    assert!(report["problem"].is_null(), "{report}");
    let meta =
        |name: &str| env.keystore_rows(&format!("SELECT value FROM meta WHERE name = '{name}'"));
    let previous = meta("audit_key_previous")
        .pop()
        .expect("the previous audit key is kept");
    let current = meta("audit_key")
        .pop()
        .expect("the new audit key is recorded");
    assert_eq!(previous.split(',').count(), 1, "{previous}");
    assert_ne!(previous, current);
}

/// Rotations back and forth between the two roots over 200 DEKs, the agent killed (abort at the
/// crash points before and after the commit; SIGKILL at 20 random delays, seed from
/// `KEYWARD_FAULT_SEED` or the clock): restarted on whichever
/// root the keystore names, every DEK decrypts what it encrypted before.
fn root_rotate_killed_at_any_point_loses_nothing(env: &mut TestEnv) {
    env.init();
    let roots = two_configs(env);
    // The count: 20 kills at random delays, besides the two crash points.
    killed_at_any_point(
        env,
        &roots,
        20,
        "root_rotate_killed_at_any_point_loses_nothing",
    );
}

/// Rotations back and forth between `roots.a` (the agent's) and `roots.b` over 200 DEKs: killed
/// at both crash points, then by SIGKILL at `random` random delays; after each, restarted on
/// whichever root the keystore names, every DEK decrypts.
fn killed_at_any_point(env: &mut TestEnv, roots: &Roots, random: usize, seed_name: &str) {
    let c = env.client();
    let kek = c.run(|c| c.kek_create(None)).unwrap().id;
    let mut data = Vec::new();
    for i in 0..200 {
        let args = keyward_tests::keyward_proto::ops::DekCreateArgs {
            kek: Some(kek.clone()),
            ..Default::default()
        };
        let dek = c.run(|c| c.dek_create(&args)).unwrap().id;
        let pt = format!("dek {i}").into_bytes();
        data.push((c.run(|c| c.encrypt(&dek, &pt)).unwrap(), pt));
    }
    drop(c);
    // Which root the keystore holds decides the configuration to restart on.
    let mut on_a = true;
    let mut from_id = root_ids(env)[0].clone();
    let mut crashes = vec![Some("root-rotate-enrolled"), Some("root-rotate-committed")];
    crashes.extend(std::iter::repeat_n(None, random));
    let mut rng = keyward_tests::faults::Rng::from_env(seed_name);
    for (run, crash) in crashes.iter().enumerate() {
        let (from, to) = if on_a {
            (&roots.a, &roots.b)
        } else {
            (&roots.b, &roots.a)
        };
        match crash {
            Some(point) => {
                env.stop();
                std::fs::copy(&from.0, env.config_path()).unwrap();
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
                c.run(|c| c.unlock(pin(from.1))).expect("unlock");
                drop(c);
                let out = env.cli(
                    &[
                        "root",
                        "rotate",
                        "--config",
                        to.0.to_str().unwrap(),
                        "--pin-stdin",
                    ],
                    Some(format!("{}\n", to.1).as_bytes()),
                );
                assert!(!out.status.success(), "run {run}: not a crash");
                assert!(!wait_exit(&mut child, "the agent to abort").success());
            }
            None => {
                let c = restart_on(env, from);
                drop(c);
                let pid = env.pid();
                let delay = rng.range(5, 155);
                let killer = std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(delay));
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                });
                let _ = env.cli(
                    &[
                        "root",
                        "rotate",
                        "--config",
                        to.0.to_str().unwrap(),
                        "--pin-stdin",
                    ],
                    Some(format!("{}\n", to.1).as_bytes()),
                );
                killer.join().unwrap();
                env.kill();
            }
        }
        // The keystore says which root to run on: the old one is still enrolled (nothing
        // committed) or gone (committed).
        let ids = root_ids(env);
        let committed = !ids.contains(&from_id);
        eprintln!("run {run} ({crash:?}): committed {committed}, roots {ids:?}");
        if committed {
            assert_eq!(ids.len(), 1, "run {run}: {ids:?}");
            on_a = !on_a;
            from_id = ids[0].clone();
        }
        let on = if on_a { &roots.a } else { &roots.b };
        let c = restart_on(env, on);
        decrypts(&c, &data);
        drop(c);
        // The new root merely enrolled: the next rotation continues with it.
        if !committed && ids.len() == 2 {
            let to = if on_a { &roots.b } else { &roots.a };
            let r = rotate(env, to, &[]);
            assert_eq!(r["enrolled"], false, "run {run}: {r}");
            on_a = !on_a;
            let ids = root_ids(env);
            assert_eq!(ids.len(), 1, "run {run}: {ids:?}");
            from_id = ids[0].clone();
            let c = restart_on(env, to);
            decrypts(&c, &data);
        }
    }
}

fn root_rotate_bad_input_is_typed_and_the_agent_keeps_serving(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"stays readable");
    let own = env.config_path().to_path_buf();
    // To the agent's own root.
    assert_eq!(
        env.cli_json_err(
            &[
                "root",
                "rotate",
                "--config",
                own.to_str().unwrap(),
                "--pin-stdin"
            ],
            Some(format!("{}\n", env.pin()).as_bytes())
        ),
        "wrong_key"
    );
    // Malformed configurations.
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
                    "rotate",
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
    if env.kind() == RootKind::Pkcs11 {
        // A token that is not there.
        let text = std::fs::read_to_string(&own).unwrap();
        let absent = env.dir().join("absent.toml");
        std::fs::write(
            &absent,
            text.replace("token=keyward;", "token=nosuchtoken;"),
        )
        .unwrap();
        assert_eq!(
            env.cli_json_err(
                &[
                    "root",
                    "rotate",
                    "--config",
                    absent.to_str().unwrap(),
                    "--pin-stdin"
                ],
                Some(format!("{}\n", env.pin()).as_bytes())
            ),
            "token_unavailable"
        );
    }
    // Nothing changed; the agent serves, unlocked.
    assert_eq!(root_ids(env).len(), 1);
    let c = env.client();
    assert!(!c.hello_info().locked);
    assert_eq!(
        c.run(|c| c.decrypt(&keys.ciphertext, None))
            .unwrap()
            .expose(),
        b"stays readable"
    );
    // While locked: refused as locked.
    c.run(|c| c.lock()).unwrap();
    drop(c);
    assert_eq!(
        env.cli_json_err(
            &[
                "root",
                "rotate",
                "--config",
                own.to_str().unwrap(),
                "--pin-stdin"
            ],
            Some(format!("{}\n", env.pin()).as_bytes())
        ),
        "locked"
    );
    let c = env.client();
    expect_code(
        c.run(|c| c.unlock(pin("wrong-pin-0000"))),
        ErrorCode::PinIncorrect,
    );
    c.run(|c| c.unlock(pin(env.pin()))).unwrap();
    assert_eq!(
        c.run(|c| c.decrypt(&keys.ciphertext, None))
            .unwrap()
            .expose(),
        b"stays readable"
    );
}

/// The object labels `pkcs11-tool --list-objects` shows on token `keyward`.
fn labels(env: &TestEnv) -> Vec<String> {
    objects(env, "keyward", env.pin())
        .lines()
        .filter_map(|l| l.trim().strip_prefix("label:"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// PKCS#11 only: the new root is another object (label) on the agent's own token, which shares
/// the token's login with the agent's root (ARCHITECTURE.md "Several roots in one process").
/// Refused while a keypair lives on the token (as for any rotation); then an AES root
/// `keyward-root-2` with `--destroy-old` (only the old object goes), restarted on it everything
/// decrypts; then on to an EC root `keyward-root-ec` on the same token without `--destroy-old`
/// (both objects stay), restarted on it everything decrypts.
fn root_rotate_to_another_object_on_the_same_token(env: &mut TestEnv) {
    if env.kind() != RootKind::Pkcs11 {
        return;
    }
    let keys = env.init_with_keys(false, b"same token");
    let mut data = vec![(keys.ciphertext.clone(), keys.plaintext.clone())];
    let old = current(env);
    let own = (env.dir().join("a.toml"), env.pin());
    std::fs::copy(env.config_path(), &own.0).unwrap();
    let second = (
        same_token_config(env, "same-token.toml", "keyward-root-2", false),
        env.pin(),
    );
    // (Made now, from the agent's first configuration.)
    let ec = (
        same_token_config(env, "same-token-ec.toml", "keyward-root-ec", true),
        env.pin(),
    );
    // A keypair on the token cannot move: refused as for any rotation, nothing enrolled.
    let kp = env.cli_json(
        &["keypair", "create", "--on-token", "--label", "tokenkey"],
        None,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let args = [
        "root",
        "rotate",
        "--config",
        second.0.to_str().unwrap(),
        "--pin-stdin",
    ];
    assert_eq!(
        env.cli_json_err(&args, Some(format!("{}\n", env.pin()).as_bytes())),
        "wrong_key"
    );
    assert_eq!(root_ids(env), vec![old.clone()]);
    env.cli_json(&["keypair", "delete", &kp], None);

    let r = rotate(env, &second, &["--destroy-old", "--label", "second"]);
    assert_eq!(r["old"], old.as_str(), "{r}");
    assert_eq!(r["enrolled"], true, "{r}");
    assert_eq!(r["moved"], 2, "{r}");
    assert!(
        r["destroyed"]
            .as_str()
            .is_some_and(|d| d.contains("`keyward-root`")),
        "{r}"
    );
    let new = r["id"].as_str().unwrap().to_string();
    assert_eq!(root_ids(env), vec![new.clone()]);
    // Only the old object went: the new one is on the same token.
    let left = labels(env);
    assert!(left.iter().any(|l| l == "keyward-root-2"), "{left:?}");
    assert!(!left.iter().any(|l| l == "keyward-root"), "{left:?}");
    assert!(env.client().hello_info().locked);
    let c = restart_on(env, &second);
    decrypts(&c, &data);
    assert_eq!(current(env), new);
    let pt = b"under the second object".to_vec();
    data.push((c.run(|c| c.encrypt(&keys.dek, &pt)).unwrap(), pt));
    drop(c);
    // The old configuration finds no root object any more.
    env.stop();
    std::fs::copy(&own.0, env.config_path()).unwrap();
    env.start_agent();
    let c = env.client();
    c.run(|c| c.unlock(pin(own.1)))
        .expect_err("the old root object is destroyed");
    drop(c);

    // On to an EC root on the same token, keeping the AES object.
    let c = restart_on(env, &second);
    drop(c);
    let r = rotate(env, &ec, &[]);
    assert_eq!(r["old"], new.as_str(), "{r}");
    assert!(r["destroyed"].is_null(), "{r}");
    let left = labels(env);
    assert!(left.iter().any(|l| l == "keyward-root-2"), "{left:?}");
    assert!(left.iter().any(|l| l == "keyward-root-ec"), "{left:?}");
    let c = restart_on(env, &ec);
    decrypts(&c, &data);
    assert_eq!(root_ids(env), vec![r["id"].as_str().unwrap()]);
}

/// PKCS#11 only: rotations back and forth between two objects on the agent's own token,
/// killed at both crash points and at random delays: restarted on whichever root the keystore
/// names, every DEK decrypts.
fn root_rotate_on_the_same_token_killed_at_any_point_loses_nothing(env: &mut TestEnv) {
    if env.kind() != RootKind::Pkcs11 {
        return;
    }
    env.init();
    let a = env.dir().join("a.toml");
    std::fs::copy(env.config_path(), &a).unwrap();
    let roots = Roots {
        a: (a, env.pin()),
        b: (
            same_token_config(env, "same-token.toml", "keyward-root-2", false),
            env.pin(),
        ),
    };
    killed_at_any_point(
        env,
        &roots,
        6,
        "root_rotate_on_the_same_token_killed_at_any_point_loses_nothing",
    );
}
