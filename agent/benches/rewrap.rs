//! `rewrap` of 10,000 Cryppo ciphertexts after a `dek rotate`, through the agent on a SoftHSM
//! token: how long the whole set takes with 1 and with 4 client connections (each ciphertext is
//! one request: parse, DEK version lookup, open under the old version and seal under the newest,
//! both in the token). Measured once per run (no rounds: a rewrap changes what it rewraps, so
//! the 4-client pass rewraps the 1-client pass's output, which is already at the newest version
//! and costs the same). A sample of the output is decrypted and compared, so a broken rewrap
//! cannot report a fast time.
//! Needs softhsm2 (softhsm-setup.sh). Run: `cargo bench -p keyward-agent --bench rewrap`
//! (`KEYWARD_BENCH_REWRAP_N` changes the count).

use keyward_client::proto::ops::DekCreateArgs;
use keyward_client::proto::secret::Pin;
use keyward_client::BlockingClient;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PIN: &str = "bench-pin-1234";

fn setup_token(dir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-setup.sh");
    let st = Command::new("bash")
        .arg(script)
        .arg(dir)
        .env("KEYWARD_DEV_PIN", PIN)
        .stdout(Stdio::null())
        .status()
        .expect("run softhsm-setup.sh");
    assert!(st.success(), "softhsm-setup.sh failed");
    dir.join("keyward.toml").to_string_lossy().into_owned()
}

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
    let config = setup_token(tmp.path());
    let sock = tmp.path().join("agent.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_keywardd"))
        .arg("--config")
        .arg(&config)
        .arg("--log")
        .arg("warn")
        .env("KEYWARD_SOCK", &sock)
        .spawn()
        .expect("start keywardd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "keywardd did not bind its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = BlockingClient::connect(&sock).expect("connect");
    c.run(|c| c.init(Pin::new(PIN))).expect("init");
    c.run(|c| c.kek_create(None)).expect("kek");
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
    let _ = Command::new("kill").arg(agent.id().to_string()).status();
    let _ = agent.wait();

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
