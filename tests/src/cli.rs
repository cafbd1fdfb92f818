//! The CLI runner: the real `keyward` binary aimed at one test's agent (through
//! `KEYWARD_SOCK`), with stdin fed and output collected, plus its `--json` forms.

use crate::env::TestEnv;
use crate::process::bin;
use std::io::Write;
use std::process::{Command, Output, Stdio};

impl TestEnv {
    /// A `keyward` CLI command aimed at this agent (through `KEYWARD_SOCK`).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("keyward"));
        cmd.args(args)
            .env("KEYWARD_SOCK", self.socket_path())
            .env_remove("XDG_RUNTIME_DIR");
        cmd
    }

    /// Run the CLI as another user (needs root). std drops supplementary groups when root
    /// changes uid, like `setpriv --reuid --regid --clear-groups`.
    pub fn cli_as(&self, (uid, gid): (u32, u32), args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.cli_command(args);
        cmd.uid(uid).gid(gid).current_dir("/");
        run_with_stdin(cmd, stdin)
    }

    /// Run the CLI with `args` and optional stdin; returns its output whatever the exit status.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        run_with_stdin(self.cli_command(args), stdin)
    }

    /// Run the CLI and require success; returns stdout.
    pub fn cli_ok(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let out = self.cli(args, stdin);
        assert!(
            out.status.success(),
            "keyward {args:?} failed ({}):\nstdout: {}\nstderr: {}\nagent log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out.stdout
    }

    /// Run the CLI with `--json` and require success; returns the parsed object.
    pub fn cli_json(&self, args: &[&str], stdin: Option<&[u8]>) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli_ok(&all, stdin);
        parse_json(&out)
    }

    /// Run the CLI with `--json`, require failure (exit 1) and return the `error.code`.
    pub fn cli_json_err(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all, stdin);
        assert_eq!(
            out.status.code(),
            Some(1),
            "keyward {all:?} should fail with exit 1; stdout: {} stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v = parse_json(&out.stdout);
        v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {v}"))
            .to_string()
    }
}

/// Run a command, feeding `stdin` (or nothing), and collect its output.
pub fn run_with_stdin(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut sin = child.stdin.take().unwrap();
    let data = stdin.unwrap_or_default().to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = sin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait_with_output");
    feeder.join().unwrap();
    out
}

pub fn parse_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}
