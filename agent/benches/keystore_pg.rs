//! The shared keystore (issue #17 item 8): PostgreSQL against SQLite, and 8 agents on one
//! database, in one run.
//!
//! A throwaway PostgreSQL server is started by the repo's `postgres-setup.sh` in a temporary
//! directory (Debian's `postgresql`, installed when missing; stopped and removed at the end).
//!
//! **Part 1, one agent, PostgreSQL vs SQLite.** One SoftHSM token (`softhsm-setup.sh`), the real
//! `keywardd` on a SQLite keystore: `init`, a KEK, a DEK; then `keystore migrate` copies that
//! keystore into the database, so both backends hold the same keys under the same root on the
//! same token. The agent is measured on SQLite, stopped, restarted on the database (the config's
//! `keystore =` line changed, nothing else) and measured again. Operations, each over one
//! connection (`clients=1`: latency median and p99, throughput) and then over 8 connections
//! (`clients=8`: throughput, latency per request):
//! - `dek.show`: a keystore read on every request (the record copies serve only key use);
//! - `dek.create`: a write (a new row; on PostgreSQL, one transaction);
//! - `key.limits`: a read-modify-write of one row (the same limits written back: the row, its MAC
//!   and, on PostgreSQL, its `row_version` are rewritten);
//! - `encrypt 64 B` on a DEK whose unwrapped key and record copy are cached (no keystore read);
//! - `decrypt` of one ciphertext, checked to round-trip on every request.
//!
//! **Part 2, 8 agents sharing one database.** Eight `keywardd` on one database and one identity,
//! as eight devices: the first initialises it on its soft root; each other agent has its own soft
//! root (its own passphrase), joins with `init` and is enrolled by the first through the device
//! handshake (`device.request`, `device.approve`, `device.reveal`, `device.approve CODE`). One client thread per agent runs a mixed workload on 4 shared DEKs for a fixed
//! time: per 10 requests, 5 `encrypt` (64 B) each followed by a `decrypt` of that ciphertext on
//! the *next* agent (a cross-agent round trip, checked), 1 `dek.show`, and 3 writes to shared
//! records: `dek.rotate` and `key.limits` on the shared DEKs, `dek.create` under the shared KEK.
//! Reported: aggregate requests per second, the writes, the answers `conflict` (optimistic
//! concurrency: another agent changed the row; the caller retries — this bench does not), the
//! conflict rate (`conflict` / writes), and every other error, which must be 0.
//!
//! It is a bench, not a test: nothing fails on time. It fails loudly (panics, after printing what
//! it measured) on a wrong result: a decrypt that does not give the plaintext back, an error
//! other than `conflict`.
//!
//! Lines: `bench: <op> backend=<sqlite|postgres> clients=<n> ops=<ops/s> median_us=<µs>
//! p99_us=<µs>`, the PostgreSQL line with `ratio=<pg ops/s / sqlite ops/s>` and
//! `latency_ratio=<pg median / sqlite median>`; for part 2 `bench: shared mixed agents=8 ...`.
//! Knobs: `KEYWARD_BENCH_QUICK=1` (shorter rounds), `KEYWARD_BENCH_AUDIT=off` (no audit log).
//! Run: `cargo bench -p keyward-agent --bench keystore_pg`.

mod common;

use keyward_client::proto::ops::{DekCreateArgs, KeyLimitsArgs};
use keyward_client::proto::secret::Pin;
use keyward_client::proto::ErrorCode;
use keyward_client::{BlockingClient, ClientError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn quick() -> bool {
    std::env::var("KEYWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// How long each single-agent measurement runs.
fn round() -> Duration {
    Duration::from_millis(if quick() { 400 } else { 1500 })
}

/// How long the 8-agent mixed workload runs.
fn shared_round() -> Duration {
    Duration::from_secs(if quick() { 3 } else { 10 })
}

const AGENTS: usize = 8;
const SHARED_DEKS: usize = 4;
const PASSPHRASE: &str = "bench passphrase: correct horse battery staple";

// ---- the PostgreSQL server ------------------------------------------------------------------

/// A server started by `postgres-setup.sh --dir DIR`; stopped (`--stop`) when dropped.
struct PgServer {
    dir: PathBuf,
    host: String,
    port: u16,
}

fn repo_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

impl PgServer {
    fn start(dir: &Path) -> PgServer {
        let out = Command::new("bash")
            .arg(repo_script("postgres-setup.sh"))
            .arg("--dir")
            .arg(dir)
            .output()
            .expect("run postgres-setup.sh");
        assert!(
            out.status.success(),
            "postgres-setup.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("postgres.env")).expect("postgres.env");
        let url = env
            .lines()
            .find_map(|l| l.strip_prefix("KEYWARD_TEST_PG=postgres://keyward@"))
            .expect("KEYWARD_TEST_PG in postgres.env");
        let hostport = url.split('/').next().expect("host:port");
        let (host, port) = hostport.rsplit_once(':').expect("host:port");
        PgServer {
            dir: dir.to_path_buf(),
            host: host.to_string(),
            port: port.parse().expect("port"),
        }
    }

    /// Where database `db` is, for the `keyward` role, as `keystore =` takes it.
    fn location(&self, db: &str) -> String {
        format!(
            "postgres://keyward@{}:{}/{db}?sslmode=disable&passfile={}",
            self.host,
            self.port,
            self.dir.join("pgpass").display()
        )
    }

    /// Create database `db`, owned by `keyward` (as the server's superuser).
    fn create_database(&self, db: &str) {
        let mut psql: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("/usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin").join("psql")))
            .filter(|p| p.exists())
            .collect();
        psql.sort();
        let out = Command::new(psql.pop().expect("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(["-U", "pgowner", "-d", "postgres"])
            .arg("-c")
            .arg(format!("CREATE DATABASE {db} OWNER keyward"))
            .env("PGPASSFILE", self.dir.join("pgpass"))
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "CREATE DATABASE {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_script("postgres-setup.sh"))
            .arg("--stop")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `f()` until it gives something, for at most 10 s.
fn poll<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replace the `keystore = ...` line of the config at `config` by `location`.
fn set_keystore(config: &Path, location: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("keystore") && l.contains('=') {
                found = true;
                format!("keystore = {location:?}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "no keystore line in {}", config.display());
    std::fs::write(config, lines.join("\n") + "\n").expect("write config");
}

// ---- measuring --------------------------------------------------------------------------------

/// One measured request: `op(client, thread, i)`.
type Op<'a> = dyn Fn(&BlockingClient, usize, u64) + Sync + 'a;

struct Stats {
    ops: f64,
    median_us: f64,
    p99_us: f64,
}

/// Run `op(client, thread, i)` on one thread per client for `round()`; every request timed.
fn measure(clients: &[BlockingClient], op: &(dyn Fn(&BlockingClient, usize, u64) + Sync)) -> Stats {
    // Warm-up: a few requests per client (first connections, first copies of records).
    for (t, c) in clients.iter().enumerate() {
        for i in 0..5 {
            op(c, t, i);
        }
    }
    let stop = AtomicBool::new(false);
    let all = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for (t, c) in clients.iter().enumerate() {
            let (stop, all) = (&stop, &all);
            s.spawn(move || {
                let mut mine = Vec::with_capacity(4096);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    op(c, t, i);
                    mine.push(t0.elapsed());
                    i += 1;
                }
                all.lock().expect("samples").extend(mine);
            });
        }
        std::thread::sleep(round());
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut v = all.into_inner().expect("samples");
    v.sort();
    assert!(!v.is_empty(), "no request finished");
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    Stats {
        ops: v.len() as f64 / elapsed,
        median_us: at(0.5),
        p99_us: at(0.99),
    }
}

const OPS: [&str; 5] = [
    "dek.show",
    "dek.create",
    "key.limits",
    "encrypt 64 B",
    "decrypt",
];

/// Part 1 on the agent at `sock` (unlocked): each of `OPS` at 1 and 8 clients.
/// `own[t]`: client `t`'s own DEK for `key.limits` (8 clients writing one row would measure
/// their conflicts, which part 2 does).
fn single_agent(
    sock: &Path,
    kek: &str,
    dek: &str,
    own: &[String],
    ct: &str,
    pt: &[u8],
) -> Vec<(usize, Stats)> {
    let clients: Vec<BlockingClient> = (0..8)
        .map(|_| BlockingClient::connect(sock).expect("connect"))
        .collect();
    let create = DekCreateArgs {
        kek: Some(kek.to_string()),
        ..Default::default()
    };
    let limits: Vec<KeyLimitsArgs> = own
        .iter()
        .map(|id| KeyLimitsArgs {
            id: id.clone(),
            usage: None,
            confirm: None,
            not_after: None,
        })
        .collect();
    let ops: [&Op; 5] = [
        &|c, _, _| {
            let k = c.run(|c| c.dek_show(dek)).expect("dek.show");
            assert_eq!(k.id, dek, "dek.show answered another key");
        },
        &|c, _, _| {
            c.run(|c| c.dek_create(&create)).expect("dek.create");
        },
        &|c, t, _| {
            let k = c.run(|c| c.key_limits(&limits[t])).expect("key.limits");
            assert_eq!(k.id, own[t], "key.limits answered another key");
        },
        &|c, _, _| {
            c.run(|c| c.encrypt(dek, pt)).expect("encrypt");
        },
        &|c, _, _| {
            let got = c.run(|c| c.decrypt(ct, None)).expect("decrypt");
            assert_eq!(got.expose(), pt, "decrypt did not round-trip");
        },
    ];
    let mut out = Vec::new();
    for op in ops {
        out.push((1, measure(&clients[..1], op)));
        out.push((8, measure(&clients, op)));
    }
    // The ciphertexts encrypt made are never kept: check that one made now opens.
    let c = &clients[0];
    let fresh = c.run(|c| c.encrypt(dek, pt)).expect("encrypt");
    let back = c.run(|c| c.decrypt(&fresh, None)).expect("decrypt");
    assert_eq!(back.expose(), pt, "encrypt then decrypt did not round-trip");
    out
}

// ---- part 2 -----------------------------------------------------------------------------------

/// `op code` of an error, to count errors by kind (`dek.rotate keystore_error`).
fn kind_of(op: &str, e: &ClientError) -> String {
    match e.code() {
        Some(c) => format!("{op} {}", c.as_str()),
        None => format!("{op} (client: {})", e.client_code().unwrap_or("transport")),
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    writes: AtomicU64,
    conflicts: AtomicU64,
    /// Per write kind: (done, conflict) for rotate, limits, create.
    rotate: [AtomicU64; 2],
    limits: [AtomicU64; 2],
    create: [AtomicU64; 2],
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
    /// Errors by request and code (`dek.rotate keystore_error`: n).
    by_kind: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Counts {
    fn error(&self, kind: &str, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .by_kind
            .lock()
            .expect("errors")
            .entry(kind.to_string())
            .or_default() += 1;
        let mut first = self.first_errors.lock().expect("errors");
        if first.len() < 10 {
            first.push(what);
        }
    }

    /// Count a write's answer: done, `conflict`, or an error.
    fn write<T>(&self, kind: &[AtomicU64; 2], what: &str, r: Result<T, ClientError>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(_) => {
                kind[0].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.code() == Some(ErrorCode::Conflict) => {
                kind[1].fetch_add(1, Ordering::Relaxed);
                self.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.error(&kind_of(what, &e), format!("{what}: {e}")),
        }
    }
}

fn shared_agents(tmp: &Path, pg: &PgServer) {
    pg.create_database("keyward_shared");
    let location = pg.location("keyward_shared");
    let audit_off = std::env::var("KEYWARD_BENCH_AUDIT").is_ok_and(|v| v == "off");
    let dirs: Vec<PathBuf> = (0..AGENTS)
        .map(|i| {
            let d = tmp.join(format!("agent{i}"));
            std::fs::create_dir_all(&d).expect("agent dir");
            let mut text = format!("keystore = {location:?}\n\n[root]\nkind = \"soft\"\n");
            if audit_off {
                text.push_str("\n[audit]\nenabled = false\n");
            }
            std::fs::write(d.join("keyward.toml"), text).expect("config");
            common::spin_override(&d.join("keyward.toml"));
            d
        })
        .collect();
    let start = |d: &Path| {
        let sock = d.join("agent.sock");
        common::Agent::start(&d.join("keyward.toml"), &sock, &sock, |_| {})
    };
    // The first agent initialises the identity (its soft root) and the shared keys.
    let mut agents = vec![start(&dirs[0])];
    let first = BlockingClient::connect(&dirs[0].join("agent.sock")).expect("connect");
    first
        .run(|c| c.init(Pin::new(PASSPHRASE)))
        .expect("init the soft root");
    let kek = first.run(|c| c.kek_create(None)).expect("kek").id;
    let plain = DekCreateArgs::default();
    let deks: Vec<String> = (0..SHARED_DEKS)
        .map(|_| first.run(|c| c.dek_create(&plain)).expect("dek").id)
        .collect();
    // The others are devices of that identity, each on its own soft root (its own passphrase):
    // `init` joins the shared keystore, `device.request` files the request, the first agent
    // answers and enrolls it with the code (the handshake of `keyward device request/approve`),
    // and the device unlocks on its own root.
    for (n, d) in dirs.iter().enumerate().skip(1) {
        agents.push(start(d));
        let c = BlockingClient::connect(&d.join("agent.sock")).expect("connect");
        let own = Pin::new(format!("{PASSPHRASE} {n}"));
        let joined = c.run(|c| c.init(own.clone())).expect("init joins");
        assert!(
            joined.joined,
            "agent {n}: init on the shared keystore joins"
        );
        let req = c
            .run(|c| c.device_request(Some(format!("bench agent {n}"))))
            .expect("device.request");
        first
            .run(|c| c.device_approve(Some(req.id.clone()), None))
            .expect("answer the request");
        let code = poll(|| c.run(|c| c.device_reveal()).ok().and_then(|r| r.code))
            .expect("the new device's code");
        first
            .run(|c| c.device_approve(Some(req.id.clone()), Some(code.clone())))
            .expect("enroll with the code");
        c.run(|c| c.unlock(own.clone()))
            .expect("unlock the new device on its own root");
    }
    drop(first);
    let clients: Vec<BlockingClient> = dirs
        .iter()
        .map(|d| BlockingClient::connect(&d.join("agent.sock")).expect("connect"))
        .collect();
    // Every agent sees the shared keys (a read through each).
    for c in &clients {
        for d in &deks {
            c.run(|c| c.dek_show(d)).expect("dek.show on a shared DEK");
        }
    }

    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let pt = [0x5au8; 64];
    let create = DekCreateArgs {
        kek: Some(kek.clone()),
        ..Default::default()
    };
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..AGENTS {
            let (counts, stop, clients, deks, create) = (&counts, &stop, &clients, &deks, &create);
            s.spawn(move || {
                let me = &clients[t];
                let next = &clients[(t + 1) % AGENTS];
                let mut i = t as u64;
                while !stop.load(Ordering::Relaxed) {
                    let dek = &deks[(i as usize / 10 + t) % SHARED_DEKS];
                    match i % 10 {
                        0..=4 => {
                            counts.requests.fetch_add(2, Ordering::Relaxed);
                            match me.run(|c| c.encrypt(dek, &pt)) {
                                Ok(ct) => match next.run(|c| c.decrypt(&ct, None)) {
                                    Ok(back) if back.expose() == pt => {}
                                    Ok(_) => counts.error(
                                        "decrypt wrong plaintext",
                                        format!(
                                        "agent {} decrypted agent {t}'s ciphertext under {dek} \
                                         to something else",
                                        (t + 1) % AGENTS
                                    ),
                                    ),
                                    Err(e) => counts.error(
                                        &kind_of("decrypt", &e),
                                        format!(
                                            "decrypt on agent {} of agent {t}'s ciphertext: {e}",
                                            (t + 1) % AGENTS
                                        ),
                                    ),
                                },
                                Err(e) => counts.error(
                                    &kind_of("encrypt", &e),
                                    format!("encrypt on agent {t}: {e}"),
                                ),
                            }
                        }
                        5 => {
                            counts.requests.fetch_add(1, Ordering::Relaxed);
                            match me.run(|c| c.dek_show(dek)) {
                                Ok(k) if k.id == *dek => {}
                                Ok(k) => counts.error(
                                    "dek.show wrong key",
                                    format!("dek.show {dek} answered {}", k.id),
                                ),
                                Err(e) => counts.error(
                                    &kind_of("dek.show", &e),
                                    format!("dek.show on agent {t}: {e}"),
                                ),
                            }
                        }
                        6 | 7 => counts.write(
                            &counts.rotate,
                            "dek.rotate",
                            me.run(|c| c.dek_rotate(dek)),
                        ),
                        8 => {
                            let args = KeyLimitsArgs {
                                id: dek.clone(),
                                usage: None,
                                confirm: None,
                                not_after: None,
                            };
                            counts.write(
                                &counts.limits,
                                "key.limits",
                                me.run(|c| c.key_limits(&args)),
                            )
                        }
                        _ => counts.write(
                            &counts.create,
                            "dek.create",
                            me.run(|c| c.dek_create(create)),
                        ),
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(shared_round());
        stop.store(true, Ordering::Relaxed);
    });
    let secs = t0.elapsed().as_secs_f64();
    // Afterwards, every agent agrees on each shared DEK's newest version (LISTEN/NOTIFY has
    // flushed their copies) and decrypts what another made.
    std::thread::sleep(Duration::from_millis(300));
    for d in &deks {
        let versions: Vec<u32> = clients
            .iter()
            .map(|c| c.run(|c| c.dek_show(d)).expect("dek.show").version)
            .collect();
        if versions.iter().any(|v| *v != versions[0]) {
            counts.error(
                "versions disagree after the run",
                format!("agents disagree on {d}'s version: {versions:?}"),
            );
        }
        let ct = clients[0].run(|c| c.encrypt(d, &pt)).expect("encrypt");
        for (n, c) in clients.iter().enumerate() {
            match c.run(|c| c.decrypt(&ct, None)) {
                Ok(b) if b.expose() == pt => {}
                other => counts.error(
                    "decrypt after the run",
                    format!(
                        "agent {n}: decrypt after the run: {:?}",
                        other.map(|_| "wrong plaintext")
                    ),
                ),
            }
        }
    }
    drop(clients);
    drop(agents);

    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (requests, writes, conflicts, errors) = (
        ld(&counts.requests),
        ld(&counts.writes),
        ld(&counts.conflicts),
        ld(&counts.errors),
    );
    let rate = |n: u64| n as f64 / secs;
    let frac = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    println!(
        "\n8 agents on one PostgreSQL database, one identity (8 enrolled devices, each on its own \
         soft root), one client each, {secs:.1} s of mixed requests"
    );
    println!(
        "| requests/s (all agents) | writes/s | writes | conflict | conflict rate | other errors |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {:.0} | {:.0} | {writes} | {conflicts} | {:.3} | {errors} |",
        rate(requests),
        rate(writes),
        frac(conflicts, writes)
    );
    println!("| write | done | conflict | conflict rate |\n|---|---|---|---|");
    for (name, k) in [
        ("dek.rotate", &counts.rotate),
        ("key.limits", &counts.limits),
        ("dek.create", &counts.create),
    ] {
        let (ok, c) = (ld(&k[0]), ld(&k[1]));
        println!("| {name} | {ok} | {c} | {:.3} |", frac(c, ok + c));
    }
    println!(
        "\nbench: shared mixed agents={AGENTS} backend=postgres root=soft ops={:.0} writes={writes} \
         conflicts={conflicts} conflict_rate={:.3} errors={errors}",
        rate(requests),
        frac(conflicts, writes)
    );
    for (name, k) in [
        ("dek.rotate", &counts.rotate),
        ("key.limits", &counts.limits),
        ("dek.create", &counts.create),
    ] {
        let (ok, c) = (ld(&k[0]), ld(&k[1]));
        println!(
            "bench: shared {name} agents={AGENTS} done={ok} conflicts={c} conflict_rate={:.3}",
            frac(c, ok + c)
        );
    }
    let by_kind = counts.by_kind.into_inner().expect("errors");
    for (kind, n) in &by_kind {
        println!("bench: shared error agents={AGENTS} kind={kind:?} count={n}");
    }
    let first = counts.first_errors.into_inner().expect("errors");
    assert!(
        errors == 0,
        "{errors} answers other than conflict among 8 agents on one database, by kind \
         {by_kind:?}; the first: {first:#?}"
    );
}

// ---- main -------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this is not a test.
    }
    let t_all = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pg = PgServer::start(&tmp.path().join("pg"));

    // --- part 1: one agent, one token, SQLite then PostgreSQL -----------------------------
    let tok = tmp.path().join("token");
    let config = common::setup_token(&tok);
    let sock = tok.join("agent.sock");
    let pt = [0x42u8; 64];
    let agent = common::Agent::start(&config, &sock, &sock, |_| {});
    let c = common::init_with_kek(&sock);
    let kek = c.run(|c| c.kek_list()).expect("kek.list").keys[0]
        .id
        .clone();
    let plain = DekCreateArgs::default();
    let dek = c.run(|c| c.dek_create(&plain)).expect("dek").id;
    let own: Vec<String> = (0..8)
        .map(|_| c.run(|c| c.dek_create(&plain)).expect("dek").id)
        .collect();
    let ct = c.run(|c| c.encrypt(&dek, &pt)).expect("encrypt");
    // The same keys in the database (before the SQLite measurement adds its DEKs).
    let location = pg.location("keyward");
    c.run(|c| c.keystore_migrate(&location))
        .expect("keystore migrate to PostgreSQL");
    drop(c);
    let sqlite = single_agent(&sock, &kek, &dek, &own, &ct, &pt);
    drop(agent);

    set_keystore(&config, &location);
    // Each backend its own audit log (the default on PostgreSQL is beside the config, where the
    // SQLite run's log is), unless the log is off.
    let text = std::fs::read_to_string(&config).expect("config");
    if !text.contains("[audit]") {
        std::fs::write(&config, text + "\n[audit]\npath = \"audit-pg.log\"\n").expect("config");
    }
    let agent = common::Agent::start(&config, &sock, &sock, |_| {});
    let c = BlockingClient::connect(&sock).expect("connect");
    c.run(|c| c.unlock(Pin::new(common::PIN)))
        .expect("unlock on PostgreSQL");
    let back = c
        .run(|c| c.decrypt(&ct, None))
        .expect("decrypt on PostgreSQL");
    assert_eq!(back.expose(), pt, "the migrated DEK does not decrypt");
    drop(c);
    let postgres = single_agent(&sock, &kek, &dek, &own, &ct, &pt);
    drop(agent);

    println!(
        "\nOne agent, one SoftHSM token, the same keys: SQLite vs PostgreSQL (local server, TCP); \
         {} ms per row",
        round().as_millis()
    );
    println!("| operation | clients | SQLite ops/s | median µs | p99 µs | PostgreSQL ops/s | median µs | p99 µs | ops ratio pg/sqlite |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let rows: Vec<(&str, usize, &Stats, &Stats)> = sqlite
        .iter()
        .zip(&postgres)
        .enumerate()
        .map(|(i, ((n, s), (_, p)))| (OPS[i / 2], *n, s, p))
        .collect();
    for (op, n, s, p) in &rows {
        println!(
            "| {op} | {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            s.ops,
            s.median_us,
            s.p99_us,
            p.ops,
            p.median_us,
            p.p99_us,
            p.ops / s.ops
        );
    }
    println!();
    for (op, n, s, p) in &rows {
        println!(
            "bench: {op} backend=sqlite clients={n} ops={:.0} median_us={:.0} p99_us={:.0}",
            s.ops, s.median_us, s.p99_us
        );
        println!(
            "bench: {op} backend=postgres clients={n} ops={:.0} median_us={:.0} p99_us={:.0} \
             ratio={:.2} latency_ratio={:.2}",
            p.ops,
            p.median_us,
            p.p99_us,
            p.ops / s.ops,
            p.median_us / s.median_us
        );
    }

    // --- part 2: 8 agents, one database ----------------------------------------------------
    shared_agents(tmp.path(), &pg);
    println!("\n(whole run: {:.0} s)", t_all.elapsed().as_secs_f64());
}
