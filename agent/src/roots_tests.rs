//! Several roots per KEK, in-process on [`MemoryRoot`]s sharing one keystore: enrollment,
//! unlocking on any enrolled root, KEKs made and rotated under every root, removal and its
//! refusals, forged and replayed root rows, and the public-root hooks recovery uses.
// Compiled only under #[cfg(test)]: `mod tests` at the end of roots.rs includes this file.

use super::*;
use crate::config::UnlockPolicy;
use crate::keystore::{Keystore, Purpose};
use crate::root::memory::MemoryRoot;
use std::sync::Arc;

const PIN: &str = "right-pin-1234";

fn pin() -> Pin {
    Pin::new(PIN)
}

struct Two {
    a: Hierarchy,
    b_root: MemoryRoot,
    ks: Arc<Keystore>,
    kek: Uuid,
    dek: String,
    ct: String,
    b_id: Uuid,
    dir: tempfile::TempDir,
}

fn policy() -> UnlockPolicy {
    UnlockPolicy {
        max_attempts: 5,
        free_attempts: 10,
        backoff_base_ms: 0,
        ..UnlockPolicy::default()
    }
}

fn hierarchy(ks: &Arc<Keystore>, root: &MemoryRoot) -> Hierarchy {
    Hierarchy::new(ks.clone(), Box::new(root.clone()), policy())
}

/// Root A initialized with a KEK, a DEK and a ciphertext; root B enrolled from A.
fn two_roots() -> Two {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).expect("keystore"));
    let a = hierarchy(&ks, &MemoryRoot::new());
    a.init(&pin()).expect("init");
    let kek = a.kek_create(Some("k".into())).expect("kek");
    let dek = a
        .dek_create(None, Purpose::Personal, false, None)
        .expect("dek")
        .to_string();
    let ct = a.encrypt(&dek, b"before").expect("encrypt");
    let b_root = MemoryRoot::new();
    let added = a
        .root_add(&b_root, &pin(), Some("backup".into()))
        .expect("root add");
    assert!(added.created);
    // The KEK and the integrity KEK.
    assert_eq!(added.wrapped, 2);
    Two {
        a,
        b_root,
        ks,
        kek,
        dek,
        ct,
        b_id: added.id,
        dir,
    }
}

#[test]
fn roots_an_enrolled_root_unlocks_the_same_keystore_and_decrypts_everything() {
    let t = two_roots();
    // Made after the enrollment, under the existing KEK: B opens it too.
    let ct2 = t.a.encrypt(&t.dek, b"after").expect("encrypt");
    t.a.lock().unwrap();
    let b = hierarchy(&t.ks, &t.b_root);
    b.unlock(&pin()).expect("unlock on B");
    assert_eq!(&b.decrypt(&t.ct, None).unwrap()[..], b"before");
    assert_eq!(&b.decrypt(&ct2, None).unwrap()[..], b"after");
    assert_eq!(b.root_record("test").unwrap().id, t.b_id);
    let (page, own) = b
        .root_page(
            None,
            &PageSize {
                limit: 10,
                bytes: usize::MAX,
                size: None,
            },
        )
        .expect("root list");
    assert_eq!(page.records.len(), 2);
    assert_eq!(own, Some(t.b_id));
    // B may rotate the KEK (A needs its secret: refused, naming A) unless A is dropped.
    let a_id = page.records.iter().find(|r| r.id != t.b_id).unwrap().id;
    match b.kek_rotate(&t.kek.to_string()) {
        Err(AgentError::Roots(RootRefusal::Absent { id, .. })) => assert_eq!(id, a_id),
        other => panic!("expected Absent, got {other:?}"),
    }
    let r = b
        .kek_rotate_dropping(&t.kek.to_string(), &[a_id.to_string()])
        .expect("rotate dropping A");
    assert_eq!(r.version, 2);
    assert_eq!(&b.decrypt(&t.ct, None).unwrap()[..], b"before");
    assert_eq!(t.ks.roots().unwrap().len(), 1);
    // A is gone: an agent on A no longer unlocks this keystore.
    b.lock().unwrap();
    let a_again = Hierarchy::new(t.ks.clone(), Box::new(MemoryRoot::new()), policy());
    assert!(a_again.unlock(&pin()).is_err());
    b.unlock(&pin()).expect("B still unlocks");
    assert_eq!(&b.decrypt(&t.ct, None).unwrap()[..], b"before");
    drop(t.dir);
}

#[test]
fn roots_kek_create_refuses_an_absent_secret_root_naming_it() {
    let t = two_roots();
    match t.a.kek_create(None) {
        Err(e @ AgentError::Roots(RootRefusal::Absent { .. })) => {
            assert_eq!(e.code(), keyward_proto::ErrorCode::TokenUnavailable);
            assert!(e.to_string().contains(&t.b_id.to_string()), "{e}");
        }
        other => panic!("expected Absent, got {other:?}"),
    }
    // Nothing was written: one KEK still.
    assert_eq!(t.a.kek_list().unwrap().len(), 1);
}

#[test]
fn roots_remove_refuses_own_unknown_and_last_and_removes_others() {
    let t = two_roots();
    let own = t.a.root_record("test").unwrap().id;
    match t.a.root_remove(&own.to_string()) {
        Err(e @ AgentError::Roots(RootRefusal::OwnRoot { .. })) => {
            assert_eq!(e.code(), keyward_proto::ErrorCode::WrongKey)
        }
        other => panic!("expected OwnRoot, got {other:?}"),
    }
    assert!(matches!(
        t.a.root_remove(&Uuid::new_v4().to_string()),
        Err(AgentError::NotFound(_))
    ));
    assert!(matches!(
        t.a.root_remove("not-an-id"),
        Err(AgentError::NotFound(_))
    ));
    // A KEK id is not a root id.
    assert!(matches!(
        t.a.root_remove(&t.kek.to_string()),
        Err(AgentError::NotFound(_))
    ));
    assert_eq!(t.a.root_remove(&t.b_id.to_string()).unwrap(), t.b_id);
    // With B gone, KEKs can be made again, and everything still decrypts after a relock.
    t.a.kek_create(None).expect("kek after removal");
    t.a.lock().unwrap();
    t.a.unlock(&pin()).unwrap();
    assert_eq!(&t.a.decrypt(&t.ct, None).unwrap()[..], b"before");
}

#[test]
fn roots_removing_the_parent_root_moves_its_keks_to_another_root() {
    let t = two_roots();
    t.a.lock().unwrap();
    let b = hierarchy(&t.ks, &t.b_root);
    b.unlock(&pin()).unwrap();
    let a_id =
        t.ks.roots()
            .unwrap()
            .into_iter()
            .find(|r| r.id != t.b_id)
            .unwrap()
            .id;
    b.root_remove(&a_id.to_string()).expect("remove A from B");
    let kek = t.ks.get(&t.kek).unwrap().unwrap();
    assert_eq!(kek.parent, Some(t.b_id));
    assert!(t.ks.kek_wraps_of(&t.kek).unwrap().is_empty());
    // B is the last root now.
    match b.root_remove(&t.b_id.to_string()) {
        Err(AgentError::Roots(RootRefusal::OwnRoot { .. } | RootRefusal::LastRoot { .. })) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    b.lock().unwrap();
    b.unlock(&pin()).unwrap();
    assert_eq!(&b.decrypt(&t.ct, None).unwrap()[..], b"before");
    b.kek_create(None).expect("a KEK under the only root");
}

#[test]
fn roots_enrolling_the_same_root_twice_is_refused() {
    let t = two_roots();
    match t.a.root_add(&t.b_root, &pin(), None) {
        Err(AgentError::AlreadyExists(Existing::Root { id })) => assert_eq!(id, t.b_id),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(t.ks.roots().unwrap().len(), 2);
}

/// A root row written outside the agent (no MAC), and a removed root's row put back with its
/// old, valid MAC: both are refused at unlock.
#[test]
fn roots_forged_and_replayed_root_rows_are_tampering() {
    let t = two_roots();
    let path = t.dir.path().join("ks.db");
    // Keep B's row as it is now (valid MAC), then remove B.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let cols = "id, kind, label, parent, scheme, wrapped, public_key, locator, purpose, exportable, version, created, rotated, state, name, issuer, statement, algorithm, ssh, certificate, min_version, mac";
    conn.execute_batch(&format!(
        "CREATE TABLE saved AS SELECT {cols} FROM keys WHERE id = '{}'",
        t.b_id
    ))
    .unwrap();
    t.a.root_remove(&t.b_id.to_string()).unwrap();
    t.a.lock().unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO keys ({cols}) SELECT {cols} FROM saved"
    ))
    .unwrap();
    match t.a.unlock(&pin()) {
        Err(e) => assert_eq!(e.code(), keyward_proto::ErrorCode::KeystoreTampered, "{e}"),
        Ok(()) => panic!("a replayed root row was accepted"),
    }
    assert!(t.a.is_locked());
    conn.execute_batch(&format!("DELETE FROM keys WHERE id = '{}'", t.b_id))
        .unwrap();
    t.a.unlock(&pin()).expect("unlocks once the row is gone");
    t.a.lock().unwrap();
    // A forged row: no MAC at all.
    let mut forged = KeyRecord::new(KeyKind::Root, Scheme::Memory.as_str());
    forged.label = Some("attacker".into());
    t.ks.insert(&forged).unwrap();
    match t.a.unlock(&pin()) {
        Err(e) => assert_eq!(e.code(), keyward_proto::ErrorCode::KeystoreTampered, "{e}"),
        Ok(()) => panic!("a forged root row was accepted"),
    }
}

/// The recovery hooks: a public-key root gets every KEK (and every later one, and a rotated
/// one), and `open_keks_for_root` opens them with the private key.
#[test]
fn roots_public_root_receives_every_kek_and_opens_them_for_restore() {
    let dir = tempfile::tempdir().unwrap();
    let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).unwrap());
    let h = hierarchy(&ks, &MemoryRoot::new());
    h.init(&pin()).unwrap();
    let kek = h.kek_create(None).unwrap();
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let id = h
        .enroll_public_root(PublicRootKind::Recovery, None, &secret.public_key())
        .expect("enroll public root");
    // A KEK made afterwards is wrapped to it without its secret.
    let kek2 = h.kek_create(None).expect("kek with a public root enrolled");
    h.kek_rotate(&kek.to_string())
        .expect("rotate with a public root");
    let public = secret.public_key();
    let open = |w: &[u8]| {
        let k = crate::root::ecdh::unwrap(&public, w, |e| {
            crate::root::ecdh::software_ecdh(&secret, e)
        })?;
        Ok(ExportedKek::new(&k))
    };
    let opened = h.open_keks_for_root(&id, &open).expect("open for restore");
    assert_eq!(opened.len(), 3);
    assert_eq!(opened[0].0.kind, KeyKind::Integrity);
    for (rec, k) in &opened {
        let own = h.own_wrap(rec).unwrap();
        let expected = h.root.export_kek(&own).unwrap();
        assert_eq!(k.expose(), expected.expose(), "KEK {}", rec.id);
    }
    assert!(opened.iter().any(|(r, _)| r.id == kek2));
    let rec = ks.get(&id).unwrap().unwrap();
    assert_eq!(rec.scheme, PUBLIC_ROOT_SCHEME);
    assert_eq!(rec.locator.as_deref(), Some("public:recovery"));
    // An unknown root id is not found.
    assert!(matches!(
        h.open_keks_for_root(&Uuid::new_v4(), &open),
        Err(AgentError::NotFound(_))
    ));
}

/// A keystore from before v9 has no root set: with one root it is written at the first unlock
/// (trust-on-upgrade); with two roots and no set the unlock is refused.
#[test]
fn roots_the_root_set_is_adopted_for_one_root_and_required_for_two() {
    let t = two_roots();
    let path = t.dir.path().join("ks.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let drop_set = || {
        conn.execute_batch("DELETE FROM meta WHERE name IN ('root_set', 'root_set_mac')")
            .unwrap()
    };
    t.a.lock().unwrap();
    drop_set();
    match t.a.unlock(&pin()) {
        Err(e) => assert_eq!(e.code(), keyward_proto::ErrorCode::KeystoreTampered, "{e}"),
        Ok(()) => panic!("two roots without a root set were accepted"),
    }
    // Back to one root (as a v8 keystore): adopted at unlock, and checked from then on.
    let a =
        t.ks.roots()
            .unwrap()
            .into_iter()
            .find(|r| r.id != t.b_id)
            .unwrap();
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = ON; DELETE FROM kek_wraps; DELETE FROM keys WHERE id = '{}'",
        t.b_id
    ))
    .unwrap();
    drop_set();
    t.a.unlock(&pin()).expect("one root, no set: adopted");
    let set: String = conn
        .query_row("SELECT value FROM meta WHERE name = 'root_set'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(set, a.id.to_string());
    assert_eq!(&t.a.decrypt(&t.ct, None).unwrap()[..], b"before");
}
