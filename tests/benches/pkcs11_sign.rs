//! ECDSA P-256 `C_Sign` (`CKM_ECDSA` over a 32-byte digest) per second, at 1 and 4 threads, in
//! one run, over `cryptoki`, for:
//! - the Keyward module with a soft-root agent keypair (software key, key cache);
//! - the Keyward module with a token keypair on a SoftHSM-rooted agent;
//! - SoftHSM called directly;
//! - p11-kit's remoting of the same SoftHSM token (`p11-kit server` + `p11-kit-client.so`,
//!   started here).
//!
//! A benchmark, not a test: `cargo build --release --workspace --bins && cargo build --release
//! -p keyward-pkcs11 && cargo bench -p keyward-tests --bench pkcs11_sign`. Each figure is the
//! median of 3 rounds of 1 s; each thread has its own session. Prints a table and the ratios the
//! README quotes.
//!
//! Also, in the same run, the physical floor of the module's one request per `C_Sign`: a bare
//! Unix-socket ping-pong between two processes with `sign.digest`'s request and answer sizes
//! (the agent's bench helper `agent/benches/common/pingpong.rs`), and from it the `bound`: the
//! best `module / SoftHSM direct` ratio if the agent added nothing to SoftHSM's own signature but
//! one round trip, `t_direct / (t_direct + t_pingpong)` (at 4 threads on 2 cores both are
//! CPU-bound, so their times add up the same way; an estimate there). An agent key signed by
//! aws-lc rather than SoftHSM can beat that bound: its signature is faster than SoftHSM's.
//! One machine-readable line per module row and thread count:
//! `bench: <row> threads=<n> module=<ops/s> direct=<ops/s> p11kit=<ops/s> ratio=<module/direct>
//! pingpong=<ops/s> bound=<ratio>`.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyward_tests::pkcs11::{init_for_module, module_path};
use keyward_tests::{Options, RootKind, TestEnv};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../agent/benches/common/pingpong.rs"]
mod pingpong;

const ROUNDS: usize = 3;
const ROUND: Duration = Duration::from_secs(1);
const THREADS: [usize; 2] = [1, 4];
const BENCH_PIN: &str = "bench-pin-1234";

fn login(p: &Pkcs11, pin: &str) -> cryptoki::session::Session {
    let slot = p.get_slots_with_token().expect("slots")[0];
    let s = p.open_rw_session(slot).expect("session");
    match s.login(UserType::User, Some(&AuthPin::from(pin.to_string()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    s
}

/// Signatures per second: median of the rounds, `threads` threads each with its own session.
fn measure(p: &Pkcs11, pin: &str, label: &str, threads: usize) -> f64 {
    let mut rates: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let counts: Vec<u64> = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..threads)
                    .map(|_| {
                        sc.spawn(|| {
                            let s = login(p, pin);
                            let key = s
                                .find_objects(&[
                                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                                    Attribute::Label(label.as_bytes().to_vec()),
                                ])
                                .expect("find")
                                .first()
                                .copied()
                                .unwrap_or_else(|| panic!("no private key {label}"));
                            let digest = [0x5au8; 32];
                            let start = Instant::now();
                            let mut n = 0u64;
                            while start.elapsed() < ROUND {
                                s.sign(&Mechanism::Ecdsa, key, &digest).expect("sign");
                                n += 1;
                            }
                            n
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("thread")).collect()
            });
            counts.iter().sum::<u64>() as f64 / ROUND.as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[ROUNDS / 2]
}

fn load(path: &Path) -> Pkcs11 {
    let p = Pkcs11::new(path).unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    p
}

/// The module against one agent: (1 thread, 4 threads).
fn module_rates(env: &TestEnv, label: &str) -> Vec<f64> {
    std::env::set_var("KEYWARD_SOCK", env.socket_path());
    let p = load(&module_path());
    let r = THREADS
        .iter()
        .map(|&t| measure(&p, env.pin(), label, t))
        .collect();
    drop(p);
    r
}

/// A SoftHSM token of the bench's own with one P-256 keypair labelled `bench`; sets
/// `SOFTHSM2_CONF` for this process and its children.
fn softhsm_token(dir: &Path) {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("token dir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("softhsm conf");
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let st = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            BENCH_PIN,
        ])
        .args(["--so-pin", "bench-so-5678"])
        .stdout(Stdio::null())
        .status()
        .expect("softhsm2-util");
    assert!(st.success(), "softhsm2-util --init-token failed");
    let p = load(Path::new(SOFTHSM));
    let s = login(&p, BENCH_PIN);
    let p256: Vec<u8> = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::EcParams(p256),
            Attribute::Verify(true),
            Attribute::Label(b"bench".to_vec()),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Label(b"bench".to_vec()),
        ],
    )
    .expect("generate the bench keypair");
}

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

/// `p11-kit server` for the bench token, in the foreground; sets `P11_KIT_SERVER_ADDRESS`.
fn p11kit_server(dir: &Path) -> Child {
    let sock = dir.join("p11kit.sock");
    let child = Command::new("p11-kit")
        .args(["server", "-f", "--provider", SOFTHSM, "-n"])
        .arg(&sock)
        .arg("pkcs11:token=bench")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("p11-kit server");
    let until = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < until, "p11-kit server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::env::set_var(
        "P11_KIT_SERVER_ADDRESS",
        format!("unix:path={}", sock.display()),
    );
    child
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    pingpong::serve_if_asked();
    // p11-kit's server and client module, SoftHSM, pkcs11-tool: installed when missing.
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();

    let soft = TestEnv::start_with(RootKind::Soft, Options::default());
    init_for_module(&soft);
    rows.push((
        "module, soft-root agent key",
        module_rates(&soft, "p11-ecdsa"),
    ));
    drop(soft);

    let hsm = TestEnv::start_with(RootKind::Pkcs11, Options::default());
    init_for_module(&hsm);
    let args = keyward_proto::ops::KeypairCreateArgs {
        label: Some("bench-token".into()),
        on_token: true,
        ..Default::default()
    };
    hsm.client()
        .run(|c| c.call::<keyward_proto::ops::op::KeypairCreate>(&args))
        .expect("token keypair");
    rows.push((
        "module, token keypair (SoftHSM root)",
        module_rates(&hsm, "bench-token"),
    ));
    drop(hsm);

    softhsm_token(dir.path());
    let direct = load(Path::new(SOFTHSM));
    let direct_rates: Vec<f64> = THREADS
        .iter()
        .map(|&t| measure(&direct, BENCH_PIN, "bench", t))
        .collect();
    drop(direct);
    rows.push(("SoftHSM direct", direct_rates));

    let mut server = p11kit_server(dir.path());
    let remote = load(Path::new(P11KIT_CLIENT));
    let remote_rates: Vec<f64> = THREADS
        .iter()
        .map(|&t| measure(&remote, BENCH_PIN, "bench", t))
        .collect();
    drop(remote);
    let _ = server.kill();
    let _ = server.wait();
    rows.push(("p11-kit remote (same SoftHSM token)", remote_rates));

    // The physical floor of one `sign.digest`: its request and answer sizes (a key id, a 32-byte
    // digest; a 64-byte r || s signature), as the module and the agent encode them.
    let req = keyward_proto::Request::new(
        7,
        "sign.digest",
        &keyward_proto::ops::SignDigestArgs {
            key: uuid::Uuid::new_v4().to_string(),
            digest: serde_bytes::ByteBuf::from(vec![0x5au8; 32]),
        },
    )
    .and_then(|r| r.to_cbor())
    .expect("encode request")
    .len();
    let resp = keyward_proto::Response::ok(
        7,
        &keyward_proto::ops::SignatureResult {
            signature: serde_bytes::ByteBuf::from(vec![0xa5u8; 64]),
        },
    )
    .and_then(|r| r.to_cbor())
    .expect("encode answer")
    .len();
    let server = pingpong::Server::start(dir.path(), "sign", resp);
    let conns = server.connect(THREADS[THREADS.len() - 1], req);
    let pp: Vec<f64> = THREADS
        .iter()
        .map(|&t| pingpong::median(&conns[..t], ROUNDS, ROUND))
        .collect();
    drop(conns);
    drop(server);

    println!("ECDSA P-256 C_Sign/s (median of {ROUNDS} x {ROUND:?})");
    println!("{:<40} {:>10} {:>10}", "", "1 thread", "4 threads");
    for (name, r) in &rows {
        println!("{name:<40} {:>10.0} {:>10.0}", r[0], r[1]);
    }
    println!(
        "{:<40} {:>10.0} {:>10.0}",
        format!("ping-pong, {req} B / {resp} B frames"),
        pp[0],
        pp[1]
    );
    let direct = &rows[2].1;
    let remote = &rows[3].1;
    for (name, r) in &rows[..2] {
        for (i, t) in THREADS.iter().enumerate() {
            println!(
                "{name}, {t} thread(s): {:.2}x p11-kit remote (target >= 2), {:.2}x SoftHSM direct (target >= 0.6)",
                r[i] / remote[i],
                r[i] / direct[i]
            );
        }
    }
    for (i, t) in THREADS.iter().enumerate() {
        println!(
            "bound at {t} thread(s): {:.2}x SoftHSM direct (one round trip added to SoftHSM's signature)",
            pingpong::bound(direct[i], pp[i])
        );
    }
    for (name, r) in &rows[..2] {
        for (i, t) in THREADS.iter().enumerate() {
            println!(
                "bench: {name} threads={t} module={:.0} direct={:.0} p11kit={:.0} ratio={:.2} pingpong={:.0} bound={:.2}",
                r[i],
                direct[i],
                remote[i],
                r[i] / direct[i],
                pp[i],
                pingpong::bound(direct[i], pp[i])
            );
        }
    }
}
