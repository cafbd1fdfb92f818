//! Node keys' cluster-root rotation (`node.root_rotate`), tested in-process on a [`MemoryRoot`]
//! (as `hierarchy_tests.rs`). `cargo test -p keyward-agent --lib node_root_rotate` runs these.
// Compiled only under #[cfg(test)]: `mod tests` at the end of nodes.rs includes this file.

use super::*;
use crate::config::UnlockPolicy;
use crate::keystore::Keystore;
use crate::root::memory::MemoryRoot;
use keyward_identity::ChainError;
use keyward_proto::secret::Pin;
use keyward_proto::ErrorCode;
use std::sync::Arc;

const PIN: &str = "right-pin-1234";

struct Fixture {
    h: Hierarchy,
    _dir: tempfile::TempDir,
}

fn ready() -> Fixture {
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
    h.kek_create(Some("k".into())).expect("kek");
    Fixture { h, _dir: dir }
}

fn pub_of(f: &Fixture, id: &Uuid) -> PublicKey {
    Hierarchy::public_of(&f.h.ks.get(id).unwrap().unwrap()).unwrap()
}

/// A cluster `/` -> web -> web/db, and the root's public key before any rotation.
fn cluster(f: &Fixture) -> (Uuid, Uuid, Uuid, PublicKey) {
    let web = f.h.node_derive("web", None, None, Some(3600)).unwrap();
    let db =
        f.h.node_derive("web/db", Some(&web.to_string()), None, None)
            .unwrap();
    let root = f.h.ks.by_name(CLUSTER_ROOT).unwrap().unwrap();
    let root_pub = Hierarchy::public_of(&root).unwrap();
    (root.id, web, db, root_pub)
}

#[test]
fn node_root_rotate_old_root_vouches_and_children_are_redelegated() {
    let f = ready();
    let (old_id, web, db, old_pub) = cluster(&f);
    let r = f.h.node_root_rotate(false).unwrap();
    assert_eq!(r.old, old_id);
    assert_eq!(r.redelegated, 1, "only the direct child `web`");
    let new_rec = f.h.ks.by_name(CLUSTER_ROOT).unwrap().unwrap();
    assert_eq!(new_rec.id, r.id);
    assert_eq!(new_rec.issuer, Some(old_id));
    let old = f.h.ks.get(&old_id).unwrap().unwrap();
    assert_eq!(old.state, KeyState::Retired, "retired, not revoked");
    assert!(f.h.ks.revocations().unwrap().is_empty());
    let web_rec = f.h.ks.get(&web).unwrap().unwrap();
    assert_eq!(web_rec.issuer, Some(r.id), "same key, new parent");
    // The delegation keeps the child's validity length (1 h).
    let st = keyward_identity::inspect_statement(web_rec.statement.as_deref().unwrap()).unwrap();
    assert_eq!(st.expires_at.unwrap() - st.issued_at, 3600);
    assert_eq!(st.issuer, pub_of(&f, &r.id).key_id());

    let chain = Chain::from_cbor(&f.h.node_chain(None).unwrap()).unwrap();
    let new_pub = pub_of(&f, &r.id);
    assert_eq!(chain.root().key_id(), new_pub.key_id());
    let t = now();
    for id in [web, db] {
        chain.verify_key(&pub_of(&f, &id), t).unwrap();
        let v = chain
            .verify_key_from(&old_pub, &pub_of(&f, &id), t)
            .unwrap();
        assert_eq!(v.path.last(), Some(&old_pub.key_id()));
    }
    // Deriving again works under the new root; a second rotation keeps the whole succession.
    let api = f.h.node_derive("api", None, None, None).unwrap();
    let r2 = f.h.node_root_rotate(false).unwrap();
    assert_eq!(r2.redelegated, 2);
    let chain = Chain::from_cbor(&f.h.node_chain(None).unwrap()).unwrap();
    // Checked now: the second rotation's delegations are issued at its own second, which on a
    // loaded machine can be after the `t` above (and then not yet valid at `t`).
    let t = now();
    for id in [web, db, api] {
        chain
            .verify_key_from(&old_pub, &pub_of(&f, &id), t)
            .unwrap();
        chain
            .verify_key_from(&new_pub, &pub_of(&f, &id), t)
            .unwrap();
    }
}

#[test]
fn node_root_rotate_compromised_revokes_the_old_root() {
    let f = ready();
    let (old_id, web, db, old_pub) = cluster(&f);
    let r = f.h.node_root_rotate(true).unwrap();
    let old = f.h.ks.get(&old_id).unwrap().unwrap();
    assert_eq!(old.state, KeyState::Revoked);
    let new_rec = f.h.ks.get(&r.id).unwrap().unwrap();
    assert_eq!(new_rec.issuer, None, "the old root does not vouch");
    assert_eq!(new_rec.statement, None);
    let revs = f.h.ks.revocations().unwrap();
    assert_eq!(revs.len(), 1);
    assert_eq!((revs[0].revoked, revs[0].issuer), (old_id, old_id));

    let chain = Chain::from_cbor(&f.h.node_chain(None).unwrap()).unwrap();
    let t = now();
    let new_pub = pub_of(&f, &r.id);
    for id in [web, db] {
        // Trusted through the re-imported new root...
        chain
            .verify_key_from(&new_pub, &pub_of(&f, &id), t)
            .unwrap();
        // ...refused for a peer that still trusts the old one.
        let e = chain
            .verify_key_from(&old_pub, &pub_of(&f, &id), t)
            .unwrap_err();
        assert!(
            matches!(e, ChainError::Revoked { key, by } if key == old_pub.key_id() && by == key),
            "{e:?}"
        );
    }
    // The old root's own chain is refused too.
    let old_chain = Chain::from_cbor(&f.h.node_chain(Some(&old_id.to_string())).unwrap()).unwrap();
    let e = old_chain.verify_key(&old_pub, t).unwrap_err();
    assert!(matches!(e, ChainError::Revoked { .. }), "{e:?}");
}

#[test]
fn node_root_rotate_resigns_the_agent_policy() {
    let f = ready();
    cluster(&f);
    let a = f.h.keypair_create(None, None, false, None).unwrap();
    let did = pub_of(&f, &a).to_did_key();
    f.h.agents_add(&did, &["sign".into()], None).unwrap();
    let r = f.h.node_root_rotate(false).unwrap();
    let p = f.h.agents_policy().unwrap();
    assert_eq!(p.policy.seq, 2);
    let new_pub = pub_of(&f, &r.id);
    keyward_identity::verify_policy(&p.bytes, Some(&new_pub)).unwrap();
    assert!(p.policy.entry(&pub_of(&f, &a)).is_some());
}

#[test]
fn node_root_rotate_refuses_without_a_root_and_when_locked() {
    let f = ready();
    let e = f.h.node_root_rotate(false).unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
    assert!(
        f.h.ks.by_name(CLUSTER_ROOT).unwrap().is_none(),
        "nothing made"
    );
    cluster(&f);
    f.h.lock().unwrap();
    let e = f.h.node_root_rotate(true).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Locked, "{e}");
    assert!(
        f.h.ks.revocations().unwrap().is_empty(),
        "keystore untouched"
    );
}
