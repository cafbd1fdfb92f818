//! One conformance suite that every `Kek` implementation runs: the soft root's, the in-memory
//! test root's, the PKCS#11 AES and EC roots' (on real SoftHSM tokens) and the YubiKey root's (on
//! the virtual PIV card; that test has `yubikey` in its name, so test.sh runs it with the card
//! tests, one at a time, after `./vcard-setup.sh start`).
//!
//! Each case opens two KEKs under one root and checks: DEK generation and AES-GCM seal/open
//! round trips (and against a software AES-GCM), that a changed AAD, IV, tag or ciphertext fails
//! with `DecryptFailed`, `wrap_secret`/`export_dek` round trips, that one KEK refuses another's
//! DEK, and the scheme names. Nothing is skipped: missing SoftHSM or card stack fails the test.

mod common;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keyward_agent::root::{self, Kek, MemoryRoot, Root, RootError, Scheme, StoredRoot};
use keyward_proto::secret::Pin;

/// The schemes a root records: its own, and its KEKs'.
struct Expect {
    root: Scheme,
    kek: Scheme,
}

fn open_two(r: &dyn Root, pin: &str, want: &Expect) -> (Box<dyn Kek>, Box<dyn Kek>) {
    let made = r.init(&Pin::new(pin)).expect("init");
    assert_eq!(made.scheme, want.root, "root scheme");
    assert_eq!(Scheme::parse(made.scheme.as_str()), Ok(want.root));
    // Lock and unlock with the record, as the hierarchy does after a restart.
    let stored = StoredRoot {
        locator: Some(made.locator),
        check: made.check,
    };
    r.lock().expect("lock");
    assert!(!r.is_unlocked());
    r.unlock(&Pin::new(pin), &stored).expect("unlock");
    let a = r.generate_kek().expect("KEK a");
    let b = r.generate_kek().expect("KEK b");
    for w in [&a, &b] {
        assert_eq!(w.scheme, want.kek, "KEK scheme");
        assert_eq!(w.scheme.as_str().parse::<Scheme>(), Ok(want.kek));
    }
    assert_ne!(a.bytes, b.bytes);
    (
        r.open_kek(&a.bytes).expect("open KEK a"),
        r.open_kek(&b.bytes).expect("open KEK b"),
    )
}

fn is_decrypt_failed<T: std::fmt::Debug>(r: Result<T, RootError>, what: &str) {
    match r {
        Err(RootError::DecryptFailed { .. }) => {}
        other => panic!("{what}: want DecryptFailed, got {other:?}"),
    }
}

/// What every KEK must do.
fn conformance(name: &str, a: &dyn Kek, b: &dyn Kek) {
    let iv = [0x11u8; 12];
    let aad = b"keyward:dek:conformance";
    let pt = b"the quick brown fox jumps over the lazy dog";

    // DEKs: AES-KWP under the KEK, 40 bytes for 32-byte keys (RFC 5649).
    let dek = a.generate_dek().expect("generate DEK");
    assert_eq!(dek.scheme, Scheme::AesKwp, "{name}: DEK scheme");
    assert_eq!(dek.scheme.as_str(), "aes-kwp");
    assert_eq!(dek.bytes.len(), 40, "{name}: wrapped DEK length");
    let dek2 = a.generate_dek().expect("second DEK");
    assert_ne!(dek.bytes, dek2.bytes);

    // Seal and open.
    let sealed = a.seal(&dek.bytes, &iv, aad, pt).expect("seal");
    assert_eq!(
        sealed.len(),
        pt.len() + 16,
        "{name}: ciphertext ‖ 16-byte tag"
    );
    assert_eq!(&*a.open(&dek.bytes, &iv, aad, &sealed).expect("open"), pt);
    assert_eq!(
        &*a.open(
            &dek.bytes,
            &iv,
            aad,
            &a.seal(&dek.bytes, &iv, aad, b"").expect("seal empty")
        )
        .expect("open empty"),
        b""
    );

    // Tampering fails authentication, whatever is changed.
    is_decrypt_failed(
        a.open(&dek.bytes, &iv, b"keyward:dek:other", &sealed),
        "wrong aad",
    );
    is_decrypt_failed(a.open(&dek.bytes, &[0x12; 12], aad, &sealed), "wrong iv");
    let mut bad_tag = sealed.clone();
    *bad_tag.last_mut().expect("tag") ^= 1;
    is_decrypt_failed(a.open(&dek.bytes, &iv, aad, &bad_tag), "changed tag");
    let mut bad_ct = sealed.clone();
    bad_ct[0] ^= 1;
    is_decrypt_failed(a.open(&dek.bytes, &iv, aad, &bad_ct), "changed ciphertext");
    is_decrypt_failed(
        a.open(&dek2.bytes, &iv, aad, &sealed),
        "another DEK of the same KEK",
    );

    // wrap_secret / export_dek round trip; the wrapped secret is a DEK like any other, and its
    // GCM is standard AES-256-GCM.
    let secret: [u8; 32] = std::array::from_fn(|i| i as u8 ^ 0xa5);
    let w = a.wrap_secret(&secret).expect("wrap_secret");
    assert_eq!(w.scheme, Scheme::AesKwp, "{name}: wrap_secret scheme");
    assert_eq!(&**a.export_dek(&w.bytes).expect("export"), &secret[..]);
    let sealed = a
        .seal(&w.bytes, &iv, aad, pt)
        .expect("seal under the wrapped secret");
    let soft = Aes256Gcm::new_from_slice(&secret)
        .expect("key")
        .decrypt(Nonce::from_slice(&iv), Payload { msg: &sealed, aad })
        .expect("software AES-GCM opens what the KEK sealed");
    assert_eq!(soft, pt);
    assert_eq!(a.export_dek(&dek.bytes).expect("export DEK").len(), 32);
    assert!(
        matches!(
            a.wrap_secret(&[0u8; 16]),
            Err(RootError::Unsupported { .. })
        ),
        "{name}: only 32-byte secrets are wrapped"
    );

    // Another KEK refuses this KEK's DEKs.
    let refused = |r: Result<(), RootError>, what: &str| match r {
        Err(RootError::Token { .. } | RootError::DecryptFailed { .. }) => {}
        other => panic!("{name}: {what} under another KEK: want a refusal, got {other:?}"),
    };
    refused(b.open(&dek.bytes, &iv, aad, &sealed).map(|_| ()), "open");
    refused(b.seal(&dek.bytes, &iv, aad, pt).map(|_| ()), "seal");
    refused(b.export_dek(&w.bytes).map(|_| ()), "export");
    // ... while its own still work.
    let own = b.generate_dek().expect("b's DEK");
    let s = b.seal(&own.bytes, &iv, aad, pt).expect("b seals");
    assert_eq!(&*b.open(&own.bytes, &iv, aad, &s).expect("b opens"), pt);
}

#[test]
fn memory_kek_conforms() {
    let r = MemoryRoot::new();
    let (a, b) = open_two(
        &r,
        "1234",
        &Expect {
            root: Scheme::Memory,
            kek: Scheme::AesKwp,
        },
    );
    conformance("memory", &*a, &*b);
}

#[test]
fn soft_kek_conforms() {
    let r = root::soft::SoftRoot::new(root::soft::MIN_ITERATIONS).expect("soft root");
    let (a, b) = open_two(
        &r,
        "correct horse battery staple",
        &Expect {
            root: Scheme::Pbkdf2,
            kek: Scheme::Pbkdf2,
        },
    );
    conformance("soft", &*a, &*b);
}

/// The PKCS#11 cases load the one SoftHSM library in this process: a second context initializing
/// (or finalizing, when its root drops) while the first is in use breaks the first (SoftHSM is a
/// process-wide singleton; this crashed the test binary). One at a time.
static ONE_MODULE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn pkcs11_aes_kek_conforms() {
    let _one = ONE_MODULE.lock().unwrap_or_else(|p| p.into_inner());
    let r = root::from_config(&common::pkcs11_aes_config().root).expect("PKCS#11 AES root");
    let (a, b) = open_two(
        &*r,
        common::PIN,
        &Expect {
            root: Scheme::Pkcs11Aes,
            kek: Scheme::AesKwp,
        },
    );
    conformance("pkcs11 aes", &*a, &*b);
}

#[test]
fn pkcs11_ec_kek_conforms() {
    let _one = ONE_MODULE.lock().unwrap_or_else(|p| p.into_inner());
    let r = root::from_config(&common::pkcs11_ec_config().root).expect("PKCS#11 EC root");
    assert!(r.describe().contains("EC P-256"), "{}", r.describe());
    let (a, b) = open_two(
        &*r,
        common::PIN,
        &Expect {
            root: Scheme::Pkcs11EcP256,
            kek: Scheme::EcdhP256,
        },
    );
    conformance("pkcs11 ec", &*a, &*b);
}

/// The card: needs `./vcard-setup.sh start`; run with the other card tests, one at a time.
#[test]
fn yubikey_kek_conforms() {
    common::fresh_card();
    let r = root::from_config(&common::yubikey_config().root).expect("YubiKey root");
    let (a, b) = open_two(
        &*r,
        common::CARD_PIN,
        &Expect {
            root: Scheme::YubiKeyP256,
            kek: Scheme::EcdhP256,
        },
    );
    conformance("yubikey", &*a, &*b);
}
