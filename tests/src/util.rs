//! Small shared helpers with no better home: the harness's one time bound ([`WAIT`]) and
//! polling under it, where the repository is, and file-system and user facts for the
//! permission tests.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the harness waits for anything the agent should do promptly (start, stop, answer).
/// Generous: a bound against hangs, never a speed requirement.
pub const WAIT: Duration = Duration::from_secs(30);

/// Poll `f` until it returns `Some`, or panic with `what` after [`WAIT`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut nap = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(100));
    }
}

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent")
        .to_path_buf()
}

/// File mode bits (`0o777` part).
pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// uid and gid of `nobody` (and its group), if the system has it.
pub fn nobody() -> Option<(u32, u32)> {
    let u = nix::unistd::User::from_name("nobody").ok().flatten()?;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A whole file as text (for `/proc` checks); panics with the path on failure.
pub fn read_to_string(p: &Path) -> String {
    let mut s = String::new();
    File::open(p)
        .and_then(|mut f| f.read_to_string(&mut s))
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    s
}
