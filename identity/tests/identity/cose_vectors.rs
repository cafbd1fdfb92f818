use keyward_identity::cose::{self, Sign1Error};
use keyward_identity::format::Jwk;
use keyward_identity::PublicKey;

use crate::util::{hexv, key, vector};

#[test]
fn rfc9052_and_cose_wg_es256_examples_verify() {
    let v = vector("cose-es256.json");
    let jwk: Jwk = serde_json::from_value(v["key"].clone()).unwrap();
    let pk = PublicKey::from_jwk(&jwk).unwrap();
    let other = key(1).public_key();
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let bytes = hexv(&case["cbor"]);
        let msg = cose::parse(&bytes).unwrap();
        assert_eq!(
            msg.payload.as_deref(),
            Some(v["payload"].as_str().unwrap().as_bytes()),
            "{name}"
        );
        cose::verify_es256(&msg, &pk, b"").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            matches!(
                cose::verify_es256(&msg, &other, b"").unwrap_err(),
                Sign1Error::BadSignature
            ),
            "{name}"
        );
        assert!(
            matches!(
                cose::verify_es256(&msg, &pk, b"aad").unwrap_err(),
                Sign1Error::BadSignature
            ),
            "{name}"
        );
        let strict = cose::verify_es256_protected(&msg, &pk, b"");
        if case["alg_protected"].as_bool().unwrap() {
            assert_eq!(strict.unwrap(), b"This is the content.", "{name}");
        } else {
            assert!(
                matches!(strict.unwrap_err(), Sign1Error::WrongAlgorithm),
                "{name}"
            );
        }
        // Tampered signature byte.
        let mut t = bytes.clone();
        let n = t.len();
        t[n - 1] ^= 1;
        let msg = cose::parse(&t).unwrap();
        assert!(
            matches!(
                cose::verify_es256(&msg, &pk, b"").unwrap_err(),
                Sign1Error::BadSignature
            ),
            "{name}"
        );
    }
}

#[test]
fn our_sign1_round_trips_and_is_tagged() {
    let k = key(2);
    let bytes = cose::sign_es256(&k, b"kid", b"payload".to_vec()).unwrap();
    assert_eq!(bytes[0], 0xd2, "tag 18");
    let msg = cose::parse(&bytes).unwrap();
    assert_eq!(msg.protected.header.key_id, b"kid");
    assert_eq!(
        cose::verify_es256_protected(&msg, &k.public_key(), b"").unwrap(),
        b"payload"
    );
    assert!(matches!(
        cose::parse(b"\x01").unwrap_err(),
        Sign1Error::Malformed(_)
    ));
}
