//! `--usage`, `--confirm` and `--not-after` on `dek create` and `keypair create`, and
//! `keyward dek limit ID` / `keyward keypair limit ID` (the `key.limits` op), which only narrow.
//!
//! Dates are passed to the agent as written (RFC 3339); the agent parses them and refuses
//! malformed ones with `invalid_args`. This module must never widen a key's limits on its own.

use crate::cli::{out, Failure, Out};
use clap::{Args, ValueEnum};
use keyward_client::proto::ops::{KeyInfo, KeyLimitsArgs, KeyLimitsSpec, Usage};
use keyward_client::Client;

#[derive(Clone, Copy, ValueEnum)]
pub enum UsageArg {
    Encrypt,
    Decrypt,
    Sign,
    Derive,
    Export,
    Share,
}

impl From<UsageArg> for Usage {
    fn from(u: UsageArg) -> Usage {
        match u {
            UsageArg::Encrypt => Usage::Encrypt,
            UsageArg::Decrypt => Usage::Decrypt,
            UsageArg::Sign => Usage::Sign,
            UsageArg::Derive => Usage::Derive,
            UsageArg::Export => Usage::Export,
            UsageArg::Share => Usage::Share,
        }
    }
}

/// Usage limits given at creation.
#[derive(Args, Clone, Default)]
pub struct LimitOpts {
    /// What the key may be used for, comma-separated or repeated (default: everything the
    /// kind can do; README "Key usage limits").
    #[arg(long, value_enum, value_delimiter = ',')]
    pub usage: Option<Vec<UsageArg>>,
    /// Ask the user (pinentry; SSH: the door's confirm) before every use.
    #[arg(long)]
    pub confirm: bool,
    /// Refuse the key after this RFC 3339 date-time or date (e.g. 2027-06-30T18:00:00Z).
    #[arg(long)]
    pub not_after: Option<String>,
}

impl LimitOpts {
    /// The wire form, `None` when nothing was asked.
    pub fn spec(&self) -> Option<KeyLimitsSpec> {
        if self.usage.is_none() && !self.confirm && self.not_after.is_none() {
            return None;
        }
        Some(KeyLimitsSpec {
            usage: self.usage.as_ref().map(|u| usage_list(u)),
            confirm: self.confirm,
            not_after: self.not_after.clone(),
        })
    }
}

fn usage_list(u: &[UsageArg]) -> Vec<Usage> {
    u.iter().copied().map(Usage::from).collect()
}

/// `dek limit` / `keypair limit`: narrow a key's limits.
#[derive(Args, Clone)]
pub struct LimitCmd {
    pub id: String,
    /// The new usage set: a subset of the current one.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub usage: Option<Vec<UsageArg>>,
    /// Ask the user before every use from now on.
    #[arg(long)]
    pub confirm: bool,
    /// Refuse the key after this date (no later than one already set).
    #[arg(long)]
    pub not_after: Option<String>,
}

/// One line per limit, for people.
pub fn limits_text(k: &KeyInfo) -> String {
    let mut usage = k
        .usage_or_default()
        .iter()
        .map(|u| u.as_str())
        .collect::<Vec<_>>()
        .join(",");
    if k.usage.is_none() {
        usage.push_str(" (default)");
    }
    let not_after = k
        .not_after
        .map(keyward_client::proto::rfc3339::format)
        .unwrap_or_else(|| "-".into());
    format!(
        "usage:     {usage}\nconfirm:   {}\nnot-after: {not_after}\n",
        if k.confirm { "yes" } else { "no" }
    )
}

pub async fn limit(c: &Client, cmd: &LimitCmd) -> Result<Out, Failure> {
    let k = c
        .key_limits(&KeyLimitsArgs {
            id: cmd.id.clone(),
            usage: cmd.usage.as_ref().map(|u| usage_list(u)),
            confirm: cmd.confirm.then_some(true),
            not_after: cmd.not_after.clone(),
        })
        .await?;
    let v = serde_json::to_value(&k).map_err(|e| e.to_string())?;
    Ok(out(format!("{}\n{}", k.id, limits_text(&k)), v))
}
