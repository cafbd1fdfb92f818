//! The physical floor of one request: a bare Unix-socket ping-pong between two processes, with
//! given request and answer sizes and a 4-byte length framing (what every door of the agent pays
//! at least once per request). The server is the bench itself, re-executed with
//! `--pingpong-server PATH REPLY_BYTES` ([`serve_if_asked`] at the top of `main`), so that both
//! ends are separate processes as a client and the agent are.
//!
//! Shared by the agent's benches (`mod common;`) and, through `#[path]`, by the module's
//! `tests/benches/pkcs11_sign.rs`. A bench helper, not a test.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// If this process was started as a ping-pong server, serve (never returns); else return.
pub fn serve_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, path, reply] = &args[..] {
        if flag == "--pingpong-server" {
            serve(Path::new(path), reply.parse().expect("reply size"));
            std::process::exit(0);
        }
    }
}

/// Accept connections on `path`; on each, read 4-byte-framed messages and answer each with a
/// frame of `reply` bytes, until the peer closes.
fn serve(path: &Path, reply: usize) {
    let listener = UnixListener::bind(path).expect("bind ping-pong socket");
    let mut frame = (reply as u32).to_be_bytes().to_vec();
    frame.extend(std::iter::repeat_n(0xa5u8, reply));
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let frame = frame.clone();
        std::thread::spawn(move || {
            let mut len = [0u8; 4];
            let mut buf = Vec::new();
            while s.read_exact(&mut len).is_ok() {
                buf.resize(u32::from_be_bytes(len) as usize, 0);
                if s.read_exact(&mut buf).is_err() || s.write_all(&frame).is_err() {
                    break;
                }
            }
        });
    }
}

/// A ping-pong server process answering `reply`-byte frames; killed when dropped.
pub struct Server {
    child: Child,
    path: PathBuf,
}

impl Server {
    /// Start the server (this bench re-executed) on a socket in `dir`; `name` tells several
    /// servers apart.
    pub fn start(dir: &Path, name: &str, reply: usize) -> Server {
        let path = dir.join(format!("pingpong-{name}.sock"));
        let child = Command::new(std::env::current_exe().expect("own path"))
            .arg("--pingpong-server")
            .arg(&path)
            .arg(reply.to_string())
            .spawn()
            .expect("start the ping-pong server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(Instant::now() < deadline, "ping-pong server did not bind");
            std::thread::sleep(Duration::from_millis(10));
        }
        Server { child, path }
    }

    /// `clients` connections sending `request`-byte frames.
    pub fn connect(&self, clients: usize, request: usize) -> Vec<PingPong> {
        (0..clients)
            .map(|_| PingPong::connect(&self.path, request))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client's ping-pong: send a frame of `request` bytes, read the reply frame.
pub struct PingPong {
    s: std::sync::Mutex<UnixStream>,
    frame: Vec<u8>,
}

impl PingPong {
    fn connect(path: &Path, request: usize) -> PingPong {
        let s = UnixStream::connect(path).expect("connect ping-pong");
        let mut frame = (request as u32).to_be_bytes().to_vec();
        frame.extend(std::iter::repeat_n(0x5au8, request));
        PingPong {
            s: std::sync::Mutex::new(s),
            frame,
        }
    }

    pub fn round_trip(&self) {
        let mut s = self.s.lock().expect("ping-pong lock");
        s.write_all(&self.frame).expect("ping");
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("pong length");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).expect("pong");
    }
}

/// Round trips per second of `conns` (one thread each) over one round of `round`.
pub fn rate(conns: &[PingPong], round: Duration) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in conns {
            let (stop, count) = (&stop, &count);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    c.round_trip();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(round);
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Median over `rounds` rounds of [`rate`].
pub fn median(conns: &[PingPong], rounds: usize, round: Duration) -> f64 {
    let mut v: Vec<f64> = (0..rounds).map(|_| rate(conns, round)).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[rounds / 2]
}

/// The best rate a server could reach if each request cost one round trip (`pingpong`/s) plus
/// the work itself (`work`/s) and nothing else: the two times per request add up.
pub fn ceiling(work: f64, pingpong: f64) -> f64 {
    1.0 / (1.0 / work + 1.0 / pingpong)
}

/// [`ceiling`] as a ratio to the work alone: `t_work / (t_work + t_pingpong)`, i.e.
/// `pingpong / (work + pingpong)` in rates; the best `agent / token` ratio reachable.
pub fn bound(work: f64, pingpong: f64) -> f64 {
    ceiling(work, pingpong) / work
}
