//! Who is on the other end of a connection: the peer's uid and pid (`SO_PEERCRED`), its
//! executable and command line (`/proc/PID/exe`, `/proc/PID/cmdline`) and its systemd unit (the
//! innermost `*.service` or `*.scope` component of its cgroup path), read once when the
//! connection is accepted, and the front door it came through.
//!
//! This is what policy rules match and what prompts show a person. It identifies a process of
//! the agent's own uid only as far as that uid cannot lie: anything that can `ptrace` or
//! `LD_PRELOAD` a permitted program can act as it. This module must never treat what it reads as
//! proof of anything stronger, never fail a connection because `/proc` could not be read (the
//! fields are then unknown, and a rule naming them does not match), and never read anything but
//! the peer's own `/proc` entries.

use std::path::{Path, PathBuf};

/// The most of a command line kept (bytes); prompts show less.
const MAX_CMDLINE: usize = 4096;

pub use keyward_policy::Door;

/// The door a CBOR client is, from the `client` field of its `hello`: the PKCS#11 module names
/// itself `keyward-pkcs11` (or `pkcs11`); everything else is the socket. The client says this
/// itself, so it only tells honest clients apart.
pub fn door_from_hello(client: Option<&str>) -> Door {
    match client {
        Some("keyward-pkcs11" | "pkcs11") => Door::Pkcs11,
        _ => Door::Socket,
    }
}

/// A connection's peer process, as far as the kernel and `/proc` tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    /// `/proc/PID/exe`: the executable's path (with ` (deleted)` when it was replaced).
    pub exe: Option<PathBuf>,
    /// `/proc/PID/cmdline`, arguments joined by spaces (lossy UTF-8, at most 4 KiB read).
    pub cmdline: Option<String>,
    /// The innermost systemd `*.service` or `*.scope` the process runs in.
    pub unit: Option<String>,
}

impl Peer {
    /// A peer nothing is known about.
    pub fn unknown() -> Peer {
        Peer::default()
    }

    /// Read what `/proc` says about `pid` (the peer credentials' uid and pid).
    pub fn from_cred(uid: u32, pid: Option<i32>) -> Peer {
        Peer::from_proc(Path::new("/proc"), uid, pid)
    }

    /// As [`Peer::from_cred`], reading from another procfs root (tests).
    pub fn from_proc(proc: &Path, uid: u32, pid: Option<i32>) -> Peer {
        let Some(pid) = pid.filter(|p| *p > 0) else {
            return Peer {
                uid: Some(uid),
                ..Peer::default()
            };
        };
        let dir = proc.join(pid.to_string());
        let exe = std::fs::read_link(dir.join("exe")).ok();
        let cmdline = std::fs::read(dir.join("cmdline")).ok().and_then(|mut b| {
            b.truncate(MAX_CMDLINE);
            let s = b
                .split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            (!s.is_empty()).then_some(s)
        });
        let unit = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|c| unit_from_cgroup(&c));
        Peer {
            uid: Some(uid),
            pid: Some(pid),
            exe,
            cmdline,
            unit,
        }
    }

    /// The executable's path as text, if known.
    pub fn exe_text(&self) -> Option<String> {
        self.exe.as_ref().map(|p| p.display().to_string())
    }

    /// The requesting process for prompts and logs: `process N (exe): cmdline [unit]`, with
    /// control characters removed and the command line cut to 200 characters.
    pub fn describe(&self) -> String {
        let Some(pid) = self.pid else {
            return "an unknown process".into();
        };
        let exe = self.exe_text().unwrap_or_else(|| "?".into());
        let mut cmdline: String = self
            .cmdline
            .as_deref()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        if cmdline.is_empty() {
            cmdline = "?".into();
        }
        let exe: String = exe.chars().filter(|c| !c.is_control()).collect();
        let mut s = format!("process {pid} ({exe}): {cmdline}");
        if let Some(u) = &self.unit {
            let u: String = u.chars().filter(|c| !c.is_control()).collect();
            s.push_str(&format!(" [{u}]"));
        }
        s
    }
}

/// The systemd unit in `/proc/PID/cgroup` text: from the unified (v2, `0::`) line if there is
/// one, else the v1 `name=systemd` line, the innermost path component ending in `.service` or
/// `.scope`. `None` when the process is not under systemd (no such component).
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    let lines: Vec<(&str, &str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            Some((parts.next()?, parts.next()?, parts.next()?))
        })
        .collect();
    let path = lines
        .iter()
        .find(|(id, c, _)| *id == "0" && c.is_empty())
        .or_else(|| lines.iter().find(|(_, c, _)| *c == "name=systemd"))
        .map(|(_, _, p)| *p)?;
    path.split('/')
        .rev()
        .find(|c| {
            let name = c
                .strip_suffix(".service")
                .or_else(|| c.strip_suffix(".scope"));
            name.is_some_and(|n| !n.is_empty())
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_user_service_is_the_innermost_unit() {
        let t = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service\n";
        assert_eq!(unit_from_cgroup(t).as_deref(), Some("foo.service"));
    }

    #[test]
    fn cgroup_v2_scope_and_system_service() {
        let t = "0::/user.slice/user-1000.slice/session-3.scope\n";
        assert_eq!(unit_from_cgroup(t).as_deref(), Some("session-3.scope"));
        let t = "0::/system.slice/sshd.service\n";
        assert_eq!(unit_from_cgroup(t).as_deref(), Some("sshd.service"));
        let t = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-1.scope\n";
        assert_eq!(unit_from_cgroup(t).as_deref(), Some("vte-spawn-1.scope"));
    }

    #[test]
    fn no_systemd_is_no_unit() {
        assert_eq!(unit_from_cgroup("0::/\n"), None);
        assert_eq!(unit_from_cgroup("0::/docker/3f2a9c\n"), None);
        assert_eq!(unit_from_cgroup(""), None);
        assert_eq!(unit_from_cgroup("garbage without colons\n"), None);
        // A bare suffix is not a unit name.
        assert_eq!(unit_from_cgroup("0::/.service\n"), None);
    }

    #[test]
    fn cgroup_v1_uses_the_systemd_hierarchy() {
        let t = "12:pids:/user.slice/user-1000.slice/user@1000.service\n\
                 11:memory:/user.slice/user-1000.slice/user@1000.service\n\
                 2:cpu,cpuacct:/\n\
                 1:name=systemd:/user.slice/user-1000.slice/user@1000.service/gpg-agent.service\n";
        assert_eq!(unit_from_cgroup(t).as_deref(), Some("gpg-agent.service"));
        // Hybrid: v1 controllers plus the unified line; the unified line wins.
        let t = "1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n\
                 0::/user.slice/user-1000.slice/user@1000.service/app.slice/bar.service\n";
        assert_eq!(unit_from_cgroup(t).as_deref(), Some("bar.service"));
        // v1 without a systemd hierarchy.
        assert_eq!(unit_from_cgroup("4:memory:/lxc/c1\n3:cpu:/\n"), None);
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let me = Peer::from_cred(0, Some(std::process::id() as i32));
        let exe = std::env::current_exe().expect("current exe");
        assert_eq!(me.exe.as_deref(), Some(exe.as_path()));
        assert!(me.cmdline.is_some());
        assert!(me.describe().starts_with(&format!(
            "process {} ({})",
            std::process::id(),
            exe.display()
        )));
    }

    #[test]
    fn unknown_and_vanished_peers_describe_safely() {
        assert_eq!(Peer::unknown().describe(), "an unknown process");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Peer::from_proc(dir.path(), 1000, Some(4242));
        assert_eq!(p.uid, Some(1000));
        assert_eq!(p.exe, None);
        assert_eq!(p.unit, None);
        assert_eq!(p.describe(), "process 4242 (?): ?");
    }

    #[test]
    fn describe_strips_control_characters() {
        let p = Peer {
            uid: Some(1),
            pid: Some(7),
            exe: Some("/bin/x\u{1b}[2J".into()),
            cmdline: Some("a\nb\u{7}c".into()),
            unit: Some("u.service".into()),
        };
        assert_eq!(p.describe(), "process 7 (/bin/x[2J): abc [u.service]");
    }

    #[test]
    fn door_from_the_hello_client() {
        assert_eq!(door_from_hello(Some("keyward-pkcs11")), Door::Pkcs11);
        assert_eq!(door_from_hello(Some("pkcs11")), Door::Pkcs11);
        assert_eq!(door_from_hello(Some("keyward-cli")), Door::Socket);
        assert_eq!(door_from_hello(None), Door::Socket);
    }
}
