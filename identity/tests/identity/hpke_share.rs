use ciborium::Value;
use keyward_identity::hpke::{self, HpkeError};
use keyward_identity::rand_core::OsRng;
use keyward_identity::{Dek, LocalKey, PublicKey, SealedShare, ShareError};
use uuid::Uuid;

use crate::util::{hexv, key, vector, FixedRng};

#[test]
fn rfc9180_auth_p256_sha256_aes256gcm_vector() {
    let v = vector("hpke-auth-p256-sha256-aes256gcm.json");
    assert_eq!(
        (
            v["mode"].as_u64(),
            v["kem_id"].as_u64(),
            v["kdf_id"].as_u64(),
            v["aead_id"].as_u64()
        ),
        (Some(2), Some(16), Some(1), Some(2))
    );
    let sk_r = LocalKey::from_bytes(&hexv(&v["skRm"]).try_into().unwrap()).unwrap();
    let sk_s = LocalKey::from_bytes(&hexv(&v["skSm"]).try_into().unwrap()).unwrap();
    assert_eq!(
        sk_r.public_key().to_sec1_uncompressed().to_vec(),
        hexv(&v["pkRm"])
    );
    assert_eq!(
        sk_s.public_key().to_sec1_uncompressed().to_vec(),
        hexv(&v["pkSm"])
    );
    let info = hexv(&v["info"]);
    let e0 = &v["encryptions"][0];
    let (aad, pt, ct) = (hexv(&e0["aad"]), hexv(&e0["pt"]), hexv(&e0["ct"]));

    // Seal with the vector's ephemeral IKM: DeriveKeyPair(ikmE) must give the
    // vector's enc, and the key schedule its ciphertext.
    let mut rng = FixedRng(hexv(&v["ikmE"]));
    let sealed = hpke::seal_auth(&sk_r.public_key(), &sk_s, &info, &aad, &pt, &mut rng).unwrap();
    assert_eq!(sealed.enc, hexv(&v["enc"]));
    assert_eq!(sealed.ciphertext, ct);

    // Open the vector's own ciphertext.
    let opened = hpke::open_auth(
        &sk_r,
        &sk_s.public_key(),
        &hexv(&v["enc"]),
        &info,
        &aad,
        &ct,
    )
    .unwrap();
    assert_eq!(opened.as_slice(), pt.as_slice());

    // Auth mode: a different claimed sender fails the AEAD.
    assert_eq!(
        hpke::open_auth(
            &sk_r,
            &key(9).public_key(),
            &hexv(&v["enc"]),
            &info,
            &aad,
            &ct
        )
        .unwrap_err(),
        HpkeError::Open
    );
    assert_eq!(
        hpke::open_auth(&sk_r, &sk_s.public_key(), &[4u8; 65], &info, &aad, &ct).unwrap_err(),
        HpkeError::BadEncappedKey
    );
}

struct Parties {
    alice: LocalKey,
    bob: LocalKey,
    dek: Dek,
    id: Uuid,
}

fn parties() -> Parties {
    Parties {
        alice: key(20),
        bob: key(21),
        dek: Dek::generate(&mut OsRng),
        id: Uuid::new_v4(),
    }
}

#[test]
fn share_round_trip_cbor_and_base64url() {
    let p = parties();
    let share = SealedShare::seal(
        &p.alice,
        &p.bob.public_key(),
        &p.dek,
        p.id,
        "vault:prod",
        &mut OsRng,
    )
    .unwrap();
    assert_eq!(share.sender(), &p.alice.public_key());
    assert_eq!(share.recipient(), &p.bob.public_key().key_id());
    let text = share.to_base64url();
    assert!(!text.contains('=') && !text.contains('+') && !text.contains('/'));
    let back = SealedShare::from_base64url(&text).unwrap();
    assert_eq!(back, share);
    assert_eq!(SealedShare::from_cbor(&share.to_cbor()).unwrap(), share);
    let opened = back.open(&p.bob, Some(&p.alice.public_key())).unwrap();
    assert_eq!(opened.dek, p.dek);
    assert_eq!(opened.dek_id, p.id);
    assert_eq!(opened.purpose, "vault:prod");
    assert_eq!(opened.sender, p.alice.public_key());
    // Without an expected sender it opens too, and reports the authenticated sender.
    assert_eq!(
        back.open(&p.bob, None).unwrap().sender,
        p.alice.public_key()
    );
}

#[test]
fn share_is_self_describing_cbor() {
    let p = parties();
    let share =
        SealedShare::seal(&p.alice, &p.bob.public_key(), &p.dek, p.id, "x", &mut OsRng).unwrap();
    let v: Value = ciborium::from_reader(share.to_cbor().as_slice()).unwrap();
    let keys: Vec<String> = v
        .as_map()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_text().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "v",
            "kem",
            "kdf",
            "aead",
            "sender",
            "recipient",
            "dek_id",
            "purpose",
            "enc",
            "ct"
        ]
    );
    let get = |name: &str| {
        v.as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_text() == Some(name))
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(get("kem"), Value::Integer(0x10.into()));
    assert_eq!(get("kdf"), Value::Integer(1.into()));
    assert_eq!(get("aead"), Value::Integer(2.into()));
    assert_eq!(get("dek_id"), Value::Text(p.id.to_string()));
}

#[test]
fn share_sealed_to_someone_else_is_refused() {
    let p = parties();
    let carol = key(22);
    let share =
        SealedShare::seal(&p.alice, &p.bob.public_key(), &p.dek, p.id, "x", &mut OsRng).unwrap();
    match share.open(&carol, None).unwrap_err() {
        ShareError::NotForThisRecipient { expected, actual } => {
            assert_eq!(expected, p.bob.public_key().key_id());
            assert_eq!(actual, carol.public_key().key_id());
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(matches!(
        share.open(&p.bob, Some(&carol.public_key())).unwrap_err(),
        ShareError::UnexpectedSender { .. }
    ));
}

/// Re-encodes the share with one CBOR field replaced.
fn with_field(share: &SealedShare, name: &str, value: Value) -> Vec<u8> {
    let mut v: Value = ciborium::from_reader(share.to_cbor().as_slice()).unwrap();
    let map = v.as_map_mut().unwrap();
    let slot = map
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(name))
        .unwrap();
    slot.1 = value;
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out).unwrap();
    out
}

#[test]
fn tampered_shares_fail_authentication() {
    let p = parties();
    let mallory = key(23);
    let share =
        SealedShare::seal(&p.alice, &p.bob.public_key(), &p.dek, p.id, "x", &mut OsRng).unwrap();

    // Claimed sender swapped for mallory: auth-mode KEM mismatch.
    let forged = with_field(
        &share,
        "sender",
        Value::Bytes(mallory.public_key().to_sec1_compressed().to_vec()),
    );
    let forged = SealedShare::from_cbor(&forged).unwrap();
    assert_eq!(
        forged.open(&p.bob, None).unwrap_err(),
        ShareError::DecryptFailed
    );

    // DEK id and purpose are bound through info/aad.
    let other_id = with_field(&share, "dek_id", Value::Text(Uuid::new_v4().to_string()));
    assert_eq!(
        SealedShare::from_cbor(&other_id)
            .unwrap()
            .open(&p.bob, None)
            .unwrap_err(),
        ShareError::DecryptFailed
    );
    let other_purpose = with_field(&share, "purpose", Value::Text("y".into()));
    assert_eq!(
        SealedShare::from_cbor(&other_purpose)
            .unwrap()
            .open(&p.bob, None)
            .unwrap_err(),
        ShareError::DecryptFailed
    );

    // Flipped ciphertext bit.
    let mut ct: Vec<u8> = Vec::new();
    let v: Value = ciborium::from_reader(share.to_cbor().as_slice()).unwrap();
    for (k, val) in v.as_map().unwrap() {
        if k.as_text() == Some("ct") {
            ct = val.as_bytes().unwrap().clone();
        }
    }
    ct[0] ^= 1;
    let bad_ct = with_field(&share, "ct", Value::Bytes(ct));
    assert_eq!(
        SealedShare::from_cbor(&bad_ct)
            .unwrap()
            .open(&p.bob, None)
            .unwrap_err(),
        ShareError::DecryptFailed
    );

    // Recipient fingerprint rewritten to carol's: carol gets past the
    // fingerprint check but cannot decrypt.
    let carol = key(24);
    let re = with_field(
        &share,
        "recipient",
        Value::Bytes(carol.public_key().key_id().0.to_vec()),
    );
    assert_eq!(
        SealedShare::from_cbor(&re)
            .unwrap()
            .open(&carol, None)
            .unwrap_err(),
        ShareError::DecryptFailed
    );
}

#[test]
fn malformed_or_unsupported_shares() {
    let p = parties();
    let share =
        SealedShare::seal(&p.alice, &p.bob.public_key(), &p.dek, p.id, "x", &mut OsRng).unwrap();
    assert_eq!(
        SealedShare::from_cbor(&with_field(&share, "aead", Value::Integer(1.into()))).unwrap_err(),
        ShareError::UnsupportedSuite {
            kem: 0x10,
            kdf: 1,
            aead: 1
        }
    );
    assert_eq!(
        SealedShare::from_cbor(&with_field(&share, "v", Value::Integer(2.into()))).unwrap_err(),
        ShareError::UnsupportedVersion(2)
    );
    assert!(matches!(
        SealedShare::from_cbor(&with_field(&share, "dek_id", Value::Text("nope".into())))
            .unwrap_err(),
        ShareError::Malformed(_)
    ));
    assert!(matches!(
        SealedShare::from_base64url("!!!").unwrap_err(),
        ShareError::Malformed(_)
    ));
    assert!(matches!(
        SealedShare::from_cbor(&[0xa0]).unwrap_err(),
        ShareError::Malformed(_)
    ));
    let mut trailing = share.to_cbor();
    trailing.push(0);
    assert!(matches!(
        SealedShare::from_cbor(&trailing).unwrap_err(),
        ShareError::Malformed(_)
    ));
    let long = "p".repeat(300);
    assert_eq!(
        SealedShare::seal(
            &p.alice,
            &p.bob.public_key(),
            &p.dek,
            p.id,
            &long,
            &mut OsRng
        )
        .unwrap_err(),
        ShareError::PurposeTooLong
    );
    let _: PublicKey = *share.sender();
}
