//! Devices on one keystore (two `Hierarchy`s on one SQLite file, each on its own `MemoryRoot`,
//! a secret root like a PKCS#11 AES key or a passphrase): every device makes and rotates KEKs
//! (the first device moves onto its device key when another device is enrolled), and
//! `device.revoke` replaces the integrity key.

use super::*;
use crate::config::UnlockPolicy;
use crate::keystore::Keystore;
use crate::keystore::Purpose;
use crate::root::memory::MemoryRoot;
use crate::root_rotate::{META_REKEY, META_REKEY_MAC};
use keyward_proto::ErrorCode;
use std::sync::Arc;

fn pin_a() -> Pin {
    Pin::new("pin-aaaa")
}
fn pin_b() -> Pin {
    Pin::new("pin-bbbb")
}

fn agent(path: &std::path::Path, root: &MemoryRoot) -> Hierarchy {
    agent_on(path, Box::new(root.clone()))
}

fn agent_on(path: &std::path::Path, root: Box<dyn crate::root::Root>) -> Hierarchy {
    let ks = Arc::new(Keystore::open(path).unwrap());
    Hierarchy::new(
        ks,
        root,
        UnlockPolicy {
            backoff_base_ms: 0,
            ..UnlockPolicy::default()
        },
    )
}

struct Two {
    dir: tempfile::TempDir,
    a: Hierarchy,
    b: Hierarchy,
    b_id: Uuid,
    /// A DEK made on A before B was enrolled, and a ciphertext under it.
    a_dek: (String, String),
}

/// A initialized with a KEK and a DEK; B joins, requests, A answers, B reveals, A enrolls it
/// with the code; B unlocks on its device key.
fn two_devices() -> Two {
    two_devices_with(|path| agent(path, &MemoryRoot::new()))
}

fn two_devices_with(first: impl FnOnce(&std::path::Path) -> Hierarchy) -> Two {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ks.db");
    let a = first(&path);
    a.init(&pin_a()).unwrap();
    a.kek_create(Some("a-kek".into())).unwrap();
    let dek = a
        .dek_create(None, Purpose::Personal, false, None)
        .unwrap()
        .to_string();
    let ct = a.encrypt(&dek, b"written on A").unwrap();
    let b = agent(&path, &MemoryRoot::new());
    let b_id = b.device_join(&pin_b()).unwrap();
    b.device_request(Some("B".into())).unwrap();
    assert!(matches!(
        a.device_approve(None, None).unwrap(),
        Approval::Answered { .. }
    ));
    let code = b.device_reveal().unwrap().expect("answered: a code");
    assert!(matches!(
        a.device_approve(None, Some(&code)).unwrap(),
        Approval::Enrolled { .. }
    ));
    b.unlock(&pin_b()).unwrap();
    assert!(b.device.on_device_key());
    Two {
        dir,
        a,
        b,
        b_id,
        a_dek: (dek, ct),
    }
}

fn decrypts(h: &Hierarchy, (dek, ct): &(String, String), pt: &[u8]) {
    let got = h.decrypt(ct, Some(dek)).expect("decrypt");
    assert_eq!(&got[..], pt);
}

/// The first device runs on its device key once B is enrolled, and its configured root's
/// record is gone: the root set holds only the two device roots.
#[test]
fn the_first_device_moves_onto_its_device_key_when_it_approves_another() {
    let t = two_devices();
    assert!(t.a.device.on_device_key());
    let roots = t.a.ks.roots_checked().unwrap();
    assert_eq!(roots.len(), 2, "{roots:?}");
    assert!(roots.iter().all(|r| r.scheme == PUBLIC_ROOT_SCHEME));
    // A's row names its device root, is still self-signed and current.
    let (page, _) = t.a.device_page(None, 10).unwrap();
    let me = page.iter().find(|d| d.current).expect("A is current");
    assert_eq!(me.row.enrolled_by, Some(me.row.id));
    assert_eq!(me.root, Some(t.a.root_record("test").unwrap().id));
    // A unlocks again (now through its device row) and still reads its data.
    t.a.lock().unwrap();
    t.a.unlock(&pin_a()).unwrap();
    assert!(t.a.device.on_device_key());
    decrypts(&t.a, &t.a_dek, b"written on A");
    decrypts(&t.b, &t.a_dek, b"written on A");
}

/// `kek.create`, `kek.rotate` and `dek.rotate` on B (a non-first device) while A's root is a
/// secret root; A then reads B's new KEK and DEK, without a restart and after one.
#[test]
fn a_non_first_device_makes_and_rotates_keks_that_the_first_reads() {
    let t = two_devices();
    let kek =
        t.b.kek_create(Some("b-kek".into()))
            .expect("kek.create on B");
    let dek =
        t.b.dek_create(Some(&kek.to_string()), Purpose::Personal, false, None)
            .expect("dek.create on B")
            .to_string();
    let ct = t.b.encrypt(&dek, b"written on B").unwrap();
    decrypts(&t.a, &(dek.clone(), ct.clone()), b"written on B");
    let rotated = t.b.kek_rotate(&kek.to_string()).expect("kek.rotate on B");
    assert_eq!(rotated.version, 2);
    assert_eq!(t.b.dek_rotate(&dek).expect("dek.rotate on B"), 2);
    let ct2 = t.b.encrypt(&dek, b"after B's rotations").unwrap();
    decrypts(&t.a, &(dek.clone(), ct2.clone()), b"after B's rotations");
    decrypts(&t.a, &(dek.clone(), ct.clone()), b"written on B");
    // A rotates B's KEK back and makes one of its own; B reads both.
    t.a.kek_rotate(&kek.to_string()).expect("kek.rotate on A");
    let a_kek = t.a.kek_create(None).unwrap();
    let a_dek =
        t.a.dek_create(Some(&a_kek.to_string()), Purpose::Personal, false, None)
            .unwrap()
            .to_string();
    let ct3 = t.a.encrypt(&a_dek, b"A again").unwrap();
    decrypts(&t.b, &(a_dek, ct3), b"A again");
    // After a restart of both.
    for (h, pin) in [(&t.a, pin_a()), (&t.b, pin_b())] {
        h.lock().unwrap();
        h.unlock(&pin).unwrap();
        decrypts(h, &(dek.clone(), ct2.clone()), b"after B's rotations");
        decrypts(h, &t.a_dek, b"written on A");
    }
}

/// A keystore where B was enrolled before the first device moved (as before this change): A's
/// next unlock moves it, and B can make KEKs from then on. Also an interruption after the
/// configured root's record went, before the row named the device root.
#[test]
fn an_existing_first_device_moves_at_its_next_unlock_even_after_an_interruption() {
    let t = two_devices();
    // Put A back as it was: its row naming a root that no longer exists (step 4 undone).
    let first =
        t.a.ks
            .devices()
            .unwrap()
            .into_iter()
            .find(|d| d.enrolled_by == Some(d.id))
            .unwrap();
    let mut body = body_of(&first).unwrap();
    let gone = Uuid::new_v4();
    body.root = Some(gone);
    let mut row = first.clone();
    row.body = encode(&body);
    row.signature = Some(
        t.a.sign_as(&first, &signed_body(&row, Some(&gone), &body.secret))
            .unwrap(),
    );
    t.a.ks.device_put(&row).unwrap();
    t.a.lock().unwrap();
    t.a.unlock(&pin_a())
        .expect("unlock finds the device root by key");
    let (page, _) = t.a.device_page(None, 10).unwrap();
    let me = page.iter().find(|d| d.current).expect("A is current again");
    assert_eq!(me.root, Some(t.a.root_record("test").unwrap().id));
    t.b.kek_create(None).expect("kek.create on B");
}

/// `device.revoke` from A: the integrity key is replaced (new integrity records, wrapped to the
/// remaining roots only), every key still opens on A, and a row the revoked device MACs with
/// the old key afterwards is `keystore_tampered`.
#[test]
fn revoke_replaces_the_integrity_key_and_the_revoked_devices_old_key_forges_nothing() {
    let t = two_devices();
    let b_kek = t.b.kek_create(None).unwrap();
    let b_dek =
        t.b.dek_create(Some(&b_kek.to_string()), Purpose::Personal, false, None)
            .unwrap()
            .to_string();
    let ct = t.b.encrypt(&b_dek, b"from B").unwrap();
    let old_integrity: Vec<Uuid> =
        t.a.ks
            .integrity_records()
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
    let r = t.a.device_revoke(&t.b_id.to_string()).expect("revoke B");
    assert_eq!(r.id, t.b_id);
    assert_eq!(r.keks.len(), 2, "both KEKs rotated");
    assert_eq!(r.deks_rotated, 2, "both DEKs rotated");
    let new_integrity: Vec<Uuid> =
        t.a.ks
            .integrity_records()
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
    assert_eq!(new_integrity.len(), 2);
    assert!(new_integrity.iter().all(|i| !old_integrity.contains(i)));
    assert!(t.a.ks.meta(META_REKEY).unwrap().is_none());
    assert!(t.a.ks.meta(META_REKEY_MAC).unwrap().is_none());
    decrypts(&t.a, &t.a_dek, b"written on A");
    decrypts(&t.a, &(b_dek.clone(), ct), b"from B");
    // B still holds the old MAC key (it never locked): a row it writes now is refused on A.
    let mut forged = crate::keystore::KeyRecord::new(KeyKind::Dek, "aes-kwp");
    forged.parent = Some(b_kek);
    forged.label = Some("forged by the revoked device".into());
    forged.wrapped = Some(vec![7; 40]);
    t.b.ks
        .insert(&forged)
        .expect("B's handle MACs with the old key");
    match t.a.ks.get(&forged.id) {
        Err(crate::keystore::KeystoreError::Tampered { id, .. }) => {
            assert_eq!(id, forged.id.to_string())
        }
        other => panic!("a row MAC'd under the revoked device's key was accepted: {other:?}"),
    }
    assert_eq!(
        t.a.record(&forged.id.to_string(), KeyKind::Dek)
            .unwrap_err()
            .code(),
        ErrorCode::KeystoreTampered
    );
    t.a.ks.delete(&forged.id).unwrap();
    // A keeps working, also after a restart; B cannot unlock any more.
    t.a.lock().unwrap();
    t.a.unlock(&pin_a()).unwrap();
    decrypts(&t.a, &t.a_dek, b"written on A");
    t.a.kek_create(None).unwrap();
    t.b.lock().unwrap();
    assert!(t.b.unlock(&pin_b()).is_err());
    drop(t.dir);
}

/// An interrupted revoke (the rekey mark written, the rekey not done) is finished at the next
/// unlock.
#[test]
fn an_interrupted_revoke_replaces_the_integrity_key_at_the_next_unlock() {
    let t = two_devices();
    let old_integrity: Vec<Uuid> =
        t.a.ks
            .integrity_records()
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
    crate::keystore::REKEY_FAIL.with(|f| f.set(true));
    t.a.device_revoke(&t.b_id.to_string())
        .expect_err("the rekey failed: the revoke says so");
    assert!(t.a.ks.meta(META_REKEY).unwrap().is_some(), "the mark stays");
    assert_eq!(
        t.a.ks.integrity_records().unwrap().len(),
        old_integrity.len()
    );
    t.a.lock().unwrap();
    t.a.unlock(&pin_a()).unwrap();
    assert!(t.a.ks.meta(META_REKEY).unwrap().is_none());
    let new_integrity = t.a.ks.integrity_records().unwrap();
    assert!(new_integrity.iter().all(|r| !old_integrity.contains(&r.id)));
    decrypts(&t.a, &t.a_dek, b"written on A");
}

/// Enroll a third device C from A (on the same file) and unlock it.
fn enroll_third(t: &Two) -> (Hierarchy, Uuid) {
    let c = agent(&t.dir.path().join("ks.db"), &MemoryRoot::new());
    let c_id = c.device_join(&Pin::new("pin-cccc")).unwrap();
    c.device_request(Some("C".into())).unwrap();
    t.a.device_approve(None, None).unwrap();
    let code = c.device_reveal().unwrap().expect("a code");
    assert!(matches!(
        t.a.device_approve(None, Some(&code)).unwrap(),
        Approval::Enrolled { .. }
    ));
    c.unlock(&Pin::new("pin-cccc")).unwrap();
    (c, c_id)
}

/// The first device is lost: B revokes it. A signed B's and C's rows, so its row stays as a
/// revoked anchor of the chain (its signature still checks, it is no longer enrolled): B and
/// C keep working and their rows still verify; A's root and wraps are gone, every KEK is
/// rotated, the integrity key replaced, and A cannot unlock or follow the new key. (This was
/// refused: "device … enrolled 2 other device(s)".)
#[test]
fn the_first_device_is_revoked_and_stays_as_the_chains_revoked_anchor() {
    let t = two_devices();
    let (c, _c_id) = enroll_third(&t);
    let first =
        t.b.ks
            .devices()
            .unwrap()
            .into_iter()
            .find(|d| d.enrolled_by == Some(d.id))
            .unwrap();
    let r =
        t.b.device_revoke(&first.id.to_string())
            .expect("B revokes A");
    assert_eq!(r.id, first.id);
    assert!(!r.keks.is_empty());
    let rows = t.b.ks.devices().unwrap();
    let a_row = rows
        .iter()
        .find(|d| d.id == first.id)
        .expect("A's row kept");
    assert_eq!(state_of(a_row), REVOKED);
    t.b.check_devices("test", &rows)
        .expect("the chain still checks");
    // B and C go on (C follows the new integrity key); B makes keys.
    decrypts(&t.b, &t.a_dek, b"written on A");
    assert!(c.follow_integrity_rekey());
    decrypts(&c, &t.a_dek, b"written on A");
    t.b.kek_create(None).expect("B after A's revoke");
    // A, revoked, has no wrap of the new key: it locks itself, and cannot unlock again.
    assert!(!t.a.follow_integrity_rekey());
    t.a.lock().unwrap();
    assert!(
        t.a.unlock(&Pin::new("pin-aaaa")).is_err(),
        "a revoked first device unlocked"
    );
    // Revoking it again changes nothing; the list shows it revoked.
    let again = t.b.device_revoke(&first.id.to_string()).expect("again");
    assert!(again.keks.is_empty());
    let (page, _) = t.b.device_page(None, 10).unwrap();
    assert_eq!(page.len(), 3);
    assert_eq!(page.iter().filter(|d| d.row.state == REVOKED).count(), 1);
}

/// `device.revoke` on B (a non-first device) of a third device C: every KEK rotated with a
/// wrap for A's device root, the integrity key replaced; A and B keep working.
#[test]
fn a_non_first_device_revokes_a_third() {
    let t = two_devices();
    let (c, c_id) = enroll_third(&t);
    decrypts(&c, &t.a_dek, b"written on A");
    let old_integrity = t.b.ks.integrity_records().unwrap();
    let r = t.b.device_revoke(&c_id.to_string()).expect("B revokes C");
    assert_eq!(r.keks.len(), 1);
    let now = t.b.ks.integrity_records().unwrap();
    assert!(now
        .iter()
        .all(|r| !old_integrity.iter().any(|o| o.id == r.id)));
    decrypts(&t.b, &t.a_dek, b"written on A");
    // A still holds the old MAC key: refused until it follows the new one (the service does
    // this when a request is refused as tampered); C, revoked, cannot.
    assert_eq!(
        t.a.decrypt(&t.a_dek.1, Some(&t.a_dek.0))
            .unwrap_err()
            .code(),
        ErrorCode::KeystoreTampered
    );
    assert!(t.a.follow_integrity_rekey());
    assert!(!t.a.follow_integrity_rekey(), "nothing more to follow");
    decrypts(&t.a, &t.a_dek, b"written on A");
    // C, revoked, has no wrap of the new key: it locks itself.
    assert!(!c.follow_integrity_rekey());
    assert_eq!(
        c.decrypt(&t.a_dek.1, Some(&t.a_dek.0)).unwrap_err().code(),
        ErrorCode::Locked
    );
    decrypts(&t.a, &t.a_dek, b"written on A");
    t.a.kek_create(None).expect("A after B's revoke");
    t.b.kek_create(None).expect("B after its revoke");
    assert_eq!(t.a.device_page(None, 10).unwrap().0.len(), 2);
}

/// The same with A on a passphrase (soft, PBKDF2) root: B makes and rotates a KEK, A reads it,
/// also after A unlocks again (through its device row, the passphrase opening its device key).
#[test]
fn a_non_first_device_makes_keks_when_the_first_runs_on_a_passphrase() {
    let t = two_devices_with(|path| {
        agent_on(
            path,
            Box::new(crate::root::soft::SoftRoot::new(crate::root::soft::MIN_ITERATIONS).unwrap()),
        )
    });
    assert!(t.a.device.on_device_key());
    let kek = t.b.kek_create(None).expect("kek.create on B");
    let dek =
        t.b.dek_create(Some(&kek.to_string()), Purpose::Personal, false, None)
            .unwrap()
            .to_string();
    t.b.kek_rotate(&kek.to_string()).expect("kek.rotate on B");
    let ct = t.b.encrypt(&dek, b"B, passphrase A").unwrap();
    decrypts(&t.a, &(dek.clone(), ct.clone()), b"B, passphrase A");
    t.a.lock().unwrap();
    t.a.unlock(&pin_a())
        .expect("A unlocks through its device row");
    decrypts(&t.a, &(dek, ct), b"B, passphrase A");
    decrypts(&t.a, &t.a_dek, b"written on A");
}

/// Integrity records edited in the file (not replaced by a device): not followed, the agent
/// keeps its key and stays unlocked, and the row put back verifies again.
#[test]
fn an_edited_integrity_record_is_not_followed_and_the_agent_stays_unlocked() {
    let t = two_devices();
    let recs = t.a.ks.integrity_records().unwrap();
    let ids: Vec<Uuid> = recs.iter().map(|r| r.id).collect();
    let kek = recs
        .iter()
        .find(|r| !r.parent.is_some_and(|p| ids.contains(&p)))
        .unwrap()
        .clone();
    let c = rusqlite::Connection::open(t.dir.path().join("ks.db")).unwrap();
    c.execute(
        "UPDATE keys SET label = 'edited' WHERE id = ?1",
        [kek.id.to_string()],
    )
    .unwrap();
    assert!(!t.a.follow_integrity_rekey());
    assert!(t.a.root_record("test").is_ok(), "still unlocked");
    c.execute(
        "UPDATE keys SET label = ?2 WHERE id = ?1",
        rusqlite::params![kek.id.to_string(), kek.label],
    )
    .unwrap();
    decrypts(&t.a, &t.a_dek, b"written on A");
}
