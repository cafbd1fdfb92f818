//! Error codes: the part of an error a program matches on.
//!
//! Every failed request gets `{code, message}`: `code` is one of [`ErrorCode`], stable across
//! versions; `message` is for people and may change. Messages never carry secrets (PINs, keys,
//! plaintexts): the agent builds them from the operation and the kind of failure only.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not a CBOR item, or not a request map.
    Malformed,
    /// The frame's length prefix is over the limit.
    FrameTooLarge,
    /// The request map has missing, extra or mistyped fields (`id`, `op`, `args`).
    InvalidRequest,
    /// The agent has no operation of that name.
    UnknownOp,
    /// The operation's arguments are missing, unknown or of the wrong type.
    InvalidArgs,
    /// The data is over what one request can carry (see `MAX_PLAINTEXT`), or the answer
    /// would be over the frame limit.
    TooLarge,
    /// An operation other than `hello` came before `hello` on this connection.
    HelloRequired,
    /// The client speaks a protocol version this agent does not.
    UnsupportedVersion,
    /// The peer is not the agent's user.
    PermissionDenied,
    /// The agent is at its connection cap (`[limits] max_connections`, bounded by its
    /// descriptor limit): this connection is closed at once; try again when others have closed.
    Busy,
    /// The connection did not say `hello` in time, or a frame that had begun did not arrive
    /// whole in time: the agent closes the connection.
    Timeout,
    /// There is no root yet: run `init`.
    NotInitialized,
    /// A root exists already; `init` never makes a second.
    AlreadyInitialized,
    /// The agent is locked: `unlock` first.
    Locked,
    /// The PIN or passphrase was wrong. `attempts_left` says how many remain.
    PinIncorrect,
    /// Too many wrong PINs in a row: wait `retry_after_ms` before the next try.
    PinBackoff,
    /// The attempt limit is used up: the agent refuses PINs until an administrator resets it.
    PinLocked,
    /// No key with that id (of that kind).
    NotFound,
    /// The request names no key and more than one would fit: name one.
    Ambiguous,
    /// The key was created non-exportable.
    NotExportable,
    /// A key with that id or name exists already.
    AlreadyExists,
    /// The key exists but is of the wrong kind or purpose for this operation.
    WrongKey,
    /// A signature, delegation chain or sealed message does not verify (tampered, expired,
    /// revoked, or not for us).
    VerifyFailed,
    /// The key exists but is retired or revoked.
    KeyInactive,
    /// Authentication of the ciphertext failed, or it is not a ciphertext for this agent.
    DecryptFailed,
    /// The ciphertext is under a DEK version below the DEK's minimum (`dek.min_version`):
    /// that version no longer decrypts.
    VersionRetired,
    /// The token or card refused or failed the operation.
    TokenError,
    /// The token or card is not reachable (removed, or its service is down).
    TokenUnavailable,
    /// The keystore could not be read or written.
    KeystoreError,
    /// A keystore record (or the stored PIN counter) was changed outside the agent: its MAC
    /// under the keystore integrity key is missing or wrong. The message names the record.
    KeystoreTampered,
    /// A bug or an unexpected state in the agent.
    Internal,
    /// The user cancelled the agent's PIN or confirmation prompt (pinentry).
    Cancelled,
    /// The agent needed to ask the user (pinentry) and nobody could be asked: the program
    /// failed to start or draw, or the prompt timed out.
    PromptUnavailable,
    /// A rule of the agent's policy file refused this client the operation (or asked for a
    /// confirmation nobody gave). The message names the rule (its index and name).
    PolicyDenied,
    /// The agent started moments ago and SQLite's full check of its keystore has not finished
    /// yet: try again shortly (`keyward --json status` shows `keystore_check`).
    KeystoreChecking,
    /// The agent's audit log cannot be written (disk full, read-only, removed) and the config
    /// requires it (`[audit] required`, the default): key operations are refused until it can.
    AuditUnavailable,
    /// The key's usage limits do not allow this use (`--usage`), or its confirmation was not
    /// given. The message names the key and the usage.
    UsageDenied,
    /// The key's `not_after` has passed: it is refused for every use.
    KeyExpired,
    /// `key.limits` asked to widen a key's limits (add a usage, drop confirmation, a later or
    /// no `not_after`): limits only narrow.
    LimitsWidened,
    /// The keystore's database cannot be reached (down, refusing, or not answering within its
    /// connect timeout): nothing was changed; retry when it is back. Keys already open in the
    /// agent keep working.
    KeystoreUnavailable,
    /// Another agent changed the record since it was read (a shared keystore's optimistic
    /// concurrency): nothing was changed; retry.
    Conflict,
    /// A code this client does not know (from a newer agent).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidArgs => "invalid_args",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::NotInitialized => "not_initialized",
            ErrorCode::AlreadyInitialized => "already_initialized",
            ErrorCode::Locked => "locked",
            ErrorCode::PinIncorrect => "pin_incorrect",
            ErrorCode::PinBackoff => "pin_backoff",
            ErrorCode::PinLocked => "pin_locked",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Ambiguous => "ambiguous",
            ErrorCode::NotExportable => "not_exportable",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::WrongKey => "wrong_key",
            ErrorCode::VerifyFailed => "verify_failed",
            ErrorCode::KeyInactive => "key_inactive",
            ErrorCode::DecryptFailed => "decrypt_failed",
            ErrorCode::VersionRetired => "version_retired",
            ErrorCode::TokenError => "token_error",
            ErrorCode::TokenUnavailable => "token_unavailable",
            ErrorCode::KeystoreError => "keystore_error",
            ErrorCode::KeystoreTampered => "keystore_tampered",
            ErrorCode::Internal => "internal",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::PromptUnavailable => "prompt_unavailable",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::KeystoreChecking => "keystore_checking",
            ErrorCode::AuditUnavailable => "audit_unavailable",
            ErrorCode::UsageDenied => "usage_denied",
            ErrorCode::KeyExpired => "key_expired",
            ErrorCode::LimitsWidened => "limits_widened",
            ErrorCode::KeystoreUnavailable => "keystore_unavailable",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `err` member of a failed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// With `pin_incorrect`: how many attempts remain before `pin_locked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_left: Option<u32>,
    /// With `pin_backoff` (and `pin_incorrect` when a wait starts): milliseconds to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            attempts_left: None,
            retry_after_ms: None,
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(n) = self.attempts_left {
            write!(f, " ({n} attempts left)")?;
        }
        if let Some(ms) = self.retry_after_ms {
            write!(f, " (retry in {:.1} s)", ms as f64 / 1000.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_names() {
        for code in [
            ErrorCode::PinBackoff,
            ErrorCode::FrameTooLarge,
            ErrorCode::NotFound,
        ] {
            let mut buf = Vec::new();
            ciborium::into_writer(&code, &mut buf).unwrap();
            let v: ciborium::Value = ciborium::from_reader(&buf[..]).unwrap();
            assert_eq!(v.as_text(), Some(code.as_str()));
        }
    }

    #[test]
    fn unknown_codes_from_newer_agents_decode_as_unknown() {
        let mut buf = Vec::new();
        ciborium::into_writer(&"quantum_flux", &mut buf).unwrap();
        let c: ErrorCode = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(c, ErrorCode::Unknown);
    }
}
