//! Runs every entry of Cryppo's compat.json (tests/vectors/cryppo): every entry decrypts or
//! verifies, and every current-format entry re-serializes byte for byte.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use keyward_envelope::{aes256gcm, pbkdf2, rsa, sign, ArtefactFormat, Serialized};
use serde_json::Value;

const VECTORS: &str = include_str!("vectors/cryppo/compat.json");
const SHA256: &str = "1417d0834e56c07aff92eba9297d4ac04703e07c462098e843952b732336ee92";

fn vectors() -> Value {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, VECTORS.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex, SHA256,
        "compat.json differs from the pinned upstream file"
    );
    serde_json::from_str(VECTORS).expect("compat.json parses")
}

fn field<'a>(e: &'a Value, k: &str) -> &'a str {
    e[k].as_str()
        .unwrap_or_else(|| panic!("entry lacks {k}: {e}"))
}

/// parse -> serialize must give the input back, and the format must match the entry's.
fn check_round_trip(serialized: &str, format: &str) {
    let parsed = Serialized::parse(serialized).unwrap_or_else(|e| panic!("{e}: {serialized}"));
    if format == "latest_version" {
        assert_eq!(parsed.to_string(), serialized, "re-serialization differs");
        if let Serialized::Encrypted(d) = &parsed {
            assert_eq!(d.artefacts().format(), ArtefactFormat::Bson);
        }
    } else {
        assert_eq!(format, "legacy");
        let Serialized::Encrypted(d) = &parsed else {
            panic!("legacy entry is not encrypted data")
        };
        assert_eq!(d.artefacts().format(), ArtefactFormat::LegacyYaml);
        // Legacy input is upgraded to BSON; the upgraded string must parse to the same values.
        let upgraded = Serialized::parse(&parsed.to_string()).expect("upgraded parses");
        let Serialized::Encrypted(u) = upgraded else {
            panic!("upgraded kind")
        };
        assert_eq!(u.ciphertext(), d.ciphertext());
        assert_eq!(u.artefacts().document(), d.artefacts().document());
    }
}

#[test]
fn encryption_with_key() {
    let v = vectors();
    let entries = v["encryption_with_key"].as_array().expect("array");
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in entries {
        let strategy = field(e, "encryption_strategy");
        let format = field(e, "format");
        let serialized = field(e, "serialized");
        let expected = field(e, "expected_decryption_result");
        check_round_trip(serialized, format);
        let plaintext = match strategy {
            "Aes256Gcm" => {
                let key: [u8; 32] = URL_SAFE
                    .decode(field(e, "key"))
                    .expect("key b64")
                    .try_into()
                    .expect("32-byte key");
                aes256gcm::decrypt_with_key(serialized, &key)
            }
            "Rsa4096" => rsa::decrypt(field(e, "key"), serialized),
            other => panic!("unexpected strategy {other}"),
        }
        .unwrap_or_else(|err| panic!("{strategy} {format}: {err}"));
        assert_eq!(&plaintext[..], expected.as_bytes(), "{strategy} {format}");
        *counts.entry((strategy.into(), format.into())).or_default() += 1;
    }
    assert_eq!(entries.len(), 126);
    let expect = |s: &str, f: &str| counts.get(&(s.to_owned(), f.to_owned())).copied();
    assert_eq!(expect("Aes256Gcm", "latest_version"), Some(32));
    assert_eq!(expect("Aes256Gcm", "legacy"), Some(32));
    assert_eq!(expect("Rsa4096", "latest_version"), Some(31));
    assert_eq!(expect("Rsa4096", "legacy"), Some(31));
    assert_eq!(counts.values().sum::<usize>(), 126);
}

#[test]
fn encryption_with_derived_key() {
    let v = vectors();
    let entries = v["encryption_with_derived_key"].as_array().expect("array");
    let (mut latest, mut legacy) = (0, 0);
    for e in entries {
        assert_eq!(field(e, "encryption_strategy"), "Aes256Gcm");
        assert_eq!(field(e, "derivation_strategy"), "Pbkdf2Hmac");
        let format = field(e, "format");
        let serialized = field(e, "serialized");
        check_round_trip(serialized, format);
        let plaintext = pbkdf2::decrypt_with_passphrase(serialized, field(e, "passphrase"))
            .unwrap_or_else(|err| panic!("{format}: {err}"));
        assert_eq!(
            &plaintext[..],
            field(e, "expected_decryption_result").as_bytes()
        );

        // The 2-part derivation string round-trips too.
        let d = Serialized::parse(serialized)
            .and_then(Serialized::into_encrypted)
            .expect("parses");
        let derivation = d
            .derivation()
            .expect("5-part data has derivation artefacts");
        let two_part = derivation.to_string();
        assert!(two_part.starts_with("Pbkdf2Hmac."));
        if format == "latest_version" {
            assert!(serialized.ends_with(&two_part));
        }
        match Serialized::parse(&two_part).expect("2-part parses") {
            Serialized::DerivedKey(k) => {
                assert_eq!(k.salt(), derivation.salt());
                assert_eq!(k.iterations(), derivation.iterations());
            }
            other => panic!("2-part parsed as {}", other.kind()),
        }
        match format {
            "latest_version" => latest += 1,
            "legacy" => legacy += 1,
            other => panic!("format {other}"),
        }
    }
    assert_eq!((latest, legacy), (32, 32));
    assert_eq!(entries.len(), 64);
}

#[test]
fn signatures() {
    let v = vectors();
    let entries = v["signatures"].as_array().expect("array");
    let mut verified = 0;
    for e in entries {
        let serialized = field(e, "serialized_signature");
        check_round_trip(serialized, "latest_version");
        let data = sign::verify(field(e, "public_pem"), serialized)
            .unwrap_or_else(|err| panic!("signature: {err}"));
        let Serialized::Signature(s) = Serialized::parse(serialized).expect("parses") else {
            panic!("not a signature")
        };
        assert_eq!(data, s.data);
        assert_eq!(s.signature.len(), 512, "RSA-4096 signature");
        verified += 1;
    }
    assert_eq!(verified, 32);
    assert_eq!(entries.len(), 32);
}
