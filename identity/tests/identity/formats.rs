use keyward_identity::format::Jwk;
use keyward_identity::{FormatError, PublicKey};

use crate::util::{key, vector};

#[test]
fn did_key_spec_vectors_match_their_jwks() {
    let v = vector("did-key-p256.json");
    for case in v["p256"].as_array().unwrap() {
        let did = case["did"].as_str().unwrap();
        let jwk: Jwk = serde_json::from_value(case["publicKeyJwk"].clone()).unwrap();
        let from_did = PublicKey::from_did_key(did).unwrap();
        let from_jwk = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(from_did, from_jwk, "{did}");
        assert_eq!(from_jwk.to_did_key(), did);
        assert_eq!(from_did.to_jwk(), jwk);
        let jwk_text = serde_json::to_string(&case["publicKeyJwk"]).unwrap();
        assert_eq!(PublicKey::from_jwk_str(&jwk_text).unwrap(), from_did);
        assert_eq!(PublicKey::parse(did).unwrap(), from_did);
        assert_eq!(PublicKey::parse(&jwk_text).unwrap(), from_did);
    }
}

#[test]
fn round_trips_pem_jwk_did() {
    for seed in 1..6u8 {
        let pk = key(seed).public_key();
        let pem = pk.to_spki_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(PublicKey::from_spki_pem(&pem).unwrap(), pk);
        assert_eq!(PublicKey::parse(&format!("\n{pem}\n")).unwrap(), pk);
        assert_eq!(
            PublicKey::from_spki_der(&pk.to_spki_der().unwrap()).unwrap(),
            pk
        );
        assert_eq!(PublicKey::from_jwk_str(&pk.to_jwk_string()).unwrap(), pk);
        assert_eq!(PublicKey::from_jwk(&pk.to_jwk()).unwrap(), pk);
        let did = pk.to_did_key();
        assert!(did.starts_with("did:key:zDn"), "{did}");
        assert_eq!(PublicKey::from_did_key(&did).unwrap(), pk);
        assert_eq!(format!("{pk}"), did);
    }
}

fn did_from_body(body: &[u8]) -> String {
    format!("did:key:z{}", bs58::encode(body).into_string())
}

#[test]
fn malformed_did_key_gives_typed_errors() {
    let good = key(1).public_key().to_did_key();
    let body = &good["did:key:z".len()..];
    use FormatError::*;
    let cases: Vec<(String, FormatError)> = vec![
        (format!("did:web:z{body}"), DidKeyPrefix),
        (format!("did:key{body}"), DidKeyPrefix),
        (format!("DID:KEY:z{body}"), DidKeyPrefix),
        (format!("did:key:{body}"), DidKeyMultibase),
        (format!("did:key:f{body}"), DidKeyMultibase),
        ("did:key:z0OIl".to_string(), DidKeyBase58),
        (format!("did:key:z{body}#frag"), DidKeyBase58),
        ("did:key:z".to_string(), DidKeyMulticodec(vec![])),
        (
            vector("did-key-p256.json")["p384_did"]
                .as_str()
                .unwrap()
                .to_string(),
            DidKeyMulticodec(vec![0x81, 0x24]),
        ),
        // ed25519-pub multicodec
        (
            did_from_body(&[0xed, 0x01, 1, 2, 3]),
            DidKeyMulticodec(vec![0xed, 0x01]),
        ),
        (did_from_body(&[0x80, 0x24]), DidKeyPoint),
        (did_from_body(&[0x80, 0x24, 0x02, 1, 2, 3]), DidKeyPoint),
    ];
    for (did, want) in cases {
        assert_eq!(PublicKey::from_did_key(&did).unwrap_err(), want, "{did}");
    }
    // Uncompressed point inside a did:key is refused (spec mandates compressed).
    let mut unc = vec![0x80, 0x24];
    unc.extend_from_slice(&key(1).public_key().to_sec1_uncompressed());
    assert_eq!(
        PublicKey::from_did_key(&did_from_body(&unc)).unwrap_err(),
        DidKeyPoint
    );
    // An x coordinate with no point on the curve.
    let off_curve = (0u8..=255)
        .map(|x| {
            let mut p = vec![0x80, 0x24, 0x02];
            p.extend_from_slice(&[x; 32]);
            p
        })
        .find(|p| PublicKey::from_sec1_bytes(&p[2..]).is_err())
        .unwrap();
    assert_eq!(
        PublicKey::from_did_key(&did_from_body(&off_curve)).unwrap_err(),
        DidKeyPoint
    );
}

#[test]
fn malformed_jwk_gives_typed_errors() {
    let pk = key(2).public_key();
    let j = pk.to_jwk();
    let mk = |kty: &str, crv: &str, x: &str, y: &str| {
        format!(r#"{{"kty":"{kty}","crv":"{crv}","x":"{x}","y":"{y}"}}"#)
    };
    use FormatError::*;
    assert_eq!(
        PublicKey::from_jwk_str(&mk("OKP", "P-256", &j.x, &j.y)).unwrap_err(),
        JwkKeyType("OKP".into())
    );
    assert_eq!(
        PublicKey::from_jwk_str(&mk("EC", "P-384", &j.x, &j.y)).unwrap_err(),
        JwkCurve("P-384".into())
    );
    assert_eq!(
        PublicKey::from_jwk_str(&mk("EC", "P-256", &format!("{}=", j.x), &j.y)).unwrap_err(),
        JwkCoordinate("x")
    );
    assert_eq!(
        PublicKey::from_jwk_str(&mk("EC", "P-256", &j.x, "AAAA")).unwrap_err(),
        JwkCoordinate("y")
    );
    // y of a different key: not on the curve with this x.
    let other = key(3).public_key().to_jwk();
    assert_eq!(
        PublicKey::from_jwk_str(&mk("EC", "P-256", &j.x, &other.y)).unwrap_err(),
        InvalidPoint
    );
    let with_d = format!(
        r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}","d":"AAAA"}}"#,
        j.x, j.y
    );
    assert_eq!(
        PublicKey::from_jwk_str(&with_d).unwrap_err(),
        JwkHasPrivateKey
    );
    assert!(matches!(
        PublicKey::from_jwk_str("{").unwrap_err(),
        JwkJson(_)
    ));
    // Extra members such as kid/alg are fine.
    let extra = format!(
        r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}","kid":"k","alg":"ES256"}}"#,
        j.x, j.y
    );
    assert_eq!(PublicKey::from_jwk_str(&extra).unwrap(), pk);
    assert_eq!(
        PublicKey::parse("ssh-ed25519 AAAA").unwrap_err(),
        Unrecognized
    );
    assert!(matches!(
        PublicKey::from_spki_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .unwrap_err(),
        Spki(_)
    ));
}
