//! init → unlock → KEK → DEK → encrypt → decrypt through the client library; restarts; a
//! second init; a locked or uninitialised agent refusing key operations.

use keyward_tests::keyward_proto::ops::{DekCreateArgs, Purpose};
use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::RootKind;
use keyward_tests::{expect_code, pin, TestEnv, WRONG_PIN};

keyward_tests::keyward_e2e_tests!(
    token_files_vanish_and_return,
    round_trip_with_the_client_library,
    restart_keeps_everything_and_starts_locked,
    second_init_is_refused_also_after_restart,
    init_is_refused_when_the_token_has_a_root_but_the_keystore_is_new,
    locked_agent_refuses_key_operations,
    uninitialised_agent_refuses_unlock_and_key_operations,
);

fn round_trip_with_the_client_library(env: &mut TestEnv) {
    let c = env.client();
    let h = c.hello_info().clone();
    assert_eq!(h.protocol, 1);
    assert_eq!(h.root_kind, env.kind().name());
    assert!(!h.initialized && h.locked, "fresh agent: {h:?}");
    assert!(h.ops.iter().any(|o| o == "dek.export"), "ops: {:?}", h.ops);

    let root = c.run(|c| c.init(pin(env.pin()))).expect("init");
    assert!(
        uuid::Uuid::parse_str(&root.id).is_ok(),
        "root id {}",
        root.id
    );
    let st = c.run(|c| c.status()).unwrap();
    assert!(st.initialized, "initialized after init");

    // Lock and unlock once, so the round trip below runs on an unlocked (not just created) root.
    assert!(c.run(|c| c.lock()).unwrap().locked);
    assert!(c.run(|c| c.status()).unwrap().locked);
    assert!(!c.run(|c| c.unlock(pin(env.pin()))).unwrap().locked);
    assert!(!c.run(|c| c.status()).unwrap().locked);

    let kek = c.run(|c| c.kek_create(Some("kek-one".into()))).unwrap().id;
    let keks = c.run(|c| c.kek_list()).unwrap().keys;
    assert_eq!(keks.len(), 1);
    assert_eq!(keks[0].id, kek);
    assert_eq!(keks[0].kind, "kek");
    assert_eq!(keks[0].label.as_deref(), Some("kek-one"));
    assert_eq!(keks[0].parent.as_deref(), Some(root.id.as_str()));
    assert_eq!(keks[0].state, "active");

    let args = DekCreateArgs {
        kek: Some(kek.clone()),
        purpose: Purpose::Sharing,
        exportable: false,
        label: Some("dek-one".into()),
        limits: None,
    };
    let dek = c.run(|c| c.dek_create(&args)).unwrap().id;
    // Without naming the KEK: there is exactly one.
    let default_args = DekCreateArgs::default();
    let dek2 = c.run(|c| c.dek_create(&default_args)).unwrap().id;
    let deks = c.run(|c| c.dek_list(Some(kek.clone()))).unwrap().keys;
    assert_eq!(deks.len(), 2);
    let d = deks.iter().find(|k| k.id == dek).expect("dek listed");
    assert_eq!(d.kind, "dek");
    assert_eq!(d.parent.as_deref(), Some(kek.as_str()));
    assert_eq!(d.purpose, Some(Purpose::Sharing));
    assert!(!d.exportable);
    assert_eq!(d.label.as_deref(), Some("dek-one"));
    let d2 = deks.iter().find(|k| k.id == dek2).expect("dek2 listed");
    assert_eq!(d2.purpose, Some(Purpose::Personal));

    let big: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    for pt in [&b""[..], b"hello, keyward", &big[..]] {
        let ct = c.run(|c| c.encrypt(&dek, pt)).expect("encrypt");
        assert!(ct.starts_with("Aes256Gcm."), "{}", &ct[..20.min(ct.len())]);
        assert_eq!(ct.split('.').count(), 3);
        let back = c.run(|c| c.decrypt(&ct, None)).expect("decrypt");
        assert_eq!(back.expose(), pt);
        // Naming the right DEK is fine; naming another is refused.
        let back = c
            .run(|c| c.decrypt(&ct, Some(&dek)))
            .expect("decrypt --dek");
        assert_eq!(back.expose(), pt);
        expect_code(
            c.run(|c| c.decrypt(&ct, Some(&dek2))),
            ErrorCode::DecryptFailed,
        );
    }
    // Two encryptions of one plaintext differ (fresh IVs).
    let a = c.run(|c| c.encrypt(&dek2, b"same")).unwrap();
    let b = c.run(|c| c.encrypt(&dek2, b"same")).unwrap();
    assert_ne!(a, b);
}

fn restart_keeps_everything_and_starts_locked(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"survives restarts");
    env.restart();
    {
        let c = env.client();
        let h = c.hello_info();
        assert!(h.initialized, "still initialized after restart");
        assert!(h.locked, "locked after restart until unlock");
        expect_code(
            c.run(|c| c.decrypt(&keys.ciphertext, None)),
            ErrorCode::Locked,
        );
        expect_code(c.run(|c| c.encrypt(&keys.dek, b"x")), ErrorCode::Locked);
        // Listing needs no unlock and shows everything.
        let keks = c.run(|c| c.kek_list()).unwrap().keys;
        assert_eq!(keks.len(), 1);
        assert_eq!(keks[0].id, keys.kek);
        c.run(|c| c.unlock(pin(env.pin())))
            .expect("unlock after restart");
        let pt = c.run(|c| c.decrypt(&keys.ciphertext, None)).unwrap();
        assert_eq!(pt.expose(), b"survives restarts");
        // Keys made before the restart still make new ciphertexts.
        let ct = c.run(|c| c.encrypt(&keys.dek, b"after")).unwrap();
        assert_eq!(c.run(|c| c.decrypt(&ct, None)).unwrap().expose(), b"after");
    }
    // A second restart, then everything again through a fresh connection.
    env.restart();
    env.assert_intact(&keys);
}

fn second_init_is_refused_also_after_restart(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"one root only");
    let c = env.client();
    expect_code(
        c.run(|c| c.init(pin(env.pin()))),
        ErrorCode::AlreadyInitialized,
    );
    // A wrong PIN does not change that (and is not even checked).
    expect_code(
        c.run(|c| c.init(pin(WRONG_PIN))),
        ErrorCode::AlreadyInitialized,
    );
    drop(c);
    env.restart();
    let c = env.client();
    expect_code(
        c.run(|c| c.init(pin(env.pin()))),
        ErrorCode::AlreadyInitialized,
    );
    drop(c);
    env.assert_intact(&keys);
}

/// The keystore is lost but the token still holds the root: `init` must not make a second root
/// (it would orphan every backup of the old keystore).
fn init_is_refused_when_the_token_has_a_root_but_the_keystore_is_new(env: &mut TestEnv) {
    env.init();
    env.stop();
    env.fresh_keystore();
    env.start_agent();
    let c = env.client();
    assert!(!c.hello_info().initialized, "new keystore: not initialized");
    // A soft root lives only in its keystore: a new keystore is a new, independent root.
    match env.kind() {
        RootKind::Soft => {
            c.run(|c| c.init(pin(env.pin())))
                .expect("a soft root can be made in a fresh keystore");
        }
        // Hardware roots: the root outlives the keystore, and init never makes a second.
        _ => {
            expect_code(
                c.run(|c| c.init(pin(env.pin()))),
                ErrorCode::AlreadyInitialized,
            );
        }
    }
}

fn locked_agent_refuses_key_operations(env: &mut TestEnv) {
    let keys = env.init_with_keys(true, b"locked away");
    let c = env.client();
    c.run(|c| c.lock()).unwrap();
    assert!(c.run(|c| c.status()).unwrap().locked);
    let locked = ErrorCode::Locked;
    expect_code(c.run(|c| c.kek_create(None)), locked);
    let default_args = DekCreateArgs::default();
    expect_code(c.run(|c| c.dek_create(&default_args)), locked);
    let named = DekCreateArgs {
        kek: Some(keys.kek.clone()),
        ..Default::default()
    };
    expect_code(c.run(|c| c.dek_create(&named)), locked);
    expect_code(c.run(|c| c.encrypt(&keys.dek, b"x")), locked);
    expect_code(c.run(|c| c.decrypt(&keys.ciphertext, None)), locked);
    expect_code(c.run(|c| c.dek_export(&keys.dek)), locked);
    // Locking twice is harmless; the same connection works again after unlock.
    c.run(|c| c.lock()).unwrap();
    c.run(|c| c.unlock(pin(env.pin()))).unwrap();
    let pt = c.run(|c| c.decrypt(&keys.ciphertext, None)).unwrap();
    assert_eq!(pt.expose(), b"locked away");
    assert_eq!(c.run(|c| c.dek_export(&keys.dek)).unwrap().key.len(), 32);
    // Nothing was created while locked.
    assert_eq!(c.run(|c| c.kek_list()).unwrap().keys.len(), 1);
    assert_eq!(c.run(|c| c.dek_list(None)).unwrap().keys.len(), 1);
}

fn uninitialised_agent_refuses_unlock_and_key_operations(env: &mut TestEnv) {
    let c = env.client();
    let dek = uuid::Uuid::new_v4().to_string();
    let ni = ErrorCode::NotInitialized;
    expect_code(c.run(|c| c.unlock(pin(env.pin()))), ni);
    expect_code(c.run(|c| c.kek_create(None)), ni);
    let default_args = DekCreateArgs::default();
    expect_code(c.run(|c| c.dek_create(&default_args)), ni);
    expect_code(c.run(|c| c.encrypt(&dek, b"x")), ni);
    expect_code(c.run(|c| c.dek_export(&dek)), ni);
    assert!(c.run(|c| c.kek_list()).unwrap().keys.is_empty());
    // Init still works afterwards.
    c.run(|c| c.init(pin(env.pin()))).expect("init");
}

/// SoftHSM's token files disappear while the agent is locked, then come back (a restored
/// backup, a remounted disk). Unlock fails with a typed error meanwhile and never makes a new
/// root; once the files are back, unlock works again without restarting the agent (the module is
/// reinitialized) and the old data decrypts.
fn token_files_vanish_and_return(env: &mut TestEnv) {
    if env.kind() != RootKind::Pkcs11 {
        return; // Only the file-backed token has files to lose.
    }
    let keys = env.init_with_keys(false, b"survives");
    let c = env.client();
    c.run(|c| c.lock()).expect("lock");
    let tokens = env.dir().join("tokens");
    let away = env.dir().join("tokens.away");
    std::fs::rename(&tokens, &away).expect("move the token files away");
    for _ in 0..2 {
        let err = c
            .run(|c| c.unlock(pin(env.pin())))
            .expect_err("unlock without token files");
        let code = err.code().expect("a typed agent error");
        assert!(
            [ErrorCode::TokenError, ErrorCode::TokenUnavailable].contains(&code),
            "{err}"
        );
    }
    std::fs::rename(&away, &tokens).expect("restore the token files");
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock after the files are back");
    let pt = c
        .run(|c| c.decrypt(&keys.ciphertext, None))
        .expect("decrypt");
    assert_eq!(pt.expose(), b"survives");
    // Still exactly one root object on the token.
    let listing = env.token_objects(Some("secrkey"));
    assert_eq!(listing.matches("keyward-root").count(), 1, "{listing}");
}
