//! DEK versions, rewrap and revocation, tested in-process on a [`MemoryRoot`] (as
//! `hierarchy_tests.rs`). `cargo test -p keyward-agent --lib hierarchy_lifecycle` runs these.
// Compiled only under #[cfg(test)]: `mod tests` at the end of lifecycle.rs includes this file.

use super::*;
use crate::config::UnlockPolicy;
use crate::error::Missing;
use crate::keystore::{KeyKind, KeyState, Keystore, Purpose};
use crate::root::memory::MemoryRoot;
use keyward_envelope::aes256gcm;
use keyward_envelope::Serialized;
use keyward_proto::secret::Pin;
use std::sync::Arc;

const PIN: &str = "right-pin-1234";

struct Fixture {
    h: Hierarchy,
    _dir: tempfile::TempDir,
}

fn ready() -> (Fixture, Uuid) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).expect("keystore"));
    let h = Hierarchy::new(
        ks,
        Box::new(MemoryRoot::new()),
        UnlockPolicy {
            backoff_base_ms: 0,
            ..UnlockPolicy::default()
        },
    );
    h.init(&Pin::new(PIN)).expect("init");
    let kek = h.kek_create(Some("k".into())).expect("kek");
    (Fixture { h, _dir: dir }, kek)
}

fn dek(f: &Fixture) -> String {
    f.h.dek_create(None, Purpose::Personal, true, None)
        .expect("dek")
        .to_string()
}

/// The `ad` a Cryppo string carries.
fn ad_of(ct: &str) -> String {
    let Serialized::Encrypted(d) = Serialized::parse(ct).unwrap() else {
        panic!("not encrypted")
    };
    d.gcm().unwrap().ad.to_string()
}

#[test]
fn hierarchy_lifecycle_ad_format_parses_both_forms_and_refuses_odd_versions() {
    let id = Uuid::new_v4();
    assert_eq!(ad_for(&id, 1), format!("keyward:dek:{id}"));
    assert_eq!(ad_for(&id, 7), format!("keyward:dek:{id}:v7"));
    let s = id.to_string();
    assert_eq!(parse_ad(&ad_for(&id, 1)).unwrap(), Some((s.as_str(), 1)));
    assert_eq!(parse_ad(&ad_for(&id, 7)).unwrap(), Some((s.as_str(), 7)));
    assert_eq!(parse_ad("something else").unwrap(), None);
    for bad in ["v", "v0", "v1", "v01", "v-2", "v+2", "v2x", "v99999999999"] {
        let ad = format!("keyward:dek:{id}:{bad}");
        assert!(
            matches!(parse_ad(&ad), Err(DecryptFailure::BadVersion)),
            "{ad}"
        );
    }
}

#[test]
fn hierarchy_lifecycle_rotate_keeps_old_ciphertexts_and_new_ones_name_the_version() {
    let (f, _) = ready();
    let d = dek(&f);
    let v1 = f.h.encrypt(&d, b"before").unwrap();
    // Version 1 ciphertexts are written exactly as before versions existed.
    assert_eq!(ad_of(&v1), format!("keyward:dek:{d}"));
    let exported_v1 = f.h.dek_export(&d).unwrap();
    assert_eq!(f.h.dek_rotate(&d).unwrap(), 2);
    assert_eq!(f.h.dek_rotate(&d).unwrap(), 3);
    let v3 = f.h.encrypt(&d, b"after").unwrap();
    assert_eq!(ad_of(&v3), format!("keyward:dek:{d}:v3"));
    assert_eq!(&f.h.decrypt(&v1, None).unwrap()[..], b"before");
    assert_eq!(&f.h.decrypt(&v3, None).unwrap()[..], b"after");
    // A new version is a new key.
    assert_ne!(&f.h.dek_export(&d).unwrap()[..], &exported_v1[..]);
    let rec = f.h.dek_show(&d).unwrap();
    assert_eq!((rec.version, rec.min_version), (3, None));
    // Made outside the agent with an exported key: v1 and v3 strings in the agent's format.
    let k1: [u8; 32] = exported_v1[..].try_into().unwrap();
    let k3: [u8; 32] = f.h.dek_export(&d).unwrap()[..].try_into().unwrap();
    let out1 = aes256gcm::encrypt(&k1, b"outside 1", &format!("keyward:dek:{d}")).unwrap();
    let out3 = aes256gcm::encrypt(&k3, b"outside 3", &format!("keyward:dek:{d}:v3")).unwrap();
    assert_eq!(&f.h.decrypt(&out1, None).unwrap()[..], b"outside 1");
    assert_eq!(&f.h.decrypt(&out3, None).unwrap()[..], b"outside 3");
    // Named with the wrong version: authentication fails.
    let wrong = aes256gcm::encrypt(&k1, b"x", &format!("keyward:dek:{d}:v2")).unwrap();
    assert!(matches!(
        f.h.decrypt(&wrong, None),
        Err(AgentError::Root(
            crate::root::RootError::DecryptFailed { .. }
        ))
    ));
    // A version that does not exist, and one that is not canonical.
    let v9 = aes256gcm::encrypt(&k3, b"x", &format!("keyward:dek:{d}:v9")).unwrap();
    assert!(matches!(
        f.h.decrypt(&v9, None),
        Err(AgentError::DecryptFailed(DecryptFailure::DekVersion {
            version: 9,
            ..
        }))
    ));
    let v03 = aes256gcm::encrypt(&k3, b"x", &format!("keyward:dek:{d}:v03")).unwrap();
    assert!(matches!(
        f.h.decrypt(&v03, None),
        Err(AgentError::DecryptFailed(DecryptFailure::BadVersion))
    ));
    // Not named (a foreign ad) with --dek: every version is tried, newest first.
    let foreign1 = aes256gcm::encrypt(&k1, b"foreign", "elsewhere").unwrap();
    assert_eq!(&f.h.decrypt(&foreign1, Some(&d)).unwrap()[..], b"foreign");
    // Rewrap: the newest version, same plaintext.
    let re = f.h.rewrap(&v1, None).unwrap();
    assert_eq!(ad_of(&re), format!("keyward:dek:{d}:v3"));
    assert_eq!(&f.h.decrypt(&re, None).unwrap()[..], b"before");
}

#[test]
fn hierarchy_lifecycle_min_version_retires_and_warns_and_checks_its_range() {
    let (f, _) = ready();
    let d = dek(&f);
    let v1 = f.h.encrypt(&d, b"one").unwrap();
    f.h.dek_rotate(&d).unwrap();
    let v2 = f.h.encrypt(&d, b"two").unwrap();
    for bad in [0, 3, u32::MAX] {
        assert!(
            matches!(
                f.h.dek_min_version(&d, bad),
                Err(AgentError::InvalidArgs {
                    arg: "min_version",
                    ..
                })
            ),
            "{bad}"
        );
    }
    let set = f.h.dek_min_version(&d, 2).unwrap();
    assert_eq!(set.newly_retired, Some((1, 1)));
    assert!(set.warning().unwrap().contains("version 1"));
    match f.h.decrypt(&v1, None) {
        Err(AgentError::VersionRetired { version, min, .. }) => assert_eq!((version, min), (1, 2)),
        other => panic!("expected VersionRetired, got {other:?}"),
    }
    assert_eq!(
        AgentError::VersionRetired {
            id: Uuid::nil(),
            version: 1,
            min: 2
        }
        .code(),
        keyward_proto::ErrorCode::VersionRetired
    );
    assert!(matches!(
        f.h.rewrap(&v1, None),
        Err(AgentError::VersionRetired { .. })
    ));
    assert_eq!(&f.h.decrypt(&v2, None).unwrap()[..], b"two");
    // Setting it again warns about nothing new; lowering it lets version 1 decrypt again.
    assert_eq!(f.h.dek_min_version(&d, 2).unwrap().warning(), None);
    assert_eq!(f.h.dek_min_version(&d, 1).unwrap().warning(), None);
    assert_eq!(&f.h.decrypt(&v1, None).unwrap()[..], b"one");
    assert_eq!(f.h.dek_show(&d).unwrap().min_version, Some(1));
}

#[test]
fn hierarchy_lifecycle_data_keys_and_raw_gcm_follow_versions() {
    let (f, _) = ready();
    let d = dek(&f);
    let k1 = f.h.datakey_create(&d).unwrap();
    assert_eq!(k1.version, 1);
    let iv = [3u8; 12];
    let sealed1 = f.h.gcm_seal(&d, &iv, b"aad", 16, b"raw one").unwrap();
    let short1 = f.h.gcm_seal(&d, &iv, b"aad", 8, b"raw short").unwrap();
    f.h.dek_rotate(&d).unwrap();
    let k2 = f.h.datakey_create(&d).unwrap();
    assert_eq!(k2.version, 2);
    assert_eq!(
        &f.h.datakey_open(&d, 1, &k1.wrapped).unwrap()[..],
        &k1.key[..]
    );
    assert_eq!(
        &f.h.datakey_open(&d, 2, &k2.wrapped).unwrap()[..],
        &k2.key[..]
    );
    // The wrong version does not open it; a version that does not exist is decrypt_failed.
    assert!(f.h.datakey_open(&d, 2, &k1.wrapped).is_err());
    assert!(matches!(
        f.h.datakey_open(&d, 3, &k1.wrapped),
        Err(AgentError::DecryptFailed(DecryptFailure::DekVersion { .. }))
    ));
    assert!(matches!(
        f.h.datakey_open(&d, 0, &k1.wrapped),
        Err(AgentError::DecryptFailed(DecryptFailure::DekVersion { .. }))
    ));
    // Raw GCM: sealed under version 1 still opens (newest tried first, then older).
    let sealed2 = f.h.gcm_seal(&d, &iv, b"aad", 16, b"raw two").unwrap();
    assert_ne!(sealed1, sealed2);
    assert_eq!(
        &f.h.gcm_open(&d, &iv, b"aad", 16, &sealed1).unwrap()[..],
        b"raw one"
    );
    assert_eq!(
        &f.h.gcm_open(&d, &iv, b"aad", 16, &sealed2).unwrap()[..],
        b"raw two"
    );
    assert_eq!(
        &f.h.gcm_open(&d, &iv, b"aad", 8, &short1).unwrap()[..],
        b"raw short"
    );
    f.h.dek_min_version(&d, 2).unwrap();
    assert!(matches!(
        f.h.datakey_open(&d, 1, &k1.wrapped),
        Err(AgentError::VersionRetired { .. })
    ));
    assert!(f.h.gcm_open(&d, &iv, b"aad", 16, &sealed1).is_err());
}

#[test]
fn hierarchy_lifecycle_bad_input_is_typed() {
    let (f, _) = ready();
    let d = dek(&f);
    let unknown = Uuid::new_v4().to_string();
    assert!(matches!(
        f.h.dek_rotate(&unknown),
        Err(AgentError::NotFound(Missing::Key { .. }))
    ));
    assert!(matches!(
        f.h.dek_rotate("not-a-uuid"),
        Err(AgentError::NotFound(Missing::NotAnId { .. }))
    ));
    assert!(matches!(
        f.h.dek_min_version(&unknown, 1),
        Err(AgentError::NotFound(_))
    ));
    for garbage in ["", "garbage", "Aes256Gcm.xx.yy"] {
        assert!(
            matches!(f.h.rewrap(garbage, None), Err(AgentError::DecryptFailed(_))),
            "{garbage:?}"
        );
    }
    // A Cryppo string made elsewhere (no Keyward ad): needs --dek, then fails authentication.
    let foreign = aes256gcm::encrypt(&[9u8; 32], b"x", "elsewhere").unwrap();
    assert!(matches!(
        f.h.rewrap(&foreign, None),
        Err(AgentError::DecryptFailed(DecryptFailure::NoDekNamed))
    ));
    assert!(f.h.rewrap(&foreign, Some(&d)).is_err());
    // Sharing DEKs are not rotated.
    let s =
        f.h.dek_create(None, Purpose::Sharing, false, None)
            .unwrap()
            .to_string();
    assert!(matches!(
        f.h.dek_rotate(&s),
        Err(AgentError::WrongKey(WrongKey::SharedDekRotation { .. }))
    ));
    // Locked: typed refusals.
    f.h.lock().unwrap();
    assert!(matches!(f.h.dek_rotate(&d), Err(AgentError::Locked { .. })));
    assert!(matches!(
        f.h.dek_min_version(&d, 1),
        Err(AgentError::Locked { .. })
    ));
    assert!(matches!(
        f.h.rewrap(&ct_placeholder(), None),
        Err(AgentError::Locked { .. })
    ));
    assert!(matches!(
        f.h.revoke(KeyKind::Dek, &d),
        Err(AgentError::Locked { .. })
    ));
}

fn ct_placeholder() -> String {
    "Aes256Gcm.x.y".into()
}

#[test]
fn hierarchy_lifecycle_revocation_refuses_every_use_and_a_kek_takes_its_children() {
    let (f, kek) = ready();
    let d = dek(&f);
    let other_kek = f.h.kek_create(None).unwrap().to_string();
    let kept =
        f.h.dek_create(Some(&other_kek), Purpose::Personal, false, None)
            .unwrap()
            .to_string();
    let kp =
        f.h.keypair_create(Some(&kek.to_string()), None, false, None)
            .unwrap()
            .to_string();
    let ct = f.h.encrypt(&d, b"secret").unwrap();
    let kept_ct = f.h.encrypt(&kept, b"kept").unwrap();
    f.h.sign(&kp, b"m", false).unwrap();

    // DEK revoke: every use refused; twice is key_inactive too.
    let d2 =
        f.h.dek_create(Some(&kek.to_string()), Purpose::Personal, true, None)
            .unwrap()
            .to_string();
    let ct2 = f.h.encrypt(&d2, b"x").unwrap();
    assert_eq!(f.h.revoke(KeyKind::Dek, &d2).unwrap().len(), 1);
    let inactive = |r: Result<(), AgentError>| {
        assert!(
            matches!(
                r,
                Err(AgentError::KeyInactive {
                    state: KeyState::Revoked,
                    ..
                })
            ),
            "{r:?}"
        )
    };
    inactive(f.h.encrypt(&d2, b"x").map(|_| ()));
    inactive(f.h.decrypt(&ct2, None).map(|_| ()));
    inactive(f.h.rewrap(&ct2, None).map(|_| ()));
    inactive(f.h.dek_rotate(&d2).map(|_| ()));
    inactive(f.h.dek_export(&d2).map(|_| ()));
    inactive(f.h.datakey_create(&d2).map(|_| ()));
    inactive(f.h.revoke(KeyKind::Dek, &d2).map(|_| ()));

    // KEK revoke: the KEK and everything under it.
    let gone = f.h.revoke(KeyKind::Kek, &kek.to_string()).unwrap();
    assert_eq!(gone[0], kek);
    assert!(gone.contains(&Uuid::parse_str(&d).unwrap()));
    assert!(gone.contains(&Uuid::parse_str(&kp).unwrap()));
    for id in [&d, &kp] {
        let rec = f.h.ks.get(&Uuid::parse_str(id).unwrap()).unwrap().unwrap();
        assert_eq!(rec.state, KeyState::Revoked, "{id}");
    }
    inactive(f.h.decrypt(&ct, None).map(|_| ()));
    inactive(f.h.sign(&kp, b"m", false).map(|_| ()));
    inactive(
        f.h.dek_create(Some(&kek.to_string()), Purpose::Personal, false, None)
            .map(|_| ()),
    );
    inactive(f.h.revoke(KeyKind::Kek, &kek.to_string()).map(|_| ()));
    // Keys under another KEK are untouched.
    assert_eq!(&f.h.decrypt(&kept_ct, None).unwrap()[..], b"kept");

    // Even a child whose own row still said active is refused under a revoked KEK.
    let mut child =
        f.h.ks
            .get(&Uuid::parse_str(&kept).unwrap())
            .unwrap()
            .unwrap();
    child.id = Uuid::new_v4();
    child.parent = Some(kek);
    f.h.ks.insert(&child).unwrap();
    inactive(f.h.encrypt(&child.id.to_string(), b"x").map(|_| ()));

    // Keypair revoke.
    let kp2 =
        f.h.keypair_create(Some(&other_kek), None, false, None)
            .unwrap()
            .to_string();
    f.h.revoke(KeyKind::Keypair, &kp2).unwrap();
    inactive(f.h.sign(&kp2, b"m", false).map(|_| ()));
    inactive(f.h.sign_digest(&kp2, &[1; 32]).map(|_| ()));
    assert!(matches!(
        f.h.revoke(KeyKind::Keypair, &Uuid::new_v4().to_string()),
        Err(AgentError::NotFound(_))
    ));
    // A DEK id given as a keypair is not found as one.
    assert!(matches!(
        f.h.revoke(KeyKind::Keypair, &kept),
        Err(AgentError::NotFound(_))
    ));
}

/// A KEK with DEKs (two with several versions), P-256 and Ed25519 keypairs under it, and a
/// ciphertext or signature of each, plus a DEK under another KEK.
fn populated(f: &Fixture, kek: &Uuid) -> (Vec<(String, String)>, Vec<String>) {
    let k = kek.to_string();
    let mut cts = Vec::new();
    for i in 0..5 {
        let d =
            f.h.dek_create(Some(&k), Purpose::Personal, false, None)
                .unwrap()
                .to_string();
        cts.push((
            d.clone(),
            f.h.encrypt(&d, format!("v1 {i}").as_bytes()).unwrap(),
        ));
        if i < 2 {
            f.h.dek_rotate(&d).unwrap();
            cts.push((
                d.clone(),
                f.h.encrypt(&d, format!("v2 {i}").as_bytes()).unwrap(),
            ));
        }
    }
    let p256 = f.h.keypair_create(Some(&k), None, false, None).unwrap();
    let ed =
        f.h.keypair_create(
            Some(&k),
            None,
            false,
            Some(crate::keystore::Algorithm::Ed25519),
        )
        .unwrap();
    (cts, vec![p256.to_string(), ed.to_string()])
}

fn all_still_work(f: &Fixture, cts: &[(String, String)], kps: &[String]) {
    for (d, ct) in cts {
        let pt = f.h.decrypt(ct, None).unwrap_or_else(|e| panic!("{d}: {e}"));
        assert!(pt.starts_with(b"v"), "{d}");
        f.h.encrypt(d, b"again").unwrap();
    }
    for kp in kps {
        f.h.sign(kp, b"m", false)
            .unwrap_or_else(|e| panic!("{kp}: {e}"));
    }
}

#[test]
fn hierarchy_lifecycle_kek_rotate_rewraps_every_child_and_destroys_the_old_wrap() {
    let (f, kek) = ready();
    let (cts, kps) = populated(&f, &kek);
    let before = f.h.ks.get(&kek).unwrap().unwrap();
    let child_before =
        f.h.ks
            .get(&Uuid::parse_str(&cts[0].0).unwrap())
            .unwrap()
            .unwrap();
    let r = f.h.kek_rotate(&kek.to_string()).unwrap();
    // 5 DEKs + 2 extra versions + 2 keypairs.
    assert_eq!((r.version, r.rewrapped), (2, 9));
    let after = f.h.ks.get(&kek).unwrap().unwrap();
    assert_eq!(after.version, 2);
    assert_ne!(after.wrapped, before.wrapped, "the old wrap is gone");
    let child_after = f.h.ks.get(&child_before.id).unwrap().unwrap();
    assert_ne!(child_after.wrapped, child_before.wrapped);
    assert!(f.h.ks.rotations_pending().unwrap().is_empty());
    all_still_work(&f, &cts, &kps);
    // After a lock and unlock (no cached handles), too; and again.
    f.h.lock().unwrap();
    f.h.unlock(&Pin::new(PIN)).unwrap();
    all_still_work(&f, &cts, &kps);
    assert_eq!(f.h.kek_rotate(&kek.to_string()).unwrap().version, 3);
    all_still_work(&f, &cts, &kps);
    // Refusals: unknown, revoked, locked.
    assert!(matches!(
        f.h.kek_rotate(&Uuid::new_v4().to_string()),
        Err(AgentError::NotFound(_))
    ));
    let other = f.h.kek_create(None).unwrap().to_string();
    f.h.revoke(KeyKind::Kek, &other).unwrap();
    assert!(matches!(
        f.h.kek_rotate(&other),
        Err(AgentError::KeyInactive { .. })
    ));
    f.h.lock().unwrap();
    assert!(matches!(
        f.h.kek_rotate(&kek.to_string()),
        Err(AgentError::Locked { .. })
    ));
}

#[test]
fn hierarchy_lifecycle_an_interrupted_kek_rotation_is_finished_at_unlock() {
    let (f, kek) = ready();
    let (cts, kps) = populated(&f, &kek);
    // What a crash after the journal and part of the items leaves.
    let w = f.h.root.generate_kek().unwrap();
    let pending = PendingRotation {
        kek,
        wrapped: w.bytes,
        scheme: w.scheme.as_str().to_string(),
        started: crate::keystore::now(),
    };
    f.h.ks.rotation_begin(&pending).unwrap();
    let old = f.h.kek_handle(&f.h.ks.get(&kek).unwrap().unwrap()).unwrap();
    let new = f.h.root.open_kek(&pending.wrapped).unwrap();
    let todo = f.h.ks.rotation_todo(&kek).unwrap();
    assert_eq!(todo.len(), 9);
    let half: Vec<RotationItem> = todo[..4]
        .iter()
        .map(|(r, v, w)| RotationItem {
            kek,
            key: r.id,
            version: *v,
            wrapped: rewrap_child(r, w, &*old, &*new).unwrap(),
        })
        .collect();
    f.h.ks.rotation_put(&half).unwrap();
    drop((old, new));
    // Until finished, everything works under the old wrap, and new keys may appear.
    all_still_work(&f, &cts, &kps);
    let late =
        f.h.dek_create(Some(&kek.to_string()), Purpose::Personal, false, None)
            .unwrap()
            .to_string();
    let late_ct = f.h.encrypt(&late, b"v late").unwrap();
    // Unlock finishes it.
    f.h.lock().unwrap();
    f.h.unlock(&Pin::new(PIN)).unwrap();
    assert!(f.h.ks.rotations_pending().unwrap().is_empty());
    let k = f.h.ks.get(&kek).unwrap().unwrap();
    assert_eq!(
        (k.version, k.wrapped.as_deref()),
        (2, Some(&pending.wrapped[..]))
    );
    all_still_work(&f, &cts, &kps);
    all_still_work(&f, &[(late, late_ct)], &[]);
}

#[test]
fn hierarchy_lifecycle_a_tampered_rotation_item_stops_the_swap() {
    let (f, kek) = ready();
    let (cts, kps) = populated(&f, &kek);
    let w = f.h.root.generate_kek().unwrap();
    let pending = PendingRotation {
        kek,
        wrapped: w.bytes,
        scheme: w.scheme.as_str().to_string(),
        started: crate::keystore::now(),
    };
    f.h.ks.rotation_begin(&pending).unwrap();
    let todo = f.h.ks.rotation_todo(&kek).unwrap();
    // An item written outside the agent (no MAC).
    let conn = rusqlite::Connection::open(f.h.ks.path().unwrap()).unwrap();
    conn.execute(
        "INSERT INTO kek_rotation_items (kek, key, version, wrapped) VALUES (?1, ?2, 1, x'00')",
        [kek.to_string(), todo[0].0.id.to_string()],
    )
    .unwrap();
    assert!(matches!(
        f.h.kek_rotate(&kek.to_string()),
        Err(AgentError::Keystore(
            crate::keystore::KeystoreError::Tampered { .. }
        ))
    ));
    // Nothing was swapped: the old wraps still open everything; the journal was dropped, so
    // the next rotation starts afresh and succeeds.
    assert_eq!(f.h.ks.get(&kek).unwrap().unwrap().version, 1);
    assert!(f.h.ks.rotations_pending().unwrap().is_empty());
    all_still_work(&f, &cts, &kps);
    assert_eq!(f.h.kek_rotate(&kek.to_string()).unwrap().version, 2);
    all_still_work(&f, &cts, &kps);
}

/// Issue #17 item 8's bench found this: on a shared keystore an agent's copy of a DEK's record can
/// lag another agent's rotation (its notification still on the way), and a ciphertext under the
/// new version was refused as naming a version the DEK did not have. A version above the copy's
/// newest is looked up in the keystore before refusing; one the keystore lacks is still refused.
#[test]
fn hierarchy_lifecycle_a_version_newer_than_a_stale_record_copy_opens() {
    let (f, _) = ready();
    let d = dek(&f);
    let id: Uuid = d.parse().unwrap();
    let stale = f.h.ks.get(&id).unwrap().unwrap();
    assert_eq!(stale.version, 1);
    assert_eq!(f.h.dek_rotate(&d).unwrap(), 2);
    let fresh = f.h.ks.get(&id).unwrap().unwrap();
    let wrapped =
        f.h.dek_version_for_open(&stale, 2)
            .expect("version 2 opens");
    assert_eq!(wrapped, f.h.dek_version_wrapped(&fresh, 2).unwrap());
    match f.h.dek_version_for_open(&stale, 3) {
        Err(AgentError::DecryptFailed(crate::error::DecryptFailure::DekVersion {
            version: 3,
            current: 2,
            ..
        })) => {}
        other => panic!("version 3: {other:?}"),
    }
}
