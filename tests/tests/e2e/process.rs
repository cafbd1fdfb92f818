//! The agent process: graceful shutdown, one agent per socket, stale sockets, file modes, and
//! no core dumps.

use keyward_tests::{chmod, is_root, mode, nobody, read_to_string, wait_exit, Options, TestEnv};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

keyward_tests::keyward_e2e_tests!(
    sigterm_and_sigint_shut_down_gracefully,
    second_agent_on_the_same_socket_refuses_to_start,
    stale_socket_after_a_crash_is_replaced,
    socket_directory_and_socket_modes,
    core_dumps_are_disabled,
    agent_is_not_dumpable with Options {
        run_as: if is_root() { nobody() } else { None },
        ..Options::default()
    },
);

fn sigterm_and_sigint_shut_down_gracefully(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"graceful");
    // An idle connected client must not hold the shutdown up.
    let idle = env.client();
    env.stop(); // SIGTERM: exit 0, socket removed (asserted by stop)
    drop(idle);
    env.start_agent();
    let idle = env.client();
    env.stop_with(nix::sys::signal::Signal::SIGINT);
    drop(idle);
    assert!(env.log().contains("shutting down"), "log:\n{}", env.log());
    env.start_agent();
    env.assert_intact(&keys);
}

fn second_agent_on_the_same_socket_refuses_to_start(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"first agent");
    // The same configuration but an audit log of its own: with the same log, the second agent
    // stops earlier, at the log's lock (tested in e2e/audit.rs); here the socket must stop it.
    // (The first agent read its config at start; the file is put back below.)
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    let audit = env.dir().join("second-audit.log");
    std::fs::write(
        env.config_path(),
        format!("{cfg}\n[audit]\npath = {:?}\n", audit.display().to_string()),
    )
    .unwrap();
    let mut second = env
        .agent_command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn second keywardd");
    let st = wait_exit(&mut second, "the second keywardd to give up");
    std::fs::write(env.config_path(), cfg).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        !st.success(),
        "a second agent started on the same socket: {err}"
    );
    assert!(
        err.contains("already listening"),
        "second agent said: {err}"
    );
    // The first agent's socket is untouched and it still serves.
    assert!(env.socket_path().exists());
    env.assert_intact(&keys);
    env.stop();
}

fn stale_socket_after_a_crash_is_replaced(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"after a crash");
    env.kill();
    assert!(env.socket_path().exists(), "SIGKILL leaves the socket file");
    env.start_agent();
    let c = env.client();
    assert!(c.hello_info().locked, "a crashed agent restarts locked");
    drop(c);
    env.assert_intact(&keys);
}

fn socket_directory_and_socket_modes(env: &mut TestEnv) {
    let sock = env.socket_path().to_path_buf();
    let dir = sock.parent().unwrap().to_path_buf();
    let me = nix::unistd::geteuid().as_raw();
    // The agent made the directory itself (it did not exist).
    assert_eq!(mode(&dir), 0o700, "socket directory");
    assert_eq!(mode(&sock), 0o600, "socket");
    assert_eq!(std::fs::metadata(&dir).unwrap().uid(), me);
    assert_eq!(std::fs::metadata(&sock).unwrap().uid(), me);
    // A loose directory of ours is tightened at start.
    env.stop();
    chmod(&dir, 0o755);
    env.start_agent();
    assert_eq!(mode(&dir), 0o700, "loose socket directory tightened");
    assert_eq!(mode(&sock), 0o600);
    // The keystore is not readable by others either (it holds wrapped keys and metadata).
    env.init();
    if !keyward_tests::backend::sqlite_part("the keystore file's mode") {
        return;
    }
    let ks = env.keystore_path();
    assert_eq!(mode(&ks) & 0o077, 0, "keystore {:o}", mode(&ks));
}

/// `(soft, hard)` of "Max core file size" in a `/proc/<pid>/limits`.
fn core_limit(limits: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    let f: Vec<&str> = line["Max core file size".len()..]
        .split_whitespace()
        .collect();
    (f[0].to_string(), f[1].to_string())
}

fn core_dumps_are_disabled(env: &mut TestEnv) {
    let pid = env.pid();
    let (soft, hard) = core_limit(&read_to_string(Path::new(&format!("/proc/{pid}/limits"))));
    assert_eq!(
        (soft.as_str(), hard.as_str()),
        ("0", "0"),
        "agent's RLIMIT_CORE"
    );
    // The agent lowered the hard limit itself: ours (which it inherited) is not 0.
    let (_, my_hard) = core_limit(&read_to_string(Path::new("/proc/self/limits")));
    if my_hard == "0" {
        eprintln!("core_dumps_are_disabled: the test's own hard core limit is 0 already; the agent's 0 proves less");
    }
}

/// PR_SET_DUMPABLE 0: the kernel makes the agent's /proc files root-owned. That is visible only
/// when the agent is not root, so as root the agent runs as `nobody` here.
fn agent_is_not_dumpable(env: &mut TestEnv) {
    let pid = env.pid();
    let status = read_to_string(Path::new(&format!("/proc/{pid}/status")));
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let euid: u32 = uid_line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_ne!(
        euid, 0,
        "the agent must not run as root for this check: {uid_line}"
    );
    for f in ["status", "environ", "mem"] {
        let owner = std::fs::metadata(format!("/proc/{pid}/{f}")).unwrap().uid();
        assert_eq!(
            owner, 0,
            "/proc/{pid}/{f} is owned by {owner}, not root: the agent is dumpable"
        );
    }
    // It serves its own user: the CLI as that user works end to end ...
    let Some(who) = env.agent_user() else {
        env.init();
        return;
    };
    let pin = format!("{}\n", env.pin());
    let init = env.cli_as(
        who,
        &[&["--json"][..], &env.init_args()].concat(),
        Some(pin.as_bytes()),
    );
    assert!(init.status.success(), "init as the agent's user: {init:?}");
    let k = env.cli_as(who, &["--json", "kek", "create"], None);
    assert!(k.status.success(), "{k:?}");
    let d = env.cli_as(who, &["dek", "create"], None);
    assert!(d.status.success(), "{d:?}");
    let dek = String::from_utf8(d.stdout).unwrap().trim().to_string();
    let ct = env.cli_as(who, &["encrypt", "--dek", &dek], Some(b"as nobody"));
    assert!(ct.status.success(), "{ct:?}");
    let pt = env.cli_as(who, &["decrypt"], Some(&ct.stdout));
    assert_eq!(pt.stdout, b"as nobody");
    // ... and root, another uid, is refused: root can open any socket, SO_PEERCRED stops it.
    // The refusal comes unasked (before any request), with a null id, and the agent closes.
    let mut r = env.raw();
    let resp = r.recv();
    assert_eq!(
        resp.err.map(|e| e.code),
        Some(keyward_tests::keyward_proto::ErrorCode::PermissionDenied)
    );
    assert_eq!(resp.id, None);
    r.expect_closed();
}
