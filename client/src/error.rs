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
}

impl ClientError {
    /// The agent's error code, when the agent refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Agent { body, .. } => Some(body.code),
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
