//! The agent as a process: finding the built binaries, starting `keywardd` and waiting until
//! it listens, stopping it by signal (checked: exit 0, socket removed) or killing it, and
//! reaping it when the test ends.

use crate::env::TestEnv;
use crate::util::{wait_for, WAIT};
use nix::sys::signal::Signal;
use std::fs::OpenOptions;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/` of the running test executable (which lives in `target/<profile>/deps`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable has no grandparent directory")
        .to_path_buf()
}

/// The path of a workspace binary, or a panic saying how to build it.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (with the same CARGO_TARGET_DIR and profile as the tests)",
        p.display()
    );
    p
}

/// Wait for a child to exit, bounded by [`WAIT`].
pub fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    wait_for(what, || child.try_wait().expect("try_wait"))
}

fn signal(child: &Child, sig: Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).expect("kill");
}

impl TestEnv {
    /// The running agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent not running").id()
    }

    /// A `keywardd` command for this environment (config and socket set), not yet started.
    pub fn agent_command(&self) -> Command {
        let mut cmd = Command::new(bin("keywardd"));
        cmd.arg("--config")
            .arg(&self.config)
            .env("KEYWARD_SOCK", &self.socket)
            .env_remove("KEYWARD_CONFIG")
            .env_remove("KEYWARD_LOG")
            .env_remove("KEYWARD_SSH_SOCK")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.opts.run_as {
            use std::os::unix::process::CommandExt;
            // std drops supplementary groups (setgroups(0)) when root changes uid.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Start the agent (stderr appended to the log) and wait until it accepts connections.
    pub(crate) fn spawn_agent(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open agent log");
        let child = self
            .agent_command()
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning keywardd: {e}"));
        self.child = Some(child);
        let sock = self.socket.clone();
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                panic!(
                    "keywardd exited during start-up ({st}); log:\n{}",
                    self.log()
                );
            }
            if UnixStream::connect(&sock).is_ok() {
                return;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "keywardd did not listen on {} within {WAIT:?}; log:\n{}",
                    sock.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM the agent and wait for it: it must exit 0 and remove its socket.
    pub fn stop(&mut self) {
        self.stop_with(Signal::SIGTERM)
    }

    /// Kill the agent with SIGKILL (no clean-up: the socket file stays) and reap it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("agent not running");
        signal(&child, Signal::SIGKILL);
        wait_exit(&mut child, "keywardd to die after SIGKILL");
    }

    /// Send `sig` (SIGTERM or SIGINT) and wait: exit status 0 and the socket removed.
    pub fn stop_with(&mut self, sig: Signal) {
        let mut child = self.child.take().expect("agent not running");
        signal(&child, sig);
        let st = wait_exit(&mut child, "keywardd to exit after a stop signal");
        assert!(
            st.success(),
            "keywardd exited with {st} (signal {:?}) after {sig}; log:\n{}",
            st.signal(),
            self.log()
        );
        assert!(
            !self.socket.exists(),
            "keywardd left its socket {} behind",
            self.socket.display()
        );
    }

    /// Start the agent again (after [`TestEnv::stop`]).
    pub fn start_agent(&mut self) {
        self.spawn_agent();
    }

    /// Stop (gracefully, checked) and start the agent on the same token and keystore.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_agent();
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }
}

impl Drop for TestEnv {
    /// Kill and reap a still-running agent; when the test is failing, print the agent's log.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.drop_database();
        if std::thread::panicking() {
            eprintln!(
                "---- keywardd log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}
