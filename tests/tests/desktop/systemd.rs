//! The user units (`systemd/`), `systemd/install.sh`, and keywardd under socket activation:
//! both named sockets from `LISTEN_FDS`/`LISTEN_FDNAMES`, `READY=1`/`STOPPING=1` on a datagram
//! `NOTIFY_SOCKET`, inherited socket files left in place.

use super::{need, repo};
use keyward_tests::process::bin;
use keyward_tests::ssh::{ssh_sock, RawSsh};
use keyward_tests::{RootKind, TestEnv};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The README records this score; the test fails if the units get weaker than it.
const MAX_EXPOSURE: f64 = 1.5;

/// Run install.sh into `dir` with the debug binaries standing in for release ones.
fn install(dir: &Path) -> std::path::PathBuf {
    let target = dir.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    for b in ["keywardd", "keyward"] {
        std::fs::copy(bin(b), target.join("release").join(b)).unwrap();
    }
    let units = dir.join("units");
    let out = Command::new(repo().join("systemd/install.sh"))
        .args(["--prefix"])
        .arg(dir.join("prefix"))
        .arg("--unit-dir")
        .arg(&units)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("install.sh");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "install.sh: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("systemctl --user enable --now keywardd.socket"),
        "install.sh did not print the enable step: {text}"
    );
    let service = std::fs::read_to_string(units.join("keywardd.service")).unwrap();
    let exec = format!("ExecStart={}", dir.join("prefix/bin/keywardd").display());
    assert!(service.contains(&exec), "{service}");
    assert!(dir.join("prefix/bin/keywardd").exists());
    units
}

#[test]
fn installed_units_verify_and_score_within_the_recorded_exposure() {
    let analyze = need("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    let units = install(dir.path());
    let runtime = tempfile::tempdir().unwrap();
    let out = Command::new(&analyze)
        .args(["--user", "verify", "keywardd.socket", "keywardd.service"])
        .current_dir(&units)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--user", "keywardd.service"])
        .current_dir(&units)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in: {text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable score line: {line}"));
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}: {text}"
    );
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn socket_activation_starts_on_first_connection_serves_both_and_notifies() {
    let activate = need("systemd-socket-activate");
    let mut env = TestEnv::start(RootKind::Soft);
    env.stop();
    let cbor = env.socket_path().to_path_buf();
    let ssh = ssh_sock(&env);
    let notify_path = env.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let agent = env.agent_command();
    let mut cmd = Command::new(activate);
    cmd.arg("-l")
        .arg(&cbor)
        .arg("-l")
        .arg(&ssh)
        .arg("--fdname=keyward:ssh")
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg("-E")
        .arg("KEYWARD_SOCK=/nonexistent/ignored-when-activated.sock")
        .arg(agent.get_program())
        .args(agent.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(env.dir().join("activated.log")).unwrap(),
        ));
    let mut child = cmd.spawn().expect("systemd-socket-activate");
    let pid = child.id();
    wait_for("the activation sockets", || cbor.exists() && ssh.exists());
    // Nothing started yet: the process is still systemd-socket-activate.
    std::thread::sleep(Duration::from_millis(200));
    assert_ne!(
        comm(pid),
        "keywardd",
        "keywardd started before any connection"
    );
    // The first connection (SSH) starts it; both sockets are served.
    let mut raw = RawSsh::connect(&env);
    raw.send(&[11]);
    let ids = raw.recv().expect("identities answer");
    assert_eq!(ids[0], 12, "{ids:?}");
    assert_eq!(comm(pid), "keywardd");
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 on NOTIFY_SOCKET");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    let client = env.client();
    let hello = client.hello_info();
    assert_eq!(
        hello.ssh_socket.as_deref(),
        ssh.to_str(),
        "hello names the inherited SSH socket"
    );
    drop(client);
    drop(raw);
    // SIGTERM: STOPPING=1, a clean exit, and systemd's socket files stay (not ours to remove).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = notify.recv(&mut buf).expect("STOPPING=1 on NOTIFY_SOCKET");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg:?}");
    let st = child.wait().unwrap();
    let log = std::fs::read_to_string(env.dir().join("activated.log")).unwrap_or_default();
    assert!(st.success(), "keywardd exited {st}; log:\n{log}");
    assert!(
        cbor.exists() && ssh.exists(),
        "an inherited socket file was removed"
    );
    assert!(log.contains("activated=true"), "log:\n{log}");
    assert!(
        !log.contains("/nonexistent"),
        "KEYWARD_SOCK used despite activation:\n{log}"
    );
    // The sockets were the agent's only through systemd: a fresh connection is refused now.
    assert!(UnixStream::connect(&cbor).is_err());
}
