//! `root.rotate` in-process on [`MemoryRoot`]s sharing one keystore: the new root becomes every
//! KEK's parent and opens everything, the old one opens nothing, `--destroy-old`,
//! `--compromised` (DEKs listed, KEKs rotated at the new root's unlock), an interrupted rotation
//! continued, and the refusals.
// Compiled only under #[cfg(test)]: `mod tests` at the end of root_rotate.rs includes this file.

use super::*;
use crate::config::UnlockPolicy;
use crate::keystore::{Keystore, Purpose};
use crate::root::memory::MemoryRoot;
use std::sync::Arc;

const PIN: &str = "right-pin-1234";

fn pin() -> Pin {
    Pin::new(PIN)
}

fn hierarchy(ks: &Arc<Keystore>, root: &MemoryRoot) -> Hierarchy {
    Hierarchy::new(
        ks.clone(),
        Box::new(root.clone()),
        UnlockPolicy {
            max_attempts: 5,
            free_attempts: 10,
            backoff_base_ms: 0,
            ..UnlockPolicy::default()
        },
    )
}

struct One {
    a: Hierarchy,
    a_root: MemoryRoot,
    ks: Arc<Keystore>,
    kek: Uuid,
    deks: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

/// Root A initialized with a KEK, three DEKs and a ciphertext under each.
fn one_root() -> One {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).expect("keystore"));
    let a_root = MemoryRoot::new();
    let a = hierarchy(&ks, &a_root);
    a.init(&pin()).expect("init");
    let kek = a.kek_create(Some("k".into())).expect("kek");
    let deks = (0..3)
        .map(|i| {
            let dek = a
                .dek_create(None, Purpose::Personal, false, None)
                .expect("dek")
                .to_string();
            let ct = a
                .encrypt(&dek, format!("secret {i}").as_bytes())
                .expect("ct");
            (dek, ct)
        })
        .collect();
    One {
        a,
        a_root,
        ks,
        kek,
        deks,
        _dir: dir,
    }
}

fn decrypts_all(h: &Hierarchy, deks: &[(String, String)]) {
    for (i, (dek, ct)) in deks.iter().enumerate() {
        let pt = h.decrypt(ct, Some(dek)).expect("decrypt");
        assert_eq!(&pt[..], format!("secret {i}").as_bytes());
    }
}

#[test]
fn root_rotate_moves_every_kek_to_the_new_root_which_alone_opens_the_keystore() {
    let t = one_root();
    let old = t.a.root_record("test").unwrap().id;
    let b_root = MemoryRoot::new();
    let r =
        t.a.root_rotate(&b_root, &pin(), Some("new".into()), false, false)
            .expect("rotate");
    assert!(r.enrolled);
    assert_eq!(r.old, old);
    // The KEK and the integrity KEK.
    assert_eq!(r.moved, 2);
    assert!(r.destroyed.is_none() && r.deks.is_empty() && r.keks.is_empty());
    // The agent locked itself.
    assert!(matches!(
        t.a.encrypt(&t.deks[0].0, b"x"),
        Err(AgentError::Locked { .. })
    ));
    // One root left, the new one, parent of every KEK; no wrap under the old one.
    let roots = t.ks.roots().unwrap();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].id, r.id);
    for k in t.ks.wrapped_keks().unwrap() {
        assert_eq!(k.parent, Some(r.id));
        assert!(t.ks.kek_wraps_of(&k.id).unwrap().is_empty());
    }
    // An agent on the new root decrypts everything.
    let b = hierarchy(&t.ks, &b_root);
    b.unlock(&pin()).expect("unlock on the new root");
    decrypts_all(&b, &t.deks);
    assert_eq!(b.root_record("test").unwrap().id, r.id);
    b.lock().unwrap();
    // The old root opens nothing any more.
    let a2 = hierarchy(&t.ks, &t.a_root);
    assert!(a2.unlock(&pin()).is_err());
}

#[test]
fn root_rotate_keeps_a_third_roots_wraps_and_moves_its_keks() {
    let t = one_root();
    // A third root C enrolled, and a KEK whose parent is C (after A is removed from under it).
    let c_root = MemoryRoot::new();
    let c = t.a.root_add(&c_root, &pin(), None).expect("add C").id;
    let b_root = MemoryRoot::new();
    let r =
        t.a.root_rotate(&b_root, &pin(), None, false, false)
            .expect("rotate");
    let ids: Vec<Uuid> = t.ks.roots().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&r.id) && ids.contains(&c));
    for k in t.ks.wrapped_keks().unwrap() {
        assert_eq!(k.parent, Some(r.id));
        let wraps = t.ks.kek_wraps_of(&k.id).unwrap();
        assert_eq!(wraps.len(), 1);
        assert_eq!(wraps[0].root, c);
    }
    // C still opens everything.
    let hc = hierarchy(&t.ks, &c_root);
    hc.unlock(&pin()).expect("unlock on C");
    decrypts_all(&hc, &t.deks);
}

#[test]
fn root_rotate_to_the_agents_own_root_is_refused_and_the_agent_keeps_serving() {
    let t = one_root();
    let own = t.a.root_record("test").unwrap().id;
    let err =
        t.a.root_rotate(&t.a_root.clone(), &pin(), None, false, false)
            .unwrap_err();
    assert!(
        matches!(err, AgentError::Roots(RootRefusal::SameRoot { id, .. }) if id == own),
        "{err:?}"
    );
    decrypts_all(&t.a, &t.deks);
    assert_eq!(t.ks.roots().unwrap().len(), 1);
    // A wrong PIN for the new root: typed, nothing enrolled, still serving.
    let b_root = MemoryRoot::new();
    b_root.init(&pin()).unwrap();
    b_root.lock().unwrap();
    let err =
        t.a.root_rotate(&b_root, &Pin::new("wrong"), None, false, false)
            .unwrap_err();
    assert_eq!(err.code(), keyward_proto::error::ErrorCode::PinIncorrect);
    decrypts_all(&t.a, &t.deks);
    assert_eq!(t.ks.roots().unwrap().len(), 1);
}

#[test]
fn root_rotate_refuses_while_locked() {
    let t = one_root();
    t.a.lock().unwrap();
    let err =
        t.a.root_rotate(&MemoryRoot::new(), &pin(), None, false, false)
            .unwrap_err();
    assert!(matches!(err, AgentError::Locked { .. }), "{err:?}");
    assert_eq!(t.ks.roots().unwrap().len(), 1);
}

#[test]
fn root_rotate_continues_after_the_new_root_was_enrolled_only() {
    // A crash after the enrollment leaves the new root enrolled; the next rotate continues.
    let t = one_root();
    let b_root = MemoryRoot::new();
    let b = t.a.root_add(&b_root, &pin(), None).expect("add").id;
    let r =
        t.a.root_rotate(&b_root, &pin(), None, false, false)
            .expect("rotate");
    assert!(!r.enrolled);
    assert_eq!(r.id, b);
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin()).expect("unlock on B");
    decrypts_all(&hb, &t.deks);
}

#[test]
fn root_rotate_destroy_old_destroys_the_old_root_after_the_commit() {
    let t = one_root();
    let b_root = MemoryRoot::new();
    let r =
        t.a.root_rotate(&b_root, &pin(), None, true, false)
            .expect("rotate");
    assert!(matches!(r.destroyed, Some(RootDestroyed::Destroyed(_))));
    // The old root object is gone.
    assert!(matches!(
        t.a_root.unlock(&pin(), &Default::default()),
        Err(crate::root::RootError::RootMissing { .. })
    ));
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin()).expect("unlock on B");
    decrypts_all(&hb, &t.deks);
}

#[test]
fn root_rotate_compromised_lists_every_dek_and_rotates_every_kek_at_the_new_roots_unlock() {
    let t = one_root();
    let before = t.ks.get(&t.kek).unwrap().unwrap();
    let b_root = MemoryRoot::new();
    let r =
        t.a.root_rotate(&b_root, &pin(), None, false, true)
            .expect("rotate");
    let mut deks: Vec<String> = r.deks.iter().map(Uuid::to_string).collect();
    let mut want: Vec<String> = t.deks.iter().map(|(d, _)| d.clone()).collect();
    deks.sort();
    want.sort();
    assert_eq!(deks, want);
    assert_eq!(r.keks, vec![t.kek]);
    assert!(t.ks.meta(META_COMPROMISED).unwrap().is_some());
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin()).expect("unlock on B");
    // Rotated at the unlock: a new KEK wrap (new version), the list gone, data still opens.
    assert!(t.ks.meta(META_COMPROMISED).unwrap().is_none());
    let after = t.ks.get(&t.kek).unwrap().unwrap();
    assert_ne!(after.wrapped, before.wrapped);
    assert_eq!(after.parent, Some(r.id));
    decrypts_all(&hb, &t.deks);
}

#[test]
fn root_rotate_compromised_list_is_under_the_keystore_mac() {
    let t = one_root();
    let b_root = MemoryRoot::new();
    t.a.root_rotate(&b_root, &pin(), None, false, true)
        .expect("rotate");
    let moved = t.ks.get(&t.kek).unwrap().unwrap();
    let list = t.ks.meta(META_COMPROMISED).unwrap().expect("the list");
    let tag = t.ks.meta(META_COMPROMISED_MAC).unwrap().expect("its MAC");
    let tampered = |hb: &Hierarchy| {
        assert!(matches!(
            hb.finish_compromised(),
            Err(AgentError::KeystoreTampered(Tampering::CompromisedList))
        ));
        // Nothing rotated from an unverified list.
        assert_eq!(t.ks.get(&t.kek).unwrap().unwrap().wrapped, moved.wrapped);
    };
    // Edited outside the agent: the unlock goes on, the list is not acted on, and stays.
    t.ks.set_meta(META_COMPROMISED, &format!("{list},{}", Uuid::new_v4()))
        .unwrap();
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin())
        .expect("unlock on B despite the edited list");
    tampered(&hb);
    assert!(t.ks.meta(META_COMPROMISED).unwrap().is_some());
    decrypts_all(&hb, &t.deks);
    // The original list without its MAC: refused the same way.
    t.ks.set_metas(&[
        (META_COMPROMISED, Some(&list)),
        (META_COMPROMISED_MAC, None),
    ])
    .unwrap();
    tampered(&hb);
    // List and MAC as the rotation wrote them: rotated, both rows gone.
    t.ks.set_meta(META_COMPROMISED_MAC, &tag).unwrap();
    assert_eq!(hb.finish_compromised().expect("rotate the KEKs"), 1);
    assert!(t.ks.meta(META_COMPROMISED).unwrap().is_none());
    assert!(t.ks.meta(META_COMPROMISED_MAC).unwrap().is_none());
    assert_ne!(t.ks.get(&t.kek).unwrap().unwrap().wrapped, moved.wrapped);
    decrypts_all(&hb, &t.deks);
}

/// The `mac` column of a key row, read straight from the file (an attacker's view).
fn raw_mac(dir: &tempfile::TempDir, id: &Uuid) -> Vec<u8> {
    let c = rusqlite::Connection::open(dir.path().join("ks.db")).unwrap();
    c.query_row(
        "SELECT mac FROM keys WHERE id = ?1",
        [id.to_string()],
        |r| r.get(0),
    )
    .unwrap()
}

fn set_raw_mac(dir: &tempfile::TempDir, id: &Uuid, mac: &[u8]) {
    let c = rusqlite::Connection::open(dir.path().join("ks.db")).unwrap();
    let n = c
        .execute(
            "UPDATE keys SET mac = ?2 WHERE id = ?1",
            rusqlite::params![id.to_string(), mac],
        )
        .unwrap();
    assert_eq!(n, 1);
}

fn integrity_ids(ks: &Keystore) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = ks
        .integrity_records()
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

/// A DEK record forged by whoever holds the old root: MAC'd under the old key (the agent on
/// the old root stands in for the attacker's own computation), then removed, its MAC kept.
fn forge_with_old_key(t: &One) -> (crate::keystore::KeyRecord, Vec<u8>) {
    let mut forged = crate::keystore::KeyRecord::new(KeyKind::Dek, "aes-kwp");
    forged.parent = Some(t.kek);
    forged.label = Some("forged".into());
    forged.wrapped = Some(vec![7; 40]);
    t.ks.insert(&forged).unwrap();
    let mac = raw_mac(&t._dir, &forged.id);
    assert!(t.ks.delete(&forged.id).unwrap());
    (forged, mac)
}

#[test]
fn root_rotate_compromised_replaces_the_integrity_key_and_refuses_rows_forged_with_the_old_one() {
    let t = one_root();
    // A recovery (public-key) root: the new integrity KEK must be wrapped for it too.
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let recovery =
        t.a.enroll_public_root(
            crate::roots::PublicRootKind::Recovery,
            None,
            &secret.public_key(),
        )
        .expect("enroll a public root");
    let (forged, old_mac) = forge_with_old_key(&t);
    // A compromised-KEK list forged under the old key (it would skip nothing here, but a
    // forged list must not be acted on once the key is replaced).
    let forged_list = Uuid::new_v4().to_string();
    let forged_tag = hex::encode(t.ks.mac_tag(&mac_body(&forged_list)).unwrap());
    let old_integrity = integrity_ids(&t.ks);
    let b_root = MemoryRoot::new();
    t.a.root_rotate(&b_root, &pin(), None, false, true)
        .expect("rotate");
    assert!(t.ks.meta(META_REKEY).unwrap().is_some());
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin()).expect("unlock on B");
    // Replaced at the unlock: new integrity records, the mark gone, every key still opens.
    assert!(t.ks.meta(META_REKEY).unwrap().is_none());
    assert!(t.ks.meta(META_REKEY_MAC).unwrap().is_none());
    let new_integrity = integrity_ids(&t.ks);
    assert_eq!(new_integrity.len(), 2);
    assert!(new_integrity.iter().all(|id| !old_integrity.contains(id)));
    decrypts_all(&hb, &t.deks);
    t.ks.roots_checked().expect("root set re-MAC'd");
    // The forged row, exactly as the old key MACs it: refused.
    t.ks.insert(&forged).unwrap();
    set_raw_mac(&t._dir, &forged.id, &old_mac);
    match t.ks.get(&forged.id) {
        Err(crate::keystore::KeystoreError::Tampered { id, .. }) => {
            assert_eq!(id, forged.id.to_string())
        }
        other => panic!("a row MAC'd under the old key was accepted: {other:?}"),
    }
    assert_eq!(
        hb.record(&forged.id.to_string(), KeyKind::Dek)
            .unwrap_err()
            .code(),
        keyward_proto::ErrorCode::KeystoreTampered
    );
    t.ks.delete(&forged.id).unwrap();
    // The forged meta row: refused too.
    t.ks.set_metas(&[
        (META_COMPROMISED, Some(&forged_list)),
        (META_COMPROMISED_MAC, Some(&forged_tag)),
    ])
    .unwrap();
    assert!(matches!(
        hb.finish_compromised(),
        Err(AgentError::KeystoreTampered(Tampering::CompromisedList))
    ));
    t.ks.set_metas(&[(META_COMPROMISED, None), (META_COMPROMISED_MAC, None)])
        .unwrap();
    // The recovery root opens the new integrity KEK (its wrap came in with it).
    let public = secret.public_key();
    let open = |w: &[u8]| {
        let k = crate::root::ecdh::unwrap(&public, w, |e| {
            crate::root::ecdh::software_ecdh(&secret, e)
        })?;
        Ok(crate::root::ExportedKek::new(&k))
    };
    let opened = hb
        .open_keks_for_root(&recovery, &open)
        .expect("open for restore");
    assert_eq!(opened[0].0.kind, KeyKind::Integrity);
    assert!(new_integrity.contains(&opened[0].0.id));
    let own = hb.own_wrap(&opened[0].0).unwrap();
    assert_eq!(
        opened[0].1.expose(),
        hb.root.export_kek(&own).unwrap().expose()
    );
    // A later unlock on B derives the new key from the new records.
    hb.lock().unwrap();
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin()).expect("unlock on B again");
    decrypts_all(&hb, &t.deks);
    assert_eq!(integrity_ids(&t.ks), new_integrity);
}

#[test]
fn root_rotate_compromised_rekey_waits_while_another_enrolled_root_is_absent() {
    // A third AES-like root the new root cannot wrap for without it present: the replacement
    // (like `kek.create`) waits, everything stays under the old key, the mark stays.
    let t = one_root();
    let c_root = MemoryRoot::new();
    t.a.root_add(&c_root, &pin(), None).expect("add C");
    let old_integrity = integrity_ids(&t.ks);
    let b_root = MemoryRoot::new();
    t.a.root_rotate(&b_root, &pin(), None, false, true)
        .expect("rotate");
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin()).expect("unlock on B");
    assert!(matches!(
        hb.finish_rekey(),
        Err(AgentError::Roots(RootRefusal::Absent { .. }))
    ));
    assert!(t.ks.meta(META_REKEY).unwrap().is_some());
    assert_eq!(integrity_ids(&t.ks), old_integrity);
    decrypts_all(&hb, &t.deks);
}

#[test]
fn root_rotate_compromised_rekey_interrupted_before_its_commit_leaves_the_old_key_and_the_next_unlock_completes_it(
) {
    let t = one_root();
    let (forged, old_mac) = forge_with_old_key(&t);
    let old_integrity = integrity_ids(&t.ks);
    let b_root = MemoryRoot::new();
    t.a.root_rotate(&b_root, &pin(), None, false, true)
        .expect("rotate");
    let hb = hierarchy(&t.ks, &b_root);
    crate::keystore::REKEY_FAIL.with(|f| f.set(true));
    hb.unlock(&pin())
        .expect("the unlock goes on when the replacement fails");
    // Nothing changed: the mark stays, the old integrity records too, everything under the
    // old key (a row MAC'd under it still verifies).
    assert!(t.ks.meta(META_REKEY).unwrap().is_some());
    assert_eq!(integrity_ids(&t.ks), old_integrity);
    decrypts_all(&hb, &t.deks);
    t.ks.insert(&forged).unwrap();
    assert_eq!(raw_mac(&t._dir, &forged.id), old_mac);
    t.ks.get(&forged.id).expect("still the old key");
    t.ks.delete(&forged.id).unwrap();
    hb.lock().unwrap();
    // The next unlock completes it.
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin()).expect("unlock on B again");
    assert!(t.ks.meta(META_REKEY).unwrap().is_none());
    let now = integrity_ids(&t.ks);
    assert!(now.iter().all(|id| !old_integrity.contains(id)));
    decrypts_all(&hb, &t.deks);
    t.ks.insert(&forged).unwrap();
    set_raw_mac(&t._dir, &forged.id, &old_mac);
    assert!(matches!(
        t.ks.get(&forged.id),
        Err(crate::keystore::KeystoreError::Tampered { .. })
    ));
}

/// One root with keys, rotated to a new memory root B (`compromised`: with the integrity key's
/// replacement marked): the set-up, its integrity records before, and B.
fn rotated_to_b(compromised: bool) -> (One, Vec<Uuid>, MemoryRoot) {
    let t = one_root();
    let old_integrity = integrity_ids(&t.ks);
    let b_root = MemoryRoot::new();
    t.a.root_rotate(&b_root, &pin(), None, false, compromised)
        .expect("rotate");
    (t, old_integrity, b_root)
}

/// A conflict at the rekey's commit (on PostgreSQL a serialization failure: this agent's own
/// audit head write, or another agent, committed a row the rekey read) is retried at once, not
/// left to the next unlock: the CI's PostgreSQL run of the e2e suite met it after an unlock,
/// whose audit checkpoint's head write raced the rekey. Conflicts every time: the unlock
/// still succeeds, everything stays under the old key, and the next unlock tries again.
#[test]
fn root_rotate_compromised_rekey_retries_a_conflict_at_its_commit() {
    let (t, old_integrity, b_root) = rotated_to_b(true);
    let hb = hierarchy(&t.ks, &b_root);
    crate::keystore::REKEY_CONFLICTS.with(|n| n.set(2));
    hb.unlock(&pin()).expect("unlock on B");
    assert_eq!(crate::keystore::REKEY_CONFLICTS.with(|n| n.get()), 0);
    assert!(
        t.ks.meta(META_REKEY).unwrap().is_none(),
        "replaced at this unlock, after two conflicts"
    );
    let now = integrity_ids(&t.ks);
    assert!(now.iter().all(|id| !old_integrity.contains(id)));
    decrypts_all(&hb, &t.deks);
    hb.lock().unwrap();

    // Conflicts on every try: bounded, and nothing is lost.
    let (t, old_integrity, b_root) = rotated_to_b(true);
    let hb = hierarchy(&t.ks, &b_root);
    crate::keystore::REKEY_CONFLICTS.with(|n| n.set(1000));
    hb.unlock(&pin())
        .expect("the unlock goes on when the replacement keeps conflicting");
    let left = crate::keystore::REKEY_CONFLICTS.with(|n| n.replace(0));
    assert!(
        left < 1000 && left > 900,
        "a few tries, not unbounded: {left} left"
    );
    assert!(t.ks.meta(META_REKEY).unwrap().is_some());
    assert_eq!(integrity_ids(&t.ks), old_integrity);
    decrypts_all(&hb, &t.deks);
}

#[test]
fn root_rotate_compromised_rekey_aborts_on_a_row_that_does_not_verify_under_the_old_key() {
    let (t, old_integrity, b_root) = rotated_to_b(true);
    // A row edited outside the agent (no key): its MAC no longer verifies.
    let dek = Uuid::parse_str(&t.deks[1].0).unwrap();
    set_raw_mac(&t._dir, &dek, &[0u8; 32]);
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin()).expect("unlock on B");
    let e = hb.finish_rekey().unwrap_err();
    assert_eq!(e.code(), keyward_proto::ErrorCode::KeystoreTampered);
    // Nothing replaced: the mark and the old integrity records stay, the good keys open.
    assert!(t.ks.meta(META_REKEY).unwrap().is_some());
    assert_eq!(integrity_ids(&t.ks), old_integrity);
    let pt = hb.decrypt(&t.deks[0].1, Some(&t.deks[0].0)).unwrap();
    assert_eq!(&pt[..], b"secret 0");
}

#[test]
fn root_rotate_without_compromised_keeps_the_integrity_key() {
    let (t, old_integrity, b_root) = rotated_to_b(false);
    assert!(t.ks.meta(META_REKEY).unwrap().is_none());
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin()).expect("unlock on B");
    assert_eq!(integrity_ids(&t.ks), old_integrity);
}

#[test]
fn root_rotate_compromised_rekey_re_macs_the_device_rows() {
    let t = one_root();
    // `init` wrote the first device's row, MAC'd under the integrity key being replaced.
    let before = t.ks.devices().expect("device rows verify");
    assert_eq!(before.len(), 1);
    let b_root = MemoryRoot::new();
    t.a.root_rotate(&b_root, &pin(), None, false, true)
        .expect("rotate");
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin())
        .expect("unlock on B (replaces the integrity key)");
    assert!(t.ks.meta(META_REKEY).unwrap().is_none(), "key replaced");
    // Every device row verifies under the new key, unchanged.
    assert_eq!(t.ks.devices().expect("device rows after the rekey"), before);
    decrypts_all(&hb, &t.deks);
    // A later unlock (which reads the device rows) still works.
    hb.lock().unwrap();
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin()).expect("unlock on B again");
    assert_eq!(t.ks.devices().expect("device rows"), before);
}

#[test]
fn root_rotate_compromised_rekey_re_macs_every_devices_audit_head() {
    let t = one_root();
    // The first device keeps the plain `audit_head` rows: it has no keyed head name.
    assert_eq!(t.a.audit_device().unwrap(), None);
    // A head under a device's keyed rows (`audit_head/<id>`, as a device enrolled after the
    // first writes it), MAC'd under the integrity key being replaced.
    let device = t.ks.devices().unwrap()[0].id;
    let (name, mac_name) = (
        format!("audit_head/{device}"),
        format!("audit_head_mac/{device}"),
    );
    let row = format!("5:{}", hex::encode([7u8; 32]));
    let body = (crate::audit::REKEY_HEAD.body)(&[Some(row.clone())]);
    let tag = hex::encode(t.ks.mac_tag(&body).unwrap());
    t.ks.set_metas(&[(&name, Some(&row)), (&mac_name, Some(&tag))])
        .unwrap();
    let b_root = MemoryRoot::new();
    t.a.root_rotate(&b_root, &pin(), None, false, true)
        .expect("rotate");
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin())
        .expect("unlock on B (replaces the integrity key)");
    assert!(t.ks.meta(META_REKEY).unwrap().is_none(), "key replaced");
    // The device's head: the same row, its MAC now under the new key.
    assert_eq!(t.ks.meta(&name).unwrap(), Some(row));
    let now = t.ks.meta(&mac_name).unwrap().expect("head MAC");
    assert_ne!(now, tag);
    assert_eq!(
        t.ks.mac_verify(&body, &hex::decode(now).unwrap()),
        Some(true)
    );
}

#[test]
fn root_rotate_compromised_rekey_re_macs_every_devices_pin_counter() {
    let t = one_root();
    // A counter under a device's keyed rows (`pin_failures/<id>`, as a device enrolled after
    // the first keeps it), MAC'd under the integrity key being replaced.
    let device = t.ks.devices().unwrap()[0].id;
    let [n, last, mac] = crate::hierarchy::counter_rows(Some(device));
    let values = [Some("2".to_string()), Some("1234".to_string())];
    let body = (crate::hierarchy::PIN_COUNTER_MAC.body)(&values);
    let tag = hex::encode(t.ks.mac_tag(&body).unwrap());
    t.ks.set_metas(&[(&n, Some("2")), (&last, Some("1234")), (&mac, Some(&tag))])
        .unwrap();
    let b_root = MemoryRoot::new();
    t.a.root_rotate(&b_root, &pin(), None, false, true)
        .expect("rotate");
    let hb = hierarchy(&t.ks, &b_root);
    hb.unlock(&pin())
        .expect("unlock on B (replaces the integrity key)");
    assert!(t.ks.meta(META_REKEY).unwrap().is_none(), "key replaced");
    assert_eq!(t.ks.meta(&n).unwrap().as_deref(), Some("2"));
    let now = t.ks.meta(&mac).unwrap().expect("counter MAC");
    assert_ne!(now, tag);
    assert_eq!(
        t.ks.mac_verify(&body, &hex::decode(now).unwrap()),
        Some(true)
    );
}
