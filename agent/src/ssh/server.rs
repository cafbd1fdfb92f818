//! The SSH-agent socket: the accept loop and one task per connection.
//!
//! The socket is bound with the CBOR socket's rules (`server::bind`: 0700 directory, 0600
//! socket, stale-socket check). Each connection's peer uid (SO_PEERCRED) must be ours, else it is
//! closed unanswered, as OpenSSH's agent does. Requests on a connection are answered in order
//! (the protocol has no request ids); connections run in parallel. A bad length (0, or over
//! 256 KiB) or a truncated frame closes that connection cleanly; an unknown or malformed message
//! gets FAILURE and the connection stays usable. Accept errors (EMFILE, ...) are logged and the
//! loop goes on. This module must never end the agent, or serve another user.

use super::frame::{self, FrameError};
use super::requests::{Conn, SshAgent};
use crate::server::Bound;
use std::sync::Arc;
use tokio::net::UnixStream;

/// A connection's place under the connection cap, held for the connection's life (the cap's
/// permit goes in here).
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        // Where the shared cap's permit is released.
    }
}

/// Where a shared connection cap (the hardening work's limits) plugs in: every accepted SSH
/// connection passes here first. Returns a guard held for the connection's life, or `None` to
/// refuse it. Today: no cap.
fn admit() -> Option<Slot> {
    Some(Slot)
}

/// Accept connections until `shutdown` resolves; then stop accepting and remove the socket.
pub async fn serve(
    bound: Bound,
    agent: Arc<SshAgent>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let uid = nix::unistd::geteuid().as_raw();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = bound.listener().accept() => match accepted {
                Ok((stream, _)) => {
                    let Some(guard) = admit() else {
                        tracing::warn!("ssh: connection refused: too many connections");
                        continue;
                    };
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        connection(stream, agent, uid).await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ssh: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!(socket = %bound.path().display(), "ssh: shutting down; removing socket");
    drop(bound);
}

async fn connection(stream: UnixStream, agent: Arc<SshAgent>, uid: u32) {
    let cred = match stream.peer_cred() {
        Ok(c) if c.uid() == uid => c,
        Ok(c) => {
            tracing::warn!(
                peer_uid = c.uid(),
                "ssh: refused a connection from another user"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "ssh: could not read peer credentials; refusing");
            return;
        }
    };
    let mut conn = Conn {
        peer_pid: cred.pid(),
        ..Conn::default()
    };
    let (mut rd, mut wr) = stream.into_split();
    loop {
        let body = match frame::read(&mut rd).await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(FrameError::Io(e)) => {
                tracing::debug!(error = %e, "ssh: connection read failed");
                break;
            }
            Err(e) => {
                tracing::info!(error = %e, "ssh: closing a connection after a bad frame");
                break;
            }
        };
        let a = agent.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let answer = a.handle(&mut conn, &body);
            (conn, answer)
        })
        .await;
        let answer = match joined {
            Ok((c, answer)) => {
                conn = c;
                answer
            }
            Err(e) => {
                tracing::error!(error = %e, "ssh: request handler failed");
                break;
            }
        };
        if frame::write(&mut wr, &answer).await.is_err() {
            break;
        }
    }
}
