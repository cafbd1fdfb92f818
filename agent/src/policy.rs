//! Enforcing the policy file (`policy = "policy.toml"` in the config; the rules themselves are
//! the `keyward-policy` crate): one check per request, in one place per door
//! ([`crate::service::Service::handle`] for the CBOR socket and the PKCS#11 module,
//! `ssh::requests` before a signature or a listing), and the `SIGHUP` reload.
//!
//! Without a policy file every request is allowed, as before. `confirm` asks through the agent's
//! pinentry and is a denial when nobody can be asked. This module must never let a request
//! through that a rule denies, treat a failed or missing prompt as consent, or replace a working
//! policy by one that does not parse: a bad file on reload keeps the old one (logged).

use crate::peer::Peer;
use crate::prompt::Prompter;
use ciborium::Value;
pub use keyward_policy::{Decision, Door, Effect, KeyFacts, Policy, PolicyError, Query};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why the policy refused a request: the deciding rule and, for `confirm`, what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub op: String,
    /// `rule N ("name")` or `the default rule`.
    pub rule: String,
    /// For `confirm`: why there was no yes.
    pub not_confirmed: Option<String>,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.not_confirmed {
            None => write!(
                f,
                "policy {} denies `{}` to this client",
                self.rule, self.op
            ),
            Some(why) => write!(
                f,
                "policy {} asks to confirm `{}`, and it was not confirmed ({why})",
                self.rule, self.op
            ),
        }
    }
}

/// The policy in force (none, or the last file that loaded), shared by every door.
#[derive(Debug, Default)]
pub struct PolicyState {
    path: Option<PathBuf>,
    current: RwLock<Option<Arc<Policy>>>,
}

impl PolicyState {
    /// No policy file: everything is allowed.
    pub fn none() -> PolicyState {
        PolicyState::default()
    }

    /// Load the configured file (start-up: a bad file is an error, the agent does not start).
    pub fn load(path: Option<&Path>) -> Result<PolicyState, PolicyError> {
        let Some(path) = path else {
            return Ok(PolicyState::none());
        };
        let policy = Policy::load(path)?;
        tracing::info!(
            policy = %path.display(),
            rules = policy.rules().len(),
            default = policy.default_effect().name(),
            "policy loaded"
        );
        Ok(PolicyState {
            path: Some(path.to_path_buf()),
            current: RwLock::new(Some(Arc::new(policy))),
        })
    }

    /// Read the file again; on any error keep the policy in force and log why.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(path) = &self.path else {
            tracing::info!("SIGHUP: no policy file configured; nothing to reload");
            return Ok(());
        };
        match Policy::load(path) {
            Ok(p) => {
                tracing::info!(
                    policy = %path.display(),
                    rules = p.rules().len(),
                    default = p.default_effect().name(),
                    "policy reloaded"
                );
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(p));
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    policy = %path.display(),
                    error = %error_chain(&e),
                    "policy reload failed; keeping the policy in force"
                );
                Err(e)
            }
        }
    }

    /// The policy in force, if any.
    pub fn current(&self) -> Option<Arc<Policy>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the policy in force looks at a key's record (`label`, `kind`, `purpose`): when
    /// not, a caller passes [`KeyFacts`] with the id only and need not read the record.
    pub fn names_key_attributes(&self) -> bool {
        self.current().is_some_and(|p| p.names_key_attributes())
    }

    /// Decide one request; `Ok` when it may go on. `confirm` asks `prompter` with `what()` (a
    /// sentence naming the operation and key, built only then) and the peer's description.
    pub fn check(
        &self,
        peer: &Peer,
        door: Door,
        op: &str,
        key: Option<KeyFacts<'_>>,
        what: impl FnOnce() -> String,
        prompter: Option<&Prompter>,
    ) -> Result<(), Denied> {
        let Some(policy) = self.current() else {
            return Ok(());
        };
        let exe = peer.exe_text();
        let q = Query {
            exe: exe.as_deref(),
            uid: peer.uid,
            unit: peer.unit.as_deref(),
            op,
            door,
            key,
        };
        let d = policy.decide(&q);
        let denied = |not_confirmed| Denied {
            op: op.to_string(),
            rule: d.rule_text(),
            not_confirmed,
        };
        let result = match d.effect {
            Effect::Allow => Ok(()),
            Effect::Deny => Err(denied(None)),
            Effect::Confirm => {
                let question = format!(
                    "Allow {}?\nRequested by {} through the {} door ({}).",
                    what(),
                    peer.describe(),
                    door.name(),
                    d.rule_text()
                );
                match prompter.map(|p| p.confirm(&question)) {
                    None => Err(denied(Some("no pinentry is configured".into()))),
                    Some(Ok(true)) => Ok(()),
                    Some(Ok(false)) => Err(denied(Some("refused".into()))),
                    Some(Err(e)) => Err(denied(Some(e.to_string()))),
                }
            }
        };
        match &result {
            Ok(()) if d.effect == Effect::Allow => {}
            Ok(()) => {
                tracing::info!(op, door = door.name(), rule = %d.rule_text(), client = %peer.describe(), "policy: confirmed")
            }
            Err(e) => tracing::warn!(op, door = door.name(), client = %peer.describe(), "{e}"),
        }
        result
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The argument fields that name the key an operation uses, in the order they are looked for:
/// the key itself first (`dek`, `key`, `id`, `sign_with`), then a parent (`kek`: the KEK a new
/// DEK or keypair goes under).
const KEY_FIELDS: &[&str] = &["dek", "key", "id", "sign_with", "kek"];

/// The key id a request's (decoded, not yet typed) arguments name, if any.
pub fn key_id_of(args: &Value) -> Option<&str> {
    let Value::Map(entries) = args else {
        return None;
    };
    KEY_FIELDS.iter().find_map(|f| {
        entries.iter().find_map(|(k, v)| match (k, v) {
            (Value::Text(k), Value::Text(v)) if k == f => Some(v.as_str()),
            _ => None,
        })
    })
}

/// Reload the policy on every `SIGHUP`.
pub fn reload_on_sighup(state: Arc<PolicyState>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let s = state.clone();
            let _ = tokio::task::spawn_blocking(move || s.reload()).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(entries: &[(&str, &str)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::Text(k.to_string()), Value::Text(v.to_string())))
                .collect(),
        )
    }

    #[test]
    fn key_id_from_args() {
        assert_eq!(key_id_of(&args(&[("id", "a")])), Some("a"));
        assert_eq!(key_id_of(&args(&[("kek", "k"), ("dek", "d")])), Some("d"));
        assert_eq!(key_id_of(&args(&[("key", "s"), ("x", "y")])), Some("s"));
        assert_eq!(
            key_id_of(&args(&[("to", "n"), ("sign_with", "s")])),
            Some("s")
        );
        assert_eq!(key_id_of(&args(&[("kek", "k")])), Some("k"));
        assert_eq!(key_id_of(&args(&[("label", "l")])), None);
        assert_eq!(key_id_of(&Value::Null), None);
        let not_text = Value::Map(vec![(Value::Text("id".into()), Value::Integer(3.into()))]);
        assert_eq!(key_id_of(&not_text), None);
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("policy.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn deny_confirm_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[[rule]]\nname = \"no export\"\nops = [\"dek.export\"]\neffect = \"deny\"\n[[rule]]\nops = [\"sign\"]\neffect = \"confirm\"\n",
        );
        let st = PolicyState::load(Some(&p)).unwrap();
        let me = Peer::from_cred(0, Some(std::process::id() as i32));
        let e = st
            .check(&me, Door::Socket, "dek.export", None, || "x".into(), None)
            .unwrap_err();
        assert_eq!(e.rule, "rule 1 (\"no export\")");
        assert!(e.to_string().contains("denies `dek.export`"), "{e}");
        assert!(st
            .check(&me, Door::Socket, "encrypt", None, || "x".into(), None)
            .is_ok());
        // Confirm with nobody to ask is a denial.
        let e = st
            .check(&me, Door::Ssh, "sign", None, || "x".into(), None)
            .unwrap_err();
        assert_eq!(
            e.not_confirmed.as_deref(),
            Some("no pinentry is configured")
        );
        // A bad file keeps the old policy.
        write(dir.path(), "[[rule]]\neffect = \"perhaps\"\n");
        assert!(st.reload().is_err());
        assert!(st
            .check(&me, Door::Socket, "dek.export", None, || "x".into(), None)
            .is_err());
        // A good one replaces it.
        write(dir.path(), "[default]\neffect = \"allow\"\n");
        st.reload().unwrap();
        assert!(st
            .check(&me, Door::Socket, "dek.export", None, || "x".into(), None)
            .is_ok());
    }

    #[test]
    fn no_policy_allows_everything() {
        let st = PolicyState::load(None).unwrap();
        assert!(st
            .check(
                &Peer::unknown(),
                Door::Ssh,
                "sign",
                None,
                || "x".into(),
                None
            )
            .is_ok());
        assert!(st.reload().is_ok());
    }
}
