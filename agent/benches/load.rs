//! Concurrency under load: many clients doing mixed operations at once, as a benchmark that also
//! checks every answer.
//!
//! Sets up a private SoftHSM token (softhsm-setup.sh), starts the real `keywardd`, makes a KEK, 8
//! DEKs with a ciphertext each and 4 P-256 keypairs, then runs rounds of 10 s in which each client
//! loops over a mix: encrypt (and decrypt its own ciphertext, checking the plaintext), decrypt a
//! ciphertext made before the run, sign (checking the signature with the keypair's public key),
//! list KEKs, and now and then create a DEK. Rounds: 1 client, then `KEYWARD_LOAD_CLIENTS`
//! (default 64). Reported: operations per second, the ratio to one client, errors (the run
//! fails on any: this is a correctness check under load; the rates are not checked), and the
//! agent's resident set size (VmRSS, VmHWM) before and after.
//! Run: `cargo bench -p keyward-agent --bench load`.

mod common;

use keyward_client::proto::ops::{DekCreateArgs, KeypairCreateArgs};
use keyward_client::BlockingClient;
use keyward_identity::ecdsa::{verify, SigEncoding};
use keyward_identity::PublicKey;
use std::path::Path;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

struct Fixture {
    deks: Vec<String>,
    before: Vec<(String, Vec<u8>)>,
    keys: Vec<(String, PublicKey)>,
}

/// One round: `n` clients for `secs`; (ops, errors, seconds).
fn round(sock: &Path, fx: &Fixture, n: usize, secs: u64) -> (u64, u64, f64) {
    let stop = AtomicBool::new(false);
    let (ops, errors) = (AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..n {
            let (stop, ops, errors) = (&stop, &ops, &errors);
            s.spawn(move || {
                let c = match BlockingClient::connect(sock) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("client {t}: connect: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let ok = match i % 5 {
                        0 => {
                            let dek = &fx.deks[i % fx.deks.len()];
                            let pt = format!("client {t} op {i}");
                            c.run(|c| c.encrypt(dek, pt.as_bytes()))
                                .and_then(|ct| c.run(|c| c.decrypt(&ct, None)))
                                .map(|p| p.expose() == pt.as_bytes())
                        }
                        1 => {
                            let (ct, pt) = &fx.before[i % fx.before.len()];
                            c.run(|c| c.decrypt(ct, None))
                                .map(|p| p.expose() == &pt[..])
                        }
                        2 => {
                            let (id, public) = &fx.keys[i % fx.keys.len()];
                            let msg = format!("sign {t} {i}");
                            c.run(|c| c.sign(id, msg.as_bytes(), false)).map(|sig| {
                                verify(public, msg.as_bytes(), &sig, SigEncoding::Der).is_ok()
                            })
                        }
                        3 if i % 50 == 3 => {
                            let args = DekCreateArgs::default();
                            c.run(|c| c.dek_create(&args)).map(|r| !r.id.is_empty())
                        }
                        _ => c.run(|c| c.kek_list()).map(|l| l.keys.len() == 1),
                    };
                    match ok {
                        Ok(true) => {
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {
                            eprintln!("client {t}: op {i}: a wrong answer");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("client {t}: op {i}: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    (
        ops.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this is not a test.
    }
    let clients: usize = std::env::var("KEYWARD_LOAD_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let secs: u64 = std::env::var("KEYWARD_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = common::setup_token(tmp.path());
    let sock = tmp.path().join("agent.sock");
    let agent = common::Agent::start(&config, &sock, &sock, |_| {});
    let c = common::init_with_kek(&sock);
    let mut fx = Fixture {
        deks: Vec::new(),
        before: Vec::new(),
        keys: Vec::new(),
    };
    let dek_args = DekCreateArgs::default();
    let kp_args = KeypairCreateArgs::default();
    for i in 0..8 {
        let dek = c.run(|c| c.dek_create(&dek_args)).expect("dek").id;
        let pt = format!("made before the run, {i}").into_bytes();
        let ct = c.run(|c| c.encrypt(&dek, &pt)).expect("encrypt");
        fx.before.push((ct, pt));
        fx.deks.push(dek);
    }
    for _ in 0..4 {
        let id = c.run(|c| c.keypair_create(&kp_args)).expect("keypair").id;
        let show = keyward_client::proto::ops::IdArgs { id: id.clone() };
        let info = c
            .run(|c| c.call::<keyward_client::proto::ops::op::KeypairShow>(&show))
            .expect("show");
        let public = PublicKey::from_sec1_bytes(info.public_key.as_deref().expect("public key"))
            .expect("P-256 public key");
        fx.keys.push((id, public));
    }
    drop(c);
    let pid = agent.pid();
    let rss0 = rss(pid);
    let (ops1, err1, t1) = round(&sock, &fx, 1, secs);
    let rss1 = rss(pid);
    let (opsn, errn, tn) = round(&sock, &fx, clients, secs);
    let rssn = rss(pid);
    drop(agent);
    let (r1, rn) = (ops1 as f64 / t1, opsn as f64 / tn);
    println!("\nKeyward under load ({secs} s rounds; mixed encrypt+decrypt, decrypt, sign, list, create)");
    println!("| clients | operations | ops/s | errors | agent RSS after (VmRSS / peak) |");
    println!("|---|---|---|---|---|");
    println!(
        "| 1 | {ops1} | {r1:.0} | {err1} | {} / {} MiB |",
        rss1.0 / 1024,
        rss1.1 / 1024
    );
    println!(
        "| {clients} | {opsn} | {rn:.0} | {errn} | {} / {} MiB |",
        rssn.0 / 1024,
        rssn.1 / 1024
    );
    println!(
        "agent RSS before the rounds: {} MiB; throughput {clients} clients / 1 client: {:.2}",
        rss0.0 / 1024,
        rn / r1
    );
    println!(
        "bench: load clients={clients} ops={rn:.0} single={r1:.0} ratio={:.2} errors={} rss_mib={}",
        rn / r1,
        err1 + errn,
        rssn.0 / 1024
    );
    assert_eq!(err1 + errn, 0, "errors under load (see above)");
}
