//! Asking the user through pinentry (Assuan): the PIN when a request needs the root unlocked and
//! the agent is locked, and confirmations.
//!
//! Configured by `[prompt] pinentry = "/usr/bin/pinentry-gnome3"` (`timeout_s`, default 60;
//! `tty`, the terminal a curses/tty pinentry draws on). Without it the agent never prompts and a
//! locked agent answers `locked` as before. A configured program is always started: whether
//! anyone can be asked is learned from the program itself (it fails, or the timeout passes),
//! never guessed from `DISPLAY` or a tty. Cancel is `cancelled`; nobody to ask is
//! `prompt_unavailable`, at once rather than a hang.
//!
//! The `pinentry` crate blocks, so each prompt runs on its own thread and the caller waits at
//! most the timeout (plus a grace period) for it; callers are request handlers, already off the
//! async workers. Concurrent requests share one prompt: they queue on a gate, and whoever gets it
//! after a prompt finds the agent unlocked (done) or takes that prompt's failure (cancelled,
//! unavailable). Descriptions are truncated well under the crate's 1000-byte Assuan line limit
//! (the crate panics past it). The PIN goes from the crate's `SecretString` into a zeroizing
//! [`Pin`] and straight to `unlock`; it is never logged, cached or written anywhere. This module
//! must never prompt without a configured program, nor keep a PIN.

use crate::error::AgentError;
use crate::hierarchy::Hierarchy;
use keyward_proto::secret::Pin;
use keyward_proto::ErrorCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use thiserror::Error;

/// Bytes of description sent in SETDESC (percent-escaping can triple a byte; the crate asserts
/// every Assuan line is under 1000 bytes).
const MAX_DESC: usize = 300;
/// How much longer than its own timeout a pinentry may take before we stop waiting.
const GRACE: Duration = Duration::from_secs(2);

/// `[prompt]` in the config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// The pinentry program (a name on PATH or a path). Unset: the agent never prompts.
    pub pinentry: Option<PathBuf>,
    /// Seconds a prompt waits for the user (default 60).
    pub timeout_s: Option<u16>,
    /// `OPTION ttyname=` for terminal pinentries (default: the crate's `/dev/tty`).
    pub tty: Option<String>,
}

/// Why nobody could be asked.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum Unavailable {
    #[error("the pinentry program was not found")]
    NotFound,
    #[error("the pinentry program failed (no display or terminal to draw on?)")]
    Failed,
    #[error("nobody answered within the prompt timeout")]
    TimedOut,
    #[error("the pinentry program answered with text that is not UTF-8")]
    Encoding,
    #[error("no pinentry is configured (`[prompt] pinentry`)")]
    NotConfigured,
}

/// How a prompt failed.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum PromptError {
    #[error("the PIN prompt was cancelled")]
    Cancelled,
    #[error("nobody could be asked for the PIN: {0}")]
    Unavailable(Unavailable),
}

impl PromptError {
    pub fn code(&self) -> ErrorCode {
        match self {
            PromptError::Cancelled => ErrorCode::Cancelled,
            PromptError::Unavailable(_) => ErrorCode::PromptUnavailable,
        }
    }
}

fn classify(e: pinentry::Error) -> PromptError {
    match e {
        pinentry::Error::Cancelled => PromptError::Cancelled,
        pinentry::Error::Timeout => PromptError::Unavailable(Unavailable::TimedOut),
        pinentry::Error::Encoding(_) => PromptError::Unavailable(Unavailable::Encoding),
        other => {
            tracing::warn!(error = %other, "pinentry failed");
            PromptError::Unavailable(Unavailable::Failed)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Cut `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The configured pinentry, and the gate that makes concurrent requests share one prompt.
pub struct Prompter {
    program: PathBuf,
    timeout: u16,
    tty: Option<String>,
    /// Held while a prompt is up (and while its PIN is tried).
    gate: Mutex<()>,
    /// (prompts finished, how the last one failed).
    last: Mutex<(u64, Option<PromptError>)>,
}

impl Prompter {
    /// `None` when no program is configured.
    pub fn new(cfg: &PromptConfig) -> Option<Prompter> {
        Some(Prompter {
            program: cfg.pinentry.clone()?,
            timeout: cfg.timeout_s.unwrap_or(60).max(1),
            tty: cfg.tty.clone(),
            gate: Mutex::new(()),
            last: Mutex::new((0, None)),
        })
    }

    /// Run one pinentry interaction on its own thread; wait at most the timeout plus grace.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PathBuf, u16, Option<&str>) -> Result<T, PromptError> + Send + 'static,
    ) -> Result<T, PromptError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (program, timeout, tty) = (self.program.clone(), self.timeout, self.tty.clone());
        let spawned = std::thread::Builder::new()
            .name("pinentry".into())
            .spawn(move || {
                let _ = tx.send(f(&program, timeout, tty.as_deref()));
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the prompt thread");
            return Err(PromptError::Unavailable(Unavailable::Failed));
        }
        rx.recv_timeout(Duration::from_secs(self.timeout.into()) + GRACE)
            .unwrap_or(Err(PromptError::Unavailable(Unavailable::TimedOut)))
    }

    /// Ask for a PIN with `desc` (truncated) as the description.
    pub fn get_pin(&self, desc: &str) -> Result<Pin, PromptError> {
        let desc = truncate(desc, MAX_DESC).to_string();
        self.run(move |program, timeout, tty| {
            let mut input = pinentry::PassphraseInput::with_binary(program)
                .ok_or(PromptError::Unavailable(Unavailable::NotFound))?;
            input
                .with_title("Keyward")
                .with_description(&desc)
                .with_prompt("PIN:")
                .with_timeout(timeout);
            if let Some(t) = tty {
                input.with_unix_options(pinentry::unix::Options::builder().tty_name(t).build());
            }
            let secret = input.interact().map_err(classify)?;
            Ok(Pin::new(secret.expose_secret()))
        })
    }

    /// Ask the user to confirm `desc` (truncated): `Ok(true)` confirmed, `Ok(false)` refused.
    pub fn confirm(&self, desc: &str) -> Result<bool, PromptError> {
        let desc = truncate(desc, MAX_DESC).to_string();
        self.run(move |program, timeout, tty| {
            let mut dialog = pinentry::ConfirmationDialog::with_binary(program)
                .ok_or(PromptError::Unavailable(Unavailable::NotFound))?;
            dialog.with_title("Keyward").with_timeout(timeout);
            if let Some(t) = tty {
                dialog.with_unix_options(pinentry::unix::Options::builder().tty_name(t).build());
            }
            dialog.confirm(&desc).map_err(classify)
        })
    }

    /// Unlock `h` with a PIN asked through pinentry, for the operation `op` that the process
    /// `who` (its pid, executable and command line) sent; requests arriving meanwhile wait for
    /// this one prompt and share its outcome.
    pub fn unlock(&self, h: &Hierarchy, op: &'static str, who: &str) -> Result<(), AgentError> {
        let seen = lock(&self.last).0;
        let _gate = lock(&self.gate);
        if !h.is_locked() {
            return Ok(());
        }
        {
            let last = lock(&self.last);
            if last.0 != seen {
                if let Some(e) = last.1 {
                    return Err(e.into());
                }
            }
        }
        // Who asks comes last: truncation cuts its command line, not the token or attempts.
        let desc = format!(
            "Keyward needs the PIN of {} to answer `{op}`. Attempts left: {}. Asked by {who}",
            h.describe(),
            h.pin_attempts_left()
        );
        tracing::info!(op, "asking for the PIN through pinentry");
        let answer = self.get_pin(&desc);
        {
            let mut last = lock(&self.last);
            last.0 += 1;
            last.1 = answer.as_ref().err().copied();
        }
        h.unlock(&answer?)
    }
}
