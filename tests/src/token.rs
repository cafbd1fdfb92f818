//! Token set-up: making the root a test's agent runs on (a SoftHSM2 token through the repo's
//! `softhsm-setup.sh`, or a soft root's config; the card kinds are in [`crate::vcard`]),
//! writing the agent config with its `[unlock]` policy, the PINs it is set up with, and what
//! the real `pkcs11-tool` lists on a SoftHSM token.

use crate::env::TestEnv;
use crate::kind::RootKind;
use crate::util::repo_root;
use crate::vcard;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The PIN or passphrase the root is set up with (deliberately not the script's default).
pub const TEST_PIN: &str = "test-pin-4321";
/// A wrong one.
pub const WRONG_PIN: &str = "wrong-pin-0000";

/// The `[unlock]` policy written into the agent config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnlockPolicy {
    pub max_attempts: u32,
    pub free_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for UnlockPolicy {
    /// Fast enough for tests: two free wrong PINs, then 500 ms doubling, five in all.
    fn default() -> Self {
        UnlockPolicy {
            max_attempts: 5,
            free_attempts: 2,
            backoff_base_ms: 500,
            backoff_max_ms: 4000,
        }
    }
}

/// Set up a root of `kind` in `dir` and write its agent config (without `[unlock]`); returns
/// the config's path. Adding a root kind: one arm here.
pub(crate) fn setup(kind: RootKind, dir: &Path) -> PathBuf {
    match kind {
        RootKind::Pkcs11 => setup_pkcs11(dir),
        RootKind::Soft => setup_soft(dir),
        RootKind::YubiKey => vcard::setup_yubikey(dir),
        RootKind::Pkcs11Ec => vcard::setup_pkcs11_ec(dir),
        RootKind::Pkcs11EcCard => vcard::setup_ykcs11(dir),
    }
}

/// Append the `[unlock]` section for `policy` to the agent config.
pub(crate) fn append_unlock_policy(config: &Path, policy: &UnlockPolicy) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(config)
        .expect("open config");
    write!(
        f,
        "\n[unlock]\nmax_attempts = {}\nfree_attempts = {}\nbackoff_base_ms = {}\nbackoff_max_ms = {}\n",
        policy.max_attempts, policy.free_attempts, policy.backoff_base_ms, policy.backoff_max_ms
    )
    .expect("write config");
}

/// A fresh SoftHSM2 token (user PIN [`TEST_PIN`]) and the config `softhsm-setup.sh` writes
/// for it.
pub(crate) fn setup_pkcs11(dir: &Path) -> PathBuf {
    let script = repo_root().join("softhsm-setup.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--dir")
        .arg(dir)
        .env("KEYWARD_DEV_PIN", TEST_PIN)
        .env("KEYWARD_DEV_SO_PIN", "test-so-pin-87654321")
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
    let config = dir.join("keyward.toml");
    assert!(config.is_file(), "softhsm-setup.sh wrote no keyward.toml");
    config
}

/// A passphrase root: the config alone (the root itself is made by `init`).
fn setup_soft(dir: &Path) -> PathBuf {
    let config = dir.join("keyward.toml");
    std::fs::write(
        &config,
        "keystore = \"keystore.db\"\n\n[root]\nkind = \"soft\"\n",
    )
    .expect("write soft config");
    config
}

impl TestEnv {
    /// What the real `pkcs11-tool` lists on this test's SoftHSM token (logged in as the user),
    /// optionally only objects of one `--type` (`privkey`, `pubkey`, `secrkey`).
    pub fn token_objects(&self, object_type: Option<&str>) -> String {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.env("SOFTHSM2_CONF", self.dir().join("softhsm2.conf"))
            .args([
                "--module",
                "/usr/lib/softhsm/libsofthsm2.so",
                "--token-label",
                "keyward",
            ])
            .args(["--login", "--pin", self.pin(), "--list-objects"]);
        if let Some(t) = object_type {
            cmd.args(["--type", t]);
        }
        let out = cmd
            .output()
            .expect("pkcs11-tool (installed by softhsm-setup.sh)");
        assert!(out.status.success(), "pkcs11-tool: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
