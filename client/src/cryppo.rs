//! `keyward cryppo ...`: offline Cryppo helpers that need no agent.
//!
//! Bytes in, bytes out: data comes from `-i FILE` or stdin, results go to `-o FILE` or stdout.
//! With `--passphrase-stdin`, the first line of stdin is the passphrase and the rest (unless
//! `-i` is given) is the data.

use base64::Engine;
use keyward_envelope::{aes256gcm, pbkdf2};
use std::io::{BufRead, Read};
use std::path::PathBuf;
use zeroize::Zeroizing;

/// Where the key comes from.
pub enum KeySource {
    /// A raw AES-256 key, base64url (the Cryppo key format).
    Key(Zeroizing<String>),
    /// A file holding that base64url key.
    KeyFile(PathBuf),
    /// A passphrase on the first line of stdin (derived key, 5-part strings).
    PassphraseStdin { iterations: u32 },
}

fn parse_key(text: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let raw = Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE
            .decode(text.trim())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim()))
            .map_err(|_| "the key is not base64url".to_string())?,
    );
    let key: [u8; 32] = raw
        .as_slice()
        .try_into()
        .map_err(|_| format!("the key is {} bytes; AES-256 needs 32", raw.len()))?;
    Ok(Zeroizing::new(key))
}

/// The passphrase (when the key source is stdin) and the data.
type Inputs = (Option<Zeroizing<String>>, Zeroizing<Vec<u8>>);

/// Read the passphrase line (if any) and the data.
fn inputs(src: &KeySource, input: &Option<PathBuf>) -> Result<Inputs, String> {
    let stdin = std::io::stdin();
    let mut lock = stdin.lock();
    let pass = match src {
        KeySource::PassphraseStdin { .. } => {
            let mut line = Zeroizing::new(String::new());
            lock.read_line(&mut line)
                .map_err(|e| format!("reading the passphrase: {e}"))?;
            let p = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string());
            if p.is_empty() {
                return Err("no passphrase on the first line of stdin".into());
            }
            Some(p)
        }
        _ => None,
    };
    let mut data = Zeroizing::new(Vec::new());
    match input {
        Some(p) => *data = std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?,
        None => {
            lock.read_to_end(&mut data)
                .map_err(|e| format!("reading stdin: {e}"))?;
        }
    }
    Ok((pass, data))
}

fn key_of(src: &KeySource) -> Result<Zeroizing<[u8; 32]>, String> {
    match src {
        KeySource::Key(k) => parse_key(k),
        KeySource::KeyFile(p) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?,
            );
            parse_key(&text)
        }
        KeySource::PassphraseStdin { .. } => Err("no key".into()),
    }
}

/// Encrypt: a 3-part string for a key, a 5-part string for a passphrase. Ends with a newline.
pub fn encrypt(src: &KeySource, input: &Option<PathBuf>) -> Result<Vec<u8>, String> {
    let (pass, data) = inputs(src, input)?;
    let s = match (src, pass) {
        (KeySource::PassphraseStdin { iterations }, Some(p)) => {
            pbkdf2::encrypt_with_passphrase(&p, &data, *iterations)
        }
        _ => {
            let key = key_of(src)?;
            aes256gcm::encrypt(&key, &data, aes256gcm::DEFAULT_AD)
        }
    }
    .map_err(|e| format!("encrypt: {e}"))?;
    Ok(format!("{s}\n").into_bytes())
}

/// Decrypt a Cryppo `Aes256Gcm` string (3-part with a key, 5-part with a passphrase).
pub fn decrypt(src: &KeySource, input: &Option<PathBuf>) -> Result<Zeroizing<Vec<u8>>, String> {
    let (pass, data) = inputs(src, input)?;
    let text = std::str::from_utf8(&data)
        .map_err(|_| "the input is not a Cryppo string (not UTF-8)".to_string())?
        .trim();
    match pass {
        Some(p) => pbkdf2::decrypt_with_passphrase(text, &p),
        None => {
            let key = key_of(src)?;
            aes256gcm::decrypt_with_key(text, &key)
        }
    }
    .map_err(|e| format!("decrypt: {e}"))
}
