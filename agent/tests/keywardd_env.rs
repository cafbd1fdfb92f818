//! `keywardd` applies the `[root.env]` of every root in its configuration once, at start-up,
//! and refuses a configuration whose roots disagree on a variable: the binary itself, with the
//! test SoftHSM config and no `SOFTHSM2_CONF` in its own environment.

mod common;

use std::process::{Command, Stdio};

fn keywardd(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keywardd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("KEYWARD_CONFIG")
        .env("KEYWARD_SOCK", config.with_extension("sock"))
        .stdin(Stdio::null())
        .output()
        .expect("run keywardd")
}

fn extra_root(t: &common::Tokens, conf: &str) -> String {
    format!(
        "{}\n[[extra_root]]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=kw-second;object=keyward-root?module-path={}\"\n[extra_root.env]\nSOFTHSM2_CONF = \"{conf}\"\n",
        t.config_text,
        common::require_softhsm().display()
    )
}

#[test]
fn keywardd_applies_every_roots_env_at_start_up_and_refuses_conflicts() {
    let t = common::tokens();
    let dir = tempfile::tempdir().expect("tempdir");

    // Agreeing roots: `reset-pin-attempts` opens the keystore and builds the root, which only
    // works if keywardd set SOFTHSM2_CONF itself (this process's environment has none for it).
    let good = dir.path().join("good.toml");
    let text = extra_root(t, &t.path.join("softhsm2.conf").display().to_string()).replace(
        "keystore = \"keystore.db\"",
        &format!("keystore = \"{}\"", dir.path().join("ks.db").display()),
    );
    // Relative SOFTHSM2_CONF of [root.env] is relative to the config file: make it absolute.
    let text = text.replacen(
        "SOFTHSM2_CONF = \"softhsm2.conf\"",
        &format!(
            "SOFTHSM2_CONF = \"{}\"",
            t.path.join("softhsm2.conf").display()
        ),
        1,
    );
    std::fs::write(&good, &text).expect("write config");
    let out = keywardd(&good, &["reset-pin-attempts"]);
    assert!(
        out.status.success(),
        "keywardd reset-pin-attempts with two agreeing roots:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Disagreeing roots: refused before anything is opened, naming the variable.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        text.replace(
            &format!(
                "[extra_root.env]\nSOFTHSM2_CONF = \"{}\"",
                t.path.join("softhsm2.conf").display()
            ),
            "[extra_root.env]\nSOFTHSM2_CONF = \"/elsewhere/softhsm2.conf\"",
        ),
    )
    .expect("write config");
    let out = keywardd(&bad, &["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a conflicting config was accepted");
    assert!(
        err.contains("disagree on [root.env] SOFTHSM2_CONF"),
        "{err}"
    );
    assert!(err.contains("/elsewhere/softhsm2.conf"), "{err}");
    assert!(!dir.path().join("bad.sock").exists());
}
