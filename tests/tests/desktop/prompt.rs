//! PIN prompts through pinentry: a fake Assuan pinentry (a shell script) drives every path —
//! the PIN typed, cancel, a program that fails or is missing, one that times out or never
//! answers, concurrent requests sharing one prompt; and the real `pinentry-tty` drawing in a
//! `tmux` pane, the PIN typed with `send-keys`.

use keyward_proto::ErrorCode;
use keyward_tests::{expect_code, RootKind, TestEnv};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A fake pinentry in `dir` (`keyward_tests::pinentry`) whose GETPIN runs the shell lines
/// `getpin`.
fn fake_pinentry(dir: &Path, getpin: &str) -> PathBuf {
    keyward_tests::pinentry::fake(dir, getpin, keyward_tests::pinentry::YES)
}

fn answer_pin() -> String {
    keyward_tests::pinentry::answer(RootKind::Soft.secret())
}

/// An environment (soft root, initialised, then restarted locked) whose agent prompts with
/// `program`.
fn locked_env_with_prompt(program: &Path, timeout_s: u16) -> TestEnv {
    let mut env = TestEnv::start(RootKind::Soft);
    env.init();
    env.stop();
    keyward_tests::pinentry::configure(&env, program, timeout_s);
    env.start_agent();
    assert!(
        env.client().hello_info().locked,
        "a restarted agent starts locked"
    );
    env
}

fn log_of(dir: &Path) -> String {
    keyward_tests::pinentry::log(dir)
}

#[test]
fn prompt_unlocks_a_locked_agent_and_setdesc_names_the_token_attempts_and_peer() {
    let dir = tempfile::tempdir().unwrap();
    let env = locked_env_with_prompt(&fake_pinentry(dir.path(), &answer_pin()), 30);
    let c = env.client();
    let created = c.run(|c| c.kek_create(Some("prompted".into())));
    assert!(created.is_ok(), "{created:?}; log:\n{}", env.log());
    assert!(!env.client().hello_info().locked);
    let log = log_of(dir.path());
    let desc = log
        .lines()
        .find(|l| l.starts_with("SETDESC "))
        .unwrap_or_else(|| panic!("no SETDESC in {log}"));
    assert!(desc.len() < 1000);
    assert!(
        desc.contains("kek.create") && desc.contains("Attempts left"),
        "{desc}"
    );
    // The peer is this test process: its executable is named.
    let exe = std::env::current_exe().unwrap();
    let exe = exe.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        desc.contains(&format!("process {}", std::process::id())) && desc.contains(&exe),
        "{desc}"
    );
    assert!(log.contains("SETTIMEOUT 30"), "{log}");
    assert!(
        !env.log().contains(RootKind::Soft.secret()),
        "the PIN was logged"
    );
}

#[test]
fn prompt_cancel_is_a_typed_cancelled_and_the_agent_stays_locked() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = "echo 'ERR 83886179 Operation cancelled <Pinentry>'";
    let env = locked_env_with_prompt(&fake_pinentry(dir.path(), cancel), 30);
    let c = env.client();
    expect_code(c.run(|c| c.kek_create(None)), ErrorCode::Cancelled);
    assert!(env.client().hello_info().locked);
}

#[test]
fn prompt_nobody_to_ask_is_prompt_unavailable_at_once() {
    // A program that cannot draw (exits at once), one that is not there, and one whose own
    // timeout fires: each a typed prompt_unavailable, quickly.
    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("failing-pinentry");
    std::fs::write(&failing, "#!/bin/sh\necho 'no display' >&2\nexit 1\n").unwrap();
    keyward_tests::chmod(&failing, 0o755);
    let timeout = fake_pinentry(dir.path(), "echo 'ERR 83886142 Timeout <Pinentry>'");
    for program in [failing, dir.path().join("no-such-pinentry"), timeout] {
        let env = locked_env_with_prompt(&program, 30);
        let start = Instant::now();
        expect_code(
            env.client().run(|c| c.kek_create(None)),
            ErrorCode::PromptUnavailable,
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{program:?} took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn prompt_that_never_answers_times_out_as_prompt_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let env = locked_env_with_prompt(&fake_pinentry(dir.path(), "sleep 8"), 1);
    let start = Instant::now();
    expect_code(
        env.client().run(|c| c.kek_create(None)),
        ErrorCode::PromptUnavailable,
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(7),
        "{took:?}"
    );
}

#[test]
fn prompt_concurrent_requests_share_one_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let slow = format!("sleep 1; {}", answer_pin());
    let env = locked_env_with_prompt(&fake_pinentry(dir.path(), &slow), 30);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| env.client().run(|c| c.kek_create(None)).map(|_| ())))
            .collect();
        for h in handles {
            let r = h.join().unwrap();
            assert!(r.is_ok(), "{r:?}");
        }
    });
    let getpins = log_of(dir.path())
        .lines()
        .filter(|l| l.starts_with("GETPIN"))
        .count();
    assert_eq!(getpins, 1, "one prompt for four requests");
}

/// `tmux -L SOCKET ARGS` (a private tmux server per test).
fn tmux(socket: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::need("tmux"))
        .arg("-L")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn prompt_real_pinentry_tty_in_tmux_takes_the_typed_pin() {
    let pinentry = crate::need("pinentry-tty");
    let socket = format!("keyward-pin-{}", std::process::id());
    let started = tmux(&socket, &["new-session", "-d", "-s", "pin", "sleep 600"]);
    assert!(started.status.success(), "{started:?}");
    struct Kill<'a>(&'a str);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = tmux(self.0, &["kill-server"]);
        }
    }
    let _kill = Kill(&socket);
    let tty = tmux(
        &socket,
        &["display-message", "-p", "-t", "pin", "#{pane_tty}"],
    );
    let tty = String::from_utf8_lossy(&tty.stdout).trim().to_string();
    assert!(tty.starts_with("/dev/"), "pane tty: {tty:?}");

    let mut env = TestEnv::start(RootKind::Soft);
    env.init();
    env.stop();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.config_path())
        .unwrap();
    writeln!(
        f,
        "\n[prompt]\npinentry = \"{}\"\ntimeout_s = 30\ntty = \"{tty}\"",
        pinentry.display()
    )
    .unwrap();
    drop(f);
    env.start_agent();
    assert!(env.client().hello_info().locked);

    std::thread::scope(|s| {
        let request = s.spawn(|| env.client().run(|c| c.kek_create(Some("tmux".into()))));
        // Wait for pinentry-tty to draw its prompt in the pane, then type the PIN.
        let start = Instant::now();
        loop {
            let pane = tmux(&socket, &["capture-pane", "-p", "-t", "pin"]);
            let pane = String::from_utf8_lossy(&pane.stdout).into_owned();
            if pane.contains("PIN") {
                assert!(pane.contains("kek.create"), "{pane}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no prompt in the pane:\n{pane}\nagent log:\n{}",
                env.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let typed = tmux(
            &socket,
            &["send-keys", "-t", "pin", RootKind::Soft.secret(), "Enter"],
        );
        assert!(typed.status.success());
        let r = request.join().unwrap();
        assert!(r.is_ok(), "{r:?}; agent log:\n{}", env.log());
    });
    assert!(!env.client().hello_info().locked);
    assert!(
        !env.log().contains(RootKind::Soft.secret()),
        "the PIN was logged"
    );
}
