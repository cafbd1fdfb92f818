//! The socket itself: hand-made frames, unknown messages, smartcard requests, both sockets.

use keyward_tests::ssh::*;
use keyward_tests::{RootKind, TestEnv};
use std::io::Write;

#[test]
fn malformed_frames_close_cleanly_and_unknown_types_get_failure() {
    let env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    ssh_keypair(&env, &[], "frames");
    // An unknown message type: FAILURE, and the connection stays usable.
    let mut c = RawSsh::connect(&env);
    c.send(&[200, 1, 2, 3]);
    assert_eq!(c.recv(), Some(vec![5]));
    c.send(&[11]); // REQUEST_IDENTITIES
    let ids = c.recv().expect("identities answer");
    assert_eq!(ids[0], 12);
    assert_eq!(&ids[1..5], &[0, 0, 0, 1]);
    // A known type with a malformed payload: FAILURE, still usable.
    c.send(&[13, 0, 0]);
    assert_eq!(c.recv(), Some(vec![5]));
    // ADD_SMARTCARD_KEY: FAILURE (tokens are reached through the root).
    c.send(&[20, 0, 0, 0, 1, b'x', 0, 0, 0, 0]);
    assert_eq!(c.recv(), Some(vec![5]));
    // The query extension lists what we support.
    let mut q = vec![27, 0, 0, 0, 5];
    q.extend_from_slice(b"query");
    c.send(&q);
    let ans = c.recv().expect("query answer");
    assert_eq!(ans[0], 29, "{ans:?}");
    assert!(String::from_utf8_lossy(&ans).contains("session-bind@openssh.com"));
    // A 256 KiB + 1 length: closed without reading the body.
    let mut big = RawSsh::connect(&env);
    big.0
        .write_all(&((256 * 1024 + 1) as u32).to_be_bytes())
        .unwrap();
    assert_eq!(big.recv(), None);
    // A zero length: closed.
    let mut zero = RawSsh::connect(&env);
    zero.0.write_all(&[0, 0, 0, 0]).unwrap();
    assert_eq!(zero.recv(), None);
    // A truncated frame: closed.
    let mut short = RawSsh::connect(&env);
    short.0.write_all(&[0, 0, 0, 10, 11]).unwrap();
    short.0.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(short.recv(), None);
    // The agent keeps serving both sockets.
    assert!(listed(&env).contains("frames"));
    env.cli_json(&["status"], None);
    assert!(env.log().contains("bad frame"), "{}", env.log());
}

#[test]
fn ssh_socket_follows_config_and_can_be_disabled() {
    let mut env = TestEnv::start(RootKind::Pkcs11);
    let custom = env.dir().join("custom").join("agent-ssh.sock");
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!("{cfg}\n[ssh]\nsocket = \"{}\"\n", custom.display()),
    )
    .unwrap();
    env.restart();
    assert!(custom.exists(), "[ssh] socket not used:\n{}", env.log());
    assert_eq!(keyward_tests::mode(custom.parent().unwrap()) & 0o777, 0o700);
    assert_eq!(
        env.cli_json(&["status"], None)["ssh_socket"],
        custom.display().to_string()
    );
    std::fs::write(
        env.config_path(),
        format!("{cfg}\n[ssh]\nenabled = false\n"),
    )
    .unwrap();
    env.restart();
    assert!(env.cli_json(&["status"], None).get("ssh_socket").is_none());
    assert!(!ssh_sock(&env).exists());
}

/// The SSH socket shares the CBOR socket's limits: one connection cap counts both sockets (an
/// SSH connection over it is closed, a CBOR client over it gets `busy`), a frame once begun on
/// the SSH socket must arrive within the frame deadline (a slowloris is cut off and its slot
/// freed), and idle SSH connections have no deadline. The agent keeps serving both sockets.
#[test]
fn ssh_connections_share_the_cap_and_deadlines() {
    use keyward_tests::keyward_proto::ErrorCode;
    use std::time::{Duration, Instant};
    let mut env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    ssh_keypair(&env, &[], "capped");
    env.stop();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.config_path())
        .expect("open config");
    write!(
        f,
        "\n[limits]\nmax_connections = 3\nframe_timeout_ms = 300\n"
    )
    .expect("config");
    drop(f);
    env.start_agent();
    // Three SSH connections take every slot. The harness's own readiness probe (a CBOR
    // connection) may still hold a slot for a moment after it closed: a connection refused then
    // is closed before it is answered, so try again until the slot is free (bounded by WAIT).
    let hold = |env: &TestEnv| -> RawSsh {
        keyward_tests::wait_for("a free connection slot", || {
            let mut c = RawSsh::connect(env);
            let sent = c.0.write_all(&[0, 0, 0, 1, 11]).is_ok();
            match (sent, c.recv()) {
                (true, Some(answer)) if answer.first() == Some(&12) => Some(c),
                _ => {
                    std::thread::sleep(Duration::from_millis(20));
                    None
                }
            }
        })
    };
    let mut held: Vec<RawSsh> = (0..3).map(|_| hold(&env)).collect();
    // Over the cap on the SSH socket: closed unanswered.
    for _ in 0..5 {
        let mut over = RawSsh::connect(&env);
        let _ = over.0.write_all(&[0, 0, 0, 1, 11]);
        assert_eq!(
            over.recv(),
            None,
            "an SSH connection over the cap was served"
        );
    }
    // Over the cap on the CBOR socket too: the cap is shared.
    let e = keyward_tests::keyward_client::BlockingClient::connect(env.socket_path())
        .err()
        .expect("a CBOR client over the shared cap is refused");
    assert_eq!(e.code(), Some(ErrorCode::Busy), "{e}");
    // Idle for longer than the frame deadline: still served.
    std::thread::sleep(Duration::from_millis(700));
    held[0].send(&[11]);
    assert_eq!(held[0].recv().expect("identities after idling")[0], 12);
    // A slowloris (half a length prefix, then nothing) is cut off at the frame deadline.
    let mut slow = held.pop().expect("held");
    slow.0.write_all(&[0, 0]).expect("half a prefix");
    let t = Instant::now();
    assert_eq!(slow.recv(), None, "a slow frame was not cut off");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(slow);
    // Its slot is free again: both sockets serve.
    let c = keyward_tests::wait_for("a CBOR slot after the slowloris was cut off", || {
        keyward_tests::keyward_client::BlockingClient::connect(env.socket_path()).ok()
    });
    c.run(|c| c.status()).expect("status");
    drop(c);
    // The CBOR client's slot is free once the agent has seen it close (an `ssh-add` refused
    // before that is closed unanswered): list until it is.
    keyward_tests::wait_for("ssh-add -l listing the key under the cap", || {
        listed(&env).contains("capped").then_some(())
    });
    let log = env.log();
    assert!(log.contains("slow frame"), "{log}");
    assert!(log.contains("connection cap reached"), "{log}");
}

/// Each SSH connection is served on its own thread: a request that waits (here for a
/// confirmation) holds up only its own connection, and another connection signs meanwhile.
/// Stopping the agent closes the SSH connections still open, and it exits cleanly.
#[test]
fn a_waiting_request_holds_up_only_its_connection_and_stop_closes_the_rest() {
    let mut env = TestEnv::start(RootKind::Pkcs11);
    init_with_kek(&env);
    let slow = ssh_keypair(&env, &[], "slow");
    let quick = ssh_keypair(&env, &[], "quick");
    env.cli_ok(
        &["keypair", "ssh", slow["id"].as_str().unwrap(), "--confirm"],
        None,
    );
    // An SSH_ASKPASS program that notes it was asked, then says yes once `go` exists (≤ 30 s).
    let dir = env.dir().to_path_buf();
    let script = dir.join("askpass.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch {d}/asked\ni=0\nwhile [ ! -e {d}/go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\nexit 0\n",
            d = dir.display()
        ),
    )
    .unwrap();
    keyward_tests::chmod(&script, 0o755);
    let mut cfg = std::fs::read_to_string(env.config_path()).unwrap();
    cfg.push_str(&format!("\n[ssh]\naskpass = \"{}\"\n", script.display()));
    std::fs::write(env.config_path(), cfg).unwrap();
    env.restart();
    env.cli_ok(
        &["unlock", "--pin-stdin"],
        Some(format!("{}\n", env.pin()).as_bytes()),
    );
    let shared = &env;
    std::thread::scope(|s| {
        let waiting = s.spawn(|| git_sign_attempt(shared, slow["ssh"].as_str().unwrap(), "slow"));
        keyward_tests::wait_for("the confirmation prompt", || {
            dir.join("asked").exists().then_some(())
        });
        // That connection waits for the user; this one is answered meanwhile.
        git_sign_and_verify(shared, quick["ssh"].as_str().unwrap(), "quick");
        assert!(
            !waiting.is_finished(),
            "the confirmation was not waiting any more"
        );
        std::fs::write(dir.join("go"), "").unwrap();
        let out = waiting.join().unwrap();
        assert!(
            out.status.success(),
            "the confirmed signature failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    // An open connection, idle after a request; then the agent stops: the connection is closed.
    let mut open = RawSsh::connect(&env);
    open.send(&[11]);
    assert_eq!(open.recv().expect("identities")[0], 12);
    env.stop();
    assert_eq!(
        open.recv(),
        None,
        "an SSH connection outlived the agent's stop"
    );
}
