//! The SSH door: `keywardd` speaking the OpenSSH agent protocol (RFC 9987 and OpenSSH's
//! `PROTOCOL.agent` extensions) on a second socket, beside the CBOR socket.
//!
//! - [`frame`]: our own framing (4-byte length, at most 256 KiB); never trusts a length.
//! - [`server`]: the accept loop and one task per connection (peer uid check, sequential
//!   requests, clean close on bad frames); it survives accept errors.
//! - [`requests`]: decoding one message (with `ssh-agent-lib`'s types) and answering it.
//! - [`keys`]: which keys are offered and how they sign: keypairs marked for SSH (wrapped under a
//!   KEK, or on the token) through the [`Hierarchy`](crate::hierarchy::Hierarchy), and keys added
//!   with a lifetime or destination constraints, kept in memory only.
//! - [`restrict`]: session binding and destination constraints, enforced as OpenSSH does.
//! - [`confirm`]: asking the user (an `SSH_ASKPASS`-compatible program) before a signature.
//!
//! Key and signature encodings come from the `ssh-key` crate; nothing here writes SSH key or
//! signature formats by hand. This module must never log or return private key material, never
//! delete a keypair that was not added through the SSH door, and never sign while the agent or
//! the door is locked.
#![forbid(unsafe_code)]

pub mod confirm;
pub mod frame;
pub mod keys;
pub mod requests;
pub mod restrict;
pub mod server;

use thiserror::Error;

/// Why the SSH door refused or failed a request. Every one is answered `SSH_AGENT_FAILURE` (the
/// protocol has no error detail) and logged with this text.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SshError {
    #[error("malformed request: {0}")]
    Malformed(#[from] ssh_agent_lib::proto::Error),
    #[error("SSH encoding: {0}")]
    Encoding(#[from] ssh_encoding::Error),
    #[error("SSH key: {0}")]
    Key(#[from] ssh_key::Error),
    #[error(transparent)]
    Agent(#[from] crate::error::AgentError),
    #[error(transparent)]
    Keystore(#[from] crate::keystore::KeystoreError),
    #[error("the SSH door is locked (ssh-add -X unlocks it)")]
    DoorLocked,
    #[error("no such identity")]
    UnknownKey,
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("not confirmed by the user: {0}")]
    NotConfirmed(String),
}

/// The SSH door's settings (`[ssh]` in the config).
#[derive(Clone, Default)]
pub struct SshSettings {
    /// The confirmation program (`SSH_ASKPASS` protocol), when `[ssh] askpass` names one: it
    /// is used even when a pinentry is configured.
    pub askpass: Option<std::path::PathBuf>,
    /// The agent's pinentry (`[prompt]`): without `[ssh] askpass`, confirmations are asked
    /// through its `CONFIRM` dialog. Without either, `$SSH_ASKPASS`, else `ssh-askpass`.
    pub pinentry: Option<std::sync::Arc<crate::prompt::Prompter>>,
    /// The policy file's rules, checked before a signature (`sign`) and a listing
    /// (`keypair.list`).
    pub policy: std::sync::Arc<crate::policy::PolicyState>,
    /// The audit log, when the agent keeps one: every request is appended (door `ssh`).
    pub audit: Option<std::sync::Arc<crate::audit::Audit>>,
}

impl std::fmt::Debug for SshSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSettings")
            .field("askpass", &self.askpass)
            .field("pinentry", &self.pinentry.is_some())
            .finish()
    }
}
