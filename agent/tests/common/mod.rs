//! What the agent's integration tests share: a SoftHSM directory with two initialized tokens
//! (made by the repo's `softhsm-setup.sh`), configs for roots on them, and the virtual PIV card
//! of `vcard-setup.sh`.
//!
//! Nothing here skips: a missing SoftHSM or card stack fails the test saying how to get it.
//! One SoftHSM directory per test process: the library reads its config once per process.
#![allow(dead_code)] // Each test binary uses a part.

use keyward_agent::config::Config;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The user PIN of the test tokens.
pub const PIN: &str = "conformance-1234";
/// The virtual card's serial and fresh PIN (vcard-setup.sh's defaults).
pub const CARD_SERIAL: u32 = 5_437_251;
pub const CARD_PIN: &str = "123456";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the agent crate is inside the repository")
        .to_path_buf()
}

fn softhsm_module() -> Option<PathBuf> {
    let candidates = [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .chain(
            std::fs::read_dir("/usr/lib")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("softhsm/libsofthsm2.so")),
        )
        .find(|p| p.exists())
}

/// Fail (never skip) when SoftHSM2 is not installed.
pub fn require_softhsm() -> PathBuf {
    let util = Command::new("softhsm2-util")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match softhsm_module() {
        Some(m) if util => m,
        _ => panic!(
            "SoftHSM2 is not installed (softhsm2-util and libsofthsm2.so are needed): \
             run `./softhsm-setup.sh --install-only` (test.sh does)"
        ),
    }
}

/// The tokens `softhsm-setup.sh --add-token` adds beside `keyward`, all in one SoftHSM config
/// (SoftHSM finds tokens when it initializes, once per process: every token a test process uses
/// exists before its first root is built).
pub const EXTRA_TOKENS: [&str; 5] = [
    "keyward-pair-aes",
    "keyward-pair-ec",
    "kw-first",
    "kw-second",
    "kw-dup",
];

/// A SoftHSM directory with tokens `keyward`, `keyward-ec` and [`EXTRA_TOKENS`], and the
/// config `softhsm-setup.sh` wrote for the first.
pub struct Tokens {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub config_text: String,
}

/// The process's SoftHSM tokens, made on first use.
pub fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        require_softhsm();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let out = Command::new("bash")
            .arg(repo_root().join("softhsm-setup.sh"))
            .arg("--dir")
            .arg(&path)
            .args(EXTRA_TOKENS.iter().flat_map(|t| ["--add-token", t]))
            .env("KEYWARD_DEV_PIN", PIN)
            .env("KEYWARD_DEV_SO_PIN", "conformance-so-1234")
            .stdin(Stdio::null())
            .output()
            .expect("running softhsm-setup.sh");
        assert!(
            out.status.success(),
            "softhsm-setup.sh failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", "keyward-ec"])
            .args(["--so-pin", "conformance-so-1234", "--pin", PIN])
            .env("SOFTHSM2_CONF", path.join("softhsm2.conf"))
            .output()
            .expect("running softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config_text =
            std::fs::read_to_string(path.join("keyward.toml")).expect("read keyward.toml");
        Tokens {
            _dir: dir,
            path,
            config_text,
        }
    })
}

fn parse(t: &Tokens, text: &str) -> Config {
    let c = Config::parse(text, &t.path.join("keyward.toml")).expect("parse the test config");
    // What keywardd does at start-up; every test config of this process has the same env.
    keyward_agent::root::env::apply_at_startup(&c.root_env().expect("root env"));
    c
}

/// An AES root on token `keyward`.
pub fn pkcs11_aes_config() -> Config {
    let t = tokens();
    parse(t, &t.config_text)
}

/// An EC root on token `keyward-ec`.
pub fn pkcs11_ec_config() -> Config {
    let t = tokens();
    assert!(
        t.config_text.contains("kind = \"pkcs11\"\n") && t.config_text.contains("token=keyward;")
    );
    let text = t
        .config_text
        .replacen(
            "kind = \"pkcs11\"\n",
            "kind = \"pkcs11\"\nkey_type = \"ec\"\n",
            1,
        )
        .replacen("token=keyward;", "token=keyward-ec;", 1);
    parse(t, &text)
}

/// A root on token `token` of the test SoftHSM config (`ec`: a P-256 root), with `object` as
/// the URI's object attributes (`object=keyward-root`, `object=x;id=%01`, ...).
pub fn pkcs11_config_on(token: &str, object: &str, ec: bool) -> Config {
    parse(tokens(), &pkcs11_config_text_on(token, object, ec))
}

/// The text of [`pkcs11_config_on`]'s config.
pub fn pkcs11_config_text_on(token: &str, object: &str, ec: bool) -> String {
    let t = tokens();
    let old = "token=keyward;object=keyward-root";
    assert!(t.config_text.contains(old), "{}", t.config_text);
    let uri_part = if token.is_empty() {
        object.to_string()
    } else {
        format!("token={token};{object}")
    };
    let mut text = t.config_text.replacen(old, &uri_part, 1);
    if ec {
        text = text.replacen(
            "kind = \"pkcs11\"\n",
            "kind = \"pkcs11\"\nkey_type = \"ec\"\n",
            1,
        );
    }
    text
}

/// The directory of token `label` under the SoftHSM token directory (the one whose
/// `token.object` names it; labels must not be prefixes of each other's).
pub fn token_dir(label: &str) -> PathBuf {
    let dir = tokens().path.join("tokens");
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir)
        .expect("read the token directory")
        .flatten()
    {
        let obj = std::fs::read(e.path().join("token.object")).unwrap_or_default();
        if obj.windows(label.len()).any(|w| w == label.as_bytes()) {
            found.push(e.path());
        }
    }
    assert_eq!(
        found.len(),
        1,
        "token directories naming `{label}`: {found:?}"
    );
    found.remove(0)
}

/// Run `vcard-setup.sh ARGS` (with `--dir $KEYWARD_VCARD_DIR` when set).
fn vcard(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("vcard-setup.sh"));
    if let Some(dir) = std::env::var_os("KEYWARD_VCARD_DIR").filter(|d| !d.is_empty()) {
        cmd.arg("--dir").arg(dir);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running vcard-setup.sh")
}

/// A blank virtual card in the reader, or a failure saying how to start the stack.
pub fn fresh_card() {
    let out = vcard(&["status"]);
    assert!(
        out.status.success(),
        "the virtual card stack is not running: run `./vcard-setup.sh start` first (test.sh does).\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = vcard(&["--fresh", "card-start"]);
    assert!(
        out.status.success(),
        "vcard-setup.sh --fresh card-start failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A YubiKey root on the virtual card.
pub fn yubikey_config() -> Config {
    Config::parse(
        &format!("[root]\nkind = \"yubikey\"\nserial = {CARD_SERIAL}\nslot = \"9d\"\n"),
        Path::new("/nonexistent/keyward.toml"),
    )
    .expect("parse the yubikey config")
}
