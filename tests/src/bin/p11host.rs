//! p11host: a PKCS#11 host written for the module's tests (Rust over `cryptoki`). It loads the
//! module like any application and checks what applications rely on: initialization rules,
//! fork, threads, the agent restarting, buffer and attribute conventions, AES-GCM against the
//! agent's raw-GCM operation both ways, a locked agent, and a wrong PIN while unlocked.
//!
//! `p11host MODULE PIN SCENARIO`; the agent socket is `KEYWARD_SOCK`. Prints one `ok: ...` line
//! per check and exits 0, or prints the failed check and exits 1. Scenarios: `all`, `restart`
//! (signs, prints `ready`, waits for a line on stdin while the test restarts the agent, then
//! expects a clean error and recovers), `noagent` (no agent: zero slots, quickly), `signs` (20
//! signatures after login, for counting what one C_Sign costs in agent requests).

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::AuthPin;
use keyward_client::BlockingClient;
use keyward_proto::ops::GcmArgs;
use keyward_proto::secret::SecretBytes;
use std::time::{Duration, Instant};

type Res = Result<(), String>;

fn check(cond: bool, what: &str) -> Res {
    if cond {
        println!("ok: {what}");
        Ok(())
    } else {
        Err(format!("FAILED: {what}"))
    }
}

fn rv<T: std::fmt::Debug>(r: Result<T, Error>) -> Option<RvError> {
    match r {
        Err(Error::Pkcs11(e, _)) => Some(e),
        _ => None,
    }
}

fn e(what: &str) -> impl FnOnce(Error) -> String + '_ {
    move |err| format!("FAILED: {what}: {err}")
}

fn init(p: &Pkcs11) -> Result<(), Error> {
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
}

fn find(s: &Session, class: ObjectClass, kt: KeyType) -> Result<Vec<ObjectHandle>, String> {
    s.find_objects(&[Attribute::Class(class), Attribute::KeyType(kt)])
        .map_err(e("find objects"))
}

fn ec_point(s: &Session, h: ObjectHandle) -> Result<Vec<u8>, String> {
    match s
        .get_attributes(h, &[AttributeType::EcPoint])
        .map_err(e("EC_POINT"))?
        .pop()
    {
        Some(Attribute::EcPoint(p)) if p.len() == 67 => Ok(p[2..].to_vec()),
        other => Err(format!("FAILED: EC_POINT: {other:?}")),
    }
}

fn id_of(s: &Session, h: ObjectHandle) -> Result<Vec<u8>, String> {
    match s
        .get_attributes(h, &[AttributeType::Id])
        .map_err(e("CKA_ID"))?
        .pop()
    {
        Some(Attribute::Id(id)) => Ok(id),
        other => Err(format!("FAILED: CKA_ID: {other:?}")),
    }
}

fn verify_p256(point: &[u8], digest: &[u8], sig: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let Ok(vk) = p256::ecdsa::VerifyingKey::from_sec1_bytes(point) else {
        return false;
    };
    let Ok(sig) = p256::ecdsa::Signature::from_slice(sig) else {
        return false;
    };
    vk.verify_prehash(digest, &sig).is_ok()
}

fn sha256(d: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(d).to_vec()
}

/// The P-256 private key, its public point, and an ECDSA check over a digest.
fn sign_once(s: &Session, key: ObjectHandle, point: &[u8], msg: &[u8]) -> Res {
    let d = sha256(msg);
    let sig = s
        .sign(&Mechanism::Ecdsa, key, &d)
        .map_err(e("C_Sign CKM_ECDSA"))?;
    if verify_p256(point, &d, &sig) {
        Ok(())
    } else {
        Err("FAILED: ECDSA signature does not verify".into())
    }
}

struct Keys {
    private: ObjectHandle,
    point: Vec<u8>,
}

fn p256_keys(s: &Session) -> Result<Keys, String> {
    let private = *find(s, ObjectClass::PRIVATE_KEY, KeyType::EC)?
        .first()
        .ok_or("FAILED: no P-256 private key")?;
    let id = id_of(s, private)?;
    let public = s
        .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(id)])
        .map_err(e("public key by CKA_ID"))?;
    let public = *public
        .first()
        .ok_or("FAILED: no public key with the private key's CKA_ID")?;
    Ok(Keys {
        private,
        point: ec_point(s, public)?,
    })
}

fn all(module: &str, pin: &str) -> Res {
    let p = Pkcs11::new(module).map_err(e("load module"))?;
    init(&p).map_err(e("C_Initialize"))?;
    check(
        rv(init(&p)) == Some(RvError::CryptokiAlreadyInitialized),
        "second C_Initialize: CKR_CRYPTOKI_ALREADY_INITIALIZED",
    )?;
    let slots = p.get_slots_with_token().map_err(e("slots"))?;
    check(slots.len() == 1, "one slot")?;
    let slot = slots[0];
    let ti = p.get_token_info(slot).map_err(e("token info"))?;
    check(
        ti.label() == "Keyward" && ti.login_required() && !ti.serial_number().is_empty(),
        "token Keyward, login required, serial",
    )?;
    let pin_ok = AuthPin::from(pin.to_string());

    // Public objects without login; private ones only after it.
    let s = p.open_ro_session(slot).map_err(e("open RO session"))?;
    check(
        !find(&s, ObjectClass::PUBLIC_KEY, KeyType::EC)?.is_empty(),
        "public keys visible without login",
    )?;
    check(
        find(&s, ObjectClass::PRIVATE_KEY, KeyType::EC)?.is_empty(),
        "private keys hidden before login",
    )?;
    check(
        rv(s.login(UserType::So, Some(&pin_ok))) == Some(RvError::UserTypeInvalid),
        "SO login refused: CKR_USER_TYPE_INVALID",
    )?;
    // This agent has no PIN prompt: no protected authentication path, and a NULL PIN is refused.
    let token = p.get_token_info(slot).map_err(e("token info"))?;
    check(
        !token.protected_authentication_path(),
        "no CKF_PROTECTED_AUTHENTICATION_PATH without a prompt",
    )?;
    check(
        rv(s.login(UserType::User, None)) == Some(RvError::ArgumentsBad),
        "NULL PIN without a prompt: CKR_ARGUMENTS_BAD",
    )?;
    check(
        rv(s.login(
            UserType::User,
            Some(&AuthPin::from("wrong-pin".to_string())),
        )) == Some(RvError::PinIncorrect),
        "wrong PIN: CKR_PIN_INCORRECT",
    )?;
    s.login(UserType::User, Some(&pin_ok))
        .map_err(e("C_Login"))?;
    let info = s.get_session_info().map_err(e("session info"))?;
    check(
        info.session_state() == SessionState::RoUser,
        "RO user session after login",
    )?;
    let keys = p256_keys(&s)?;

    // Signatures: CKM_ECDSA over a digest, CKM_ECDSA_SHA256 single and multi-part.
    sign_once(&s, keys.private, &keys.point, b"one")?;
    println!("ok: CKM_ECDSA verifies");
    let msg = b"multi-part message".repeat(10);
    let sig = s
        .sign(&Mechanism::EcdsaSha256, keys.private, &msg)
        .map_err(e("CKM_ECDSA_SHA256"))?;
    check(
        verify_p256(&keys.point, &sha256(&msg), &sig),
        "CKM_ECDSA_SHA256 single-part verifies",
    )?;
    s.sign_init(&Mechanism::EcdsaSha256, keys.private)
        .map_err(e("SignInit"))?;
    for chunk in msg.chunks(7) {
        s.sign_update(chunk).map_err(e("SignUpdate"))?;
    }
    let sig = s.sign_final().map_err(e("SignFinal"))?;
    check(
        verify_p256(&keys.point, &sha256(&msg), &sig),
        "CKM_ECDSA_SHA256 multi-part verifies",
    )?;
    let public = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Id(id_of(&s, keys.private)?),
        ])
        .map_err(e("find"))?[0];
    check(
        s.verify(&Mechanism::EcdsaSha256, public, &msg, &sig)
            .is_ok(),
        "C_Verify in the module",
    )?;
    check(
        rv(s.verify(&Mechanism::EcdsaSha256, public, b"other", &sig))
            == Some(RvError::SignatureInvalid),
        "C_Verify refuses a wrong message",
    )?;
    check(
        rv(s.sign(&Mechanism::Sha1RsaPkcs, keys.private, b"x"))
            .is_some_and(|r| r == RvError::MechanismInvalid),
        "unknown mechanism: CKR_MECHANISM_INVALID",
    )?;

    // EdDSA, when the agent has an Ed25519 keypair.
    if let Some(ed) = find(&s, ObjectClass::PRIVATE_KEY, KeyType::EC_EDWARDS)?.first() {
        let sig = s
            .sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                *ed,
                b"ed message",
            )
            .map_err(e("CKM_EDDSA"))?;
        let id = id_of(&s, *ed)?;
        let edpub = s
            .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(id)])
            .map_err(e("find"))?[0];
        check(
            s.verify(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                edpub,
                b"ed message",
                &sig,
            )
            .is_ok(),
            "CKM_EDDSA signs and verifies",
        )?;
    }

    // Attributes: sensitive, unknown, and the length query.
    let infos = s
        .get_attribute_info(
            keys.private,
            &[
                AttributeType::Value,
                AttributeType::Modulus,
                AttributeType::Label,
            ],
        )
        .map_err(e("attribute info"))?;
    check(
        matches!(infos[0], AttributeInfo::Sensitive),
        "private CKA_VALUE: sensitive",
    )?;
    check(
        matches!(infos[1], AttributeInfo::TypeInvalid),
        "CKA_MODULUS on an EC key: type invalid",
    )?;
    check(
        matches!(infos[2], AttributeInfo::Available(_)),
        "CKA_LABEL: available with its length",
    )?;

    // AES-GCM through the module, opened by the agent's raw-GCM operation, and the reverse.
    let sock = std::env::var("KEYWARD_SOCK").map_err(|_| "KEYWARD_SOCK unset".to_string())?;
    let agent =
        BlockingClient::connect(std::path::Path::new(&sock)).map_err(|e| format!("agent: {e}"))?;
    let dek = *s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
        ])
        .map_err(e("find DEK"))?
        .first()
        .ok_or("FAILED: no DEK object")?;
    let dek_id = uuid::Uuid::from_slice(&id_of(&s, dek)?)
        .map_err(|_| "DEK CKA_ID is not a UUID".to_string())?
        .to_string();
    check(
        matches!(
            s.get_attribute_info(dek, &[AttributeType::Value])
                .map_err(e("DEK value"))?[0],
            AttributeInfo::Sensitive
        ),
        "DEK CKA_VALUE: sensitive",
    )?;
    for tag_bits in [128u64, 96, 64] {
        let mut iv = [7u8; 12];
        let aad = b"header".to_vec();
        let pt = b"secret payload for gcm".to_vec();
        let ct = s
            .encrypt(
                &Mechanism::AesGcm(
                    GcmParams::new(&mut iv, &aad, tag_bits.into()).map_err(e("gcm params"))?,
                ),
                dek,
                &pt,
            )
            .map_err(e("C_Encrypt GCM"))?;
        let args = GcmArgs {
            dek: dek_id.clone(),
            iv: serde_bytes::ByteBuf::from(iv.to_vec()),
            aad: serde_bytes::ByteBuf::from(aad.clone()),
            tag_len: (tag_bits / 8) as u8,
            data: SecretBytes::new(ct.clone()),
        };
        let opened = agent
            .run(|c| c.gcm_open(&args))
            .map_err(|e| format!("FAILED: agent gcm.open: {e}"))?;
        check(
            opened.expose() == &pt[..] && ct.len() == pt.len() + (tag_bits / 8) as usize,
            &format!("module GCM (tag {tag_bits} bits) opens with the agent's gcm.open"),
        )?;
        let args = GcmArgs {
            data: SecretBytes::new(b"from the agent".to_vec()),
            ..args
        };
        let sealed = agent
            .run(|c| c.gcm_seal(&args))
            .map_err(|e| format!("FAILED: agent gcm.seal: {e}"))?;
        let back = s
            .decrypt(
                &Mechanism::AesGcm(
                    GcmParams::new(&mut iv, &aad, tag_bits.into()).map_err(e("gcm params"))?,
                ),
                dek,
                &sealed,
            )
            .map_err(e("C_Decrypt GCM"))?;
        check(
            back == b"from the agent",
            &format!("agent gcm.seal (tag {tag_bits} bits) decrypts in the module"),
        )?;
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        check(
            rv(s.decrypt(
                &Mechanism::AesGcm(
                    GcmParams::new(&mut iv, &aad, tag_bits.into()).map_err(e("gcm params"))?,
                ),
                dek,
                &bad,
            )) == Some(RvError::EncryptedDataInvalid),
            "tampered GCM: CKR_ENCRYPTED_DATA_INVALID",
        )?;
    }
    let rnd = s
        .generate_random_vec(100_000)
        .map_err(e("C_GenerateRandom"))?;
    check(
        rnd.len() == 100_000 && rnd.iter().any(|b| *b != 0),
        "C_GenerateRandom (100000 bytes, in bounded agent requests)",
    )?;

    // 8 threads signing at once, each with its own session.
    let errors: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let p = &p;
                let point = keys.point.clone();
                sc.spawn(move || -> Res {
                    let s = p.open_ro_session(slot).map_err(e("thread session"))?;
                    let k = p256_keys(&s)?;
                    for i in 0..10 {
                        sign_once(
                            &s,
                            k.private,
                            &point,
                            format!("thread {t} sig {i}").as_bytes(),
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .filter_map(|h| {
                h.join()
                    .map_err(|_| "thread panicked".to_string())
                    .and_then(|r| r)
                    .err()
            })
            .collect()
    });
    check(
        errors.is_empty(),
        &format!("8 threads x 10 signatures {errors:?}"),
    )?;

    // fork: the child is not initialized until it calls C_Initialize, then signs on its own.
    match fork_child(&p, slot, pin)? {
        0 => {}
        code => return Err(format!("FAILED: forked child exited {code}")),
    }
    println!("ok: fork: child NOT_INITIALIZED, then re-initialized and signed");
    sign_once(&s, keys.private, &keys.point, b"parent after fork")?;
    println!("ok: the parent still signs after the child");

    // A locked agent: CKR_USER_NOT_LOGGED_IN, then C_Login unlocks again.
    agent.run(|c| c.lock()).map_err(|e| format!("lock: {e}"))?;
    check(
        rv(s.sign(&Mechanism::Ecdsa, keys.private, &sha256(b"x")))
            == Some(RvError::UserNotLoggedIn),
        "locked agent: CKR_USER_NOT_LOGGED_IN",
    )?;
    s.login(UserType::User, Some(&pin_ok))
        .map_err(e("login after lock"))?;
    sign_once(&s, keys.private, &keys.point, b"after relogin")?;
    println!("ok: C_Login after the lock unlocks again");

    // C_Logout ends the module's login, not the agent's.
    s.logout().map_err(e("logout"))?;
    let locked = BlockingClient::connect(std::path::Path::new(&sock))
        .map_err(|e| format!("agent: {e}"))?
        .hello_info()
        .locked;
    check(!locked, "C_Logout leaves the agent unlocked")?;
    check(
        find(&s, ObjectClass::PRIVATE_KEY, KeyType::EC)?.is_empty(),
        "private keys hidden after C_Logout",
    )?;

    // A wrong PIN while the agent is unlocked: checked against the agent's PIN, refused, and
    // the agent stays unlocked for its other clients.
    check(
        rv(s.login(
            UserType::User,
            Some(&AuthPin::from("wrong-pin".to_string())),
        )) == Some(RvError::PinIncorrect),
        "wrong PIN while the agent is unlocked: CKR_PIN_INCORRECT",
    )?;
    let locked = BlockingClient::connect(std::path::Path::new(&sock))
        .map_err(|e| format!("agent: {e}"))?
        .hello_info()
        .locked;
    check(
        !locked,
        "the wrong PIN leaves the agent unlocked for others",
    )?;
    check(
        find(&s, ObjectClass::PRIVATE_KEY, KeyType::EC)?.is_empty(),
        "no login from the wrong PIN",
    )?;
    s.login(UserType::User, Some(&pin_ok))
        .map_err(e("login with the right PIN while unlocked"))?;
    sign_once(&s, keys.private, &keys.point, b"after the right PIN")?;
    println!("ok: the right PIN while unlocked logs in");
    Ok(())
}

fn fork_child(p: &Pkcs11, slot: cryptoki::slot::Slot, pin: &str) -> Result<i32, String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    // SAFETY: the signing threads have joined; the child only calls the module and ends with
    // _exit, running no destructor of the parent's state.
    let forked = unsafe { fork() };
    match forked.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let code = match child(p, slot, pin) {
                Ok(()) => 0,
                Err(m) => {
                    eprintln!("child: {m}");
                    3
                }
            };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => Ok(code),
            other => Err(format!("child: {other:?}")),
        },
    }
}

fn child(p: &Pkcs11, slot: cryptoki::slot::Slot, pin: &str) -> Res {
    if rv(p.get_slots_with_token()) != Some(RvError::CryptokiNotInitialized) {
        return Err(
            "child: C_GetSlotList before C_Initialize was not CKR_CRYPTOKI_NOT_INITIALIZED".into(),
        );
    }
    init(p).map_err(e("child C_Initialize"))?;
    let s = p
        .open_ro_session_no_drop(slot)
        .map_err(e("child session"))?;
    s.login(UserType::User, Some(&AuthPin::from(pin.to_string())))
        .map_err(e("child login"))?;
    let k = p256_keys(&s)?;
    sign_once(&s, k.private, &k.point, b"child")
}

fn restart(module: &str, pin: &str) -> Res {
    let p = Pkcs11::new(module).map_err(e("load module"))?;
    init(&p).map_err(e("C_Initialize"))?;
    let slot = p.get_slots_with_token().map_err(e("slots"))?[0];
    let s = p.open_ro_session(slot).map_err(e("session"))?;
    let pin = AuthPin::from(pin.to_string());
    s.login(UserType::User, Some(&pin)).map_err(e("login"))?;
    let k = p256_keys(&s)?;
    sign_once(&s, k.private, &k.point, b"before restart")?;
    println!("ready");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let r = rv(s.sign(&Mechanism::Ecdsa, k.private, &sha256(b"x")));
    check(
        r == Some(RvError::UserNotLoggedIn),
        &format!("after the restart: a clean error ({r:?}), no crash"),
    )?;
    s.login(UserType::User, Some(&pin))
        .map_err(e("login after restart"))?;
    sign_once(&s, k.private, &k.point, b"after restart")?;
    println!("ok: reconnected, logged in and signed after the restart");
    Ok(())
}

/// `signs`: log in, find the P-256 key, print `signing`, then 20 × (C_SignInit + C_Sign) with
/// CKM_ECDSA, each checked; the test counts the agent requests the loop made (audit log).
fn signs(module: &str, pin: &str) -> Res {
    let p = Pkcs11::new(module).map_err(e("load module"))?;
    init(&p).map_err(e("C_Initialize"))?;
    let slot = p.get_slots_with_token().map_err(e("slots"))?[0];
    let s = p.open_ro_session(slot).map_err(e("session"))?;
    s.login(UserType::User, Some(&AuthPin::from(pin.to_string())))
        .map_err(e("login"))?;
    let k = p256_keys(&s)?;
    println!("signing");
    for i in 0..20u8 {
        sign_once(&s, k.private, &k.point, &[i])?;
    }
    println!("ok: 20 signatures");
    Ok(())
}

fn noagent(module: &str) -> Res {
    let t = Instant::now();
    let p = Pkcs11::new(module).map_err(e("load module"))?;
    init(&p).map_err(e("C_Initialize without an agent"))?;
    let slots = p.get_all_slots().map_err(e("slots"))?;
    check(slots.is_empty(), "no agent: zero slots")?;
    check(t.elapsed() < Duration::from_secs(5), "no agent: no hang")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: p11host MODULE PIN all|restart|noagent|signs");
        std::process::exit(2);
    }
    let r = match args[3].as_str() {
        "all" => all(&args[1], &args[2]),
        "restart" => restart(&args[1], &args[2]),
        "noagent" => noagent(&args[1]),
        "signs" => signs(&args[1], &args[2]),
        other => Err(format!("unknown scenario {other}")),
    };
    if let Err(m) = r {
        println!("{m}");
        std::process::exit(1);
    }
}
