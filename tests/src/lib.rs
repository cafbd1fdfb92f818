//! End-to-end test harness: the real `keywardd` against a real token, driven over its socket by
//! the client library, the `keyward` CLI, and hand-made frames.
//!
//! Every test gets its own [`TestEnv`]: a temporary directory holding the token, the keystore,
//! the agent config, the agent's log and its socket, and a running `keywardd`. Tests are written
//! as functions over `&mut TestEnv` and instantiated once per [`RootKind`] by
//! [`keyward_e2e_tests!`], so a new root kind is one enum variant, its `setup` arm, and one line
//! in the macro.
//!
//! The binaries are found next to the test executable (`target/<profile>/keywardd` and
//! `keyward`); build them first with `cargo build --workspace --bins`.

use keyward_client::{BlockingClient, ClientError};
use keyward_proto::{ErrorCode, Response, MAX_FRAME};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod ssh;
pub mod vcard;

pub use ciborium::Value;
pub use keyward_client;
pub use keyward_proto;

/// How long the harness waits for anything the agent should do promptly (start, stop, answer).
/// Generous: a bound against hangs, never a speed requirement.
pub const WAIT: Duration = Duration::from_secs(30);

/// Which root backend the agent under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// A SoftHSM2 token made by the repo's `softhsm-setup.sh`; the secret is the token's user PIN.
    Pkcs11,
    /// A passphrase root (`[root] kind = "soft"`, PBKDF2 at the agent's default 600,000
    /// iterations); the secret is the passphrase.
    Soft,
    /// A YubiKey root (`[root] kind = "yubikey"`) on the virtual PIV card of
    /// `vcard-setup.sh` through the real pcscd ([`vcard`]); the secret is the card PIN.
    YubiKey,
    /// An EC (P-256, `ecdh-p256`) root on a SoftHSM2 token (`key_type = "ec"`).
    Pkcs11Ec,
    /// An EC root on the virtual PIV card through ykcs11 (`key_type = "ec"`), see [`vcard`].
    Pkcs11EcCard,
}

impl RootKind {
    /// The root kind the agent reports in `hello`.
    pub fn name(self) -> &'static str {
        match self {
            RootKind::Pkcs11 => "pkcs11",
            RootKind::Soft => "soft",
            RootKind::YubiKey => "yubikey",
            RootKind::Pkcs11Ec | RootKind::Pkcs11EcCard => "pkcs11",
        }
    }
}

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

/// Options for [`TestEnv::start_with`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub unlock: UnlockPolicy,
    /// Run the agent as this (uid, gid) instead of the test's own user (the whole temporary
    /// directory is handed to that user first). Needs root.
    pub run_as: Option<(u32, u32)>,
}

/// The PIN or passphrase the root is set up with (deliberately not the script's default).
pub const TEST_PIN: &str = "test-pin-4321";
/// A wrong one.
pub const WRONG_PIN: &str = "wrong-pin-0000";

/// One agent with its own token, keystore and socket in a temporary directory.
pub struct TestEnv {
    kind: RootKind,
    opts: Options,
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

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

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent")
        .to_path_buf()
}

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

/// Wait for a child to exit, bounded by [`WAIT`].
pub fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    wait_for(what, || child.try_wait().expect("try_wait"))
}

impl TestEnv {
    /// Set up a root of `kind` with the default fast unlock policy and start the agent.
    pub fn start(kind: RootKind) -> TestEnv {
        Self::start_with(kind, Options::default())
    }

    pub fn start_with(kind: RootKind, opts: Options) -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("keyward-e2e-")
            .tempdir()
            .expect("temp dir");
        let config = match kind {
            RootKind::Pkcs11 => setup_pkcs11(dir.path()),
            RootKind::Soft => setup_soft(dir.path()),
            RootKind::YubiKey => vcard::setup_yubikey(dir.path()),
            RootKind::Pkcs11Ec => vcard::setup_pkcs11_ec(dir.path()),
            RootKind::Pkcs11EcCard => vcard::setup_ykcs11(dir.path()),
        };
        let policy = opts.unlock;
        let mut f = OpenOptions::new()
            .append(true)
            .open(&config)
            .expect("open config");
        write!(
            f,
            "\n[unlock]\nmax_attempts = {}\nfree_attempts = {}\nbackoff_base_ms = {}\nbackoff_max_ms = {}\n",
            policy.max_attempts, policy.free_attempts, policy.backoff_base_ms, policy.backoff_max_ms
        )
        .expect("write config");
        drop(f);
        if let Some((uid, gid)) = opts.run_as {
            let st = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown -R of the test dir failed");
        }
        let mut env = TestEnv {
            kind,
            opts,
            // The socket's directory does not exist yet: the agent must make it 0700.
            socket: dir.path().join("run").join("agent.sock"),
            log: dir.path().join("keywardd.log"),
            config,
            dir,
            child: None,
        };
        env.spawn_agent();
        env
    }

    pub fn kind(&self) -> RootKind {
        self.kind
    }

    /// The CLI arguments that initialise this kind of root with the secret on stdin.
    pub fn init_args(&self) -> Vec<&'static str> {
        match self.kind {
            RootKind::Pkcs11 | RootKind::YubiKey | RootKind::Pkcs11Ec | RootKind::Pkcs11EcCard => {
                vec!["init", "--pin-stdin"]
            }
            RootKind::Soft => vec!["init", "--soft", "--passphrase-stdin"],
        }
    }

    /// The secret `init` and `unlock` take.
    pub fn pin(&self) -> &'static str {
        match self.kind {
            RootKind::YubiKey | RootKind::Pkcs11EcCard => vcard::CARD_PIN,
            _ => TEST_PIN,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The keystore file (as `softhsm-setup.sh` configures it: next to the config).
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

    pub fn keystore_path(&self) -> PathBuf {
        self.dir.path().join("keystore.db")
    }

    /// Everything the agent has written to stderr so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The (uid, gid) the agent runs as when it is not the test's own user ([`Options::run_as`]).
    pub fn agent_user(&self) -> Option<(u32, u32)> {
        self.opts.run_as
    }

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

    fn spawn_agent(&mut self) {
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
        self.stop_with(nix::sys::signal::Signal::SIGTERM)
    }

    /// Kill the agent with SIGKILL (no clean-up: the socket file stays) and reap it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("agent not running");
        signal(&child, nix::sys::signal::Signal::SIGKILL);
        wait_exit(&mut child, "keywardd to die after SIGKILL");
    }

    /// Send `sig` (SIGTERM or SIGINT) and wait: exit status 0 and the socket removed.
    pub fn stop_with(&mut self, sig: nix::sys::signal::Signal) {
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

    /// A new blocking client connection (it has said `hello`).
    pub fn client(&self) -> BlockingClient {
        BlockingClient::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connecting a client: {e}; agent log:\n{}", self.log()))
    }

    /// A new async client connection (call from inside a tokio runtime).
    pub async fn async_client(&self) -> keyward_client::Client {
        keyward_client::Client::connect(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("connecting a client: {e}"))
    }

    /// A `keyward` CLI command aimed at this agent (through `KEYWARD_SOCK`).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("keyward"));
        cmd.args(args)
            .env("KEYWARD_SOCK", &self.socket)
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

    /// A raw socket connection (no `hello` sent).
    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.socket)
    }

    // ---- common set-ups ---------------------------------------------------------------------

    /// `init` (leaves the root unlocked).
    pub fn init(&self) {
        let c = self.client();
        c.run(|c| c.init(pin(self.pin()))).expect("init");
    }

    /// `init`, one KEK, one DEK (exportable as asked), and one ciphertext of `plaintext`.
    pub fn init_with_keys(&self, exportable: bool, plaintext: &[u8]) -> Keys {
        self.init();
        let c = self.client();
        let kek = c.run(|c| c.kek_create(Some("e2e".into()))).expect("kek").id;
        let args = keyward_proto::ops::DekCreateArgs {
            kek: Some(kek.clone()),
            exportable,
            ..Default::default()
        };
        let dek = c.run(|c| c.dek_create(&args)).expect("dek").id;
        let ciphertext = c.run(|c| c.encrypt(&dek, plaintext)).expect("encrypt");
        Keys {
            kek,
            dek,
            ciphertext,
            plaintext: plaintext.to_vec(),
        }
    }

    /// With a fresh connection: the keys are listed, the ciphertext decrypts (unlocking first if
    /// the agent is locked). The agent must still be running.
    pub fn assert_intact(&mut self, keys: &Keys) {
        assert!(self.is_running(), "the agent died; log:\n{}", self.log());
        let c = self.client();
        if c.hello_info().locked {
            c.run(|c| c.unlock(pin(self.pin()))).expect("unlock");
        }
        let keks = c.run(|c| c.kek_list()).expect("kek.list");
        assert!(keks.keys.iter().any(|k| k.id == keys.kek), "KEK missing");
        let deks = c.run(|c| c.dek_list(None)).expect("dek.list");
        assert!(deks.keys.iter().any(|k| k.id == keys.dek), "DEK missing");
        let pt = c
            .run(|c| c.decrypt(&keys.ciphertext, None))
            .expect("decrypt");
        assert_eq!(pt.expose(), &keys.plaintext[..]);
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- keywardd log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// What [`TestEnv::init_with_keys`] made.
#[derive(Debug, Clone)]
pub struct Keys {
    pub kek: String,
    pub dek: String,
    pub ciphertext: String,
    pub plaintext: Vec<u8>,
}

pub fn pin(s: &str) -> keyward_proto::secret::Pin {
    keyward_proto::secret::Pin::new(s)
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).expect("kill");
}

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

fn setup_soft(dir: &Path) -> PathBuf {
    let config = dir.join("keyward.toml");
    std::fs::write(
        &config,
        "keystore = \"keystore.db\"\n\n[root]\nkind = \"soft\"\n",
    )
    .expect("write soft config");
    config
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

/// The agent's error code of a failed call, or a panic saying what happened instead.
pub fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Ok(v) => panic!("expected an agent error, got Ok({v:?})"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("expected an agent error, got {e}")),
    }
}

/// Assert that a call failed with the agent error `want`; returns the error for more checks.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, ClientError>, want: ErrorCode) -> ClientError {
    match r {
        Ok(v) => panic!("expected {want}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.code(), Some(want), "expected {want}, got {e}");
            e
        }
    }
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

// ---- raw frames ---------------------------------------------------------------------------------

/// A CBOR map from text keys.
pub fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::Text((*k).into()), v.clone()))
            .collect(),
    )
}

pub fn text(s: &str) -> Value {
    Value::Text(s.into())
}

pub fn int(i: u64) -> Value {
    Value::Integer(i.into())
}

/// A request `{id, op, args}`.
pub fn request(id: u64, op: &str, args: Value) -> Value {
    map(&[("id", int(id)), ("op", text(op)), ("args", args)])
}

pub fn cbor(v: &Value) -> Vec<u8> {
    let mut b = Vec::new();
    ciborium::into_writer(v, &mut b).expect("cbor encode");
    b
}

/// A socket connection speaking hand-made frames, with read timeouts of [`WAIT`].
pub struct RawConn {
    pub stream: UnixStream,
}

/// What a read from a [`RawConn`] gave.
#[derive(Debug)]
pub enum RawRead {
    Frame(Response),
    /// The agent closed the connection (EOF, or a reset).
    Closed,
}

impl RawConn {
    pub fn connect(path: &Path) -> RawConn {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        RawConn { stream }
    }

    /// Write raw bytes (no framing).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Write one frame with `body`.
    pub fn send_body(&mut self, body: &[u8]) {
        let mut b = (body.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(body);
        self.write_raw(&b);
    }

    pub fn send(&mut self, v: &Value) {
        self.send_body(&cbor(v));
    }

    /// Read one response frame, or learn that the agent closed. Panics on a timeout.
    pub fn read(&mut self) -> RawRead {
        match keyward_proto::frame::read_blocking(&mut self.stream, MAX_FRAME) {
            Ok(Some(b)) => RawRead::Frame(
                Response::from_cbor(&b).unwrap_or_else(|e| panic!("bad response frame: {e}")),
            ),
            Ok(None) => RawRead::Closed,
            Err(keyward_proto::frame::FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("no answer from the agent within {WAIT:?}")
            }
            Err(_) => RawRead::Closed,
        }
    }

    /// Read one response; panics if the agent closed instead.
    pub fn recv(&mut self) -> Response {
        match self.read() {
            RawRead::Frame(r) => r,
            RawRead::Closed => panic!("the agent closed the connection instead of answering"),
        }
    }

    /// Send `v` and read one response.
    pub fn call(&mut self, v: &Value) -> Response {
        self.send(v);
        self.recv()
    }

    /// Say `hello` (protocol 1) and require success.
    pub fn hello(&mut self, id: u64) {
        let r = self.call(&request(id, "hello", map(&[("version", int(1))])));
        assert_eq!(r.id, Some(id));
        assert!(r.ok.is_some(), "hello failed: {:?}", r.err);
    }

    /// Expect the agent to close the connection (no further frame).
    pub fn expect_closed(&mut self) {
        match self.read() {
            RawRead::Closed => {}
            RawRead::Frame(r) => panic!("expected the agent to close, got {r:?}"),
        }
    }
}

/// The error code of a raw response, or a panic if it succeeded.
#[track_caller]
pub fn err_code(r: &Response) -> ErrorCode {
    r.err
        .as_ref()
        .unwrap_or_else(|| panic!("expected an error response, got {r:?}"))
        .code
}

/// A whole file as text (for `/proc` checks); panics with the path on failure.
pub fn read_to_string(p: &Path) -> String {
    let mut s = String::new();
    File::open(p)
        .and_then(|mut f| f.read_to_string(&mut s))
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    s
}

/// Instantiate each test function (`fn name(env: &mut TestEnv)`) once per root kind, as
/// `<kind>::<name>`. `name with expr` starts the environment with the [`Options`] `expr`.
/// Adding a root kind: one more `mod` block here.
#[macro_export]
macro_rules! keyward_e2e_tests {
    ($($name:ident $(with $opts:expr)?),* $(,)?) => {
        mod pkcs11 {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    #[allow(unused_variables)]
                    let opts = $crate::Options::default();
                    $(let opts: $crate::Options = $opts;)?
                    let mut env = $crate::TestEnv::start_with($crate::RootKind::Pkcs11, opts);
                    super::$name(&mut env);
                }
            )*
        }
        mod soft {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    #[allow(unused_variables)]
                    let opts = $crate::Options::default();
                    $(let opts: $crate::Options = $opts;)?
                    let mut env = $crate::TestEnv::start_with($crate::RootKind::Soft, opts);
                    super::$name(&mut env);
                }
            )*
        }
    };
}
