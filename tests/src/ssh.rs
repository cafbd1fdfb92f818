//! Harness for the SSH-agent tests: the real OpenSSH tools (`ssh-add`, `ssh-keygen`, `ssh`,
//! `sshd`, installed by `ssh-setup.sh`) pointed at a [`TestEnv`]'s SSH socket, a real `sshd`
//! started per test on 127.0.0.1, and raw agent-protocol frames.

use crate::{repo_root, run_with_stdin, TestEnv, WAIT};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

static INSTALL: Once = Once::new();

/// Install OpenSSH's client and server once per test process (`ssh-setup.sh`), failing loudly.
pub fn ensure_openssh() {
    INSTALL.call_once(|| {
        let st = Command::new(repo_root().join("ssh-setup.sh"))
            .arg("--install-only")
            .status()
            .expect("running ssh-setup.sh");
        assert!(st.success(), "ssh-setup.sh --install-only failed");
    });
}

/// The SSH-agent socket of `env`'s agent (`ssh.sock` beside its CBOR socket).
pub fn ssh_sock(env: &TestEnv) -> PathBuf {
    env.socket_path().with_file_name("ssh.sock")
}

/// An OpenSSH tool aimed at `env`'s SSH socket, with no askpass and no user config.
pub fn tool(env: &TestEnv, program: &str, args: &[&str]) -> Command {
    ensure_openssh();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("SSH_AUTH_SOCK", ssh_sock(env))
        .env_remove("SSH_ASKPASS")
        .env_remove("DISPLAY")
        .current_dir(env.dir());
    cmd
}

/// Run a tool; its output whatever the status.
pub fn run(env: &TestEnv, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    run_with_stdin(tool(env, program, args), stdin)
}

/// Run a tool and require success; stdout as text.
pub fn run_ok(env: &TestEnv, program: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = run(env, program, args, stdin);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout: {}\nstderr: {}\nagent log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        env.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ssh-add -l` (empty when the agent has no identities).
pub fn listed(env: &TestEnv) -> String {
    let out = run(env, "ssh-add", &["-l"], None);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file key made by `ssh-keygen` (`ed25519` or `ecdsa`) in the test dir; returns its path.
pub fn file_key(env: &TestEnv, kind: &str, name: &str) -> PathBuf {
    let path = env.dir().join(name);
    let p = path.to_str().expect("utf-8 path");
    let mut args = vec!["-q", "-t", kind, "-N", "", "-C", name, "-f", p];
    if kind == "ecdsa" {
        args.extend(["-b", "256"]);
    }
    run_ok(env, "ssh-keygen", &args, None);
    path
}

/// Init the agent (unlocked) with one KEK.
pub fn init_with_kek(env: &TestEnv) {
    env.init();
    env.cli_ok(&["kek", "create", "--label", "ssh-tests"], None);
}

/// Create a keypair offered to SSH; returns `keypair show --json`.
pub fn ssh_keypair(env: &TestEnv, extra: &[&str], label: &str) -> serde_json::Value {
    let mut args = vec!["keypair", "create", "--ssh", "--label", label];
    args.extend_from_slice(extra);
    let id = String::from_utf8(env.cli_ok(&args, None)).expect("id");
    env.cli_json(&["keypair", "show", id.trim()], None)
}

/// Try to sign the way git does with the agent key whose public line is `pubkey`; the
/// `ssh-keygen` output, whatever its status (for signatures that must be refused).
pub fn git_sign_attempt(env: &TestEnv, pubkey: &str, tag: &str) -> Output {
    let dir = env.dir();
    std::fs::write(dir.join(format!("{tag}.pub")), format!("{pubkey}\n")).expect("write pub");
    std::fs::write(dir.join(format!("{tag}.msg")), b"commit tree 1234\n").expect("write msg");
    run(
        env,
        "ssh-keygen",
        &[
            "-Y",
            "sign",
            "-n",
            "git",
            "-f",
            &format!("{tag}.pub"),
            &format!("{tag}.msg"),
        ],
        None,
    )
}

/// Sign `msg` the way git does (`ssh-keygen -Y sign -n git` with the agent key whose public
/// line is `pubkey`) and verify it with an `allowed_signers` file; panics unless both succeed.
pub fn git_sign_and_verify(env: &TestEnv, pubkey: &str, tag: &str) {
    let dir = env.dir();
    let signed = git_sign_attempt(env, pubkey, tag);
    assert!(
        signed.status.success(),
        "ssh-keygen -Y sign failed ({}): {}",
        signed.status,
        String::from_utf8_lossy(&signed.stderr)
    );
    std::fs::write(
        dir.join("allowed_signers"),
        format!("dev@example.com {pubkey}\n"),
    )
    .expect("write allowed_signers");
    let msg = std::fs::read(dir.join(format!("{tag}.msg"))).expect("read msg");
    let out = run_ok(
        env,
        "ssh-keygen",
        &[
            "-Y",
            "verify",
            "-f",
            "allowed_signers",
            "-I",
            "dev@example.com",
            "-n",
            "git",
            "-s",
            &format!("{tag}.msg.sig"),
        ],
        Some(&msg),
    );
    assert!(out.contains("Good \"git\" signature"), "{out}");
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real `sshd` on 127.0.0.1 (own host key, authorized_keys, no PAM), killed on drop.
pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    /// The host key's public line (`ssh-ed25519 AAAA...`).
    pub host_key: String,
    child: Child,
}

impl Sshd {
    pub fn start(env: &TestEnv, authorized: &[&str]) -> Sshd {
        ensure_openssh();
        let dir = env.dir().join("sshd");
        std::fs::create_dir_all(&dir).expect("sshd dir");
        let hk = dir.join("host_ed25519");
        if !hk.exists() {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&hk)
                .status()
                .expect("ssh-keygen host key");
            assert!(st.success());
        }
        let host_key = std::fs::read_to_string(hk.with_extension("pub")).expect("host pub");
        std::fs::write(dir.join("authorized_keys"), authorized.join("\n") + "\n")
            .expect("authorized_keys");
        // Privilege separation needs its empty directory when sshd runs as root.
        if crate::is_root() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let port = free_port();
        let conf = dir.join("sshd_config");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                hk = hk.display(),
                pid = dir.join("sshd.pid").display(),
                ak = dir.join("authorized_keys").display(),
            ),
        )
        .expect("sshd_config");
        let log = std::fs::File::create(dir.join("sshd.log")).expect("sshd log");
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting sshd");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < WAIT,
                "sshd did not listen: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            port,
            dir,
            host_key: host_key.trim().to_string(),
            child,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// `ssh` to this server as the test's user through `env`'s agent, offering only the agent
    /// key whose public line is in `identity_pub`; runs `true`.
    pub fn login(&self, env: &TestEnv, identity_pub: &Path) -> Output {
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "root".into());
        let sock = ssh_sock(env);
        let args: Vec<String> = vec![
            "-F".into(),
            "/dev/null".into(),
            "-o".into(),
            format!("IdentityAgent={}", sock.display()),
            "-o".into(),
            format!("IdentityFile={}", identity_pub.display()),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                self.dir.join("client_known_hosts").display()
            ),
            "-p".into(),
            self.port.to_string(),
            format!("{user}@127.0.0.1"),
            "true".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(env, "ssh", &args, None)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw connection to the SSH socket, for hand-made frames.
pub struct RawSsh(pub UnixStream);

impl RawSsh {
    pub fn connect(env: &TestEnv) -> RawSsh {
        let s = UnixStream::connect(ssh_sock(env)).expect("connect to the SSH socket");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        RawSsh(s)
    }

    /// Send one framed message body.
    pub fn send(&mut self, body: &[u8]) {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        self.0.write_all(&f).expect("write frame");
    }

    /// Read one framed answer body; `None` when the agent closed the connection.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        match self.0.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading an answer: {e}"),
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut body).expect("answer body");
        Some(body)
    }
}
