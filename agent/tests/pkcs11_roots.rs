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
    // The KEK B opened before the re-initializations is stale, never silently wrong.
    match opened_b.generate_dek() {
        Err(RootError::Stale { .. }) | Ok(_) => {}
        Err(e) => panic!("an old opened KEK: want Stale, got {e}"),
    }
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
