//! The agent's errors, and how each becomes a wire error code.
//!
//! Messages name the operation and the kind of failure; they never carry PINs, keys or
//! plaintexts.

use crate::keystore::KeystoreError;
use crate::root::RootError;
use keyward_proto::{ErrorBody, ErrorCode};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(
        "client speaks protocol {client}, this agent speaks {}",
        keyward_proto::PROTOCOL_VERSION
    )]
    UnsupportedVersion { client: u32 },
    #[error("no root yet: run `keyward init`")]
    NotInitialized,
    #[error("a root exists already; init never makes a second one")]
    AlreadyInitialized,
    #[error("the agent is locked: run `keyward unlock` (refused: {op})")]
    Locked { op: &'static str },
    #[error("the PIN or passphrase is incorrect")]
    PinIncorrect {
        attempts_left: u32,
        retry_after_ms: Option<u64>,
    },
    #[error("too many wrong PINs: wait before trying again")]
    PinBackoff { retry_after_ms: u64 },
    #[error("the PIN attempt limit is used up: the agent refuses PINs until an administrator resets the counter (keywardd reset-pin-attempts)")]
    PinLocked,
    #[error("no {kind} with id {id}")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Ambiguous(String),
    #[error("DEK {id} was created non-exportable")]
    NotExportable { id: String },
    #[error("{kind} {id} is {state}")]
    KeyInactive {
        kind: &'static str,
        id: String,
        state: &'static str,
    },
    #[error("decrypt: {0}")]
    DecryptFailed(String),
    #[error("{0}")]
    InvalidArgs(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    WrongKey(String),
    #[error("{0}")]
    VerifyFailed(String),
    #[error(transparent)]
    Root(#[from] RootError),
    /// A keystore record (or the stored PIN counter) was changed outside the agent: its MAC
    /// under the keystore integrity key is missing or wrong.
    #[error("keystore record {id} was modified outside the agent ({what}): refusing to use it; restore the keystore from a backup")]
    KeystoreTampered { id: String, what: String },
    #[error(transparent)]
    Keystore(KeystoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<KeystoreError> for AgentError {
    fn from(e: KeystoreError) -> Self {
        match e {
            KeystoreError::Tampered { id, what } => AgentError::KeystoreTampered { id, what },
            e => AgentError::Keystore(e),
        }
    }
}

impl AgentError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AgentError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            AgentError::NotInitialized => ErrorCode::NotInitialized,
            AgentError::AlreadyInitialized => ErrorCode::AlreadyInitialized,
            AgentError::Locked { .. } => ErrorCode::Locked,
            AgentError::PinIncorrect { .. } => ErrorCode::PinIncorrect,
            AgentError::PinBackoff { .. } => ErrorCode::PinBackoff,
            AgentError::PinLocked => ErrorCode::PinLocked,
            AgentError::NotFound { .. } => ErrorCode::NotFound,
            AgentError::Ambiguous(_) => ErrorCode::Ambiguous,
            AgentError::NotExportable { .. } => ErrorCode::NotExportable,
            AgentError::KeyInactive { .. } => ErrorCode::KeyInactive,
            AgentError::DecryptFailed(_) => ErrorCode::DecryptFailed,
            AgentError::InvalidArgs(_) => ErrorCode::InvalidArgs,
            AgentError::TooLarge(_) => ErrorCode::TooLarge,
            AgentError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            AgentError::WrongKey(_) => ErrorCode::WrongKey,
            AgentError::VerifyFailed(_) => ErrorCode::VerifyFailed,
            AgentError::Root(r) => r.code(),
            AgentError::KeystoreTampered { .. } => ErrorCode::KeystoreTampered,
            AgentError::Keystore(_) => ErrorCode::KeystoreError,
            AgentError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn to_body(&self) -> ErrorBody {
        let mut b = ErrorBody::new(self.code(), self.to_string());
        match self {
            AgentError::PinIncorrect {
                attempts_left,
                retry_after_ms,
            } => {
                b.attempts_left = Some(*attempts_left);
                b.retry_after_ms = *retry_after_ms;
            }
            AgentError::PinBackoff { retry_after_ms } => b.retry_after_ms = Some(*retry_after_ms),
            _ => {}
        }
        b
    }
}
