//! The published streaming-format test vectors (`tests/vectors/stream/`), and the kit that makes
//! and checks them. No agent is needed: `manifest.json` gives each vector's data key (hex); the
//! header's wrapped key is a fixed placeholder, since a reader of the format gets the data key
//! from the agent (`datakey.open`) and only the agent reads the wrapped key.
//!
//! Each vector is a stream file (`NAME.kws`) and either the plaintext it decrypts to
//! (`NAME.plain`) or the error a reader must give (`code`, and `chunk` from 0). The vectors are
//! deterministic (fixed key, salt and nonce prefix): `vectors_are_reproducible` rebuilds them
//! and compares, and `KEYWARD_WRITE_VECTORS=1 cargo test -p keyward-envelope --test
//! stream_vectors` rewrites them.

use keyward_envelope::stream::{DecryptReader, EncryptWriter, Header, StreamError};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/stream")
}

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const DEK_ID: [u8; 16] = [
    0x6f, 0x1c, 0x1f, 0x5e, 0x1c, 0x36, 0x4f, 0x7e, 0x9d, 0x0b, 0x0f, 0x3a, 0x3c, 0x1b, 0x2d, 0x4e,
];

fn key() -> [u8; 32] {
    hex_decode(KEY_HEX).try_into().unwrap()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn plaintext(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"keyward stream vector "[i % 22]).collect()
}

fn encrypt(pt: &[u8], chunk: u32, seed: u8) -> (Vec<u8>, usize) {
    let h = Header::with_randomness(DEK_ID, 1, &[0xAA; 60], chunk, [seed; 32], [seed ^ 0x55; 7])
        .unwrap();
    let mut w = EncryptWriter::new(Vec::new(), &key(), &h).unwrap();
    w.write_all(pt).unwrap();
    (w.finish().unwrap(), h.as_bytes().len())
}

/// Every vector: (name, stream bytes, Ok(plaintext) | Err((code, chunk))).
#[allow(clippy::type_complexity)]
fn build() -> Vec<(
    &'static str,
    Vec<u8>,
    Result<Vec<u8>, (&'static str, Option<u64>)>,
)> {
    let mut v = Vec::new();
    for (name, n, chunk) in [
        ("empty", 0, 16),
        ("one-partial-chunk", 5, 16),
        ("two-full-chunks", 32, 16),
        ("several-chunks", 100, 16),
        ("default-chunk-size", 70_000, 65_536),
    ] {
        let pt = plaintext(n);
        v.push((name, encrypt(&pt, chunk, 1).0, Ok(pt)));
    }
    let pt = plaintext(100); // 7 chunks of 16: 6 full, 1 of 4 bytes
    let (ct, hl) = encrypt(&pt, 16, 1);
    let enc = 32;
    v.push((
        "truncated-at-chunk-3",
        ct[..hl + 3 * enc].to_vec(),
        Err(("stream_truncated", Some(3))),
    ));
    v.push((
        "header-only",
        ct[..hl].to_vec(),
        Err(("stream_truncated", Some(0))),
    ));
    let mut swapped = ct.clone();
    swapped[hl + enc..hl + 2 * enc].copy_from_slice(&ct[hl + 2 * enc..hl + 3 * enc]);
    swapped[hl + 2 * enc..hl + 3 * enc].copy_from_slice(&ct[hl + enc..hl + 2 * enc]);
    v.push((
        "swapped-chunks-1-2",
        swapped,
        Err(("stream_authentication", Some(1))),
    ));
    let mut flipped = ct.clone();
    flipped[hl + 2 * enc + 5] ^= 0x01;
    v.push((
        "flipped-bit-chunk-2",
        flipped,
        Err(("stream_authentication", Some(2))),
    ));
    let mut salt = ct.clone();
    salt[40] ^= 0x80;
    v.push((
        "flipped-bit-header-salt",
        salt,
        Err(("stream_authentication", Some(0))),
    ));
    let (other, _) = encrypt(&pt, 16, 2);
    let mut foreign = other[..hl].to_vec();
    foreign.extend_from_slice(&ct[hl..]);
    v.push((
        "header-from-another-file",
        foreign,
        Err(("stream_authentication", Some(0))),
    ));
    let (full, _) = encrypt(&plaintext(32), 16, 1);
    let mut trailing = full.clone();
    trailing.extend_from_slice(&full[hl..hl + enc]);
    v.push((
        "trailing-chunk",
        trailing,
        Err(("stream_trailing_data", Some(1))),
    ));
    let mut version = ct.clone();
    version[8] = 2;
    v.push(("version-2", version, Err(("unsupported_version", None))));
    v
}

/// Decrypt a vector file as any reader would; Ok(plaintext) or Err((code, chunk)).
fn run(stream: &[u8], key: &[u8; 32]) -> Result<Vec<u8>, (String, Option<u64>)> {
    let fail = |e: &StreamError| (e.code().to_string(), e.chunk());
    let mut r = stream;
    let h = Header::read_from(&mut r).map_err(|e| fail(&e))?;
    let mut d = DecryptReader::new(r, key, &h).map_err(|e| fail(&e))?;
    let mut out = Vec::new();
    d.read_to_end(&mut out)
        .map_err(|e| fail(StreamError::from_io(&e).expect("a stream error")))?;
    Ok(out)
}

#[test]
fn vectors_decrypt_as_published() {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir().join("manifest.json")).expect("manifest"))
            .unwrap();
    let vectors = manifest["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 12);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let key: [u8; 32] = hex_decode(v["data_key"].as_str().unwrap())
            .try_into()
            .unwrap();
        let stream = std::fs::read(dir().join(v["file"].as_str().unwrap())).unwrap();
        let got = run(&stream, &key);
        match v["plaintext"].as_str() {
            Some(p) => {
                let want = std::fs::read(dir().join(p)).unwrap();
                assert_eq!(got.as_ref().ok(), Some(&want), "{name}: {got:?}");
            }
            None => {
                let want = (
                    v["error"]["code"].as_str().unwrap().to_string(),
                    v["error"]["chunk"].as_u64(),
                );
                assert_eq!(got.err(), Some(want), "{name}");
            }
        }
    }
}

#[test]
fn vectors_are_reproducible() {
    let write = std::env::var_os("KEYWARD_WRITE_VECTORS").is_some();
    let mut list = Vec::new();
    for (name, stream, expect) in build() {
        let file = format!("{name}.kws");
        let mut entry = json!({"name": name, "file": file, "data_key": KEY_HEX});
        match &expect {
            Ok(pt) => {
                let p = format!("{name}.plain");
                if write {
                    std::fs::write(dir().join(&p), pt).unwrap();
                }
                entry["plaintext"] = json!(p);
            }
            Err((code, chunk)) => {
                entry["error"] = json!({"code": code, "chunk": chunk});
            }
        }
        if write {
            std::fs::write(dir().join(&file), &stream).unwrap();
        } else {
            let published = std::fs::read(dir().join(&file)).expect("vector file");
            assert_eq!(published, stream, "{name} differs from what the kit makes");
        }
        list.push(entry);
    }
    let manifest = json!({
        "format": "keyward stream v1 (README, \"Streaming format\")",
        "note": "data_key is the 32-byte data key (hex); the header's wrapped key is a placeholder. A vector with `plaintext` decrypts to that file; one with `error` must be refused with that code, naming that chunk (from 0).",
        "vectors": list,
    });
    if write {
        let mut text = serde_json::to_string_pretty(&manifest).unwrap();
        text.push('\n');
        std::fs::write(dir().join("manifest.json"), text).unwrap();
    }
}
