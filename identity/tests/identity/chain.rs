use keyward_identity::{
    issue_delegation, issue_rekey, issue_revocation, verify_statement, Chain, ChainError, LocalKey,
    StatementError, StatementKind,
};

use crate::util::key;

const T0: u64 = 1_700_000_000;
const DAY: u64 = 86_400;

struct Cluster {
    root: LocalKey,
    inter: LocalKey,
    node: LocalKey,
    chain: Chain,
}

/// root --(T0..T0+30d)--> inter --(T0..T0+7d)--> node
fn cluster() -> Cluster {
    let (root, inter, node) = (key(30), key(31), key(32));
    let mut chain = Chain::new(root.public_key());
    let rk = root.public_key().key_id();
    let ik = inter.public_key().key_id();
    chain
        .push(
            issue_delegation(&root, &rk, &inter.public_key(), "inter", T0, T0 + 30 * DAY).unwrap(),
        )
        .unwrap();
    chain
        .push(
            issue_delegation(&inter, &ik, &node.public_key(), "node-1", T0, T0 + 7 * DAY).unwrap(),
        )
        .unwrap();
    Cluster {
        root,
        inter,
        node,
        chain,
    }
}

#[test]
fn statement_round_trip_and_fields() {
    let c = cluster();
    let rk = c.root.public_key().key_id();
    let bytes =
        issue_delegation(&c.root, &rk, &c.inter.public_key(), "inter", T0, T0 + DAY).unwrap();
    let st = verify_statement(&bytes, &c.root.public_key()).unwrap();
    assert_eq!(st.kind, StatementKind::Delegation);
    assert_eq!(st.issuer, rk);
    assert_eq!(st.subject, c.inter.public_key().key_id());
    assert_eq!(st.subject_key, Some(c.inter.public_key()));
    assert_eq!(st.name.as_deref(), Some("inter"));
    assert_eq!((st.issued_at, st.expires_at), (T0, Some(T0 + DAY)));

    let rev = issue_revocation(&c.root, &rk, &c.node.public_key().key_id(), T0).unwrap();
    let st = verify_statement(&rev, &c.root.public_key()).unwrap();
    assert_eq!(st.kind, StatementKind::Revocation);
    assert_eq!(st.subject_key, None);

    // Wrong issuer key.
    assert!(matches!(
        verify_statement(&bytes, &c.inter.public_key()).unwrap_err(),
        StatementError::IssuerMismatch { .. }
    ));
    // Signer is not the named parent.
    assert!(matches!(
        issue_delegation(&c.inter, &rk, &c.node.public_key(), "n", T0, T0 + 1).unwrap_err(),
        StatementError::IssuerMismatch { .. }
    ));
    // exp must follow iat.
    assert!(matches!(
        issue_delegation(&c.root, &rk, &c.node.public_key(), "n", T0, T0).unwrap_err(),
        StatementError::Invalid(_)
    ));
}

#[test]
fn tampered_statement_signature_is_typed() {
    let c = cluster();
    let rk = c.root.public_key().key_id();
    let mut bytes =
        issue_delegation(&c.root, &rk, &c.inter.public_key(), "inter", T0, T0 + DAY).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x10;
    assert!(matches!(
        verify_statement(&bytes, &c.root.public_key()).unwrap_err(),
        StatementError::Cose(keyward_identity::cose::Sign1Error::BadSignature)
    ));
}

#[test]
fn vouches_through_the_chain_and_survives_a_file_round_trip() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.cbor");
    std::fs::write(&path, c.chain.to_cbor()).unwrap();
    let chain = Chain::from_cbor(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(chain, c.chain);

    let v = chain.verify_key(&c.node.public_key(), T0 + DAY).unwrap();
    assert_eq!(v.key, c.node.public_key().key_id());
    assert_eq!(v.name.as_deref(), Some("node-1"));
    assert_eq!(
        v.path,
        vec![
            c.node.public_key().key_id(),
            c.inter.public_key().key_id(),
            c.root.public_key().key_id()
        ]
    );
    assert_eq!(v.expires_at, Some(T0 + 7 * DAY));
    let r = chain.verify_key(&c.root.public_key(), T0).unwrap();
    assert_eq!(r.path, vec![c.root.public_key().key_id()]);
    assert_eq!(r.expires_at, None);
}

#[test]
fn revoked_link_is_typed() {
    let mut c = cluster();
    let rk = c.root.public_key().key_id();
    let ik = c.inter.public_key().key_id();
    c.chain
        .push(issue_revocation(&c.root, &rk, &ik, T0 + DAY).unwrap())
        .unwrap();
    match c
        .chain
        .verify_key(&c.node.public_key(), T0 + 2 * DAY)
        .unwrap_err()
    {
        ChainError::Revoked { key, by } => {
            assert_eq!(key, ik);
            assert_eq!(by, rk);
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(matches!(
        c.chain
            .verify_key(&c.inter.public_key(), T0 + 2 * DAY)
            .unwrap_err(),
        ChainError::Revoked { .. }
    ));
}

#[test]
fn revocation_by_non_ancestor_is_ignored_but_by_grandparent_counts() {
    let mut c = cluster();
    let sibling = key(40);
    let rk = c.root.public_key().key_id();
    let sk = sibling.public_key().key_id();
    let nk = c.node.public_key().key_id();
    c.chain
        .push(issue_delegation(&c.root, &rk, &sibling.public_key(), "sib", T0, T0 + DAY).unwrap())
        .unwrap();
    c.chain
        .push(issue_revocation(&sibling, &sk, &nk, T0).unwrap())
        .unwrap();
    // Descendant revoking its ancestor is ignored too.
    c.chain
        .push(issue_revocation(&c.node, &nk, &c.inter.public_key().key_id(), T0).unwrap())
        .unwrap();
    c.chain.verify_key(&c.node.public_key(), T0 + 1).unwrap();
    c.chain
        .push(issue_revocation(&c.root, &rk, &nk, T0).unwrap())
        .unwrap();
    assert!(matches!(
        c.chain.verify_key(&c.node.public_key(), T0 + 1).unwrap_err(),
        ChainError::Revoked { key, by } if key == nk && by == rk
    ));
}

#[test]
fn expired_and_not_yet_valid_delegations_are_typed() {
    let c = cluster();
    let nk = c.node.public_key().key_id();
    match c
        .chain
        .verify_key(&c.node.public_key(), T0 + 8 * DAY)
        .unwrap_err()
    {
        ChainError::Expired {
            key,
            expired_at,
            now,
        } => {
            assert_eq!((key, expired_at, now), (nk, T0 + 7 * DAY, T0 + 8 * DAY));
        }
        e => panic!("unexpected {e:?}"),
    }
    // Exactly at exp is expired.
    assert!(matches!(
        c.chain
            .verify_key(&c.node.public_key(), T0 + 7 * DAY)
            .unwrap_err(),
        ChainError::Expired { .. }
    ));
    assert!(matches!(
        c.chain
            .verify_key(&c.node.public_key(), T0 - 1)
            .unwrap_err(),
        ChainError::NotYetValid { .. }
    ));
    // Intermediate expired: node's own link is fine but the path is not.
    assert!(matches!(
        c.chain.verify_key(&c.node.public_key(), T0 + 31 * DAY).unwrap_err(),
        ChainError::Expired { key, .. } if key == nk
    ));
}

#[test]
fn renewed_delegation_supersedes_expired_one() {
    let mut c = cluster();
    let ik = c.inter.public_key().key_id();
    c.chain
        .push(
            issue_delegation(
                &c.inter,
                &ik,
                &c.node.public_key(),
                "node-1b",
                T0 + 6 * DAY,
                T0 + 14 * DAY,
            )
            .unwrap(),
        )
        .unwrap();
    let v = c
        .chain
        .verify_key(&c.node.public_key(), T0 + 8 * DAY)
        .unwrap();
    assert_eq!(v.name.as_deref(), Some("node-1b"));
    assert_eq!(v.expires_at, Some(T0 + 14 * DAY));
}

#[test]
fn bad_signature_in_chain_is_typed() {
    let c = cluster();
    let mut statements = c.chain.statements().to_vec();
    let n = statements[1].len();
    statements[1][n - 3] ^= 0x01;
    let mut chain = Chain::new(c.root.public_key());
    for s in statements {
        chain.push(s).unwrap();
    }
    match chain.verify_key(&c.node.public_key(), T0 + 1).unwrap_err() {
        ChainError::BadSignature { subject, issuer } => {
            assert_eq!(subject, c.node.public_key().key_id());
            assert_eq!(issuer, c.inter.public_key().key_id());
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn unknown_keys_and_issuers_are_typed() {
    let mut c = cluster();
    let stranger = key(50);
    assert!(matches!(
        c.chain.verify_key(&stranger.public_key(), T0 + 1).unwrap_err(),
        ChainError::NotInChain(k) if k == stranger.public_key().key_id()
    ));
    // A delegation from a key outside the cluster.
    let outsider = key(51);
    let ok = outsider.public_key().key_id();
    c.chain
        .push(issue_delegation(&outsider, &ok, &stranger.public_key(), "s", T0, T0 + DAY).unwrap())
        .unwrap();
    assert!(matches!(
        c.chain.verify_key(&stranger.public_key(), T0 + 1).unwrap_err(),
        ChainError::UnknownIssuer(k) if k == ok
    ));
    assert!(matches!(
        Chain::from_cbor(b"\xa0").unwrap_err(),
        ChainError::Malformed(_)
    ));
    let mut bad = Chain::new(c.root.public_key());
    assert!(matches!(
        bad.push(vec![1, 2, 3]).unwrap_err(),
        ChainError::Statement { index: 0, .. }
    ));
}

#[test]
fn cycles_are_typed() {
    let c = cluster();
    let (a, b) = (key(60), key(61));
    let (ak, bk) = (a.public_key().key_id(), b.public_key().key_id());
    let mut chain = c.chain.clone();
    chain
        .push(issue_delegation(&a, &ak, &b.public_key(), "b", T0, T0 + DAY).unwrap())
        .unwrap();
    chain
        .push(issue_delegation(&b, &bk, &a.public_key(), "a", T0, T0 + DAY).unwrap())
        .unwrap();
    assert!(matches!(
        chain.verify_key(&a.public_key(), T0 + 1).unwrap_err(),
        ChainError::Cycle(_)
    ));
}

#[test]
fn rekey_hands_over_to_the_new_key() {
    let mut c = cluster();
    let new = key(70);
    c.chain
        .push(issue_rekey(&c.node, &new.public_key(), "node-1", T0 + DAY, T0 + 5 * DAY).unwrap())
        .unwrap();
    let v = c.chain.verify_key(&new.public_key(), T0 + 2 * DAY).unwrap();
    assert_eq!(v.path.len(), 4);
    assert_eq!(v.path[1], c.node.public_key().key_id());
    assert_eq!(v.expires_at, Some(T0 + 5 * DAY));
    let st = keyward_identity::delegation::inspect_statement(c.chain.statements().last().unwrap())
        .unwrap();
    assert_eq!(st.kind, StatementKind::Rekey);
    // Revoking the old key cuts the rekeyed one as well.
    let ik = c.inter.public_key().key_id();
    c.chain
        .push(issue_revocation(&c.inter, &ik, &c.node.public_key().key_id(), T0 + 3 * DAY).unwrap())
        .unwrap();
    assert!(matches!(
        c.chain
            .verify_key(&new.public_key(), T0 + 3 * DAY)
            .unwrap_err(),
        ChainError::Revoked { .. }
    ));
}

/// After a cluster-root rotation: the new root re-delegates the old root's child, and the old
/// root vouches for the new one with a rekey statement named `/`.
fn rotated(c: &Cluster, new_root: &LocalKey) -> Chain {
    let nk = new_root.public_key().key_id();
    let mut chain = Chain::new(new_root.public_key());
    chain
        .push(
            issue_rekey(
                &c.root,
                &new_root.public_key(),
                "/",
                T0 + DAY,
                T0 + 60 * DAY,
            )
            .unwrap(),
        )
        .unwrap();
    chain
        .push(
            issue_delegation(
                new_root,
                &nk,
                &c.inter.public_key(),
                "inter",
                T0 + DAY,
                T0 + 30 * DAY,
            )
            .unwrap(),
        )
        .unwrap();
    let ik = c.inter.public_key().key_id();
    chain
        .push(
            issue_delegation(
                &c.inter,
                &ik,
                &c.node.public_key(),
                "node-1",
                T0,
                T0 + 7 * DAY,
            )
            .unwrap(),
        )
        .unwrap();
    chain
}

#[test]
fn rotated_root_chain_verifies_with_the_old_root_as_anchor() {
    let c = cluster();
    let new_root = key(33);
    let chain = rotated(&c, &new_root);
    let now = T0 + 2 * DAY;
    let old = c.root.public_key();
    let v = chain
        .verify_key_from(&old, &c.node.public_key(), now)
        .unwrap();
    assert_eq!(v.name.as_deref(), Some("node-1"));
    assert_eq!(
        v.path,
        vec![
            c.node.public_key().key_id(),
            c.inter.public_key().key_id(),
            new_root.public_key().key_id(),
            old.key_id()
        ]
    );
    // The new root itself, through the same rekey link; the chain's own root as anchor too.
    chain
        .verify_key_from(&old, &new_root.public_key(), now)
        .unwrap();
    let v = chain
        .verify_key_from(&new_root.public_key(), &c.node.public_key(), now)
        .unwrap();
    assert_eq!(v.path.len(), 3);
    // Survives the file round trip.
    let back = Chain::from_cbor(&chain.to_cbor()).unwrap();
    back.verify_key_from(&old, &c.node.public_key(), now)
        .unwrap();
}

#[test]
fn anchor_that_did_not_vouch_for_the_new_root_is_refused() {
    let c = cluster();
    let new_root = key(33);
    let stranger = key(34);
    let chain = rotated(&c, &new_root);
    let err = chain
        .verify_key_from(&stranger.public_key(), &c.node.public_key(), T0 + 2 * DAY)
        .unwrap_err();
    // The only link up from the new root is the old root's rekey: an issuer the stranger's
    // view does not know.
    assert!(
        matches!(err, ChainError::UnknownIssuer(k) if k == c.root.public_key().key_id()),
        "{err:?}"
    );
    // A rekey of the root signed by someone else is not the old root's vouching.
    let mut forged = Chain::new(new_root.public_key());
    forged
        .push(issue_rekey(&stranger, &new_root.public_key(), "/", T0, T0 + DAY).unwrap())
        .unwrap();
    let err = forged
        .verify_key_from(&c.root.public_key(), &new_root.public_key(), T0 + 1)
        .unwrap_err();
    assert!(matches!(err, ChainError::UnknownIssuer(_)), "{err:?}");
}

#[test]
fn compromised_rotation_self_revocation_refuses_the_old_anchor() {
    let c = cluster();
    let new_root = key(33);
    let old = c.root.public_key();
    let nk = new_root.public_key().key_id();
    // Compromised: no rekey; the old root revokes itself; the new root re-delegates.
    let mut chain = Chain::new(new_root.public_key());
    chain
        .push(issue_revocation(&c.root, &old.key_id(), &old.key_id(), T0 + DAY).unwrap())
        .unwrap();
    chain
        .push(
            issue_delegation(
                &new_root,
                &nk,
                &c.inter.public_key(),
                "inter",
                T0,
                T0 + 9 * DAY,
            )
            .unwrap(),
        )
        .unwrap();
    let now = T0 + 2 * DAY;
    let err = chain
        .verify_key_from(&old, &c.inter.public_key(), now)
        .unwrap_err();
    assert!(
        matches!(err, ChainError::Revoked { key, by } if key == old.key_id() && by == old.key_id()),
        "{err:?}"
    );
    // The re-imported new root is trusted.
    chain
        .verify_key_from(&new_root.public_key(), &c.inter.public_key(), now)
        .unwrap();
    // The old root's own chain, with its self-revocation added, refuses the old root and all
    // under it, even with a rekey in it (a compromised key could sign one).
    let mut old_chain = c.chain.clone();
    old_chain
        .push(issue_revocation(&c.root, &old.key_id(), &old.key_id(), T0 + DAY).unwrap())
        .unwrap();
    let err = old_chain.verify_key(&c.node.public_key(), now).unwrap_err();
    assert!(
        matches!(err, ChainError::Revoked { key, .. } if key == old.key_id()),
        "{err:?}"
    );
    let mut with_rekey = chain.clone();
    with_rekey
        .push(issue_rekey(&c.root, &new_root.public_key(), "/", T0, T0 + 9 * DAY).unwrap())
        .unwrap();
    let err = with_rekey
        .verify_key_from(&old, &c.inter.public_key(), now)
        .unwrap_err();
    assert!(matches!(err, ChainError::Revoked { .. }), "{err:?}");
}
