//! The hierarchy's policy, tested in-process on a [`MemoryRoot`] and a keystore in a temporary
//! directory: no token, no socket. `cargo test -p keyward-agent --lib hierarchy` runs these.
// Compiled only under #[cfg(test)]: `mod tests` at the end of hierarchy.rs includes this file.

use super::*;
use crate::config::UnlockPolicy;
use crate::error::{Choice, DecryptFailure, Missing};
use crate::keystore::{KeyKind, KeyRecord, KeyState, Keystore, Purpose};
use crate::root::memory::MemoryRoot;

const PIN: &str = "right-pin-1234";

struct Fixture {
    h: Hierarchy,
    root: MemoryRoot,
    _dir: tempfile::TempDir,
}

fn pin(s: &str) -> Pin {
    Pin::new(s)
}

/// A hierarchy with no wait between wrong PINs unless a test asks for one.
fn policy(max_attempts: u32, free_attempts: u32, backoff_base_ms: u64) -> UnlockPolicy {
    UnlockPolicy {
        max_attempts,
        free_attempts,
        backoff_base_ms,
        backoff_max_ms: 60_000,
        ..UnlockPolicy::default()
    }
}

fn fixture_with(root: MemoryRoot, policy: UnlockPolicy) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).expect("keystore"));
    let h = Hierarchy::new(ks, Box::new(root.clone()), policy);
    Fixture { h, root, _dir: dir }
}

fn fixture() -> Fixture {
    fixture_with(MemoryRoot::new(), policy(5, 10, 0))
}

/// Initialized and unlocked, with one KEK.
fn ready() -> (Fixture, Uuid) {
    let f = fixture();
    f.h.init(&pin(PIN)).expect("init");
    let kek = f.h.kek_create(Some("k".into())).expect("kek");
    (f, kek)
}

fn dek(f: &Fixture, exportable: bool) -> String {
    f.h.dek_create(None, Purpose::Personal, exportable, None)
        .expect("dek")
        .to_string()
}

#[test]
fn hierarchy_wrong_pin_counts_and_tells_attempts_left() {
    let f = fixture();
    f.h.init(&pin(PIN)).unwrap();
    f.h.lock().unwrap();
    match f.h.unlock(&pin("wrong")) {
        Err(AgentError::PinIncorrect { attempts_left, .. }) => assert_eq!(attempts_left, 4),
        other => panic!("expected PinIncorrect, got {other:?}"),
    }
    match f.h.unlock(&pin("wrong")) {
        Err(AgentError::PinIncorrect { attempts_left, .. }) => assert_eq!(attempts_left, 3),
        other => panic!("expected PinIncorrect, got {other:?}"),
    }
    assert!(f.h.is_locked());
}

#[test]
fn hierarchy_attempt_limit_refuses_even_the_right_pin_until_reset() {
    let f = fixture_with(MemoryRoot::new(), policy(2, 10, 0));
    f.h.init(&pin(PIN)).unwrap();
    f.h.lock().unwrap();
    assert!(matches!(
        f.h.unlock(&pin("w1")),
        Err(AgentError::PinIncorrect { .. })
    ));
    assert!(matches!(f.h.unlock(&pin("w2")), Err(AgentError::PinLocked)));
    assert!(matches!(f.h.unlock(&pin(PIN)), Err(AgentError::PinLocked)));
    assert!(f.h.is_locked());
    f.h.reset_pin_attempts().unwrap();
    f.h.unlock(&pin(PIN)).expect("unlock after reset");
    assert!(!f.h.is_locked());
}

#[test]
fn hierarchy_backoff_starts_after_the_free_attempts() {
    let f = fixture_with(MemoryRoot::new(), policy(10, 1, 60_000));
    f.h.init(&pin(PIN)).unwrap();
    f.h.lock().unwrap();
    // The first wrong PIN is free, and says what the next one will cost.
    match f.h.unlock(&pin("wrong")) {
        Err(AgentError::PinIncorrect { retry_after_ms, .. }) => {
            assert_eq!(retry_after_ms, Some(60_000))
        }
        other => panic!("expected PinIncorrect, got {other:?}"),
    }
    // Within the back-off even the right PIN is not tried.
    match f.h.unlock(&pin(PIN)) {
        Err(AgentError::PinBackoff { retry_after_ms }) => {
            assert!(retry_after_ms > 0 && retry_after_ms <= 60_000)
        }
        other => panic!("expected PinBackoff, got {other:?}"),
    }
    assert!(f.h.is_locked());
}

#[test]
fn hierarchy_good_unlock_clears_the_counter() {
    let f = fixture_with(MemoryRoot::new(), policy(3, 10, 0));
    f.h.init(&pin(PIN)).unwrap();
    f.h.lock().unwrap();
    for _ in 0..2 {
        assert!(f.h.unlock(&pin("wrong")).is_err());
    }
    f.h.unlock(&pin(PIN)).unwrap();
    f.h.lock().unwrap();
    // Two more wrong PINs are allowed again: the count restarted at zero.
    match f.h.unlock(&pin("wrong")) {
        Err(AgentError::PinIncorrect { attempts_left, .. }) => assert_eq!(attempts_left, 2),
        other => panic!("expected PinIncorrect, got {other:?}"),
    }
}

#[test]
fn hierarchy_card_retries_bound_attempts_left_and_zero_locks() {
    let f = fixture_with(MemoryRoot::with_card_retries(2), policy(10, 10, 0));
    f.h.init(&pin(PIN)).unwrap();
    f.h.lock().unwrap();
    match f.h.unlock(&pin("wrong")) {
        // The card has 1 retry left, the agent 9: the fewer is reported.
        Err(AgentError::PinIncorrect { attempts_left, .. }) => assert_eq!(attempts_left, 1),
        other => panic!("expected PinIncorrect, got {other:?}"),
    }
    match f.h.unlock(&pin("wrong")) {
        Err(e) => assert_eq!(e.code(), keyward_proto::ErrorCode::PinLocked, "{e:?}"),
        Ok(()) => panic!("a wrong PIN unlocked"),
    }
}

#[test]
fn hierarchy_init_never_makes_a_second_root_and_unlock_needs_one() {
    let f = fixture();
    assert!(matches!(
        f.h.unlock(&pin(PIN)),
        Err(AgentError::NotInitialized)
    ));
    assert!(!f.h.is_initialized().unwrap());
    f.h.init(&pin(PIN)).unwrap();
    assert!(f.h.is_initialized().unwrap());
    assert!(matches!(
        f.h.init(&pin(PIN)),
        Err(AgentError::AlreadyInitialized)
    ));
}

#[test]
fn hierarchy_key_operations_refuse_while_locked_or_uninitialized() {
    let f = fixture();
    assert!(matches!(
        f.h.kek_create(None),
        Err(AgentError::NotInitialized)
    ));
    f.h.init(&pin(PIN)).unwrap();
    f.h.kek_create(None).unwrap();
    let d = dek(&f, false);
    f.h.lock().unwrap();
    match f.h.encrypt(&d, b"x") {
        Err(AgentError::Locked { op }) => assert_eq!(op, "encrypt"),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(matches!(
        f.h.dek_create(None, Purpose::Personal, false, None),
        Err(AgentError::Locked { .. })
    ));
}

#[test]
fn hierarchy_kek_choice_one_none_or_ambiguous() {
    let f = fixture();
    f.h.init(&pin(PIN)).unwrap();
    assert!(matches!(
        f.h.dek_create(None, Purpose::Personal, false, None),
        Err(AgentError::NotFound(Missing::NoneToChoose {
            what: Choice::Kek
        }))
    ));
    let k1 = f.h.kek_create(None).unwrap();
    let d =
        f.h.dek_create(None, Purpose::Personal, false, None)
            .unwrap();
    assert_eq!(f.h.ks.get(&d).unwrap().unwrap().parent, Some(k1));
    let k2 = f.h.kek_create(None).unwrap();
    assert!(matches!(
        f.h.dek_create(None, Purpose::Personal, false, None),
        Err(AgentError::Ambiguous {
            what: Choice::Kek,
            count: 2
        })
    ));
    let d2 =
        f.h.dek_create(Some(&k2.to_string()), Purpose::Sharing, false, None)
            .unwrap();
    let rec = f.h.ks.get(&d2).unwrap().unwrap();
    assert_eq!(
        (rec.parent, rec.purpose),
        (Some(k2), Some(Purpose::Sharing))
    );
    assert!(matches!(
        f.h.dek_create(Some("not-a-uuid"), Purpose::Personal, false, None),
        Err(AgentError::NotFound(Missing::NotAnId {
            kind: KeyKind::Kek,
            ..
        }))
    ));
    let ghost = Uuid::new_v4();
    assert!(matches!(
        f.h.dek_create(Some(&ghost.to_string()), Purpose::Personal, false, None),
        Err(AgentError::NotFound(Missing::Key { kind: KeyKind::Kek, id })) if id == ghost
    ));
}

#[test]
fn hierarchy_decrypt_finds_the_dek_from_the_ciphertext() {
    let (f, _) = ready();
    let (d1, d2) = (dek(&f, false), dek(&f, false));
    let ct = f.h.encrypt(&d1, b"hello").unwrap();
    assert_eq!(&f.h.decrypt(&ct, None).unwrap()[..], b"hello");
    assert_eq!(&f.h.decrypt(&ct, Some(&d1)).unwrap()[..], b"hello");
    // Naming another DEK than the ciphertext's is refused before any key is used.
    match f.h.decrypt(&ct, Some(&d2)) {
        Err(AgentError::DecryptFailed(DecryptFailure::DekMismatch { named, given })) => {
            assert_eq!((named, given), (d1.clone(), d2.clone()))
        }
        other => panic!("expected DecryptFailed, got {other:?}"),
    }
    assert!(matches!(
        f.h.decrypt("not cryppo", None),
        Err(AgentError::DecryptFailed(DecryptFailure::NotCryppo(_)))
    ));
}

#[test]
fn hierarchy_foreign_ciphertext_needs_a_dek_and_then_decrypts() {
    let (f, _) = ready();
    let d = dek(&f, true);
    let key = f.h.dek_export(&d).unwrap();
    // A Cryppo string made outside the agent with the exported key names no Keyward DEK.
    let key32: &[u8; 32] = key.as_slice().try_into().unwrap();
    let foreign = keyward_envelope::aes256gcm::encrypt(key32, b"made elsewhere", "none").unwrap();
    assert!(matches!(
        f.h.decrypt(&foreign, None),
        Err(AgentError::DecryptFailed(DecryptFailure::NoDekNamed))
    ));
    assert_eq!(
        &f.h.decrypt(&foreign, Some(&d)).unwrap()[..],
        b"made elsewhere"
    );
}

#[test]
fn hierarchy_export_only_for_exportable_deks() {
    let (f, _) = ready();
    let (plain, open) = (dek(&f, false), dek(&f, true));
    assert!(matches!(
        f.h.dek_export(&plain),
        Err(AgentError::NotExportable { id }) if id.to_string() == plain
    ));
    let key = f.h.dek_export(&open).unwrap();
    assert_eq!(key.len(), 32);
    // The exported key is the one the agent encrypts with.
    let ct = f.h.encrypt(&open, b"offline").unwrap();
    let key32: &[u8; 32] = key.as_slice().try_into().unwrap();
    let offline = keyward_envelope::aes256gcm::decrypt_with_key(&ct, key32).unwrap();
    assert_eq!(&offline[..], b"offline");
}

#[test]
fn hierarchy_revoked_deks_do_nothing_and_retired_deks_only_decrypt() {
    let (f, kek) = ready();
    let (retired, revoked) = (dek(&f, true), dek(&f, true));
    let ct = f.h.encrypt(&retired, b"old data").unwrap();
    let ct2 = f.h.encrypt(&revoked, b"gone").unwrap();
    let mut successor = KeyRecord::new(KeyKind::Dek, "aes-kwp");
    successor.parent = Some(kek);
    f.h.ks
        .replace(
            &Uuid::parse_str(&retired).unwrap(),
            KeyState::Retired,
            &successor,
            None,
        )
        .unwrap();
    f.h.ks
        .replace(
            &Uuid::parse_str(&revoked).unwrap(),
            KeyState::Revoked,
            &KeyRecord::new(KeyKind::Dek, "aes-kwp"),
            None,
        )
        .unwrap();
    // Retired: still decrypts what it encrypted, encrypts and exports nothing new.
    assert_eq!(&f.h.decrypt(&ct, None).unwrap()[..], b"old data");
    assert!(matches!(
        f.h.encrypt(&retired, b"new"),
        Err(AgentError::KeyInactive {
            state: KeyState::Retired,
            ..
        })
    ));
    assert!(matches!(
        f.h.dek_export(&retired),
        Err(AgentError::KeyInactive { .. })
    ));
    // Revoked: nothing at all.
    for r in [
        f.h.decrypt(&ct2, None).map(|_| ()),
        f.h.encrypt(&revoked, b"x").map(|_| ()),
    ] {
        assert!(
            matches!(
                r,
                Err(AgentError::KeyInactive {
                    state: KeyState::Revoked,
                    ..
                })
            ),
            "{r:?}"
        );
    }
}

#[test]
fn hierarchy_retired_kek_is_not_chosen() {
    let (f, k1) = ready();
    let k2 = f.h.kek_create(None).unwrap();
    let mut successor = KeyRecord::new(KeyKind::Kek, "aes-kwp");
    successor.parent = f.h.ks.get(&k1).unwrap().unwrap().parent;
    f.h.ks
        .replace(&k1, KeyState::Retired, &successor, None)
        .unwrap();
    // k1 retired; k2 and the successor are active: ambiguous, but naming k1 is refused.
    assert!(matches!(
        f.h.dek_create(Some(&k1.to_string()), Purpose::Personal, false, None),
        Err(AgentError::KeyInactive { kind: KeyKind::Kek, id, .. }) if id == k1
    ));
    let d =
        f.h.dek_create(Some(&k2.to_string()), Purpose::Personal, false, None)
            .unwrap();
    assert_eq!(f.h.ks.get(&d).unwrap().unwrap().parent, Some(k2));
}

#[test]
fn hierarchy_stale_handles_recover_once_and_the_request_succeeds() {
    let (f, _) = ready();
    let d = dek(&f, false);
    let ct = f.h.encrypt(&d, b"before").unwrap();
    f.root.make_stale();
    let ct2 = f.h.encrypt(&d, b"after").expect("recovered");
    assert_eq!(f.root.recoveries(), 1);
    assert_eq!(&f.h.decrypt(&ct, None).unwrap()[..], b"before");
    assert_eq!(&f.h.decrypt(&ct2, None).unwrap()[..], b"after");
}

#[test]
fn hierarchy_lock_drops_opened_keks_and_unlock_brings_them_back() {
    let (f, _) = ready();
    let d = dek(&f, false);
    let ct = f.h.encrypt(&d, b"data").unwrap();
    f.h.lock().unwrap();
    assert!(crate::hierarchy::lock(&f.h.keks).is_empty());
    assert!(matches!(
        f.h.decrypt(&ct, None),
        Err(AgentError::Locked { .. })
    ));
    f.h.unlock(&pin(PIN)).unwrap();
    assert_eq!(&f.h.decrypt(&ct, None).unwrap()[..], b"data");
}

#[test]
fn hierarchy_lost_root_is_never_recreated() {
    let (f, _) = ready();
    f.h.lock().unwrap();
    f.root.remove_root();
    let e = f.h.unlock(&pin(PIN)).unwrap_err();
    assert!(
        matches!(e, AgentError::Root(RootError::RootMissing { .. })),
        "{e:?}"
    );
    assert!(matches!(
        f.h.init(&pin(PIN)),
        Err(AgentError::AlreadyInitialized)
    ));
}

#[test]
fn hierarchy_encrypt_refuses_more_than_one_request_holds() {
    let (f, _) = ready();
    let d = dek(&f, false);
    let big = vec![0u8; keyward_proto::MAX_PLAINTEXT + 1];
    assert!(matches!(
        f.h.encrypt(&d, &big),
        Err(AgentError::TooLarge {
            op: "encrypt",
            len,
            max: keyward_proto::MAX_PLAINTEXT
        }) if len == big.len()
    ));
}

#[test]
fn hierarchy_key_cache_fills_on_sign_and_is_cleared_on_lock() {
    let (f, _) = ready();
    let p =
        f.h.keypair_create(None, None, false, None)
            .unwrap()
            .to_string();
    let e =
        f.h.keypair_create(None, None, false, Some(crate::keystore::Algorithm::Ed25519))
            .unwrap()
            .to_string();
    assert!(f.h.key_cache.is_empty());
    let first = f.h.sign(&p, b"m", true).unwrap();
    f.h.sign(&e, b"m", true).unwrap();
    assert_eq!(f.h.key_cache.len(), 2);
    // From the cache: the same key signs (ECDSA signatures are randomized, so check the length).
    assert_eq!(f.h.sign(&p, b"m", true).unwrap().len(), first.len());
    f.h.lock().unwrap();
    assert!(f.h.key_cache.is_empty(), "lock clears the key cache");
    assert!(matches!(
        f.h.sign(&p, b"m", true),
        Err(AgentError::Locked { .. })
    ));
    f.h.unlock(&pin(PIN)).unwrap();
    f.h.sign(&p, b"m", true).unwrap();
    assert_eq!(f.h.key_cache.len(), 1);
    f.h.keypair_delete(&p).unwrap();
    assert!(
        f.h.key_cache.is_empty(),
        "a deleted keypair leaves the cache"
    );
}

#[test]
fn hierarchy_datakeys_follow_encrypt_and_decrypt_rules() {
    let (f, kek) = ready();
    let (retired, revoked) = (dek(&f, false), dek(&f, false));
    let made = f.h.datakey_create(&retired).unwrap();
    assert_eq!(made.key.len(), 32);
    assert_eq!(made.wrapped.len(), crate::datakeys::WRAPPED_LEN);
    assert_eq!(made.dek.to_string(), retired);
    let opened =
        f.h.datakey_open(&retired, made.version, &made.wrapped)
            .unwrap();
    assert_eq!(&opened[..], &made.key[..]);
    // Another DEK, another version, or a flipped byte: refused.
    let other = f.h.datakey_create(&revoked).unwrap();
    assert!(matches!(
        f.h.datakey_open(&retired, other.version, &other.wrapped),
        Err(AgentError::Root(RootError::DecryptFailed { .. }))
    ));
    assert!(matches!(
        f.h.datakey_open(&retired, made.version + 1, &made.wrapped),
        Err(AgentError::DecryptFailed(DecryptFailure::DekVersion { .. }))
    ));
    for i in 0..made.wrapped.len() {
        let mut w = made.wrapped.clone();
        w[i] ^= 1;
        assert!(
            f.h.datakey_open(&retired, made.version, &w).is_err(),
            "byte {i}"
        );
    }
    assert!(matches!(
        f.h.datakey_open(&retired, made.version, &made.wrapped[1..]),
        Err(AgentError::InvalidArgs { arg: "wrapped", .. })
    ));
    let mut successor = KeyRecord::new(KeyKind::Dek, "aes-kwp");
    successor.parent = Some(kek);
    let id = |s: &str| Uuid::parse_str(s).unwrap();
    f.h.ks
        .replace(&id(&retired), KeyState::Retired, &successor, None)
        .unwrap();
    f.h.ks
        .replace(
            &id(&revoked),
            KeyState::Revoked,
            &KeyRecord::new(KeyKind::Dek, "aes-kwp"),
            None,
        )
        .unwrap();
    // Retired: opens what it wrapped, makes nothing new. Revoked: nothing.
    let again =
        f.h.datakey_open(&retired, made.version, &made.wrapped)
            .unwrap();
    assert_eq!(&again[..], &made.key[..]);
    assert!(matches!(
        f.h.datakey_create(&retired),
        Err(AgentError::KeyInactive {
            state: KeyState::Retired,
            ..
        })
    ));
    assert!(matches!(
        f.h.datakey_create(&revoked),
        Err(AgentError::KeyInactive {
            state: KeyState::Revoked,
            ..
        })
    ));
    assert!(matches!(
        f.h.datakey_open(&revoked, other.version, &other.wrapped),
        Err(AgentError::KeyInactive {
            state: KeyState::Revoked,
            ..
        })
    ));
    f.h.lock().unwrap();
    assert!(matches!(
        f.h.datakey_create(&retired),
        Err(AgentError::Locked { .. })
    ));
}

// ---- agent authorization (agents.rs) ---------------------------------------------------------

fn did_of(f: &Fixture, id: &Uuid) -> String {
    let rec = f.h.ks.get(id).unwrap().unwrap();
    Hierarchy::public_of(&rec).unwrap().to_did_key()
}

#[test]
fn hierarchy_agents_add_revoke_sign_a_policy_the_identity_root_verifies() {
    use keyward_identity::authz::{verify_policy, AuthzError, Capability};
    let (f, _) = ready();
    assert!(matches!(
        f.h.agents_policy(),
        Err(AgentError::NotFound(Missing::AgentPolicy))
    ));
    let a = f.h.keypair_create(None, None, false, None).unwrap();
    let a_did = did_of(&f, &a);
    let p =
        f.h.agents_add(&a_did, &["sign".into(), "decrypt".into()], None)
            .unwrap();
    assert_eq!(p.policy.seq, 1);
    let root = f.h.ks.by_name(crate::nodes::CLUSTER_ROOT).unwrap().unwrap();
    let root_pub = Hierarchy::public_of(&root).unwrap();
    let v = verify_policy(&p.bytes, Some(&root_pub)).unwrap();
    let a_pub = keyward_identity::PublicKey::parse(&a_did).unwrap();
    v.check(&a_pub, Capability::Sign, crate::keystore::now())
        .unwrap();
    let p = f.h.agents_revoke(&a_did).unwrap();
    assert_eq!(p.policy.seq, 2);
    let stored = f.h.agents_policy().unwrap();
    assert_eq!(stored.bytes, p.bytes);
    assert!(matches!(
        verify_policy(&stored.bytes, Some(&root_pub))
            .unwrap()
            .check(&a_pub, Capability::Sign, crate::keystore::now()),
        Err(AuthzError::Revoked { .. })
    ));
    // Final: listing it again is key_inactive.
    let e = f.h.agents_add(&a_did, &["sign".into()], None).unwrap_err();
    assert_eq!(e.code(), keyward_proto::ErrorCode::KeyInactive, "{e}");
}

#[test]
fn hierarchy_agents_refuses_bad_arguments() {
    let (f, _) = ready();
    let a = f.h.keypair_create(None, None, false, None).unwrap();
    let a_did = did_of(&f, &a);
    for (key, caps, exp) in [
        ("did:key:nope", vec!["sign".to_string()], None),
        (a_did.as_str(), vec!["root".to_string()], None),
        (a_did.as_str(), vec![], None),
        (a_did.as_str(), vec!["sign".to_string()], Some(1)),
    ] {
        let e = f.h.agents_add(key, &caps, exp).unwrap_err();
        assert_eq!(e.code(), keyward_proto::ErrorCode::InvalidArgs, "{e}");
    }
    assert!(f.h.agents_policy().is_err(), "nothing was signed");
}

#[test]
fn hierarchy_agents_open_refuses_a_sender_the_policy_revoked() {
    let (f, _) = ready();
    let me = f.h.keypair_create(None, None, false, None).unwrap();
    let sender = f.h.keypair_create(None, None, false, None).unwrap();
    let (me_did, sender_did) = (did_of(&f, &me), did_of(&f, &sender));
    let sealed = f.h.seal(&me_did, &sender.to_string(), b"hi").unwrap();
    // No policy, then a policy that lists the sender: opens.
    assert_eq!(&f.h.open(&sealed, None).unwrap().0[..], b"hi");
    f.h.agents_add(&sender_did, &["sign".into()], None).unwrap();
    assert_eq!(&f.h.open(&sealed, None).unwrap().0[..], b"hi");
    f.h.agents_revoke(&sender_did).unwrap();
    let e = f.h.open(&sealed, None).unwrap_err();
    assert_eq!(e.code(), keyward_proto::ErrorCode::VerifyFailed);
    assert!(e.to_string().contains("revoked"), "{e}");
}

#[test]
fn hierarchy_agents_a_policy_changed_in_the_keystore_is_tampering() {
    let (f, _) = ready();
    let a = f.h.keypair_create(None, None, false, None).unwrap();
    let b = f.h.keypair_create(None, None, false, None).unwrap();
    let (a_did, b_did) = (did_of(&f, &a), did_of(&f, &b));
    f.h.agents_add(&a_did, &["sign".into()], None).unwrap();
    let first = f.h.ks.meta(crate::agents::META_POLICY).unwrap().unwrap();
    let first_mac =
        f.h.ks
            .meta(crate::agents::META_POLICY_MAC)
            .unwrap()
            .unwrap();
    f.h.agents_revoke(&a_did).unwrap();
    f.h.agents_add(&b_did, &["sign".into()], None).unwrap();
    // A byte changed: the MAC no longer verifies.
    let cur = f.h.ks.meta(crate::agents::META_POLICY).unwrap().unwrap();
    let mut edited = cur.clone().into_bytes();
    let i = edited.len() - 3;
    edited[i] = if edited[i] == b'0' { b'1' } else { b'0' };
    f.h.ks
        .set_meta(
            crate::agents::META_POLICY,
            std::str::from_utf8(&edited).unwrap(),
        )
        .unwrap();
    let e = f.h.agents_policy().err().unwrap();
    assert_eq!(e.code(), keyward_proto::ErrorCode::KeystoreTampered, "{e}");
    // The MAC removed: tampering too.
    f.h.ks.set_meta(crate::agents::META_POLICY, &cur).unwrap();
    f.h.ks.delete_meta(crate::agents::META_POLICY_MAC).unwrap();
    let e = f.h.agents_policy().err().unwrap();
    assert_eq!(e.code(), keyward_proto::ErrorCode::KeystoreTampered, "{e}");
    // An older signed policy with its own MAC put back verifies: a whole older copy of the meta
    // rows is a rollback the MAC cannot see (README says so), like restoring a backup.
    f.h.ks
        .set_metas(&[
            (crate::agents::META_POLICY, Some(&first)),
            (crate::agents::META_POLICY_MAC, Some(&first_mac)),
        ])
        .unwrap();
    assert_eq!(f.h.agents_policy().unwrap().policy.seq, 1);
}

#[test]
fn hierarchy_agents_open_refuses_a_sender_a_peers_policy_revoked() {
    use keyward_identity::authz::{AgentPolicy, Capability};
    let (f, _) = ready();
    let me = f.h.keypair_create(None, None, false, None).unwrap();
    let sender = f.h.keypair_create(None, None, false, None).unwrap();
    let me_did = did_of(&f, &me);
    let sender_pub = keyward_identity::PublicKey::parse(&did_of(&f, &sender)).unwrap();
    let sealed = f.h.seal(&me_did, &sender.to_string(), b"hi").unwrap();
    // The sender's identity (a root of its own) publishes a policy.
    let peer_root = keyward_identity::LocalKey::generate(&mut rand_core::OsRng);
    let mut p = AgentPolicy::new(peer_root.public_key());
    p.add(sender_pub, &[Capability::Sign], None, 1_000).unwrap();
    let listed = p.sign(&peer_root, 1_000).unwrap();
    p.revoke(sender_pub, 2_000).unwrap();
    let revoked = p.sign(&peer_root, 2_000).unwrap();
    assert_eq!(
        &f.h.open_checked(&sealed, None, Some(&listed)).unwrap().0[..],
        b"hi"
    );
    let e = f.h.open_checked(&sealed, None, Some(&revoked)).unwrap_err();
    assert_eq!(e.code(), keyward_proto::ErrorCode::VerifyFailed, "{e}");
    // A policy that does not verify is invalid_args, never ignored.
    let mut bad = revoked.clone();
    *bad.last_mut().unwrap() ^= 1;
    let e = f.h.open_checked(&sealed, None, Some(&bad)).unwrap_err();
    assert_eq!(e.code(), keyward_proto::ErrorCode::InvalidArgs, "{e}");
}

/// A page as `kek.list` asks for it, without a byte budget.
fn kek_ids(f: &Fixture) -> Result<Vec<Uuid>, AgentError> {
    let size = PageSize {
        limit: 10,
        bytes: usize::MAX,
        size: None,
    };
    // Sorted: two keys created within the same second list in id order.
    let mut ids: Vec<Uuid> =
        f.h.kek_page(None, &size)?
            .records
            .iter()
            .map(|r| r.id)
            .collect();
    ids.sort();
    Ok(ids)
}

fn sorted<const N: usize>(mut ids: [Uuid; N]) -> Vec<Uuid> {
    ids.sort();
    ids.to_vec()
}

#[test]
fn hierarchy_list_page_copies_serve_repeats_and_see_every_change() {
    let (f, kek) = ready();
    assert_eq!(kek_ids(&f).unwrap(), [kek]);
    // Kept, and served while nothing changes.
    assert_eq!(lock(&f.h.page_copies).pages.len(), 1);
    assert_eq!(kek_ids(&f).unwrap(), [kek]);
    // The agent's own write: a new KEK shows at once.
    let second = f.h.kek_create(None).unwrap();
    assert_eq!(kek_ids(&f).unwrap(), sorted([kek, second]));
    // A row edited by another process: the copy goes, the row is read again, and its MAC no
    // longer verifies.
    let c = rusqlite::Connection::open(f.h.ks.path().unwrap()).unwrap();
    c.execute(
        "UPDATE keys SET label = 'changed outside' WHERE id = ?1",
        [kek.to_string()],
    )
    .unwrap();
    let e = kek_ids(&f).unwrap_err();
    assert!(
        matches!(
            e,
            AgentError::Keystore(crate::keystore::KeystoreError::Tampered { .. })
        ),
        "{e:?}"
    );
    c.execute(
        "UPDATE keys SET label = 'k' WHERE id = ?1",
        [kek.to_string()],
    )
    .unwrap();
    assert_eq!(kek_ids(&f).unwrap(), sorted([kek, second]));
    // A revocation is a write too: the page shows the new state.
    f.h.revoke(KeyKind::Kek, &second.to_string()).unwrap();
    let size = PageSize {
        limit: 10,
        bytes: usize::MAX,
        size: None,
    };
    let state_of = |id: Uuid| {
        f.h.kek_page(None, &size)
            .unwrap()
            .records
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.state)
    };
    let states = [state_of(kek), state_of(second)];
    assert_eq!(states, [Some(KeyState::Active), Some(KeyState::Revoked)]);
}
