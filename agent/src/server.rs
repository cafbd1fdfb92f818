//! The socket: binding it safely, checking peers, and running connections.
//!
//! The socket lives in a 0700 directory and is itself 0600; every connection's peer uid
//! (SO_PEERCRED) must equal the agent's, or it gets `permission_denied` and is closed. A
//! connection must start with `hello`; after that its requests run concurrently (pipelining) and
//! responses go back as they finish, each with its request's id. A bad frame gets a typed error:
//! malformed CBOR and bad requests leave the connection usable; an oversized or truncated frame
//! ends it (the stream cannot be resynchronised), never the agent.

use crate::service::Service;
use keyward_proto::ops::Op;
use keyward_proto::{frame, ErrorBody, ErrorCode, Request, Response, MAX_FRAME};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// Requests one connection may have in flight; further ones wait for a slot.
const MAX_IN_FLIGHT: usize = 64;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("socket {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("socket directory {0} is not safe: {1}")]
    UnsafeDir(PathBuf, String),
    #[error("another agent is already listening on {0}")]
    InUse(PathBuf),
}

/// A bound socket that removes its file when dropped.
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
}

impl Bound {
    /// The listening socket (the SSH door's accept loop uses it).
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Create the socket directory (0700, ours) and bind the socket (0600).
pub fn bind(path: &Path) -> Result<Bound, ServerError> {
    let io = |op, source| ServerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("create directory for", e))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| io("inspect directory of", e))?;
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(ServerError::UnsafeDir(
            dir.to_path_buf(),
            format!("owned by uid {}, not {uid}", meta.uid()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        // Ours: tighten it rather than refuse (e.g. a directory made by an older version).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("chmod directory of", e))?;
    }
    if path.exists() {
        // A live agent answers; a stale socket from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|e| io("remove stale", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("chmod", e))?;
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
    })
}

/// Accept connections until `shutdown` resolves; then stop accepting and remove the socket.
pub async fn serve(
    bound: Bound,
    service: Service,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let uid = nix::unistd::geteuid().as_raw();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = bound.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = service.clone();
                    tokio::spawn(async move { connection(stream, service, uid).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!(socket = %bound.path.display(), "shutting down; removing socket");
    drop(bound);
}

/// The connection's write half, shared by everyone who answers on it. Each answer is written by
/// the task that produced it (no hop through a writer task: on 2 cores every cross-thread wake-up
/// is a measurable share of a ~100 µs request).
struct Replies {
    wr: tokio::sync::Mutex<OwnedWriteHalf>,
}

impl Replies {
    /// Write one response. An answer over the frame limit becomes a typed `too_large` error:
    /// never dropped silently.
    async fn send(&self, resp: Response) {
        let bytes = match resp.to_cbor() {
            Ok(b) if b.len() <= MAX_FRAME => b,
            Ok(b) => {
                let msg = format!(
                    "the answer ({} bytes) is over the {MAX_FRAME}-byte frame limit",
                    b.len()
                );
                tracing::warn!(id = ?resp.id, "{msg}");
                match Response::err(resp.id, ErrorBody::new(ErrorCode::TooLarge, msg)).to_cbor() {
                    Ok(b) => b,
                    Err(_) => return,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "encoding a response failed");
                return;
            }
        };
        let mut wr = self.wr.lock().await;
        // A peer that went away cannot be answered; its requests are simply dropped.
        let _ = frame::write(&mut *wr, &bytes, MAX_FRAME).await;
    }
}

async fn connection(stream: UnixStream, service: Service, uid: u32) {
    let (mut rd, wr) = stream.into_split();
    let replies = Arc::new(Replies {
        wr: tokio::sync::Mutex::new(wr),
    });
    let peer = rd.as_ref().peer_cred().map(|c| c.uid());
    match peer {
        Ok(p) if p == uid => serve_requests(&mut rd, &replies, service).await,
        other => {
            match other {
                Ok(p) => tracing::warn!(peer_uid = p, "refused a connection from another user"),
                Err(e) => tracing::warn!(error = %e, "could not read peer credentials; refusing"),
            }
            // Answer the peer's first request (its hello) by id, so that the refusal is the
            // answer to that request and not a frame racing it; a peer that sends nothing
            // readable in time gets the refusal with no id.
            let first = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                frame::read(&mut rd, MAX_FRAME),
            )
            .await;
            let id = match first {
                Ok(Ok(Some(bytes))) => Request::from_cbor(&bytes).ok().map(|r| r.id),
                _ => None,
            };
            let msg = format!("this agent serves uid {uid} only");
            replies
                .send(Response::err(
                    id,
                    ErrorBody::new(ErrorCode::PermissionDenied, msg),
                ))
                .await;
            {
                use tokio::io::AsyncWriteExt;
                let _ = replies.wr.lock().await.shutdown().await;
            }
            // Read what else the peer sends until it closes or a short time passes, so that
            // closing does not reset the connection before the peer has read why it was refused.
            let mut sink = [0u8; 4096];
            let drain = async {
                use tokio::io::AsyncReadExt;
                while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
        }
    }
}

async fn serve_requests(
    rd: &mut tokio::net::unix::OwnedReadHalf,
    replies: &Arc<Replies>,
    service: Service,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut greeted = false;
    loop {
        let bytes = match frame::read(rd, MAX_FRAME).await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(frame::FrameError::TooLarge { len, max }) => {
                let msg = format!("frame of {len} bytes is over the {max}-byte limit");
                replies
                    .send(Response::err(
                        None,
                        ErrorBody::new(ErrorCode::FrameTooLarge, msg),
                    ))
                    .await;
                break;
            }
            Err(frame::FrameError::Truncated) => {
                let msg = "the connection closed in the middle of a frame";
                replies
                    .send(Response::err(
                        None,
                        ErrorBody::new(ErrorCode::Malformed, msg),
                    ))
                    .await;
                break;
            }
            Err(_) => break,
        };
        let req = match Request::from_cbor(&bytes) {
            Ok(r) => r,
            Err((id, body)) => {
                replies.send(Response::err(id, body)).await;
                continue;
            }
        };
        if Op::from_name(&req.op) == Some(Op::Hello) {
            // Answered before the next frame is read: nothing else runs until it succeeds.
            let resp = run(service.clone(), req).await;
            greeted |= resp.ok.is_some(); // a refused hello (version, args) opens nothing
            replies.send(resp).await;
            continue;
        }
        if !greeted {
            let msg = "the first request on a connection must be `hello`";
            replies
                .send(Response::err(
                    Some(req.id),
                    ErrorBody::new(ErrorCode::HelloRequired, msg),
                ))
                .await;
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (replies, service) = (replies.clone(), service.clone());
        tokio::spawn(async move {
            let resp = run(service, req).await;
            replies.send(resp).await;
            drop(permit);
        });
    }
}

/// Run one request on a blocking thread (token calls block).
async fn run(service: Service, req: Request) -> Response {
    let id = req.id;
    tokio::task::spawn_blocking(move || service.handle(&req))
        .await
        .unwrap_or_else(|_| {
            Response::err(
                Some(id),
                ErrorBody::new(ErrorCode::Internal, "request handler failed"),
            )
        })
}
