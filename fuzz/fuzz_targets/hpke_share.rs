//! Parsing a sealed share (`SealedShare::from_cbor` / `from_base64url`, `identity/src/share.rs`)
//! and a sealed message (`SealedMessage::from_base64url`), then opening them.
//!
//! The input is tried as the CBOR form and, when it is UTF-8, as the base64url form. Parsed
//! shares and messages are opened with a fixed recipient key (the seeds are addressed to it, so
//! mutations that keep the recipient reach HPKE decapsulation and the AEAD).
//!
//! Invariants checked (a violation is a crash):
//! - a parsed share or message re-encodes (CBOR, base64url) and parses back to an equal value;
//! - parsed shares respect the wire limits (purpose <= 256 bytes);
//! - opening either fails with a typed error or returns exactly the DEK id, purpose and sender
//!   the share names (a 32-byte DEK by construction); a share for another recipient is refused
//!   before any decryption.
#![no_main]

use keyward_identity::share::MAX_PURPOSE_LEN;
use keyward_identity::{LocalKey, MessageError, SealedMessage, SealedShare, ShareError};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The recipient the seeds are sealed to (`make_seeds` uses the same scalar).
fn recipient() -> &'static LocalKey {
    static K: OnceLock<LocalKey> = OnceLock::new();
    K.get_or_init(|| LocalKey::from_bytes(&[0x22; 32]).expect("valid scalar"))
}

fn check_share(s: &SealedShare) {
    assert!(s.purpose().len() <= MAX_PURPOSE_LEN);
    let cbor = s.to_cbor();
    assert_eq!(
        SealedShare::from_cbor(&cbor).as_ref().ok(),
        Some(s),
        "CBOR round trip"
    );
    let text = s.to_base64url();
    assert_eq!(
        SealedShare::from_base64url(&text).as_ref().ok(),
        Some(s),
        "base64url round trip"
    );
    let me = recipient();
    match s.open(me, None) {
        Ok(o) => {
            assert_eq!(*s.recipient(), me.public_key().key_id());
            assert_eq!(o.dek_id, s.dek_id());
            assert_eq!(o.purpose, s.purpose());
            assert_eq!(o.sender, *s.sender());
            // Naming the right sender changes nothing; naming another refuses before opening.
            assert!(s.open(me, Some(s.sender())).is_ok());
            let other = me.public_key();
            if other != *s.sender() {
                assert!(matches!(
                    s.open(me, Some(&other)),
                    Err(ShareError::UnexpectedSender { .. })
                ));
            }
        }
        Err(ShareError::NotForThisRecipient { expected, actual }) => {
            assert_eq!(expected, *s.recipient());
            assert_eq!(actual, me.public_key().key_id());
            assert_ne!(expected, actual);
        }
        Err(ShareError::DecryptFailed) | Err(ShareError::Hpke(_)) => {}
        Err(e) => panic!("unexpected error opening a parsed share: {e}"),
    }
}

fn check_message(m: &SealedMessage) {
    let text = m.to_base64url();
    assert_eq!(
        SealedMessage::from_base64url(&text).as_ref().ok(),
        Some(m),
        "base64url round trip"
    );
    let me = recipient();
    match m.open(me) {
        Ok(_) => assert_eq!(*m.recipient(), me.public_key().key_id()),
        Err(MessageError::NotForThisRecipient { expected, actual }) => {
            assert_eq!(expected, *m.recipient());
            assert_ne!(expected, actual);
        }
        Err(MessageError::DecryptFailed) => {}
        Err(e) => panic!("unexpected error opening a parsed message: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = SealedShare::from_cbor(data) {
        check_share(&s);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = SealedShare::from_base64url(text) {
        check_share(&s);
    }
    if let Ok(m) = SealedMessage::from_base64url(text) {
        check_message(&m);
    }
});
