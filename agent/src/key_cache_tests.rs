//! The one key cache seen from every door that signs (`sign`, `sign.digest`, the SSH door), on a
//! [`MemoryRoot`]: a key cached by one door serves the others, and a revocation, a narrowed
//! limit, an expiry or a lock stops it at once through every door although it is cached; token
//! keypairs sign again after the root's handles go stale and report a lost root.
//! `cargo test -p keyward-agent --lib sign_cache` runs these.
// Compiled only under #[cfg(test)]: `mod hierarchy_tests` at the end of key_cache.rs.

use crate::config::UnlockPolicy;
use crate::error::AgentError;
use crate::hierarchy::Hierarchy;
use crate::keystore::{KeyKind, Keystore};
use crate::limits::{LimitsRequest, Usage};
use crate::root::memory::MemoryRoot;
use crate::ssh::keys::{key_data, SshKeys};
use keyward_proto::secret::Pin;
use std::sync::Arc;
use uuid::Uuid;

const PIN: &str = "right-pin-1234";

struct Fixture {
    h: Arc<Hierarchy>,
    ssh: SshKeys,
    root: MemoryRoot,
    _dir: tempfile::TempDir,
}

fn ready() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).expect("keystore"));
    let root = MemoryRoot::new();
    let h = Arc::new(Hierarchy::new(
        ks,
        Box::new(root.clone()),
        UnlockPolicy::default(),
    ));
    h.init(&Pin::new(PIN)).expect("init");
    h.kek_create(Some("k".into())).expect("kek");
    Fixture {
        ssh: SshKeys::new(h.clone()),
        h,
        root,
        _dir: dir,
    }
}

/// A software P-256 keypair offered to SSH.
fn offered_keypair(f: &Fixture) -> String {
    let id =
        f.h.keypair_create(None, None, false, None)
            .unwrap()
            .to_string();
    f.h.keypair_set_ssh(&id, true, false).unwrap();
    id
}

fn public(f: &Fixture, id: &str) -> ssh_key::public::KeyData {
    key_data(&f.h.keypair_show(id).unwrap()).unwrap()
}

/// Every door signs with `id`; the key is cached once for all of them.
fn signs_everywhere(f: &Fixture, id: &str) -> Arc<crate::ssh::keys::Offered> {
    f.h.sign_digest(id, &[7; 32]).expect("sign.digest");
    f.h.sign(id, b"m", true).expect("sign");
    let o = f.ssh.find(&public(f, id)).expect("offered to ssh");
    f.ssh.sign(&o, b"ssh data", 0).expect("ssh sign");
    assert!(
        f.ssh.ready(&public(f, id)).is_some(),
        "the SSH fast path has it"
    );
    let uuid = Uuid::parse_str(id).unwrap();
    assert!(f.h.key_cache.get(&uuid).is_some());
    o
}

#[track_caller]
fn refused(r: Result<impl std::fmt::Debug, AgentError>, what: &str, ok: fn(&AgentError) -> bool) {
    match r {
        Err(e) if ok(&e) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn sign_cache_one_key_serves_every_door() {
    let f = ready();
    let id = offered_keypair(&f);
    assert!(f.h.key_cache.is_empty());
    // The SSH door unwraps it; `sign.digest` and `sign` then sign with the same cached key.
    let o = f.ssh.find(&public(&f, &id)).unwrap();
    f.ssh.sign(&o, b"x", 0).unwrap();
    assert_eq!(f.h.key_cache.len(), 1);
    signs_everywhere(&f, &id);
    assert_eq!(f.h.key_cache.len(), 1, "one cache, one entry per key");
    // A signature from the cache verifies with the keypair's public key.
    let pk = crate::hierarchy::Hierarchy::public_of(&f.h.keypair_show(&id).unwrap()).unwrap();
    let digest = [0x42; 32];
    let sig = f.h.sign_digest(&id, &digest).unwrap();
    let sig = keyward_identity::p256::ecdsa::Signature::from_slice(&sig).unwrap();
    use keyward_identity::p256::ecdsa::signature::hazmat::PrehashVerifier;
    pk.verifying_key().verify_prehash(&digest, &sig).unwrap();
    // Digests shorter than 32 bytes are read as ECDSA reads them (left-padded).
    let short = f.h.sign_digest(&id, &[1; 20]).unwrap();
    assert_eq!(short.len(), 64);
}

#[test]
fn sign_cache_revoked_key_stops_signing_through_every_door_while_cached() {
    let f = ready();
    let id = offered_keypair(&f);
    let o = signs_everywhere(&f, &id);
    f.h.revoke(KeyKind::Keypair, &id).unwrap();
    let inactive = |e: &AgentError| matches!(e, AgentError::KeyInactive { .. });
    refused(f.h.sign_digest(&id, &[7; 32]), "sign.digest", inactive);
    refused(f.h.sign(&id, b"m", true), "sign", inactive);
    assert!(f.ssh.ready(&public(&f, &id)).is_none());
    assert!(f.ssh.find(&public(&f, &id)).is_err(), "no longer offered");
    // An identity found before the revocation does not sign either.
    assert!(f.ssh.sign(&o, b"ssh data", 0).is_err());
    assert!(f.h.key_cache.get(&Uuid::parse_str(&id).unwrap()).is_none());
}

#[test]
fn sign_cache_narrowed_limits_apply_through_every_door_while_cached() {
    let f = ready();
    let id = offered_keypair(&f);
    let o = signs_everywhere(&f, &id);
    let narrow = LimitsRequest {
        usage: Some(vec![Usage::Derive]),
        ..Default::default()
    };
    f.h.key_limits(&id, &narrow).unwrap();
    // Still cached: the limits, not an empty cache, refuse it.
    assert!(f.h.key_cache.get(&Uuid::parse_str(&id).unwrap()).is_some());
    let denied = |e: &AgentError| {
        matches!(
            e,
            AgentError::UsageDenied {
                usage: Usage::Sign,
                ..
            }
        )
    };
    refused(f.h.sign_digest(&id, &[7; 32]), "sign.digest", denied);
    refused(f.h.sign(&id, b"m", true), "sign", denied);
    assert!(f.ssh.ready(&public(&f, &id)).is_none());
    assert!(f.ssh.sign(&o, b"ssh data", 0).is_err());
    // What the limits still allow works, from the same cached key.
    f.h.keypair_ecdh(
        &id,
        &keyward_identity::LocalKey::generate(&mut rand_core::OsRng)
            .public_key()
            .to_sec1_uncompressed(),
    )
    .unwrap();
}

#[test]
fn sign_cache_expiry_applies_while_cached() {
    let f = ready();
    let id = offered_keypair(&f);
    signs_everywhere(&f, &id);
    let soon = LimitsRequest {
        not_after: Some(crate::keystore::now() + 1),
        ..Default::default()
    };
    f.h.key_limits(&id, &soon).unwrap();
    f.h.sign_digest(&id, &[7; 32]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let expired = |e: &AgentError| matches!(e, AgentError::KeyExpired { .. });
    refused(f.h.sign_digest(&id, &[7; 32]), "sign.digest", expired);
    refused(f.h.sign(&id, b"m", true), "sign", expired);
}

#[test]
fn sign_cache_lock_clears_keys_and_record_copies() {
    let f = ready();
    let id = offered_keypair(&f);
    let o = signs_everywhere(&f, &id);
    assert!(f.h.key_cache.records_len() > 0);
    f.h.lock().unwrap();
    assert!(f.h.key_cache.is_empty(), "lock empties the key cache");
    assert_eq!(f.h.key_cache.records_len(), 0, "and the record copies");
    let locked = |e: &AgentError| matches!(e, AgentError::Locked { .. });
    refused(f.h.sign_digest(&id, &[7; 32]), "sign.digest", locked);
    refused(f.h.sign(&id, b"m", true), "sign", locked);
    assert!(f.ssh.ready(&public(&f, &id)).is_none());
    assert!(f.ssh.sign(&o, b"x", 0).is_err());
    assert!(f.h.key_cache.is_empty(), "nothing refilled it while locked");
    f.h.unlock(&Pin::new(PIN)).unwrap();
    signs_everywhere(&f, &id);
}

#[test]
fn sign_cache_stale_root_clears_the_cache_and_token_keypairs_sign_again() {
    let f = ready();
    let soft = offered_keypair(&f);
    let tok =
        f.h.keypair_create(None, None, true, None)
            .unwrap()
            .to_string();
    f.h.sign_digest(&soft, &[7; 32]).unwrap();
    f.h.sign_digest(&tok, &[7; 32]).unwrap();
    assert!(
        f.h.key_cache.get(&Uuid::parse_str(&tok).unwrap()).is_none(),
        "token keys are never cached"
    );
    // The token reset: the next token signature recovers (logs in again) and signs; the
    // recovery empties the key cache.
    let before = f.root.recoveries();
    f.root.make_stale();
    let sig =
        f.h.sign_digest(&tok, &[7; 32])
            .expect("signs after re-initialization");
    assert_eq!(sig.len(), 64);
    assert_eq!(f.root.recoveries(), before + 1);
    assert!(
        f.h.key_cache.is_empty(),
        "a stale root empties the key cache"
    );
    f.h.sign(&tok, b"m", false).expect("sign after recovery");
    // The root is lost: a typed token error, never a signature.
    f.root.remove_root();
    let e = f.h.sign_digest(&tok, &[7; 32]).expect_err("root gone");
    assert!(
        matches!(e, AgentError::Root(_) | AgentError::Locked { .. }),
        "a typed root error when the token is gone, got {e:?}"
    );
}

// ---- record copies on the DEK paths (`encrypt`, `decrypt`, `dek.export`, `gcm.*`) ------------

/// An exportable DEK under the fixture's KEK, used once by encrypt, decrypt and export so that
/// its record and its KEK's are copied; returns the DEK and a ciphertext under its version 1.
fn used_dek(f: &Fixture) -> (String, String) {
    let dek =
        f.h.dek_create(None, crate::keystore::Purpose::Personal, true, None)
            .unwrap()
            .to_string();
    let ct = f.h.encrypt(&dek, b"hello").unwrap();
    assert_eq!(&*f.h.decrypt(&ct, None).unwrap(), b"hello");
    f.h.dek_export(&dek).unwrap();
    (dek, ct)
}

fn ad_of(ct: &str) -> String {
    use keyward_envelope::Serialized;
    let Serialized::Encrypted(data) = Serialized::parse(ct).unwrap() else {
        panic!("not a ciphertext")
    };
    data.gcm().unwrap().ad.to_string()
}

#[test]
fn record_copies_serve_dek_requests_and_see_changes_made_outside_the_agent() {
    let f = ready();
    let (dek, ct) = used_dek(&f);
    let dek_id = Uuid::parse_str(&dek).unwrap();
    assert_eq!(
        f.h.key_cache.records_len(),
        2,
        "the DEK's and the KEK's records"
    );
    // Served from the copies while nothing changes.
    f.h.encrypt(&dek, b"x").unwrap();
    assert_eq!(f.h.key_cache.records_len(), 2);
    // Change the DEK's row behind the agent's back (another process: the agent's own change
    // count does not move). The file's data_version does: the copies go, the row is read again
    // and its MAC no longer verifies, at the very next request.
    let c = rusqlite::Connection::open(f.h.ks.path().unwrap()).unwrap();
    let set = |label: &str| {
        c.execute(
            "UPDATE keys SET label = ?1 WHERE id = ?2",
            [label.to_string(), dek_id.to_string()],
        )
        .unwrap()
    };
    let old: Option<String> = c
        .query_row(
            "SELECT label FROM keys WHERE id = ?1",
            [dek_id.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(set("changed outside"), 1);
    let tampered = |e: &AgentError| {
        matches!(
            e,
            AgentError::Keystore(crate::keystore::KeystoreError::Tampered { .. })
        )
    };
    refused(f.h.encrypt(&dek, b"x"), "encrypt", tampered);
    refused(f.h.decrypt(&ct, None), "decrypt", tampered);
    refused(f.h.dek_export(&dek), "dek.export", tampered);
    // Undone: the row verifies again.
    c.execute(
        "UPDATE keys SET label = ?1 WHERE id = ?2",
        rusqlite::params![old, dek_id.to_string()],
    )
    .unwrap();
    assert_eq!(&*f.h.decrypt(&ct, None).unwrap(), b"hello");
}

#[test]
fn record_copies_dek_rotation_and_min_version_apply_to_the_next_request() {
    let f = ready();
    let (dek, v1) = used_dek(&f);
    let id = Uuid::parse_str(&dek).unwrap();
    assert_eq!(f.h.dek_rotate(&dek).unwrap(), 2);
    let v2 = f.h.encrypt(&dek, b"two").unwrap();
    assert_eq!(
        ad_of(&v2),
        crate::lifecycle::ad_for(&id, 2),
        "the new version seals"
    );
    assert_eq!(&*f.h.decrypt(&v1, None).unwrap(), b"hello");
    f.h.dek_min_version(&dek, 2).unwrap();
    let retired = |e: &AgentError| matches!(e, AgentError::VersionRetired { .. });
    refused(f.h.decrypt(&v1, None), "decrypt v1", retired);
    assert_eq!(&*f.h.decrypt(&v2, None).unwrap(), b"two");
}

#[test]
fn record_copies_narrowed_limits_and_expiry_apply_to_the_next_dek_request() {
    let f = ready();
    let (dek, ct) = used_dek(&f);
    let decrypt_only = LimitsRequest {
        usage: Some(vec![Usage::Decrypt]),
        ..Default::default()
    };
    f.h.key_limits(&dek, &decrypt_only).unwrap();
    let denied = |e: &AgentError| matches!(e, AgentError::UsageDenied { .. });
    refused(f.h.encrypt(&dek, b"x"), "encrypt", denied);
    // Without `export` in its usage the DEK is no longer exportable.
    refused(f.h.dek_export(&dek), "dek.export", |e| {
        matches!(
            e,
            AgentError::NotExportable { .. } | AgentError::UsageDenied { .. }
        )
    });
    refused(
        f.h.gcm_seal(&dek, &[1; 12], b"", 16, b"y"),
        "gcm.seal",
        denied,
    );
    assert_eq!(&*f.h.decrypt(&ct, None).unwrap(), b"hello");
    let soon = LimitsRequest {
        not_after: Some(crate::keystore::now() + 1),
        ..Default::default()
    };
    f.h.key_limits(&dek, &soon).unwrap();
    f.h.decrypt(&ct, None).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let expired = |e: &AgentError| matches!(e, AgentError::KeyExpired { .. });
    refused(f.h.decrypt(&ct, None), "decrypt", expired);
}

#[test]
fn record_copies_revoking_a_dek_or_its_kek_stops_the_next_request() {
    let f = ready();
    let (dek, ct) = used_dek(&f);
    let (other, other_ct) = used_dek(&f);
    f.h.revoke(KeyKind::Dek, &dek).unwrap();
    let inactive = |e: &AgentError| matches!(e, AgentError::KeyInactive { .. });
    refused(f.h.encrypt(&dek, b"x"), "encrypt", inactive);
    refused(f.h.decrypt(&ct, None), "decrypt", inactive);
    refused(f.h.dek_export(&dek), "dek.export", inactive);
    // The other DEK still works, then its KEK is revoked (the KEK's record was copied too).
    f.h.encrypt(&other, b"x").unwrap();
    let kek = f.h.kek_list().unwrap()[0].id.to_string();
    f.h.revoke(KeyKind::Kek, &kek).unwrap();
    refused(f.h.encrypt(&other, b"x"), "encrypt", inactive);
    refused(f.h.decrypt(&other_ct, None), "decrypt", inactive);
    refused(f.h.dek_export(&other), "dek.export", inactive);
}

#[test]
fn record_copies_kek_rotation_and_lock_apply_to_the_next_request() {
    let f = ready();
    let (dek, ct) = used_dek(&f);
    let kek = f.h.kek_list().unwrap()[0].id.to_string();
    f.h.kek_rotate(&kek).unwrap();
    // The DEK's record now holds its wrap under the new KEK: the copy made before would not
    // open under it.
    assert_eq!(&*f.h.decrypt(&ct, None).unwrap(), b"hello");
    let again = f.h.encrypt(&dek, b"after").unwrap();
    assert_eq!(&*f.h.decrypt(&again, None).unwrap(), b"after");
    f.h.lock().unwrap();
    assert_eq!(f.h.key_cache.records_len(), 0);
    let locked = |e: &AgentError| matches!(e, AgentError::Locked { .. });
    refused(f.h.encrypt(&dek, b"x"), "encrypt", locked);
    refused(f.h.decrypt(&ct, None), "decrypt", locked);
    refused(f.h.dek_export(&dek), "dek.export", locked);
    f.h.unlock(&Pin::new(PIN)).unwrap();
    f.h.encrypt(&dek, b"x").unwrap();
}

#[test]
fn record_copies_a_deleted_keypair_is_gone_for_the_next_signature() {
    let f = ready();
    let id = offered_keypair(&f);
    signs_everywhere(&f, &id);
    f.h.keypair_delete(&id).unwrap();
    let missing = |e: &AgentError| matches!(e, AgentError::NotFound(_));
    refused(f.h.sign_digest(&id, &[7; 32]), "sign.digest", missing);
    refused(f.h.sign(&id, b"m", true), "sign", missing);
}

#[test]
fn record_copies_a_kind_mismatch_is_not_found() {
    let f = ready();
    let (dek, _) = used_dek(&f);
    // The DEK's record is copied; asked for as a keypair it is still `not_found`.
    let missing = |e: &AgentError| matches!(e, AgentError::NotFound(_));
    refused(f.h.sign_digest(&dek, &[7; 32]), "sign.digest", missing);
    let kek = f.h.kek_list().unwrap()[0].id.to_string();
    refused(f.h.encrypt(&kek, b"x"), "encrypt with a KEK id", missing);
}
