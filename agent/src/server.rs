//! The socket: binding it safely, checking peers, and running connections.
//!
//! The socket lives in a 0700 directory and is itself 0600; every connection's peer uid
//! (SO_PEERCRED) must equal the agent's, or it gets `permission_denied` and is closed. A
//! connection must start with `hello`; after that its requests run concurrently (pipelining) and
//! responses go back as they finish, each with its request's id. A bad frame gets a typed error:
//! malformed CBOR and bad requests leave the connection usable; an oversized or truncated frame
//! ends it (the stream cannot be resynchronised), never the agent.
//!
//! Limits ([`Limits`], from `[limits]` in the config): at most `max_connections` connections,
//! bounded by the descriptor limit (the soft `RLIMIT_NOFILE` is raised to the hard one at start,
//! and `fd_reserve` descriptors are kept for the token, the keystore and logs); a connection
//! over the cap gets one `busy` frame and is closed. The cap is shared with the SSH socket
//! (`ssh::server`), which gets the same [`Limits`]. A connection must say `hello` within
//! `hello_timeout`, and a frame once begun must arrive whole within `frame_timeout`, or the
//! connection gets one `timeout` frame and is closed; after `hello`, idle connections stay open.
//! A response the client does not take within `write_timeout` ends the connection. Frames over
//! `blocking_decode_bytes` are decoded on a blocking thread, after the CBOR depth and item
//! pre-scan. Accept errors (EMFILE) back off and are logged once per interval; a spare
//! descriptor is given up to accept and refuse the waiting client, so it never hangs.
//!
//! [`Spin`] (`[server] spin_us`, 50 µs by default, 0: off; both sockets): after answering a client that
//! sends its requests back to back, a connection may poll for the next one without blocking for
//! a few microseconds before it sleeps. It must never spin for an idle connection, with more
//! looping clients than half the cores, or beyond its budget per second.

use crate::service::Service;
use keyward_proto::limits::DecodeLimits;
use keyward_proto::ops::Op;
use keyward_proto::{frame, ErrorBody, ErrorCode, Request, Response, MAX_FRAME};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

/// Connections being refused (a `busy` frame, then a short drain) at once; beyond this a
/// refused connection gets its frame and is dropped without the drain.
const REFUSING: usize = 32;

/// How often at most an accept failure or a refusal at the cap is logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The server's limits, with the connection cap already bounded by the descriptor limit.
/// Clones share one connection cap: `keywardd` hands the same `Limits` to the CBOR socket and
/// the SSH socket, so `max_connections` counts both doors together.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// The cap's permits, shared by every clone (both doors).
    pub connections: Arc<Semaphore>,
    pub hello_timeout: Duration,
    pub frame_timeout: Duration,
    pub write_timeout: Duration,
    pub decode: DecodeLimits,
    pub blocking_decode_bytes: usize,
    /// The short spin after an answer (`[server] spin_us`), shared by both doors.
    pub spin: Arc<Spin>,
}

impl Limits {
    /// Raise the soft `RLIMIT_NOFILE` to the hard limit and derive the connection cap: the
    /// configured one, but no more than the descriptors left after the reserve and the
    /// connections being refused. Logs the result.
    pub fn from_config(c: &crate::config::Limits, server: &crate::config::ServerConfig) -> Limits {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let nofile = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) => {
                if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                    hard
                } else {
                    soft
                }
            }
            Err(_) => 1024,
        };
        let budget = nofile
            .saturating_sub(c.fd_reserve)
            .saturating_sub(REFUSING as u64);
        let cap = c
            .max_connections
            .min(usize::try_from(budget).unwrap_or(usize::MAX))
            .max(1);
        if cap < c.max_connections {
            tracing::warn!(
                configured = c.max_connections,
                nofile,
                reserve = c.fd_reserve,
                "connection cap {cap}: lowered to fit RLIMIT_NOFILE"
            );
        } else {
            tracing::info!(nofile, reserve = c.fd_reserve, "connection cap {cap}");
        }
        Limits {
            max_connections: cap,
            connections: Arc::new(Semaphore::new(cap)),
            hello_timeout: Duration::from_millis(c.hello_timeout_ms),
            frame_timeout: Duration::from_millis(c.frame_timeout_ms),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            decode: DecodeLimits {
                max_depth: c.max_depth,
                max_items: c.max_items,
            },
            blocking_decode_bytes: c.blocking_decode_bytes,
            spin: Arc::new(Spin::new(Duration::from_micros(server.spin_us))),
        }
    }
}

impl Default for Limits {
    /// The config defaults, without touching the process's descriptor limit.
    fn default() -> Self {
        let c = crate::config::Limits::default();
        Limits {
            max_connections: c.max_connections,
            connections: Arc::new(Semaphore::new(c.max_connections)),
            hello_timeout: Duration::from_millis(c.hello_timeout_ms),
            frame_timeout: Duration::from_millis(c.frame_timeout_ms),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            decode: DecodeLimits {
                max_depth: c.max_depth,
                max_items: c.max_items,
            },
            blocking_decode_bytes: c.blocking_decode_bytes,
            spin: Arc::new(Spin::new(Duration::from_micros(
                crate::config::ServerConfig::default().spin_us,
            ))),
        }
    }
}

/// A request that arrives within this of the answer before it marks its connection as a client
/// in a loop (request, answer, request, ...): only such a connection spins after an answer.
const LOOP_GAP: Duration = Duration::from_micros(500);

/// Time all connections together may spend spinning per second (a tenth of one core).
const SPIN_BUDGET: Duration = Duration::from_millis(100);

/// After a spin that found no request, the connection skips spinning for this many answers at
/// most (doubling with each further miss, from 1; reset by a spin that finds one).
const MAX_SKIP: u32 = 64;

/// The short wait, polling without blocking, that a connection makes after an answer before it
/// blocks (tokio's reactor, or a blocking `read` on the SSH door): a client in a loop usually
/// sends its next request within microseconds, and reading it at once saves the agent's side of
/// the wake-up (a halted vCPU's wake-up on an idle VM is tens of microseconds).
///
/// Never spins for an idle connection: only after an answer to a request that itself came
/// within [`LOOP_GAP`] of the answer before it, and at most `max` (`[server] spin_us`, 0: off).
/// Never when more connections are in such a loop than half the cores (each looping client
/// needs a core of its own, so with 8 clients on 2 cores nobody spins), never beyond
/// [`SPIN_BUDGET`] per second for the whole process, and a connection whose spins find nothing
/// backs off ([`MAX_SKIP`]).
#[derive(Debug)]
pub struct Spin {
    max: Duration,
    /// Connections whose last request came within [`LOOP_GAP`] of the answer before it.
    looping: AtomicUsize,
    /// Most looping connections at which spinning is still allowed: half the cores, at least 1.
    max_looping: usize,
    epoch: Instant,
    /// The current budget window (whole seconds since `epoch`), and the spin time used in it.
    window: AtomicU64,
    used_ns: AtomicU64,
    /// Spins made, and spins that found the next request (for tests and debugging).
    spins: AtomicU64,
    hits: AtomicU64,
}

impl Spin {
    /// A spin of at most `max` after an answer; zero: never.
    pub fn new(max: Duration) -> Spin {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Spin {
            max,
            looping: AtomicUsize::new(0),
            max_looping: (cores / 2).max(1),
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            used_ns: AtomicU64::new(0),
            spins: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// (spins made, spins that found the next request) since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.spins.load(Ordering::Relaxed),
            self.hits.load(Ordering::Relaxed),
        )
    }

    /// Whether the budget of the current second has room left (starting a new window when a
    /// second has passed).
    fn budget_left(&self) -> bool {
        let now = self.epoch.elapsed().as_secs();
        let w = self.window.load(Ordering::Relaxed);
        if w != now
            && self
                .window
                .compare_exchange(w, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used_ns.store(0, Ordering::Relaxed);
        }
        self.used_ns.load(Ordering::Relaxed) < SPIN_BUDGET.as_nanos() as u64
    }

    fn spent(&self, d: Duration, hit: bool) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.used_ns.fetch_add(ns, Ordering::Relaxed);
        self.spins.fetch_add(1, Ordering::Relaxed);
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One connection's view of [`Spin`]: when it last answered, whether it is in a loop, its
/// back-off. Leaves the loop count when dropped.
pub(crate) struct Spinner {
    spin: Arc<Spin>,
    answered: Option<Instant>,
    looping: bool,
    skip: u32,
    next_skip: u32,
}

impl Spinner {
    pub(crate) fn new(spin: Arc<Spin>) -> Spinner {
        Spinner {
            spin,
            answered: None,
            looping: false,
            skip: 0,
            next_skip: 1,
        }
    }

    /// An answer was just written and nothing else of this connection is under way.
    pub(crate) fn answered(&mut self) {
        if !self.spin.max.is_zero() {
            self.answered = Some(Instant::now());
        }
    }

    /// A request arrived (or anything else happened on the connection): is it in a loop?
    pub(crate) fn arrived(&mut self) {
        let soon = self
            .answered
            .take()
            .is_some_and(|t| t.elapsed() <= LOOP_GAP);
        if soon != self.looping {
            self.looping = soon;
            match soon {
                true => self.spin.looping.fetch_add(1, Ordering::Relaxed),
                false => self.spin.looping.fetch_sub(1, Ordering::Relaxed),
            };
        }
    }

    /// A cheap first check: could this connection spin now at all (spin on, answered, in a
    /// loop)? The other bounds are [`Spinner::spin`]'s.
    pub(crate) fn may_spin(&self) -> bool {
        self.answered.is_some() && self.looping && !self.spin.max.is_zero()
    }

    /// How long to spin now, if at all (see [`Spin`]).
    fn allowance(&mut self) -> Option<Duration> {
        if !self.may_spin() {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        if self.spin.looping.load(Ordering::Relaxed) > self.spin.max_looping
            || !self.spin.budget_left()
        {
            return None;
        }
        Some(self.spin.max)
    }

    /// Spin: `poll` (a non-blocking attempt to read: `Some(true)` got the next request's bytes,
    /// `Some(false)` the stream ended or failed, `None` nothing yet) until it has something or
    /// the allowance runs out. Returns whether it stopped on something; no allowance: `false` at
    /// once without polling.
    pub(crate) fn spin(&mut self, mut poll: impl FnMut() -> Option<bool>) -> bool {
        let Some(max) = self.allowance() else {
            return false;
        };
        let start = Instant::now();
        let found = loop {
            if poll().is_some() {
                break true;
            }
            if start.elapsed() >= max {
                break false;
            }
            // About a microsecond between attempts (each is a system call).
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        };
        self.spin.spent(start.elapsed(), found);
        if found {
            self.next_skip = 1;
        } else {
            self.skip = self.next_skip;
            self.next_skip = (self.next_skip * 2).min(MAX_SKIP);
        }
        found
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if self.looping {
            self.spin.looping.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

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
    #[error("{0} exists and is not a socket ({1}): refusing to delete it; move it away or choose another socket path")]
    NotASocket(PathBuf, &'static str),
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "a device or other special file"
    }
}

/// A bound socket that removes its file when dropped, only if the agent made that file (an
/// inherited socket, [`Bound::inherited`], is left alone; so is a file replaced since bind).
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file this process created; `None`: not ours.
    created: Option<(u64, u64)>,
}

impl Bound {
    /// The listening socket (the SSH door's accept loop uses it).
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A listening socket handed to us (systemd socket activation): served, never unlinked.
    pub fn inherited(listener: std::os::unix::net::UnixListener) -> std::io::Result<Bound> {
        let path = listener
            .local_addr()?
            .as_pathname()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        listener.set_nonblocking(true)?;
        Ok(Bound {
            listener: UnixListener::from_std(listener)?,
            path,
            created: None,
        })
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let (Some(ours), Ok(m)) = (self.created, std::fs::symlink_metadata(&self.path)) {
            if (m.dev(), m.ino()) == ours {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Create the socket directory (0700, ours) and bind the socket (0600).
pub fn bind(path: &Path) -> Result<Bound, ServerError> {
    let io = |op, source| ServerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // lstat throughout: a symlink (e.g. /tmp/keyward-$UID made by another user to point
    // elsewhere) is refused, never followed.
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("create directory for", e))?;
        }
        Err(e) => return Err(io("inspect directory of", e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io("inspect directory of", e))?;
    if meta.file_type().is_symlink() {
        return Err(ServerError::UnsafeDir(
            dir.to_path_buf(),
            "it is a symlink; point the socket path at the real directory".into(),
        ));
    }
    if !meta.is_dir() {
        return Err(ServerError::UnsafeDir(
            dir.to_path_buf(),
            format!("it is {}, not a directory", kind_of(meta.file_type())),
        ));
    }
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
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A live agent answers; a stale socket from a crash does not.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(|e| io("remove stale", e))?;
        }
        Ok(m) => {
            return Err(ServerError::NotASocket(
                path.to_path_buf(),
                kind_of(m.file_type()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("chmod", e))?;
    let m = std::fs::symlink_metadata(path).map_err(|e| io("inspect", e))?;
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
        created: Some((m.dev(), m.ino())),
    })
}

/// Log at most once per [`LOG_INTERVAL`], counting what was left out.
pub(crate) struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    pub(crate) fn new() -> Self {
        Throttled {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log now (n suppressed since the last time); `None`: stay quiet.
    pub(crate) fn tick(&mut self) -> Option<u64> {
        match self.last {
            Some(t) if t.elapsed() < LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(Instant::now());
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// A descriptor held in reserve: given up when accept fails for lack of descriptors, so that
/// the waiting client can be accepted and told `busy` instead of hanging in the backlog.
fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Accept connections until `shutdown` resolves; then stop accepting and remove the socket.
pub async fn serve(
    bound: Bound,
    service: Service,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let uid = nix::unistd::geteuid().as_raw();
    let slots = limits.connections.clone();
    let limits = Arc::new(limits);
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let mut spare = spare_fd();
    let (mut accept_log, mut busy_log) = (Throttled::new(), Throttled::new());
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = bound.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(10);
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let (service, limits) = (service.clone(), limits.clone());
                            tokio::spawn(async move {
                                connection(stream, service, uid, limits, slot).await
                            });
                        }
                        Err(_) => {
                            if let Some(n) = busy_log.tick() {
                                tracing::warn!(
                                    cap = limits.max_connections,
                                    suppressed = n,
                                    "connection cap reached; refusing new connections with `busy`"
                                );
                            }
                            refuse_busy(stream, limits.max_connections, &refusing);
                        }
                    }
                }
                Err(e) => {
                    let out_of_fds =
                        matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                    if let Some(n) = accept_log.tick() {
                        tracing::warn!(error = %e, suppressed = n, "accept failed");
                    }
                    if out_of_fds {
                        if let Some(f) = spare.take() {
                            drop(f);
                            let quick = tokio::time::timeout(
                                Duration::from_millis(10),
                                bound.listener.accept(),
                            );
                            if let Ok(Ok((stream, _))) = quick.await {
                                refuse_busy(stream, limits.max_connections, &refusing);
                            }
                            spare = spare_fd();
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
        }
    }
    tracing::info!(socket = %bound.path.display(), "shutting down; removing socket");
    drop(bound);
}

/// Tell a connection over the cap `busy` (id null) and close it. While few refusals are under
/// way, the connection is drained briefly after the frame, so that closing does not reset it
/// before the client has read why; otherwise it is dropped at once.
fn refuse_busy(stream: UnixStream, cap: usize, refusing: &Arc<Semaphore>) {
    let msg = format!("the agent is at its cap of {cap} connections; try again later");
    let Ok(bytes) = Response::err(None, ErrorBody::new(ErrorCode::Busy, msg)).to_cbor() else {
        return;
    };
    let Ok(hdr) = frame::header(bytes.len(), MAX_FRAME) else {
        return;
    };
    let mut framed = hdr.to_vec();
    framed.extend_from_slice(&bytes);
    match refusing.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                let wait = Duration::from_secs(1);
                let _ = tokio::time::timeout(wait, async {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    if wr.write_all(&framed).await.is_ok() {
                        let _ = wr.shutdown().await;
                        let mut sink = [0u8; 4096];
                        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                })
                .await;
                drop(permit);
            });
        }
        Err(_) => {
            // A fresh socket's send buffer always has room for one small frame.
            let _ = stream.try_write(&framed);
        }
    }
}

/// The connection's write half, shared by everyone who answers on it. Each answer is written by
/// the task that produced it (no hop through a writer task: on 2 cores every cross-thread wake-up
/// is a measurable share of a ~100 µs request).
struct Replies {
    wr: tokio::sync::Mutex<OwnedWriteHalf>,
    write_timeout: Duration,
    /// Set when a response could not be written in time: the connection is ended.
    dead: AtomicBool,
    ended: Notify,
}

impl Replies {
    /// Write one response. An answer over the frame limit becomes a typed `too_large` error:
    /// never dropped silently.
    async fn send(&self, resp: Response) {
        let bytes = match resp.to_cbor() {
            Ok(b) if b.len() <= MAX_FRAME => Zeroizing::new(b),
            Ok(b) => {
                let msg = format!(
                    "the answer ({} bytes) is over the {MAX_FRAME}-byte frame limit",
                    b.len()
                );
                tracing::warn!(id = ?resp.id, "{msg}");
                match Response::err(resp.id, ErrorBody::new(ErrorCode::TooLarge, msg)).to_cbor() {
                    Ok(small) => {
                        drop(Zeroizing::new(b));
                        Zeroizing::new(small)
                    }
                    Err(_) => return,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "encoding a response failed");
                return;
            }
        };
        drop(resp);
        if self.dead.load(Ordering::Relaxed) {
            return;
        }
        let mut wr = self.wr.lock().await;
        // A peer that went away cannot be answered; its requests are simply dropped. A peer that
        // does not read its answers in time loses the connection.
        let written = tokio::time::timeout(
            self.write_timeout,
            frame::write(&mut *wr, &bytes, MAX_FRAME),
        )
        .await;
        if written.is_err() {
            tracing::warn!("a client did not take its response in time; closing the connection");
            self.dead.store(true, Ordering::Relaxed);
            self.ended.notify_one();
        }
    }

    /// Send one frame-level error (id null), e.g. before closing.
    async fn fail(&self, code: ErrorCode, msg: impl Into<String>) {
        self.send(Response::err(None, ErrorBody::new(code, msg)))
            .await;
    }
}

/// Bytes a connection's reader holds: a frame up to this size (header included) is read whole
/// into it, usually in one `recv` together with any frames pipelined behind it.
const READ_BUFFER: usize = 8 * 1024;

/// The frames of one connection, read through a small buffer: one `recv` per request instead of
/// two (header, then body), and pipelined requests show as bytes already held
/// ([`Frames::pending`]). A frame larger than the buffer is read into its own buffer, grown as
/// its bytes arrive (never allocated from its length alone, as [`frame::read_with_deadline`]).
/// Every buffer is wiped when dropped (requests carry PINs and plaintexts); the read buffer never
/// reallocates (reads go into its spare capacity). A frame once begun must arrive whole within
/// the frame timeout; an idle connection has no deadline. Cancel-safe while the frame being
/// read fits the buffer (the bytes read so far stay in it).
struct Frames {
    buf: Zeroizing<Vec<u8>>,
    /// When the frame now being read, begun but not whole, first waited for more bytes.
    begun: Option<tokio::time::Instant>,
}

impl Frames {
    fn new() -> Self {
        Frames {
            buf: Zeroizing::new(Vec::with_capacity(READ_BUFFER)),
            begun: None,
        }
    }

    /// Bytes of a further request are already here (pipelining).
    fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Spin for the next request after an answer ([`Spinner::spin`]): non-blocking `recv`s
    /// straight into the (empty) buffer, bypassing tokio's readiness, which only the reactor
    /// would update. What arrives is taken by [`Frames::next`] without waiting; an end of stream
    /// or an error is left for it to meet again. Tokio misses nothing: every arrival also
    /// raises an edge that its reactor sees later (at worst one `read` that finds nothing).
    fn spin(&mut self, rd: &tokio::net::unix::OwnedReadHalf, spinner: &mut Spinner) {
        use std::os::fd::AsRawFd;
        if self.pending() || !spinner.may_spin() {
            return;
        }
        let fd = rd.as_ref().as_raw_fd();
        let mut got = 0;
        let buf = &mut self.buf;
        // Within the capacity: never reallocates (the bytes stay in the wiped buffer).
        buf.resize(READ_BUFFER, 0);
        spinner.spin(|| {
            use nix::errno::Errno;
            use nix::sys::socket::{recv, MsgFlags};
            match recv(fd, &mut buf[..], MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    got = n;
                    Some(n > 0)
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => None,
                Err(_) => Some(false),
            }
        });
        buf.truncate(got);
    }

    /// The next frame's body. `Ok(None)`: the peer closed between frames.
    async fn next(
        &mut self,
        rd: &mut tokio::net::unix::OwnedReadHalf,
        max: usize,
        timeout: Duration,
    ) -> Result<Option<frame::FrameBuf>, frame::FrameError> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 4 {
                let len = frame_len(&self.buf, max)?;
                if len > READ_BUFFER - 4 {
                    return self.large(rd, len, timeout).await.map(Some);
                }
                if self.buf.len() >= 4 + len {
                    let body = Zeroizing::new(self.buf[4..4 + len].to_vec());
                    // Moves the rest down within the same allocation (wiped on drop).
                    self.buf.drain(..4 + len);
                    self.begun = None;
                    return Ok(Some(body));
                }
            }
            // Room is always left: a frame that fits is at most the buffer's capacity. The clock
            // starts when a begun frame has to wait for more bytes (not read per request).
            let n = if self.buf.is_empty() {
                rd.read_buf(&mut *self.buf).await?
            } else {
                let t = *self.begun.get_or_insert_with(tokio::time::Instant::now);
                tokio::time::timeout_at(t + timeout, rd.read_buf(&mut *self.buf))
                    .await
                    .map_err(|_| frame::FrameError::Timeout(timeout))??
            };
            if n == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(frame::FrameError::Truncated),
                };
            }
        }
    }

    /// A frame of `len` bytes, larger than the read buffer: the bytes held first, the rest read
    /// into a buffer of its own in chunks, within the frame's deadline.
    async fn large(
        &mut self,
        rd: &mut tokio::net::unix::OwnedReadHalf,
        len: usize,
        timeout: Duration,
    ) -> Result<frame::FrameBuf, frame::FrameError> {
        use tokio::io::AsyncReadExt;
        let begun = self.begun.unwrap_or_else(tokio::time::Instant::now);
        // (A frame whose bytes all came in one read has no start time yet: it starts now.)
        let mut body = Zeroizing::new(Vec::with_capacity(len.min(frame::CHUNK)));
        body.extend_from_slice(&self.buf[4..]);
        self.buf.clear();
        self.begun = None;
        let rest = async {
            while body.len() < len {
                let start = body.len();
                let step = (len - start).min(frame::CHUNK);
                frame::reserve_wiping(&mut body, step, len);
                body.resize(start + step, 0);
                let n = rd.read(&mut body[start..]).await;
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        body.truncate(start);
                        return Err(frame::FrameError::Io(e));
                    }
                };
                body.truncate(start + n);
                if n == 0 {
                    return Err(frame::FrameError::Truncated);
                }
            }
            Ok(())
        };
        match tokio::time::timeout_at(begun + timeout, rest).await {
            Ok(r) => r.map(|()| body),
            Err(_) => Err(frame::FrameError::Timeout(timeout)),
        }
    }
}

/// The body length a frame's 4-byte header announces, refused over `max`.
fn frame_len(buf: &[u8], max: usize) -> Result<usize, frame::FrameError> {
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(frame::FrameError::TooLarge { len, max });
    }
    Ok(len)
}

async fn connection(
    stream: UnixStream,
    service: Service,
    uid: u32,
    limits: Arc<Limits>,
    _slot: OwnedSemaphorePermit,
) {
    let (mut rd, wr) = stream.into_split();
    let replies = Arc::new(Replies {
        wr: tokio::sync::Mutex::new(wr),
        write_timeout: limits.write_timeout,
        dead: AtomicBool::new(false),
        ended: Notify::new(),
    });
    let cred = rd.as_ref().peer_cred();
    let pid = cred.as_ref().ok().and_then(|c| c.pid());
    let peer = cred.map(|c| c.uid());
    match peer {
        Ok(p) if p == uid => {
            // /proc reads are small but blocking: off the runtime's threads.
            let peer = tokio::task::spawn_blocking(move || crate::peer::Peer::from_cred(p, pid))
                .await
                .unwrap_or_else(|_| crate::peer::Peer::unknown());
            let service = service.for_peer(peer);
            serve_requests(&mut rd, &replies, service, &limits).await
        }
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
                Ok(Ok(Some(bytes))) => keyward_proto::limits::peek_id(&bytes),
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
    limits: &Limits,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut frames = Frames::new();
    let mut spinner = Spinner::new(limits.spin.clone());
    let mut greeted = false;
    let hello_by = tokio::time::Instant::now() + limits.hello_timeout;
    loop {
        frames.spin(rd, &mut spinner);
        let next = tokio::select! {
            r = frames.next(rd, MAX_FRAME, limits.frame_timeout) => r,
            _ = tokio::time::sleep_until(hello_by), if !greeted => {
                let ms = limits.hello_timeout.as_millis();
                replies
                    .fail(ErrorCode::Timeout, format!("no `hello` within {ms} ms; closing"))
                    .await;
                break;
            }
            _ = replies.ended.notified() => break,
        };
        spinner.arrived();
        let bytes = match next {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(frame::FrameError::TooLarge { len, max }) => {
                let msg = format!("frame of {len} bytes is over the {max}-byte limit");
                replies.fail(ErrorCode::FrameTooLarge, msg).await;
                break;
            }
            Err(frame::FrameError::Truncated) => {
                let msg = "the connection closed in the middle of a frame";
                replies.fail(ErrorCode::Malformed, msg).await;
                break;
            }
            Err(frame::FrameError::Timeout(after)) => {
                let msg = format!(
                    "the frame did not arrive whole within {} ms of its first byte; closing",
                    after.as_millis()
                );
                replies.fail(ErrorCode::Timeout, msg).await;
                break;
            }
            Err(_) => break,
        };
        // The frame buffer is wiped when dropped, right after decoding (on the blocking thread
        // for a large frame: decoding a megabyte must not stall the runtime's workers).
        let decoded = if bytes.len() > limits.blocking_decode_bytes {
            let decode = limits.decode;
            tokio::task::spawn_blocking(move || Request::from_cbor_limited(&bytes, &decode))
                .await
                .unwrap_or_else(|_| {
                    Err((
                        None,
                        ErrorBody::new(ErrorCode::Internal, "decoding the request failed"),
                    ))
                })
        } else {
            let r = Request::from_cbor_limited(&bytes, &limits.decode);
            drop(bytes);
            r
        };
        let req = match decoded {
            Ok(r) => r,
            Err((id, body)) => {
                replies.send(Response::err(id, body)).await;
                continue;
            }
        };
        if Op::from_name(&req.op) == Some(Op::Hello) {
            // Answered before the next frame is read: nothing else runs until it succeeds.
            let resp = run(service.clone(), req).await;
            greeted |= resp.is_ok(); // a refused hello (version, args) opens nothing
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
        // Alone on the connection (nothing in flight, no further request read yet) and
        // bounded to microseconds: answered right here, without the two thread hops of a blocking
        // thread. Several at once still run concurrently on blocking threads (pipelining).
        if slots.available_permits() == MAX_IN_FLIGHT
            && !frames.pending()
            && service.runs_inline(&req)
        {
            let resp = service.handle(&req);
            drop(req);
            replies.send(resp).await;
            if slots.available_permits() == MAX_IN_FLIGHT {
                spinner.answered();
            }
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (replies, service) = (replies.clone(), service.clone());
        tokio::spawn(async move {
            let resp = run_blocking(service, req).await;
            replies.send(resp).await;
            drop(permit);
        });
    }
}

/// Run one request: on this task when [`Service::runs_inline`] allows it, else on a blocking
/// thread (token calls block).
async fn run(service: Service, req: Request) -> Response {
    if service.runs_inline(&req) {
        return service.handle(&req);
    }
    run_blocking(service, req).await
}

/// Run one request on a blocking thread.
async fn run_blocking(service: Service, req: Request) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UnlockPolicy;
    use crate::hierarchy::Hierarchy;
    use crate::keystore::{Keystore, Purpose};
    use crate::root::memory::MemoryRoot;
    use keyward_proto::ops::{EncryptArgs, HelloArgs, ListArgs};
    use keyward_proto::secret::Pin;
    use std::os::unix::net::UnixStream as StdStream;

    struct Agent {
        root: MemoryRoot,
        h: Arc<Hierarchy>,
        dek: String,
        sock: PathBuf,
        _rt: tokio::runtime::Runtime,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        _dir: tempfile::TempDir,
    }

    impl Drop for Agent {
        fn drop(&mut self) {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
        }
    }

    /// An agent on a memory root with one DEK, served by a runtime with ONE worker thread, so
    /// that a request running on the worker would hold up every other connection.
    fn agent() -> Agent {
        agent_with(Limits::default())
    }

    fn agent_with(limits: Limits) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).expect("keystore"));
        let root = MemoryRoot::new();
        let h = Arc::new(Hierarchy::new(
            ks,
            Box::new(root.clone()),
            UnlockPolicy::default(),
        ));
        h.init(&Pin::new("server-test-pin")).expect("init");
        let kek = h.kek_create(None).expect("kek");
        let dek = h
            .dek_create(Some(&kek.to_string()), Purpose::Personal, false, None)
            .expect("dek")
            .to_string();
        let sock = dir.path().join("s").join("agent.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let bound = rt.block_on(async { bind(&sock) }).expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = Service::new(h.clone());
        rt.spawn(serve(bound, service, limits, async move {
            let _ = stopped.await;
        }));
        Agent {
            root,
            h,
            dek,
            sock,
            _rt: rt,
            stop: Some(stop),
            _dir: dir,
        }
    }

    fn send<A: serde::Serialize>(s: &mut StdStream, id: u64, op: &str, args: &A) {
        let body = Request::new(id, op, args)
            .expect("request")
            .to_cbor()
            .expect("cbor");
        frame::write_blocking(s, &body, MAX_FRAME).expect("write");
    }

    fn recv(s: &mut StdStream) -> Response {
        let body = frame::read_blocking(s, MAX_FRAME)
            .expect("read")
            .expect("a frame");
        Response::from_cbor(&body).expect("response")
    }

    fn connect(a: &Agent) -> StdStream {
        let mut s = StdStream::connect(&a.sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        send(&mut s, 1, "hello", &HelloArgs::current());
        assert!(recv(&mut s).ok.is_some(), "hello answered");
        s
    }

    fn encrypt_args(a: &Agent) -> EncryptArgs {
        EncryptArgs {
            dek: a.dek.clone(),
            plaintext: keyward_proto::secret::SecretBytes::new(b"x".to_vec()),
        }
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn frames_are_read_whole_split_or_pipelined_and_bad_ones_refused() {
        use tokio::io::AsyncWriteExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (a, mut b) = UnixStream::pair().expect("pair");
            let (mut rd, _wr) = a.into_split();
            let mut f = Frames::new();
            let t = Duration::from_secs(5);
            // Three frames in one write: one read, then two answered from the buffer.
            let big = vec![7u8; 3 * READ_BUFFER];
            let mut all = framed(b"one");
            all.extend(framed(b""));
            all.extend(framed(b"three"));
            b.write_all(&all).await.unwrap();
            assert_eq!(
                &f.next(&mut rd, MAX_FRAME, t).await.unwrap().unwrap()[..],
                b"one"
            );
            assert!(f.pending(), "the pipelined frames are held");
            assert!(f
                .next(&mut rd, MAX_FRAME, t)
                .await
                .unwrap()
                .unwrap()
                .is_empty());
            assert_eq!(
                &f.next(&mut rd, MAX_FRAME, t).await.unwrap().unwrap()[..],
                b"three"
            );
            assert!(!f.pending());
            // A frame larger than the buffer, sent a byte of its header at a time.
            let whole = framed(&big);
            for byte in &whole[..4] {
                b.write_all(&[*byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            let send = async { b.write_all(&whole[4..]).await.unwrap() };
            let (_, got) = tokio::join!(send, f.next(&mut rd, MAX_FRAME, t));
            assert_eq!(got.unwrap().unwrap()[..], big[..]);
            // Over the limit: refused from the header alone.
            b.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
                .await
                .unwrap();
            assert!(matches!(
                f.next(&mut rd, MAX_FRAME, t).await,
                Err(frame::FrameError::TooLarge { .. })
            ));
        });
        rt.block_on(async {
            // A frame begun but not finished in time; then one cut off by the peer closing.
            let (a, mut b) = UnixStream::pair().expect("pair");
            let (mut rd, _wr) = a.into_split();
            let mut f = Frames::new();
            b.write_all(&framed(b"abcdef")[..6]).await.unwrap();
            let r = f.next(&mut rd, MAX_FRAME, Duration::from_millis(100)).await;
            assert!(matches!(r, Err(frame::FrameError::Timeout(_))), "{r:?}");
            let (a, mut b) = UnixStream::pair().expect("pair");
            let (mut rd, _wr) = a.into_split();
            let mut f = Frames::new();
            b.write_all(&framed(b"abcdef")[..6]).await.unwrap();
            drop(b);
            let r = f.next(&mut rd, MAX_FRAME, Duration::from_secs(5)).await;
            assert!(matches!(r, Err(frame::FrameError::Truncated)), "{r:?}");
        });
    }

    #[test]
    fn fast_backend_requests_are_answered_and_classed_inline() {
        let a = agent();
        assert!(a.h.fast_backend(), "the memory root is fast");
        let service = Service::new(a.h.clone());
        let req = Request::new(5, "encrypt", &encrypt_args(&a)).expect("request");
        assert!(
            service.runs_inline(&req),
            "encrypt on a fast root runs inline"
        );
        let req = Request::new(6, "dek.create", &ListArgs::default()).expect("request");
        assert!(
            !service.runs_inline(&req),
            "a keystore write never runs inline"
        );
        let req = Request::new(7, "no.such.op", &ListArgs::default()).expect("request");
        assert!(
            !service.runs_inline(&req),
            "an unknown op is not classed inline"
        );
        let mut s = connect(&a);
        for id in 10..20 {
            send(&mut s, id, "encrypt", &encrypt_args(&a));
            let r = recv(&mut s);
            assert_eq!(r.id, Some(id));
            assert!(r.ok.is_some(), "{r:?}");
        }
        // Malformed args on the inline path: a typed error, and the connection keeps serving.
        send(&mut s, 30, "encrypt", &ListArgs::default());
        let r = recv(&mut s);
        assert_eq!(r.err.map(|e| e.code), Some(ErrorCode::InvalidArgs));
        send(&mut s, 31, "kek.list", &ListArgs::default());
        assert!(recv(&mut s).ok.is_some());
    }

    #[test]
    fn slow_backend_request_does_not_hold_up_another_connection() {
        let a = agent();
        let delay = Duration::from_millis(1500);
        a.root.set_delay(Some(delay));
        assert!(!a.h.fast_backend(), "a card-like root is not fast");
        let service = Service::new(a.h.clone());
        let req = Request::new(5, "encrypt", &encrypt_args(&a)).expect("request");
        assert!(
            !service.runs_inline(&req),
            "no token op runs inline on a slow root"
        );
        let req = Request::new(6, "kek.list", &ListArgs::default()).expect("request");
        assert!(
            service.runs_inline(&req),
            "a keystore-only read runs inline on any root"
        );
        let (mut slow, mut quick) = (connect(&a), connect(&a));
        send(&mut slow, 2, "encrypt", &encrypt_args(&a));
        // Let the slow request start (on its blocking thread) before the quick one.
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        send(&mut quick, 2, "kek.list", &ListArgs::default());
        let r = recv(&mut quick);
        let took = t.elapsed();
        assert!(r.ok.is_some(), "{r:?}");
        assert!(
            took < Duration::from_millis(1000),
            "kek.list waited {took:?} behind another connection's card operation"
        );
        let r = recv(&mut slow);
        assert!(r.ok.is_some(), "{r:?}");
    }

    /// Limits whose spin is `us` microseconds.
    fn spinning(us: u64) -> (Limits, Arc<Spin>) {
        let spin = Arc::new(Spin::new(Duration::from_micros(us)));
        let limits = Limits {
            spin: spin.clone(),
            ..Limits::default()
        };
        (limits, spin)
    }

    #[test]
    fn spin_reads_a_looping_clients_next_request_and_never_an_idle_ones() {
        // A long spin, so that a loaded machine still shows hits.
        let (limits, spin) = spinning(1000);
        let a = agent_with(limits);
        let mut s = connect(&a);
        for id in 10..210 {
            send(&mut s, id, "kek.list", &ListArgs::default());
            let r = recv(&mut s);
            assert_eq!(r.id, Some(id));
            assert!(r.ok.is_some(), "{r:?}");
        }
        let (spins, hits) = spin.counts();
        assert!(
            hits > 0,
            "a client in a loop is read by the spin ({spins} spins)"
        );
        // Idle: at most the one spin after the last answer, then none however long it waits.
        std::thread::sleep(Duration::from_millis(300));
        let idle = spin.counts();
        assert!(idle.0 <= spins + 1, "{idle:?} after {spins}");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(spin.counts(), idle, "an idle connection does not spin");
        // A request after a pause is no loop: no spin after its answer.
        send(&mut s, 300, "kek.list", &ListArgs::default());
        assert!(recv(&mut s).ok.is_some());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(spin.counts(), idle, "no spin after a lone request");
        // The connection still serves, and a malformed request in a loop is answered as ever.
        send(&mut s, 301, "kek.list", &encrypt_args(&a));
        assert_eq!(
            recv(&mut s).err.map(|e| e.code),
            Some(ErrorCode::InvalidArgs)
        );
    }

    #[test]
    fn spin_off_never_spins() {
        let (limits, spin) = spinning(0);
        let a = agent_with(limits);
        let mut s = connect(&a);
        for id in 10..110 {
            send(&mut s, id, "kek.list", &ListArgs::default());
            assert!(recv(&mut s).ok.is_some());
        }
        assert_eq!(spin.counts(), (0, 0));
    }

    #[test]
    fn spinner_spins_only_for_loops_backs_off_and_respects_the_bounds() {
        let spin = Arc::new(Spin {
            max_looping: 1,
            ..Spin::new(Duration::from_micros(100))
        });
        let polls = std::cell::Cell::new(0u32);
        let never = || {
            polls.set(polls.get() + 1);
            None
        };
        // Not answered yet, or answered but not in a loop: no spin, no poll.
        let mut a = Spinner::new(spin.clone());
        assert!(!a.spin(never));
        a.answered();
        assert!(!a.spin(never));
        assert_eq!(polls.get(), 0);
        // A request soon after the answer: in a loop; the next answer spins up to the max.
        a.arrived();
        a.answered();
        let t = Instant::now();
        assert!(!a.spin(never), "nothing came");
        assert!(t.elapsed() >= Duration::from_micros(100));
        assert!(polls.get() > 0);
        assert_eq!(spin.counts(), (1, 0));
        // A miss skips the next spin (then 2, 4, ... up to MAX_SKIP).
        a.arrived();
        a.answered();
        let before = polls.get();
        assert!(!a.spin(never), "skipped after a miss");
        assert_eq!(polls.get(), before);
        // A hit is counted and resets the back-off.
        a.arrived();
        a.answered();
        assert!(a.spin(|| Some(true)));
        assert_eq!(spin.counts(), (2, 1));
        // Two connections in a loop on a budget of one: neither spins.
        let mut b = Spinner::new(spin.clone());
        b.answered();
        b.arrived();
        a.arrived();
        a.answered();
        b.answered();
        assert_eq!(spin.looping.load(Ordering::Relaxed), 2);
        let before = polls.get();
        assert!(!a.spin(never) && !b.spin(never));
        assert_eq!(polls.get(), before);
        // A connection that leaves (or pauses) leaves the loop count.
        drop(b);
        assert_eq!(spin.looping.load(Ordering::Relaxed), 1);
        assert!(a.spin(|| Some(true)), "alone again: spins");
        // A slow request (answered long before the next one) leaves the loop.
        a.answered();
        std::thread::sleep(LOOP_GAP * 2);
        a.arrived();
        assert_eq!(spin.looping.load(Ordering::Relaxed), 0);
        drop(a);
        assert_eq!(spin.looping.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn spin_budget_caps_the_time_spent_per_second() {
        // One spin longer than the whole budget: the next one within the second is refused.
        let spin = Arc::new(Spin::new(SPIN_BUDGET + Duration::from_millis(10)));
        let mut a = Spinner::new(spin.clone());
        a.answered();
        a.arrived();
        a.answered();
        let window = spin.epoch.elapsed().as_secs();
        assert!(!a.spin(|| None));
        a.arrived();
        a.answered();
        a.skip = 0;
        let refused = !a.spin(|| Some(true));
        if spin.epoch.elapsed().as_secs() == window {
            assert!(refused, "over budget within the same second");
            assert_eq!(spin.counts(), (1, 0));
        }
    }
}
