//! What the agent's benchmarks share: a private SoftHSM token made by `softhsm-setup.sh` in a
//! temporary directory, the real `keywardd` started on it (stopped when dropped), and an
//! initialised root with one KEK. Each bench includes it with `mod common;`; not every bench uses
//! every item.
#![allow(dead_code)]

use keyward_client::proto::secret::Pin;
use keyward_client::BlockingClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The benches' token PIN (a throwaway token in a temporary directory).
pub const PIN: &str = "bench-pin-1234";

/// Run `softhsm-setup.sh --dir DIR` (a token and a config in DIR); the config's path.
pub fn setup_token(dir: &Path) -> PathBuf {
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
    let config = dir.join("keyward.toml");
    // The audit log is on by default (as for users: beside the keystore, required);
    // `KEYWARD_BENCH_AUDIT=off` measures without it, for the with/without comparison the README
    // quotes (`on`, or unset, keeps the default).
    if std::env::var("KEYWARD_BENCH_AUDIT").is_ok_and(|v| v == "off") {
        let mut text = std::fs::read_to_string(&config).expect("read the bench config");
        text.push_str("\n[audit]\nenabled = false\n");
        std::fs::write(&config, text).expect("write the bench config");
    }
    spin_override(&config);
    config
}

/// `KEYWARD_BENCH_SPIN_US=N` runs the agent with `[server] spin_us = N` (0: no spin after an
/// answer) and `KEYWARD_BENCH_NONCES=N` with `[server] ecdsa_nonces = N` (0: no precomputed
/// ECDSA nonces), for the on/off comparisons the README quotes; unset keeps the defaults.
pub fn spin_override(config: &Path) {
    let mut server = String::new();
    if let Ok(us) = std::env::var("KEYWARD_BENCH_SPIN_US") {
        let us: u64 = us.parse().expect("KEYWARD_BENCH_SPIN_US: microseconds");
        server.push_str(&format!("spin_us = {us}\n"));
    }
    if let Ok(n) = std::env::var("KEYWARD_BENCH_NONCES") {
        let n: usize = n.parse().expect("KEYWARD_BENCH_NONCES: a pool size");
        server.push_str(&format!("ecdsa_nonces = {n}\n"));
    }
    if !server.is_empty() {
        let mut text = std::fs::read_to_string(config).expect("read the bench config");
        text.push_str(&format!("\n[server]\n{server}"));
        std::fs::write(config, text).expect("write the bench config");
    }
}

/// The real `keywardd`, stopped (SIGTERM, then reaped) when dropped.
pub struct Agent {
    child: Child,
}

impl Agent {
    /// Start `keywardd --config CONFIG --log LOG` (LOG: `$KEYWARD_BENCH_LOG`, else `warn`) with
    /// its socket at `sock`, let `adjust` add to the command, and wait (at most 30 s) until
    /// `ready` exists (the socket, or the SSH socket).
    pub fn start(
        config: &Path,
        sock: &Path,
        ready: &Path,
        adjust: impl FnOnce(&mut Command),
    ) -> Agent {
        let log = std::env::var("KEYWARD_BENCH_LOG").unwrap_or_else(|_| "warn".into());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keywardd"));
        cmd.arg("--config")
            .arg(config)
            .arg("--log")
            .arg(log)
            .env("KEYWARD_SOCK", sock);
        adjust(&mut cmd);
        let child = cmd.spawn().expect("start keywardd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "keywardd did not bind its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// `init` and one KEK through a fresh connection, which is returned.
pub fn init_with_kek(sock: &Path) -> BlockingClient {
    let c = BlockingClient::connect(sock).expect("connect");
    c.run(|c| c.init(Pin::new(PIN))).expect("init");
    c.run(|c| c.kek_create(None)).expect("kek");
    c
}
pub mod pingpong;
