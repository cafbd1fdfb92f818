//! A blocking client for the agent's socket: plain `std::os::unix::net::UnixStream`s speaking the
//! CBOR protocol of `keyward-proto`, pooled so that threads of the host can call at once.
//!
//! Connecting is bounded in time (a non-blocking connect, retried while the agent's backlog is
//! full, for at most [`CONNECT_TIMEOUT`]) and so is every read and write. A pooled connection
//! that fails (the agent restarted) is dropped with the rest of the pool and the call is made once
//! more on a fresh connection. This module must never start a thread or a runtime in the host,
//! never keep a PIN (it passes through once, in the `unlock` request), and never shut a socket
//! down: after `fork` a child may drop the parent's connections, and closing its copy of the file
//! descriptor is all that may happen.

use keyward_proto::frame;
use keyward_proto::ops::{HelloArgs, HelloResult, Operation};
use keyward_proto::{ErrorBody, Request, Response, MAX_FRAME};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long connecting to the agent may take before the module says it is not there.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one answer may take (unlock on a card, a slow token).
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept for reuse.
const POOL: usize = 8;

/// Why a call did not get an answer from the agent, or got a refusal.
#[derive(Debug)]
pub enum CallError {
    /// No agent at the socket, or the connection broke.
    Unreachable(String),
    /// The agent answered with an error.
    Agent(ErrorBody),
    /// The agent's answer is not what the protocol says.
    Protocol(String),
}

/// One connection that has said `hello`.
struct Conn {
    stream: UnixStream,
}

/// The agent at one socket path.
pub struct Agent {
    path: PathBuf,
    idle: Mutex<Vec<Conn>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connect with a bound on the time it takes.
fn connect_bounded(path: &Path) -> Result<UnixStream, CallError> {
    let unreachable =
        |what: &str, e: Errno| CallError::Unreachable(format!("{what} {}: {e}", path.display()));
    let addr = UnixAddr::new(path).map_err(|e| unreachable("socket path", e))?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| unreachable("socket for", e))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => {}
            // The agent's backlog is full: wait a little, within the bound.
            Err(Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(unreachable("connecting to", e)),
        }
    }
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::empty())).map_err(|e| unreachable("fcntl on", e))?;
    let stream = UnixStream::from(fd);
    let set = |r: std::io::Result<()>| {
        r.map_err(|e| CallError::Unreachable(format!("socket timeouts: {e}")))
    };
    set(stream.set_read_timeout(Some(IO_TIMEOUT)))?;
    set(stream.set_write_timeout(Some(IO_TIMEOUT)))?;
    Ok(stream)
}

impl Conn {
    fn call_raw(
        &mut self,
        id: u64,
        op: &str,
        args: &impl serde::Serialize,
    ) -> Result<Response, CallError> {
        let req = Request::new(id, op, args)
            .and_then(|r| r.to_cbor())
            .map_err(|e| CallError::Protocol(format!("encoding {op}: {e}")))?;
        frame::write_blocking(&mut self.stream, &req, MAX_FRAME)
            .map_err(|e| CallError::Unreachable(format!("{op}: {e}")))?;
        let body = frame::read_blocking(&mut self.stream, MAX_FRAME)
            .map_err(|e| CallError::Unreachable(format!("{op}: {e}")))?
            .ok_or_else(|| {
                CallError::Unreachable(format!("{op}: the agent closed the connection"))
            })?;
        let resp =
            Response::from_cbor(&body).map_err(|e| CallError::Protocol(format!("{op}: {e}")))?;
        if resp.id != Some(id) {
            return Err(CallError::Protocol(format!(
                "{op}: answer for another request"
            )));
        }
        Ok(resp)
    }
}

fn into_result<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, CallError> {
    resp.into_result().map_err(|e| match e {
        keyward_proto::message::ResponseError::Agent(b) => CallError::Agent(b),
        other => CallError::Protocol(other.to_string()),
    })
}

impl Agent {
    pub fn new(path: PathBuf) -> Agent {
        Agent {
            path,
            idle: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        }
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn open(&self) -> Result<(Conn, HelloResult), CallError> {
        let mut c = Conn {
            stream: connect_bounded(&self.path)?,
        };
        let args = HelloArgs {
            client: Some("keyward-pkcs11".into()),
            ..HelloArgs::current()
        };
        let hello: HelloResult = into_result(c.call_raw(self.id(), "hello", &args)?)?;
        Ok((c, hello))
    }

    /// A fresh connection's `hello`: whether the agent is there, and its state.
    pub fn hello(&self) -> Result<HelloResult, CallError> {
        let (c, hello) = self.open()?;
        self.put_back(c);
        Ok(hello)
    }

    fn put_back(&self, c: Conn) {
        let mut idle = lock(&self.idle);
        if idle.len() < POOL {
            idle.push(c);
        }
    }

    /// One typed call. A pooled connection that broke is replaced and the call made once more.
    pub fn call<O: Operation>(&self, args: &O::Args) -> Result<O::Result, CallError> {
        let name = O::OP.name();
        let pooled = lock(&self.idle).pop();
        let resp = match pooled {
            Some(mut c) => match c.call_raw(self.id(), name, args) {
                Ok(r) => {
                    self.put_back(c);
                    r
                }
                Err(CallError::Unreachable(_)) => {
                    // The agent went away since: every pooled connection is as dead as this one.
                    lock(&self.idle).clear();
                    self.call_fresh(name, args)?
                }
                Err(e) => return Err(e),
            },
            None => self.call_fresh(name, args)?,
        };
        into_result(resp)
    }

    fn call_fresh(&self, name: &str, args: &impl serde::Serialize) -> Result<Response, CallError> {
        let (mut c, _) = self.open()?;
        let r = c.call_raw(self.id(), name, args)?;
        self.put_back(c);
        Ok(r)
    }

    /// Drop every idle connection (C_Finalize).
    pub fn close(&self) {
        lock(&self.idle).clear();
    }
}
