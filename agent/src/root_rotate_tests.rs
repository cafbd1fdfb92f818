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
