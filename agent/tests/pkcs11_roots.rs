//! Several PKCS#11 roots in one process, on tokens of one SoftHSM config (one module): both
//! work side by side, locking one leaves the other working, one token's files vanishing and
//! returning is recovered while the other keeps working (after at most a `Stale` and a re-login
//! with the PIN it holds, as the hierarchy's `with_recovery` does), a root whose `[root.env]`
//! disagrees is refused, and several matching tokens or root objects are `Ambiguous`, naming
//! what tells them apart.
//!
//! Real SoftHSM (softhsm-setup.sh --add-token); nothing is skipped. The tests that use the
//! module run one at a time: the token-loss test re-initializes the module on purpose.

mod common;

use keyward_agent::config::Config;
use keyward_agent::root::{self, Kek, Root, RootError, StoredRoot};
use keyward_proto::secret::Pin;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the hierarchy does around every root call: on `Stale`, recover (re-login with the held
/// PIN) and try once more. Counts the recoveries.
fn with_recovery<T>(
    r: &dyn Root,
    recoveries: &mut u32,
    mut f: impl FnMut() -> Result<T, RootError>,
) -> Result<T, RootError> {
    match f() {
        Err(RootError::Stale { .. }) => {
            *recoveries += 1;
            r.recover()?;
            f()
        }
        other => other,
    }
}

/// A KEK made and opened, a DEK sealed and opened under it: the root works.
fn works(r: &dyn Root, recoveries: &mut u32, what: &str) {
    let wrapped = with_recovery(r, recoveries, || r.generate_kek())
        .unwrap_or_else(|e| panic!("{what}: generate KEK: {e}"));
    let kek: Box<dyn Kek> = with_recovery(r, recoveries, || r.open_kek(&wrapped.bytes))
        .unwrap_or_else(|e| panic!("{what}: open KEK: {e}"));
    let (dek, sealed) = with_recovery(r, recoveries, || {
        let dek = kek.generate_dek()?;
        let sealed = kek.seal(&dek.bytes, &[3; 12], b"ad", b"both roots")?;
        Ok((dek, sealed))
    })
    .unwrap_or_else(|e| panic!("{what}: DEK: {e}"));
    assert_eq!(
        &*kek
            .open(&dek.bytes, &[3; 12], b"ad", &sealed)
            .unwrap_or_else(|e| panic!("{what}: open: {e}")),
        b"both roots"
    );
}

fn stored(made: &root::RootInit) -> StoredRoot {
    StoredRoot {
        locator: Some(made.locator.clone()),
        check: made.check.clone(),
    }
}

#[test]
fn two_roots_on_two_tokens_of_one_module() {
    let _one = serial();
    let pin = Pin::new(common::PIN);
    let a =
        root::from_config(&common::pkcs11_config_on("kw-first", "object=keyward-root", false).root)
            .expect("root A");
    let b =
        root::from_config(&common::pkcs11_config_on("kw-second", "object=keyward-root", true).root)
            .expect("root B");
    let made_a = a.init(&pin).expect("init A");
    let made_b = b.init(&pin).expect("init B");
    assert!(
        made_a.locator.contains("token=kw-first"),
        "{}",
        made_a.locator
    );
    assert!(
        made_b.locator.contains("token=kw-second"),
        "{}",
        made_b.locator
    );
    let mut rec_a = 0;
    let mut rec_b = 0;

    // Both work, side by side; then after a lock and unlock of each.
    works(&*a, &mut rec_a, "A");
    works(&*b, &mut rec_b, "B");
    a.lock().expect("lock A");
    b.lock().expect("lock B");
    a.unlock(&pin, &stored(&made_a)).expect("unlock A");
    b.unlock(&pin, &stored(&made_b)).expect("unlock B");
    works(&*a, &mut rec_a, "A after unlock");
    works(&*b, &mut rec_b, "B after unlock");
    assert_eq!((rec_a, rec_b), (0, 0), "nothing went stale yet");

    // Lock one: the other keeps working, without a recovery.
    let kek_b = b.generate_kek().expect("KEK under B");
    let opened_b = b.open_kek(&kek_b.bytes).expect("open under B");
    a.lock().expect("lock A");
    assert!(matches!(a.generate_kek(), Err(RootError::Locked { .. })));
    works(&*b, &mut rec_b, "B while A is locked");
    let dek = opened_b.generate_dek().expect("B's opened KEK still works");
    assert_eq!(rec_b, 0, "locking A never disturbs B");
    a.unlock(&pin, &stored(&made_a)).expect("unlock A again");
    works(&*a, &mut rec_a, "A unlocked again");

    // A's token files vanish: A fails, typed; its unlock re-initializes the module (the only
    // way SoftHSM heals), so B goes stale once and logs in again with the PIN it holds.
    let kek_a = a.generate_kek().expect("KEK under A before the loss");
    let old_a = a.open_kek(&kek_a.bytes).expect("opened before the loss");
    let dir = common::token_dir("kw-first");
    // Outside the token directory: SoftHSM takes every directory inside it for a token.
    let away = common::tokens().path.join("kw-first.away");
    std::fs::rename(&dir, &away).expect("move A's token files away");
    a.lock().expect("lock A");
    for _ in 0..2 {
        match a.unlock(&pin, &stored(&made_a)) {
            Err(
                RootError::Unavailable { .. }
                | RootError::Token { .. }
                | RootError::RootMissing { .. }
                | RootError::Stale { .. },
            ) => {}
            other => panic!("unlock A without its files: {other:?}"),
        }
    }
    works(&*b, &mut rec_b, "B while A's files are gone");
    // The module was re-initialized under B: B saw exactly one Stale and logged in again.
    assert_eq!(rec_b, 1, "B's recoveries while A's files are gone");
    let b_recoveries_while_gone = rec_b;

    // They return: A unlocks (re-initializing the module once more) and opens its old KEK; B
    // still works, after at most one more Stale and re-login.
    std::fs::rename(&away, &dir).expect("restore A's token files");
    a.unlock(&pin, &stored(&made_a))
        .expect("unlock A once its files are back");
    let k = a
        .open_kek(&kek_a.bytes)
        .expect("A opens its KEK made before the loss");
    k.generate_dek().expect("and uses it");
    works(&*a, &mut rec_a, "A after its files returned");
    works(&*b, &mut rec_b, "B after A recovered");
    // A's unlock re-initialized the module once more: one more Stale and re-login for B.
    assert_eq!(
        rec_b,
        b_recoveries_while_gone + 1,
        "B recovered {rec_b} times in all"
    );
    // B's KEK made before all this opens again (after its recovery), and its DEK with it.
    let again = with_recovery(&*b, &mut rec_b, || b.open_kek(&kek_b.bytes)).expect("reopen");
    let sealed = again.seal(&dek.bytes, &[5; 12], b"x", b"y").expect("seal");
    assert_eq!(
        &*again.open(&dek.bytes, &[5; 12], b"x", &sealed).unwrap(),
        b"y"
    );
    // B's KEKs live in agent memory (an EC root): the one opened before still works.
    opened_b
        .generate_dek()
        .expect("an ecdh-p256 KEK is in memory");
    // A's KEK opened before the re-initializations is a token object of a generation that is
    // gone: Stale, never silently another object; and dropping it destroys nothing, though its
    // handle number may now name A's new KEK object.
    let k2 = a.open_kek(&kek_a.bytes).expect("A opens its KEK once more");
    match old_a.generate_dek() {
        Err(RootError::Stale { .. }) => {}
        other => {
            panic!("an AES KEK opened before the re-initialization: want Stale, got {other:?}")
        }
    }
    drop(old_a);
    k.generate_dek()
        .expect("A's KEK opened since survives the old one dropping");
    k2.generate_dek().expect("and so does the second");
    a.lock().expect("lock A");
    b.lock().expect("lock B");
}

#[test]
fn a_root_whose_env_disagrees_is_refused() {
    let t = common::tokens();
    let base = common::pkcs11_aes_config();
    let path = t.path.join("keyward.toml");
    // At config load: [root] and an [[extra_root]] on another SOFTHSM2_CONF.
    let text = format!(
        "{}\n[[extra_root]]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=kw-second?module-path=/usr/lib/softhsm/libsofthsm2.so\"\n[extra_root.env]\nSOFTHSM2_CONF = \"elsewhere.conf\"\n",
        t.config_text
    );
    let e = Config::parse(&text, &path).expect_err("two SOFTHSM2_CONF values");
    let m = e.to_string();
    assert!(m.contains("disagree on [root.env] SOFTHSM2_CONF"), "{m}");
    assert!(m.contains("elsewhere.conf"), "{m}");
    // The same with the same value is one agent's two roots.
    let text = format!(
        "{}\n[[extra_root]]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=kw-second?module-path=/usr/lib/softhsm/libsofthsm2.so\"\n[extra_root.env]\nSOFTHSM2_CONF = \"softhsm2.conf\"\n",
        t.config_text
    );
    let c = Config::parse(&text, &path).expect("same env");
    assert_eq!(c.root_env().expect("env"), base.root_env().expect("env"));
    // After start-up: a root whose env is not the process's is refused, never applied.
    let other = Config::parse(
        &t.config_text.replace(
            "SOFTHSM2_CONF = \"softhsm2.conf\"",
            "SOFTHSM2_CONF = \"elsewhere.conf\"",
        ),
        &path,
    )
    .expect("parse");
    let before = std::env::var("SOFTHSM2_CONF").expect("applied at start-up");
    match root::from_config(&other.root) {
        Err(RootError::Config(m)) => {
            assert!(m.contains("SOFTHSM2_CONF"), "{m}");
            assert!(m.contains("applied once, at start-up"), "{m}");
        }
        Err(e) => panic!("want Config, got {e}"),
        Ok(_) => panic!("a root with another SOFTHSM2_CONF was built"),
    }
    assert_eq!(std::env::var("SOFTHSM2_CONF").expect("still set"), before);
}

#[test]
fn ambiguous_tokens_and_root_objects_name_what_tells_them_apart() {
    let _one = serial();
    let pin = Pin::new(common::PIN);
    // Two root objects with one label on token kw-dup, told apart by CKA_ID.
    let one =
        root::from_config(&common::pkcs11_config_on("kw-dup", "object=dup;id=%01", false).root)
            .expect("root id 01");
    let two =
        root::from_config(&common::pkcs11_config_on("kw-dup", "object=dup;id=%02", false).root)
            .expect("root id 02");
    one.init(&pin).expect("init id 01");
    two.init(&pin).expect("init id 02");
    one.lock().expect("lock");
    two.lock().expect("lock");
    let by_label = root::from_config(&common::pkcs11_config_on("kw-dup", "object=dup", false).root)
        .expect("root by label only");
    match by_label.unlock(&pin, &StoredRoot::default()) {
        Err(RootError::Ambiguous { detail, .. }) => {
            assert!(detail.contains("object=dup;id=%01"), "{detail}");
            assert!(detail.contains("object=dup;id=%02"), "{detail}");
            assert!(detail.contains("add the `id=`"), "{detail}");
        }
        other => panic!("want Ambiguous, got {other:?}"),
    }
    // The id picks one.
    two.unlock(&pin, &StoredRoot::default())
        .expect("id=%02 unlocks");
    two.generate_kek().expect("and works");
    two.lock().expect("lock");

    // A URI naming no token, on a module with several: Ambiguous, naming the tokens.
    let any = root::from_config(&common::pkcs11_config_on("", "object=keyward-root", false).root)
        .expect("root on any token");
    match any.unlock(&pin, &StoredRoot::default()) {
        Err(RootError::Ambiguous { detail, .. }) => {
            assert!(detail.contains("token=kw-first"), "{detail}");
            assert!(detail.contains("token=kw-dup"), "{detail}");
            assert!(detail.contains("serial="), "{detail}");
        }
        other => panic!("want Ambiguous, got {other:?}"),
    }
}

/// Requests on root B from several threads while root A's module is re-initialized again and
/// again (A's token lost and unlocked): no call is inside the library when it finalizes (SoftHSM
/// crashes then), and every request on B succeeds, after `Stale` and re-login where needed.
#[test]
fn requests_on_one_root_survive_the_other_roots_reinitializations() {
    let _one = serial();
    let pin = Pin::new(common::PIN);
    let make = |token: &str, ec: bool| {
        let r = root::from_config(&common::pkcs11_config_on(token, "object=busy-root", ec).root)
            .expect("root");
        let made = r.init(&pin).expect("init");
        (r, made)
    };
    let (a, made_a) = make("kw-first", false);
    // Both AES: every request on B runs in the token.
    let (b, _made_b) = make("kw-second", false);
    let b: std::sync::Arc<dyn Root> = std::sync::Arc::from(b);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Stop the workers however this test ends (they must not outlive it into the next one).
    struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _stop_on_drop = StopOnDrop(stop.clone());
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let b = b.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut done = 0u32;
                let mut stale = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || done < 5 {
                    let mut tries = 0;
                    loop {
                        let attempt = (|| {
                            let w = b.generate_kek()?;
                            let k = b.open_kek(&w.bytes)?;
                            let d = k.generate_dek()?;
                            let s = k.seal(&d.bytes, &[9; 12], b"", b"busy")?;
                            k.open(&d.bytes, &[9; 12], b"", &s)
                        })();
                        match attempt {
                            Ok(pt) => {
                                assert_eq!(&*pt, b"busy");
                                break;
                            }
                            Err(RootError::Stale { .. }) if tries < 10 => {
                                tries += 1;
                                stale += 1;
                                // A recovery can itself meet the next re-initialization:
                                // Stale again, and the request is retried.
                                match b.recover() {
                                    Ok(()) | Err(RootError::Stale { .. }) => {}
                                    Err(e) => panic!("worker {i}: recover: {e}"),
                                }
                            }
                            Err(e) => panic!("worker {i}: {e}"),
                        }
                    }
                    done += 1;
                }
                (done, stale)
            })
        })
        .collect();
    let dir = common::token_dir("kw-first");
    let away = common::tokens().path.join("kw-first.busy-away");
    for _ in 0..3 {
        std::fs::rename(&dir, &away).expect("move A's token files away");
        a.lock().expect("lock A");
        assert!(
            a.unlock(&pin, &stored(&made_a)).is_err(),
            "A without its files"
        );
        std::fs::rename(&away, &dir).expect("restore A's token files");
        a.unlock(&pin, &stored(&made_a)).expect("unlock A");
        a.generate_kek().expect("A works");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut stale = 0;
    for w in workers {
        let (done, s) = w.join().expect("a worker on B panicked");
        assert!(done >= 5, "{done}");
        stale += s;
    }
    // B's requests did meet the re-initializations (and came through them).
    assert!(stale >= 1, "no request on B went stale");
    a.lock().expect("lock A");
    b.lock().expect("lock B");
}

/// Two root objects on ONE token (two labels; AES beside AES, and an EC root beside an AES
/// root), as `root add` / `root rotate` to another object on the agent's own token make them:
/// they share the token's one login. A KEK exported from one is imported into the other (what
/// `root add` does); locking one leaves the other logged in, its opened KEKs working, with no
/// recovery; unlocking one again does not log the other out; a wrong PIN while the token is
/// logged in is `PinIncorrect`; after a re-initialization of the module both log in again (one
/// `Stale` each); destroying one root object leaves the other.
#[test]
fn two_roots_on_one_token_share_its_login() {
    let _one = serial();
    let pin = Pin::new(common::PIN);
    for (label_a, label_b, b_ec) in [("same-a", "same-b", false), ("same-c", "same-ec", true)] {
        let what = format!("{label_a} + {label_b}");
        let on = |label: &str, ec: bool| {
            root::from_config(
                &common::pkcs11_config_on("kw-second", &format!("object={label}"), ec).root,
            )
            .expect("root")
        };
        let a = on(label_a, false);
        let b = on(label_b, b_ec);
        let made_a = a.init(&pin).expect("init A");
        let opened_early = a.open_kek(&a.generate_kek().unwrap().bytes).expect("open");
        let made_b = b
            .init(&pin)
            .unwrap_or_else(|e| panic!("{what}: init B beside A: {e}"));
        opened_early
            .generate_dek()
            .unwrap_or_else(|e| panic!("{what}: B's init logged A out: {e}"));
        let (mut rec_a, mut rec_b) = (0, 0);
        works(&*a, &mut rec_a, "A beside B");
        works(&*b, &mut rec_b, "B beside A");
        assert_eq!((rec_a, rec_b), (0, 0), "{what}: nothing went stale");

        // What `root add` does: a KEK of A exported and imported into B opens under B.
        let w = a.generate_kek().expect("KEK under A");
        let exported = a.export_kek(&w.bytes).expect("export from A");
        let wb = b.import_kek(exported.expose()).expect("import into B");
        let kek_b = b.open_kek(&wb.bytes).expect("B opens A's KEK");
        let kek_a = a.open_kek(&w.bytes).expect("A opens it too");
        let dek = kek_a.generate_dek().expect("DEK");
        let sealed = kek_a.seal(&dek.bytes, &[1; 12], b"ad", b"one KEK").unwrap();
        assert_eq!(
            &*kek_b.open(&dek.bytes, &[1; 12], b"ad", &sealed).unwrap(),
            b"one KEK"
        );
        drop(kek_b);

        // Lock B: A stays logged in, its opened KEK works, no recovery.
        b.lock().expect("lock B");
        assert!(matches!(b.generate_kek(), Err(RootError::Locked { .. })));
        kek_a
            .generate_dek()
            .unwrap_or_else(|e| panic!("{what}: locking B logged A out: {e}"));
        works(&*a, &mut rec_a, "A while B is locked");
        // A wrong PIN for B while the token is logged in: refused, A undisturbed.
        match b.unlock(&Pin::new("wrong-pin-0000"), &stored(&made_b)) {
            Err(RootError::PinIncorrect { .. }) => {}
            other => panic!("{what}: wrong PIN beside A: {other:?}"),
        }
        kek_a.generate_dek().expect("A after B's wrong PIN");
        b.unlock(&pin, &stored(&made_b)).expect("unlock B again");
        kek_a
            .generate_dek()
            .unwrap_or_else(|e| panic!("{what}: B's unlock logged A out: {e}"));
        works(&*b, &mut rec_b, "B unlocked again");
        // And the other way round.
        a.lock().expect("lock A");
        works(&*b, &mut rec_b, "B while A is locked");
        a.unlock(&pin, &stored(&made_a)).expect("unlock A again");
        assert_eq!(
            (rec_a, rec_b),
            (0, 0),
            "{what}: no lock or unlock disturbed the other"
        );

        // A root that is not there (on another token) re-initializes the module at its unlock:
        // both roots of the shared token see one `Stale` and log in again.
        let absent = on_token("kw-first", "object=nothing-here");
        assert!(absent.unlock(&pin, &StoredRoot::default()).is_err());
        works(&*a, &mut rec_a, "A after the re-initialization");
        works(&*b, &mut rec_b, "B after the re-initialization");
        assert_eq!((rec_a, rec_b), (1, 1), "{what}: one Stale each");

        // Destroying A's object leaves B's (and B logged in).
        a.destroy_root().expect("destroy A");
        works(&*b, &mut rec_b, "B after A's object is gone");
        a.lock().expect("lock A");
        assert!(matches!(
            a.unlock(&pin, &stored(&made_a)),
            Err(RootError::RootMissing { .. })
        ));
        b.lock().expect("lock B");
        b.unlock(&pin, &stored(&made_b))
            .expect("B's object is still there");
        b.destroy_root().expect("destroy B");
        b.lock().expect("lock B");
    }
}

fn on_token(token: &str, object: &str) -> Box<dyn Root> {
    root::from_config(&common::pkcs11_config_on(token, object, false).root).expect("root")
}
