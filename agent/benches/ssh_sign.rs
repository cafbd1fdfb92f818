//! SSH signatures per second: keywardd's SSH socket vs OpenSSH's `ssh-agent` holding the same
//! file key (one ECDSA P-256 key `ssh-add`ed to both), at 1 and 4 client connections, in one
//! run; plus an Ed25519 file key and a P-256 token keypair (signing in SoftHSM) through keywardd.
//!
//! Each client is one connection sending SIGN_REQUEST for 64 bytes and waiting for the answer
//! (the protocol has no pipelining). Figures: the median of 5 rounds of 1 s. The machine is
//! shared, so keywardd's and ssh-agent's rounds alternate (each pair sees the same load) and the
//! ratio is the median of the per-round ratios. Both agents get a warm-up first.
//! `KEYWARD_BENCH_LOG=debug` passes a log level to keywardd.
//!
//! The physical ceiling, in the same run, for the ECDSA file key: a bare Unix-socket ping-pong
//! between two processes with SIGN_REQUEST's and SIGN_RESPONSE's sizes (`common::pingpong`), and
//! aws-lc's ECDSA P-256 signature in-process (what keywardd computes per request), one thread
//! per client. An agent that added nothing but the round trip would sign at
//! `ceiling = 1 / (t_sign + t_pingpong)`; `bound = ceiling / ssh-agent` is the best
//! keywardd / ssh-agent ratio reachable (at 4 clients on 2 cores both are CPU-bound and add up
//! the same way: an estimate). With precomputed nonces (`[server] ecdsa_nonces`, on by default)
//! the request pays only the online half of the signature (~0.1 µs) while the pool lasts, and
//! the ceiling is the ping-pong alone: `bound_pp = pingpong / ssh-agent`. One machine-readable
//! line per client count:
//! `bench: ssh sign ecdsa clients=<n> keywardd=<signs/s> ssh_agent=<signs/s> ratio=<k/o>
//! pingpong=<ops/s> sign=<signs/s> ceiling=<signs/s> bound=<ceiling/ssh-agent>
//! bound_pp=<pingpong/ssh-agent>`. `KEYWARD_BENCH_NONCES=0` measures without the pool.
//! Needs softhsm2 and openssh-client (softhsm-setup.sh, ssh-setup.sh).
//! Run: `cargo bench -p keyward-agent --bench ssh_sign`.

mod common;

use keyward_client::proto::ops::{KeypairCreateArgs, SshMode};
use ssh_agent_lib::proto::{PublicCredential, Request, SignRequest};
use ssh_encoding::Encode;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::PIN;
const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_secs(1);

/// Signatures per second over one round, and how many were made.
fn rate(conns: &[std::sync::Mutex<UnixStream>], req: &[u8]) -> (f64, f64) {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in conns {
            let (stop, count) = (&stop, &count);
            s.spawn(move || {
                let mut c = c.lock().expect("conn");
                let mut len = [0u8; 4];
                let mut body = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    c.write_all(req).expect("write");
                    c.read_exact(&mut len).expect("read len");
                    let n = u32::from_be_bytes(len) as usize;
                    c.read_exact(&mut body[..n]).expect("read body");
                    assert_eq!(body[0], 14, "not a SIGN_RESPONSE");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(ROUND);
        stop.store(true, Ordering::Relaxed);
    });
    let n = count.load(Ordering::Relaxed) as f64;
    (n / start.elapsed().as_secs_f64(), n)
}

fn connect(sock: &Path, clients: usize) -> Vec<std::sync::Mutex<UnixStream>> {
    (0..clients)
        .map(|_| std::sync::Mutex::new(UnixStream::connect(sock).expect("connect")))
        .collect()
}

fn mid(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn median(sock: &Path, clients: usize, req: &[u8]) -> f64 {
    let conns = connect(sock, clients);
    mid((0..ROUNDS).map(|_| rate(&conns, req).0).collect())
}

/// CPU time (user + system, all threads) a process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// One agent's side of a paired measurement.
struct Side<'a> {
    sock: &'a Path,
    pid: u32,
}

/// Alternating rounds on two agents, a and b. Returns, for each, the median rate and the CPU
/// time it used per signature (µs, from /proc: independent of how busy the machine is), and
/// the median of the per-round rate ratios a/b.
fn paired(a: Side, b: Side, clients: usize, req: &[u8]) -> ((f64, f64), (f64, f64), f64) {
    let (ca, cb) = (connect(a.sock, clients), connect(b.sock, clients));
    let tick_us = 1e6 / 100.0; // USER_HZ
    let (mut ta, mut tb, mut na, mut nb) = (0u64, 0u64, 0f64, 0f64);
    let mut pairs = Vec::new();
    for _ in 0..ROUNDS {
        let t0 = cpu_ticks(a.pid);
        let (ra, ka) = rate(&ca, req);
        ta += cpu_ticks(a.pid) - t0;
        let t0 = cpu_ticks(b.pid);
        let (rb, kb) = rate(&cb, req);
        tb += cpu_ticks(b.pid) - t0;
        na += ka;
        nb += kb;
        pairs.push((ra, rb));
    }
    (
        (
            mid(pairs.iter().map(|p| p.0).collect()),
            ta as f64 * tick_us / na,
        ),
        (
            mid(pairs.iter().map(|p| p.1).collect()),
            tb as f64 * tick_us / nb,
        ),
        mid(pairs.iter().map(|p| p.0 / p.1).collect()),
    )
}

/// aws-lc ECDSA P-256 signatures over 64 bytes per second, on `threads` threads (median of
/// the rounds).
fn sign_rate(key: &aws_lc_rs::signature::EcdsaKeyPair, threads: usize) -> f64 {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    mid((0..ROUNDS)
        .map(|_| {
            let stop = AtomicBool::new(false);
            let count = AtomicU64::new(0);
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let (stop, count, rng) = (&stop, &count, &rng);
                    s.spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            key.sign(rng, &[0x42; 64]).expect("sign");
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                std::thread::sleep(ROUND);
                stop.store(true, Ordering::Relaxed);
            });
            count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
        })
        .collect())
}

/// A framed SIGN_REQUEST for `public_line` (an OpenSSH public key line).
fn sign_request(public_line: &str) -> Vec<u8> {
    let pk = ssh_key::PublicKey::from_openssh(public_line.trim()).expect("public key");
    let req = Request::SignRequest(SignRequest {
        credential: PublicCredential::Key(pk.key_data().clone()),
        data: vec![0x42; 64],
        flags: 0,
    });
    let mut body = Vec::new();
    req.encode(&mut body).expect("encode");
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

fn run(cmd: &mut Command) {
    let st = cmd.stdout(Stdio::null()).status().expect("run");
    assert!(st.success(), "{cmd:?} failed");
}

fn file_key(dir: &Path, kind: &str) -> PathBuf {
    let p = dir.join(format!("id_{kind}"));
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-t", kind, "-N", "", "-C", kind, "-f"])
        .arg(&p);
    if kind == "ecdsa" {
        c.args(["-b", "256"]);
    }
    run(&mut c);
    p
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this is not a test.
    }
    common::pingpong::serve_if_asked();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    run(Command::new("bash")
        .arg(root.join("ssh-setup.sh"))
        .arg("--install-only"));
    let tmp = tempfile::tempdir().expect("tempdir");
    run(Command::new("bash")
        .arg(root.join("softhsm-setup.sh"))
        .arg("--dir")
        .arg(tmp.path())
        .env("KEYWARD_DEV_PIN", PIN));
    let config = tmp.path().join("keyward.toml");
    common::spin_override(&config);
    let sock = tmp.path().join("run/agent.sock");
    let ssh_sock = tmp.path().join("run/ssh.sock");
    let agent = common::Agent::start(&config, &sock, &ssh_sock, |cmd| {
        cmd.env_remove("KEYWARD_SSH_SOCK");
    });
    let deadline = Instant::now();
    let c = common::init_with_kek(&sock);
    let args = KeypairCreateArgs {
        on_token: true,
        label: Some("token".into()),
        ssh: Some(SshMode::On),
        ..Default::default()
    };
    let token_id = c
        .run(|c| c.keypair_create(&args))
        .expect("token keypair")
        .id;
    let token_line = c
        .run(|c| c.keypair_show(&token_id))
        .expect("show")
        .ssh
        .expect("ssh line");

    let ec = file_key(tmp.path(), "ecdsa");
    let ed = file_key(tmp.path(), "ed25519");
    run(Command::new("ssh-add")
        .arg(&ec)
        .arg(&ed)
        .env("SSH_AUTH_SOCK", &ssh_sock));
    let openssh_sock = tmp.path().join("ssh-agent.sock");
    let mut openssh = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&openssh_sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("start ssh-agent");
    while !openssh_sock.exists() {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "ssh-agent did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    run(Command::new("ssh-add")
        .arg(&ec)
        .env("SSH_AUTH_SOCK", &openssh_sock));

    let read = |p: &Path| std::fs::read_to_string(p.with_extension("pub")).expect("pub");
    let ec_req = sign_request(&read(&ec));
    let ed_req = sign_request(&read(&ed));
    let token_req = sign_request(&token_line);

    println!(
        "\nSSH sign requests per second (median of {ROUNDS} x {}s rounds)",
        ROUND.as_secs()
    );
    println!(
        "| key | clients | keywardd | OpenSSH ssh-agent | keywardd / ssh-agent (median of round ratios) |"
    );
    println!("|---|---|---|---|---|");
    // Warm-up (not counted): the first signature unwraps the key, and the first seconds after
    // the set-up measured low on this shared machine.
    for sock in [&ssh_sock, &openssh_sock] {
        median(sock, 1, &ec_req);
    }
    let mut lines = Vec::new();
    for n in [1, 4] {
        let ours = Side {
            sock: &ssh_sock,
            pid: agent.pid(),
        };
        let theirs = Side {
            sock: &openssh_sock,
            pid: openssh.id(),
        };
        let ((k, kc), (o, oc), ratio) = paired(ours, theirs, n, &ec_req);
        println!(
            "| ECDSA P-256 file key | {n} | {k:.0} ({kc:.0} µs CPU/sig) | {o:.0} ({oc:.0} µs CPU/sig) | {ratio:.1}x |"
        );
        lines.push((n, k, o, ratio));
    }
    for n in [1, 4] {
        let k = median(&ssh_sock, n, &ed_req);
        println!("| Ed25519 file key | {n} | {k:.0} | | |");
    }
    for n in [1, 4] {
        let k = median(&ssh_sock, n, &token_req);
        println!("| P-256 token keypair (SoftHSM) | {n} | {k:.0} | | |");
    }

    // The ceiling: one round trip of these sizes plus aws-lc's signature, nothing else.
    let answer_len = {
        let mut conn = UnixStream::connect(&ssh_sock).expect("connect");
        conn.write_all(&ec_req).expect("write");
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).expect("read len");
        u32::from_be_bytes(len) as usize
    };
    let server = common::pingpong::Server::start(tmp.path(), "ssh", answer_len);
    let pingers = server.connect(4, ec_req.len() - 4);
    let key = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .expect("a P-256 key");
    for (n, k, o, ratio) in lines {
        let pp = common::pingpong::median(&pingers[..n], ROUNDS, ROUND);
        let sign = sign_rate(&key, n);
        let ceiling = common::pingpong::ceiling(sign, pp);
        println!(
            "bench: ssh sign ecdsa clients={n} keywardd={k:.0} ssh_agent={o:.0} ratio={ratio:.2} pingpong={pp:.0} sign={sign:.0} ceiling={ceiling:.0} bound={:.2} bound_pp={:.2}",
            ceiling / o,
            pp / o
        );
    }
    drop(pingers);
    drop(server);
    drop(c);
    let _ = openssh.kill();
    let _ = openssh.wait();
    drop(agent);
}
