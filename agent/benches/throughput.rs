//! Agent throughput against the same token operations called in-process, measured in one run.
//!
//! Sets up a private SoftHSM token (softhsm-setup.sh), then measures for 1 and 8 clients:
//! - `encrypt 64 B`: through the agent (socket, CBOR, DEK unwrap + AES-GCM in the token,
//!   Cryppo serialization) vs. in-process (`Kek::seal`: the same unwrap + GCM token calls);
//! - `dek export`: through the agent vs. in-process `Kek::export_dek`;
//! - and in between, the same operations through `Hierarchy` in-process (keystore lookups,
//!   policy, Cryppo serialization; no socket), to show where the agent's time goes.
//!
//! - `kek.list`, which touches no token, next to the physical floor measured in the same run: a
//!   bare Unix-socket ping-pong of the same message sizes between this process and a child (this
//!   bench re-executed as an echo server), with the same 4-byte framing.
//!
//! Each figure is the median of 5 rounds of 1 s. Besides the table, every row is printed as one
//! machine-readable line:
//! `bench: <operation> clients=<n> agent=<ops/s> inproc=<ops/s> token=<ops/s> ratio=<agent/token>`
//! (for `kek.list`: `pingpong=<ops/s> ratio=<agent/pingpong>`).
//! Run: `cargo bench -p keyward-agent --bench throughput`.

mod common;

use keyward_agent::config::UnlockPolicy;
use keyward_agent::hierarchy::Hierarchy;
use keyward_agent::keystore::Keystore;
use keyward_client::proto::ops::DekCreateArgs;
use keyward_client::proto::secret::Pin;
use keyward_client::BlockingClient;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_secs(1);

/// Run `op` on `threads` threads for one round; return operations per second.
fn rate(threads: usize, op: &(dyn Fn(usize) + Sync)) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, count) = (&stop, &count);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    op(t);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(ROUND);
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn median(threads: usize, op: &(dyn Fn(usize) + Sync)) -> f64 {
    let mut v: Vec<f64> = (0..ROUNDS).map(|_| rate(threads, op)).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[ROUNDS / 2]
}

/// The ping-pong server (this bench re-executed): accept connections on `path`; on each, read
/// 4-byte-framed messages and answer each with a frame of `reply` bytes, until the peer closes.
fn pingpong_server(path: &str, reply: usize) {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind ping-pong socket");
    let body = vec![0xa5u8; reply];
    let mut frame = (reply as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
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

/// One client's ping-pong: send a frame of `request` bytes, read the reply frame.
struct PingPong {
    s: std::sync::Mutex<std::os::unix::net::UnixStream>,
    frame: Vec<u8>,
}

impl PingPong {
    fn connect(path: &std::path::Path, request: usize) -> PingPong {
        let s = std::os::unix::net::UnixStream::connect(path).expect("connect ping-pong");
        let mut frame = (request as u32).to_be_bytes().to_vec();
        frame.extend(std::iter::repeat_n(0x5au8, request));
        PingPong {
            s: std::sync::Mutex::new(s),
            frame,
        }
    }
    fn round_trip(&self) {
        use std::io::{Read, Write};
        let mut s = self.s.lock().expect("ping-pong lock");
        s.write_all(&self.frame).expect("ping");
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("pong length");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).expect("pong");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this is not a test.
    }
    if let [_, flag, path, reply] = &args[..] {
        if flag == "--pingpong-server" {
            return pingpong_server(path, reply.parse().expect("reply size"));
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = common::setup_token(tmp.path());
    let cfg = keyward_agent::config::Config::load(&config).expect("config");
    // The in-process root below needs its environment applied as keywardd applies it: once, at
    // start-up, before any thread.
    keyward_agent::root::env::apply_at_startup(&cfg.root_env().expect("root env"));
    assert!(
        matches!(cfg.root, keyward_agent::config::RootConfig::Pkcs11 { .. }),
        "expected a pkcs11 config"
    );

    // --- through the agent ----------------------------------------------------------------
    let sock = tmp.path().join("agent.sock");
    let agent = common::Agent::start(&config, &sock, &sock, |cmd| {
        cmd.envs(std::env::var_os("KW_INLINE").map(|v| ("KW_INLINE", v)));
    });
    let c = common::init_with_kek(&sock);
    let args = DekCreateArgs {
        exportable: true,
        ..Default::default()
    };
    let dek = c.run(|c| c.dek_create(&args)).expect("dek").id;
    let clients: Vec<BlockingClient> = (0..8)
        .map(|_| BlockingClient::connect(&sock).expect("connect"))
        .collect();
    let pt = [0x42u8; 64];
    let agent_enc = |t: usize| {
        clients[t].run(|c| c.encrypt(&dek, &pt)).expect("encrypt");
    };
    let agent_exp = |t: usize| {
        clients[t].run(|c| c.dek_export(&dek)).expect("export");
    };
    // The transport floor: a round trip that touches no token (one keystore read).
    let list = |t: usize| {
        clients[t].run(|c| c.kek_list()).expect("list");
    };
    let floor1 = median(1, &list);
    let floor8 = median(8, &list);
    // The sizes of one kek.list request and answer, framed as the agent frames them.
    let req_len =
        keyward_client::proto::Request::new(7, "kek.list", &keyward_client::proto::ops::Empty {})
            .and_then(|r| r.to_cbor())
            .expect("encode request")
            .len();
    let keks = c.run(|c| c.kek_list()).expect("list");
    let resp_len = keyward_client::proto::Response::ok(7, &keks)
        .and_then(|r| r.to_cbor())
        .expect("encode answer")
        .len();
    let a_enc1 = median(1, &agent_enc);
    let a_enc8 = median(8, &agent_enc);
    let a_exp1 = median(1, &agent_exp);
    let a_exp8 = median(8, &agent_exp);
    drop(clients);
    drop(c);
    drop(agent);

    // --- the physical floor: a bare Unix-socket ping-pong between two processes -------------
    let pp_path = tmp.path().join("pingpong.sock");
    let mut server = Command::new(std::env::current_exe().expect("own path"))
        .arg("--pingpong-server")
        .arg(&pp_path)
        .arg(resp_len.to_string())
        .spawn()
        .expect("start the ping-pong server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pp_path.exists() {
        assert!(Instant::now() < deadline, "ping-pong server did not bind");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pingers: Vec<PingPong> = (0..8)
        .map(|_| PingPong::connect(&pp_path, req_len))
        .collect();
    let ping = |t: usize| pingers[t].round_trip();
    let pp1 = median(1, &ping);
    let pp8 = median(8, &ping);
    drop(pingers);
    let _ = server.kill();
    let _ = server.wait();

    // --- in-process, the same token operations -------------------------------------------
    let ks = Arc::new(Keystore::open(&cfg.keystore).expect("keystore"));
    let dek_rec = ks
        .get(&dek.parse().expect("uuid"))
        .expect("read")
        .expect("dek record");
    let kek_rec = ks
        .get(&dek_rec.parent.expect("parent"))
        .expect("read")
        .expect("kek record");
    keyward_agent::root::env::apply_at_startup(&cfg.root_env().expect("root env"));
    let root = keyward_agent::root::from_config(&cfg.root).expect("root");
    root.unlock(&Pin::new(common::PIN), &Default::default())
        .expect("unlock");
    let kek = root
        .open_kek(kek_rec.wrapped.as_deref().expect("wrapped"))
        .expect("open kek");
    let wrapped = dek_rec.wrapped.clone().expect("wrapped dek");
    let direct_enc = |_t: usize| {
        kek.seal(&wrapped, &[7u8; 12], b"aad", &pt).expect("seal");
    };
    let direct_exp = |_t: usize| {
        kek.export_dek(&wrapped).expect("export");
    };
    let d_enc1 = median(1, &direct_enc);
    let d_enc8 = median(8, &direct_enc);
    let d_exp1 = median(1, &direct_exp);
    let d_exp8 = median(8, &direct_exp);
    drop(kek);
    // The hierarchy unlocks the root itself (and keeps what it needs to check later PINs).
    root.lock().expect("lock");

    // --- in-process through the hierarchy: keystore lookups, policy, Cryppo serialization ----
    let h = Hierarchy::new(ks, root, UnlockPolicy::default());
    h.unlock(&Pin::new(common::PIN)).expect("unlock hierarchy");
    let hier_enc = |_t: usize| {
        h.encrypt(&dek, &pt).expect("encrypt");
    };
    let hier_exp = |_t: usize| {
        h.dek_export(&dek).expect("export");
    };
    let h_enc1 = median(1, &hier_enc);
    let h_enc8 = median(8, &hier_enc);
    let h_exp1 = median(1, &hier_exp);
    let h_exp8 = median(8, &hier_exp);

    println!(
        "\nKeyward throughput (median of {ROUNDS} x {}s rounds, ops/s)",
        ROUND.as_secs()
    );
    println!("| operation | clients | through agent | in-process hierarchy | in-process token op | agent / token op |");
    println!("|---|---|---|---|---|---|");
    for (name, n, a, hh, d) in [
        ("encrypt 64 B", 1, a_enc1, h_enc1, d_enc1),
        ("encrypt 64 B", 8, a_enc8, h_enc8, d_enc8),
        ("dek export", 1, a_exp1, h_exp1, d_exp1),
        ("dek export", 8, a_exp8, h_exp8, d_exp8),
    ] {
        println!(
            "| {name} | {n} | {a:.0} | {hh:.0} | {d:.0} | {:.2} |",
            a / d
        );
    }
    println!("| kek.list (no token: the transport floor) | 1 | {floor1:.0} | | | |");
    println!("| kek.list (no token: the transport floor) | 8 | {floor8:.0} | | | |");
    println!(
        "| Unix-socket ping-pong, {req_len} B / {resp_len} B frames (the physical floor) | 1 | {pp1:.0} | | | |"
    );
    println!(
        "| Unix-socket ping-pong, {req_len} B / {resp_len} B frames (the physical floor) | 8 | {pp8:.0} | | | |"
    );
    println!();
    for (name, n, a, hh, d) in [
        ("encrypt 64 B", 1, a_enc1, h_enc1, d_enc1),
        ("encrypt 64 B", 8, a_enc8, h_enc8, d_enc8),
        ("dek export", 1, a_exp1, h_exp1, d_exp1),
        ("dek export", 8, a_exp8, h_exp8, d_exp8),
    ] {
        println!(
            "bench: {name} clients={n} agent={a:.0} inproc={hh:.0} token={d:.0} ratio={:.2}",
            a / d
        );
    }
    for (n, a, p) in [(1, floor1, pp1), (8, floor8, pp8)] {
        println!(
            "bench: kek.list clients={n} agent={a:.0} pingpong={p:.0} ratio={:.2}",
            a / p
        );
    }
}
