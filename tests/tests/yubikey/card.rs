//! The YubiKey (PIV) root on the virtual card through the real pcscd: init, unlock, KEK, DEK,
//! encrypt, decrypt; the card's PIN retries in wrong-PIN answers; card removal and reinsertion.
//! Each test starts from a blank card (`vcard-setup.sh --fresh card-start`).

use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::vcard::{self, CARD_SERIAL, FRESH_RETRIES, WRONG_CARD_PIN};
use keyward_tests::{code, expect_code, pin, wait_for, Options, RootKind, TestEnv, UnlockPolicy};
use std::time::Instant;

fn start() -> TestEnv {
    vcard::fresh_card();
    TestEnv::start(RootKind::YubiKey)
}

#[test]
fn yubikey_round_trip_status_restart_and_no_second_root() {
    let t = Instant::now();
    let mut env = start();
    let c = env.client();
    assert_eq!(c.hello_info().root_kind, "yubikey");
    let keys = env.init_with_keys(false, b"kept by a yubikey");
    let token = env.client().hello_info().token.clone();
    assert_eq!(
        token,
        format!("YubiKey serial {CARD_SERIAL}, firmware 5.2.7, slot 9d")
    );
    let status = String::from_utf8(env.cli_ok(&["status"], None)).unwrap();
    assert!(status.contains("YubiKey serial 5437251"), "{status}");

    // A second KEK needs no card (wrapped to the recorded public key) but opens with it.
    let c = env.client();
    let kek2 = c.run(|c| c.kek_create(None)).expect("kek 2").id;
    let args = keyward_tests::keyward_proto::ops::DekCreateArgs {
        kek: Some(kek2),
        ..Default::default()
    };
    let dek2 = c.run(|c| c.dek_create(&args)).expect("dek 2").id;
    let ct2 = c.run(|c| c.encrypt(&dek2, b"second")).expect("encrypt 2");

    // After a restart the keystore's record finds the same key on the card.
    env.restart();
    let c = env.client();
    assert!(c.hello_info().locked);
    expect_code(
        c.run(|c| c.decrypt(&keys.ciphertext, None)),
        ErrorCode::Locked,
    );
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    env.assert_intact(&keys);
    let pt = env
        .client()
        .run(|c| c.decrypt(&ct2, None))
        .expect("decrypt 2");
    assert_eq!(pt.expose(), b"second");

    // Another agent (its own keystore) on the same card: the slot holds a key, init refuses.
    let other = TestEnv::start(RootKind::YubiKey);
    let c = other.client();
    expect_code(
        c.run(|c| c.init(pin(other.pin()))),
        ErrorCode::AlreadyInitialized,
    );
    eprintln!("yubikey round trip: {:?}", t.elapsed());
}

#[test]
fn yubikey_wrong_pin_reports_card_retries_then_blocks() {
    let t = Instant::now();
    // The agent's own policy is looser than the card's: the card's count must show.
    let opts = Options {
        unlock: UnlockPolicy {
            max_attempts: 10,
            free_attempts: 10,
            backoff_base_ms: 100,
            backoff_max_ms: 100,
        },
        ..Options::default()
    };
    vcard::fresh_card();
    let env = TestEnv::start_with(RootKind::YubiKey, opts);
    let keys = env.init_with_keys(false, b"pin");
    let c = env.client();
    c.run(|c| c.lock()).expect("lock");

    let e = expect_code(
        c.run(|c| c.unlock(pin(WRONG_CARD_PIN))),
        ErrorCode::PinIncorrect,
    );
    assert_eq!(
        e.body().unwrap().attempts_left,
        Some(FRESH_RETRIES - 1),
        "attempts_left must be the card's retries: {e}"
    );
    // A right PIN resets the card's counter.
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    let pt = c
        .run(|c| c.decrypt(&keys.ciphertext, None))
        .expect("decrypt");
    assert_eq!(pt.expose(), b"pin");
    c.run(|c| c.lock()).expect("lock");

    // Three wrong PINs block the card's PIN: then even the right one is refused.
    for left in (0..FRESH_RETRIES).rev() {
        let r = c.run(|c| c.unlock(pin(WRONG_CARD_PIN)));
        match code(r) {
            ErrorCode::PinIncorrect if left > 0 => {}
            ErrorCode::PinLocked if left == 0 => {}
            other => panic!("wrong PIN with {left} card retries left: got {other}"),
        }
    }
    expect_code(c.run(|c| c.unlock(pin(env.pin()))), ErrorCode::PinLocked);
    drop(env);
    // Leave a usable card behind.
    vcard::fresh_card();
    eprintln!("yubikey wrong PIN: {:?}", t.elapsed());
}

#[test]
fn yubikey_card_removed_then_reinserted_needs_the_pin_again() {
    let t = Instant::now();
    let mut env = start();
    let keys = env.init_with_keys(false, b"survives removal");

    vcard::remove_card();
    let c = env.client();
    // pcscd notices the removal within a moment: until then the cached KEK may still answer.
    wait_for("token_unavailable after the card was removed", || {
        match c.run(|c| c.decrypt(&keys.ciphertext, None)) {
            Ok(_) => None,
            Err(e) => {
                assert_eq!(
                    e.code(),
                    Some(ErrorCode::TokenUnavailable),
                    "while the card is out: {e}"
                );
                Some(())
            }
        }
    });
    assert!(env.is_running(), "the agent died when the card was removed");
    // The PIN is forgotten: locked, and unlocking needs the card.
    let c = env.client();
    assert!(c.hello_info().locked);
    assert!(
        c.hello_info().token.contains("card not present"),
        "{}",
        c.hello_info().token
    );
    expect_code(
        c.run(|c| c.decrypt(&keys.ciphertext, None)),
        ErrorCode::Locked,
    );
    expect_code(
        c.run(|c| c.unlock(pin(env.pin()))),
        ErrorCode::TokenUnavailable,
    );

    vcard::insert_card();
    let c = env.client();
    assert!(c.hello_info().locked);
    expect_code(
        c.run(|c| c.decrypt(&keys.ciphertext, None)),
        ErrorCode::Locked,
    );
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock after reinsertion");
    env.assert_intact(&keys);
    eprintln!("yubikey removal: {:?}", t.elapsed());
}

/// Hot-plug between two operations: the card is removed and put back while nothing uses it, so
/// no operation ever finds it missing. pcsc-lite's per-reader event counter still tells, and
/// the next operation treats it as a new card: the PIN is forgotten (`locked`), an unlock brings
/// everything back.
#[test]
fn yubikey_card_swapped_between_operations_is_noticed() {
    let env = start();
    let keys = env.init_with_keys(false, b"swapped");
    let c = env.client();
    c.run(|c| c.decrypt(&keys.ciphertext, None))
        .expect("decrypt before the swap");
    vcard::remove_card();
    wait_for("pcscd to see the card gone", || {
        (!vcard::card_seen_by_pcscd()).then_some(())
    });
    // `card-start` returns once pcscd shows the card again.
    vcard::insert_card();
    expect_code(
        c.run(|c| c.decrypt(&keys.ciphertext, None)),
        ErrorCode::Locked,
    );
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock after the swap");
    let pt = c
        .run(|c| c.decrypt(&keys.ciphertext, None))
        .expect("decrypt after unlock");
    assert_eq!(pt.expose(), b"swapped");
}
