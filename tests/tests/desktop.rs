//! Desktop and service integration: the systemd units and socket activation (`desktop/systemd.rs`),
//! PIN prompts through pinentry (`desktop/prompt.rs`), SIGUSR1 and idle locking (`desktop/idle.rs`),
//! `keyward doctor` (`desktop/doctor.rs`), the udev rules (`desktop/udev.rs`),
//! driven by Debian 12's real `systemd-analyze` and `systemd-socket-activate` (installed by
//! `desktop-setup.sh --install-only`; a missing program fails the test and names the script).

#[path = "desktop/doctor.rs"]
mod doctor;
#[path = "desktop/idle.rs"]
mod idle;
#[path = "desktop/prompt.rs"]
mod prompt;
#[path = "desktop/systemd.rs"]
mod systemd;
#[path = "desktop/udev.rs"]
mod udev;

use std::path::PathBuf;
use std::process::Command;

/// The program, found on PATH; panics naming the set-up script when it is missing.
pub fn need(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "{program} is missing: run ./desktop-setup.sh --install-only"
    );
    PathBuf::from(path)
}

/// The repository's root (the tests crate's parent).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}
