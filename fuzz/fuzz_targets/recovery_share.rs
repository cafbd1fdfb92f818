//! Parsing the recovery crate's formats (`recovery/src/shamir.rs`, `request.rs`, `words.rs`),
//! then opening and combining what parses.
//!
//! The input is tried as a trustee share (`SealedShare::from_cbor`), a released share
//! (`ReleasedShare::from_cbor`), a trustee's stored share (`HeldShare::from_bytes`), a request
//! key file (`RequestKey::from_bytes`) and, when it is UTF-8, a recovery phrase (`from_words`).
//! Trustee shares are opened with a fixed trustee key and released shares combined with a fixed
//! request key (the seeds are addressed to them, so mutations reach HPKE, the COSE signature and
//! the statement checks).
//!
//! Invariants checked (a violation is a crash):
//! - a parsed share re-encodes and parses back to an equal value;
//! - an opened share carries exactly the tag and hint its envelope named, and its stored form
//!   parses back to the same tag and hint;
//! - combining one released share never succeeds (every seed split has K >= 2);
//! - a phrase that parses is re-encoded by `to_words` into a phrase with the same secret.
#![no_main]

use keyward_identity::LocalKey;
use keyward_recovery::{
    combine, from_words, to_words, HeldShare, ReleasedShare, RequestKey, SealedShare,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The trustee the trustee-share seeds are sealed to (`make_seeds` uses the same scalar).
fn trustee() -> &'static LocalKey {
    static K: OnceLock<LocalKey> = OnceLock::new();
    K.get_or_init(|| LocalKey::from_bytes(&[0x33; 32]).expect("valid scalar"))
}

/// The owner's request key the released-share seeds are sealed to.
fn request() -> &'static RequestKey {
    static K: OnceLock<RequestKey> = OnceLock::new();
    K.get_or_init(|| {
        RequestKey::from_local_key(LocalKey::from_bytes(&[0x44; 32]).expect("valid scalar"))
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = SealedShare::from_cbor(data) {
        assert_eq!(SealedShare::from_cbor(&s.to_cbor()).ok(), Some(s.clone()));
        if let Ok(held) = s.open(trustee()) {
            assert_eq!(held.tag(), s.tag());
            assert_eq!(held.hint(), s.hint());
            let back = HeldShare::from_bytes(&held.to_bytes()).expect("stored form parses");
            assert_eq!(back.hint(), held.hint());
            assert_eq!(back.tag(), held.tag());
        }
    }
    if let Ok(r) = ReleasedShare::from_cbor(data) {
        assert_eq!(ReleasedShare::from_cbor(&r.to_cbor()).ok(), Some(r.clone()));
        assert!(combine(&[r], request()).is_err());
    }
    if let Ok(h) = HeldShare::from_bytes(data) {
        let back = HeldShare::from_bytes(&h.to_bytes()).expect("stored form parses");
        assert_eq!(back.hint(), h.hint());
    }
    if let Ok(k) = RequestKey::from_bytes(data) {
        let back = RequestKey::from_bytes(&k.to_bytes()).expect("request key round trip");
        assert_eq!(back.public_key(), k.public_key());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(secret) = from_words(text) {
            let again = from_words(&to_words(&secret)).expect("our words parse");
            assert_eq!(again, secret);
        }
    }
});
