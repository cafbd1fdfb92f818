//! The virtual PIV card ("virtual YubiKey") of `vcard-setup.sh` for end-to-end tests through
//! the real pcscd, and the SoftHSM set-up of EC roots.
//!
//! The card tests need `./vcard-setup.sh start` first (test.sh does it). They never skip: when
//! the stack is not running they fail saying how to start it. pcscd has one socket, so these
//! tests run one at a time (`cargo test -p keyward-tests yubikey -- --test-threads=1`); their
//! names contain `yubikey` so the parallel run can leave them out (`--skip yubikey`).
//!
//! `KEYWARD_VCARD_DIR` selects the script's `--dir` (default: the script's own default).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The virtual card's serial (the script's default).
pub const CARD_SERIAL: u32 = 5_437_251;
/// The PIV user PIN of a fresh card.
pub const CARD_PIN: &str = "123456";
/// A wrong card PIN (same length rules: 6..8 characters).
pub const WRONG_CARD_PIN: &str = "654321";
/// The PIV PIN retries of a fresh card.
pub const FRESH_RETRIES: u32 = 3;
/// ykcs11 (Debian package `ykcs11`).
pub const YKCS11: &str = "/usr/lib/x86_64-linux-gnu/libykcs11.so";

fn script() -> PathBuf {
    crate::util::repo_root().join("vcard-setup.sh")
}

/// Run `vcard-setup.sh [--dir] ARGS`; returns its output whatever the status.
pub fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script());
    if let Some(dir) = std::env::var_os("KEYWARD_VCARD_DIR").filter(|d| !d.is_empty()) {
        cmd.arg("--dir").arg(dir);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running vcard-setup.sh")
}

/// Run `vcard-setup.sh ARGS` and require success.
pub fn vcard(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "vcard-setup.sh {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Require the running stack (pcscd + card), or fail saying how to start it.
pub fn require_stack() {
    let out = run(&["status"]);
    assert!(
        out.status.success(),
        "the virtual card stack is not running: run `./vcard-setup.sh start` first (test.sh does).\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A blank card (default PIN, PUK, management key; no keys) in the reader.
pub fn fresh_card() {
    require_stack();
    vcard(&["--fresh", "card-start"]);
}

/// "Remove" the card (stop its process).
pub fn remove_card() {
    vcard(&["card-stop"]);
}

/// "Reinsert" it (same state).
pub fn insert_card() {
    vcard(&["card-start"]);
}

/// Whether pcscd sees a card in the virtual reader now (`vcard-setup.sh status`, which asks
/// pcscd through `opensc-tool --list-readers`; no APDU is sent, so the card's state and
/// pcsc-lite's event counter are untouched).
pub fn card_seen_by_pcscd() -> bool {
    // `status` lists the readers as `opensc-tool` prints them: "  N  Yes|No  name".
    String::from_utf8_lossy(&run(&["status"]).stdout)
        .lines()
        .filter(|l| l.contains("Keyward virtual PIV"))
        .any(|l| l.split_whitespace().nth(1) == Some("Yes"))
}

fn write_config(dir: &Path, root: &str) -> PathBuf {
    let config = dir.join("keyward.toml");
    std::fs::write(
        &config,
        format!("keystore = \"keystore.db\"\n\n[root]\n{root}"),
    )
    .expect("write config");
    config
}

/// `[root] kind = "yubikey"` for the virtual card (the card itself is made fresh by the test).
pub(crate) fn setup_yubikey(dir: &Path) -> PathBuf {
    write_config(
        dir,
        &format!("kind = \"yubikey\"\nserial = {CARD_SERIAL}\nslot = \"9d\"\n"),
    )
}

/// An EC root through ykcs11 on the virtual card: slot 9d (ykcs11 id 03), keys generated as SO
/// with the default management key.
pub(crate) fn setup_ykcs11(dir: &Path) -> PathBuf {
    write_config(
        dir,
        &format!(
            "kind = \"pkcs11\"\nkey_type = \"ec\"\n\
             uri = \"pkcs11:token=YubiKey%20PIV%20%23{CARD_SERIAL};id=%03?module-path={YKCS11}\"\n\
             management_key_hex = \"010203040506070801020304050607080102030405060708\"\n"
        ),
    )
}

/// A SoftHSM token (as for [`crate::RootKind::Pkcs11`]) with an EC root: `key_type = "ec"`.
pub(crate) fn setup_pkcs11_ec(dir: &Path) -> PathBuf {
    let config = crate::token::setup_pkcs11(dir);
    let text = std::fs::read_to_string(&config).expect("read config");
    assert!(
        text.contains("kind = \"pkcs11\"\n"),
        "unexpected softhsm-setup.sh config:\n{text}"
    );
    let text = text.replacen(
        "kind = \"pkcs11\"\n",
        "kind = \"pkcs11\"\nkey_type = \"ec\"\n",
        1,
    );
    std::fs::write(&config, text).expect("write config");
    config
}
