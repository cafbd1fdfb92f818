//! The SSH-agent socket: the accept loop, and one OS thread per connection.
//!
//! The socket is bound with the CBOR socket's rules (`server::bind`: 0700 directory, 0600
//! socket, stale-socket check). Each connection's peer uid (SO_PEERCRED) must be ours, else it is
//! closed unanswered, as OpenSSH's agent does. Requests on a connection are answered in order
//! (the protocol has no request ids); connections run in parallel. A bad length (0, or over
//! 256 KiB) or a truncated frame closes that connection cleanly; an unknown or malformed message
//! gets FAILURE and the connection stays usable. Accept errors (EMFILE, ...) are logged (at most
//! once per 10 s) and the loop backs off and goes on.
//!
//! Why a thread per connection: an SSH client sends one request and waits for the answer, so a
//! connection is a strict ping-pong. Served as a tokio task, every request cost an `epoll_wait`
//! wake-up of a parked worker, futex traffic between workers and a `read` that only said "empty"
//! on top of the request's own `read` and `write`, a large share of the agent's CPU per signature
//! with one client. On its own thread with a blocking std socket a request is one `read`, the
//! answer and one `write`; a request that may block (the keystore, the token, a confirmation
//! prompt) blocks only its own connection, so it is answered right there too, with no hop to a
//! blocking pool. The accept loop stays on the runtime. With `[server] spin_us` (50 µs by
//! default; 0: off), a connection in a loop peeks for its next request without blocking for that long
//! after each answer before its blocking read (`server::Spin`: never for an idle connection).
//!
//! Limits are the CBOR socket's (`[limits]`, `server::Limits`): one connection cap counts both
//! sockets (an SSH connection over it is closed at once, unanswered) and so also bounds the
//! threads; a frame once begun must arrive whole within `frame_timeout` (slowloris: the socket's
//! read timeout), while an idle connection has no deadline (SSH clients keep theirs open); an
//! answer the client does not take within `write_timeout` (the socket's write timeout) ends the
//! connection. When the door closes (agent shutdown) every open connection is shut down, which
//! ends its thread. This module must never end the agent, or serve another user.

use super::frame::{self, FrameError};
use super::requests::{Conn, SshAgent};
use crate::server::{Bound, Limits, Spinner, Throttled};
use std::collections::HashMap;
use std::os::unix::net::UnixStream as StdStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::unix::UCred;
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

/// The open connections' sockets (shared with their threads: no extra descriptor), so that
/// closing the door can shut them down and end their threads.
#[derive(Default)]
struct Live {
    next: u64,
    socks: HashMap<u64, Arc<StdStream>>,
}

fn live(m: &Mutex<Live>) -> std::sync::MutexGuard<'_, Live> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes a connection off [`Live`] when its thread ends (also by a panic).
struct Registered {
    live: Arc<Mutex<Live>>,
    key: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        live(&self.live).socks.remove(&self.key);
    }
}

/// Accept connections until `shutdown` resolves; then stop accepting, remove the socket and
/// shut down the open connections. `limits` is the CBOR socket's (the same connection cap, frame
/// and write deadlines).
pub async fn serve(
    bound: Bound,
    agent: Arc<SshAgent>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let uid = nix::unistd::geteuid().as_raw();
    let limits = Arc::new(limits);
    let open = Arc::new(Mutex::new(Live::default()));
    let (mut accept_log, mut busy_log, mut start_log) =
        (Throttled::new(), Throttled::new(), Throttled::new());
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
                    if let Err(e) = start(stream, slot, &agent, uid, &limits, &open) {
                        if let Some(n) = start_log.tick() {
                            tracing::warn!(error = %e, suppressed = n, "ssh: could not serve a connection; closed it");
                        }
                    }
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
    for (_, sock) in live(&open).socks.drain() {
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Check the peer and hand an admitted connection to its own thread. `Ok` also when the peer
/// was refused (logged here); `Err` when the connection could not be served (the socket could
/// not be made blocking, no thread could be started): it is closed, the agent goes on.
fn start(
    stream: UnixStream,
    slot: Slot,
    agent: &Arc<SshAgent>,
    uid: u32,
    limits: &Arc<Limits>,
    open: &Arc<Mutex<Live>>,
) -> std::io::Result<()> {
    let cred = match stream.peer_cred() {
        Ok(c) if c.uid() == uid => c,
        Ok(c) => {
            tracing::warn!(
                peer_uid = c.uid(),
                "ssh: refused a connection from another user"
            );
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(error = %e, "ssh: could not read peer credentials; refusing");
            return Ok(());
        }
    };
    let sock = stream.into_std()?;
    sock.set_nonblocking(false)?;
    // A zero timeout means "none" to the socket: at least 1 ms.
    sock.set_write_timeout(Some(limits.write_timeout.max(Duration::from_millis(1))))?;
    let sock = Arc::new(sock);
    let key = {
        let mut l = live(open);
        l.next += 1;
        let key = l.next;
        l.socks.insert(key, sock.clone());
        key
    };
    let registered = Registered {
        live: open.clone(),
        key,
    };
    let (agent, limits) = (agent.clone(), limits.clone());
    std::thread::Builder::new()
        .name("ssh-conn".into())
        .spawn(move || {
            let _registered = registered;
            connection(sock, &agent, cred, &limits);
            drop(slot);
        })
        .map(drop)
}

/// One connection, on its own thread: frames in, answers out, in order, until the client
/// leaves, a frame is bad or late, or an answer is not taken in time.
fn connection(sock: Arc<StdStream>, agent: &SshAgent, cred: UCred, limits: &Limits) {
    let mut conn = Conn {
        peer: crate::peer::Peer::from_cred(cred.uid(), cred.pid()),
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
    let mut frames = frame::Reader::new();
    let mut spinner = Spinner::new(limits.spin.clone());
    loop {
        if !frames.pending() {
            spin(&sock, &mut spinner);
        }
        let next = frames.next_blocking(&sock, limits.frame_timeout);
        spinner.arrived();
        let body = match next {
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
        // A panic while answering ends this connection only (as a failed blocking task did).
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match super::requests::parse(&body) {
                // A key already in memory signs at once; anything else (the keystore, the
                // token, a confirmation prompt) may block, which holds up only this connection.
                Ok(req) => agent
                    .respond_now(&conn, &req)
                    .unwrap_or_else(|| agent.respond(&mut conn, req)),
                Err(e) => SshAgent::malformed(&body, &e),
            }
        }));
        let Ok(answer) = answered else {
            tracing::error!("ssh: request handler failed");
            break;
        };
        if !send(&sock, &answer, limits) {
            break;
        }
        spinner.answered();
    }
}

/// Spin for the next request after an answer ([`Spinner::spin`]) with non-blocking peeks of
/// one byte: the blocking read that follows then finds the request there and does not sleep.
fn spin(sock: &StdStream, spinner: &mut Spinner) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let mut byte = [0u8; 1];
    spinner.spin(|| {
        use nix::errno::Errno;
        use nix::sys::socket::{recv, MsgFlags};
        match recv(fd, &mut byte, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK) {
            Ok(n) => Some(n > 0),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => None,
            Err(_) => Some(false),
        }
    });
}

/// Write one answer within the write deadline; false ends the connection.
fn send(sock: &StdStream, answer: &[u8], limits: &Limits) -> bool {
    let deadline = limits.write_timeout.max(Duration::from_millis(1));
    match frame::write_blocking(sock, answer, deadline) {
        Ok(()) => true,
        Err(FrameError::Timeout(_)) => {
            tracing::warn!("ssh: a client did not take its answer in time; closing the connection");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "ssh: writing an answer failed");
            false
        }
    }
}
