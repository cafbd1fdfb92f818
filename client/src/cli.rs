//! Plumbing every CLI command shares: failures, output, files and stdin.

use keyward_client::proto::ops::{KeyInfo, KeyList, ListArgs, Purpose};
use keyward_client::ClientError;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;

/// A failure the CLI reports: a message, and the agent's body when it refused.
pub struct Failure {
    pub message: String,
    pub body: Option<keyward_client::proto::ErrorBody>,
    /// For errors of the client itself (`unsafe_socket`, `timeout`, stream errors): the
    /// `--json` code.
    pub client_code: Option<&'static str>,
    /// For stream errors about one chunk: its index (from 0), printed in `--json` errors.
    pub chunk: Option<u64>,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let chunk = match &e {
            ClientError::Stream(s) => s.chunk(),
            _ => None,
        };
        Failure {
            message: e.to_string(),
            body: e.body().cloned(),
            client_code: e.client_code(),
            chunk,
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            body: None,
            client_code: None,
            chunk: None,
        }
    }
}

pub fn read_input(path: &Option<PathBuf>) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    match path {
        Some(p) => {
            buf = std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading stdin: {e}"))?;
        }
    }
    Ok(buf)
}

impl From<keyward_envelope::stream::StreamError> for Failure {
    fn from(e: keyward_envelope::stream::StreamError) -> Self {
        ClientError::Stream(e).into()
    }
}

/// Where a command's output goes: a temporary file beside `-o FILE`, renamed over it only when
/// the command succeeded (so a failed command never leaves a half-written file), or stdout.
pub enum Sink {
    File {
        tmp: tempfile::NamedTempFile,
        path: PathBuf,
    },
    /// An existing path that is not a regular file (`/dev/null`, a FIFO): written in place.
    Special(std::fs::File),
    Stdout(std::io::StdoutLock<'static>),
}

impl Sink {
    pub fn open(path: &Option<PathBuf>) -> Result<Sink, Failure> {
        Ok(match path {
            Some(p) if std::fs::metadata(p).is_ok_and(|m| !m.is_file()) => Sink::Special(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|e| format!("writing {}: {e}", p.display()))?,
            ),
            Some(p) => {
                let dir = match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => std::path::Path::new("."),
                };
                // Mode 0600, in the target's directory (so the rename stays on one filesystem).
                let tmp = tempfile::Builder::new()
                    .prefix(".keyward-")
                    .suffix(".tmp")
                    .tempfile_in(dir)
                    .map_err(|e| format!("writing {}: {e}", p.display()))?;
                Sink::File {
                    tmp,
                    path: p.clone(),
                }
            }
            None => Sink::Stdout(std::io::stdout().lock()),
        })
    }

    pub fn is_stdout(&self) -> bool {
        matches!(self, Sink::Stdout(_))
    }

    /// Flush, and for a file rename it into place.
    pub fn commit(self) -> Result<(), Failure> {
        match self {
            Sink::File { mut tmp, path } => {
                tmp.flush()
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                tmp.persist(&path)
                    .map_err(|e| format!("writing {}: {}", path.display(), e.error))?;
            }
            Sink::Stdout(mut out) => {
                out.flush().map_err(|e| format!("writing stdout: {e}"))?;
            }
            Sink::Special(mut f) => {
                f.flush().map_err(|e| format!("writing the output: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File { tmp, .. } => tmp.write(buf),
            Sink::Stdout(o) => o.write(buf),
            Sink::Special(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File { tmp, .. } => tmp.flush(),
            Sink::Stdout(o) => o.flush(),
            Sink::Special(f) => f.flush(),
        }
    }
}

pub fn write_output(path: &Option<PathBuf>, data: &[u8]) -> Result<(), Failure> {
    let mut sink = Sink::open(path)?;
    let what = match path {
        Some(p) => p.display().to_string(),
        None => "stdout".into(),
    };
    sink.write_all(data)
        .map_err(|e| format!("writing {what}: {e}"))?;
    sink.commit()
}

pub fn key_table(keys: &[KeyInfo]) -> String {
    if keys.is_empty() {
        return "(none)\n".into();
    }
    let mut s = format!(
        "{:<36}  {:<8}  {:<8}  {:<10}  {:<6}  LABEL\n",
        "ID", "STATE", "PURPOSE", "EXPORTABLE", "SCHEME"
    );
    for k in keys {
        let purpose = match k.purpose {
            Some(Purpose::Personal) => "personal",
            Some(Purpose::Sharing) => "sharing",
            None => "-",
        };
        s.push_str(&format!(
            "{:<36}  {:<8}  {:<8}  {:<10}  {:<6}  {}\n",
            k.id,
            k.state,
            purpose,
            if k.exportable { "yes" } else { "no" },
            k.scheme,
            k.label.as_deref().unwrap_or("")
        ));
    }
    s
}

/// DEKs as a table, with their newest and minimum versions.
pub fn dek_table(keys: &[KeyInfo]) -> String {
    if keys.is_empty() {
        return "(none)\n".into();
    }
    let mut s = format!(
        "{:<36}  {:<8}  {:<8}  {:<10}  {:<7}  {:<3}  LABEL\n",
        "ID", "STATE", "PURPOSE", "EXPORTABLE", "VERSION", "MIN"
    );
    for k in keys {
        let purpose = match k.purpose {
            Some(Purpose::Personal) => "personal",
            Some(Purpose::Sharing) => "sharing",
            None => "-",
        };
        s.push_str(&format!(
            "{:<36}  {:<8}  {:<8}  {:<10}  {:<7}  {:<3}  {}\n",
            k.id,
            k.state,
            purpose,
            if k.exportable { "yes" } else { "no" },
            k.version,
            k.min_version.unwrap_or(1),
            k.label.as_deref().unwrap_or("")
        ));
    }
    s
}

/// `{"keys": [...]}` for `--json`, with public keys as hex and their did:key.
pub fn keys_json(keys: &[KeyInfo]) -> Value {
    let list: Vec<Value> = keys
        .iter()
        .map(|k| {
            let mut v = serde_json::to_value(k).unwrap_or(Value::Null);
            if let Some(c) = &k.certificate {
                v["certificate"] = Value::String(crate::identity_cmds::cert_pem(c));
            }
            if let Some(pk) = &k.public_key {
                v["public_key"] = Value::String(hex::encode(pk));
                let did = match k.algorithm.as_deref() {
                    Some("ed25519") => keyward_identity::ed25519::Ed25519Public::from_bytes(pk)
                        .ok()
                        .map(|p| p.to_did_key()),
                    Some("rsa") => None,
                    _ => keyward_identity::PublicKey::from_sec1_bytes(pk)
                        .ok()
                        .map(|p| p.to_did_key()),
                };
                if let Some(d) = did {
                    v["did"] = Value::String(d);
                }
            }
            v
        })
        .collect();
    serde_json::json!({ "keys": list })
}

/// What a command prints: text for people, JSON for programs.
pub struct Out {
    pub text: String,
    pub json: Value,
}

pub fn out(text: impl Into<String>, json: Value) -> Out {
    Out {
        text: text.into(),
        json,
    }
}

/// `--limit` and `--after` of the list commands.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PageOpts {
    /// Print one page of at most N keys (1 to 1000) instead of every key; with --json, the
    /// answer's `next` is the cursor for the following page.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Start after this cursor (the `next` of an earlier page).
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
}

impl PageOpts {
    /// With `--limit`: that one page. Without: every page from `--after` (or the start), as one
    /// list with no `next`. `page` fetches one page for the given paging arguments.
    pub async fn fetch<F, Fut>(&self, op: &str, mut page: F) -> Result<KeyList, ClientError>
    where
        F: FnMut(ListArgs) -> Fut,
        Fut: std::future::Future<Output = Result<KeyList, ClientError>>,
    {
        match self.limit {
            Some(limit) => {
                page(ListArgs {
                    limit: Some(limit),
                    after: self.after.clone(),
                })
                .await
            }
            None => {
                keyward_client::all_pages(op, self.after.clone(), |after| {
                    page(ListArgs { limit: None, after })
                })
                .await
            }
        }
    }
}

/// A list's `--json` object: `keys`, and `next` when there are more pages (only with
/// `--limit`). In text mode the cursor goes to stderr, so stdout stays the table.
pub fn list_out(list: &KeyList, text: String) -> Out {
    let mut json = keys_json(&list.keys);
    if let Some(next) = &list.next {
        json["next"] = Value::String(next.clone());
        eprintln!("more keys: --after {next}");
    }
    out(text, json)
}
