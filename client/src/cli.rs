//! Plumbing every CLI command shares: failures, output, files and stdin.

use keyward_client::proto::ops::{KeyInfo, Purpose};
use keyward_client::ClientError;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;

/// A failure the CLI reports: a message, and the agent's body when it refused.
pub struct Failure {
    pub message: String,
    pub body: Option<keyward_client::proto::ErrorBody>,
    /// For errors of the client itself (`unsafe_socket`, `timeout`): the `--json` code.
    pub client_code: Option<&'static str>,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure {
            message: e.to_string(),
            body: e.body().cloned(),
            client_code: e.client_code(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            body: None,
            client_code: None,
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

pub fn write_output(path: &Option<PathBuf>, data: &[u8]) -> Result<(), Failure> {
    match path {
        Some(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
                .map_err(|e| format!("writing {}: {e}", p.display()))?;
            f.write_all(data)
                .map_err(|e| format!("writing {}: {e}", p.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(data)
                .and_then(|_| out.flush())
                .map_err(|e| format!("writing stdout: {e}"))?;
        }
    }
    Ok(())
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
