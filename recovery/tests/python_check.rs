//! Independent checks with Debian's Python packages, through
//! `tests/vectors/crosscheck.py` run by `/usr/bin/python3`:
//! - `python3-mnemonic` (the BIP39 reference implementation) accepts the words
//!   this crate produces (`Mnemonic("english").check`) and reads them back to
//!   our entropy (`to_entropy`);
//! - `python3-cryptography` recomputes every published derivation vector.
//!
//! These tests never skip: when a module is missing they fail and name the
//! script that installs it (`./softhsm-setup.sh --install-only`, which test.sh runs).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use keyward_recovery::{to_words, RecoverySecret};
use rand_core::OsRng;
use serde_json::json;

const PYTHON: &str = "/usr/bin/python3";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn require_module(module: &str, package: &str) {
    let ok = Command::new(PYTHON)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{PYTHON} cannot import `{module}`: install Debian's {package} with \
         `./softhsm-setup.sh --install-only` (test.sh runs it)"
    );
}

fn run(mode: &str, input: &[u8]) -> String {
    let mut child = Command::new(PYTHON)
        .arg(dir().join("crosscheck.py"))
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "crosscheck.py {mode} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn python_mnemonic_accepts_our_words_and_reads_back_our_entropy() {
    require_module("mnemonic", "python3-mnemonic");
    let mut items = Vec::new();
    for i in 0..64u8 {
        let secret = match i {
            0 => RecoverySecret::from_bytes([0; 32]),
            1 => RecoverySecret::from_bytes([0xff; 32]),
            _ => RecoverySecret::generate(&mut OsRng),
        };
        items.push(json!({
            "entropy": hex::encode(secret.as_bytes()),
            "words": to_words(&secret).as_str(),
        }));
    }
    let out = run("words", json!(items).to_string().as_bytes());
    assert_eq!(out.trim(), "ok 64");
}

#[test]
fn python_cryptography_recomputes_the_published_vectors() {
    require_module("mnemonic", "python3-mnemonic");
    require_module("cryptography", "python3-cryptography");
    let doc = std::fs::read(dir().join("derive.json")).unwrap();
    let out = run("vectors", &doc);
    assert!(out.starts_with("ok "), "{out}");
    let n: usize = out.trim()[3..].parse().unwrap();
    assert!(n >= 8);
}
