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

/// The PKCS#11 cases share the process's one SoftHSM module (root/pkcs11/module.rs: loaded and
/// initialized once, never finalized when a root drops). Before that registry a second context
/// finalizing under the first crashed this binary; the cases still run one at a time so that a
/// failing one, whose unlock may re-initialize the module, cannot disturb another.
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

/// A root in the export/import matrix: a root this process runs (`Root`), or a public-only
/// `ecdh-p256` root that imports and is opened by whoever has its private key (`opener`).
enum Target<'a> {
    Root(&'a dyn Root),
    /// A public root built from the PKCS#11 EC root's record, opened by that root.
    PublicOfToken(root::PublicRoot, &'a dyn Root),
    /// A public root whose private key is a software scalar (as the recovery root's), opened in
    /// software.
    PublicOfScalar(root::PublicRoot, p256::SecretKey),
}

/// Export a KEK from `a`, import it to `b`, open it under `b`; a DEK made and used under `a`
/// opens under `b`, and a seal under `b` opens under `a`.
fn export_import(name: &str, a: &dyn Root, b: &Target) {
    let iv = [0x22u8; 12];
    let aad = b"keyward:dek:pairs";
    let pt = b"one KEK, two roots";
    let wrapped = a.generate_kek().expect("KEK under A");
    let exported = a.export_kek(&wrapped.bytes).expect("export from A");
    assert_eq!(exported.expose().len(), 32, "{name}");
    assert!(!format!("{exported:?}").contains(&format!("{:?}", exported.expose())));
    let again = a.export_kek(&wrapped.bytes).expect("export again");
    assert_eq!(
        exported.expose(),
        again.expose(),
        "{name}: export is deterministic"
    );
    let kek_a = a.open_kek(&wrapped.bytes).expect("open under A");
    let dek = kek_a.generate_dek().expect("DEK under A");
    let sealed = kek_a.seal(&dek.bytes, &iv, aad, pt).expect("seal under A");
    match b {
        Target::Root(b) => {
            let imported = b.import_kek(exported.expose()).expect("import to B");
            let own = b.generate_kek().expect("a KEK B made itself");
            assert_eq!(imported.scheme, own.scheme, "{name}: B's own KEK scheme");
            let kek_b = b.open_kek(&imported.bytes).expect("open under B");
            assert_eq!(
                &*kek_b
                    .open(&dek.bytes, &iv, aad, &sealed)
                    .expect("B opens A's seal"),
                pt,
                "{name}"
            );
            let back = kek_b.seal(&dek.bytes, &iv, aad, pt).expect("seal under B");
            assert_eq!(
                &*kek_a
                    .open(&dek.bytes, &iv, aad, &back)
                    .expect("A opens B's seal"),
                pt
            );
            assert_eq!(
                b.export_kek(&imported.bytes)
                    .expect("export from B")
                    .expose(),
                exported.expose(),
                "{name}: B holds the same KEK"
            );
        }
        Target::PublicOfToken(public, opener) => {
            let imported = public
                .import_kek(exported.expose())
                .expect("import to public");
            assert_eq!(imported.scheme, Scheme::EcdhP256);
            let kek_b = opener
                .open_kek(&imported.bytes)
                .expect("open under the token");
            assert_eq!(
                &*kek_b.open(&dek.bytes, &iv, aad, &sealed).expect("open"),
                pt
            );
        }
        Target::PublicOfScalar(public, secret) => {
            let imported = public
                .import_kek(exported.expose())
                .expect("import to public");
            assert_eq!(imported.scheme, Scheme::EcdhP256);
            let kek = root::ecdh::unwrap(public.public_key(), &imported.bytes, |eph| {
                root::ecdh::software_ecdh(secret, eph)
            })
            .expect("open with the scalar");
            assert_eq!(&kek[..], exported.expose(), "{name}");
            // The DEK is AES-KWP under the KEK, the same bytes on every root.
            let dek_key = aes_kw::KekAes256::from(*kek)
                .unwrap_with_padding_vec(&dek.bytes)
                .expect("the DEK unwraps under the recovered KEK");
            let (ct, tag) = sealed.split_at(sealed.len() - 16);
            let mut ct_tag = ct.to_vec();
            ct_tag.extend_from_slice(tag);
            let opened = Aes256Gcm::new_from_slice(&dek_key)
                .expect("key")
                .decrypt(Nonce::from_slice(&iv), Payload { msg: &ct_tag, aad })
                .expect("software AES-GCM opens A's seal");
            assert_eq!(opened, pt);
        }
    }
    // Tampered wrapped bytes never export.
    let mut bad = wrapped.bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(a.export_kek(&bad).is_err(), "{name}: tampered KEK exported");
}

/// The export/import primitives of ARCHITECTURE.md "Key lifecycle: when a KEK leaves the token",
/// between every pair of root kinds available here: memory, soft, PKCS#11 AES and EC on SoftHSM,
/// and public-only `ecdh-p256` roots (from the EC root's record, and a software key).
#[test]
fn kek_export_import_between_every_pair_of_roots() {
    let _one = ONE_MODULE.lock().unwrap_or_else(|p| p.into_inner());
    let pin = Pin::new(common::PIN);
    let memory = MemoryRoot::new();
    memory.init(&pin).expect("memory init");
    let soft = root::soft::SoftRoot::new(root::soft::MIN_ITERATIONS).expect("soft root");
    soft.init(&pin).expect("soft init");
    let aes = root::from_config(
        &common::pkcs11_config_on("keyward-pair-aes", "object=keyward-root", false).root,
    )
    .expect("PKCS#11 AES root");
    aes.init(&pin).expect("aes init");
    let ec = root::from_config(
        &common::pkcs11_config_on("keyward-pair-ec", "object=keyward-root", true).root,
    )
    .expect("PKCS#11 EC root");
    let ec_record = ec.init(&pin).expect("ec init");

    // Public-only roots: built from a record alone (no login), and from a bare public key.
    let ec_public = root::PublicRoot::from_record(ec_record.scheme, &ec_record.locator)
        .expect("the EC root's record carries its public key");
    let scalar = p256::SecretKey::random(&mut rand_core::OsRng);
    let scalar_public = root::PublicRoot::new(scalar.public_key());
    assert!(matches!(
        root::PublicRoot::from_record(Scheme::Pkcs11Aes, "pkcs11:token=x"),
        Err(RootError::Unsupported { .. })
    ));

    let sources: [(&str, &dyn Root); 4] = [
        ("memory", &memory),
        ("soft", &soft),
        ("pkcs11 aes", &*aes),
        ("pkcs11 ec", &*ec),
    ];
    for (a_name, a) in sources {
        for (b_name, b) in sources {
            export_import(&format!("{a_name} -> {b_name}"), a, &Target::Root(b));
        }
        export_import(
            &format!("{a_name} -> public (ec record)"),
            a,
            &Target::PublicOfToken(ec_public.clone(), &*ec),
        );
        export_import(
            &format!("{a_name} -> public (scalar)"),
            a,
            &Target::PublicOfScalar(scalar_public.clone(), scalar.clone()),
        );
    }

    // Wrong sizes are refused, typed.
    for r in sources.map(|(_, r)| r) {
        assert!(matches!(
            r.import_kek(&[0u8; 16]),
            Err(RootError::Unsupported { .. })
        ));
    }
    // Locked roots neither export nor import (the public key of an EC root is known since init,
    // so it still imports: that needs no login).
    let w = aes.generate_kek().expect("KEK");
    aes.lock().expect("lock");
    assert!(matches!(
        aes.export_kek(&w.bytes),
        Err(RootError::Locked { .. })
    ));
    assert!(matches!(
        aes.import_kek(&[7u8; 32]),
        Err(RootError::Locked { .. })
    ));
    let w = ec.generate_kek().expect("KEK");
    ec.lock().expect("lock");
    assert!(matches!(
        ec.export_kek(&w.bytes),
        Err(RootError::Locked { .. })
    ));
    let imported = ec.import_kek(&[7u8; 32]).expect("EC import needs no login");
    assert_eq!(imported.scheme, Scheme::EcdhP256);
    soft.lock().expect("lock");
    assert!(matches!(
        soft.import_kek(&[7u8; 32]),
        Err(RootError::Locked { .. })
    ));
}
