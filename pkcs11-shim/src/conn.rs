//! A blocking client for the agent's socket: plain `std::os::unix::net::UnixStream`s speaking the
//! CBOR protocol of `keyward-proto`, pooled so that threads of the host can call at once.
//!
//! Connecting is bounded in time (a non-blocking connect, retried while the agent's backlog is
//! full, for at most [`CONNECT_TIMEOUT`]) and so is every read and write. A pooled connection
//! that fails (the agent restarted) is dropped with the rest of the pool and the call is made once
//! more on a fresh connection.
//!
//! After sending a request, a call polls the socket without blocking for up to
//! [`DEFAULT_SPIN_US`] microseconds ([`SPIN_ENV`], `KEYWARD_PKCS11_SPIN_US`, sets it; 0: off)
//! before it sleeps in `read`: a thread that loops over `C_Sign` then finds the answer without
//! being put to sleep and woken (on a VM that costs a wake-up of several tens of microseconds
//! each way), like the agent's own spin after an answer (`[server] spin_us`). Only while no more
//! of the host's calls are in flight than half its CPUs, so spinning never takes a core from the
//! agent or from another of the host's threads.
//!
//! This module must never start a thread or a runtime in the host,
//! never keep a PIN (it passes through once, in the `unlock` request), and never shut a socket
//! down: after `fork` a child may drop the parent's connections, and closing its copy of the file
//! descriptor is all that may happen.

use keyward_proto::frame;
use keyward_proto::ops::{HelloArgs, HelloResult, Operation};
use keyward_proto::{ErrorBody, Request, Response, MAX_FRAME};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{
    connect, recv, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long connecting to the agent may take before the module says it is not there.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one answer may take (unlock on a card, a slow token).
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept for reuse.
const POOL: usize = 8;
/// How long a call polls for its answer before sleeping, by default (microseconds).
pub const DEFAULT_SPIN_US: u64 = 100;
/// The environment variable that sets it (0: never poll).
pub const SPIN_ENV: &str = "KEYWARD_PKCS11_SPIN_US";
/// The longest poll the variable may ask for.
pub const MAX_SPIN_US: u64 = 1000;

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
    /// How long a call polls for its answer before sleeping (zero: never).
    spin: Duration,
    /// Calls in flight in this process, and how many may poll at once (half the CPUs).
    in_flight: AtomicUsize,
    spinners: usize,
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
        spin: Duration,
    ) -> Result<Response, CallError> {
        let req = Request::new(id, op, args)
            .and_then(|r| r.to_cbor())
            .map_err(|e| CallError::Protocol(format!("encoding {op}: {e}")))?;
        frame::write_blocking(&mut self.stream, &req, MAX_FRAME)
            .map_err(|e| CallError::Unreachable(format!("{op}: {e}")))?;
        self.poll_for_answer(spin);
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

    /// Poll (`recv` with `MSG_PEEK | MSG_DONTWAIT`) until the answer's first byte is there, the
    /// connection ends or fails, or `budget` is spent; the blocking read takes it from there.
    fn poll_for_answer(&self, budget: Duration) {
        if budget.is_zero() {
            return;
        }
        let start = Instant::now();
        let mut byte = [0u8; 1];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        loop {
            match recv(self.stream.as_raw_fd(), &mut byte, flags) {
                Err(Errno::EAGAIN) => {}
                Err(Errno::EINTR) => {}
                // Data, the end of the stream or an error: for the read to see.
                _ => return,
            }
            if start.elapsed() >= budget {
                return;
            }
            std::hint::spin_loop();
        }
    }
}

/// The poll budget from `KEYWARD_PKCS11_SPIN_US` (unset or unreadable: the default; capped).
fn spin_from_env() -> Duration {
    let us = std::env::var(SPIN_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_SPIN_US)
        .min(MAX_SPIN_US);
    Duration::from_micros(us)
}

/// Decrements the in-flight count when a call ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
        Self::with_spin(path, spin_from_env())
    }

    /// An agent whose calls poll for their answers for up to `spin` (zero: never).
    fn with_spin(path: PathBuf, spin: Duration) -> Agent {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Agent {
            path,
            idle: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            spin,
            in_flight: AtomicUsize::new(0),
            spinners: (cpus / 2).max(1),
        }
    }

    /// The poll budget of a call starting now (see the module docs): zero when more of the
    /// host's calls are in flight than may poll. The guard counts the call until it ends.
    fn start_call(&self) -> (Duration, InFlight<'_>) {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let spin = if n <= self.spinners {
            self.spin
        } else {
            Duration::ZERO
        };
        (spin, InFlight(&self.in_flight))
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
        let hello: HelloResult = into_result(self.call_on(&mut c, "hello", &args)?)?;
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
            Some(mut c) => match self.call_on(&mut c, name, args) {
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
        let r = self.call_on(&mut c, name, args)?;
        self.put_back(c);
        Ok(r)
    }

    fn call_on(
        &self,
        c: &mut Conn,
        name: &str,
        args: &impl serde::Serialize,
    ) -> Result<Response, CallError> {
        let (spin, _call) = self.start_call();
        c.call_raw(self.id(), name, args, spin)
    }

    /// Drop every idle connection (C_Finalize).
    pub fn close(&self) {
        lock(&self.idle).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    #[test]
    fn only_as_many_calls_as_half_the_cpus_poll_at_once() {
        let agent = Agent::with_spin(PathBuf::from("/nonexistent"), Duration::from_micros(100));
        let mut held = Vec::new();
        for _ in 0..agent.spinners {
            let (spin, guard) = agent.start_call();
            assert_eq!(spin, Duration::from_micros(100));
            held.push(guard);
        }
        let (spin, extra) = agent.start_call();
        assert_eq!(
            spin,
            Duration::ZERO,
            "one call more than may poll still polled"
        );
        drop(extra);
        held.pop();
        let (spin, _again) = agent.start_call();
        assert_eq!(
            spin,
            Duration::from_micros(100),
            "a finished call still counted"
        );
    }

    #[test]
    fn a_zero_budget_never_polls() {
        let agent = Agent::with_spin(PathBuf::from("/nonexistent"), Duration::ZERO);
        assert_eq!(agent.start_call().0, Duration::ZERO);
    }

    #[test]
    fn polling_leaves_the_answer_for_the_read() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let conn = Conn { stream: ours };
        // Nothing there: the poll gives up after its budget and reads nothing.
        conn.poll_for_answer(Duration::from_micros(200));
        theirs.write_all(b"answer").unwrap();
        conn.poll_for_answer(Duration::from_secs(5));
        let mut got = [0u8; 6];
        (&conn.stream).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"answer");
        // The peer gone: the poll returns (end of stream) for the read to see.
        drop(theirs);
        conn.poll_for_answer(Duration::from_secs(5));
        assert_eq!((&conn.stream).read(&mut got).unwrap(), 0);
    }

    #[test]
    fn the_budget_comes_from_the_environment_capped() {
        // Read only here: no other test in this crate sets the variable.
        std::env::set_var(SPIN_ENV, "5000");
        assert_eq!(spin_from_env(), Duration::from_micros(MAX_SPIN_US));
        std::env::set_var(SPIN_ENV, "0");
        assert_eq!(spin_from_env(), Duration::ZERO);
        std::env::set_var(SPIN_ENV, "not a number");
        assert_eq!(spin_from_env(), Duration::from_micros(DEFAULT_SPIN_US));
        std::env::remove_var(SPIN_ENV);
        assert_eq!(spin_from_env(), Duration::from_micros(DEFAULT_SPIN_US));
    }
}
