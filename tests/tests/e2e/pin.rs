//! The wrong-PIN policy: typed `pin_incorrect` with a falling `attempts_left`, `pin_backoff`
//! with `retry_after_ms`, reset after a success, and a lockout that survives restarts until
//! `keywardd reset-pin-attempts`.

use keyward_tests::keyward_client::BlockingClient;
use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::{expect_code, pin, wait_exit, Options, TestEnv, UnlockPolicy, WRONG_PIN};
use std::time::Duration;

keyward_tests::keyward_e2e_tests!(
    // A back-off long enough that "retry at once" is at once on any machine.
    wrong_pin_backoff_and_reset with Options {
        unlock: UnlockPolicy { max_attempts: 5, free_attempts: 2, backoff_base_ms: 1000, backoff_max_ms: 1000 },
        ..Options::default()
    },
    // No back-off: the lockout needs no waiting.
    lockout_persists_until_reset_pin_attempts with Options {
        unlock: UnlockPolicy { max_attempts: 3, free_attempts: 3, backoff_base_ms: 1000, backoff_max_ms: 1000 },
        ..Options::default()
    },
);

/// A wrong unlock: `pin_incorrect`, returning (attempts_left, retry_after_ms).
fn wrong(c: &BlockingClient) -> (u32, Option<u64>) {
    let e = expect_code(c.run(|c| c.unlock(pin(WRONG_PIN))), ErrorCode::PinIncorrect);
    let b = e.body().unwrap();
    (
        b.attempts_left.expect("attempts_left with pin_incorrect"),
        b.retry_after_ms,
    )
}

/// Any unlock during a back-off: `pin_backoff`; returns retry_after_ms.
fn backoff(c: &BlockingClient, p: &str, max: u64) -> u64 {
    let e = expect_code(c.run(|c| c.unlock(pin(p))), ErrorCode::PinBackoff);
    let ms = e
        .body()
        .unwrap()
        .retry_after_ms
        .expect("retry_after_ms with pin_backoff");
    assert!(ms > 0 && ms <= max, "retry_after_ms {ms} not in (0, {max}]");
    ms
}

fn sleep_ms(ms: u64) {
    // The agent's clock is the same wall clock; a few ms of margin for rounding.
    std::thread::sleep(Duration::from_millis(ms + 30));
}

fn wrong_pin_backoff_and_reset(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"pin policy");
    let c = env.client();
    c.run(|c| c.lock()).unwrap();

    // Two free wrong PINs; the second starts a 1 s wait.
    assert_eq!(wrong(&c), (4, None));
    assert_eq!(wrong(&c), (3, Some(1000)));
    // At once: refused without checking the PIN, right or wrong, and without counting.
    backoff(&c, env.pin(), 1000);
    let ms = backoff(&c, WRONG_PIN, 1000);
    // Key operations are still locked.
    expect_code(
        c.run(|c| c.decrypt(&keys.ciphertext, None)),
        ErrorCode::Locked,
    );
    sleep_ms(ms);
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock after the wait");
    let pt = c.run(|c| c.decrypt(&keys.ciphertext, None)).unwrap();
    assert_eq!(pt.expose(), b"pin policy");

    // The success reset the counter: free attempts again, and the full count.
    c.run(|c| c.lock()).unwrap();
    assert_eq!(wrong(&c), (4, None));
    assert_eq!(wrong(&c), (3, Some(1000)));
    let ms = backoff(&c, WRONG_PIN, 1000);
    sleep_ms(ms);
    // The refusals during the back-off did not count: 2 left after the third real try.
    assert_eq!(wrong(&c), (2, Some(1000)));
    // A new connection sees the same policy state (it is the agent's, not the connection's).
    let c2 = env.client();
    backoff(&c2, env.pin(), 1000);
    // ... and so does a restarted agent: the counter is in the keystore. (Whether the wait is
    // still running after the restart depends on how fast the restart was: wait it out.)
    drop((c, c2));
    env.restart();
    let c = env.client();
    let e = after_backoff(&c, WRONG_PIN).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PinIncorrect), "{e}");
    assert_eq!(
        e.body().unwrap().attempts_left,
        Some(1),
        "the count survived the restart"
    );
    after_backoff(&c, env.pin()).expect("unlock after restart");
    c.run(|c| c.lock()).unwrap();
    assert_eq!(
        wrong(&c),
        (4, None),
        "counter reset by the success after restart"
    );
}

/// Unlock with `p`, first waiting out any back-off the agent reports.
fn after_backoff(
    c: &BlockingClient,
    p: &str,
) -> Result<(), keyward_tests::keyward_client::ClientError> {
    for _ in 0..10 {
        match c.run(|c| c.unlock(pin(p))) {
            Err(e) if e.code() == Some(ErrorCode::PinBackoff) => {
                sleep_ms(e.body().unwrap().retry_after_ms.unwrap())
            }
            other => return other.map(|_| ()),
        }
    }
    panic!("still in back-off after 10 waits");
}

fn lockout_persists_until_reset_pin_attempts(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"locked out");
    let c = env.client();
    c.run(|c| c.lock()).unwrap();
    assert_eq!(wrong(&c), (2, None));
    assert_eq!(wrong(&c), (1, None));
    // The last allowed wrong PIN locks the agent out.
    expect_code(c.run(|c| c.unlock(pin(WRONG_PIN))), ErrorCode::PinLocked);
    // Now even the right PIN is refused.
    expect_code(c.run(|c| c.unlock(pin(env.pin()))), ErrorCode::PinLocked);
    assert_eq!(
        env.cli_json_err(
            &["unlock", "--pin-stdin"],
            Some(format!("{}\n", env.pin()).as_bytes())
        ),
        "pin_locked"
    );
    drop(c);

    // Across a restart.
    env.restart();
    let c = env.client();
    expect_code(c.run(|c| c.unlock(pin(env.pin()))), ErrorCode::PinLocked);
    drop(c);

    // The administrator's reset, with the agent stopped.
    env.stop();
    let mut cmd = env.agent_command();
    cmd.arg("reset-pin-attempts")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn reset-pin-attempts");
    let st = wait_exit(&mut child, "keywardd reset-pin-attempts");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(st.success(), "reset-pin-attempts failed ({st}): {err}");
    assert!(err.contains("reset"), "reset-pin-attempts said: {err}");
    assert!(
        !env.socket_path().exists(),
        "reset-pin-attempts must not serve"
    );

    env.start_agent();
    let c = env.client();
    assert!(c.hello_info().locked);
    assert_eq!(wrong(&c), (2, None), "full attempt count after the reset");
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock after reset");
    drop(c);
    env.assert_intact(&keys);
}
