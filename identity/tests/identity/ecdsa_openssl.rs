use std::process::Command;

use keyward_identity::ecdsa::{self, SigEncoding};
use keyward_identity::p256::ecdsa::Signature;
use keyward_identity::{LocalKey, PublicKey, SignError, Signer, VerifyError};

use crate::util::key;

fn openssl(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI must be installed for this interop test")
}

#[test]
fn openssl_verifies_our_der_signature() {
    let dir = tempfile::tempdir().unwrap();
    let k = LocalKey::generate(&mut keyward_identity::rand_core::OsRng);
    let msg = b"keyward signs this for openssl";
    let sig = ecdsa::sign(&k, msg, SigEncoding::Der).unwrap();
    std::fs::write(
        dir.path().join("pub.pem"),
        k.public_key().to_spki_pem().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("msg.bin"), msg).unwrap();
    std::fs::write(dir.path().join("sig.der"), &sig).unwrap();
    let out = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.der",
            "msg.bin",
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openssl rejected: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Verified OK"), "{stdout}");

    // A tampered signature is rejected by openssl too (real negative, not mocked).
    let mut bad = sig.clone();
    let n = bad.len();
    bad[n - 1] ^= 0x01;
    std::fs::write(dir.path().join("sig.der"), &bad).unwrap();
    let out = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.der",
            "msg.bin",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
}

#[test]
fn we_verify_openssl_signature_with_its_pem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    assert!(openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "k.pem"
        ],
        p
    )
    .status
    .success());
    assert!(
        openssl(&["ec", "-in", "k.pem", "-pubout", "-out", "pub.pem"], p)
            .status
            .success()
    );
    std::fs::write(p.join("msg.bin"), b"signed by openssl").unwrap();
    assert!(openssl(
        &["dgst", "-sha256", "-sign", "k.pem", "-out", "sig.der", "msg.bin"],
        p
    )
    .status
    .success());
    let pem = std::fs::read_to_string(p.join("pub.pem")).unwrap();
    let sig = std::fs::read(p.join("sig.der")).unwrap();
    let pk = ecdsa::verify_with_key_text(&pem, b"signed by openssl", &sig).unwrap();
    // The same key in the other formats verifies too.
    ecdsa::verify_with_key_text(&pk.to_did_key(), b"signed by openssl", &sig).unwrap();
    ecdsa::verify_with_key_text(&pk.to_jwk_string(), b"signed by openssl", &sig).unwrap();
    assert_eq!(
        ecdsa::verify_with_key_text(&pem, b"signed by someone else", &sig).unwrap_err(),
        VerifyError::BadSignature
    );
}

#[test]
fn der_and_raw_round_trip_and_tampering() {
    let k = key(4);
    let pk = k.public_key();
    let msg = b"hello";
    for enc in [SigEncoding::Der, SigEncoding::Raw] {
        let sig = ecdsa::sign(&k, msg, enc).unwrap();
        if enc == SigEncoding::Raw {
            assert_eq!(sig.len(), 64);
        }
        ecdsa::verify(&pk, msg, &sig, enc).unwrap();
        ecdsa::verify_with_key_text(&pk.to_did_key(), msg, &sig).unwrap();
        assert_eq!(
            ecdsa::verify(&pk, b"hellO", &sig, enc).unwrap_err(),
            VerifyError::BadSignature
        );
        let mut t = sig.clone();
        let n = t.len();
        t[n - 2] ^= 0x40;
        assert_eq!(
            ecdsa::verify(&pk, msg, &t, enc).unwrap_err(),
            VerifyError::BadSignature
        );
        assert_eq!(
            ecdsa::verify(&key(5).public_key(), msg, &sig, enc).unwrap_err(),
            VerifyError::BadSignature
        );
    }
    assert_eq!(
        ecdsa::verify(&pk, msg, &[0x30, 0x01], SigEncoding::Der).unwrap_err(),
        VerifyError::MalformedSignature
    );
    assert_eq!(
        ecdsa::verify(&pk, msg, &[0u8; 64], SigEncoding::Raw).unwrap_err(),
        VerifyError::MalformedSignature
    );
    assert_eq!(
        ecdsa::verify_with_key_text(&pk.to_did_key(), msg, &[1, 2, 3]).unwrap_err(),
        VerifyError::MalformedSignature
    );
    assert!(matches!(
        ecdsa::verify_with_key_text("did:key:zBad", msg, &[1, 2, 3]).unwrap_err(),
        VerifyError::Key(_)
    ));
}

/// A stand-in for a token-backed signer: it only ever sees digests.
struct TokenLike {
    inner: LocalKey,
    seen: std::cell::RefCell<Vec<[u8; 32]>>,
    broken: bool,
}

impl Signer for TokenLike {
    fn public_key(&self) -> PublicKey {
        self.inner.public_key()
    }
    fn sign_prehash(&self, digest: &[u8; 32]) -> Result<Signature, SignError> {
        self.seen.borrow_mut().push(*digest);
        if self.broken {
            // Signs the wrong digest, as a faulty token might.
            return self.inner.sign_prehash(&[0u8; 32]);
        }
        self.inner.sign_prehash(digest)
    }
}

#[test]
fn external_signer_is_used_and_self_checked() {
    let t = TokenLike {
        inner: key(6),
        seen: Default::default(),
        broken: false,
    };
    let sig = ecdsa::sign(&t, b"m", SigEncoding::Der).unwrap();
    assert_eq!(t.seen.borrow().as_slice(), &[ecdsa::sha256(b"m")]);
    ecdsa::verify(&t.public_key(), b"m", &sig, SigEncoding::Der).unwrap();
    let bad = TokenLike {
        inner: key(6),
        seen: Default::default(),
        broken: true,
    };
    assert!(matches!(
        ecdsa::sign(&bad, b"m", SigEncoding::Der),
        Err(SignError::SelfCheckFailed)
    ));
    let dyn_signer: &dyn Signer = &t;
    ecdsa::sign(dyn_signer, b"m", SigEncoding::Raw).unwrap();
}
