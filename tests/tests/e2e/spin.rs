//! The short spin after an answer (`[server] spin_us`, `server::Spin`): a client in a loop is
//! served as before, and an idle connection costs the agent no CPU, on either socket. CPU time,
//! not wall clock: the agent's own clock (`clock_getcpuclockid`), all its threads.

use keyward_tests::ssh::RawSsh;
use keyward_tests::{RootKind, TestEnv};
use std::io::Write;
use std::time::Duration;

/// CPU time (user + system, every thread) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let clock = nix::time::clock_getcpuclockid(nix::unistd::Pid::from_raw(pid as i32))
        .expect("the agent's CPU clock");
    Duration::from(nix::time::clock_gettime(clock).expect("read the agent's CPU clock"))
}

/// SSH_AGENTC_REQUEST_IDENTITIES (11), answered by IDENTITIES_ANSWER (12).
const REQUEST_IDENTITIES: u8 = 11;

#[test]
fn idle_connections_after_a_loop_cost_the_agent_no_cpu() {
    let mut env = TestEnv::start(RootKind::Soft);
    // The longest spin the config allows, so that a connection spinning while idle would show.
    env.stop();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.config_path())
        .expect("open config");
    write!(f, "\n[server]\nspin_us = 1000\n").expect("write config");
    drop(f);
    env.start_agent();
    env.init();
    let c = env.client();
    let mut ssh = RawSsh::connect(&env);
    // Both doors see a client in a loop (requests back to back): the spin is used.
    for _ in 0..300 {
        c.run(|c| c.kek_list()).expect("kek.list");
        ssh.send(&[REQUEST_IDENTITIES]);
        assert_eq!(ssh.recv().expect("an answer")[0], 12);
    }
    // Then both stay open and idle: the agent's CPU over one second stays near zero (a
    // connection spinning while idle would use up to the spin budget, 100 ms a second).
    std::thread::sleep(Duration::from_millis(200));
    let pid = env.pid();
    let before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time(pid) - before;
    assert!(
        used < Duration::from_millis(20),
        "the idle agent used {used:?} of CPU in 1 s; log:\n{}",
        env.log()
    );
    // Both connections still serve.
    c.run(|c| c.kek_list()).expect("kek.list after idling");
    ssh.send(&[REQUEST_IDENTITIES]);
    assert_eq!(ssh.recv().expect("an answer")[0], 12);
}
