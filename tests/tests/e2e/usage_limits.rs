//! Per-key usage limits (issue 15 part 3) through all three front doors: the socket (the CLI
//! and hand-made requests), the SSH door (`ssh-add -L`, `ssh-keygen -Y sign`) and the PKCS#11
//! module (`pkcs11-tool`: the attributes shown and the operation refused). Every refusal is
//! typed, the agent keeps serving, and the keystore stays intact.

use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::pkcs11::{ck_id, host, module_path};
use keyward_tests::raw::{map, request, text};
use keyward_tests::ssh::{git_sign_and_verify, git_sign_attempt, init_with_kek, run};
use keyward_tests::{RootKind, TestEnv};

keyward_tests::keyward_e2e_tests!(limits_set_at_creation_and_narrowed_are_enforced_on_the_socket,);

/// `keyward --json ARGS`: the error's code and message, for a command that must fail.
fn err(env: &TestEnv, args: &[&str], stdin: Option<&[u8]>) -> (String, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = env.cli(&all, stdin);
    assert_eq!(
        out.status.code(),
        Some(1),
        "keyward {all:?} should fail; stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = keyward_tests::parse_json(&out.stdout);
    (
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn id_of(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap().trim().to_string()
}

fn limits_set_at_creation_and_narrowed_are_enforced_on_the_socket(env: &mut TestEnv) {
    let keys = env.init_with_keys(true, b"before limits");
    // A DEK made without limits keeps today's behaviour: the default set, shown as such.
    let shown = env.cli_json(&["dek", "show", &keys.dek], None);
    assert!(shown.get("usage").is_none(), "no stored limits: {shown}");
    let shown = String::from_utf8(env.cli_ok(&["dek", "show", &keys.dek], None)).unwrap();
    assert!(
        shown.contains("usage:     encrypt,decrypt,derive,export,share (default)"),
        "{shown}"
    );

    // Decrypt-only: encrypting (and the streaming data keys) is refused, typed, naming both.
    let d = id_of(env.cli_ok(
        &["dek", "create", "--usage", "decrypt", "--label", "ro"],
        None,
    ));
    let v = env.cli_json(&["dek", "show", &d], None);
    assert_eq!(v["usage"], serde_json::json!(["decrypt"]), "{v}");
    let (code, msg) = err(env, &["encrypt", "--dek", &d], Some(b"x"));
    assert_eq!(code, "usage_denied");
    assert!(msg.contains(&d) && msg.contains("`encrypt`"), "{msg}");

    // Encrypt-then-narrow: what it encrypted no longer decrypts once `decrypt` is dropped,
    // and `--exportable` was shorthand for `export`.
    let e = id_of(env.cli_ok(
        &[
            "dek",
            "create",
            "--exportable",
            "--usage",
            "encrypt,decrypt",
            "--not-after",
            "2099-12-31T23:59:59Z",
        ],
        None,
    ));
    let v = env.cli_json(&["dek", "show", &e], None);
    assert_eq!(v["exportable"], true);
    assert_eq!(
        v["usage"],
        serde_json::json!(["encrypt", "decrypt", "export"])
    );
    assert_eq!(v["not_after"], 4_102_444_799u64);
    let ct = env.cli_ok(&["encrypt", "--dek", &e], Some(b"limited"));
    assert_eq!(env.cli_ok(&["decrypt"], Some(&ct)), b"limited");
    let v = env.cli_json(&["dek", "limit", &e, "--usage", "encrypt"], None);
    assert_eq!(v["usage"], serde_json::json!(["encrypt"]));
    assert_eq!(v["exportable"], false, "dropping export clears exportable");
    assert_eq!(err(env, &["decrypt"], Some(&ct)).0, "usage_denied");
    assert_eq!(err(env, &["dek", "export", &e], None).0, "not_exportable");

    // Limits only narrow: widening is typed, export follows the exportable rule.
    assert_eq!(
        err(
            env,
            &["dek", "limit", &e, "--usage", "encrypt,decrypt"],
            None
        )
        .0,
        "limits_widened"
    );
    assert_eq!(
        err(
            env,
            &["dek", "limit", &e, "--usage", "encrypt,export"],
            None
        )
        .0,
        "not_exportable"
    );
    assert_eq!(
        err(
            env,
            &["dek", "limit", &e, "--not-after", "2100-01-01"],
            None
        )
        .0,
        "limits_widened"
    );
    // Malformed and unknown values.
    assert_eq!(
        err(env, &["dek", "create", "--not-after", "next tuesday"], None).0,
        "invalid_args"
    );
    assert_eq!(
        err(
            env,
            &["dek", "limit", &e, "--not-after", "2026-02-30"],
            None
        )
        .0,
        "invalid_args"
    );
    assert_eq!(
        err(env, &["dek", "create", "--usage", "sign"], None).0,
        "invalid_args"
    );
    assert_eq!(
        err(env, &["keypair", "create", "--usage", "export"], None).0,
        "invalid_args"
    );
    let out = env.cli(&["dek", "create", "--usage", "fly"], None);
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown usage");
    let kek_limit = err(
        env,
        &["dek", "limit", &keys.kek, "--usage", "decrypt"],
        None,
    );
    assert_eq!(kek_limit.0, "not_found", "{}", kek_limit.1);
    // The wire: an unknown usage name and a mistyped field are invalid_args, answered by id.
    let mut raw = env.raw();
    raw.hello(1);
    for (i, args) in [
        map(&[
            ("id", text(&e)),
            ("usage", ciborium::Value::Array(vec![text("teleport")])),
        ]),
        map(&[
            ("id", text(&e)),
            ("not_after", ciborium::Value::Integer(5.into())),
        ]),
        map(&[("id", text(&e)), ("colour", text("red"))]),
    ]
    .into_iter()
    .enumerate()
    {
        let r = raw.call(&request(10 + i as u64, "key.limits", args));
        assert_eq!(r.id, Some(10 + i as u64));
        assert_eq!(r.err.map(|b| b.code), Some(ErrorCode::InvalidArgs));
    }

    // Expiry: a date in the past refuses every use, typed, and names the date.
    env.cli_ok(
        &["dek", "limit", &e, "--not-after", "2001-01-01T00:00:00Z"],
        None,
    );
    let (code, msg) = err(env, &["encrypt", "--dek", &e], Some(b"x"));
    assert_eq!(code, "key_expired");
    assert!(msg.contains("2001-01-01T00:00:00Z"), "{msg}");

    // Keypairs: a sign-only key signs and does not derive; a derive-only one does not sign.
    let s = id_of(env.cli_ok(&["keypair", "create", "--usage", "sign"], None));
    env.cli_ok(&["sign", "--key", &s], Some(b"m"));
    let n = id_of(env.cli_ok(&["keypair", "create", "--usage", "derive,share"], None));
    assert_eq!(
        err(env, &["sign", "--key", &n], Some(b"m")).0,
        "usage_denied"
    );
    let shown = String::from_utf8(env.cli_ok(&["keypair", "show", &n], None)).unwrap();
    assert!(shown.contains("usage:     derive,share"), "{shown}");

    // Refusals left everything else as it was.
    env.assert_intact(&keys);
    // Limits survive a restart (stored, MAC-checked).
    env.restart();
    env.assert_intact(&keys);
    assert_eq!(
        err(env, &["encrypt", "--dek", &d], Some(b"x")).0,
        "usage_denied"
    );
}

/// A soft-root agent with a fake pinentry whose CONFIRM answers from the file `answer`.
fn env_with_pinentry(dir: &std::path::Path) -> TestEnv {
    let pinentry = keyward_tests::pinentry::fake(
        dir,
        "echo OK",
        &keyward_tests::pinentry::confirm_from_file(),
    );
    let mut env = TestEnv::start(RootKind::Soft);
    env.stop();
    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!(
            "{cfg}\n[prompt]\npinentry = \"{}\"\ntimeout_s = 20\n",
            pinentry.display()
        ),
    )
    .unwrap();
    env.start_agent();
    env
}

#[test]
fn limits_confirm_asks_pinentry_and_refuses_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_pinentry(dir.path());
    let keys = env.init_with_keys(false, b"confirm");
    let d = id_of(env.cli_ok(&["dek", "create", "--confirm"], None));
    std::fs::write(dir.path().join("answer"), "yes").unwrap();
    let ct = env.cli_ok(&["encrypt", "--dek", &d], Some(b"asked"));
    let log = keyward_tests::pinentry::log(dir.path());
    let desc = log
        .lines()
        .find(|l| l.starts_with("SETDESC ") && l.contains(&d))
        .unwrap_or_else(|| panic!("no SETDESC naming the key in {log}"));
    assert!(
        desc.contains("encrypt") && desc.contains("keyward"),
        "{desc}"
    );
    std::fs::write(dir.path().join("answer"), "no").unwrap();
    assert_eq!(err(&env, &["decrypt"], Some(&ct)).0, "usage_denied");
    // Narrowing an existing key to confirm: the same.
    env.cli_ok(&["dek", "limit", &keys.dek, "--confirm"], None);
    assert_eq!(
        err(&env, &["decrypt"], Some(keys.ciphertext.as_bytes())).0,
        "usage_denied"
    );
    // Dropping confirmation is widening (the CLI only adds it; the wire can ask).
    let mut raw = env.raw();
    raw.hello(1);
    let r = raw.call(&request(
        2,
        "key.limits",
        map(&[("id", text(&d)), ("confirm", ciborium::Value::Bool(false))]),
    ));
    assert_eq!(r.err.map(|b| b.code), Some(ErrorCode::LimitsWidened));
    std::fs::write(dir.path().join("answer"), "yes").unwrap();
    assert_eq!(env.cli_ok(&["decrypt"], Some(&ct)), b"asked");

    // Without a pinentry nobody can be asked: refused.
    let plain = TestEnv::start(RootKind::Soft);
    plain.init_with_keys(false, b"x");
    let d = id_of(plain.cli_ok(&["dek", "create", "--confirm"], None));
    let (code, msg) = err(&plain, &["encrypt", "--dek", &d], Some(b"x"));
    assert_eq!(code, "usage_denied");
    assert!(msg.contains("no pinentry"), "{msg}");
}

/// The SSH door: a keypair without `sign` is not offered (and `ssh-keygen -Y sign` fails), one
/// with `--confirm` asks through the door's prompt, and an expired one is refused.
#[test]
fn limits_reach_the_ssh_door() {
    keyward_tests::ssh::ensure_openssh();
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_pinentry(dir.path());
    init_with_kek(&env);
    let make = |label: &str, extra: &[&str]| {
        let mut args = vec!["keypair", "create", "--ssh", "--label", label];
        args.extend_from_slice(extra);
        let id = id_of(env.cli_ok(&args, None));
        env.cli_json(&["keypair", "show", &id], None)
    };
    let signer = make("ssh-signer", &["--usage", "sign"]);
    let nosign = make("ssh-nosign", &["--usage", "derive"]);
    let asks = make("ssh-asks", &["--confirm"]);
    assert_eq!(
        asks["ssh_mode"], "confirm",
        "limits' confirm is the door's: {asks}"
    );
    let listed = String::from_utf8(run(&env, "ssh-add", &["-L"], None).stdout).unwrap();
    assert!(
        listed.contains("ssh-signer") && listed.contains("ssh-asks"),
        "{listed}"
    );
    assert!(
        !listed.contains("ssh-nosign"),
        "a key that may not sign is not offered:\n{listed}"
    );
    git_sign_and_verify(&env, signer["ssh"].as_str().unwrap(), "signer");
    let out = git_sign_attempt(&env, nosign["ssh"].as_str().unwrap(), "nosign");
    assert!(
        !out.status.success(),
        "a key without `sign` must not sign over SSH"
    );

    // Confirm: the door asks (pinentry CONFIRM naming the key), yes signs, no refuses.
    std::fs::write(dir.path().join("answer"), "yes").unwrap();
    git_sign_and_verify(&env, asks["ssh"].as_str().unwrap(), "asks-yes");
    let log = keyward_tests::pinentry::log(dir.path());
    assert!(log.contains("CONFIRM") && log.contains("ssh-asks"), "{log}");
    std::fs::write(dir.path().join("answer"), "no").unwrap();
    let out = git_sign_attempt(&env, asks["ssh"].as_str().unwrap(), "asks-no");
    assert!(!out.status.success(), "refused at the prompt");

    // Narrowed to an expired date while offered (and cached): refused from then on.
    let id = signer["id"].as_str().unwrap();
    env.cli_ok(&["keypair", "limit", id, "--not-after", "2001-01-01"], None);
    let out = git_sign_attempt(&env, signer["ssh"].as_str().unwrap(), "expired");
    assert!(!out.status.success(), "an expired key must not sign");
    let listed = String::from_utf8(run(&env, "ssh-add", &["-L"], None).stdout).unwrap();
    assert!(!listed.contains("ssh-signer"), "{listed}");
    // The socket still serves, and says why.
    let (code, _) = err(&env, &["sign", "--key", id], Some(b"m"));
    assert_eq!(code, "key_expired");

    // A date that passes while the key is offered (no write, so the door's index still lists
    // it): the door's signature path asks the hierarchy, which refuses.
    let soon = keyward_tests::keyward_proto::rfc3339::format(now() + 3);
    let brief = make("ssh-brief", &["--not-after", &soon]);
    git_sign_and_verify(&env, brief["ssh"].as_str().unwrap(), "brief-ok");
    std::thread::sleep(std::time::Duration::from_secs(5));
    let out = git_sign_attempt(&env, brief["ssh"].as_str().unwrap(), "brief-late");
    assert!(!out.status.success(), "the key expired while offered");
    // Refused for its date: either the door still offered it and the hierarchy refused the
    // signature (the agent's log says "expired at"), or the door's index was refreshed
    // meanwhile (by any write to the keystore) and the
    // expired key is no longer offered at all.
    let listed = String::from_utf8(run(&env, "ssh-add", &["-L"], None).stdout).unwrap();
    assert!(
        env.log().contains("expired at") || !listed.contains("ssh-brief"),
        "agent log:\n{}\nssh-add -L:\n{listed}",
        env.log()
    );
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The PKCS#11 module shows the limits as attributes and the operations are refused.
#[test]
fn limits_reach_the_pkcs11_module() {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let m = module_path().display().to_string();
    let mut env = TestEnv::start(RootKind::Soft);
    env.init();
    env.cli_ok(&["kek", "create"], None);
    let verify_only = id_of(env.cli_ok(
        &[
            "keypair",
            "create",
            "--label",
            "p11-nosign",
            "--usage",
            "derive",
        ],
        None,
    ));
    let signer = id_of(env.cli_ok(
        &[
            "keypair", "create", "--label", "p11-sign", "--usage", "sign",
        ],
        None,
    ));
    id_of(env.cli_ok(
        &[
            "dek",
            "create",
            "--label",
            "p11-ro",
            "--usage",
            "decrypt",
            "--not-after",
            "2031-05-06T07:08:09Z",
        ],
        None,
    ));
    let tool = |args: &[&str]| {
        let mut c = host(&env, "pkcs11-tool");
        c.arg("--module")
            .arg(&m)
            .args(["--login", "--pin", env.pin()])
            .args(args);
        c.output().expect("pkcs11-tool")
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let objects = text(&tool(&["-O"]));
    // pkcs11-tool prints one block per object: a header line, then indented attributes.
    let block = |label: &str, class: &str| -> String {
        let mut blocks: Vec<String> = Vec::new();
        for line in objects.lines() {
            if !line.starts_with(char::is_whitespace) || blocks.is_empty() {
                blocks.push(String::new());
            }
            let b = blocks.last_mut().unwrap();
            b.push_str(line);
            b.push('\n');
        }
        blocks
            .into_iter()
            .find(|b| {
                b.starts_with(class)
                    && b.lines().any(|l| {
                        l.trim_start().starts_with("label:")
                            && l.trim_end().ends_with(&format!(" {label}"))
                    })
            })
            .unwrap_or_else(|| panic!("no {class} object {label} in:\n{objects}"))
    };
    let usage_line = |b: &str| {
        b.lines()
            .find(|l| l.trim_start().starts_with("Usage:"))
            .unwrap_or_else(|| panic!("no usage line in {b}"))
            .to_string()
    };
    let nosign = block("p11-nosign", "Private Key");
    assert!(!usage_line(&nosign).contains("sign"), "{nosign}");
    assert!(usage_line(&nosign).contains("derive"), "{nosign}");
    let sign = block("p11-sign", "Private Key");
    assert!(usage_line(&sign).contains("sign"), "{sign}");
    assert!(!usage_line(&sign).contains("derive"), "{sign}");
    let ro = block("p11-ro", "Secret Key");
    assert!(usage_line(&ro).contains("decrypt"), "{ro}");
    assert!(!usage_line(&ro).contains("encrypt"), "{ro}");

    // Signing with the key that may not sign is refused; the other signs.
    let msg = env.dir().join("msg");
    std::fs::write(&msg, b"through the module").unwrap();
    let sig = env.dir().join("sig");
    let sign_with = |id: &str| {
        tool(&[
            "--sign",
            "-m",
            "ECDSA-SHA256",
            "--id",
            &ck_id(id),
            "-i",
            msg.to_str().unwrap(),
            "-o",
            sig.to_str().unwrap(),
        ])
    };
    let ok = sign_with(&signer);
    assert!(ok.status.success(), "{}", text(&ok));
    let refused = sign_with(&verify_only);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("CKR_KEY_FUNCTION_NOT_PERMITTED"),
        "{}",
        text(&refused)
    );
    // A key whose date has passed shows CKA_SIGN (the module does not watch the clock): the
    // agent refuses it through the module's sign.digest, and the module answers
    // CKR_KEY_FUNCTION_NOT_PERMITTED.
    let old = id_of(env.cli_ok(
        &[
            "keypair",
            "create",
            "--label",
            "p11-old",
            "--not-after",
            "2001-01-01",
        ],
        None,
    ));
    let late = sign_with(&old);
    assert!(!late.status.success(), "{}", text(&late));
    assert!(
        text(&late).contains("CKR_KEY_FUNCTION_NOT_PERMITTED"),
        "{}",
        text(&late)
    );
    // The agent itself refuses too, whatever the module shows (a host that ignores
    // CKA_SIGN still cannot sign): the typed error through the socket.
    let (code, _) = err(&env, &["sign", "--key", &verify_only], Some(b"m"));
    assert_eq!(code, "usage_denied");
    assert!(env.is_running());
}

/// A keypair with `--confirm` used through the PKCS#11 module: the agent asks its pinentry
/// (naming the key and `sign`), yes signs, no is CKR_KEY_FUNCTION_NOT_PERMITTED.
#[test]
fn limits_confirm_through_the_pkcs11_module() {
    keyward_tests::pkcs11::ensure_pkcs11_tools();
    let m = module_path().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_pinentry(dir.path());
    env.init();
    env.cli_ok(&["kek", "create"], None);
    let asks = id_of(env.cli_ok(
        &["keypair", "create", "--label", "p11-asks", "--confirm"],
        None,
    ));
    let msg = env.dir().join("msg");
    std::fs::write(&msg, b"confirm me").unwrap();
    let sig = env.dir().join("sig");
    let sign = || {
        let mut c = host(&env, "pkcs11-tool");
        c.arg("--module")
            .arg(&m)
            .args([
                "--login",
                "--pin",
                env.pin(),
                "--sign",
                "-m",
                "ECDSA-SHA256",
            ])
            .args(["--id", &ck_id(&asks), "-i", msg.to_str().unwrap()])
            .args(["-o", sig.to_str().unwrap()]);
        c.output().expect("pkcs11-tool")
    };
    std::fs::write(dir.path().join("answer"), "yes").unwrap();
    let out = sign();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = keyward_tests::pinentry::log(dir.path());
    let desc = log
        .lines()
        .find(|l| l.starts_with("SETDESC ") && l.contains(&asks))
        .unwrap_or_else(|| panic!("no SETDESC naming the key in {log}"));
    assert!(
        desc.contains("sign") && desc.contains("pkcs11-tool"),
        "{desc}"
    );
    std::fs::write(dir.path().join("answer"), "no").unwrap();
    let out = sign();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("CKR_KEY_FUNCTION_NOT_PERMITTED"), "{text}");
}
