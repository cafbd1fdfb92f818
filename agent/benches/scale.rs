//! Keystore scale: the same single-key operations on a keystore of 1,000 DEKs and of 1,000,000
//! DEKs (under 100 KEKs), each measured through the real `keywardd` on a SoftHSM token.
//!
//! For each size: `init` and 100 KEKs through the hierarchy in-process, one DEK made under each
//! KEK, then copies of those DEK records under new ids (the same wrapped key, so every copy
//! works) written straight through the keystore API in one transaction (`insert_many`, each row
//! MAC'd as the agent writes it), until the keystore holds the size. Then `keywardd` is started on
//! it and the bench reports: the time from spawning it until its socket exists (which includes
//! opening the keystore and SQLite's `integrity_check`), its RSS, the time of the first `unlock`
//! (the keystore integrity key and records it checks), and the median latency of `encrypt` (64 B)
//! and `dek.show` over one connection. Ratios are 1M / 1k. Sizes: `KEYWARD_SCALE_SIZES`
//! (default `1000,1000000`). Run: `cargo bench -p keyward-agent --bench scale`.

mod common;

use keyward_agent::config::UnlockPolicy;
use keyward_agent::hierarchy::Hierarchy;
use keyward_agent::keystore::{KeyKind, Keystore, Purpose};
use keyward_client::proto::ops::KeystoreCheckState;
use keyward_client::proto::secret::Pin;
use keyward_client::BlockingClient;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEKS: usize = 100;
const SAMPLES: usize = 300;

struct Row {
    deks: usize,
    fill_s: f64,
    socket_ms: f64,
    /// The keystore's full check (SQLite `integrity_check`), which runs after the socket is up.
    check_ms: f64,
    rss_start_mib: u64,
    unlock_ms: f64,
    rss_unlocked_mib: u64,
    encrypt_us: f64,
    show_us: f64,
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn median_us(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

/// Fill a keystore at `config`'s path with `deks` DEKs under `KEKS` KEKs; one real DEK id.
fn fill(config: &Path, deks: usize) -> (String, f64) {
    let t = Instant::now();
    let cfg = keyward_agent::config::Config::load(config).expect("config");
    // As keywardd does at start-up (each size runs in its own process, see `main`).
    keyward_agent::root::env::apply_at_startup(&cfg.root_env().expect("root env"));
    let ks = Arc::new(Keystore::open(&cfg.keystore).expect("keystore"));
    let root = keyward_agent::root::from_config(&cfg.root).expect("root");
    let h = Hierarchy::new(ks.clone(), root, UnlockPolicy::default());
    h.init(&Pin::new(common::PIN)).expect("init");
    let mut first = None;
    let per_kek = deks / KEKS;
    for k in 0..KEKS {
        let kek = h.kek_create(Some(format!("kek {k}"))).expect("kek");
        let dek = h
            .dek_create(Some(&kek.to_string()), Purpose::Personal, false, None)
            .expect("dek");
        first.get_or_insert(dek);
        let rec = ks.get(&dek).expect("read").expect("dek record");
        assert_eq!(rec.kind, KeyKind::Dek);
        let copies: Vec<_> = (1..per_kek)
            .map(|_| {
                let mut r = rec.clone();
                r.id = uuid::Uuid::new_v4();
                r
            })
            .collect();
        for chunk in copies.chunks(50_000) {
            ks.insert_many(chunk).expect("bulk insert");
        }
    }
    h.lock().expect("lock");
    drop(h);
    (first.expect("a DEK").to_string(), t.elapsed().as_secs_f64())
}

fn measure(deks: usize) -> Row {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = common::setup_token(tmp.path());
    let (dek, fill_s) = fill(&config, deks);
    let sock = tmp.path().join("agent.sock");
    let t = Instant::now();
    let agent = common::Agent::start(&config, &sock, &sock, |_| {});
    let socket_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss_start_mib = rss_mib(agent.pid());
    let c = BlockingClient::connect(&sock).expect("connect");
    // The keystore's full check runs just after the socket is up; key operations (unlock too)
    // answer `keystore_checking` until it passes. Its duration is reported apart.
    let check_ms = loop {
        let st = c.run(|c| c.status()).expect("status");
        match st.keystore_check {
            Some(k) if k.state == KeystoreCheckState::Checking => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Some(k) if k.state == KeystoreCheckState::Ok => break k.ms as f64,
            other => panic!("keystore check: {other:?}"),
        }
    };
    let t = Instant::now();
    c.run(|c| c.unlock(Pin::new(common::PIN))).expect("unlock");
    let unlock_ms = t.elapsed().as_secs_f64() * 1e3;
    // Warm up, then time one request at a time.
    for _ in 0..20 {
        c.run(|c| c.encrypt(&dek, &[7; 64])).expect("encrypt");
    }
    let time = |f: &dyn Fn()| {
        (0..SAMPLES)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect::<Vec<_>>()
    };
    let encrypt_us = median_us(time(&|| {
        c.run(|c| c.encrypt(&dek, &[7; 64])).expect("encrypt");
    }));
    let show_us = median_us(time(&|| {
        c.run(|c| c.dek_show(&dek)).expect("dek.show");
    }));
    let rss_unlocked_mib = rss_mib(agent.pid());
    drop(c);
    drop(agent);
    Row {
        deks,
        fill_s,
        socket_ms,
        check_ms,
        rss_start_mib,
        unlock_ms,
        rss_unlocked_mib,
        encrypt_us,
        show_us,
    }
}

/// One size, in this process (a fresh process per size: a root's environment is applied once
/// per process, and each size has its own token); prints the row as one line for the parent.
fn run_one(deks: usize) {
    let r = measure(deks);
    println!(
        "ROW {} {} {} {} {} {} {} {} {}",
        r.deks,
        r.fill_s,
        r.socket_ms,
        r.check_ms,
        r.rss_start_mib,
        r.unlock_ms,
        r.rss_unlocked_mib,
        r.encrypt_us,
        r.show_us
    );
}

fn parse_row(line: &str) -> Option<Row> {
    let f: Vec<&str> = line.strip_prefix("ROW ")?.split(' ').collect();
    Some(Row {
        deks: f.first()?.parse().ok()?,
        fill_s: f.get(1)?.parse().ok()?,
        socket_ms: f.get(2)?.parse().ok()?,
        check_ms: f.get(3)?.parse().ok()?,
        rss_start_mib: f.get(4)?.parse().ok()?,
        unlock_ms: f.get(5)?.parse().ok()?,
        rss_unlocked_mib: f.get(6)?.parse().ok()?,
        encrypt_us: f.get(7)?.parse().ok()?,
        show_us: f.get(8)?.parse().ok()?,
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this is not a test.
    }
    if let Some(n) = std::env::var("KEYWARD_SCALE_ONE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return run_one(n);
    }
    let sizes: Vec<usize> = std::env::var("KEYWARD_SCALE_SIZES")
        .unwrap_or_else(|_| "1000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("KEYWARD_SCALE_SIZES: numbers"))
        .collect();
    let me = std::env::current_exe().expect("own path");
    let rows: Vec<Row> = sizes
        .iter()
        .map(|n| {
            let out = std::process::Command::new(&me)
                .env("KEYWARD_SCALE_ONE", n.to_string())
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run one size");
            assert!(out.status.success(), "the run for {n} DEKs failed");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(parse_row)
                .expect("a ROW line")
        })
        .collect();
    println!("\nKeystore scale ({KEKS} KEKs; medians of {SAMPLES} sequential requests)");
    println!("| DEKs | fill (s) | socket up (ms) | keystore check (ms) | RSS at start (MiB) | first unlock (ms) | RSS unlocked (MiB) | encrypt 64 B (µs) | dek.show (µs) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.0} | {:.0} | {} | {:.0} | {} | {:.0} | {:.0} |",
            r.deks,
            r.fill_s,
            r.socket_ms,
            r.check_ms,
            r.rss_start_mib,
            r.unlock_ms,
            r.rss_unlocked_mib,
            r.encrypt_us,
            r.show_us
        );
    }
    for r in &rows {
        println!(
            "bench: scale deks={} socket_ms={:.0} check_ms={:.0} rss_mib={} unlock_ms={:.0} encrypt_us={:.0} show_us={:.0}",
            r.deks, r.socket_ms, r.check_ms, r.rss_unlocked_mib, r.unlock_ms, r.encrypt_us, r.show_us
        );
    }
    if let (Some(a), Some(b)) = (rows.first(), rows.last()) {
        if rows.len() > 1 {
            println!(
                "bench: scale ratio deks={}/{} encrypt={:.2} show={:.2}",
                b.deks,
                a.deks,
                b.encrypt_us / a.encrypt_us,
                b.show_us / a.show_us
            );
        }
    }
}
