//! `keyward audit show` and `keyward audit verify`: read the agent's audit log (the files
//! themselves, `keyward-audit`'s format), and check its chain.
//!
//! The log's path comes from the agent (`audit.info`) or `--file`. What a verification trusts —
//! the audit key's public half and the chain head — comes only from the agent's keystore
//! (`audit.info`), never from the log; without an agent the chain is still checked, but
//! checkpoint signatures and a cut tail cannot be. This module never writes the log.

use crate::cli::{out, Failure, Out};
use clap::Subcommand;
use keyward_audit::{Problem, Trust};
use keyward_client::Client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Print the log's entries (oldest first, across rotated files).
    Show {
        /// Only entries at or after this time: Unix seconds, or an age such as 30m, 2h, 7d.
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// The log file (default: the one the agent on the socket keeps).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Check the chain: name the first entry changed, removed or reordered, check every
    /// checkpoint's signature with the audit key from the agent's keystore, compare the end of
    /// the log with the head the keystore recorded, and count unsigned entries.
    Verify {
        /// The log file (default: the one the agent on the socket keeps).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// `since` as Unix milliseconds: seconds since the epoch, or an age (`90s`, `30m`, `2h`, `7d`).
fn since_ms(s: &str, now_ms: u64) -> Result<u64, Failure> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs.saturating_mul(1000));
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    match n.parse::<u64>() {
        Ok(n) if mult > 0 => Ok(now_ms.saturating_sub(n.saturating_mul(mult * 1000))),
        _ => Err(format!("--since {s}: give Unix seconds or an age such as 30m, 2h, 7d").into()),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix milliseconds (proleptic Gregorian, UTC).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The agent's `audit.info`, if an agent answers on `socket`.
async fn agent_info(
    socket: &Path,
) -> Result<Option<keyward_client::proto::ops::AuditInfoResult>, Failure> {
    let Ok(c) = Client::connect(socket).await else {
        return Ok(None);
    };
    Ok(Some(c.audit_info().await?))
}

fn log_path(
    file: &Option<PathBuf>,
    info: &Option<keyward_client::proto::ops::AuditInfoResult>,
) -> Result<PathBuf, Failure> {
    if let Some(f) = file {
        return Ok(f.clone());
    }
    match info {
        Some(i) => match &i.path {
            Some(p) => Ok(PathBuf::from(p)),
            None => Err("the agent keeps no audit log (no [audit] in its config)"
                .to_string()
                .into()),
        },
        None => Err(
            "no agent answers on the socket to name its audit log: give --file PATH"
                .to_string()
                .into(),
        ),
    }
}

/// Run an audit command: its output, and whether it succeeded (a verification that found a
/// problem prints its report and fails).
pub async fn audit(socket: &Path, cmd: &AuditCmd) -> Result<(Out, bool), Failure> {
    let info = agent_info(socket).await?;
    match cmd {
        AuditCmd::Show { since, file } => {
            let path = log_path(file, &info)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let since = since.as_deref().map(|s| since_ms(s, now)).transpose()?;
            let lines = keyward_audit::read_lines(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let mut text = String::new();
            let mut entries = Vec::new();
            for l in &lines {
                let Some(p) = keyward_audit::parse_line(&l.text) else {
                    text.push_str(&format!(
                        "{}:{}: not an audit entry\n",
                        l.file.display(),
                        l.number
                    ));
                    entries.push(json!({"file": l.file.display().to_string(), "line": l.number, "unreadable": true}));
                    continue;
                };
                let e = p.entry;
                if since.is_some_and(|s| e.time < s) {
                    continue;
                }
                let key = match (&e.key, &e.label) {
                    (Some(k), Some(l)) => format!(" {k} ({l})"),
                    (Some(k), None) => format!(" {k}"),
                    _ => String::new(),
                };
                let who = match (e.pid, &e.exe) {
                    (Some(pid), Some(exe)) => format!(" pid {pid} {exe}"),
                    (Some(pid), None) => format!(" pid {pid}"),
                    _ => String::new(),
                };
                let detail = e
                    .detail
                    .as_deref()
                    .map(|d| format!(" [{d}]"))
                    .unwrap_or_default();
                text.push_str(&format!(
                    "{:>6} {} {:<6} {}{key} -> {}{detail}{who}\n",
                    e.seq,
                    utc(e.time),
                    e.door,
                    e.op,
                    e.result
                ));
                let mut v = serde_json::to_value(&e).map_err(|e| e.to_string())?;
                v["hash"] = json!(hex::encode(p.stored));
                entries.push(v);
            }
            Ok((out(text, Value::Array(entries)), true))
        }
        AuditCmd::Verify { file } => {
            let path = log_path(file, &info)?;
            let lines = keyward_audit::read_lines(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let trust = match &info {
                Some(i) => Trust {
                    previous: i
                        .previous_keys
                        .iter()
                        .filter_map(|k| keyward_identity::PublicKey::from_sec1_bytes(k).ok())
                        .collect(),
                    key: i
                        .public_key
                        .as_deref()
                        .and_then(|k| keyward_identity::PublicKey::from_sec1_bytes(k).ok()),
                    head: match (i.head_seq, i.head_hash.as_deref()) {
                        (Some(s), Some(h)) => {
                            <[u8; 32]>::try_from(h.as_slice()).ok().map(|h| (s, h))
                        }
                        _ => None,
                    },
                },
                None => Trust::default(),
            };
            let checked = info.as_ref().is_some_and(|i| i.checked);
            let r = keyward_audit::verify(&lines, &trust);
            let signer = signed_by(&r, &trust, info.as_ref());
            let mut text = String::new();
            match &r.problem {
                Some(p) => text.push_str(&format!("FAILED: {p}\n")),
                None => text.push_str(&format!(
                    "ok: {} entries, the chain is intact (entries 1 to {})\n",
                    r.entries, r.last_seq
                )),
            }
            match (trust.key.is_some(), r.signed_through) {
                (false, _) => text.push_str(
                    "checkpoints: not checked (no audit key from the agent's keystore)\n",
                ),
                (true, Some(s)) => text.push_str(&format!(
                    "signed: through entry {s} (last good checkpoint), {}\n",
                    signer_text(&signer)
                )),
                (true, None) => text.push_str("signed: no checkpoint yet\n"),
            }
            if r.problem.is_none() {
                text.push_str(&format!(
                    "unsigned: {} entries after the last signed checkpoint (a writer with access to the file could have changed them)\n",
                    r.unsigned
                ));
            }
            match trust.head {
                Some((s, _)) if r.head_matched => {
                    text.push_str(&format!("head: entry {s}, as the keystore recorded\n"))
                }
                Some((s, _)) => {
                    text.push_str(&format!("head: the keystore recorded entry {s}\n"))
                }
                None => text.push_str("head: unknown (no head from the agent's keystore): a cut tail cannot be seen\n"),
            }
            if info.is_some() && !checked {
                text.push_str("note: the agent is locked, so it could not check the MACs of the keystore rows holding the audit key and head\n");
            }
            let problem = r.problem.as_ref().map(|p| {
                let (kind, seq) = match p {
                    Problem::NotAnEntry { .. } => ("changed", None),
                    Problem::Changed { seq, .. } | Problem::Unchained { seq, .. } => {
                        ("changed", Some(*seq))
                    }
                    Problem::Removed { from, .. } => ("removed", Some(*from)),
                    Problem::Reordered { expected, .. } => ("reordered", Some(*expected)),
                    Problem::BadCheckpoint { seq, .. } => ("bad_checkpoint", Some(*seq)),
                    Problem::TailCut { last, .. } => ("tail_cut", Some(last + 1)),
                    Problem::HeadMismatch { seq } => ("changed", Some(*seq)),
                    _ => ("changed", None),
                };
                json!({"kind": kind, "seq": seq, "message": p.to_string()})
            });
            let j = json!({
                "ok": r.problem.is_none(),
                "file": path.display().to_string(),
                "entries": r.entries,
                "last_seq": r.last_seq,
                "signed_through": r.signed_through,
                "signed_by": signer.as_ref().map(|s| s.to_json()),
                "unsigned": r.unsigned,
                "key_checked": trust.key.is_some(),
                "head_seq": trust.head.map(|h| h.0),
                "head_matched": r.head_matched,
                "keystore_checked": checked,
                "problem": problem,
            });
            Ok((out(text, j), r.problem.is_none()))
        }
    }
}

/// Which key verified the last good checkpoint, as `audit verify` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signer {
    /// This device's own key (its device row's, in the agent's keystore).
    Device { id: String, fingerprint: String },
    /// The key derived from the keystore MAC key (an agent on no device's root, or a log from
    /// before device keys), the current one.
    Derived { fingerprint: String },
    /// One of the keys before the current one: `index` of `of` (oldest first).
    Earlier {
        index: usize,
        of: usize,
        fingerprint: String,
    },
}

impl Signer {
    fn to_json(&self) -> Value {
        match self {
            Signer::Device { id, fingerprint } => {
                json!({"key": "device", "device": id, "fingerprint": fingerprint})
            }
            Signer::Derived { fingerprint } => {
                json!({"key": "derived", "fingerprint": fingerprint})
            }
            Signer::Earlier {
                index,
                of,
                fingerprint,
            } => json!({"key": "earlier", "index": index, "of": of, "fingerprint": fingerprint}),
        }
    }
}

/// The key's x coordinate, its first 16 hex digits (of the SEC1 compressed form after the
/// sign byte): enough for a person to tell keys apart.
fn key_fingerprint(k: &keyward_identity::PublicKey) -> String {
    hex::encode(k.to_sec1_compressed().get(1..9).unwrap_or_default())
}

fn signed_by(
    r: &keyward_audit::Report,
    trust: &Trust,
    info: Option<&keyward_proto::ops::AuditInfoResult>,
) -> Option<Signer> {
    let i = r.signed_by?;
    if i < trust.previous.len() {
        return Some(Signer::Earlier {
            index: i + 1,
            of: trust.previous.len(),
            fingerprint: key_fingerprint(&trust.previous[i]),
        });
    }
    let fingerprint = key_fingerprint(trust.key.as_ref()?);
    Some(match info.and_then(|i| i.key_device.clone()) {
        Some(id) => Signer::Device { id, fingerprint },
        None => Signer::Derived { fingerprint },
    })
}

fn signer_text(s: &Option<Signer>) -> String {
    match s {
        Some(Signer::Device { id, fingerprint }) => {
            format!("by this device's key (device {id}, key {fingerprint})")
        }
        Some(Signer::Derived { fingerprint }) => format!(
            "by the keystore's derived audit key (key {fingerprint}; this agent runs on no device's root)"
        ),
        Some(Signer::Earlier {
            index,
            of,
            fingerprint,
        }) => format!(
            "by an earlier audit key ({index} of {of} before the current one, key {fingerprint}), not by the current key"
        ),
        None => "by an unknown key".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_764_547_200_000 + 3_723_000), "2025-12-01T01:02:03Z");
    }

    #[test]
    fn since_takes_seconds_or_an_age() {
        assert_eq!(since_ms("100", 0).ok(), Some(100_000));
        assert_eq!(
            since_ms("2h", 10_000_000).ok(),
            Some(10_000_000 - 7_200_000)
        );
        assert!(since_ms("2w", 0).is_err());
        assert!(since_ms("", 0).is_err());
    }
}
