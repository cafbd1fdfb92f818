//! Confirmation before a signature: the prompt, and asking through an `SSH_ASKPASS`-compatible
//! program (`SSH_ASKPASS_PROMPT=confirm`; exit status 0 means yes), as OpenSSH's agent does.
//!
//! The prompt names the key (comment and fingerprint), the requesting process
//! ([`crate::peer::Peer::describe`]: pid, executable, command line and systemd unit) and, when the connection is bound
//! to a session, the destination. This module must never treat a program that cannot be run, a
//! timeout or any exit status but 0 as consent.

use super::SshError;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a prompt may stay open before it counts as a denial.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// The question shown to the user.
pub fn prompt(
    comment: &str,
    fingerprint: &str,
    process: &str,
    destination: Option<&str>,
) -> String {
    let key = if comment.is_empty() {
        fingerprint.to_string()
    } else {
        format!("{comment} {fingerprint}")
    };
    let mut p = format!("Allow use of key {key}?\nRequested by {process}");
    if let Some(d) = destination {
        p.push_str(&format!("\nfor {d}"));
    }
    p
}

/// Ask the user; `Ok(())` only when the program ran and exited 0 within the timeout.
pub fn ask(program: Option<&PathBuf>, question: &str) -> Result<(), SshError> {
    let program = program
        .cloned()
        .or_else(|| {
            std::env::var_os("SSH_ASKPASS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("ssh-askpass"));
    let mut child = Command::new(&program)
        .arg(question)
        .env("SSH_ASKPASS_PROMPT", "confirm")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| SshError::NotConfirmed(format!("cannot run {}: {e}", program.display())))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(SshError::NotConfirmed(format!("denied ({st})"))),
            Ok(None) if start.elapsed() > CONFIRM_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SshError::NotConfirmed("no answer in time".into()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(SshError::NotConfirmed(format!(
                    "waiting for the prompt: {e}"
                )))
            }
        }
    }
}
