//! Several YubiKeys at once: a second virtual card (another serial, on vpcd's second slot)
//! beside the first. An agent configured with a serial uses that card and no other; one
//! configured without a serial refuses to guess, naming the serials it sees.

use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::vcard::{self, CARD_SERIAL};
use keyward_tests::{expect_code, pin, repo_root, wait_for, RootKind, TestEnv};
use std::process::{Child, Command, Stdio};

const SECOND_SERIAL: u32 = 7_770_777;

/// The second card process; killed (the card "removed") on drop.
struct SecondCard(Child);

impl Drop for SecondCard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn second_card(state: &std::path::Path) -> SecondCard {
    let bin = repo_root().join("tools/piv-card/target/release/piv-card");
    assert!(
        bin.exists(),
        "{} missing: run ./vcard-setup.sh start",
        bin.display()
    );
    SecondCard(
        Command::new(bin)
            .args([
                "--vpcd-port",
                "35964",
                "--serial",
                &SECOND_SERIAL.to_string(),
                "--state",
            ])
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the second card"),
    )
}

/// Point the agent's config at `serial` (or at no serial) and restart it.
fn use_serial(env: &mut TestEnv, serial: Option<u32>) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("serial ="))
        .collect();
    let mut text = kept.join("\n");
    if let Some(s) = serial {
        text = text.replacen(
            "kind = \"yubikey\"",
            &format!("kind = \"yubikey\"\nserial = {s}"),
            1,
        );
    }
    std::fs::write(env.config_path(), text + "\n").unwrap();
    env.restart();
}

#[test]
fn yubikey_several_cards_are_told_apart_by_serial() {
    vcard::fresh_card();
    let state = tempfile::tempdir().unwrap();
    let _card2 = second_card(state.path());

    // By serial: the second card, once pcscd sees it.
    let mut env = TestEnv::start(RootKind::YubiKey);
    use_serial(&mut env, Some(SECOND_SERIAL));
    wait_for("the second card to be usable", || {
        let token = env.client().hello_info().token.clone();
        (!token.contains("not present")).then_some(token)
    });
    let keys = env.init_with_keys(false, b"on the second card");
    let token = env.client().hello_info().token.clone();
    assert!(
        token.contains(&format!("serial {SECOND_SERIAL}")),
        "{token}"
    );
    env.assert_intact(&keys);

    // The first card is untouched: an agent naming it can still make its own root there.
    let mut first = TestEnv::start(RootKind::YubiKey);
    use_serial(&mut first, Some(CARD_SERIAL));
    let c = first.client();
    c.run(|c| c.init(pin(first.pin())))
        .expect("init on the first card");

    // No serial with two cards present: a typed refusal that names both.
    let mut unnamed = TestEnv::start(RootKind::YubiKey);
    use_serial(&mut unnamed, None);
    let err = expect_code(
        unnamed.client().run(|c| c.init(pin(unnamed.pin()))),
        ErrorCode::Ambiguous,
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&CARD_SERIAL.to_string()) && msg.contains(&SECOND_SERIAL.to_string()),
        "{msg}"
    );
}
