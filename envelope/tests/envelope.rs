//! Round trips, tamper detection, strictness and a panic-freedom smoke fuzz.

use aws_lc_rs::encoding::AsDer;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use keyward_envelope::{
    aes256gcm, pbkdf2, rsa, sign, Artefacts, EncryptedData, EncryptionStrategy, Error, Part,
    Serialized,
};

const VECTORS: &str = include_str!("vectors/cryppo/compat.json");

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

/// An RSA-4096 private key from the vectors, and its public key as PKCS#1 and SPKI PEM.
fn rsa_keys() -> (String, String, String) {
    let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    let private = v["encryption_with_key"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["encryption_strategy"] == "Rsa4096")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let b64: String = private
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let kp = aws_lc_rs::rsa::KeyPair::from_der(&STANDARD.decode(b64).unwrap()).unwrap();
    use aws_lc_rs::signature::KeyPair as _;
    let pkcs1 = kp.public_key().as_ref().to_vec();
    let spki = kp.public_key().as_der().unwrap();
    (
        private,
        pem("RSA PUBLIC KEY", &pkcs1),
        pem("PUBLIC KEY", spki.as_ref()),
    )
}

#[test]
fn aes_round_trip_and_ad_readable_without_key() {
    let key = [0x42u8; 32];
    for len in [0usize, 1, 15, 16, 17, 1000] {
        let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let s = aes256gcm::encrypt(&key, &pt, "dek:0001").unwrap();
        assert_eq!(s.split('.').count(), 3);
        let parsed = Serialized::parse(&s).unwrap();
        assert_eq!(parsed.to_string(), s);
        let data = parsed.into_encrypted().unwrap();
        assert_eq!(data.ad(), Some("dek:0001"));
        assert_eq!(&*aes256gcm::decrypt_with_key(&s, &key).unwrap(), &pt[..]);
    }
    // Ruby's field order iv, at, ad.
    let s = aes256gcm::encrypt(&key, b"x", "none").unwrap();
    let data = Serialized::parse(&s).unwrap().into_encrypted().unwrap();
    let keys: Vec<&str> = data.artefacts().document().iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["iv", "at", "ad"]);
    // Two encryptions never share an IV.
    let t = aes256gcm::encrypt(&key, b"x", "none").unwrap();
    assert_ne!(s, t);
}

#[test]
fn low_level_seal_open_matches_serialized() {
    // As the agent does with a PKCS#11 token: GCM elsewhere, Cryppo assembled here.
    let key = [9u8; 32];
    let iv = [3u8; 12];
    let (ct, tag) = aes256gcm::seal(&key, &iv, b"dek-7", b"payload").unwrap();
    let data = EncryptedData::new(
        EncryptionStrategy::Aes256Gcm,
        ct.clone(),
        Artefacts::aes256gcm(&iv, &tag, "dek-7").unwrap(),
        None,
    )
    .unwrap();
    let s = data.to_string();
    assert_eq!(&*aes256gcm::decrypt_with_key(&s, &key).unwrap(), b"payload");
    let parsed = Serialized::parse(&s).unwrap().into_encrypted().unwrap();
    let p = parsed.gcm().unwrap();
    assert_eq!(
        (p.ciphertext, p.iv, p.tag, p.ad),
        (&ct[..], &iv, &tag, "dek-7")
    );
    let mut buf = ct.clone();
    aes256gcm::open_in_place(&key, &iv, b"dek-7", &mut buf, &tag).unwrap();
    assert_eq!(buf, b"payload");
}

#[test]
fn tamper_detection() {
    let key = [1u8; 32];
    let s = aes256gcm::encrypt(&key, b"attack at dawn", "ad-1").unwrap();
    let data = Serialized::parse(&s).unwrap().into_encrypted().unwrap();
    let p = data.gcm().unwrap();

    let mut ct = p.ciphertext.to_vec();
    ct[0] ^= 1;
    let mut tag = *p.tag;
    tag[15] ^= 0x80;
    let mut iv = *p.iv;
    iv[0] ^= 1;
    let cases = [
        (ct.clone(), *p.iv, *p.tag, "ad-1"),
        (p.ciphertext.to_vec(), *p.iv, tag, "ad-1"),
        (p.ciphertext.to_vec(), iv, *p.tag, "ad-1"),
        (p.ciphertext.to_vec(), *p.iv, *p.tag, "ad-2"),
    ];
    for (ct, iv, tag, ad) in cases {
        let forged = EncryptedData::new(
            EncryptionStrategy::Aes256Gcm,
            ct,
            Artefacts::aes256gcm(&iv, &tag, ad).unwrap(),
            None,
        )
        .unwrap()
        .to_string();
        assert!(matches!(
            aes256gcm::decrypt_with_key(&forged, &key),
            Err(Error::Decrypt)
        ));
    }
    assert!(matches!(
        aes256gcm::decrypt_with_key(&s, &[2u8; 32]),
        Err(Error::Decrypt)
    ));
}

#[test]
fn passphrase_round_trip() {
    let s = pbkdf2::encrypt_with_passphrase("correct horse", b"hello", 1000).unwrap();
    assert_eq!(s.split('.').count(), 5);
    assert_eq!(Serialized::parse(&s).unwrap().to_string(), s);
    assert_eq!(
        &*pbkdf2::decrypt_with_passphrase(&s, "correct horse").unwrap(),
        b"hello"
    );
    assert!(matches!(
        pbkdf2::decrypt_with_passphrase(&s, "wrong"),
        Err(Error::Decrypt)
    ));
    // Derived key + 2-part artefacts.
    let (k, artefacts) = pbkdf2::derive_new_key("pw", 1000).unwrap();
    let two = artefacts.to_string();
    assert_eq!(two.split('.').count(), 2);
    let Serialized::DerivedKey(back) = Serialized::parse(&two).unwrap() else {
        panic!("kind")
    };
    let keys: Vec<&str> = back.document().iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["iv", "i", "l"]);
    assert_eq!(back.salt().len(), pbkdf2::SALT_LEN);
    assert_eq!(*pbkdf2::derive_key_from("pw", &back).unwrap(), *k);
    // 3-part data is not passphrase data.
    let three = aes256gcm::encrypt(&k, b"x", "none").unwrap();
    assert!(matches!(
        pbkdf2::decrypt_with_passphrase(&three, "pw"),
        Err(Error::WrongKind { .. })
    ));
}

#[test]
fn rsa_and_sign_round_trips() {
    let (private, public_pkcs1, public_spki) = rsa_keys();
    for public in [&public_pkcs1, &public_spki] {
        let s = rsa::encrypt(public, b"dek bytes").unwrap();
        assert!(s.ends_with(".QQUAAAAA"));
        assert_eq!(&*rsa::decrypt(&private, &s).unwrap(), b"dek bytes");
        let sig = sign::sign(&private, b"signed").unwrap();
        assert!(sig.starts_with("Sign.Rsa4096."));
        assert_eq!(sign::verify(public, &sig).unwrap(), b"signed");
    }
    // PKCS#8 private key PEM works too.
    let b64: String = private
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let kp = aws_lc_rs::rsa::KeyPair::from_der(&STANDARD.decode(b64).unwrap()).unwrap();
    let pkcs8 = pem("PRIVATE KEY", kp.as_der().unwrap().as_ref());
    let s = rsa::encrypt(&public_spki, b"k").unwrap();
    assert_eq!(&*rsa::decrypt(&pkcs8, &s).unwrap(), b"k");

    // Tampering: RSA ciphertext and signed data.
    let mut data = Serialized::parse(&s)
        .unwrap()
        .into_encrypted()
        .unwrap()
        .ciphertext()
        .to_vec();
    data[10] ^= 1;
    let forged = EncryptedData::new(EncryptionStrategy::Rsa4096, data, Artefacts::empty(), None)
        .unwrap()
        .to_string();
    assert!(matches!(
        rsa::decrypt(&private, &forged),
        Err(Error::Decrypt)
    ));
    let sig = sign::sign(&private, b"signed").unwrap();
    let parts: Vec<&str> = sig.split('.').collect();
    let forged = format!("Sign.Rsa4096.{}.{}", parts[2], "c2lnbmVl"); // "signee"
    assert!(matches!(
        sign::verify(&public_pkcs1, &forged),
        Err(Error::Verify)
    ));
    assert!(matches!(rsa::encrypt("garbage", b"x"), Err(Error::Key(_))));
    assert!(matches!(
        rsa::encrypt(&public_pkcs1, &[0u8; 471]),
        Err(Error::PlaintextTooLong { max: 470, .. })
    ));
}

#[test]
fn standard_base64_rejected_with_part() {
    let key = [5u8; 32];
    let s = aes256gcm::encrypt(&key, &[0xfb; 30], "none").unwrap();
    let parts: Vec<&str> = s.split('.').collect();
    // Standard base64 of the same ciphertext: '-' -> '+', '_' -> '/'; force one '+'.
    let mut ct = parts[1].replace('-', "+").replace('_', "/");
    ct.replace_range(4..5, "+");
    let bad_ct = format!("{}.{}.{}", parts[0], ct, parts[2]);
    assert!(matches!(
        Serialized::parse(&bad_ct),
        Err(Error::StandardBase64 {
            part: Part::Ciphertext,
            ..
        })
    ));
    let bad_art = format!("{}.{}.{}/", parts[0], parts[1], &parts[2][..4]);
    assert!(matches!(
        Serialized::parse(&bad_art),
        Err(Error::StandardBase64 {
            part: Part::Artefacts,
            found: '/',
            ..
        })
    ));
}

#[test]
fn unknown_strategies_and_kinds() {
    assert!(matches!(
        Serialized::parse("Aes128Ctr.AAAA.QQUAAAAA"),
        Err(Error::UnknownStrategy(s)) if s == "Aes128Ctr"
    ));
    assert!(matches!(
        Serialized::parse("Scrypt.QQUAAAAA"),
        Err(Error::UnknownDerivationStrategy(_))
    ));
    assert!(matches!(
        Serialized::parse("Sign.Ed25519.AAAA.AAAA"),
        Err(Error::UnknownSignatureStrategy(_))
    ));
    // Artefacts without version byte, and missing GCM fields, are named.
    assert!(matches!(
        Serialized::parse("Aes256Gcm.AAAA.BQAAAAA="),
        Err(Error::Version {
            part: Part::Artefacts,
            expected: 'A',
            ..
        })
    ));
    assert!(matches!(
        Serialized::parse("Aes256Gcm.AAAA.QQUAAAAA"),
        Err(Error::MissingField {
            part: Part::Artefacts,
            field: "iv"
        })
    ));
    let (private, _, _) = rsa_keys();
    let aes = aes256gcm::encrypt(&[0u8; 32], b"x", "none").unwrap();
    assert!(matches!(
        rsa::decrypt(&private, &aes),
        Err(Error::WrongKind { .. })
    ));
    assert!(matches!(
        sign::verify("x", &aes),
        Err(Error::WrongKind { .. })
    ));
}

/// Tiny deterministic PRNG (xorshift64*), so the smoke fuzz needs no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parsing random, truncated and mutated strings returns `Err` (or `Ok`), never panics.
#[test]
fn fuzz_ish_parse_never_panics() {
    let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    let mut seeds: Vec<String> = Vec::new();
    for sect in ["encryption_with_key", "encryption_with_derived_key"] {
        for e in v[sect].as_array().unwrap().iter().step_by(7) {
            seeds.push(e["serialized"].as_str().unwrap().to_owned());
        }
    }
    for e in v["signatures"].as_array().unwrap().iter().step_by(7) {
        seeds.push(e["serialized_signature"].as_str().unwrap().to_owned());
    }
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/ \n\x00";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut errors = 0usize;
    let mut run = |s: &str| {
        if Serialized::parse(s).is_err() {
            errors += 1;
        }
    };
    // Every truncation of the seeds.
    for s in &seeds {
        for n in 0..=s.len() {
            run(&s[..n]);
        }
    }
    // Random byte mutations of the seeds, keeping the dot structure mostly intact.
    for _ in 0..20_000 {
        let mut s = seeds[rng.below(seeds.len())].clone().into_bytes();
        for _ in 0..=rng.below(4) {
            let i = rng.below(s.len());
            s[i] = alphabet[rng.below(alphabet.len())];
        }
        run(&String::from_utf8_lossy(&s));
    }
    // Valid-base64 garbage behind valid strategy names, so the BSON/YAML readers get exercised.
    for _ in 0..20_000 {
        let len = rng.below(80);
        let mut raw: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 && !raw.is_empty() {
            raw[0] = if rng.below(2) == 0 { b'A' } else { b'K' };
            if raw.len() > 4 {
                let n = (raw.len() - 1) as u32;
                raw[1..5].copy_from_slice(&n.to_le_bytes());
            }
        } else if rng.below(4) == 0 {
            raw.splice(0..0, *b"---\n");
        }
        let b = base64::engine::general_purpose::URL_SAFE.encode(&raw);
        run(&format!("Aes256Gcm.AAAA.{b}"));
        run(&format!("Pbkdf2Hmac.{b}"));
    }
    // Pure random strings.
    for _ in 0..20_000 {
        let len = rng.below(120);
        let s: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        run(&String::from_utf8_lossy(&s));
    }
    assert!(errors > 50_000, "most garbage must be rejected ({errors})");
}
