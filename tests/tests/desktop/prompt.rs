//! PIN prompts through pinentry: a fake Assuan pinentry (a shell script) drives every path —
//! the PIN typed, cancel, a program that fails or is missing, one that times out or never
//! answers, concurrent requests sharing one prompt.

use keyward_proto::ErrorCode;
use keyward_tests::{expect_code, RootKind, TestEnv};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A fake pinentry in `dir`: greets, logs each command to `dir/pinentry.log`, and answers
/// GETPIN with the shell lines `getpin`.
fn fake_pinentry(dir: &Path, getpin: &str) -> PathBuf {
    let path = dir.join("fake-pinentry");
    let script = format!(
        r#"#!/bin/bash
log="$(dirname "$0")/pinentry.log"
echo "OK Pleased to meet you"
while IFS= read -r line; do
  printf '%s\n' "$line" >> "$log"
  case "$line" in
    GETPIN*) {getpin} ;;
    BYE*) echo OK; exit 0 ;;
    *) echo OK ;;
  esac
done
"#
    );
    std::fs::write(&path, script).unwrap();
    keyward_tests::chmod(&path, 0o755);
    path
}

fn answer_pin() -> String {
    format!("echo 'D {}'; echo OK", RootKind::Soft.secret())
}

/// An environment (soft root, initialised, then restarted locked) whose agent prompts with
/// `program`.
fn locked_env_with_prompt(program: &Path, timeout_s: u16) -> TestEnv {
    let mut env = TestEnv::start(RootKind::Soft);
    env.init();
    env.stop();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.config_path())
        .unwrap();
    writeln!(
        f,
        "\n[prompt]\npinentry = \"{}\"\ntimeout_s = {timeout_s}",
        program.display()
    )
    .unwrap();
    drop(f);
    env.start_agent();
    assert!(
        env.client().hello_info().locked,
        "a restarted agent starts locked"
    );
    env
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("pinentry.log")).unwrap_or_default()
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
