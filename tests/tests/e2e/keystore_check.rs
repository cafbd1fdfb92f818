//! The keystore's start-up check after bind (issue 16 part 3): the socket is up before SQLite's
//! full `integrity_check` ends, `status` answers at once and reports the check, key operations
//! during it are refused with `keystore_checking`, and after it they work. The check is made
//! slow with the debug-build hook `KEYWARD_TEST_KEYSTORE_CHECK_DELAY_MS`. (A damaged keystore:
//! `faults::damaged_index_page_alone_refuses_every_key_operation`.)

use keyward_tests::{parse_json, wait_for, RootKind, TestEnv};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The agent started by hand (with the delay hook), killed and reaped on drop.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(env: &TestEnv) -> serde_json::Value {
    env.cli_json(&["status"], None)
}

#[test]
fn key_operations_wait_for_the_keystore_check_that_runs_after_bind() {
    if !keyward_tests::requires_sqlite(
        "the start-up check after bind is SQLite's integrity_check of the file",
    ) {
        return;
    }
    let mut env = TestEnv::start(RootKind::Pkcs11);
    let pin_line = format!("{}\n", env.pin());
    env.cli_ok(&env.init_args(), Some(pin_line.as_bytes()));
    env.cli_ok(&["kek", "create"], None);
    // A normal start reports a check that passed.
    let s = wait_for("the first check", || {
        let s = status(&env);
        (s["keystore_check"]["state"] == "ok").then_some(s)
    });
    assert!(s["keystore_check"]["ms"].is_u64(), "{s}");
    env.stop();

    const DELAY_MS: u64 = 10_000;
    let started = Instant::now();
    let log = std::fs::File::create(env.dir().join("slow-check.log")).unwrap();
    let agent = Agent(
        env.agent_command()
            .env("KEYWARD_TEST_KEYSTORE_CHECK_DELAY_MS", DELAY_MS.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("keywardd"),
    );
    wait_for("the socket", || UnixStream::connect(env.socket_path()).ok());
    let bound = started.elapsed();
    assert!(
        bound < Duration::from_millis(DELAY_MS),
        "the socket is up ({bound:?}) before the check ends"
    );

    // Status answers at once, and says the check runs.
    let t = Instant::now();
    let s = status(&env);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t.elapsed()
    );
    assert_eq!(s["keystore_check"]["state"], "checking", "{s}");
    assert_eq!(s["initialized"], true);

    // Key operations (and unlock) are refused with the typed error while it runs.
    let out = env.cli(
        &["--json", "unlock", "--pin-stdin"],
        Some(pin_line.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(1));
    let v = parse_json(&out.stdout);
    assert_eq!(v["error"]["code"], "keystore_checking", "{v}");
    assert_eq!(
        env.cli_json_err(&["kek", "list"], None),
        "keystore_checking"
    );
    assert!(
        started.elapsed() < Duration::from_millis(DELAY_MS),
        "the refusals came during the check ({:?})",
        started.elapsed()
    );

    // Once it passed: status says so, with its duration, and key operations work.
    let s = wait_for("the check to pass", || {
        let s = status(&env);
        (s["keystore_check"]["state"] == "ok").then_some(s)
    });
    assert!(
        s["keystore_check"]["ms"].as_u64().unwrap() >= DELAY_MS,
        "the duration counts from the start of the check: {s}"
    );
    env.cli_ok(&["unlock", "--pin-stdin"], Some(pin_line.as_bytes()));
    let keks = env.cli_json(&["kek", "list"], None);
    assert_eq!(keks["keys"].as_array().unwrap().len(), 1);
    drop(agent);
}

/// A stop while the start-up check runs ends the check: the agent exits cleanly without waiting
/// for it, and its own keystore connection, closed last, removes the WAL. Before, the check's
/// connection was still open when the agent exited, so the WAL stayed: the CI run met it in
/// `faults::read_only_keystore_serves_reads_and_refuses_writes_typed` ("a clean stop removes
/// the WAL"), whose agent is stopped right after it starts, on a loaded machine.
#[test]
fn a_stop_during_the_check_ends_it_and_leaves_no_wal() {
    if !keyward_tests::requires_sqlite("the start-up check is SQLite's integrity_check of the file")
    {
        return;
    }
    let mut env = TestEnv::start(RootKind::Pkcs11);
    let pin_line = format!("{}\n", env.pin());
    env.cli_ok(&env.init_args(), Some(pin_line.as_bytes()));
    env.cli_ok(&["kek", "create"], None);
    env.stop();
    let wal = std::path::PathBuf::from(format!("{}-wal", env.keystore_path().display()));
    assert!(!wal.exists(), "a clean stop removes the WAL");

    // A check that would hold its connection open for a minute.
    let log = std::fs::File::create(env.dir().join("stopped-check.log")).unwrap();
    let mut agent = Agent(
        env.agent_command()
            .env("KEYWARD_TEST_KEYSTORE_CHECK_DELAY_MS", "60000")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("keywardd"),
    );
    wait_for("the socket", || UnixStream::connect(env.socket_path()).ok());
    wait_for("the check to run", || {
        (status(&env)["keystore_check"]["state"] == "checking").then_some(())
    });
    assert!(wal.exists(), "the running agent has its WAL");

    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let st = agent.0.wait().expect("wait for keywardd");
    assert!(st.success(), "keywardd exited with {st}");
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "the stop ended the check instead of waiting for it ({:?})",
        stopped.elapsed()
    );
    assert!(
        !wal.exists(),
        "the stop left the WAL: a connection was still open"
    );
    let log = std::fs::read_to_string(env.dir().join("stopped-check.log")).unwrap();
    assert!(
        !log.contains("keystore check FAILED"),
        "a stopped check is not reported as damage:\n{log}"
    );
    // And the next start checks and serves as usual.
    env.start_agent();
    env.cli_ok(&["unlock", "--pin-stdin"], Some(pin_line.as_bytes()));
    let keks = env.cli_json(&["kek", "list"], None);
    assert_eq!(keks["keys"].as_array().unwrap().len(), 1);
}
