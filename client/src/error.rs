//! Client errors: connecting, the transport, and the agent's own typed errors.

use keyward_proto::{ErrorBody, ErrorCode};
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to the agent at {path}: {source} (is keywardd running? KEYWARD_SOCK selects the socket)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op}: connection to the agent failed: {detail}")]
    Transport { op: String, detail: String },
    #[error("{op}: the agent closed the connection")]
    Closed { op: String },
    #[error("{op}: unexpected answer from the agent: {detail}")]
    Protocol { op: String, detail: String },
    #[error("{op}: {body}")]
    Agent { op: String, body: ErrorBody },
    /// The socket is not safe to talk to: its directory is not ours or is writable by others,
    /// or the process listening on it runs as another user. Nothing was sent.
    #[error("refusing the agent socket {path}: {reason}; nothing was sent (a socket must be in a directory of your own that only you can write, served by an agent running as you)")]
    UnsafeSocket { path: PathBuf, reason: String },
    /// A stream that does not decrypt or could not be written (the error names the chunk).
    #[error("{0}")]
    Stream(#[from] keyward_envelope::stream::StreamError),
    /// No answer within the deadline (`ClientOptions`).
    #[error("{op}: timed out after {after:?} waiting for the agent")]
    Timeout {
        op: String,
        after: std::time::Duration,
    },
}

impl ClientError {
    /// The agent's error code, when the agent refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Agent { body, .. } => Some(body.code),
            _ => None,
        }
    }

    /// A short code for errors that come from the client itself rather than the agent
    /// (`unsafe_socket`, `timeout`); `None` for agent errors and other client errors.
    pub fn client_code(&self) -> Option<&'static str> {
        match self {
            ClientError::UnsafeSocket { .. } => Some("unsafe_socket"),
            ClientError::Timeout { .. } => Some("timeout"),
            ClientError::Stream(e) => Some(e.code()),
            _ => None,
        }
    }

    /// The agent's error body, when the agent refused the request.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Agent { body, .. } => Some(body),
            _ => None,
        }
    }
}
