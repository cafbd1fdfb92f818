//! The PKCS#11 module (`libkeyward_pkcs11.so`) driven by real programs against a real agent, on a
//! SoftHSM root and a soft root: the test host (p11host, over `cryptoki`), pkcs11-tool, p11tool,
//! OpenSSH (ssh-keygen -D, and ssh -I into a test-started sshd), NSS and OpenSSL's engine.
//! `pkcs11-setup.sh --install-only` installs the programs; these tests never skip.

use keyward_tests::pkcs11::{ck_id, host, init_for_module, module_path, run_ok};
use keyward_tests::{bin, TestEnv};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

keyward_tests::keyward_e2e_tests!(
    host_program_checks,
    agent_restart_mid_run,
    pkcs11_tool_lists_tests_signs_and_generates,
    p11tool_lists_objects,
    openssh_lists_keys,
    nss_lists_the_key,
    openssh_lists_and_logs_in,
    openssl_engine_signs,
    certificate_in_nss_and_pkcs11_tool,
    revoked_keys_leave_the_module,
    the_module_lists_every_page_of_keys,
);

fn openssh_lists_keys(env: &mut TestEnv) {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    init_for_module(env);
    let mut c = host(env, "ssh-keygen");
    c.arg("-D").arg(module());
    let keys = run_ok(c);
    assert!(
        keys.lines()
            .any(|l| l.starts_with("ecdsa-sha2-nistp256 ") && l.ends_with("p11-ecdsa")),
        "{keys}"
    );
}

fn module() -> String {
    module_path().display().to_string()
}

fn pem_of(env: &TestEnv, id: &str) -> std::path::PathBuf {
    let v = env.cli_json(&["keypair", "show", id], None);
    let pem = v["pem"].as_str().expect("pem").to_string();
    let p = env.dir().join(format!("{id}.pem"));
    std::fs::write(&p, pem).unwrap();
    p
}

fn host_program_checks(env: &mut TestEnv) {
    init_for_module(env);
    let mut c = host(env, bin("p11host").to_str().unwrap());
    c.args([&module(), env.pin(), "all"]);
    let out = run_ok(c);
    assert!(!out.contains("FAILED"), "{out}");
    assert!(out.contains("ok: fork"), "{out}");
    // No agent at all: zero slots, no hang.
    let mut c = Command::new(bin("p11host"));
    c.env("KEYWARD_SOCK", env.dir().join("nobody-here.sock"))
        .args([&module(), env.pin(), "noagent"]);
    run_ok(c);
}

fn agent_restart_mid_run(env: &mut TestEnv) {
    init_for_module(env);
    let mut child = host(env, bin("p11host").to_str().unwrap())
        .args([&module(), env.pin(), "restart"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("p11host");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "p11host said: {line}");
    env.restart();
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "p11host restart failed:\n{rest}");
    assert!(rest.contains("ok: reconnected"), "{rest}");
}

fn pkcs11_tool_lists_tests_signs_and_generates(env: &mut TestEnv) {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let keys = init_for_module(env);
    let m = module();
    let tool = |args: &[&str]| {
        let mut c = host(env, "pkcs11-tool");
        c.arg("--module").arg(&m).args(args);
        run_ok(c)
    };
    let l = tool(&["-L"]);
    assert!(l.contains("Keyward") && l.contains("login required"), "{l}");
    let o = tool(&["-O"]);
    assert!(o.contains("p11-ecdsa") && o.contains("EC_EDWARDS"), "{o}");
    assert!(
        !o.contains("Private Key Object"),
        "private keys listed without login:\n{o}"
    );
    let t = tool(&["--test", "--login", "--pin", env.pin()]);
    assert!(t.contains("No errors"), "{t}");

    // ECDSA and EdDSA signatures, verified by OpenSSL against the keypair's PEM.
    let msg = env.dir().join("msg");
    std::fs::write(&msg, b"signed through the module").unwrap();
    let sig = env.dir().join("sig");
    let (msg_s, sig_s) = (msg.to_str().unwrap(), sig.to_str().unwrap());
    tool(&[
        "--login",
        "--pin",
        env.pin(),
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--signature-format",
        "openssl",
        "--id",
        &ck_id(&keys.p256),
        "-i",
        msg_s,
        "-o",
        sig_s,
    ]);
    let pem = pem_of(env, &keys.p256);
    let mut c = Command::new("openssl");
    c.args([
        "dgst",
        "-sha256",
        "-verify",
        pem.to_str().unwrap(),
        "-signature",
        sig_s,
        msg_s,
    ]);
    assert!(run_ok(c).contains("Verified OK"));
    tool(&[
        "--login",
        "--pin",
        env.pin(),
        "--sign",
        "-m",
        "EDDSA",
        "--id",
        &ck_id(&keys.ed25519),
        "-i",
        msg_s,
        "-o",
        sig_s,
    ]);
    let pem = pem_of(env, &keys.ed25519);
    let mut c = Command::new("openssl");
    c.args([
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        pem.to_str().unwrap(),
        "-rawin",
        "-in",
        msg_s,
        "-sigfile",
        sig_s,
    ]);
    assert!(run_ok(c).contains("Signature Verified Successfully"));

    // A keypair generated through the module is an agent keypair.
    tool(&[
        "--login",
        "--pin",
        env.pin(),
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "made-by-p11",
    ]);
    let list = String::from_utf8_lossy(&env.cli_ok(&["keypair", "list"], None)).to_string();
    assert!(list.contains("made-by-p11"), "{list}");
}

/// Revoked keypairs and DEKs (and the keys under a revoked KEK) are not module objects.
fn revoked_keys_leave_the_module(env: &mut TestEnv) {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let keys = init_for_module(env);
    let m = module();
    let objects = |env: &TestEnv| {
        let mut c = host(env, "pkcs11-tool");
        c.arg("--module")
            .arg(&m)
            .args(["-O", "--login", "--pin", env.pin()]);
        run_ok(c)
    };
    let o = objects(env);
    assert!(o.contains("p11-ecdsa") && o.contains("p11-dek"), "{o}");
    env.cli_ok(&["keypair", "revoke", &keys.p256], None);
    let o = objects(env);
    assert!(
        !o.contains("p11-ecdsa"),
        "a revoked keypair is listed:\n{o}"
    );
    assert!(o.contains("p11-ed") && o.contains("p11-dek"), "{o}");
    let kek = env.cli_json(&["kek", "list"], None)["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.cli_ok(&["kek", "revoke", &kek], None);
    let o = objects(env);
    assert!(
        !o.contains("p11-ed") && !o.contains("p11-dek"),
        "keys under a revoked KEK are listed:\n{o}"
    );
}

fn p11tool_lists_objects(env: &mut TestEnv) {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    init_for_module(env);
    let mut c = host(env, "p11tool");
    c.args(["--provider", &module(), "--list-all"]);
    let out = run_ok(c);
    assert!(
        out.contains("p11-ecdsa") && out.contains("token=Keyward"),
        "{out}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssh_lists_and_logs_in(env: &mut TestEnv) {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    init_for_module(env);
    let mut c = host(env, "ssh-keygen");
    c.arg("-D").arg(module());
    let keys = run_ok(c);
    let line = keys
        .lines()
        .find(|l| l.starts_with("ecdsa-sha2-nistp256 "))
        .unwrap_or_else(|| panic!("ssh-keygen -D printed no P-256 key:\n{keys}"))
        .to_string();

    // An sshd of our own on 127.0.0.1: its own host key and authorized_keys, no PAM.
    let d = env.dir().join("sshd");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let hostkey = d.join("host_ed25519");
    run_ok({
        let mut c = Command::new("ssh-keygen");
        c.args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            hostkey.to_str().unwrap(),
        ]);
        c
    });
    let auth = d.join("authorized_keys");
    std::fs::write(&auth, format!("{line}\n")).unwrap();
    // With IdentitiesOnly, ssh uses a PKCS#11 key only if an identity file names it.
    let ident = d.join("p11-key.pub");
    std::fs::write(&ident, format!("{line}\n")).unwrap();
    let port = free_port();
    let cfg = d.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\nPidFile none\n",
            hostkey.display(),
            auth.display()
        ),
    )
    .unwrap();
    let mut sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f", cfg.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("sshd");
    keyward_tests::wait_for("sshd to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let askpass = d.join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{}'\n", env.pin())).unwrap();
    keyward_tests::chmod(&askpass, 0o700);
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let mut c = host(env, "ssh");
    c.args([
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "IdentityAgent=none",
    ])
    .arg("-i")
    .arg(&ident)
    .arg("-v")
    .arg("-I")
    .arg(module())
    .args([
        "-p",
        &port.to_string(),
        &format!("{user}@127.0.0.1"),
        "echo logged-in-through-keyward",
    ])
    .env("SSH_ASKPASS", &askpass)
    .env("SSH_ASKPASS_REQUIRE", "force")
    .env("DISPLAY", ":0")
    .stdin(Stdio::null());
    let out = c.output().expect("ssh");
    let _ = sshd.kill();
    let log = sshd
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
        .unwrap_or_default();
    let text = format!(
        "{}{}\n-- sshd --\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("logged-in-through-keyward"),
        "ssh -I failed:\n{text}"
    );
}

/// A new NSS database `env.dir()/NAME` with the module added to it; its `sql:` name and a PIN
/// file holding the agent's PIN.
fn nss_db(env: &TestEnv, name: &str) -> (String, std::path::PathBuf) {
    let db = env.dir().join(name);
    std::fs::create_dir_all(&db).unwrap();
    let sql = format!("sql:{}", db.display());
    run_ok({
        let mut c = Command::new("certutil");
        c.args(["-N", "-d", &sql, "--empty-password"]);
        c
    });
    run_ok({
        let mut c = host(env, "modutil");
        c.args([
            "-dbdir",
            &sql,
            "-add",
            "keyward",
            "-libfile",
            &module(),
            "-force",
        ]);
        c
    });
    let pinfile = env.dir().join(format!("{name}-pin"));
    std::fs::write(&pinfile, env.pin()).unwrap();
    (sql, pinfile)
}

fn nss_lists_the_key(env: &mut TestEnv) {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    init_for_module(env);
    let (sql, pinfile) = nss_db(env, "nssdb");
    let mut c = host(env, "certutil");
    c.args([
        "-K",
        "-d",
        &sql,
        "-h",
        "Keyward",
        "-f",
        pinfile.to_str().unwrap(),
    ]);
    let out = run_ok(c);
    assert!(out.contains("p11-ecdsa"), "{out}");
}

fn engine_path() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("engines-3/pkcs11.so"))
        .find(|p| p.is_file());
    found
        .expect("libengine-pkcs11-openssl's pkcs11.so")
        .display()
        .to_string()
}

/// An OpenSSL configuration loading libp11's engine with the module.
fn engine_conf(env: &TestEnv) -> std::path::PathBuf {
    let conf = env.dir().join("openssl.cnf");
    std::fs::write(
        &conf,
        format!(
            "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n[engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {}\nMODULE_PATH = {}\ninit = 0\n[req]\ndistinguished_name = dn\n[dn]\n",
            engine_path(),
            module()
        ),
    )
    .unwrap();
    conf
}

fn openssl_engine_signs(env: &mut TestEnv) {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let keys = init_for_module(env);
    let conf = engine_conf(env);
    let digest = env.dir().join("digest");
    std::fs::write(&digest, [0x5au8; 32]).unwrap();
    let sig = env.dir().join("engine.sig");
    let uri = format!(
        "pkcs11:token=Keyward;object=p11-ecdsa;type=private;pin-value={}",
        env.pin()
    );
    let mut c = host(env, "openssl");
    // libp11 0.4.12 gives up on the whole enumeration at the Ed25519 key: hide it (README).
    c.env("KEYWARD_PKCS11_HIDE_EDDSA", "1");
    c.env("OPENSSL_CONF", &conf).args([
        "pkeyutl",
        "-engine",
        "pkcs11",
        "-keyform",
        "engine",
        "-inkey",
        &uri,
        "-sign",
        "-in",
        digest.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
    ]);
    run_ok(c);
    let pem = pem_of(env, &keys.p256);
    let mut c = Command::new("openssl");
    c.args([
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        pem.to_str().unwrap(),
        "-in",
        digest.to_str().unwrap(),
        "-sigfile",
        sig.to_str().unwrap(),
    ]);
    assert!(run_ok(c).contains("Signature Verified Successfully"));
}

/// A self-signed certificate made by OpenSSL with the agent's key through the engine, set with
/// `keyward keypair cert set`: NSS lists it on the token and pkcs11-tool shows the object.
fn certificate_in_nss_and_pkcs11_tool(env: &mut TestEnv) {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let keys = init_for_module(env);
    let conf = engine_conf(env);
    let cert = env.dir().join("cert.pem");
    let mut c = host(env, "openssl");
    c.env("KEYWARD_PKCS11_HIDE_EDDSA", "1")
        .env("OPENSSL_CONF", &conf)
        .args([
            "req", "-new", "-x509", "-engine", "pkcs11", "-keyform", "engine", "-key",
        ])
        .arg(format!(
            "pkcs11:token=Keyward;object=p11-ecdsa;type=private;pin-value={}",
            env.pin()
        ))
        .args([
            "-sha256",
            "-days",
            "30",
            "-subj",
            "/CN=keyward-p11-test",
            "-out",
        ])
        .arg(&cert);
    run_ok(c);
    // A certificate for another key is refused.
    let other = env.dir().join("other.pem");
    run_ok({
        let mut c = Command::new("openssl");
        c.args([
            "req",
            "-new",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
        ])
        .arg(env.dir().join("other.key"))
        .args(["-subj", "/CN=other", "-days", "1", "-out"])
        .arg(&other);
        c
    });
    let code = env.cli_json_err(
        &[
            "keypair",
            "cert",
            "set",
            &keys.p256,
            "-i",
            other.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, "wrong_key");
    env.cli_ok(
        &[
            "keypair",
            "cert",
            "set",
            &keys.p256,
            "-i",
            cert.to_str().unwrap(),
        ],
        None,
    );

    let o = {
        let mut c = host(env, "pkcs11-tool");
        c.args(["--module", &module(), "-O", "--type", "cert"]);
        run_ok(c)
    };
    assert!(
        o.contains("Certificate Object") && o.contains("keyward-p11-test"),
        "{o}"
    );
    assert!(
        o.contains(&ck_id(&keys.p256)),
        "the certificate's CKA_ID:\n{o}"
    );

    let (sql, pinfile) = nss_db(env, "nssdb-cert");
    let mut c = host(env, "certutil");
    c.args([
        "-L",
        "-d",
        &sql,
        "-h",
        "Keyward",
        "-f",
        pinfile.to_str().unwrap(),
    ]);
    let out = run_ok(c);
    assert!(out.contains("Keyward:p11-ecdsa"), "{out}");
}

/// More DEKs than one page of `dek.list` holds (a page stops at 960 KiB, ~5,000 DEKs): the
/// module follows `next`, so every DEK, the last one created included, is an object.
fn the_module_lists_every_page_of_keys(env: &mut TestEnv) {
    use keyward_tests::keyward_proto::ops::{DekCreateArgs, DekListArgs};
    use std::sync::Arc;
    const N: usize = 6_000;
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let keys = init_for_module(env);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for who in 0..8 {
            let c = Arc::new(env.async_client().await);
            tasks.spawn(async move {
                let mut inflight = tokio::task::JoinSet::new();
                for i in 0..N / 8 {
                    if inflight.len() >= 32 {
                        inflight.join_next().await.unwrap().unwrap();
                    }
                    let c = c.clone();
                    inflight.spawn(async move {
                        c.dek_create(&DekCreateArgs::default())
                            .await
                            .unwrap_or_else(|e| panic!("client {who} dek {i}: {e}"));
                    });
                }
                while let Some(r) = inflight.join_next().await {
                    r.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
    let c = env.client();
    let a = DekCreateArgs {
        label: Some("the-last-dek".into()),
        ..Default::default()
    };
    let last = c.run(|c| c.dek_create(&a)).unwrap().id;
    // The module's own request (no limit) gets more than one page.
    let first = c.run(|c| c.dek_list_page(DekListArgs::default())).unwrap();
    assert!(
        first.next.is_some(),
        "{} DEKs fit one page",
        first.keys.len()
    );
    // A key the first page does not hold (keys made in the same second sort by id, so the
    // last one made may land on either page: take one from the second page instead).
    let second_args = DekListArgs {
        after: first.next.clone(),
        ..Default::default()
    };
    let second = c.run(|c| c.dek_list_page(second_args.clone())).unwrap();
    let beyond = second.keys.first().expect("a second page").id.clone();
    assert!(!first.keys.iter().any(|k| k.id == beyond));
    let mut tool = host(env, "pkcs11-tool");
    tool.arg("--module").arg(module()).args([
        "--login",
        "--pin",
        env.pin(),
        "-O",
        "--type",
        "secrkey",
    ]);
    let o = run_ok(tool);
    let objects = o.matches("Secret Key Object").count();
    assert_eq!(objects, N + 2, "the first DEK, {N}, and the last");
    assert!(o.contains(&ck_id(&last)) && o.contains("the-last-dek"));
    assert!(
        o.contains(&ck_id(&beyond)),
        "a key of the second page is listed"
    );
    assert!(o.contains(&ck_id(&keys.dek)));
}

/// With a pinentry configured, the module offers a protected authentication path: pkcs11-tool
/// logs in without `--pin` (a NULL-PIN `C_Login`), and the agent asks through its pinentry; a
/// cancelled prompt fails the login.
#[test]
fn pkcs11_tool_logs_in_through_the_agents_prompt() {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let mut env = TestEnv::start(keyward_tests::RootKind::Soft);
    init_for_module(&env);
    let dir = env.dir().to_path_buf();
    let getpin = format!(
        "if [ -e {}/cancel ]; then {}; else {}; fi",
        dir.display(),
        keyward_tests::pinentry::CANCEL,
        keyward_tests::pinentry::answer(env.pin())
    );
    let script = keyward_tests::pinentry::fake(&dir, &getpin, keyward_tests::pinentry::YES);
    keyward_tests::pinentry::configure(&env, &script, 20);
    env.restart();
    assert!(env.client().hello_info().locked);
    let m = module();
    let tool = |args: &[&str]| {
        let mut c = host(&env, "pkcs11-tool");
        c.arg("--module").arg(&m).args(args);
        c
    };
    let l = run_ok(tool(&["-L"]));
    assert!(l.contains("PIN pad present"), "{l}");

    // A cancelled prompt: the login fails, the agent stays locked.
    std::fs::write(dir.join("cancel"), b"").unwrap();
    let out = tool(&["--login", "-O"]).output().unwrap();
    assert!(
        !out.status.success(),
        "logged in although the prompt was cancelled"
    );
    assert!(env.client().hello_info().locked);

    std::fs::remove_file(dir.join("cancel")).unwrap();
    let o = run_ok(tool(&["--login", "-O"]));
    assert!(
        o.contains("Private Key Object") && o.contains("p11-ecdsa"),
        "{o}"
    );
    assert!(
        !env.client().hello_info().locked,
        "the prompt unlocked the agent"
    );
    let log = std::fs::read_to_string(dir.join("pinentry.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with("SETDESC ") && l.contains("unlock.prompt")),
        "{log}"
    );
}

/// The module's connections are the `pkcs11` door (its `hello` names it) with the host program
/// as the client: a rule for that door refuses the module's signatures, while the same key still
/// signs through the CLI on the socket door.
#[test]
fn policy_rules_see_the_module_as_the_pkcs11_door() {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let mut env = TestEnv::start(keyward_tests::RootKind::Soft);
    env.stop();
    std::fs::write(
        env.config_path().with_file_name("policy.toml"),
        "[[rule]]\nname = \"no module signatures\"\ndoor = \"pkcs11\"\nops = [\"sign\", \"sign.digest\"]\neffect = \"deny\"\n",
    )
    .unwrap();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!("policy = \"policy.toml\"\n{cfg}"),
    )
    .unwrap();
    env.start_agent();
    let keys = init_for_module(&env);
    let msg = env.dir().join("msg");
    std::fs::write(&msg, b"refused").unwrap();
    let sig = env.dir().join("sig");
    let mut c = host(&env, "pkcs11-tool");
    c.arg("--module").arg(module()).args([
        "--login",
        "--pin",
        env.pin(),
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--id",
        &ck_id(&keys.p256),
        "-i",
        msg.to_str().unwrap(),
        "-o",
        sig.to_str().unwrap(),
    ]);
    let out = c.output().expect("pkcs11-tool");
    assert!(
        !out.status.success(),
        "the module must not sign: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let log = env.log();
    assert!(
        log.lines().any(|l| l.contains("client connected")
            && l.contains("door=\"pkcs11\"")
            && l.contains("pkcs11-tool")),
        "{log}"
    );
    assert!(
        log.contains("policy rule 1 (\"no module signatures\") denies"),
        "{log}"
    );
    env.cli_ok(&["sign", "--key", &keys.p256], Some(b"m"));
}

/// With an audit log, the module's requests are entries of the `pkcs11` door naming the host
/// program and the key.
#[test]
fn the_modules_signatures_are_audited_as_the_pkcs11_door() {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let mut env = TestEnv::start(keyward_tests::RootKind::Soft);
    env.stop();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(env.config_path(), format!("{cfg}\n[audit]\n")).unwrap();
    env.start_agent();
    let keys = init_for_module(&env);
    let msg = env.dir().join("msg");
    std::fs::write(&msg, b"audited").unwrap();
    let sig = env.dir().join("sig");
    let mut c = host(&env, "pkcs11-tool");
    c.arg("--module").arg(module()).args([
        "--login",
        "--pin",
        env.pin(),
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--id",
        &ck_id(&keys.p256),
        "-i",
        msg.to_str().unwrap(),
        "-o",
        sig.to_str().unwrap(),
    ]);
    run_ok(c);
    let entries = env.cli_json(&["audit", "show"], None);
    let entries = entries.as_array().expect("entries");
    let signed = entries
        .iter()
        .find(|e| e["door"] == "pkcs11" && e["op"].as_str().is_some_and(|o| o.starts_with("sign")))
        .unwrap_or_else(|| panic!("no module signature entry: {entries:#?}"));
    assert_eq!(signed["key"], keys.p256.as_str(), "{signed}");
    assert_eq!(signed["label"], "p11-ecdsa", "{signed}");
    assert_eq!(signed["result"], "ok", "{signed}");
    assert!(
        signed["exe"]
            .as_str()
            .is_some_and(|e| e.contains("pkcs11-tool")),
        "{signed}"
    );
}

/// What one C_Sign costs in agent requests: with an audit log (every request but `hello` is an
/// entry), 20 × (C_SignInit + C_Sign) after login are exactly 20 `sign.digest` requests of the
/// `pkcs11` door and nothing else: no object listing, refresh or lookup per signature.
#[test]
fn one_c_sign_is_one_sign_digest_request() {
    let mut env = TestEnv::start(keyward_tests::RootKind::Soft);
    env.stop();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(env.config_path(), format!("{cfg}\n[audit]\n")).unwrap();
    env.start_agent();
    init_for_module(&env);
    let mut c = host(&env, bin("p11host").to_str().unwrap());
    c.args([&module(), env.pin(), "signs"]);
    let out = run_ok(c);
    assert!(out.contains("ok: 20 signatures"), "{out}");
    let entries = env.cli_json(&["audit", "show"], None);
    let module_ops: Vec<&str> = entries
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["door"] == "pkcs11")
        .filter_map(|e| e["op"].as_str())
        .collect();
    let first = module_ops
        .iter()
        .position(|o| *o == "sign.digest")
        .unwrap_or_else(|| panic!("no sign.digest from the module: {module_ops:?}"));
    let loop_ops = &module_ops[first..];
    assert_eq!(
        loop_ops.len(),
        20,
        "requests of the signing loop: {loop_ops:?}"
    );
    assert!(
        loop_ops.iter().all(|o| *o == "sign.digest"),
        "only sign.digest per C_Sign: {loop_ops:?}"
    );
}
