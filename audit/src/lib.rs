//! Keyward's audit log format, and its offline verification.
//!
//! The log is a sequence of JSON lines, one [`Entry`] each, spread over the live file and its
//! rotated predecessors (`audit.log.1`, `audit.log.2`, … oldest first, then `audit.log`). Each
//! line is the entry's JSON object with a last member `"hash"`: the SHA-256 of a domain string and
//! the bytes of the object *without* that member (see [`encode`]). Every entry names the hash of
//! the entry before it (`prev`; 64 zeros for the first), so the entries form one chain across
//! files. Some entries are checkpoints (`op` = `audit.checkpoint`): their `sig` is a COSE_Sign1
//! (ES256) over [`checkpoint_payload`] — the sequence number and hash of an earlier entry of the
//! chain, the last one it covers: the entry just before it, or (when the agent signed a snapshot
//! of the chain's end while requests went on writing) one a few entries before — made by the
//! agent's audit key, whose public half the agent keeps in its integrity-protected keystore
//! (never in the log). Entries between the signed one and the checkpoint are not covered by it.
//!
//! [`verify`] walks the chain and names the first entry that was changed, removed or reordered,
//! checks every checkpoint's signature with a key the caller got from elsewhere, compares the end
//! of the log with the head the keystore recorded (a cut tail), and counts the entries after the
//! last signed checkpoint (unsigned: a writer with file access could have rewritten them).
//!
//! This crate must never read anything but the log files it is pointed at, and never take a
//! verifying key from the log itself. Entries never hold data, plaintexts, PINs or keys: only
//! what an operation was, on which key, by whom, through which door, and how it ended.
// No panics outside tests (request paths and start-up return typed errors).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use base64::Engine;
use keyward_identity::PublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The domain string hashed before every entry's body.
pub const DOMAIN: &[u8] = b"keyward-audit/v1\n";
/// The `op` of a checkpoint entry.
pub const CHECKPOINT_OP: &str = "audit.checkpoint";
/// The COSE `kid` of checkpoint signatures.
pub const KID: &[u8] = b"keyward-audit";
/// The `prev` of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// The fixed tail of every line: `,"hash":"` + 64 hex digits + `"}`.
const HASH_TAIL: usize = 9 + 64 + 2;

/// One audit entry: what happened, never the data it happened to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 1, 2, 3, … across every file of the log.
    pub seq: u64,
    /// Unix time in milliseconds when the agent finished the operation.
    pub time: u64,
    /// The protocol op name (`sign`, `dek.export`, …), or an agent event (`audit.checkpoint`,
    /// `agent.start`, `agent.stop`).
    pub op: String,
    /// The front door: `socket`, `ssh`, `pkcs11`; `agent` for the agent's own entries.
    pub door: String,
    /// The key the operation named (a UUID, or an SSH key's fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// That key's label, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The client's uid, pid and executable (as `/proc` told the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// `ok`, or the wire error code the client got (`policy_denied`, `not_found`, …).
    pub result: String,
    /// For agent entries: why (a checkpoint's reason: `every`, `lock`, `unlock`, `shutdown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The hash of the entry before (hex).
    pub prev: String,
    /// A checkpoint's signature: base64 of a tagged COSE_Sign1 over [`checkpoint_payload`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Entry {
    pub fn is_checkpoint(&self) -> bool {
        self.op == CHECKPOINT_OP
    }
}

/// What a checkpoint signs: the sequence number and hash of the last entry it covers.
pub fn checkpoint_payload(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    format!("{PAYLOAD_PREFIX}{seq}:{}", hex::encode(hash)).into_bytes()
}

const PAYLOAD_PREFIX: &str = "keyward-audit-checkpoint/v1:";

/// The `(seq, hash)` a [`checkpoint_payload`] names.
fn parse_payload(payload: &[u8]) -> Option<(u64, [u8; 32])> {
    let text = std::str::from_utf8(payload).ok()?;
    let (seq, hash) = text.strip_prefix(PAYLOAD_PREFIX)?.split_once(':')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hash: [u8; 32] = hex::decode(hash).ok()?.try_into().ok()?;
    Some((seq.parse().ok()?, hash))
}

fn hash_body(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(body);
    h.finalize().into()
}

/// An entry as one line (without the newline) and its hash.
pub fn encode(e: &Entry) -> Result<(String, [u8; 32]), serde_json::Error> {
    let mut line = String::with_capacity(256);
    let hash = encode_into(e, &mut line);
    Ok((line, hash))
}

/// Append the entry's line (without the newline) to `out` and return its hash: the bytes
/// `serde_json` would write for the entry (members in declaration order, `None`s left out, its
/// string escapes), written straight into `out`, which the agent reuses for a whole batch. A
/// test holds it byte for byte to `serde_json`'s output, which [`parse_line`] reads back.
pub fn encode_into(e: &Entry, out: &mut String) -> [u8; 32] {
    fn num(out: &mut String, n: impl std::fmt::Display) {
        use std::fmt::Write;
        let _ = write!(out, "{n}");
    }
    let start = out.len();
    out.push_str("{\"seq\":");
    num(out, e.seq);
    out.push_str(",\"time\":");
    num(out, e.time);
    out.push_str(",\"op\":");
    push_json_str(out, &e.op);
    out.push_str(",\"door\":");
    push_json_str(out, &e.door);
    if let Some(k) = &e.key {
        out.push_str(",\"key\":");
        push_json_str(out, k);
    }
    if let Some(l) = &e.label {
        out.push_str(",\"label\":");
        push_json_str(out, l);
    }
    if let Some(u) = e.uid {
        out.push_str(",\"uid\":");
        num(out, u);
    }
    if let Some(p) = e.pid {
        out.push_str(",\"pid\":");
        num(out, p);
    }
    if let Some(x) = &e.exe {
        out.push_str(",\"exe\":");
        push_json_str(out, x);
    }
    out.push_str(",\"result\":");
    push_json_str(out, &e.result);
    if let Some(d) = &e.detail {
        out.push_str(",\"detail\":");
        push_json_str(out, d);
    }
    out.push_str(",\"prev\":");
    push_json_str(out, &e.prev);
    if let Some(s) = &e.sig {
        out.push_str(",\"sig\":");
        push_json_str(out, s);
    }
    out.push('}');
    let hash = hash_body(&out.as_bytes()[start..]);
    // The body is a JSON object: its closing brace gives way to the hash member.
    out.pop();
    out.push_str(",\"hash\":\"");
    push_hex(out, &hash);
    out.push_str("\"}");
    hash
}

/// `s` as a JSON string, escaped as `serde_json` escapes it: `"` and `\\`, the short escapes
/// `\\b \\f \\n \\r \\t`, other control characters as `\\u00XX` (lower-case hex), and
/// everything else (DEL, non-ASCII) as it is.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        from = i + 1;
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        } else {
            out.push_str(esc);
        }
    }
    out.push_str(&s[from..]);
    out.push('"');
}

/// Append the lower-case hex of `bytes` to `out` (what `hex::encode` gives, without its
/// `String` built from a `char` iterator: an entry needs two of these, so they show per request).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// [`push_hex`] into a new string.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    push_hex(&mut s, bytes);
    s
}

/// A line read back: the entry, the hash it claims, and the hash its bytes have.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub entry: Entry,
    pub stored: [u8; 32],
    pub computed: [u8; 32],
}

impl Parsed {
    pub fn intact(&self) -> bool {
        self.stored == self.computed
    }
}

/// Parse one line. `None` when it is not an entry at all (its JSON or its hash member broken).
pub fn parse_line(line: &str) -> Option<Parsed> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.len() < HASH_TAIL + 2 || !line.is_char_boundary(line.len() - HASH_TAIL) {
        return None;
    }
    let (head, tail) = line.split_at(line.len() - HASH_TAIL);
    let hex_part = tail.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    let stored: [u8; 32] = hex::decode(hex_part).ok()?.try_into().ok()?;
    let body = format!("{head}}}");
    let entry: Entry = serde_json::from_str(&body).ok()?;
    Some(Parsed {
        entry,
        stored,
        computed: hash_body(body.as_bytes()),
    })
}

/// The files of the log at `path`, oldest first: `path.1`, `path.2`, … then `path` itself (when
/// it exists).
pub fn files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(vec![]);
    };
    let prefix = format!("{name}.");
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                let n = e.file_name();
                let Some(n) = n.to_str() else { continue };
                if let Some(k) = n.strip_prefix(&prefix).and_then(|k| k.parse::<u64>().ok()) {
                    rotated.push((k, e.path()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    Ok(out)
}

/// One line of the log and where it is.
#[derive(Debug, Clone)]
pub struct Line {
    pub file: PathBuf,
    /// 1-based.
    pub number: usize,
    pub text: String,
}

/// Every line of every file of the log at `path`, oldest first (empty lines skipped).
pub fn read_lines(path: &Path) -> std::io::Result<Vec<Line>> {
    let mut out = Vec::new();
    for f in files(path)? {
        let bytes = std::fs::read(&f)?;
        let text = String::from_utf8_lossy(&bytes);
        for (i, l) in text.split('\n').enumerate() {
            if l.is_empty() {
                continue;
            }
            out.push(Line {
                file: f.clone(),
                number: i + 1,
                text: l.to_string(),
            });
        }
    }
    Ok(out)
}

/// What the verifier trusts, from outside the log: the agent's audit key and the chain head its
/// keystore recorded.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub key: Option<PublicKey>,
    /// The audit keys in use before `key`, oldest first (the keystore integrity key, which the
    /// audit key derives from, was replaced). A checkpoint may be signed by one of them, but the
    /// keys only move forward: once a checkpoint verified under a key, no earlier key is
    /// accepted for a later checkpoint.
    pub previous: Vec<PublicKey>,
    /// (sequence, hash) of the newest entry the keystore recorded.
    pub head: Option<(u64, [u8; 32])>,
}

/// The first thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    #[error("{file}:{line}: not an audit entry (changed)")]
    NotAnEntry { file: String, line: usize },
    #[error("entry {seq} ({file}:{line}) was changed: its hash does not match its contents")]
    Changed { seq: u64, file: String, line: usize },
    #[error(
        "entry {seq} ({file}:{line}) does not follow the entry before it (changed or replaced)"
    )]
    Unchained { seq: u64, file: String, line: usize },
    #[error(
        "entries {from} to {to} were removed (the next entry found is {to}+1 at {file}:{line})"
    )]
    Removed {
        from: u64,
        to: u64,
        file: String,
        line: usize,
    },
    #[error("entry {seq} is out of order: found at {file}:{line} where entry {expected} belongs (reordered)")]
    Reordered {
        seq: u64,
        expected: u64,
        file: String,
        line: usize,
    },
    #[error("checkpoint entry {seq} ({file}:{line}): {why}")]
    BadCheckpoint {
        seq: u64,
        file: String,
        line: usize,
        why: String,
    },
    #[error("the log ends at entry {last} but the keystore recorded entry {head}: entries after {last} were removed (cut tail)")]
    TailCut { last: u64, head: u64 },
    #[error("entry {seq} is not the entry the keystore recorded as the chain head (rewritten)")]
    HeadMismatch { seq: u64 },
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries read (up to the first problem).
    pub entries: u64,
    /// Sequence number of the last intact entry.
    pub last_seq: u64,
    /// The newest checkpoint whose signature verified: its sequence number.
    pub signed_through: Option<u64>,
    /// Which key verified that checkpoint: its index in `previous` followed by `key` of the
    /// [`Trust`] (`previous.len()`: the current key).
    pub signed_by: Option<usize>,
    /// Intact entries that no verified checkpoint covers: those after the last one, and those
    /// written between the entry it signed and the checkpoint itself.
    pub unsigned: u64,
    /// Whether the keystore's head was found in the log (and matched).
    pub head_matched: bool,
    /// Checkpoints seen but not checked (no key given).
    pub unchecked_checkpoints: u64,
    pub problem: Option<Problem>,
}

fn where_(l: &Line) -> (String, usize) {
    (l.file.display().to_string(), l.number)
}

/// Verify the chain of `lines` (as [`read_lines`] returns them) against what `trust` holds.
pub fn verify(lines: &[Line], trust: &Trust) -> Report {
    let mut r = Report::default();
    let parsed: Vec<Option<Parsed>> = lines.iter().map(|l| parse_line(&l.text)).collect();
    let mut prev = GENESIS;
    let mut expected: u64 = 1;
    // The keys in the order they were used; `era` is the oldest one still acceptable.
    let keys: Vec<&PublicKey> = trust.previous.iter().chain(trust.key.as_ref()).collect();
    let mut era = 0;
    // The entries since the last verified checkpoint (itself included): what the next one may
    // sign.
    let mut recent: Vec<(u64, [u8; 32])> = Vec::new();
    for (i, (l, p)) in lines.iter().zip(&parsed).enumerate() {
        let (file, line) = where_(l);
        let Some(p) = p else {
            r.problem = Some(Problem::NotAnEntry { file, line });
            return r;
        };
        let seq = p.entry.seq;
        if !p.intact() {
            // Named by its place in the chain: the edit may have been to its own `seq`.
            r.problem = Some(Problem::Changed {
                seq: expected,
                file,
                line,
            });
            return r;
        }
        if seq != expected {
            // Entry `expected` further on: it was moved (reordered); nowhere: removed.
            let later = parsed[i + 1..]
                .iter()
                .any(|q| q.as_ref().is_some_and(|q| q.entry.seq == expected));
            r.problem = Some(if later || seq < expected {
                Problem::Reordered {
                    seq,
                    expected,
                    file,
                    line,
                }
            } else {
                Problem::Removed {
                    from: expected,
                    to: seq - 1,
                    file,
                    line,
                }
            });
            return r;
        }
        if p.entry.prev != hex::encode(prev) {
            r.problem = Some(Problem::Unchained { seq, file, line });
            return r;
        }
        if p.entry.is_checkpoint() {
            match &trust.key {
                None => r.unchecked_checkpoints += 1,
                Some(_) => {
                    // The first acceptable key that verifies it; else the error the newest gave.
                    let mut why = String::new();
                    let mut found = None;
                    for (j, k) in keys[era..].iter().enumerate() {
                        match signed_entry(&p.entry, k) {
                            // It must name an entry of this chain since the last checkpoint
                            // (itself included): the one just before, or an earlier one (a
                            // snapshot signed while entries went on being written).
                            Ok((s, h))
                                if s < seq
                                    && recent.iter().rev().any(|&(rs, rh)| (rs, rh) == (s, h)) =>
                            {
                                found = Some((j, s));
                                break;
                            }
                            Ok(_) => why = "signed payload names another entry".into(),
                            Err(e) => why = e,
                        }
                    }
                    let Some((j, covered)) = found else {
                        r.problem = Some(Problem::BadCheckpoint {
                            seq,
                            file,
                            line,
                            why,
                        });
                        return r;
                    };
                    era += j;
                    r.signed_through = Some(seq);
                    r.signed_by = Some(era);
                    // The entries written between the signed one and this checkpoint are not
                    // covered by its signature (the checkpoint line itself counts as covered).
                    r.unsigned = seq - 1 - covered;
                    recent.clear();
                }
            }
        }
        if r.signed_through != Some(seq) {
            r.unsigned += 1;
        }
        if let Some((hs, hh)) = trust.head {
            if hs == seq {
                if hh != p.stored {
                    r.problem = Some(Problem::HeadMismatch { seq });
                    return r;
                }
                r.head_matched = true;
            }
        }
        r.entries += 1;
        r.last_seq = seq;
        prev = p.stored;
        if trust.key.is_some() {
            recent.push((seq, p.stored));
        }
        expected = seq + 1;
    }
    if let Some((hs, _)) = trust.head {
        if hs > r.last_seq {
            r.problem = Some(Problem::TailCut {
                last: r.last_seq,
                head: hs,
            });
        }
    }
    r
}

/// Check a checkpoint's COSE_Sign1 with `key`: it must verify and sign exactly `(seq, prev)`.
pub fn check_signature(
    e: &Entry,
    seq: u64,
    prev: &[u8; 32],
    key: &PublicKey,
) -> Result<(), String> {
    if signed_entry(e, key)? != (seq, *prev) {
        return Err("signed payload names another entry".into());
    }
    Ok(())
}

/// Check a checkpoint's COSE_Sign1 with `key`, and name the entry it signs: `(seq, hash)`.
pub fn signed_entry(e: &Entry, key: &PublicKey) -> Result<(u64, [u8; 32]), String> {
    let sig = e.sig.as_deref().ok_or("no signature")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .map_err(|_| "the signature is not base64".to_string())?;
    let msg = keyward_identity::cose::parse(&bytes).map_err(|e| e.to_string())?;
    let payload = keyward_identity::cose::verify_es256_protected(&msg, key, b"")
        .map_err(|e| e.to_string())?;
    parse_payload(payload).ok_or_else(|| "the signed payload is not a checkpoint's".into())
}

/// Sign a checkpoint over `(seq, hash)` with `signer` (base64 of a tagged COSE_Sign1).
pub fn sign_checkpoint<S: keyward_identity::Signer + ?Sized>(
    signer: &S,
    seq: u64,
    hash: &[u8; 32],
) -> Result<String, keyward_identity::cose::Sign1Error> {
    let cose = keyward_identity::cose::sign_es256(signer, KID, checkpoint_payload(seq, hash))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(cose))
}

/// Sign a checkpoint over `(seq, hash)` with a key that signs messages (a device key): `sign`
/// gets the COSE Sig_structure and answers an ECDSA P-256/SHA-256 signature (DER or `r || s`).
pub fn sign_checkpoint_message(
    seq: u64,
    hash: &[u8; 32],
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, keyward_identity::cose::Sign1Error>,
) -> Result<String, keyward_identity::cose::Sign1Error> {
    let cose =
        keyward_identity::cose::sign_es256_message(KID, checkpoint_payload(seq, hash), sign)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(cose))
}

#[cfg(test)]
mod tests;
