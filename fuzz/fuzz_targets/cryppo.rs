//! The Cryppo parser (`keyward_envelope::Serialized::parse`): the dot-separated layouts, URL-safe
//! base64, the BSON artefacts codec and the legacy YAML artefacts reader.
//!
//! The input is the Cryppo string (non-UTF-8 inputs are skipped: the API takes `&str`).
//!
//! Invariants checked (a violation is a crash):
//! - a parsed string serializes (`to_string`) and parses back to an equal value, except that
//!   legacy YAML artefacts come back as BSON with the same fields in the same order;
//! - with BSON artefacts throughout, serializing gives back the input byte for byte (the base64
//!   is canonical and field order and subtypes are kept);
//! - `to_cryppo_string` and `to_string` agree; `Aes256Gcm` data always has a 12-byte IV and a
//!   16-byte tag; derivation artefacts always have a salt, iterations > 0 and length 32.
#![no_main]

use keyward_envelope::{ArtefactFormat, EncryptionStrategy, Serialized};
use libfuzzer_sys::fuzz_target;

/// Whether every artefacts document in `s` was read from BSON.
fn all_bson(s: &Serialized) -> bool {
    match s {
        Serialized::Encrypted(d) => {
            d.artefacts().format() == ArtefactFormat::Bson
                && d.derivation()
                    .is_none_or(|k| k.format() == ArtefactFormat::Bson)
        }
        Serialized::DerivedKey(k) => k.format() == ArtefactFormat::Bson,
        Serialized::Signature(_) => true,
        _ => true,
    }
}

/// Equal up to the artefact format (legacy YAML re-serializes as BSON).
fn same_content(a: &Serialized, b: &Serialized) {
    match (a, b) {
        (Serialized::Encrypted(x), Serialized::Encrypted(y)) => {
            assert_eq!(x.strategy(), y.strategy());
            assert_eq!(x.ciphertext(), y.ciphertext());
            assert_eq!(x.artefacts().document(), y.artefacts().document());
            match (x.derivation(), y.derivation()) {
                (None, None) => {}
                (Some(k), Some(l)) => {
                    assert_eq!(k.strategy(), l.strategy());
                    assert_eq!(k.document(), l.document());
                }
                _ => panic!("derivation artefacts appeared or vanished"),
            }
        }
        (Serialized::DerivedKey(k), Serialized::DerivedKey(l)) => {
            assert_eq!(k.strategy(), l.strategy());
            assert_eq!(k.document(), l.document());
        }
        (Serialized::Signature(x), Serialized::Signature(y)) => assert_eq!(x, y),
        _ => panic!(
            "the kind changed in a round trip: {} vs {}",
            a.kind(),
            b.kind()
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = Serialized::parse(text) else {
        return;
    };
    let out = parsed.to_string();
    let back = Serialized::parse(&out)
        .unwrap_or_else(|e| panic!("re-serialized string does not parse: {e}\n{out}"));
    if all_bson(&parsed) {
        assert_eq!(back, parsed, "round trip");
        assert_eq!(out, text, "BSON input re-serializes byte for byte");
    } else {
        same_content(&parsed, &back);
        assert!(all_bson(&back), "legacy YAML is never written");
    }
    assert_eq!(back.to_string(), out, "serialization is a fixed point");

    match &parsed {
        Serialized::Encrypted(d) => {
            assert_eq!(d.to_cryppo_string(), out);
            if d.strategy() == EncryptionStrategy::Aes256Gcm {
                let gcm = d.gcm().expect("parsed Aes256Gcm data has valid GCM parts");
                assert_eq!(gcm.ciphertext, d.ciphertext());
                assert_eq!(d.ad(), Some(gcm.ad));
            }
            if let Some(k) = d.derivation() {
                assert!(!k.salt().is_empty() && k.iterations() > 0 && k.key_length() == 32);
            }
            let _ = parsed.clone().into_encrypted().expect("encrypted data");
        }
        Serialized::DerivedKey(k) => {
            assert!(!k.salt().is_empty() && k.iterations() > 0 && k.key_length() == 32);
            assert_eq!(k.to_string(), out);
        }
        _ => {}
    }
});
