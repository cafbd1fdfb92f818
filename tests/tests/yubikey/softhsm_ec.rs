//! EC (P-256, `ecdh-p256`) roots on SoftHSM: `key_type = "ec"`, ECDH in the token with
//! CKM_ECDH1_DERIVE (KDF NULL). No card: these run in the parallel suite.

use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::{expect_code, pin, RootKind, TestEnv, WRONG_PIN};

#[test]
fn pkcs11_ec_round_trip_restart_and_wrong_pin() {
    let mut env = TestEnv::start(RootKind::Pkcs11Ec);
    let c = env.client();
    assert_eq!(c.hello_info().root_kind, "pkcs11");
    assert!(
        c.hello_info().token.contains("EC P-256"),
        "{}",
        c.hello_info().token
    );
    let keys = env.init_with_keys(true, b"ec root on softhsm");
    let c = env.client();
    // Same KEK, more DEKs: the cached KEK in agent memory.
    let args = keyward_tests::keyward_proto::ops::DekCreateArgs {
        kek: Some(keys.kek.clone()),
        ..Default::default()
    };
    let dek2 = c.run(|c| c.dek_create(&args)).expect("dek 2").id;
    let ct2 = c.run(|c| c.encrypt(&dek2, b"two")).expect("encrypt 2");
    // A second KEK is wrapped to the public key alone.
    let kek2 = c.run(|c| c.kek_create(None)).expect("kek 2").id;
    assert_ne!(kek2, keys.kek);
    let exported = c.run(|c| c.dek_export(&keys.dek)).expect("export");
    assert!(!exported.key.expose().is_empty());

    env.restart();
    let c = env.client();
    assert!(c.hello_info().locked);
    expect_code(c.run(|c| c.unlock(pin(WRONG_PIN))), ErrorCode::PinIncorrect);
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    env.assert_intact(&keys);
    let c = env.client();
    let pt = c.run(|c| c.decrypt(&ct2, None)).expect("decrypt 2");
    assert_eq!(pt.expose(), b"two");
    // init never makes a second root.
    expect_code(
        c.run(|c| c.init(pin(env.pin()))),
        ErrorCode::AlreadyInitialized,
    );
}

#[test]
fn pkcs11_ec_cli_flow() {
    let env = TestEnv::start(RootKind::Pkcs11Ec);
    let pin_line = format!("{}\n", env.pin());
    env.cli_ok(&env.init_args(), Some(pin_line.as_bytes()));
    let kek = env.cli_json(&["kek", "create"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dek = env.cli_json(&["dek", "create", "--kek", &kek], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ct = env.cli_ok(&["encrypt", "--dek", &dek], Some(b"via the cli"));
    env.cli_ok(&["lock"], None);
    assert_eq!(env.cli_json_err(&["decrypt"], Some(&ct)), "locked");
    env.cli_ok(&["unlock", "--pin-stdin"], Some(pin_line.as_bytes()));
    assert_eq!(env.cli_ok(&["decrypt"], Some(&ct)), b"via the cli");
}

/// Hot-plug: the EC root's opened KEKs live in agent memory, so only a check of the token tells
/// that it went away. With the token's files gone while unlocked, a key operation answers a
/// typed token error (the opened KEKs are dropped) instead of carrying on without the token;
/// with the files back, work resumes.
#[test]
fn pkcs11_ec_notices_a_vanished_token_while_unlocked() {
    let env = TestEnv::start(RootKind::Pkcs11Ec);
    let keys = env.init_with_keys(false, b"ec hot-plug");
    let c = env.client();
    // The KEK is opened (cached in memory) before the token goes.
    c.run(|c| c.encrypt(&keys.dek, b"warm")).expect("encrypt");
    let tokens = env.dir().join("tokens");
    let away = env.dir().join("tokens.away");
    std::fs::rename(&tokens, &away).expect("move the token files away");
    let err = c
        .run(|c| c.encrypt(&keys.dek, b"no token"))
        .expect_err("encrypt with the token gone");
    assert_eq!(err.code(), Some(ErrorCode::TokenUnavailable), "{err}");
    // The agent keeps serving.
    assert!(c.run(|c| c.status()).is_ok());
    std::fs::rename(&away, &tokens).expect("restore the token files");
    // The PIN held since unlock logs in again: no unlock needed.
    let c = env.client();
    assert!(
        !c.hello_info().locked,
        "still unlocked after the token came back"
    );
    let pt = c
        .run(|c| c.decrypt(&keys.ciphertext, None))
        .expect("decrypt");
    assert_eq!(pt.expose(), b"ec hot-plug");
}
