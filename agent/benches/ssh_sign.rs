//! SSH signatures per second: keywardd's SSH socket vs OpenSSH's `ssh-agent` holding the same
//! file key (one ECDSA P-256 key `ssh-add`ed to both), at 1 and 4 client connections, in one
//! run; plus an Ed25519 file key and a P-256 token keypair (signing in SoftHSM) through keywardd.
//!
//! Each client is one connection sending SIGN_REQUEST for 64 bytes and waiting for the answer
//! (the protocol has no pipelining). Figures: the median of 5 rounds of 1 s. The machine is
//! shared, so keywardd's and ssh-agent's rounds alternate (each pair sees the same load) and the
//! ratio is the median of the per-round ratios.
//! Needs softhsm2 and openssh-client (softhsm-setup.sh, ssh-setup.sh).
//! Run: `cargo bench -p keyward-agent --bench ssh_sign`.

use keyward_client::proto::ops::{KeypairCreateArgs, SshMode};
use keyward_client::proto::secret::Pin;
use keyward_client::BlockingClient;
use ssh_agent_lib::proto::{PublicCredential, Request, SignRequest};
use ssh_encoding::Encode;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PIN: &str = "bench-pin-1234";
const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_secs(1);

fn rate(conns: &[std::sync::Mutex<UnixStream>], req: &[u8]) -> f64 {
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
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
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
    mid((0..ROUNDS).map(|_| rate(&conns, req)).collect())
}

/// Alternating rounds on two agents: (median a, median b, median of the per-round ratios a/b).
fn paired(a: &Path, b: &Path, clients: usize, req: &[u8]) -> (f64, f64, f64) {
    let (ca, cb) = (connect(a, clients), connect(b, clients));
    let pairs: Vec<(f64, f64)> = (0..ROUNDS)
        .map(|_| (rate(&ca, req), rate(&cb, req)))
        .collect();
    (
        mid(pairs.iter().map(|p| p.0).collect()),
        mid(pairs.iter().map(|p| p.1).collect()),
        mid(pairs.iter().map(|p| p.0 / p.1).collect()),
    )
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
    let sock = tmp.path().join("run/agent.sock");
    let ssh_sock = tmp.path().join("run/ssh.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_keywardd"))
        .arg("--config")
        .arg(&config)
        .arg("--log")
        .arg("warn")
        .env("KEYWARD_SOCK", &sock)
        .env_remove("KEYWARD_SSH_SOCK")
        .spawn()
        .expect("start keywardd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ssh_sock.exists() {
        assert!(
            Instant::now() < deadline,
            "keywardd did not bind its sockets"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = BlockingClient::connect(&sock).expect("connect");
    c.run(|c| c.init(Pin::new(PIN))).expect("init");
    c.run(|c| c.kek_create(None)).expect("kek");
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
    for n in [1, 4] {
        let (k, o, ratio) = paired(&ssh_sock, &openssh_sock, n, &ec_req);
        println!("| ECDSA P-256 file key | {n} | {k:.0} | {o:.0} | {ratio:.1}x |");
    }
    for n in [1, 4] {
        let k = median(&ssh_sock, n, &ed_req);
        println!("| Ed25519 file key | {n} | {k:.0} | | |");
    }
    for n in [1, 4] {
        let k = median(&ssh_sock, n, &token_req);
        println!("| P-256 token keypair (SoftHSM) | {n} | {k:.0} | | |");
    }
    drop(c);
    let _ = openssh.kill();
    let _ = openssh.wait();
    let _ = Command::new("kill").arg(agent.id().to_string()).status();
    let _ = agent.wait();
}
