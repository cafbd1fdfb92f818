//! Helpers for the PKCS#11 module's tests: where the module is, an agent with keys for it, and
//! running the real host programs (pkcs11-tool, p11tool, ssh, NSS, OpenSSL) against it.

use crate::{bin_dir, pin, repo_root, TestEnv};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Once;

static INSTALL: Once = Once::new();

/// Install the PKCS#11 host programs (pkcs11-tool, p11tool, NSS tools, OpenSSL's engine,
/// OpenSSH, p11-kit) once per process with `pkcs11-setup.sh`, failing loudly.
pub fn ensure_pkcs11_tools() {
    INSTALL.call_once(|| {
        let st = Command::new("bash")
            .arg(repo_root().join("pkcs11-setup.sh"))
            .arg("--install-only")
            .status()
            .expect("running pkcs11-setup.sh");
        assert!(st.success(), "pkcs11-setup.sh --install-only failed");
    });
}

/// `libkeyward_pkcs11.so` beside the binaries; build it with `cargo build -p keyward-pkcs11`.
pub fn module_path() -> PathBuf {
    let p = bin_dir().join("libkeyward_pkcs11.so");
    assert!(
        p.is_file(),
        "{} not found: run `cargo build -p keyward-pkcs11` first (same CARGO_TARGET_DIR and profile)",
        p.display()
    );
    p
}

/// The agent's keys for the module's tests.
pub struct P11Keys {
    pub p256: String,
    pub ed25519: String,
    pub dek: String,
}

/// `init`, a KEK, a P-256 and an Ed25519 keypair, and a DEK.
pub fn init_for_module(env: &TestEnv) -> P11Keys {
    let c = env.client();
    c.run(|c| c.init(pin(env.pin()))).expect("init");
    c.run(|c| c.kek_create(Some("p11".into()))).expect("kek");
    let kp = |alg: &str, label: &str| {
        let args = keyward_proto::ops::KeypairCreateArgs {
            label: Some(label.into()),
            alg: Some(alg.into()),
            ..Default::default()
        };
        c.run(|c| c.call::<keyward_proto::ops::op::KeypairCreate>(&args))
            .expect("keypair")
            .id
    };
    let p256 = kp("p256", "p11-ecdsa");
    let ed25519 = kp("ed25519", "p11-ed");
    let args = keyward_proto::ops::DekCreateArgs {
        label: Some("p11-dek".into()),
        ..Default::default()
    };
    let dek = c.run(|c| c.dek_create(&args)).expect("dek").id;
    P11Keys { p256, ed25519, dek }
}

/// A command with the agent's socket in its environment.
pub fn host(env: &TestEnv, program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("KEYWARD_SOCK", env.socket_path());
    c
}

/// Run and require success; stdout and stderr as text.
pub fn run_ok(mut c: Command) -> String {
    let out: Output = c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// The 16 bytes of a UUID as lowercase hex (the objects' CKA_ID).
pub fn ck_id(uuid: &str) -> String {
    uuid.replace('-', "")
}
