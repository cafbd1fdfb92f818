//! `rewrap` of 10,000 Cryppo ciphertexts after a `dek rotate`, through the agent on a SoftHSM
//! token: how long the whole set takes with 1 and with 4 client connections (each ciphertext is
//! one request: parse, DEK version lookup, open under the old version and seal under the newest,
//! both in the token). Measured once per run (no rounds: a rewrap changes what it rewraps, so
//! the 4-client pass rewraps the 1-client pass's output, which is already at the newest version
//! and costs the same). A sample of the output is decrypted and compared, so a broken rewrap
//! cannot report a fast time.
//! Needs softhsm2 (softhsm-setup.sh). Run: `cargo bench -p keyward-agent --bench rewrap`
//! (`KEYWARD_BENCH_REWRAP_N` changes the count).

mod common;

use keyward_client::proto::ops::DekCreateArgs;
use keyward_client::BlockingClient;
use std::time::{Duration, Instant};

/// Apply `op` to every item of `items` from `clients` connections in parallel (item i on
/// connection i % clients); returns the results in order and the wall time.
fn run_parallel(
    clients: &[BlockingClient],
    items: &[String],
    op: &(dyn Fn(&BlockingClient, &str) -> String + Sync),
) -> (Vec<String>, Duration) {
    let n = clients.len();
    let start = Instant::now();
    let mut out = vec![String::new(); items.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                s.spawn(move || {
                    items
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % n == t)
                        .map(|(i, ct)| (i, op(&clients[t], ct)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("worker") {
                out[i] = r;
            }
        }
    });
    (out, start.elapsed())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this is not a test.
    }
    let count: usize = std::env::var("KEYWARD_BENCH_REWRAP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = common::setup_token(tmp.path());
    let sock = tmp.path().join("agent.sock");
    let agent = common::Agent::start(&config, &sock, &sock, |_| {});
    let c = common::init_with_kek(&sock);
    let args = DekCreateArgs::default();
    let dek = c.run(|c| c.dek_create(&args)).expect("dek").id;
    let clients: Vec<BlockingClient> = (0..4)
        .map(|_| BlockingClient::connect(&sock).expect("connect"))
        .collect();

    let plaintexts: Vec<String> = (0..count)
        .map(|i| format!("record {i:08}: {}", "x".repeat(40)))
        .collect();
    let encrypt =
        |c: &BlockingClient, pt: &str| c.run(|c| c.encrypt(&dek, pt.as_bytes())).expect("encrypt");
    let (v1, t_enc) = run_parallel(&clients, &plaintexts, &encrypt);
    let version = c.run(|c| c.dek_rotate(&dek)).expect("rotate").version;
    let rewrap = |c: &BlockingClient, ct: &str| c.run(|c| c.rewrap(ct, None)).expect("rewrap");
    let (v2, t1) = run_parallel(&clients[..1], &v1, &rewrap);
    let (v2b, t4) = run_parallel(&clients, &v2, &rewrap);
    let suffix = format!(":v{version}");
    for i in (0..count).step_by((count / 100).max(1)) {
        for ct in [&v2[i], &v2b[i]] {
            let pt = c.run(|c| c.decrypt(ct, None)).expect("decrypt");
            assert_eq!(pt.expose(), plaintexts[i].as_bytes(), "record {i}");
        }
    }
    assert!(v2.iter().all(|ct| !ct.is_empty()));
    drop(clients);
    drop(c);
    drop(agent);

    let per_s = |d: Duration| count as f64 / d.as_secs_f64();
    println!(
        "\nrewrap of {count} Cryppo ciphertexts (~60 B each) to DEK version {version} ({suffix})"
    );
    println!("| step | clients | seconds | per second |");
    println!("|---|---|---|---|");
    println!(
        "| encrypt (set-up) | 4 | {:.2} | {:.0} |",
        t_enc.as_secs_f64(),
        per_s(t_enc)
    );
    println!(
        "| rewrap | 1 | {:.2} | {:.0} |",
        t1.as_secs_f64(),
        per_s(t1)
    );
    println!(
        "| rewrap | 4 | {:.2} | {:.0} |",
        t4.as_secs_f64(),
        per_s(t4)
    );
}
