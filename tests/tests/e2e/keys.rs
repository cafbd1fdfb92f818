//! Key lookups, export, and decryption of tampered or foreign ciphertexts.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use keyward_envelope::{Artefacts, EncryptedData, EncryptionStrategy, Serialized};
use keyward_tests::keyward_proto::ops::DekCreateArgs;
use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::{expect_code, TestEnv};

keyward_tests::keyward_e2e_tests!(
    unknown_ids_are_not_found,
    export_refused_for_non_exportable_and_usable_offline_for_exportable,
    tampered_and_garbage_ciphertexts_fail_to_decrypt,
    more_deks_than_a_kek_keeps_in_the_token_all_encrypt_and_decrypt,
);

/// A PKCS#11 KEK keeps at most 64 unwrapped DEK objects (`root/pkcs11/kek.rs`): with more DEKs
/// in use under one KEK, the least recently used are destroyed and unwrapped again when next
/// used, and every DEK still encrypts and decrypts its own data (and only its own).
fn more_deks_than_a_kek_keeps_in_the_token_all_encrypt_and_decrypt(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"x");
    let c = env.client();
    let mut made = Vec::new();
    for i in 0..80u32 {
        let a = DekCreateArgs {
            kek: Some(keys.kek.clone()),
            ..Default::default()
        };
        let dek = c.run(|c| c.dek_create(&a)).expect("dek.create").id;
        let pt = i.to_be_bytes().to_vec();
        let ct = c.run(|c| c.encrypt(&dek, &pt)).expect("encrypt");
        made.push((dek, pt, ct));
    }
    // Twice over, oldest first: each round evicts what the next needs.
    for _ in 0..2 {
        for (dek, pt, ct) in &made {
            let got = c.run(|c| c.decrypt(ct, None)).expect("decrypt");
            assert_eq!(got.expose(), &pt[..], "{dek}");
            c.run(|c| c.encrypt(dek, pt)).expect("encrypt again");
        }
    }
    // A ciphertext that names one DEK is refused when another is given.
    let (first, _, _) = &made[0];
    let (_, _, other_ct) = &made[1];
    expect_code(
        c.run(|c| c.decrypt(other_ct, Some(first.as_str()))),
        ErrorCode::DecryptFailed,
    );
}

fn unknown_ids_are_not_found(env: &mut TestEnv) {
    let keys = env.init_with_keys(true, b"x");
    let c = env.client();
    let ghost = uuid::Uuid::new_v4().to_string();
    let bad_ids = [
        ghost.as_str(),
        "not-a-uuid",
        "",
        "../../etc/passwd",
        "00000000-0000-0000-0000-000000000000",
        "'; DROP TABLE keys; --",
    ];
    let nf = ErrorCode::NotFound;
    for id in bad_ids {
        expect_code(c.run(|c| c.encrypt(id, b"x")), nf);
        expect_code(c.run(|c| c.dek_export(id)), nf);
        let a = DekCreateArgs {
            kek: Some(id.to_string()),
            ..Default::default()
        };
        expect_code(c.run(|c| c.dek_create(&a)), nf);
        expect_code(c.run(|c| c.dek_list(Some(id.to_string()))), nf);
    }
    // Ids of the wrong kind: a KEK is not a DEK, a DEK is not a KEK.
    expect_code(c.run(|c| c.encrypt(&keys.kek, b"x")), nf);
    expect_code(c.run(|c| c.dek_export(&keys.kek)), nf);
    let a = DekCreateArgs {
        kek: Some(keys.dek.clone()),
        ..Default::default()
    };
    expect_code(c.run(|c| c.dek_create(&a)), nf);
    // A ciphertext naming a DEK this agent does not have.
    let ct = keyward_envelope::aes256gcm::encrypt(
        &[7u8; 32],
        b"foreign",
        &format!("keyward:dek:{ghost}"),
    )
    .unwrap();
    expect_code(c.run(|c| c.decrypt(&ct, None)), nf);
    // The error names the id it could not find (so a client can tell which one).
    let e = expect_code(c.run(|c| c.encrypt(&ghost, b"x")), nf);
    assert!(e.body().unwrap().message.contains(&ghost), "{e}");
    // Nothing was created by all that.
    assert_eq!(c.run(|c| c.kek_list()).unwrap().keys.len(), 1);
    assert_eq!(c.run(|c| c.dek_list(None)).unwrap().keys.len(), 1);
}

fn parse(ct: &str) -> EncryptedData {
    match Serialized::parse(ct).expect("a Cryppo string") {
        Serialized::Encrypted(d) => d,
        other => panic!("not encrypted data: {other:?}"),
    }
}

fn export_refused_for_non_exportable_and_usable_offline_for_exportable(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"stays inside");
    let c = env.client();
    expect_code(c.run(|c| c.dek_export(&keys.dek)), ErrorCode::NotExportable);

    let args = DekCreateArgs {
        exportable: true,
        ..Default::default()
    };
    let xdek = c.run(|c| c.dek_create(&args)).unwrap().id;
    let listed = c.run(|c| c.dek_list(None)).unwrap().keys;
    assert!(listed.iter().find(|k| k.id == xdek).unwrap().exportable);
    assert!(!listed.iter().find(|k| k.id == keys.dek).unwrap().exportable);

    let plaintext = b"decrypt me offline".to_vec();
    let ct = c.run(|c| c.encrypt(&xdek, &plaintext)).unwrap();
    let exported = c.run(|c| c.dek_export(&xdek)).unwrap();
    assert_eq!(exported.id, xdek);
    let key: [u8; 32] = exported.key.expose().try_into().expect("a 32-byte key");
    // Exporting twice gives the same key.
    assert_eq!(
        c.run(|c| c.dek_export(&xdek)).unwrap().key.expose(),
        &key[..]
    );

    // Offline, with an independent AES-GCM: Aes256Gcm.<ct>.<'A'+BSON{iv, at, ad}>.
    let data = parse(&ct);
    assert_eq!(data.strategy(), EncryptionStrategy::Aes256Gcm);
    let g = data.gcm().unwrap();
    assert_eq!(g.ad, format!("keyward:dek:{xdek}"), "the ad names the DEK");
    let mut ct_tag = g.ciphertext.to_vec();
    ct_tag.extend_from_slice(g.tag);
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
    let pt = cipher
        .decrypt(
            aes_gcm::Nonce::from_slice(g.iv),
            Payload {
                msg: &ct_tag,
                aad: g.ad.as_bytes(),
            },
        )
        .expect("offline AES-256-GCM decrypt with the exported key");
    assert_eq!(pt, plaintext);
    // And with the envelope crate's own decrypt.
    let pt2 = keyward_envelope::aes256gcm::decrypt_with_key(&ct, &key).unwrap();
    assert_eq!(&pt2[..], &plaintext[..]);

    // The other way: a Cryppo string made elsewhere with the exported key (its ad does not name
    // the DEK) decrypts in the agent when the DEK is named, and only then.
    let foreign = keyward_envelope::aes256gcm::encrypt(&key, b"made elsewhere", "none").unwrap();
    let back = c.run(|c| c.decrypt(&foreign, Some(&xdek))).unwrap();
    assert_eq!(back.expose(), b"made elsewhere");
    expect_code(
        c.run(|c| c.decrypt(&foreign, None)),
        ErrorCode::DecryptFailed,
    );
    expect_code(
        c.run(|c| c.decrypt(&foreign, Some(&keys.dek))),
        ErrorCode::DecryptFailed,
    );

    // The non-exportable DEK's ciphertext does not open with the exported (other) key.
    assert!(keyward_envelope::aes256gcm::decrypt_with_key(&keys.ciphertext, &key).is_err());
}

fn tampered_and_garbage_ciphertexts_fail_to_decrypt(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"zebra plaintext");
    let c = env.client();
    let data = parse(&keys.ciphertext);
    let g = data.gcm().unwrap();
    let rebuild = |ct: Vec<u8>, iv: [u8; 12], tag: [u8; 16], ad: &str| -> String {
        EncryptedData::new(
            EncryptionStrategy::Aes256Gcm,
            ct,
            Artefacts::aes256gcm(&iv, &tag, ad).unwrap(),
            None,
        )
        .unwrap()
        .to_cryppo_string()
    };
    // Sanity: an untouched rebuild decrypts.
    let same = rebuild(g.ciphertext.to_vec(), *g.iv, *g.tag, g.ad);
    assert_eq!(
        c.run(|c| c.decrypt(&same, None)).unwrap().expose(),
        b"zebra plaintext"
    );

    let mut tampered = Vec::new();
    for i in [0, g.ciphertext.len() / 2, g.ciphertext.len() - 1] {
        let mut ct = g.ciphertext.to_vec();
        ct[i] ^= 0x01;
        tampered.push(("ciphertext bit", rebuild(ct, *g.iv, *g.tag, g.ad)));
    }
    let mut tag = *g.tag;
    tag[15] ^= 0x80;
    tampered.push(("tag", rebuild(g.ciphertext.to_vec(), *g.iv, tag, g.ad)));
    let mut iv = *g.iv;
    iv[0] ^= 0x01;
    tampered.push(("iv", rebuild(g.ciphertext.to_vec(), iv, *g.tag, g.ad)));
    let mut short = g.ciphertext.to_vec();
    short.pop();
    tampered.push(("truncated", rebuild(short, *g.iv, *g.tag, g.ad)));
    tampered.push(("empty", rebuild(Vec::new(), *g.iv, *g.tag, g.ad)));
    let mut long = g.ciphertext.to_vec();
    long.push(0);
    tampered.push(("extended", rebuild(long, *g.iv, *g.tag, g.ad)));
    // Same DEK, ad spelt differently (upper-case UUID): the AAD no longer matches.
    let upper = format!("keyward:dek:{}", keys.dek.to_uppercase());
    tampered.push(("ad", rebuild(g.ciphertext.to_vec(), *g.iv, *g.tag, &upper)));
    for (what, ct) in &tampered {
        let e = expect_code(c.run(|c| c.decrypt(ct, None)), ErrorCode::DecryptFailed);
        assert!(
            !e.body().unwrap().message.contains("zebra"),
            "{what}: plaintext in the error"
        );
    }

    let garbage = [
        "garbage".to_string(),
        String::new(),
        "Aes256Gcm".to_string(),
        "Aes256Gcm..".to_string(),
        "Aes256Gcm.!!!!.????".to_string(),
        "Aes256Gcm.AAAA.QUFBQQ==".to_string(),
        "Rsa4096.AAAA.QQUAAAAA".to_string(),
        keys.ciphertext.replace("Aes256Gcm", "Aes128Gcm"),
        keys.ciphertext[..keys.ciphertext.len() / 2].to_string(),
        "x".repeat(100_000),
        "\u{0}\u{1}\u{2}".to_string(),
    ];
    for ct in &garbage {
        let r = c.run(|c| c.decrypt(ct, None));
        assert_eq!(
            r.as_ref().err().and_then(|e| e.code()),
            Some(ErrorCode::DecryptFailed),
            "garbage {:?}: {:?}",
            &ct[..ct.len().min(40)],
            r.err()
        );
    }
    // The agent is unharmed.
    drop(c);
    env.assert_intact(&keys);
}
