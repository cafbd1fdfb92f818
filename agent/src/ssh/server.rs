//! The SSH-agent socket: the accept loop and one task per connection.
//!
//! The socket is bound with the CBOR socket's rules (`server::bind`: 0700 directory, 0600
//! socket, stale-socket check). Each connection's peer uid (SO_PEERCRED) must be ours, else it is
//! closed unanswered, as OpenSSH's agent does. Requests on a connection are answered in order
//! (the protocol has no request ids); connections run in parallel. A bad length (0, or over
//! 256 KiB) or a truncated frame closes that connection cleanly; an unknown or malformed message
//! gets FAILURE and the connection stays usable. Accept errors (EMFILE, ...) are logged (at most
//! once per 10 s) and the loop backs off and goes on.
//!
//! Limits are the CBOR socket's (`[limits]`, `server::Limits`): one connection cap counts both
//! sockets (an SSH connection over it is closed at once, unanswered); a frame once begun must
//! arrive whole within `frame_timeout` (slowloris), while an idle connection has no deadline
//! (SSH clients keep theirs open); an answer the client does not take within `write_timeout`
//! ends the connection. This module must never end the agent, or serve another user.

use super::frame::{self, FrameError};
use super::requests::{Conn, SshAgent};
use crate::server::{Bound, Limits, Throttled};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::OwnedSemaphorePermit;

/// A connection's place under the connection cap shared with the CBOR socket, held for the
/// connection's life.
struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

/// Every accepted SSH connection passes here first: a slot under the shared cap, or `None`
/// (the connection is then closed unanswered: the protocol has no "busy" message).
fn admit(limits: &Limits) -> Option<Slot> {
    limits
        .connections
        .clone()
        .try_acquire_owned()
        .ok()
        .map(Slot)
}

/// Accept connections until `shutdown` resolves; then stop accepting and remove the socket.
/// `limits` is the CBOR socket's (the same connection cap, frame and write deadlines).
pub async fn serve(
    bound: Bound,
    agent: Arc<SshAgent>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let uid = nix::unistd::geteuid().as_raw();
    let limits = Arc::new(limits);
    let (mut accept_log, mut busy_log) = (Throttled::new(), Throttled::new());
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = bound.listener().accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(10);
                    let Some(slot) = admit(&limits) else {
                        if let Some(n) = busy_log.tick() {
                            tracing::warn!(
                                cap = limits.max_connections,
                                suppressed = n,
                                "ssh: connection cap reached; closing new SSH connections"
                            );
                        }
                        drop(stream);
                        continue;
                    };
                    let (agent, limits) = (agent.clone(), limits.clone());
                    tokio::spawn(async move {
                        connection(stream, agent, uid, &limits).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    if let Some(n) = accept_log.tick() {
                        tracing::warn!(error = %e, suppressed = n, "ssh: accept failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
        }
    }
    tracing::info!(socket = %bound.path().display(), "ssh: shutting down; removing socket");
    drop(bound);
}

async fn connection(stream: UnixStream, agent: Arc<SshAgent>, uid: u32, limits: &Limits) {
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
        peer: tokio::task::spawn_blocking(move || {
            crate::peer::Peer::from_cred(cred.uid(), cred.pid())
        })
        .await
        .unwrap_or_else(|_| crate::peer::Peer::unknown()),
        ..Conn::default()
    };
    tracing::info!(
        door = "ssh",
        pid = conn.peer.pid,
        uid = conn.peer.uid,
        exe = conn.peer.exe_text().as_deref().unwrap_or("?"),
        unit = conn.peer.unit.as_deref().unwrap_or("-"),
        "client connected"
    );
    let (mut rd, mut wr) = stream.into_split();
    let mut frames = frame::Reader::new();
    loop {
        let body = match frames.next(&mut rd, limits.frame_timeout).await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(FrameError::Io(e)) => {
                tracing::debug!(error = %e, "ssh: connection read failed");
                break;
            }
            Err(e @ FrameError::Timeout(_)) => {
                tracing::warn!(error = %e, "ssh: closing a connection (slow frame)");
                break;
            }
            Err(e) => {
                tracing::info!(error = %e, "ssh: closing a connection after a bad frame");
                break;
            }
        };
        let req = match super::requests::parse(&body) {
            Ok(r) => r,
            Err(e) => {
                let answer = SshAgent::malformed(&body, &e);
                if !send(&mut wr, &answer, limits).await {
                    break;
                }
                continue;
            }
        };
        // A key already in memory signs here; anything that may block (the keystore, the token,
        // a confirmation prompt) goes to a blocking thread.
        let answer = match agent.respond_now(&conn, &req) {
            Some(answer) => answer,
            None => {
                let a = agent.clone();
                let joined = tokio::task::spawn_blocking(move || {
                    let answer = a.respond(&mut conn, req);
                    (conn, answer)
                })
                .await;
                match joined {
                    Ok((c, answer)) => {
                        conn = c;
                        answer
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "ssh: request handler failed");
                        break;
                    }
                }
            }
        };
        if !send(&mut wr, &answer, limits).await {
            break;
        }
    }
}

/// Write one answer within the write deadline; false ends the connection.
async fn send(wr: &mut OwnedWriteHalf, answer: &[u8], limits: &Limits) -> bool {
    match tokio::time::timeout(limits.write_timeout, frame::write(wr, answer)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "ssh: writing an answer failed");
            false
        }
        Err(_) => {
            tracing::warn!("ssh: a client did not take its answer in time; closing the connection");
            false
        }
    }
}
