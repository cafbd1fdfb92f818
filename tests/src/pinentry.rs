//! A fake Assuan pinentry for tests: a shell script that greets, logs every command it receives
//! to `pinentry.log` beside itself, and answers `GETPIN` and `CONFIRM` with the shell lines a test
//! gives (anything else gets `OK`). And the agent config lines that make the agent use it.

use crate::TestEnv;
use std::path::{Path, PathBuf};

/// pinentry's answer when the user cancels (`GPG_ERR_CANCELED`).
pub const CANCEL: &str = "echo 'ERR 83886179 Operation cancelled <Pinentry>'";
/// A `CONFIRM` answer: yes.
pub const YES: &str = "echo OK";

/// The shell lines that answer `GETPIN` with `pin`.
pub fn answer(pin: &str) -> String {
    format!("echo 'D {pin}'; echo OK")
}

/// `CONFIRM` lines that answer from the file `answer` beside the script: yes when it holds
/// `yes`, a cancel otherwise.
pub fn confirm_from_file() -> String {
    format!("if [ \"$(cat \"$(dirname \"$0\")/answer\")\" = yes ]; then {YES}; else {CANCEL}; fi")
}

/// Write the fake pinentry `dir/fake-pinentry`; `getpin` and `confirm` are the shell lines run
/// for those commands.
pub fn fake(dir: &Path, getpin: &str, confirm: &str) -> PathBuf {
    let path = dir.join("fake-pinentry");
    let script = format!(
        r#"#!/bin/bash
log="$(dirname "$0")/pinentry.log"
echo "OK Pleased to meet you"
while IFS= read -r line; do
  printf '%s\n' "$line" >> "$log"
  case "$line" in
    GETPIN*) {getpin} ;;
    CONFIRM*) {confirm} ;;
    BYE*) echo OK; exit 0 ;;
    *) echo OK ;;
  esac
done
"#
    );
    std::fs::write(&path, script).expect("write the fake pinentry");
    crate::chmod(&path, 0o755);
    path
}

/// Everything the fake pinentry in `dir` has received so far.
pub fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("pinentry.log")).unwrap_or_default()
}

/// Append `[prompt] pinentry = PROGRAM` (and its timeout) to the agent's config; takes effect at
/// the agent's next start.
pub fn configure(env: &TestEnv, program: &Path, timeout_s: u16) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.config_path())
        .expect("open the agent config");
    writeln!(
        f,
        "\n[prompt]\npinentry = \"{}\"\ntimeout_s = {timeout_s}",
        program.display()
    )
    .expect("write the agent config");
}
