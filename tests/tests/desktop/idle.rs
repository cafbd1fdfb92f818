//! Locking without a client: SIGUSR1.

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
