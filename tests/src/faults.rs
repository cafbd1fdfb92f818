//! Fault injection for the fault tests (`tests/tests/e2e/faults.rs`): a small tmpfs mounted by
//! the test (to fill it, or to make it read-only), moving the agent's keystore onto it, and a
//! seeded random number generator whose seed is printed so a failing run can be replayed.
//!
//! Mounting needs root (CI runs as root). Where it is not possible the tests fail loudly, saying
//! why, unless `KEYWARD_TESTS_NO_MOUNT=1` asks them to skip the mount cases (also loudly).

use crate::env::TestEnv;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// A tmpfs mounted on a directory of a test environment; unmounted (lazily) on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (as `mount -o size=` takes it: `1m`, `512k`) on `path` (created),
    /// mode 0700. `Err` says why mounting is not possible here.
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {} failed ({}): {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Mount one, or decide what to do when that is impossible: `None` (skip, announced on
    /// stderr) only when `KEYWARD_TESTS_NO_MOUNT=1`; otherwise a panic saying why.
    pub fn mount_or_skip(path: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        match Self::mount(path, size) {
            Ok(t) => Some(t),
            Err(why) if std::env::var_os("KEYWARD_TESTS_NO_MOUNT").is_some_and(|v| v == "1") => {
                eprintln!(
                    "!!!! {test}: SKIPPED: cannot mount a tmpfs ({why}); KEYWARD_TESTS_NO_MOUNT=1 allows this"
                );
                None
            }
            Err(why) => panic!(
                "{test}: cannot mount a tmpfs ({why}); the fault tests need root and mount(8) \
                 (set KEYWARD_TESTS_NO_MOUNT=1 to skip them, loudly)"
            ),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remount read-only (`true`) or read-write. Fails (busy) while a file on it is open for
    /// writing: stop the agent first.
    pub fn remount(&self, read_only: bool) {
        let opt = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        let out = Command::new("mount")
            .args(["-o", opt])
            .arg(&self.path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -o {opt} {}: {}",
            self.path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a still-running agent (a failing test) must not keep the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fill the file system holding `dir` with one file, `dir/filler`, until it is full; returns
/// its path (delete it and the space returns).
pub fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    let chunk = vec![0x5au8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Whatever partial block is left.
    while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
    path
}

impl TestEnv {
    /// Point the agent's config at a keystore in `dir` (the agent must be stopped: its old
    /// keystore is left where it was). [`TestEnv::keystore_path`] follows.
    pub fn move_keystore_to(&mut self, dir: &Path) {
        assert!(self.child.is_none(), "stop the agent first");
        let path = dir.join("keystore.db");
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let mut found = false;
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("keystore") && l.contains('=') {
                    found = true;
                    format!("keystore = {:?}", path.display().to_string())
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert!(found, "no keystore line in the config");
        std::fs::write(&self.config, text.join("\n") + "\n").expect("write config");
        self.keystore = Some(path);
    }
}

/// A small seeded generator (xorshift64*): enough to pick kill moments reproducibly.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `KEYWARD_FAULT_SEED` if set, else from the clock; the seed is printed, so a
    /// failing run can be replayed with `KEYWARD_FAULT_SEED=<seed>`.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("KEYWARD_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: KEYWARD_FAULT_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

impl TestEnv {
    /// SoftHSM rewrites its `token.object` in place (truncate, then write): a process killed in
    /// between leaves it empty, and the token (its label and PINs) is gone. A limitation of
    /// SoftHSM's file store, not of the agent; the kill loops detect it with this.
    pub fn softhsm_token_lost(&self) -> bool {
        let Ok(dirs) = std::fs::read_dir(self.dir().join("tokens")) else {
            return false;
        };
        dirs.flatten()
            .any(|d| std::fs::metadata(d.path().join("token.object")).is_ok_and(|m| m.len() == 0))
    }
}
