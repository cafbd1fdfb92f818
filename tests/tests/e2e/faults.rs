//! Issue 9, "Faults, as tests": the keystore on a full file system and on a read-only one, a
//! damaged index page, `kill -9` at random moments during creates, deletes and `init`, and the
//! token's files vanishing under load. Each fault is real: a tmpfs mounted by the test (CI runs
//! as root; see `keyward_tests::faults`), SIGKILL, the SoftHSM token directory moved away.
//!
//! The kill loops print their seed (`KEYWARD_FAULT_SEED=...`); set it to replay a run.
//! These run on the SoftHSM root only: the faults are in the keystore and the token, and the soft
//! root's key derivation would only make the loops slower.

use keyward_tests::faults::{fill, Rng, Tmpfs};
use keyward_tests::keyward_client::{BlockingClient, ClientError};
use keyward_tests::keyward_proto::ops::{DekCreateArgs, KeypairCreateArgs};
use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::{expect_code, pin, RootKind, TestEnv};
use rusqlite::Connection;
use std::collections::{BTreeSet, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

// ---- shared checks -------------------------------------------------------------------------

/// SQLite's full `integrity_check` of the keystore (the agent must not be running).
fn integrity(env: &TestEnv) -> String {
    let c = Connection::open(env.keystore_path()).expect("open keystore");
    let rows: Vec<String> = c
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("; ")
}

/// PostgreSQL has no file to check: there the rows' MACs, checked at the next unlock, are the
/// check (the part left out is announced).
#[track_caller]
fn assert_integrity(env: &TestEnv) {
    if !keyward_tests::backend::sqlite_part("SQLite's integrity_check of the file") {
        return;
    }
    assert_eq!(integrity(env), "ok", "keystore integrity_check");
}

fn dek_create(c: &BlockingClient, kek: &str) -> Result<String, ClientError> {
    let args = DekCreateArgs {
        kek: Some(kek.to_string()),
        ..Default::default()
    };
    c.run(|c| c.dek_create(&args)).map(|r| r.id)
}

fn keypair_create(c: &BlockingClient, kek: &str, on_token: bool) -> Result<String, ClientError> {
    let args = KeypairCreateArgs {
        kek: Some(kek.to_string()),
        on_token,
        ..Default::default()
    };
    c.run(|c| c.keypair_create(&args)).map(|r| r.id)
}

/// The DEK encrypts, and its ciphertext decrypts.
#[track_caller]
fn dek_works(c: &BlockingClient, dek: &str) {
    let ct = c
        .run(|c| c.encrypt(dek, b"still here"))
        .unwrap_or_else(|e| panic!("encrypt with DEK {dek}: {e}"));
    let pt = c
        .run(|c| c.decrypt(&ct, None))
        .unwrap_or_else(|e| panic!("decrypt with DEK {dek}: {e}"));
    assert_eq!(pt.expose(), b"still here");
}

#[track_caller]
fn keypair_works(c: &BlockingClient, kp: &str) {
    c.run(|c| c.sign(kp, b"still here", false))
        .unwrap_or_else(|e| panic!("sign with keypair {kp}: {e}"));
}

/// A write refused because of the file system: `keystore_error` whose message says `why`.
#[track_caller]
fn refused_for<T: std::fmt::Debug>(r: Result<T, ClientError>, why: &[&str], what: &str) {
    let e = expect_code(r, ErrorCode::KeystoreError);
    let msg = e.to_string();
    assert!(
        why.iter().any(|w| msg.contains(w)),
        "{what}: the message should say {why:?}: {msg}"
    );
}

/// An agent (SoftHSM root) whose keystore lives on a 4 MiB tmpfs of its own; `None` where a
/// tmpfs cannot be mounted (`Tmpfs::mount_or_skip` says why). Its audit log stays off the tmpfs
/// (in the test directory), so these tests see the keystore's faults alone; a full or read-only
/// audit log has its own tests (e2e/audit.rs).
fn agent_on_tmpfs(test: &str) -> Option<(TestEnv, Tmpfs)> {
    let mut env = TestEnv::start(RootKind::Pkcs11);
    env.stop();
    let fs = Tmpfs::mount_or_skip(&env.dir().join("ks"), "4m", test)?;
    env.move_keystore_to(fs.path());
    let audit = env.dir().join("audit.log");
    let mut cfg = std::fs::read_to_string(env.config_path()).unwrap();
    cfg.push_str(&format!(
        "\n[audit]\npath = {:?}\n",
        audit.display().to_string()
    ));
    std::fs::write(env.config_path(), cfg).unwrap();
    env.start_agent();
    Some((env, fs))
}

// ---- a full file system --------------------------------------------------------------------

#[test]
fn full_disk_refuses_writes_typed_keeps_serving_and_resumes() {
    if !keyward_tests::requires_sqlite("fills the file system under the SQLite file") {
        return;
    }
    let t0 = Instant::now();
    let Some((mut env, fs)) = agent_on_tmpfs("full_disk") else {
        return;
    };
    let keys = env.init_with_keys(false, b"before the disk filled");
    let c = env.client();
    let mut deks = vec![keys.dek.clone()];
    for _ in 0..5 {
        deks.push(dek_create(&c, &keys.kek).expect("dek"));
    }
    let kp = keypair_create(&c, &keys.kek, false).expect("keypair");

    let filler = fill(fs.path());
    // The WAL may still have room for a few records; the disk is full well before 500.
    let mut refused = None;
    for _ in 0..500 {
        match dek_create(&c, &keys.kek) {
            Ok(id) => deks.push(id),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("no write failed on a full file system");
    let full: &[&str] = &["the file system holding the keystore is full"];
    refused_for(Err::<(), _>(e), full, "dek.create on a full disk");
    refused_for(
        c.run(|c| c.kek_create(None)),
        full,
        "kek.create on a full disk",
    );
    refused_for(
        keypair_create(&c, &keys.kek, false),
        full,
        "keypair.create on a full disk",
    );
    // Nothing acknowledged is lost and reads go on: status, lists, encrypt, decrypt, sign.
    assert!(!c.run(|c| c.status()).expect("status").locked);
    let listed: HashSet<String> = c
        .run(|c| c.dek_list(None))
        .expect("dek.list")
        .keys
        .into_iter()
        .map(|k| k.id)
        .collect();
    for d in &deks {
        assert!(listed.contains(d), "DEK {d} listed on a full disk");
    }
    let pt = c
        .run(|c| c.decrypt(&keys.ciphertext, None))
        .expect("decrypt");
    assert_eq!(pt.expose(), &keys.plaintext[..]);
    dek_works(&c, &deks[1]);
    keypair_works(&c, &kp);

    // Space returns: work resumes on the same connection, same agent.
    std::fs::remove_file(&filler).unwrap();
    deks.push(dek_create(&c, &keys.kek).expect("dek.create after space returned"));
    c.run(|c| c.kek_create(None))
        .expect("kek.create after space returned");
    for d in &deks {
        dek_works(&c, d);
    }
    drop(c);
    env.stop();
    assert_integrity(&env);
    env.start_agent();
    env.assert_intact(&keys);
    let c = env.client();
    for d in &deks {
        dek_works(&c, d);
    }
    keypair_works(&c, &kp);
    eprintln!("full_disk: {:?}", t0.elapsed());
}

// ---- a read-only keystore ------------------------------------------------------------------

/// On a read-only keystore: the agent starts, unlocks, serves every read; writes are
/// `keystore_error` saying the keystore is read-only.
fn check_read_only(env: &mut TestEnv, kek: &str, ciphertext: &str, deks: &[String], kp: &str) {
    let c = env.client();
    let hello = c.hello_info();
    assert!(hello.initialized && hello.locked);
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock on a read-only keystore");
    let listed: HashSet<String> = c
        .run(|c| c.dek_list(None))
        .expect("dek.list")
        .keys
        .into_iter()
        .map(|k| k.id)
        .collect();
    for d in deks {
        assert!(listed.contains(d), "DEK {d} listed");
        dek_works(&c, d);
    }
    c.run(|c| c.decrypt(ciphertext, None)).expect("decrypt");
    keypair_works(&c, kp);
    c.run(|c| c.kek_list()).expect("kek.list");
    let ro: &[&str] = &["the keystore is read-only"];
    refused_for(c.run(|c| c.kek_create(None)), ro, "kek.create");
    refused_for(dek_create(&c, kek), ro, "dek.create");
    refused_for(keypair_create(&c, kek, false), ro, "keypair.create");
    refused_for(c.run(|c| c.keypair_delete(kp)), ro, "keypair.delete");
    keypair_works(&c, kp);
    // A wrong PIN cannot be stored: typed, counted in memory; the right one still unlocks
    // (the stored count is an authenticated 0: nothing to write).
    let e = c
        .run(|c| c.unlock(pin(keyward_tests::WRONG_PIN)))
        .expect_err("a wrong PIN");
    assert!(
        matches!(
            e.code(),
            Some(ErrorCode::KeystoreError | ErrorCode::PinIncorrect)
        ),
        "wrong PIN on a read-only keystore: {e}"
    );
    c.run(|c| c.lock()).expect("lock");
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock again on a read-only keystore");
    // The agent is still up and still unlocked.
    assert!(!c.run(|c| c.status()).expect("status").locked);
    assert!(env.is_running());
    assert!(
        env.log().contains("read-only"),
        "the read-only keystore is logged"
    );
}

#[test]
fn read_only_keystore_serves_reads_and_refuses_writes_typed() {
    if !keyward_tests::requires_sqlite("makes the SQLite file's file system read-only") {
        return;
    }
    let t0 = Instant::now();
    let Some((mut env, fs)) = agent_on_tmpfs("read_only") else {
        return;
    };
    let keys = env.init_with_keys(false, b"read-only");
    let c = env.client();
    let mut deks = vec![keys.dek.clone()];
    deks.push(dek_create(&c, &keys.kek).unwrap());
    let kp = keypair_create(&c, &keys.kek, false).unwrap();
    drop(c);
    let wal = std::path::PathBuf::from(format!("{}-wal", env.keystore_path().display()));

    // 1. Killed: the last records are only in the WAL when the file system turns read-only.
    env.kill();
    assert!(wal.exists(), "a killed agent leaves its WAL");
    fs.remount(true);
    env.start_agent();
    check_read_only(&mut env, &keys.kek, &keys.ciphertext, &deks, &kp);
    env.stop();

    // 2. Stopped cleanly (the WAL checkpointed and removed), then read-only.
    fs.remount(false);
    env.start_agent();
    env.stop();
    assert!(!wal.exists(), "a clean stop removes the WAL");
    fs.remount(true);
    env.start_agent();
    check_read_only(&mut env, &keys.kek, &keys.ciphertext, &deks, &kp);
    env.stop();

    // Read-write again: nothing was lost, writes work.
    fs.remount(false);
    env.start_agent();
    env.assert_intact(&keys);
    let c = env.client();
    for d in &deks {
        dek_works(&c, d);
    }
    keypair_works(&c, &kp);
    dek_create(&c, &keys.kek).expect("dek.create once writable");
    drop(c);
    env.stop();
    assert_integrity(&env);
    eprintln!("read_only: {:?}", t0.elapsed());
}

// ---- a damaged index page ------------------------------------------------------------------

/// Only the index's page is damaged, in a way SQLite's `quick_check` does not see (every entry
/// of the index's one leaf page names a parent that sorts in the same place but does not
/// exist): `integrity_check` does. It runs just after the agent binds its socket: the agent
/// then refuses every key operation with `keystore_error` naming the file, `status` reports the
/// failed check, the log says so, and the file is never re-created or changed.
#[test]
fn damaged_index_page_alone_refuses_every_key_operation() {
    if !keyward_tests::requires_sqlite("damages a page of the SQLite file") {
        return;
    }
    let mut env = TestEnv::start(RootKind::Pkcs11);
    let keys = env.init_with_keys(false, b"index");
    let c = env.client();
    for _ in 0..20 {
        dek_create(&c, &keys.kek).unwrap();
    }
    drop(c);
    env.stop();
    let path = env.keystore_path();
    let (page_size, index_page, parents) = {
        let k = Connection::open(&path).unwrap();
        let ps: i64 = k.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let ip: i64 = k
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'keys_by_parent'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let parents: Vec<String> = k
            .prepare("SELECT DISTINCT parent FROM keys WHERE parent IS NOT NULL")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (ps as usize, ip as usize, parents)
    };
    // The KEK's id with its last non-zero hex digit lowered: no other parent sorts in between,
    // so the index stays in order.
    let old = keys.kek.clone();
    let mut new = old.clone().into_bytes();
    let i = new
        .iter()
        .rposition(|b| b.is_ascii_hexdigit() && *b != b'0')
        .unwrap();
    new[i] = match new[i] {
        b'a' => b'9',
        b => b - 1,
    };
    let new = String::from_utf8(new).unwrap();
    assert!(
        !parents.iter().any(|p| *p >= new && *p < old),
        "another parent sorts between {new} and {old}"
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let page = &mut bytes[(index_page - 1) * page_size..index_page * page_size];
    assert_eq!(page[0], 0x0a, "the index is one leaf page");
    let mut hits = 0;
    let mut at = 0;
    while let Some(pos) = page[at..]
        .windows(old.len())
        .position(|w| w == old.as_bytes())
    {
        page[at + pos..at + pos + old.len()].copy_from_slice(new.as_bytes());
        at += pos + old.len();
        hits += 1;
    }
    assert!(hits >= 20, "the index holds the KEK's id {hits} times");
    std::fs::write(&path, &bytes).unwrap();
    {
        let k = Connection::open(&path).unwrap();
        let quick: String = k.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
        assert_eq!(quick, "ok", "quick_check does not see this damage");
    }
    assert_ne!(integrity(&env), "ok", "integrity_check sees it");

    env.start_agent();
    let st = keyward_tests::wait_for("the keystore check to fail", || {
        let s = env.cli_json(&["status"], None);
        (s["keystore_check"]["state"] != "checking").then_some(s)
    });
    assert_eq!(st["keystore_check"]["state"], "failed", "{st}");
    let detail = st["keystore_check"]["detail"].as_str().unwrap();
    assert!(detail.contains("integrity_check"), "{detail}");
    let pin_line = format!("{}\n", env.pin());
    let out = env.cli(&["unlock", "--pin-stdin"], Some(pin_line.as_bytes()));
    assert_eq!(out.status.code(), Some(1), "unlock is refused");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains(&path.display().to_string()),
        "the message names the file: {err}"
    );
    assert!(err.contains("damaged"), "{err}");
    for args in [&["kek", "list"][..], &["dek", "list"], &["keypair", "list"]] {
        assert_eq!(env.cli_json_err(args, None), "keystore_error", "{args:?}");
    }
    assert!(env.log().contains("keystore check FAILED"), "{}", env.log());
    env.stop();
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "never re-created");
}

// ---- kill -9 during creates and deletes ----------------------------------------------------

/// What the burst client reports, in order.
enum Event {
    /// About to send an operation (its outcome is unknown until acknowledged).
    Trying(Op),
    Done(Op),
}

#[derive(Clone)]
enum Op {
    Dek(Option<String>),
    Keypair(Option<String>),
    Delete(String),
}

/// Creates and deletes until the agent dies (the connection fails).
fn burst(sock: std::path::PathBuf, kek: String, mut kps: Vec<String>, seed: u64) -> Vec<Event> {
    let mut rng = Rng::seeded(seed);
    let mut events = Vec::new();
    let Ok(c) = BlockingClient::connect(&sock) else {
        return events;
    };
    loop {
        let r = match rng.range(0, 4) {
            0 | 1 => {
                events.push(Event::Trying(Op::Dek(None)));
                dek_create(&c, &kek).map(|id| Op::Dek(Some(id)))
            }
            2 => {
                events.push(Event::Trying(Op::Keypair(None)));
                keypair_create(&c, &kek, rng.range(0, 2) == 0).map(|id| Op::Keypair(Some(id)))
            }
            _ => {
                let Some(kp) = (!kps.is_empty())
                    .then(|| kps.swap_remove(rng.range(0, kps.len() as u64) as usize))
                else {
                    continue;
                };
                events.push(Event::Trying(Op::Delete(kp.clone())));
                c.run(|c| c.keypair_delete(&kp)).map(|_| Op::Delete(kp))
            }
        };
        match r {
            Ok(op) => {
                if let Op::Keypair(Some(id)) = &op {
                    kps.push(id.clone());
                }
                events.push(Event::Done(op));
            }
            Err(e) => {
                assert!(
                    e.code().is_none(),
                    "the agent refused an operation during the burst: {e}"
                );
                return events;
            }
        }
    }
}

#[test]
fn kill_9_during_creates_and_deletes_loses_no_acknowledged_key() {
    let t0 = Instant::now();
    let mut rng = Rng::from_env("kill_9_during_creates_and_deletes");
    let mut env = TestEnv::start(RootKind::Pkcs11);
    let keys = env.init_with_keys(false, b"kill -9");
    let mut deks: BTreeSet<String> = [keys.dek.clone()].into();
    let mut kps: BTreeSet<String> = BTreeSet::new();
    let mut gone: BTreeSet<String> = BTreeSet::new();
    let (mut acked, mut in_flight) = (0, 0);
    let mut rounds = 0;
    for round in 0..20 {
        rounds += 1;
        let (sock, kek) = (env.socket_path().to_path_buf(), keys.kek.clone());
        let known: Vec<String> = kps.iter().cloned().collect();
        let seed = rng.next_u64();
        let (tx, rx) = mpsc::channel();
        let h = std::thread::spawn(move || {
            let _ = tx.send(burst(sock, kek, known, seed));
        });
        std::thread::sleep(Duration::from_millis(rng.range(10, 200)));
        env.kill();
        let events = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("round {round}: the burst client hung after the kill"));
        h.join().unwrap();
        assert_integrity(&env);
        if env.softhsm_token_lost() {
            eprintln!("!!!! round {round}: SoftHSM emptied its token.object when killed (a SoftHSM limitation; see the README): stopping the loop here");
            env.start_agent();
            let c = env.client();
            expect_code(
                c.run(|c| c.unlock(pin(env.pin()))),
                ErrorCode::TokenUnavailable,
            );
            c.run(|c| c.kek_list())
                .expect("kek.list answers without the token");
            break;
        }

        // Acknowledged: must be there (or gone). In flight: either way, but whole.
        let mut maybe: Vec<Op> = Vec::new();
        for ev in events {
            match ev {
                Event::Done(Op::Dek(Some(id))) => {
                    deks.insert(id);
                    acked += 1;
                }
                Event::Done(Op::Keypair(Some(id))) => {
                    kps.insert(id);
                    acked += 1;
                }
                Event::Done(Op::Delete(id)) => {
                    kps.remove(&id);
                    gone.insert(id);
                    acked += 1;
                }
                Event::Done(_) => unreachable!(),
                Event::Trying(op) => maybe.push(op),
            }
        }
        // Only the last Trying can be unanswered; the others were answered just after.
        let pending = maybe.pop();
        env.start_agent();
        let c = env.client();
        c.run(|c| c.unlock(pin(env.pin())))
            .unwrap_or_else(|e| panic!("round {round}: unlock after kill -9: {e}"));
        // Every record is read (and its MAC checked) by the lists: no half-made record.
        let listed_deks: BTreeSet<String> = c
            .run(|c| c.dek_list(None))
            .unwrap_or_else(|e| panic!("round {round}: dek.list: {e}"))
            .keys
            .into_iter()
            .map(|k| k.id)
            .collect();
        let listed_kps: BTreeSet<String> = c
            .run(|c| c.keypair_list())
            .unwrap_or_else(|e| panic!("round {round}: keypair.list: {e}"))
            .keys
            .into_iter()
            .map(|k| k.id)
            .collect();
        for d in &deks {
            assert!(listed_deks.contains(d), "round {round}: acked DEK {d} lost");
        }
        let deleting = match &pending {
            Some(Op::Delete(id)) => Some(id.clone()),
            _ => None,
        };
        for k in &kps {
            assert!(
                listed_kps.contains(k) || deleting.as_ref() == Some(k),
                "round {round}: acked keypair {k} lost"
            );
        }
        for k in &gone {
            assert!(
                !listed_kps.contains(k),
                "round {round}: deleted keypair {k} is back"
            );
        }
        // Keys that exist without an acknowledgement (the one in flight) must be whole too.
        let new_deks: Vec<String> = listed_deks.difference(&deks).cloned().collect();
        let new_kps: Vec<String> = listed_kps.difference(&kps).cloned().collect();
        assert!(
            new_deks.len() + new_kps.len() <= 1,
            "round {round}: more unacknowledged keys than requests in flight: {new_deks:?} {new_kps:?}"
        );
        for d in &new_deks {
            dek_works(&c, d);
        }
        for k in &new_kps {
            keypair_works(&c, k);
        }
        deks.extend(new_deks);
        kps.extend(new_kps);
        if let Some(Op::Delete(id)) = pending {
            in_flight += 1;
            if !listed_kps.contains(&id) {
                kps.remove(&id);
                gone.insert(id);
            }
        } else if pending.is_some() {
            in_flight += 1;
        }
        // Every key still there works (a deleted on-token keypair must not leave a record whose
        // token object is gone, or the other way round).
        for d in &deks {
            dek_works(&c, d);
        }
        for k in &kps {
            keypair_works(&c, k);
        }
        drop(c);
    }
    if !env.softhsm_token_lost() {
        let c = env.client();
        let pt = c.run(|c| c.decrypt(&keys.ciphertext, None)).unwrap();
        assert_eq!(pt.expose(), &keys.plaintext[..]);
    }
    eprintln!(
        "kill_9 creates/deletes: {rounds} rounds, {acked} acknowledged, {in_flight} in flight, {} DEKs, {} keypairs, {} deleted: {:?}",
        deks.len(),
        kps.len(),
        gone.len(),
        t0.elapsed()
    );
}

// ---- kill -9 during init -------------------------------------------------------------------

#[test]
fn kill_9_during_init_then_init_completes() {
    let t0 = Instant::now();
    let mut rng = Rng::from_env("kill_9_during_init");
    let (mut killed_before, mut killed_after, mut token_lost) = (0, 0, 0);
    for round in 0..8 {
        let mut env = TestEnv::start(RootKind::Pkcs11);
        if round % 4 == 0 {
            // First the hook: the root exists in the token, the keystore only marks the pending
            // init. Then the adopting init is itself killed at random below.
            env.stop();
            let mut cmd = env.agent_command();
            cmd.env("KEYWARD_TEST_CRASH_AFTER", "root-created")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = cmd.spawn().expect("spawn keywardd");
            let sock = env.socket_path().to_path_buf();
            keyward_tests::wait_for("the crashing agent to listen", || {
                std::os::unix::net::UnixStream::connect(&sock).ok()
            });
            let out = env.cli(&env.init_args(), Some(env.pin().as_bytes()));
            assert!(!out.status.success());
            keyward_tests::wait_exit(&mut child, "the agent to abort");
            env.start_agent();
        }
        let sock = env.socket_path().to_path_buf();
        let secret = env.pin().to_string();
        let (tx, rx) = mpsc::channel();
        let h = std::thread::spawn(move || {
            let r = BlockingClient::connect(&sock).and_then(|c| c.run(|c| c.init(pin(&secret))));
            let _ = tx.send(r.map(|_| ()));
        });
        std::thread::sleep(Duration::from_millis(rng.range(0, 60)));
        env.kill();
        let acked = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the init client hung after the kill");
        h.join().unwrap();
        if let Err(e) = &acked {
            assert!(e.code().is_none(), "round {round}: init refused: {e}");
        }
        assert_integrity(&env);
        env.start_agent();
        let c = env.client();
        if env.softhsm_token_lost() {
            // SoftHSM's own file store lost the token: the agent must say so, typed.
            eprintln!("!!!! round {round}: SoftHSM emptied its token.object when killed (a SoftHSM limitation; see the README)");
            expect_code(
                c.run(|c| c.init(pin(env.pin()))),
                ErrorCode::TokenUnavailable,
            );
            token_lost += 1;
            continue;
        }
        if c.hello_info().initialized {
            killed_after += 1;
            c.run(|c| c.unlock(pin(env.pin())))
                .unwrap_or_else(|e| panic!("round {round}: unlock after a killed init: {e}"));
        } else {
            assert!(
                acked.is_err(),
                "round {round}: init was acknowledged but is lost"
            );
            killed_before += 1;
            c.run(|c| c.init(pin(env.pin())))
                .unwrap_or_else(|e| panic!("round {round}: init after a killed init: {e}"));
        }
        let kek = c.run(|c| c.kek_create(None)).expect("kek").id;
        let dek = dek_create(&c, &kek).expect("dek");
        let ct = c.run(|c| c.encrypt(&dek, b"after")).unwrap();
        drop(c);
        env.restart();
        let c = env.client();
        c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
        let pt = c.run(|c| c.decrypt(&ct, None)).expect("decrypt");
        assert_eq!(pt.expose(), b"after");
        // At most one root in the token: the retried init adopted the first, made no second.
        let roots = env
            .token_objects(Some("secrkey"))
            .matches("keyward-root")
            .count();
        assert!(roots <= 1, "round {round}: {roots} roots in the token");
        drop(c);
        env.stop();
        assert_integrity(&env);
    }
    assert!(
        killed_before + killed_after >= 4,
        "SoftHSM lost its token in {token_lost} of 8 rounds"
    );
    eprintln!(
        "kill_9 init: 8 rounds ({killed_before} before the record, {killed_after} after, {token_lost} SoftHSM token lost): {:?}",
        t0.elapsed()
    );
}

// ---- the token vanishing under load --------------------------------------------------------

const NORMAL: u8 = 0;
const GONE: u8 = 1;
const BACK: u8 = 2;

// Quarantined until 2026-11-30: keywardd crashed (SIGSEGV inside SoftHSM's library) in roughly
// 1 run in 10 when the token directory vanished while three clients were busy. Since the module
// registry (root/pkcs11/module.rs) stopped closing the previous generation's sessions after a
// re-initialization (SoftHSM reuses handle numbers, so a late close could hit a live session),
// it passed 88 runs in a row under load, and runs with the suite again.
#[test]
fn token_vanishing_under_load_gives_typed_errors_and_recovers_after_unlock() {
    let t0 = Instant::now();
    let mut env = TestEnv::start(RootKind::Pkcs11);
    let keys = env.init_with_keys(false, b"load");
    let phase = Arc::new(AtomicU8::new(NORMAL));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let oks_back = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    // Two clients encrypt (their KEK is open in a token session); one makes KEKs and DEKs (the
    // root object, on the token).
    for worker in 0..3 {
        let (sock, kek, dek) = (
            env.socket_path().to_path_buf(),
            keys.kek.clone(),
            keys.dek.clone(),
        );
        let (phase, stop, errors, oks_back) = (
            phase.clone(),
            stop.clone(),
            errors.clone(),
            oks_back.clone(),
        );
        workers.push(std::thread::spawn(move || {
            let c = BlockingClient::connect(&sock).expect("connect");
            let mut codes = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut n = 0u32;
            let mut back_ok = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let p = phase.load(Ordering::SeqCst);
                let t = Instant::now();
                n += 1;
                let r = match (worker, n % 2) {
                    (0, 0) => c.run(|c| c.kek_create(None)).map(|_| ()),
                    (0, _) => dek_create(&c, &kek).map(|_| ()),
                    _ => c.run(|c| c.encrypt(&dek, b"under load")).map(|_| ()),
                };
                slowest = slowest.max(t.elapsed());
                match r {
                    Ok(_) if p == BACK => {
                        back_ok += 1;
                        oks_back.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // The phase when it failed: the move may come while a request runs.
                        let p = phase.load(Ordering::SeqCst);
                        let Some(code) = e.code() else {
                            // The connection failed: the agent died (the test says so).
                            return (codes, slowest, back_ok, Some(e.to_string()));
                        };
                        if p != NORMAL {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                        codes.push((p, code, e.to_string()));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            (codes, slowest, back_ok, None)
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let tokens = env.dir().join("tokens");
    let away = env.dir().join("tokens.away");
    phase.store(GONE, Ordering::SeqCst);
    std::fs::rename(&tokens, &away).unwrap();
    keyward_tests::wait_for("the clients to fail once the token is gone", || {
        assert!(
            env.is_running(),
            "keywardd died when the token vanished under load (a crash inside SoftHSM was seen \
             here about once in 10-20 runs until 2026-11-30; see the README, \"Faults\")"
        );
        (errors.load(Ordering::SeqCst) >= 6).then_some(())
    });
    // The agent keeps serving what needs no token.
    let c = env.client();
    let t = Instant::now();
    c.run(|c| c.status()).expect("status with the token gone");
    let keks = c
        .run(|c| c.kek_list())
        .expect("kek.list with the token gone");
    assert!(keks.keys.iter().any(|k| k.id == keys.kek));
    c.run(|c| c.dek_list(None))
        .expect("dek.list with the token gone");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "slow: {:?}",
        t.elapsed()
    );
    let e = dek_create(&c, &keys.kek).expect_err("dek.create with the token gone");
    assert!(
        matches!(
            e.code(),
            Some(ErrorCode::TokenUnavailable | ErrorCode::TokenError)
        ),
        "dek.create with the token gone: {e}"
    );

    // The files come back. Restoring them does not heal the loaded module; the next request's
    // recovery (or `unlock`) re-initializes it and logs in again with the held PIN.
    std::fs::rename(&away, &tokens).unwrap();
    phase.store(BACK, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock after the token returned");
    keyward_tests::wait_for("the clients to work again after unlock", || {
        assert!(env.is_running(), "keywardd died after the token came back");
        (oks_back.load(Ordering::SeqCst) >= 20).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for w in workers {
        let (codes, slowest, back_ok, broken) = w.join().expect("a worker panicked");
        assert_eq!(broken, None, "a client lost its connection");
        assert!(back_ok > 0, "every client works again after unlock");
        assert!(
            slowest < Duration::from_secs(10),
            "an encrypt took {slowest:?}"
        );
        all.extend(codes);
    }
    for (p, code, msg) in &all {
        assert_ne!(*p, NORMAL, "an error before the token went away: {msg}");
        assert!(
            matches!(code, ErrorCode::TokenUnavailable | ErrorCode::TokenError),
            "a typed token error, got {code}: {msg}"
        );
    }
    drop(c);
    assert!(env.is_running());
    env.assert_intact(&keys);
    dek_create(&env.client(), &keys.kek).expect("dek.create after recovery");
    eprintln!(
        "token_vanishing: {} typed errors ({:?}): {:?}",
        all.len(),
        all.iter()
            .map(|(_, c, _)| c.to_string())
            .collect::<BTreeSet<_>>(),
        t0.elapsed()
    );
}
