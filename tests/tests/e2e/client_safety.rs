//! Who the client talks to, and where the agent puts its socket (issue 9, findings 3 and 7):
//! the client refuses a server of another uid and an unsafe socket directory before it sends
//! anything; the agent refuses a symlinked socket directory and never deletes a file that is
//! not a socket.

use keyward_tests::{bin, chmod, is_root, nobody, parse_json, run_with_stdin, RootKind, TestEnv};
use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn chown(p: &Path, (uid, gid): (u32, u32)) {
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// The CLI's `--json` error for `args` against `sock`: (code, message).
fn cli_error(sock: &Path, args: &[&str], stdin: &[u8]) -> (String, String, String) {
    let mut cmd = Command::new(bin("keyward"));
    cmd.arg("--json")
        .args(args)
        .env("KEYWARD_SOCK", sock)
        .env_remove("XDG_RUNTIME_DIR");
    let out = run_with_stdin(cmd, Some(stdin));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "keyward {args:?} should fail; stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = parse_json(&out.stdout);
    (
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        stdout,
    )
}

/// A "server" of another uid, in a directory the client would otherwise accept, answers every
/// request with success. The client must refuse it before `hello`: it receives no byte, and
/// certainly no PIN, and the CLI does not print "unlocked".
#[test]
fn client_refuses_an_agent_of_another_uid() {
    let other = match (is_root(), nobody()) {
        (true, Some(n)) => n,
        (root, n) => {
            eprintln!(
                "client_refuses_an_agent_of_another_uid: NOT EXERCISED: needs root and `nobody` \
                 (root: {root}, nobody: {n:?})"
            );
            return;
        }
    };
    let mine = tempfile::tempdir().unwrap();
    let run = mine.path().join("run");
    std::fs::create_dir(&run).unwrap();
    chmod(&run, 0o700);
    let theirs = tempfile::tempdir().unwrap();
    chown(theirs.path(), other);
    let record = theirs.path().join("received");
    let fake_sock = theirs.path().join("fake.sock");
    let mut fake = {
        use std::os::unix::process::CommandExt;
        Command::new(bin("keyward-fake-agent"))
            .arg("serve")
            .arg(&fake_sock)
            .arg(&record)
            .uid(other.0)
            .gid(other.1)
            .current_dir("/")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the fake agent")
    };
    let mut ready = String::new();
    std::io::BufReader::new(fake.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "the fake agent did not start");
    // Move its socket into our own safe directory: only the peer's uid gives it away.
    let sock = run.join("agent.sock");
    std::fs::rename(&fake_sock, &sock).unwrap();
    let pin = "secret-pin-31337";
    let (code, message, stdout) = cli_error(&sock, &["unlock", "--pin-stdin"], pin.as_bytes());
    let _ = fake.kill();
    let _ = fake.wait();
    assert!(!stdout.contains("unlocked"), "{stdout}");
    assert_eq!(code, "unsafe_socket", "{stdout}");
    assert!(
        message.contains(&format!("uid {}", other.0)),
        "the refusal names the server's uid: {message}"
    );
    let received = std::fs::read(&record).unwrap_or_default();
    assert!(
        received.is_empty(),
        "the fake agent received {} bytes (PIN present: {})",
        received.len(),
        received.windows(pin.len()).any(|w| w == pin.as_bytes())
    );
}

/// The client refuses a socket directory that is group- or world-writable, or owned by another
/// user, and names the reason; the safe directory works.
#[test]
fn client_refuses_unsafe_socket_directories() {
    let env = TestEnv::start(RootKind::Pkcs11);
    let sock = env.socket_path().to_path_buf();
    let run = sock.parent().unwrap().to_path_buf();
    for m in [0o770, 0o702, 0o777, 0o1777] {
        chmod(&run, m);
        let (code, message, _) = cli_error(&sock, &["status"], b"");
        assert_eq!(code, "unsafe_socket", "mode {m:o}: {message}");
        assert!(message.contains("writable"), "mode {m:o}: {message}");
    }
    chmod(&run, 0o700);
    env.cli_ok(&["status"], None);
    if let (true, Some(other)) = (is_root(), nobody()) {
        let me = std::fs::metadata(&run).unwrap();
        chown(&run, other);
        let (code, message, _) = cli_error(&sock, &["status"], b"");
        assert_eq!(code, "unsafe_socket", "{message}");
        assert!(message.contains("owned by uid"), "{message}");
        chown(&run, (me.uid(), me.gid()));
        env.cli_ok(&["status"], None);
    } else {
        eprintln!(
            "client_refuses_unsafe_socket_directories: owner check NOT EXERCISED (needs root)"
        );
    }
}

/// Start the agent by hand and expect it to refuse to start; returns its stderr.
fn agent_refuses(env: &TestEnv) -> String {
    let out = env
        .agent_command()
        .stdout(Stdio::null())
        .output()
        .expect("spawn keywardd");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the agent started: {err}");
    err
}

/// A socket directory that is a symlink is refused, even one pointing at a safe directory of
/// ours: another user able to place it could point it anywhere.
#[test]
fn agent_refuses_a_symlinked_socket_directory() {
    let mut env = TestEnv::start(RootKind::Pkcs11);
    env.stop();
    let run = env.socket_path().parent().unwrap().to_path_buf();
    let real = env.dir().join("run-real");
    std::fs::rename(&run, &real).unwrap();
    std::os::unix::fs::symlink(&real, &run).unwrap();
    let err = agent_refuses(&env);
    assert!(err.contains("symlink"), "{err}");
    assert!(!real.join("agent.sock").exists());
    std::fs::remove_file(&run).unwrap();
    std::fs::rename(&real, &run).unwrap();
    env.start_agent();
    env.cli_ok(&["status"], None);
}

/// Anything but a socket at the socket path is left alone and the agent refuses to start;
/// a stale socket is still replaced (see process.rs).
#[test]
fn agent_refuses_a_regular_file_at_the_socket_path() {
    let mut env = TestEnv::start(RootKind::Pkcs11);
    env.stop();
    let sock = env.socket_path().to_path_buf();
    std::fs::write(&sock, b"precious").unwrap();
    let err = agent_refuses(&env);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(
        std::fs::read(&sock).unwrap(),
        b"precious",
        "the file was touched"
    );
    std::fs::remove_file(&sock).unwrap();
    std::os::unix::fs::symlink(env.dir().join("keyward.toml"), &sock).unwrap();
    let err = agent_refuses(&env);
    assert!(err.contains("not a socket"), "{err}");
    assert!(env.dir().join("keyward.toml").is_file());
    std::fs::remove_file(&sock).unwrap();
    env.start_agent();
    env.cli_ok(&["status"], None);
}
