//! Locking without a client: SIGUSR1, and the `[unlock] idle_lock` / `max_unlocked` deadlines
//! (tiny durations, generous bounds).

use keyward_tests::{RootKind, TestEnv};
use std::time::{Duration, Instant};

#[test]
fn sigusr1_locks_the_agent() {
    let env = TestEnv::start(RootKind::Soft);
    env.init();
    assert!(!env.client().hello_info().locked);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(env.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let start = Instant::now();
    while !env.client().hello_info().locked {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not locked after SIGUSR1"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env.log().contains("locked on SIGUSR1"));
}

/// Restart `env`'s agent with `lines` added to its `[unlock]` section, then unlock it.
fn with_unlock_settings(env: &mut TestEnv, lines: &str) {
    env.stop();
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(text.contains("\n[unlock]\n"), "{text}");
    let text = text.replacen("\n[unlock]\n", &format!("\n[unlock]\n{lines}\n"), 1);
    std::fs::write(env.config_path(), text).unwrap();
    env.start_agent();
    let c = env.client();
    c.run(|c| c.unlock(keyward_tests::pin(env.pin()))).unwrap();
    assert!(!env.client().hello_info().locked);
}

/// Wait (at most `within`) for `hello` to report the agent locked; `hello` is not activity.
fn wait_locked(env: &TestEnv, within: Duration) -> Duration {
    let start = Instant::now();
    while !env.client().hello_info().locked {
        assert!(
            start.elapsed() < within,
            "not locked after {within:?}; log:\n{}",
            env.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn idle_lock_locks_an_unused_agent_and_activity_keeps_it_unlocked() {
    let mut env = TestEnv::start(RootKind::Soft);
    env.init();
    with_unlock_settings(&mut env, "idle_lock = \"2s\"");
    // Activity (a request that uses the root) every 0.5 s for 4 s: still unlocked.
    let busy = Instant::now();
    while busy.elapsed() < Duration::from_secs(4) {
        let r = env.client().run(|c| c.kek_create(None));
        assert!(r.is_ok(), "{r:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !env.client().hello_info().locked,
        "locked although used; log:\n{}",
        env.log()
    );
    // Left alone: locked after about 2 s (generous bound), while `hello` polls go on.
    let took = wait_locked(&env, Duration::from_secs(15));
    assert!(
        took >= Duration::from_millis(1000),
        "locked too soon: {took:?}"
    );
    assert!(env.log().contains("locked on idle_lock"), "{}", env.log());
    // Locked requests are refused, and unlocking starts the clock again.
    keyward_tests::expect_code(
        env.client().run(|c| c.kek_create(None)),
        keyward_proto::ErrorCode::Locked,
    );
    env.client()
        .run(|c| c.unlock(keyward_tests::pin(env.pin())))
        .unwrap();
    wait_locked(&env, Duration::from_secs(15));
}

#[test]
fn max_unlocked_locks_a_busy_agent() {
    let mut env = TestEnv::start(RootKind::Soft);
    env.init();
    with_unlock_settings(&mut env, "idle_lock = \"1h\"\nmax_unlocked = \"3s\"");
    let start = Instant::now();
    loop {
        let locked = env.client().hello_info().locked;
        if locked {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still unlocked; log:\n{}",
            env.log()
        );
        let _ = env.client().run(|c| c.kek_create(None));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert!(
        env.log().contains("locked on max_unlocked"),
        "{}",
        env.log()
    );
}
