//! `keyward policy check`: validate a policy file and explain which rule a request would hit,
//! offline (no agent). The rules are the agent's own (`keyward-policy`), so what this prints is
//! what the agent decides for the same facts; it never talks to the agent.

use crate::cli::{out, Failure, Out};
use clap::{Args, Subcommand};
use keyward_policy::{Door, KeyFacts, Policy, Query};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file; with --op, say which rule a request with these facts hits.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// The policy file.
    #[arg(long)]
    policy: PathBuf,
    /// The client's executable (as the agent reads /proc/PID/exe).
    #[arg(long)]
    exe: Option<String>,
    #[arg(long)]
    uid: Option<u32>,
    /// The client's systemd unit (e.g. `foo.service`).
    #[arg(long)]
    unit: Option<String>,
    /// The protocol op (`sign`, `dek.export`, ...).
    #[arg(long)]
    op: Option<String>,
    /// The key id the request names.
    #[arg(long)]
    key: Option<String>,
    /// The key's label, kind and purpose (as the keystore record has them).
    #[arg(long, requires = "key")]
    label: Option<String>,
    #[arg(long, requires = "key")]
    kind: Option<String>,
    #[arg(long, requires = "key")]
    purpose: Option<String>,
    /// The front door: socket (default), ssh or pkcs11.
    #[arg(long, default_value = "socket")]
    door: String,
}

pub fn policy(cmd: &PolicyCmd) -> Result<Out, Failure> {
    let PolicyCmd::Check(a) = cmd;
    let p = Policy::load(&a.policy).map_err(|e| {
        let mut m = format!("{}: {e}", a.policy.display());
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            m.push_str(&format!(": {s}"));
            src = s.source();
        }
        Failure::from(m)
    })?;
    let mut text = format!(
        "{}: valid, {} rule(s), default {}\n",
        a.policy.display(),
        p.rules().len(),
        p.default_effect().name()
    );
    for (i, r) in p.rules().iter().enumerate() {
        let name = r.name().map(|n| format!(" ({n:?})")).unwrap_or_default();
        text.push_str(&format!("  rule {}{name}: {r}\n", i + 1));
    }
    let mut j = json!({
        "policy": a.policy.display().to_string(),
        "valid": true,
        "rules": p.rules().len(),
        "default": p.default_effect().name(),
    });
    let Some(op) = &a.op else {
        return Ok(out(text, j));
    };
    if keyward_proto::ops::Op::from_name(op).is_none() {
        return Err(format!("unknown op `{op}`").into());
    }
    let door = Door::from_name(&a.door)
        .ok_or_else(|| format!("unknown door `{}` (socket, ssh or pkcs11)", a.door))?;
    let q = Query {
        exe: a.exe.as_deref(),
        uid: a.uid,
        unit: a.unit.as_deref(),
        op,
        door,
        key: a.key.as_deref().map(|id| KeyFacts {
            id,
            label: a.label.as_deref(),
            kind: a.kind.as_deref(),
            purpose: a.purpose.as_deref(),
        }),
    };
    let (skipped, d) = p.explain(&q);
    for (i, why) in &skipped {
        text.push_str(&format!("  rule {i} does not match: {why}\n"));
    }
    text.push_str(&format!("{}: {} `{op}`\n", d.rule_text(), d.effect.name()));
    j["decision"] = json!({
        "effect": d.effect.name(),
        "rule": d.rule,
        "name": d.name,
        "text": d.rule_text(),
    });
    j["skipped"] = skipped
        .iter()
        .map(|(i, why)| json!({ "rule": i, "criterion": why }))
        .collect();
    Ok(out(text, j))
}
