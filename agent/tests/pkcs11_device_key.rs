//! The device key on a PKCS#11 token (issue #17 item 2, `root::pkcs11::device_key`): on an AES
//! and on an EC root, generated on the token (private key sensitive, never extractable, SIGN and
//! DERIVE, labelled by the device id), its ECDH and its signatures in the token, found again by
//! its locator after a restart; the first device's row records it (the locator, no wrapped
//! scalar) and the token serial, and verifies after a restart.
//!
//! Real SoftHSM (softhsm-setup.sh); nothing is skipped. One test at a time (one module).

mod common;

use keyward_agent::config::UnlockPolicy;
use keyward_agent::hierarchy::Hierarchy;
use keyward_agent::keystore::Keystore;
use keyward_agent::root::{self, ecdh, Root, StoredRoot};
use keyward_proto::secret::Pin;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rand_core::OsRng;
use std::process::Command;
use std::sync::{Arc, Mutex};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// The private-key objects of `token` as `pkcs11-tool --list-objects` prints them.
fn private_objects(token: &str) -> String {
    let module = common::require_softhsm();
    let out = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&module)
        .args(["--token-label", token, "--login", "--pin", common::PIN])
        .args(["--list-objects", "--type", "privkey"])
        .env("SOFTHSM2_CONF", common::tokens().path.join("softhsm2.conf"))
        .output()
        .expect("run pkcs11-tool (opensc)");
    assert!(
        out.status.success(),
        "pkcs11-tool failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `pkcs11-tool` block of the object labelled `label`.
fn object_block(listing: &str, label: &str) -> String {
    listing
        .split("Private Key Object")
        .find(|b| b.contains(label))
        .unwrap_or_else(|| panic!("no private key labelled {label} in:\n{listing}"))
        .to_string()
}

/// The serial recorded in a root locator (`serial=...;`).
fn locator_serial(locator: &str) -> String {
    let start = locator.find("serial=").expect("serial in locator") + "serial=".len();
    locator[start..].split(';').next().unwrap().to_string()
}

fn device_key_on_token(cfg: keyward_agent::config::Config, token: &str) {
    let pin = Pin::new(common::PIN);
    let r = root::from_config(&cfg.root).expect("root");
    let made = r.init(&pin).expect("init");
    let keys = r
        .device_keys()
        .expect("a PKCS#11 root keeps device keys on its token");
    let id = uuid::Uuid::new_v4();
    let key = keys.generate_device_key(&id).expect("generate device key");
    let label = format!("keyward-device-{id}");
    assert!(key.locator.contains(&label), "{}", key.locator);

    // Private, sensitive, never extractable, for signing and deriving, labelled by the id.
    let block = object_block(&private_objects(token), &label);
    for want in ["sign", "derive", "never extractable", "sensitive", "local"] {
        assert!(block.contains(want), "{want} missing:\n{block}");
    }

    // The token serial (what the row records) is the token's.
    let serial = r.token_serial().expect("token serial");
    assert_eq!(serial, locator_serial(&made.locator));
    assert_eq!(serial, serial.trim());

    let check = |r: &dyn Root| {
        let keys = r.device_keys().unwrap();
        // ECDH in the token agrees with ECDH in software on the other side.
        let eph = p256::SecretKey::random(&mut OsRng);
        let z = keys
            .device_ecdh(&key.locator, &ecdh::sec1(&eph.public_key()))
            .expect("ECDH in the token");
        let want = ecdh::software_ecdh(&eph, &ecdh::sec1(&key.public)).unwrap();
        assert_eq!(&z[..], &want[..]);
        // An ecdh-p256 wrap to the device key opens through the token.
        let kek = [9u8; 32];
        let wrapped = ecdh::wrap(&key.public, &kek).unwrap();
        let opened = ecdh::unwrap(&key.public, &wrapped, |e| keys.device_ecdh(&key.locator, e))
            .expect("unwrap with the token key");
        assert_eq!(*opened, kek);
        // CKM_ECDSA: raw r‖s over the digest, verified by the public key; DER for the rows.
        let digest = [7u8; 32];
        let raw = keys.device_sign(&key.locator, &digest).expect("sign");
        assert_eq!(raw.len(), 64);
        let sig = p256::ecdsa::Signature::from_slice(&raw).unwrap();
        p256::ecdsa::VerifyingKey::from(&key.public)
            .verify_prehash(&digest, &sig)
            .expect("the token's signature verifies");
        let der = root::device::token_sign(keys, &key.locator, b"row").unwrap();
        use p256::ecdsa::signature::Verifier;
        p256::ecdsa::VerifyingKey::from(&key.public)
            .verify(b"row", &p256::ecdsa::Signature::from_der(&der).unwrap())
            .expect("DER signature over SHA-256 of the message verifies");
    };
    check(r.as_ref());

    // After a restart: a new root object, unlocked, finds the key by its locator.
    r.lock().unwrap();
    drop(r);
    let r = root::from_config(&cfg.root).expect("root again");
    r.unlock(
        &pin,
        &StoredRoot {
            locator: Some(made.locator.clone()),
            check: made.check.clone(),
        },
    )
    .expect("unlock");
    check(r.as_ref());
    // A locator naming no object on the token is a typed error, not a panic.
    let other = "pkcs11:object=x;id=%01%02;type=private";
    assert!(r
        .device_keys()
        .unwrap()
        .device_sign(other, &[0; 32])
        .is_err());
    // Locked: refused.
    r.lock().unwrap();
    assert!(r
        .device_keys()
        .unwrap()
        .device_sign(&key.locator, &[0; 32])
        .is_err());
}

#[test]
fn device_key_on_an_aes_roots_token() {
    let _one = serial();
    device_key_on_token(
        common::pkcs11_config_on("kw-first", "object=keyward-root", false),
        "kw-first",
    );
}

#[test]
fn device_key_on_an_ec_roots_token() {
    let _one = serial();
    device_key_on_token(
        common::pkcs11_config_on("kw-second", "object=keyward-root", true),
        "kw-second",
    );
}

/// `init` on a PKCS#11 root makes the first device with its key on the token: the row keeps
/// the locator and the token serial, no wrapped scalar; it verifies (signed in the token) and
/// survives lock, unlock and a restart.
#[test]
fn the_first_device_of_a_pkcs11_root_has_its_key_on_the_token() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::pkcs11_config_on("keyward-pair-ec", "object=keyward-root", true);
    let pin = Pin::new(common::PIN);
    let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).unwrap());
    let h = Hierarchy::new(
        ks.clone(),
        root::from_config(&cfg.root).unwrap(),
        UnlockPolicy::default(),
    );
    h.init(&pin).expect("init");
    let (page, _) = h.device_page(None, 10).expect("device list");
    assert_eq!(page.len(), 1);
    let row = page[0].row.clone();
    let body: serde_json::Value = serde_json::from_slice(&row.body).unwrap();
    let locator = body["token_key"].as_str().expect("token_key in the body");
    assert!(
        locator.contains(&format!("keyward-device-{}", row.id)),
        "{locator}"
    );
    assert_eq!(body["secret"], serde_json::json!([]), "no wrapped scalar");
    let serial = row.token_serial.clone().expect("token serial recorded");
    assert!(!serial.is_empty());
    let listing = private_objects("keyward-pair-ec");
    object_block(&listing, &format!("keyward-device-{}", row.id));

    h.lock().unwrap();
    h.unlock(&pin).unwrap();
    assert_eq!(h.device_page(None, 10).unwrap().0[0].row, row);
    h.lock().unwrap();
    drop(h);
    // A restart: a new hierarchy on the same keystore and token.
    let h = Hierarchy::new(
        ks,
        root::from_config(&cfg.root).unwrap(),
        UnlockPolicy::default(),
    );
    h.unlock(&pin).unwrap();
    let (page, _) = h.device_page(None, 10).expect("verifies after a restart");
    assert_eq!(page[0].row, row);
    assert!(page[0].current);
}

/// An EC root on a token where only the SO generates keys (`management_key_hex`: a PIV card
/// through ykcs11) keeps no device keys on the token: its keys live in fixed slots, one of them
/// the root's. The device key is then wrapped under the root. Nothing touches the token here.
#[test]
fn a_piv_style_ec_root_keeps_no_device_key_on_the_token() {
    // The same EC root without it does (this also applies the tokens' environment).
    let r =
        root::from_config(&common::pkcs11_config_on("kw-dup", "object=keyward-root", true).root)
            .expect("root");
    assert!(r.device_keys().is_some());
    let text = common::pkcs11_config_text_on("kw-dup", "object=keyward-root", true).replacen(
        "key_type = \"ec\"\n",
        "key_type = \"ec\"\nmanagement_key_hex = \"010203040506070801020304050607080102030405060708\"\n",
        1,
    );
    let cfg =
        keyward_agent::config::Config::parse(&text, &common::tokens().path.join("keyward.toml"))
            .expect("parse");
    let r = root::from_config(&cfg.root).expect("root");
    assert!(r.device_keys().is_none());
}
