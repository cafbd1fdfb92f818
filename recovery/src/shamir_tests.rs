//! Tests of the share format: round trips and every refusal.

use super::*;
use rand_core::OsRng;

struct Party {
    key: LocalKey,
}

fn trustees(n: usize) -> Vec<Party> {
    (0..n)
        .map(|_| Party {
            key: LocalKey::generate(&mut OsRng),
        })
        .collect()
}

fn pubs(t: &[Party]) -> Vec<PublicKey> {
    t.iter().map(|p| p.key.public_key()).collect()
}

fn secret() -> RecoverySecret {
    RecoverySecret::generate(&mut OsRng)
}

/// Each trustee opens its share (through CBOR) and releases it (through CBOR) to `req`.
fn release_all(set: &ShareSet, t: &[Party], req: &RequestKey) -> Vec<ReleasedShare> {
    set.shares()
        .iter()
        .zip(t)
        .map(|(s, p)| {
            let s = SealedShare::from_cbor(&s.to_cbor()).unwrap();
            let held = s.open(&p.key).unwrap();
            let held = HeldShare::from_bytes(&held.to_bytes()).unwrap();
            let rel = held.release(&p.key, &req.did_key(), &mut OsRng).unwrap();
            ReleasedShare::from_cbor(&rel.to_cbor()).unwrap()
        })
        .collect()
}

fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    (0u32..(1 << n))
        .filter(|m| m.count_ones() as usize == k)
        .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
        .collect()
}

#[test]
fn two_of_three_every_pair_recovers() {
    let (s, t, req) = (secret(), trustees(3), RequestKey::generate(&mut OsRng));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    assert_eq!(set.shares().len(), 3);
    let expected = RecoveryKey::derive(&s).unwrap().public_key();
    assert_eq!(set.recovery_public_key(), expected);
    assert_eq!(set.tag(), ShareTag::of(&expected));
    let rel = release_all(&set, &t, &req);
    for pick in subsets(3, 2).into_iter().chain([vec![0, 1, 2]]) {
        let chosen: Vec<_> = pick.iter().map(|&i| rel[i].clone()).collect();
        let r = combine(&chosen, &req).unwrap();
        assert_eq!(r.secret, s, "subset {pick:?}");
        assert_eq!(r.key.public_key(), expected);
        r.expect_public_key(&expected).unwrap();
    }
}

#[test]
fn three_of_five_every_triple_recovers_in_any_order() {
    let (s, t, req) = (secret(), trustees(5), RequestKey::generate(&mut OsRng));
    let set = ShareSet::split(&s, &pubs(&t), 3, &mut OsRng).unwrap();
    let rel = release_all(&set, &t, &req);
    for pick in subsets(5, 3) {
        let mut chosen: Vec<_> = pick.iter().map(|&i| rel[i].clone()).collect();
        chosen.reverse();
        assert_eq!(combine(&chosen, &req).unwrap().secret, s, "subset {pick:?}");
    }
    assert_eq!(combine(&rel, &req).unwrap().secret, s);
}

#[test]
fn randomized_split_and_combine() {
    for round in 0..12u8 {
        let mut b = [0u8; 2];
        OsRng.fill_bytes(&mut b);
        let n = 2 + usize::from(b[0] % 6); // 2..=7
        let k = 2 + b[1] % (n as u8 - 1); // 2..=n
        let (s, t, req) = (secret(), trustees(n), RequestKey::generate(&mut OsRng));
        let set = ShareSet::split(&s, &pubs(&t), k, &mut OsRng).unwrap();
        let rel = release_all(&set, &t, &req);
        // A random subset of size >= k recovers; one of size k-1 does not.
        let mut idx: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (OsRng.next_u32() as usize) % (i + 1);
            idx.swap(i, j);
        }
        let take = usize::from(k) + (OsRng.next_u32() as usize) % (n - usize::from(k) + 1);
        let chosen: Vec<_> = idx[..take].iter().map(|&i| rel[i].clone()).collect();
        assert_eq!(
            combine(&chosen, &req).unwrap().secret,
            s,
            "round {round} n={n} k={k}"
        );
        let few: Vec<_> = idx[..usize::from(k) - 1]
            .iter()
            .map(|&i| rel[i].clone())
            .collect();
        assert_eq!(
            combine(&few, &req).unwrap_err(),
            ShareError::NotEnoughShares {
                have: usize::from(k) - 1,
                need: k
            }
        );
    }
}

#[test]
fn hint_and_tag_are_readable_before_opening() {
    let (s, t) = (secret(), trustees(3));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    for (i, share) in set.shares().iter().enumerate() {
        let h = share.hint();
        assert_eq!(usize::from(h.index), i + 1);
        assert_eq!(h.threshold, 2);
        assert_eq!(h.set_id, set.set_id());
        assert_eq!(h.trustee(), t[i].key.public_key().to_did_key());
        assert_eq!(share.tag(), set.tag());
        assert_eq!(share.recipient(), t[i].key.public_key().key_id());
        let held = share.open(&t[i].key).unwrap();
        assert_eq!(held.hint(), h);
        assert_eq!(held.recovery_public_key(), set.recovery_public_key());
    }
}

#[test]
fn split_refuses_bad_thresholds_and_trustee_lists() {
    let s = secret();
    let t = pubs(&trustees(3));
    for (k, n) in [(1u8, 3usize), (0, 3), (4, 3)] {
        assert_eq!(
            ShareSet::split(&s, &t[..n], k, &mut OsRng).unwrap_err(),
            ShareError::BadThreshold { k, n }
        );
    }
    assert_eq!(
        ShareSet::split(&s, &[], 2, &mut OsRng).unwrap_err(),
        ShareError::BadThreshold { k: 2, n: 0 }
    );
    let dup = vec![t[0], t[1], t[0]];
    assert_eq!(
        ShareSet::split(&s, &dup, 2, &mut OsRng).unwrap_err(),
        ShareError::DuplicateTrustee {
            did: t[0].to_did_key()
        }
    );
    let many: Vec<PublicKey> = (0..=MAX_TRUSTEES)
        .map(|_| LocalKey::generate(&mut OsRng).public_key())
        .collect();
    assert_eq!(
        ShareSet::split(&s, &many, 2, &mut OsRng).unwrap_err(),
        ShareError::TooManyTrustees {
            n: MAX_TRUSTEES + 1
        }
    );
}

#[test]
fn a_share_sealed_to_someone_else_is_refused() {
    let (s, t) = (secret(), trustees(3));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let err = set.shares()[0].open(&t[1].key).unwrap_err();
    assert_eq!(
        err,
        ShareError::NotForThisKey {
            expected: t[0].key.public_key().key_id(),
            actual: t[1].key.public_key().key_id(),
        }
    );
    let stranger = LocalKey::generate(&mut OsRng);
    assert!(matches!(
        set.shares()[0].open(&stranger),
        Err(ShareError::NotForThisKey { .. })
    ));
}

fn reencode(env: &Envelope, edit: impl FnOnce(&mut EnvelopeWire)) -> Vec<u8> {
    let mut w = env.to_wire();
    edit(&mut w);
    let mut out = Vec::new();
    ciborium::into_writer(&w, &mut out).unwrap();
    out
}

#[test]
fn tampered_ciphertext_or_clear_field_fails_the_aead() {
    let (s, t) = (secret(), trustees(3));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let env = &set.shares()[0].0;
    let flipped = reencode(env, |w| w.ct[5] ^= 1);
    let share = SealedShare::from_cbor(&flipped).unwrap();
    assert_eq!(
        share.open(&t[0].key).unwrap_err(),
        ShareError::Tampered {
            index: 1,
            what: Tamper::Aead
        }
    );
    // The threshold is in the clear; changing it still parses, but the AAD binds it.
    let k3 = reencode(env, |w| w.k = 3);
    let share = SealedShare::from_cbor(&k3).unwrap();
    assert_eq!(share.hint().threshold, 3);
    assert_eq!(
        share.open(&t[0].key).unwrap_err(),
        ShareError::Tampered {
            index: 1,
            what: Tamper::Aead
        }
    );
    let set_changed = reencode(env, |w| w.set[0] ^= 0xff);
    assert_eq!(
        SealedShare::from_cbor(&set_changed)
            .unwrap()
            .open(&t[0].key)
            .unwrap_err(),
        ShareError::Tampered {
            index: 1,
            what: Tamper::Aead
        }
    );
}

#[test]
fn a_share_sealed_by_another_key_than_the_recovery_key_fails() {
    // An attacker seals their own share to trustee 1, claiming the real recovery key.
    let (s, t) = (secret(), trustees(3));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let mut env = set.shares()[0].0.clone();
    let attacker = LocalKey::generate(&mut OsRng);
    let plain = Plain {
        cose: vec![0xa0],
        y: vec![0; 32],
    };
    env = env
        .seal(&attacker, &t[0].key.public_key(), &plain, &mut OsRng)
        .unwrap();
    assert_eq!(
        SealedShare(env).open(&t[0].key).unwrap_err(),
        ShareError::Tampered {
            index: 1,
            what: Tamper::Aead
        }
    );
}

/// Releases `held` after `edit`ing its signed statement or value: the trustee's
/// HPKE is valid, so the owner's check of the recovery signature is what fails.
fn release_edited(
    held: &HeldShare,
    trustee: &LocalKey,
    req: &RequestKey,
    edit: impl FnOnce(&mut HeldShare),
) -> ReleasedShare {
    let mut h = held.clone();
    edit(&mut h);
    let released = h.release(trustee, &req.did_key(), &mut OsRng).unwrap();
    // What the owner receives is bytes.
    ReleasedShare::from_cbor(&released.to_cbor()).unwrap()
}

#[test]
fn tampered_signature_and_value_are_typed_on_combine() {
    let (s, t, req) = (secret(), trustees(3), RequestKey::generate(&mut OsRng));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let h0 = set.shares()[0].open(&t[0].key).unwrap();
    let h1 = set.shares()[1].open(&t[1].key).unwrap();
    let good1 = h1.release(&t[1].key, &req.did_key(), &mut OsRng).unwrap();

    // The statement signed by another key.
    let forged = release_edited(&h0, &t[0].key, &req, |h| {
        let other = LocalKey::generate(&mut OsRng);
        let msg = cose::parse(&h.cose).unwrap();
        let payload = msg.payload.clone().unwrap();
        h.cose = cose::sign_es256(&other, b"x", payload).unwrap();
    });
    assert_eq!(
        combine(&[forged, good1.clone()], &req).unwrap_err(),
        ShareError::Tampered {
            index: 1,
            what: Tamper::Signature
        }
    );
    // A flipped bit in the signature bytes.
    let flipped_sig = release_edited(&h0, &t[0].key, &req, |h| {
        let n = h.cose.len();
        h.cose[n - 1] ^= 1;
    });
    assert_eq!(
        combine(&[flipped_sig, good1.clone()], &req).unwrap_err(),
        ShareError::Tampered {
            index: 1,
            what: Tamper::Signature
        }
    );
    // The share value changed: the signed hash no longer matches.
    let bad_y = release_edited(&h0, &t[0].key, &req, |h| h.y[0] ^= 1);
    assert_eq!(
        combine(&[bad_y, good1.clone()], &req).unwrap_err(),
        ShareError::Tampered {
            index: 1,
            what: Tamper::Mismatch
        }
    );
    // Share 1's signed statement presented as share 2 of the same set.
    let relabelled = release_edited(&h0, &t[0].key, &req, |h| {
        h.hint.index = 2;
        h.trustee_keys[1] = t[0].key.public_key(); // pass the trustee's local check
    });
    // Released by trustee 1 under index 2: the owner expects trustee 2 as the HPKE sender.
    assert_eq!(
        combine(&[relabelled, good1.clone()], &req).unwrap_err(),
        ShareError::DuplicateShare { index: 2 }
    );
    let relabelled = release_edited(&h0, &t[0].key, &req, |h| {
        h.hint.index = 3;
        h.trustee_keys[2] = t[0].key.public_key();
    });
    assert_eq!(
        combine(&[relabelled, good1.clone()], &req).unwrap_err(),
        ShareError::Tampered {
            index: 3,
            what: Tamper::Aead
        }
    );
    // Even when the trustee named by the index re-labels it (valid HPKE), the
    // signed statement names index 1.
    let h2 = set.shares()[2].open(&t[2].key).unwrap();
    let relabelled = release_edited(&h0, &t[2].key, &req, |h| {
        h.hint.index = 3;
        h.trustee_keys = h2.trustee_keys.clone();
    });
    assert_eq!(
        combine(&[relabelled, good1.clone()], &req).unwrap_err(),
        ShareError::Tampered {
            index: 3,
            what: Tamper::Mismatch
        }
    );
}

#[test]
fn tampered_released_ciphertext_fails_the_aead() {
    let (s, t, req) = (secret(), trustees(3), RequestKey::generate(&mut OsRng));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let rel = release_all(&set, &t, &req);
    let bytes = reencode(&rel[0].0, |w| {
        let n = w.ct.len();
        w.ct[n - 1] ^= 0x80
    });
    let bad = ReleasedShare::from_cbor(&bytes).unwrap();
    assert_eq!(
        combine(&[bad, rel[1].clone()], &req).unwrap_err(),
        ShareError::Tampered {
            index: 1,
            what: Tamper::Aead
        }
    );
    // Released by a trustee other than the one the index names: the HPKE sender differs.
    let h0 = set.shares()[0].open(&t[0].key).unwrap();
    let mut h = h0.clone();
    h.trustee_keys[0] = t[2].key.public_key(); // let trustee 3 pass the local check
    let wrong_sender = h.release(&t[2].key, &req.did_key(), &mut OsRng).unwrap();
    // What the owner receives is bytes: the trustee keys come from the DIDs again.
    let wrong_sender = ReleasedShare::from_cbor(&wrong_sender.to_cbor()).unwrap();
    assert_eq!(
        combine(&[wrong_sender, rel[1].clone()], &req).unwrap_err(),
        ShareError::Tampered {
            index: 1,
            what: Tamper::Aead
        }
    );
}

#[test]
fn release_refuses_another_trustee_and_a_bad_did() {
    let (s, t, req) = (secret(), trustees(3), RequestKey::generate(&mut OsRng));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let held = set.shares()[0].open(&t[0].key).unwrap();
    assert_eq!(
        held.release(&t[1].key, &req.did_key(), &mut OsRng)
            .unwrap_err(),
        ShareError::NotTheTrustee {
            index: 1,
            trustee: t[0].key.public_key().to_did_key()
        }
    );
    assert!(matches!(
        held.release(&t[0].key, "did:web:example.com", &mut OsRng),
        Err(ShareError::BadDid { .. })
    ));
    let long = format!("did:key:z{}", "a".repeat(500));
    assert!(matches!(
        held.release(&t[0].key, &long, &mut OsRng),
        Err(ShareError::BadDid { did }) if did.len() == MAX_DID_LEN
    ));
}

#[test]
fn combine_refuses_no_shares_too_few_and_duplicates() {
    let (s, t, req) = (secret(), trustees(5), RequestKey::generate(&mut OsRng));
    let set = ShareSet::split(&s, &pubs(&t), 3, &mut OsRng).unwrap();
    let rel = release_all(&set, &t, &req);
    assert_eq!(combine(&[], &req).unwrap_err(), ShareError::NoShares);
    assert_eq!(
        combine(&rel[..2], &req).unwrap_err(),
        ShareError::NotEnoughShares { have: 2, need: 3 }
    );
    let dup = [rel[0].clone(), rel[1].clone(), rel[0].clone()];
    assert_eq!(
        combine(&dup, &req).unwrap_err(),
        ShareError::DuplicateShare { index: 1 }
    );
}

#[test]
fn combine_refuses_shares_released_to_another_request_key() {
    let (s, t) = (secret(), trustees(3));
    let (req, other) = (
        RequestKey::generate(&mut OsRng),
        RequestKey::generate(&mut OsRng),
    );
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let rel = release_all(&set, &t, &req);
    let rel_other = release_all(&set, &t, &other);
    assert_eq!(
        combine(&[rel[0].clone(), rel_other[1].clone()], &req).unwrap_err(),
        ShareError::NotForThisKey {
            expected: other.public_key().key_id(),
            actual: req.public_key().key_id()
        }
    );
}

#[test]
fn shares_of_different_secrets_are_a_tag_mismatch() {
    let (t, req) = (trustees(3), RequestKey::generate(&mut OsRng));
    let a = ShareSet::split(&secret(), &pubs(&t), 2, &mut OsRng).unwrap();
    let b = ShareSet::split(&secret(), &pubs(&t), 2, &mut OsRng).unwrap();
    let (ra, rb) = (release_all(&a, &t, &req), release_all(&b, &t, &req));
    assert_eq!(
        combine(&[ra[0].clone(), rb[1].clone()], &req).unwrap_err(),
        ShareError::TagMismatch {
            expected: a.tag(),
            found: b.tag()
        }
    );
}

#[test]
fn shares_of_two_splits_of_one_secret_are_refused() {
    // E.g. old and new trustees during a two-phase trustee change.
    let (s, t, req) = (secret(), trustees(3), RequestKey::generate(&mut OsRng));
    let a = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let b = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    assert_eq!(a.tag(), b.tag());
    assert_ne!(a.set_id(), b.set_id());
    let (ra, rb) = (release_all(&a, &t, &req), release_all(&b, &t, &req));
    assert_eq!(
        combine(&[ra[0].clone(), rb[1].clone()], &req).unwrap_err(),
        ShareError::DifferentShareSets { index: 2 }
    );
}

#[test]
fn inconsistent_but_validly_signed_shares_fail_the_key_check() {
    // Only the recovery key's holder can sign shares; if it ever signed two
    // polynomials under one set id, the interpolated secret would be wrong and
    // must not be returned.
    let (s, t, req) = (secret(), trustees(3), RequestKey::generate(&mut OsRng));
    let key = RecoveryKey::derive(&s).unwrap();
    let a = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let b = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    // Take b's share 2 value and re-issue it under a's set id.
    let hb = b.shares()[1].open(&t[1].key).unwrap();
    let hint = Hint {
        set_id: a.set_id(),
        ..hb.hint().clone()
    };
    let forged = SealedShare(seal_to_trustee(&key, hint, &pubs(&t), &hb.y, &mut OsRng).unwrap());
    let rel_b2 = forged
        .open(&t[1].key)
        .unwrap()
        .release(&t[1].key, &req.did_key(), &mut OsRng)
        .unwrap();
    let ra = release_all(&a, &t, &req);
    assert_eq!(
        combine(&[ra[0].clone(), rel_b2], &req).unwrap_err(),
        ShareError::CombinedKeyMismatch
    );
}

#[test]
fn expect_public_key_refuses_another_recovery_root() {
    let (s, t, req) = (secret(), trustees(3), RequestKey::generate(&mut OsRng));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let r = combine(&release_all(&set, &t, &req)[..2], &req).unwrap();
    let other = LocalKey::generate(&mut OsRng).public_key();
    assert_eq!(
        r.expect_public_key(&other).unwrap_err(),
        ShareError::WrongRecoveryRoot {
            expected: other.to_did_key(),
            found: set.recovery_public_key().to_did_key()
        }
    );
}

#[test]
fn parser_refuses_malformed_envelopes_with_typed_errors() {
    let (s, t) = (secret(), trustees(3));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let env = &set.shares()[0].0;
    let good = env.to_cbor();
    assert!(SealedShare::from_cbor(&good).is_ok());
    assert_eq!(
        ReleasedShare::from_cbor(&good).unwrap_err(),
        ShareError::WrongKind {
            expected: "released",
            found: 1
        }
    );
    assert_eq!(
        SealedShare::from_cbor(&vec![0u8; MAX_SHARE_LEN + 1]).unwrap_err(),
        ShareError::TooLarge {
            len: MAX_SHARE_LEN + 1
        }
    );
    assert!(matches!(
        SealedShare::from_cbor(b"not cbor"),
        Err(ShareError::Malformed(_))
    ));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        SealedShare::from_cbor(&trailing),
        Err(ShareError::Malformed(_))
    ));
    type Edit = Box<dyn Fn(&mut EnvelopeWire)>;
    let cases: Vec<(Edit, ShareError)> = vec![
        (Box::new(|w| w.v = 9), ShareError::UnsupportedVersion(9)),
        (
            Box::new(|w| w.aead = 3),
            ShareError::UnsupportedSuite {
                kem: 0x10,
                kdf: 1,
                aead: 3,
            },
        ),
        (
            Box::new(|w| w.tag[0] ^= 1),
            ShareError::Malformed("tag is not the recovery key's tag"),
        ),
        (
            Box::new(|w| w.recovery = vec![4; 33]),
            ShareError::Malformed("bad recovery key"),
        ),
        (
            Box::new(|w| w.set.pop().map(drop).unwrap_or(())),
            ShareError::Malformed("set id is not 16 bytes"),
        ),
        (
            Box::new(|w| w.index = 0),
            ShareError::Malformed("share index out of range"),
        ),
        (
            Box::new(|w| w.index = 4),
            ShareError::Malformed("share index out of range"),
        ),
        (
            Box::new(|w| w.index = 2),
            ShareError::Malformed("share is not sealed to the trustee its index names"),
        ),
        (
            Box::new(|w| w.k = 1),
            ShareError::BadThreshold { k: 1, n: 3 },
        ),
        (
            Box::new(|w| w.k = 4),
            ShareError::BadThreshold { k: 4, n: 3 },
        ),
        (
            Box::new(|w| w.trustees[2] = "did:key:zNotAKey".into()),
            ShareError::BadDid {
                did: "did:key:zNotAKey".into(),
            },
        ),
        (
            Box::new(|w| w.trustees[2] = w.trustees[1].clone()),
            ShareError::DuplicateTrustee {
                did: env.hint.trustees[1].clone(),
            },
        ),
        (
            Box::new(|w| w.recipient.truncate(31)),
            ShareError::Malformed("bad recipient id"),
        ),
        (
            Box::new(|w| w.enc.truncate(33)),
            ShareError::Malformed("enc has the wrong length"),
        ),
        (
            Box::new(|w| w.ct.truncate(15)),
            ShareError::Malformed("ciphertext too short"),
        ),
    ];
    for (i, (edit, want)) in cases.into_iter().enumerate() {
        let bytes = reencode(env, edit);
        assert_eq!(
            SealedShare::from_cbor(&bytes).unwrap_err(),
            want,
            "case {i}"
        );
    }
}

#[test]
fn random_mutations_never_panic_and_never_open() {
    let (s, t) = (secret(), trustees(3));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let good = set.shares()[0].to_cbor();
    let original = set.shares()[0].open(&t[0].key).unwrap();
    let held = original.to_bytes();
    let mut accepted = 0;
    for _ in 0..400 {
        for (base, is_held) in [(&good, false), (&*held, true)] {
            let mut m = base.to_vec();
            let flips = 1 + OsRng.next_u32() % 4;
            for _ in 0..flips {
                let i = OsRng.next_u32() as usize % m.len();
                m[i] ^= 1 << (OsRng.next_u32() % 8);
            }
            if OsRng.next_u32() % 4 == 0 {
                m.truncate(OsRng.next_u32() as usize % m.len());
            }
            if m == *base {
                continue;
            }
            // A mutation either is refused or (when it only changes an encoding
            // detail, e.g. a CBOR byte string re-typed as a text string) yields
            // exactly the original share: never another value.
            let opened = if is_held {
                HeldShare::from_bytes(&m)
            } else {
                SealedShare::from_cbor(&m).and_then(|s| s.open(&t[0].key))
            };
            if let Ok(h) = opened {
                assert_eq!(*h.y, *original.y);
                assert_eq!(h.hint(), original.hint());
                assert_eq!(h.tag(), original.tag());
                accepted += 1;
            }
        }
    }
    // Such encoding-only mutations are rare (single bits of a few type bytes).
    assert!(accepted < 40, "{accepted} of 800 mutations accepted");
}

#[test]
fn held_share_storage_round_trips_and_detects_tampering() {
    let (s, t, req) = (secret(), trustees(3), RequestKey::generate(&mut OsRng));
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let held = set.shares()[2].open(&t[2].key).unwrap();
    let back = HeldShare::from_bytes(&held.to_bytes()).unwrap();
    assert_eq!(back.hint(), held.hint());
    assert_eq!(back.tag(), set.tag());
    // Debug never shows the value.
    let d = format!("{back:?}");
    assert!(!d.contains(&hex::encode(*held.y)));
    assert!(!d.contains(&format!("{:?}", &held.y[..4])));
    // A changed value is caught against the signed hash.
    let mut w: HeldWire = keyward_identity::cbor::from_slice(&held.to_bytes()).unwrap();
    w.y[3] ^= 1;
    assert_eq!(
        HeldShare::from_bytes(&cbor_to_vec(&w, 4096)).unwrap_err(),
        ShareError::Tampered {
            index: 3,
            what: Tamper::Mismatch
        }
    );
    let mut w: HeldWire = keyward_identity::cbor::from_slice(&held.to_bytes()).unwrap();
    w.recovery = LocalKey::generate(&mut OsRng)
        .public_key()
        .to_sec1_compressed()
        .to_vec();
    assert_eq!(
        HeldShare::from_bytes(&cbor_to_vec(&w, 4096)).unwrap_err(),
        ShareError::Tampered {
            index: 0,
            what: Tamper::Signature
        }
    );
    assert_eq!(
        HeldShare::from_bytes(&vec![0; MAX_SHARE_LEN + 1]).unwrap_err(),
        ShareError::TooLarge {
            len: MAX_SHARE_LEN + 1
        }
    );
    // And the round-tripped share still releases and combines.
    let other = set.shares()[0].open(&t[0].key).unwrap();
    let r = combine(
        &[
            back.release(&t[2].key, &req.did_key(), &mut OsRng).unwrap(),
            other
                .release(&t[0].key, &req.did_key(), &mut OsRng)
                .unwrap(),
        ],
        &req,
    )
    .unwrap();
    assert_eq!(r.secret, s);
}

#[test]
fn the_largest_split_fits_the_limits_and_buffers_never_grow() {
    let (s, t, req) = (
        secret(),
        trustees(MAX_TRUSTEES),
        RequestKey::generate(&mut OsRng),
    );
    let set = ShareSet::split(&s, &pubs(&t), 2, &mut OsRng).unwrap();
    let last = set.shares().last().unwrap();
    let bytes = last.to_cbor();
    assert!(bytes.len() < MAX_SHARE_LEN, "{} bytes", bytes.len());
    let held = SealedShare::from_cbor(&bytes)
        .unwrap()
        .open(&t[MAX_TRUSTEES - 1].key)
        .unwrap();
    // The zeroizing buffers holding a share value are sized up front: no
    // reallocation leaves an unzeroized copy behind.
    let stored = held.to_bytes();
    assert_eq!(stored.capacity(), held.cose.len() + 256);
    let plain = Plain {
        cose: held.cose.clone(),
        y: held.y.to_vec(),
    };
    let pt = cbor_to_vec(&plain, plain.cose.len() + 128);
    assert_eq!(pt.capacity(), plain.cose.len() + 128);
    let rel = held
        .release(&t[MAX_TRUSTEES - 1].key, &req.did_key(), &mut OsRng)
        .unwrap();
    assert!(rel.to_cbor().len() < MAX_SHARE_LEN);
    let first = set.shares()[0].open(&t[0].key).unwrap();
    let rel0 = first
        .release(&t[0].key, &req.did_key(), &mut OsRng)
        .unwrap();
    assert_eq!(combine(&[rel0, rel], &req).unwrap().secret, s);
}

#[test]
fn k_minus_one_share_values_do_not_determine_the_secret() {
    // Bypassing combine's count check: interpolating K-1 of the values gives
    // something else than the secret (the polynomial really has degree K-1).
    let (s, t) = (secret(), trustees(5));
    let set = ShareSet::split(&s, &pubs(&t), 3, &mut OsRng).unwrap();
    let points: Vec<blahaj::Share> = (0..2)
        .map(|i| {
            let held = set.shares()[i].open(&t[i].key).unwrap();
            let mut b = vec![held.hint().index];
            b.extend_from_slice(held.y.as_ref());
            blahaj::Share::try_from(b.as_slice()).unwrap()
        })
        .collect();
    let guess = blahaj::Sharks(2).recover(points.iter()).unwrap();
    assert_ne!(guess.as_slice(), s.as_bytes());
    // While any 3 do.
    let three: Vec<blahaj::Share> = (2..5)
        .map(|i| {
            let held = set.shares()[i].open(&t[i].key).unwrap();
            let mut b = vec![held.hint().index];
            b.extend_from_slice(held.y.as_ref());
            blahaj::Share::try_from(b.as_slice()).unwrap()
        })
        .collect();
    assert_eq!(
        blahaj::Sharks(3).recover(three.iter()).unwrap().as_slice(),
        s.as_bytes()
    );
}
