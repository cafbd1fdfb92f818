//! Public key text formats in `keyward_identity`: SPKI PEM, JWK and did:key for P-256
//! (`PublicKey::parse` and the per-format parsers), Ed25519 (`Ed25519Public::parse`), and SPKI
//! DER (`PublicKey::from_spki_der`, on the raw bytes).
//!
//! Invariants checked (a violation is a crash):
//! - a parsed key written in each format (did:key, JWK, SPKI PEM, SPKI DER) parses back to the
//!   same key, through both the format's own parser and `parse`;
//! - a did:key that parses is canonical: writing the key gives back the input exactly;
//! - a JWK that parses has canonical coordinates: the key's JWK carries the same `x` and `y`;
//! - `parse` agrees with the parser of the format it recognised;
//! - a JWK with `d` (private key material) is never accepted.
#![no_main]

use keyward_identity::ed25519::Ed25519Public;
use keyward_identity::PublicKey;
use libfuzzer_sys::fuzz_target;

fn round_trips(k: &PublicKey) {
    let did = k.to_did_key();
    assert_eq!(PublicKey::from_did_key(&did).as_ref(), Ok(k));
    assert_eq!(PublicKey::parse(&did).as_ref(), Ok(k));
    let jwk = k.to_jwk_string();
    assert_eq!(PublicKey::from_jwk_str(&jwk).as_ref(), Ok(k));
    assert_eq!(PublicKey::from_jwk(&k.to_jwk()).as_ref(), Ok(k));
    assert_eq!(PublicKey::parse(&jwk).as_ref(), Ok(k));
    let pem = k.to_spki_pem().expect("a parsed key has a PEM");
    assert_eq!(PublicKey::from_spki_pem(&pem).as_ref(), Ok(k));
    assert_eq!(PublicKey::parse(&pem).as_ref(), Ok(k));
    let der = k.to_spki_der().expect("a parsed key has a DER");
    assert_eq!(PublicKey::from_spki_der(&der).as_ref(), Ok(k));
    assert_eq!(
        PublicKey::from_sec1_bytes(&k.to_sec1_compressed()).as_ref(),
        Ok(k)
    );
    assert_eq!(
        PublicKey::from_sec1_bytes(&k.to_sec1_uncompressed()).as_ref(),
        Ok(k)
    );
}

fn ed25519_round_trips(k: &Ed25519Public) {
    let same = |r: Result<Ed25519Public, _>| r.map(|x| x.to_bytes()).ok() == Some(k.to_bytes());
    assert!(same(Ed25519Public::parse(&k.to_did_key())));
    assert!(same(Ed25519Public::parse(&k.to_jwk_string())));
    assert!(same(Ed25519Public::parse(
        &k.to_spki_pem().expect("a parsed key has a PEM")
    )));
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes: SPKI DER and SEC1 points.
    if let Ok(k) = PublicKey::from_spki_der(data) {
        round_trips(&k);
    }
    if let Ok(k) = PublicKey::from_sec1_bytes(data) {
        round_trips(&k);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let t = text.trim();
    if let Ok(k) = PublicKey::parse(text) {
        round_trips(&k);
        if t.starts_with("did:") {
            assert_eq!(k.to_did_key(), t, "did:key parsing is canonical");
            assert_eq!(PublicKey::from_did_key(t).as_ref(), Ok(&k));
        } else if t.starts_with("-----BEGIN") {
            assert_eq!(PublicKey::from_spki_pem(t).as_ref(), Ok(&k));
        } else if t.starts_with('{') {
            assert_eq!(PublicKey::from_jwk_str(t).as_ref(), Ok(&k));
            let v: serde_json::Value = serde_json::from_str(t).expect("accepted JWK is JSON");
            // `"d": null` carries no key material; any other `d` must be refused.
            assert!(
                v.get("d").is_none_or(|d| d.is_null()),
                "a JWK with `d` was accepted"
            );
            let jwk = k.to_jwk();
            assert_eq!(v["x"].as_str(), Some(jwk.x.as_str()), "JWK x is canonical");
            assert_eq!(v["y"].as_str(), Some(jwk.y.as_str()), "JWK y is canonical");
        } else {
            panic!("parse accepted a text of no known format");
        }
    }
    // The per-format parsers directly (they skip `parse`'s sniffing).
    if let Ok(k) = PublicKey::from_did_key(text) {
        assert_eq!(k.to_did_key(), text, "did:key parsing is canonical");
    }
    if let Ok(k) = PublicKey::from_jwk_str(text) {
        round_trips(&k);
    }
    if let Ok(k) = PublicKey::from_spki_pem(text) {
        round_trips(&k);
    }
    if let Ok(k) = Ed25519Public::parse(text) {
        ed25519_round_trips(&k);
    }
});
