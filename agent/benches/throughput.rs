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
//!   bench re-executed as an echo server, `common::pingpong`), with the same 4-byte framing.
//! - The same ping-pong with each token row's request and answer sizes, and from it the row's
//!   `bound`: the best `agent / token op` ratio reachable if the agent added nothing to the token
//!   operation but one round trip, `t_token / (t_token + t_pingpong)`. With 8 clients on 2 cores
//!   both are CPU-bound, so their times per operation add up the same way (an estimate there,
//!   since a token op waiting on a lock could overlap another client's round trip).
//!
//! Each figure is the median of 5 rounds of 1 s. Besides the table, every row is printed as one
//! machine-readable line:
//! `bench: <operation> clients=<n> agent=<ops/s> inproc=<ops/s> token=<ops/s> ratio=<agent/token>
//! pingpong=<ops/s> bound=<ratio>` (for `kek.list`: `pingpong=<ops/s> ratio=<agent/pingpong>`).
//! Run: `cargo bench -p keyward-agent --bench throughput`.

mod common;

use keyward_agent::config::UnlockPolicy;
use keyward_agent::hierarchy::Hierarchy;
use keyward_agent::keystore::Keystore;
use keyward_client::proto::ops::DekCreateArgs;
use keyward_client::proto::secret::Pin;
use keyward_client::BlockingClient;

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this is not a test.
    }
    common::pingpong::serve_if_asked();
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
    // The sizes of each measured request and its answer, as the client and the agent encode
    // them (the ping-pong adds the same 4-byte header).
    use keyward_client::proto::{ops, Response};
    let list_args = ops::ListArgs::default();
    let list_sizes = (
        request_len("kek.list", &list_args),
        Response::ok(7, &c.run(|c| c.kek_list()).expect("list"))
            .and_then(|r| r.to_cbor())
            .expect("encode answer")
            .len(),
    );
    let enc_args = ops::EncryptArgs {
        dek: dek.clone(),
        plaintext: keyward_client::proto::secret::SecretBytes::new(pt.to_vec()),
    };
    let ct = ops::Ciphertext {
        ciphertext: c.run(|c| c.encrypt(&dek, &pt)).expect("encrypt"),
    };
    let enc_sizes = (
        request_len("encrypt", &enc_args),
        Response::ok(7, &ct)
            .and_then(|r| r.to_cbor())
            .expect("encode answer")
            .len(),
    );
    let exp_args = ops::IdArgs { id: dek.clone() };
    let exp_sizes = (
        request_len("dek.export", &exp_args),
        Response::ok(7, &c.run(|c| c.dek_export(&dek)).expect("export"))
            .and_then(|r| r.to_cbor())
            .expect("encode answer")
            .len(),
    );
    let a_enc1 = median(1, &agent_enc);
    let a_enc8 = median(8, &agent_enc);
    let a_exp1 = median(1, &agent_exp);
    let a_exp8 = median(8, &agent_exp);
    drop(clients);
    drop(c);
    drop(agent);

    // --- the physical floor: a bare Unix-socket ping-pong between two processes, with each
    // measured operation's request and answer sizes -------------------------------------------
    let pingpong = |name: &str, (req, resp): (usize, usize)| -> (f64, f64) {
        let server = common::pingpong::Server::start(tmp.path(), name, resp);
        let conns = server.connect(8, req);
        let one = common::pingpong::median(&conns[..1], ROUNDS, ROUND);
        let eight = common::pingpong::median(&conns, ROUNDS, ROUND);
        (one, eight)
    };
    let (pp1, pp8) = pingpong("list", list_sizes);
    let (pe1, pe8) = pingpong("encrypt", enc_sizes);
    let (px1, px8) = pingpong("export", exp_sizes);

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

    let bound = common::pingpong::bound;
    let rows = [
        ("encrypt 64 B", 1, a_enc1, h_enc1, d_enc1, pe1),
        ("encrypt 64 B", 8, a_enc8, h_enc8, d_enc8, pe8),
        ("dek export", 1, a_exp1, h_exp1, d_exp1, px1),
        ("dek export", 8, a_exp8, h_exp8, d_exp8, px8),
    ];
    println!(
        "\nKeyward throughput (median of {ROUNDS} x {}s rounds, ops/s)",
        ROUND.as_secs()
    );
    println!("| operation | clients | through agent | in-process hierarchy | in-process token op | agent / token op | ping-pong, same sizes | bound |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, n, a, hh, d, p) in rows {
        println!(
            "| {name} | {n} | {a:.0} | {hh:.0} | {d:.0} | {:.2} | {p:.0} | {:.2} |",
            a / d,
            bound(d, p)
        );
    }
    println!("| kek.list (no token: the transport floor) | 1 | {floor1:.0} | | | | {pp1:.0} | |");
    println!("| kek.list (no token: the transport floor) | 8 | {floor8:.0} | | | | {pp8:.0} | |");
    let sizes = |(q, r): (usize, usize)| format!("{q} B / {r} B");
    println!(
        "(frame bodies, request / answer: kek.list {}, encrypt {}, dek export {}; bound = the \
         best agent / token op one round trip allows, t_token / (t_token + t_pingpong); at 8 \
         clients both are CPU-bound on the same cores, so their times per operation add up the \
         same way)",
        sizes(list_sizes),
        sizes(enc_sizes),
        sizes(exp_sizes)
    );
    println!();
    for (name, n, a, hh, d, p) in rows {
        println!(
            "bench: {name} clients={n} agent={a:.0} inproc={hh:.0} token={d:.0} ratio={:.2} pingpong={p:.0} bound={:.2}",
            a / d,
            bound(d, p)
        );
    }
    for (n, a, p) in [(1, floor1, pp1), (8, floor8, pp8)] {
        println!(
            "bench: kek.list clients={n} agent={a:.0} pingpong={p:.0} ratio={:.2}",
            a / p
        );
    }
}

/// The encoded length of a request body, as the client sends it.
fn request_len<A: serde::Serialize>(op: &str, args: &A) -> usize {
    keyward_client::proto::Request::new(7, op, args)
        .and_then(|r| r.to_cbor())
        .expect("encode request")
        .len()
}
