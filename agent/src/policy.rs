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

/// The key id a request's (not yet typed) arguments name, if any: read in place from their
/// bytes (any CBOR encoding of the text, definite or indefinite, is read the same).
pub fn key_id_of(args: &keyward_proto::Args) -> Option<std::borrow::Cow<'_, str>> {
    args.text_field(KEY_FIELDS)
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
    use ciborium::Value;

    fn args(entries: &[(&str, &str)]) -> keyward_proto::Args {
        encoded(&Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::Text(k.to_string()), Value::Text(v.to_string())))
                .collect(),
        ))
    }

    fn encoded(v: &Value) -> keyward_proto::Args {
        keyward_proto::Args::serialized(v).expect("encodes")
    }

    #[test]
    fn key_id_from_args() {
        let id = |a: &keyward_proto::Args| key_id_of(a).map(|c| c.into_owned());
        assert_eq!(id(&args(&[("id", "a")])).as_deref(), Some("a"));
        assert_eq!(
            id(&args(&[("kek", "k"), ("dek", "d")])).as_deref(),
            Some("d")
        );
        assert_eq!(id(&args(&[("key", "s"), ("x", "y")])).as_deref(), Some("s"));
        assert_eq!(
            id(&args(&[("to", "n"), ("sign_with", "s")])).as_deref(),
            Some("s")
        );
        assert_eq!(id(&args(&[("kek", "k")])).as_deref(), Some("k"));
        assert_eq!(id(&args(&[("label", "l")])), None);
        assert_eq!(id(&encoded(&Value::Null)), None);
        let not_text = Value::Map(vec![(Value::Text("id".into()), Value::Integer(3.into()))]);
        assert_eq!(id(&encoded(&not_text)), None);
        // The id as indefinite-length text is the same id (a rule must not be dodged by it).
        let indefinite = [0xa1, 0x62, b'i', b'd', 0x7f, 0x61, b'a', 0x61, b'b', 0xff];
        let r = keyward_proto::Request::from_cbor(&{
            let mut f = vec![0xa3, 0x62, b'i', b'd', 0x01, 0x62, b'o', b'p', 0x61, b'x'];
            f.extend(*b"\x64args");
            f.extend(indefinite);
            f
        })
        .expect("parses");
        assert_eq!(id(&r.args).as_deref(), Some("ab"));
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
