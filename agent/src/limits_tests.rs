//! Usage limits in the hierarchy, on a [`MemoryRoot`]: defaults, refusals, expiry, narrowing
//! only, confirmation. `cargo test -p keyward-agent --lib hierarchy_limits` runs these.
// Compiled only under #[cfg(test)]: `mod tests` at the end of limits.rs includes this file.

use super::*;
use crate::config::UnlockPolicy;
use crate::error::Missing;
use crate::keystore::{Keystore, Purpose};
use crate::root::memory::MemoryRoot;
use keyward_proto::secret::Pin;

struct Fixture {
    h: Hierarchy,
    dir: tempfile::TempDir,
}

fn ready() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).expect("keystore"));
    let h = Hierarchy::new(ks, Box::new(MemoryRoot::new()), UnlockPolicy::default());
    h.init(&Pin::new("right-pin-1234")).expect("init");
    h.kek_create(Some("k".into())).expect("kek");
    Fixture { h, dir }
}

fn req(usage: Option<&[Usage]>, confirm: bool, not_after: Option<u64>) -> LimitsRequest {
    LimitsRequest {
        usage: usage.map(|u| u.to_vec()),
        confirm: confirm.then_some(true),
        not_after,
    }
}

fn dek(f: &Fixture, exportable: bool, limits: &LimitsRequest) -> String {
    f.h.dek_create_limited(None, Purpose::Personal, exportable, None, limits)
        .expect("dek")
        .to_string()
}

fn keypair(f: &Fixture, limits: &LimitsRequest) -> String {
    f.h.keypair_create_limited(None, Some("kp".into()), false, None, limits)
        .expect("keypair")
        .to_string()
}

fn record(f: &Fixture, id: &str) -> KeyRecord {
    f.h.ks
        .get(&Uuid::parse_str(id).unwrap())
        .expect("MAC-checked read")
        .expect("exists")
}

fn denied(r: Result<impl std::fmt::Debug, AgentError>, want: Usage) {
    match r {
        Err(AgentError::UsageDenied {
            usage,
            why: Refusal::NotAllowed,
            ..
        }) => assert_eq!(usage, want),
        other => panic!("expected usage_denied for {want}, got {other:?}"),
    }
}

fn peer_point() -> Vec<u8> {
    keyward_identity::LocalKey::generate(&mut rand_core::OsRng)
        .public_key()
        .to_sec1_uncompressed()
        .to_vec()
}

#[test]
fn hierarchy_limits_keys_without_limits_keep_todays_behaviour() {
    let f = ready();
    let d = dek(&f, false, &LimitsRequest::default());
    let r = record(&f, &d);
    assert_eq!((r.usage, r.not_after), (None, None), "nothing stored");
    let l = Limits::of(&r);
    assert_eq!(
        l.usage,
        UsageSet::of(&[Usage::Encrypt, Usage::Decrypt, Usage::Derive, Usage::Share])
    );
    assert!(!l.confirm);
    let ct = f.h.encrypt(&d, b"hi").unwrap();
    assert_eq!(&f.h.decrypt(&ct, None).unwrap()[..], b"hi");
    f.h.datakey_create(&d).unwrap();
    assert!(matches!(
        f.h.dek_export(&d),
        Err(AgentError::NotExportable { .. })
    ));
    let e = dek(&f, true, &LimitsRequest::default());
    assert!(Limits::of(&record(&f, &e)).usage.contains(Usage::Export));
    f.h.dek_export(&e).unwrap();
    let k = keypair(&f, &LimitsRequest::default());
    assert_eq!(
        Limits::of(&record(&f, &k)).usage,
        UsageSet::of(&[Usage::Sign, Usage::Decrypt, Usage::Derive, Usage::Share])
    );
    f.h.sign(&k, b"m", false).unwrap();
    f.h.sign_digest(&k, &[7; 32]).unwrap();
    f.h.keypair_ecdh(&k, &peer_point()).unwrap();
}

#[test]
fn hierarchy_limits_refuse_each_use_outside_the_set() {
    let f = ready();
    // A DEK that only decrypts: every way of making ciphertext is refused.
    let d = dek(&f, false, &req(Some(&[Usage::Decrypt]), false, None));
    denied(f.h.encrypt(&d, b"x"), Usage::Encrypt);
    denied(f.h.datakey_create(&d).map(|_| ()), Usage::Encrypt);
    denied(f.h.gcm_seal(&d, &[0; 12], b"", 16, b"x"), Usage::Encrypt);
    // A DEK that only encrypts: its own ciphertext does not decrypt.
    let e = dek(&f, false, &req(Some(&[Usage::Encrypt]), false, None));
    let ct = f.h.encrypt(&e, b"secret").unwrap();
    denied(f.h.decrypt(&ct, None), Usage::Decrypt);
    let dk = f.h.datakey_create(&e).unwrap();
    denied(
        f.h.datakey_open(&e, dk.version, &dk.wrapped),
        Usage::Decrypt,
    );
    let sealed = f.h.gcm_seal(&e, &[1; 12], b"a", 16, b"pt").unwrap();
    denied(
        f.h.gcm_open(&e, &[1; 12], b"a", 16, &sealed),
        Usage::Decrypt,
    );
    denied(f.h.rewrap(&ct, None), Usage::Decrypt);
    // The message names the key and the usage.
    let msg = f.h.decrypt(&ct, None).unwrap_err().to_string();
    assert!(msg.contains(&e) && msg.contains("`decrypt`"), "{msg}");
    assert_eq!(
        f.h.decrypt(&ct, None).unwrap_err().code(),
        keyward_proto::ErrorCode::UsageDenied
    );
    // Keypairs: derive-only signs nothing; sign-only derives nothing.
    let k = keypair(&f, &req(Some(&[Usage::Derive]), false, None));
    denied(f.h.sign(&k, b"m", false), Usage::Sign);
    denied(f.h.sign_digest(&k, &[7; 32]), Usage::Sign);
    denied(
        f.h.seal(
            &keyward_identity::LocalKey::generate(&mut rand_core::OsRng)
                .public_key()
                .to_did_key(),
            &k,
            b"m",
        ),
        Usage::Sign,
    );
    f.h.keypair_ecdh(&k, &peer_point()).unwrap();
    let s = keypair(&f, &req(Some(&[Usage::Sign]), false, None));
    f.h.sign(&s, b"m", false).unwrap();
    denied(f.h.keypair_ecdh(&s, &peer_point()), Usage::Derive);
    // The SSH door's check: no prompt, the same refusal.
    denied(f.h.check_limits(&record(&f, &k), Usage::Sign), Usage::Sign);
}

#[test]
fn hierarchy_limits_not_after_refuses_every_use_once_passed() {
    let f = ready();
    let d = dek(&f, false, &LimitsRequest::default());
    let ct = f.h.encrypt(&d, b"x").unwrap();
    let past = crate::keystore::now() - 1;
    f.h.key_limits(&d, &req(None, false, Some(past))).unwrap();
    for r in [
        f.h.encrypt(&d, b"x").map(|_| ()),
        f.h.decrypt(&ct, None).map(|_| ()),
        f.h.datakey_create(&d).map(|_| ()),
    ] {
        match r {
            Err(e @ AgentError::KeyExpired { not_after, .. }) => {
                assert_eq!(not_after, past);
                assert_eq!(e.code(), keyward_proto::ErrorCode::KeyExpired);
            }
            other => panic!("expected key_expired, got {other:?}"),
        }
    }
    let k = keypair(&f, &req(None, false, Some(past)));
    assert!(matches!(
        f.h.sign(&k, b"m", false),
        Err(AgentError::KeyExpired { .. })
    ));
    // A date to come: usable.
    let later = dek(
        &f,
        false,
        &req(None, false, Some(crate::keystore::now() + 3600)),
    );
    f.h.encrypt(&later, b"x").unwrap();
}

#[test]
fn hierarchy_limits_only_narrow() {
    let f = ready();
    let d = dek(
        &f,
        true,
        &req(
            Some(&[Usage::Encrypt, Usage::Decrypt]),
            false,
            Some(2_000_000_000),
        ),
    );
    let r = record(&f, &d);
    assert!(r.exportable, "--exportable adds export");
    assert!(Limits::of(&r).usage.contains(Usage::Export));
    let widened = |r: Result<KeyRecord, AgentError>, what: Widening| match r {
        Err(e @ AgentError::LimitsWidened { what: w, .. }) => {
            assert_eq!(w, what);
            assert_eq!(e.code(), keyward_proto::ErrorCode::LimitsWidened);
        }
        other => panic!("expected limits_widened {what:?}, got {other:?}"),
    };
    widened(
        f.h.key_limits(&d, &req(Some(&[Usage::Encrypt, Usage::Share]), false, None)),
        Widening::Usage(Usage::Share),
    );
    widened(
        f.h.key_limits(&d, &req(None, false, Some(2_000_000_001))),
        Widening::NotAfter,
    );
    // Narrowing: drop export (and so exportable) and encrypt; an earlier date; confirm.
    let n =
        f.h.key_limits(&d, &req(Some(&[Usage::Decrypt]), true, Some(1_999_999_999)))
            .unwrap();
    assert!(!n.exportable);
    let l = Limits::of(&n);
    assert_eq!(l.usage, UsageSet::of(&[Usage::Decrypt]));
    assert!(l.confirm);
    assert_eq!(l.not_after, Some(1_999_999_999));
    assert!(matches!(
        f.h.dek_export(&d),
        Err(AgentError::NotExportable { .. })
    ));
    // Export back: the exportable rule (fixed at creation).
    assert!(matches!(
        f.h.key_limits(
            &d,
            &req(Some(&[Usage::Decrypt, Usage::Export]), false, None)
        ),
        Err(AgentError::NotExportable { .. })
    ));
    widened(
        f.h.key_limits(
            &d,
            &LimitsRequest {
                confirm: Some(false),
                ..Default::default()
            },
        ),
        Widening::Confirm,
    );
    // Refusals changed nothing, and the row still verifies under its MAC.
    assert_eq!(record(&f, &d), n);
    // A usage the kind cannot have; ids that are not DEKs or keypairs.
    assert!(matches!(
        f.h.key_limits(&d, &req(Some(&[Usage::Sign]), false, None)),
        Err(AgentError::InvalidArgs { arg: "usage", .. })
    ));
    assert!(matches!(
        f.h.dek_create_limited(
            None,
            Purpose::Personal,
            false,
            None,
            &req(Some(&[Usage::Sign]), false, None)
        ),
        Err(AgentError::InvalidArgs { arg: "usage", .. })
    ));
    assert!(matches!(
        f.h.keypair_create_limited(
            None,
            None,
            false,
            None,
            &req(Some(&[Usage::Export]), false, None)
        ),
        Err(AgentError::InvalidArgs { arg: "usage", .. })
    ));
    let kek = f.h.kek_list().unwrap()[0].id.to_string();
    for id in [kek, Uuid::new_v4().to_string()] {
        assert!(matches!(
            f.h.key_limits(&id, &req(Some(&[Usage::Decrypt]), false, None)),
            Err(AgentError::NotFound(Missing::DekOrKeypair { .. }))
        ));
    }
    assert!(matches!(
        f.h.key_limits("not-a-uuid", &LimitsRequest::default()),
        Err(AgentError::InvalidArgs { arg: "id", .. })
    ));
    // Locked: refused before anything is read or written.
    f.h.lock().unwrap();
    assert!(matches!(
        f.h.key_limits(&d, &req(Some(&[]), false, None)),
        Err(AgentError::Locked { .. })
    ));
}

/// A fake pinentry answering CONFIRM with `confirm` (shell lines).
fn prompter(dir: &std::path::Path, confirm: &str) -> Arc<crate::prompt::Prompter> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-pinentry");
    let script = format!(
        "#!/bin/bash\necho 'OK hi'\nwhile IFS= read -r line; do\n  printf '%s\\n' \"$line\" >> \"$(dirname \"$0\")/log\"\n  case \"$line\" in\n    CONFIRM*) {confirm} ;;\n    BYE*) echo OK; exit 0 ;;\n    *) echo OK ;;\n  esac\ndone\n"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    Arc::new(
        crate::prompt::Prompter::new(&crate::prompt::PromptConfig {
            pinentry: Some(path),
            timeout_s: Some(10),
            tty: None,
        })
        .unwrap(),
    )
}

#[test]
fn hierarchy_limits_confirm_asks_and_refuses_when_nobody_answers() {
    let f = ready();
    let d = dek(&f, false, &req(None, true, None));
    // No pinentry configured: refused, typed.
    match f.h.encrypt(&d, b"x") {
        Err(AgentError::UsageDenied {
            usage: Usage::Encrypt,
            why: Refusal::NotConfirmed(_),
            ..
        }) => {}
        other => panic!("expected usage_denied (not confirmed), got {other:?}"),
    }
    // "No" (cancel) from the pinentry: refused.
    let no = tempfile::tempdir().unwrap();
    let h2 = {
        let f2 = ready();
        f2.h.set_prompter(prompter(
            no.path(),
            "echo 'ERR 83886179 Operation cancelled <Pinentry>'",
        ));
        let d2 = dek(&f2, false, &req(None, true, None));
        let r = f2.h.encrypt(&d2, b"x");
        assert!(
            matches!(
                r,
                Err(AgentError::UsageDenied {
                    why: Refusal::NotConfirmed(_) | Refusal::Refused,
                    ..
                })
            ),
            "{r:?}"
        );
        f2
    };
    drop(h2);
    // "Yes": allowed, and the question names the key and the usage.
    let yes = tempfile::tempdir().unwrap();
    f.h.set_prompter(prompter(yes.path(), "echo OK"));
    f.h.encrypt(&d, b"x").unwrap();
    let log = std::fs::read_to_string(yes.path().join("log")).unwrap();
    assert!(
        log.contains("CONFIRM") && log.contains(&d) && log.contains("encrypt"),
        "{log}"
    );
    // A key without confirm never prompts.
    let plain = dek(&f, false, &LimitsRequest::default());
    f.h.encrypt(&plain, b"x").unwrap();
    let again = std::fs::read_to_string(yes.path().join("log")).unwrap();
    assert_eq!(again.matches("CONFIRM").count(), 1);
    let _ = &f.dir;
}

#[test]
fn hierarchy_limits_defaults_agree_with_the_wire_table() {
    // `KeyInfo::usage_or_default` (clients, the PKCS#11 module) and `default_usage` (the agent)
    // must describe keys without stored limits the same way.
    for (kind, exportable) in [
        (KeyKind::Dek, false),
        (KeyKind::Dek, true),
        (KeyKind::Keypair, false),
    ] {
        let mut r = KeyRecord::new(kind, "aes-kwp");
        r.exportable = exportable;
        let info = crate::service::key_info(&r);
        assert_eq!(info.usage, None);
        let mut wire: Vec<&str> = info.usage_or_default().iter().map(|u| u.as_str()).collect();
        let mut ours: Vec<&str> = default_usage(kind, exportable)
            .iter()
            .map(Usage::as_str)
            .collect();
        wire.sort_unstable();
        ours.sort_unstable();
        assert_eq!(wire, ours, "{kind:?} {exportable}");
    }
}
