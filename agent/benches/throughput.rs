//! Agent throughput against the same token operations called in-process, measured in one run.
//!
//! Sets up a private SoftHSM token (softhsm-setup.sh), then measures for 1 and 8 clients:
//! - `encrypt 64 B`: through the agent (socket, CBOR, DEK unwrap + AES-GCM in the token,
//!   Cryppo serialization) vs. in-process (`Kek::seal`: the same unwrap + GCM token calls);
//! - `dek export`: through the agent vs. in-process `Kek::export_dek`;
//! - and in between, the same operations through `Hierarchy` in-process (keystore lookups,
//!   policy, Cryppo serialization; no socket), to show where the agent's time goes.
//!
//! Each figure is the median of 5 rounds of 1 s. Run: `cargo bench -p keyward-agent --bench throughput`.

use keyward_agent::config::UnlockPolicy;
use keyward_agent::hierarchy::Hierarchy;
use keyward_agent::keystore::Keystore;
use keyward_client::proto::ops::DekCreateArgs;
use keyward_client::proto::secret::Pin;
use keyward_client::BlockingClient;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PIN: &str = "bench-pin-1234";
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

fn setup_token(dir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-setup.sh");
    let st = Command::new("bash")
        .arg(&script)
        .arg("--dir")
        .arg(dir)
        .env("KEYWARD_DEV_PIN", PIN)
        .stdout(Stdio::null())
        .status()
        .expect("run softhsm-setup.sh");
    assert!(st.success(), "softhsm-setup.sh failed");
    dir.join("keyward.toml").to_string_lossy().into_owned()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this is not a test.
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = setup_token(tmp.path());
    let cfg = keyward_agent::config::Config::load(Path::new(&config)).expect("config");
    assert!(
        matches!(cfg.root, keyward_agent::config::RootConfig::Pkcs11 { .. }),
        "expected a pkcs11 config"
    );

    // --- through the agent ----------------------------------------------------------------
    let sock = tmp.path().join("agent.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_keywardd"))
        .arg("--config")
        .arg(&config)
        .arg("--log")
        .arg("warn")
        .env("KEYWARD_SOCK", &sock)
        .envs(std::env::var_os("KW_INLINE").map(|v| ("KW_INLINE", v)))
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
    let a_enc1 = median(1, &agent_enc);
    let a_enc8 = median(8, &agent_enc);
    let a_exp1 = median(1, &agent_exp);
    let a_exp8 = median(8, &agent_exp);
    drop(clients);
    drop(c);
    let _ = Command::new("kill").arg(agent.id().to_string()).status();
    let _ = agent.wait();

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
    root.unlock(&Pin::new(PIN), &Default::default())
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
    h.unlock(&Pin::new(PIN)).expect("unlock hierarchy");
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
}
