//! The published test vectors of the frozen v1 derivation
//! (`tests/vectors/derive.json`): every entry is recomputed from its entropy
//! (words, counter, scalar, public key in both SEC1 forms, `did:key`), and the
//! words are read back to the entropy.
//!
//! The file was generated once with `KEYWARD_WRITE_VECTORS=1 cargo test -p
//! keyward-recovery --test vectors` and cross-checked with an independent
//! implementation (Debian's `python3-cryptography`: HKDF-SHA256 and P-256
//! scalar multiplication, and `python3-mnemonic` for the words; see the
//! file's `cross_check`). Regenerating it must not
//! change a byte: the derivation is frozen.

use std::path::PathBuf;

use keyward_recovery::{from_words, to_words, RecoveryKey, RecoverySecret};
use serde_json::{json, Value};

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/derive.json")
}

fn entropies() -> Vec<[u8; 32]> {
    let mut v = vec![[0x00; 32], [0x7f; 32], [0x80; 32], [0xff; 32]];
    v.push(core::array::from_fn(|i| i as u8));
    v.push(core::array::from_fn(|i| 0xff - i as u8));
    // Three fixed, irregular patterns.
    for h in [
        "9e1c3f0a5b7d2e4f6a8c0b1d3e5f7a9c2b4d6e8f0a1c3e5b7d9f2a4c6e8b0d1f",
        "1f0e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "c0ffee00deadbeef0123456789abcdeffedcba9876543210a5a5a5a55a5a5a5a",
    ] {
        v.push(hex::decode(h).unwrap().try_into().unwrap());
    }
    v
}

fn compute(entropy: &[u8; 32]) -> Value {
    let secret = RecoverySecret::from_bytes(*entropy);
    let key = RecoveryKey::derive(&secret).unwrap();
    let public = key.public_key();
    json!({
        "entropy": hex::encode(entropy),
        "words": to_words(&secret).as_str(),
        "counter": key.counter(),
        "scalar": hex::encode(*key.scalar_bytes()),
        "public_key_sec1_compressed": hex::encode(public.to_sec1_compressed()),
        "public_key_sec1_uncompressed": hex::encode(public.to_sec1_uncompressed()),
        "did_key": key.did_key(),
    })
}

#[test]
fn published_vectors_recompute() {
    if std::env::var_os("KEYWARD_WRITE_VECTORS").is_some() {
        let file = json!({
            "description": "Keyward recovery v1: 32-byte entropy -> 24 BIP39 English words, and \
                entropy -> P-256 key (HKDF-SHA256, salt \"keyward/recovery/v1\", info \
                \"keyward/recovery/v1/p256-scalar\" || counter byte, 32-byte OKM as a big-endian \
                scalar, retried with the next counter if 0 or >= n). See recovery/src/derive.rs.",
            "salt": "keyward/recovery/v1",
            "info_prefix": "keyward/recovery/v1/p256-scalar",
            "retry_path": "No vector exercises counter > 0 (it needs ~2^32 trials to find); the \
                retry rule is tested by injected OKM values in recovery/src/derive.rs.",
            "cross_check": "every counter, scalar and public key recomputed with Debian's \
                python3-cryptography 38.0.4 (HKDF-SHA256, ec.derive_private_key(SECP256R1)), \
                every did:key with a separate base58btc encoder, every phrase with Debian's \
                python3-mnemonic 0.19 (Mnemonic('english').to_mnemonic); the phrases of 00*32, \
                7f*32, 80*32 and ff*32 are the BIP39 reference vectors \
                (trezor/python-mnemonic vectors.json).",
            "vectors": entropies().iter().map(compute).collect::<Vec<_>>(),
        });
        std::fs::write(path(), serde_json::to_string_pretty(&file).unwrap() + "\n").unwrap();
    }
    let text = std::fs::read_to_string(path()).expect("tests/vectors/derive.json");
    let file: Value = serde_json::from_str(&text).unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 8);
    for (i, v) in vectors.iter().enumerate() {
        let entropy: [u8; 32] = hex::decode(v["entropy"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(&compute(&entropy), v, "vector {i}");
        // And the words read back to the entropy.
        let back = from_words(v["words"].as_str().unwrap()).unwrap();
        assert_eq!(back.as_bytes(), &entropy, "vector {i}");
    }
}

#[test]
fn reference_words_of_the_bip39_vectors() {
    // trezor/python-mnemonic vectors.json, 256-bit entries.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    let words_of = |e: &str| {
        file["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["entropy"] == e)
            .map(|v| v["words"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert!(words_of(&"00".repeat(32)).ends_with("abandon abandon art"));
    assert_eq!(
        words_of(&"80".repeat(32)),
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd \
         amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic bless"
    );
    assert_eq!(
        words_of(&"ff".repeat(32)),
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo \
         zoo zoo vote"
    );
}
