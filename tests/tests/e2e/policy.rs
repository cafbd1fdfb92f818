//! Client identity and the policy file: the agent knows which program is asking (its executable,
//! read from `/proc` when the connection is accepted), and rules of a policy file allow, confirm
//! or deny requests by client, key, operation and door.

use keyward_tests::{bin, TestEnv};

keyward_tests::keyward_e2e_tests!(agent_identifies_the_client_executable,);

/// The agent's log line for a connection names the peer's executable: the `keyward` CLI for a
/// CLI command, and this test binary for a raw connection from the test process itself.
fn agent_identifies_the_client_executable(env: &mut TestEnv) {
    env.cli_ok(&["status"], None);
    let cli = std::fs::canonicalize(bin("keyward")).expect("keyward binary");
    let me = std::env::current_exe().expect("current exe");
    let mut raw = env.raw();
    raw.hello(1);
    drop(raw);
    let log = env.log();
    let connected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("client connected"))
        .collect();
    assert!(
        connected
            .iter()
            .any(|l| l.contains(&format!("exe=\"{}\"", cli.display()))
                && l.contains("door=\"socket\"")),
        "no connection from {} in the log:\n{log}",
        cli.display()
    );
    let pid = std::process::id();
    assert!(
        connected
            .iter()
            .any(|l| l.contains(&format!("exe=\"{}\"", me.display()))
                && l.contains(&format!("pid={pid}"))),
        "no connection from this test process ({}, pid {pid}) in the log:\n{log}",
        me.display()
    );
}
