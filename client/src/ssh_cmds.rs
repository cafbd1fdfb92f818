//! `keyward ssh ...` and `keyward keypair ssh ...`: the SSH-agent socket from the shell.
//!
//! `ssh env` prints the line that points SSH tools at the agent (`eval "$(keyward ssh env)"`);
//! it asks the running agent where its SSH socket is, and falls back to the default path when no
//! agent answers. This module must never print anything but the socket path and key metadata.

use crate::cli::{out, Failure, Out};
use clap::{Args, Subcommand};
use keyward_client::proto::ops::{KeyInfo, SshMode};
use keyward_client::Client;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum SshCmd {
    /// Print `export SSH_AUTH_SOCK=...` for the agent's SSH socket (for `eval`).
    Env {
        /// fish syntax (`set -gx SSH_AUTH_SOCK ...`).
        #[arg(long, conflicts_with = "csh")]
        fish: bool,
        /// csh/tcsh syntax (`setenv SSH_AUTH_SOCK ...`).
        #[arg(long)]
        csh: bool,
    },
}

#[derive(Args)]
pub struct KeypairSshCmd {
    pub id: String,
    /// Offer it to SSH clients.
    #[arg(long, conflicts_with_all = ["off", "confirm"])]
    pub on: bool,
    /// Stop offering it (the keypair stays).
    #[arg(long, conflicts_with = "confirm")]
    pub off: bool,
    /// Offer it, and ask for confirmation before each signature.
    #[arg(long)]
    pub confirm: bool,
}

/// POSIX-shell single quoting, only when needed.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%=,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub async fn ssh(socket: Option<PathBuf>, cmd: &SshCmd) -> Result<Option<Out>, Failure> {
    let SshCmd::Env { fish, csh } = cmd;
    let path = keyward_client::proto::paths::socket_path(socket);
    let ssh_sock = match Client::connect(&path).await {
        Ok(c) => match &c.hello_info().ssh_socket {
            Some(s) => s.clone(),
            None => {
                return Err(
                    "the agent does not serve an SSH socket ([ssh] enabled = false)"
                        .to_string()
                        .into(),
                )
            }
        },
        // No agent running: where it will listen (the same precedence the agent uses).
        Err(_) => keyward_client::proto::paths::ssh_socket_path(None, &path)
            .display()
            .to_string(),
    };
    let q = quote(&ssh_sock);
    let line = if *fish {
        format!("set -gx SSH_AUTH_SOCK {q};\n")
    } else if *csh {
        format!("setenv SSH_AUTH_SOCK {q};\n")
    } else {
        format!("export SSH_AUTH_SOCK={q};\n")
    };
    Ok(Some(out(line, json!({ "ssh_socket": ssh_sock }))))
}

pub async fn keypair_ssh(c: &Client, cmd: &KeypairSshCmd) -> Result<Out, Failure> {
    let mode = match (cmd.on, cmd.off, cmd.confirm) {
        (_, true, _) => SshMode::Off,
        (_, _, true) => SshMode::Confirm,
        (true, _, _) => SshMode::On,
        _ => return Err("give one of --on, --off or --confirm".to_string().into()),
    };
    let k = c.keypair_ssh(&cmd.id, mode).await?;
    let j = serde_json::to_value(&k).map_err(|e| e.to_string())?;
    let text = match k.ssh_mode {
        Some(m) => format!(
            "{} offered to SSH{}\n{}",
            k.id,
            if m == SshMode::Confirm {
                " (confirm each use)"
            } else {
                ""
            },
            k.ssh
                .as_deref()
                .map(|s| format!("{s}\n"))
                .unwrap_or_default()
        ),
        None => format!("{} not offered to SSH\n", k.id),
    };
    Ok(out(text, j))
}

/// The `keypair show` lines about SSH.
pub fn show_lines(k: &KeyInfo) -> String {
    let mut s = String::new();
    if let (Some(line), Some(fp)) = (&k.ssh, &k.ssh_fingerprint) {
        let mode = match k.ssh_mode {
            Some(SshMode::Confirm) => "offered, confirm each use",
            Some(_) => "offered",
            None => "not offered",
        };
        s.push_str(&format!("ssh:     {mode}\n{line}\n{fp}\n"));
    }
    s
}
