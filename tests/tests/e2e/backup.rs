//! `keyward backup export|import`: a snapshot taken while the agent writes restores a keystore
//! that unlocks and decrypts; the backup holds no key in the clear; bad input is refused and
//! changes nothing.

use keyward_tests::keyward_proto::ops::DekCreateArgs;
use keyward_tests::{pin, TestEnv};
use std::path::Path;

keyward_tests::keyward_e2e_tests!(
    backup_taken_while_writing_restores_a_working_keystore,
    backup_holds_no_key_in_the_clear,
    backup_refuses_bad_input_and_changes_nothing,
);

fn sidecars(p: &Path) {
    for s in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", p.display()));
    }
}

fn backup_taken_while_writing_restores_a_working_keystore(env: &mut TestEnv) {
    if !env.requires_sqlite(
        "backup export copies the SQLite file (refused on PostgreSQL: keystore_postgres)",
    ) {
        return;
    }
    let keys = env.init_with_keys(false, b"before the backup");
    let out = env.dir().join("snap.kwbackup");
    let out_s = out.to_str().unwrap().to_string();

    // A writer creates DEKs on another connection for the whole time the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, c, kek) = (stop.clone(), env.client(), keys.kek.clone());
        std::thread::spawn(move || {
            let mut made = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || made < 5 {
                let args = DekCreateArgs {
                    kek: Some(kek.clone()),
                    ..Default::default()
                };
                c.run(|c| c.dek_create(&args))
                    .expect("dek.create while backing up");
                made += 1;
            }
            made
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    let summary = env.cli_json(&["backup", "export", "-o", &out_s], None);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let made = writer.join().expect("writer");
    assert!(made >= 5, "the writer ran");
    let in_backup = summary["deks"].as_i64().expect("deks count");
    assert!(in_backup >= 1, "{summary}");
    assert_eq!(summary["roots"], 1, "{summary}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "backup file mode");

    // Lose the keystore; put the backup back; the agent unlocks (every MAC checks) and decrypts.
    env.stop();
    let ks = env.keystore_path();
    std::fs::remove_file(&ks).unwrap();
    sidecars(&ks);
    let ks_s = ks.to_str().unwrap().to_string();
    let restored = env.cli_json(
        &["backup", "import", "-i", &out_s, "--keystore", &ks_s],
        None,
    );
    assert_eq!(restored["deks"], in_backup, "{restored}");
    env.start_agent();
    env.assert_intact(&keys);
    // Every DEK of the snapshot is whole: listed, and usable (its record's MAC verifies).
    let c = env.client();
    let deks = c.run(|c| c.dek_list(None)).expect("dek.list").keys;
    assert_eq!(deks.len() as i64, in_backup, "DEKs after restore");
    for d in &deks {
        let ct = c.run(|c| c.encrypt(&d.id, b"x")).expect("encrypt");
        assert_eq!(c.run(|c| c.decrypt(&ct, None)).unwrap().expose(), b"x");
    }
}

fn backup_holds_no_key_in_the_clear(env: &mut TestEnv) {
    if !env.requires_sqlite(
        "backup export copies the SQLite file (refused on PostgreSQL: keystore_postgres)",
    ) {
        return;
    }
    let keys = env.init_with_keys(true, b"secret data");
    let c = env.client();
    let dek = c.run(|c| c.dek_export(&keys.dek)).expect("dek.export");
    let out = env.dir().join("snap.kwbackup");
    env.cli_ok(&["backup", "export", "-o", out.to_str().unwrap()], None);
    let bytes = std::fs::read(&out).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(dek.key.expose()),
        "the DEK's bytes are in the backup"
    );
    assert!(!contains(env.pin().as_bytes()), "the PIN is in the backup");
    assert!(!contains(b"secret data"), "plaintext is in the backup");
    assert!(
        contains(keys.dek.as_bytes()),
        "the DEK's record is in the backup"
    );
}

fn backup_refuses_bad_input_and_changes_nothing(env: &mut TestEnv) {
    if !env.requires_sqlite(
        "backup export copies the SQLite file (refused on PostgreSQL: keystore_postgres)",
    ) {
        return;
    }
    let keys = env.init_with_keys(false, b"stays");
    let dir = env.dir().to_path_buf();
    let ks = env.keystore_path();
    let ks_s = ks.to_str().unwrap().to_string();

    // Export over an existing file: refused, the file unchanged.
    let existing = dir.join("existing");
    std::fs::write(&existing, b"mine").unwrap();
    let out = env.cli(
        &["backup", "export", "-o", existing.to_str().unwrap()],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists"),
        "{out:?}"
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"mine");

    // Export onto the keystore itself, even with --force: refused.
    let out = env.cli(&["backup", "export", "--force", "-o", &ks_s], None);
    assert!(!out.status.success(), "{out:?}");

    // Import over the keystore the agent serves: refused.
    let good = dir.join("good.kwbackup");
    env.cli_ok(&["backup", "export", "-o", good.to_str().unwrap()], None);
    let out = env.cli(
        &[
            "backup",
            "import",
            "--force",
            "-i",
            good.to_str().unwrap(),
            "--keystore",
            &ks_s,
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Garbage, an empty SQLite file, a damaged backup: refused, no keystore written.
    let target = dir.join("new").join("keystore.db");
    let target_s = target.to_str().unwrap().to_string();
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let empty = dir.join("empty.db");
    rusqlite::Connection::open(&empty)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let damaged = dir.join("damaged.kwbackup");
    let mut d = std::fs::read(&good).unwrap();
    let len = d.len();
    for b in &mut d[len / 2..len / 2 + 4096.min(len / 2)] {
        *b ^= 0xff;
    }
    std::fs::write(&damaged, d).unwrap();
    for bad in [&garbage, &empty, &damaged, &dir.join("missing")] {
        let out = env.cli(
            &[
                "backup",
                "import",
                "-i",
                bad.to_str().unwrap(),
                "--keystore",
                &target_s,
            ],
            None,
        );
        assert!(
            !out.status.success(),
            "import of {} succeeded",
            bad.display()
        );
        assert!(
            !target.exists(),
            "import of {} wrote a keystore",
            bad.display()
        );
    }

    // Import over an existing keystore without --force: refused; with it, the old one is kept.
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, b"old").unwrap();
    let out = env.cli(
        &[
            "backup",
            "import",
            "-i",
            good.to_str().unwrap(),
            "--keystore",
            &target_s,
        ],
        None,
    );
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    let r = env.cli_json(
        &[
            "backup",
            "import",
            "--force",
            "-i",
            good.to_str().unwrap(),
            "--keystore",
            &target_s,
        ],
        None,
    );
    let kept = r["previous"].as_str().expect("previous kept");
    assert_eq!(std::fs::read(kept).unwrap(), b"old");

    // The agent kept serving; its keystore still holds the keys, and still unlocks after a
    // restart (every record's MAC checks).
    env.assert_intact(&keys);
    env.restart();
    env.client()
        .run(|c| c.unlock(pin(env.pin())))
        .expect("unlock after restart");
    env.assert_intact(&keys);
}
