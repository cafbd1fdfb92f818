//! Smoke test of the virtual PIV card through the real PC/SC stack, with the same
//! crate Keyward uses (`yubikey` 0.8, feature `untested`).
//!
//! Run it with `vcard-setup.sh check`, or by hand once `vcard-setup.sh start` is up:
//!
//! ```text
//! cargo run --release --example smoke -- --serial 5437251 \
//!     [--cycles 200] [--stop-cmd "…/vcard-setup.sh card-stop" --start-cmd "…/vcard-setup.sh card-start"]
//! ```
//!
//! With `--stop-cmd`/`--start-cmd` it also removes the card (stops its process),
//! checks that opening it fails promptly instead of hanging, reinserts it and checks
//! that the key in slot 9d is still the same.
//!
//! WARNING: this generates new keys in slots 9a and 9d of the card it opens. It only
//! opens the card with the given serial; never point it at a real YubiKey you care about.

#![forbid(unsafe_code)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use p256::{
    ecdsa::{signature::hazmat::PrehashVerifier, DerSignature, VerifyingKey},
    elliptic_curve::sec1::ToEncodedPoint,
    PublicKey, SecretKey,
};
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use yubikey::{
    piv::{self, AlgorithmId, SlotId},
    MgmKey, PinPolicy, Serial, TouchPolicy, YubiKey,
};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

const PIN: &[u8] = b"123456";

struct Args {
    serial: u32,
    stop_cmd: Option<String>,
    start_cmd: Option<String>,
    cycles: u32,
}

fn parse_args() -> Res<Args> {
    let mut args = Args {
        serial: 5_437_251,
        stop_cmd: None,
        start_cmd: None,
        cycles: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--serial" => args.serial = val()?.parse()?,
            "--stop-cmd" => args.stop_cmd = Some(val()?),
            "--start-cmd" => args.start_cmd = Some(val()?),
            "--cycles" => args.cycles = val()?.parse()?,
            _ => return Err(format!("unknown argument {a:?}").into()),
        }
    }
    Ok(args)
}

fn step(name: &str) {
    println!("smoke: {name}");
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn open(serial: u32) -> Res<YubiKey> {
    let t = Instant::now();
    let yk = YubiKey::open_by_serial(Serial(serial))?;
    println!(
        "  opened {:?}: serial {}, version {}, in {}",
        yk.name(),
        yk.serial(),
        yk.version(),
        ms(t.elapsed())
    );
    Ok(yk)
}

/// ECDH on the card: slot 9d with our ephemeral public key (uncompressed SEC1 point).
fn card_ecdh(yk: &mut YubiKey, peer: &PublicKey) -> Res<Vec<u8>> {
    let point = peer.to_encoded_point(false);
    let secret = piv::decrypt_data(
        yk,
        point.as_bytes(),
        AlgorithmId::EccP256,
        SlotId::KeyManagement,
    )?;
    Ok(secret.to_vec())
}

fn run_shell(cmd: &str) -> Res {
    let status = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !status.success() {
        return Err(format!("command failed ({status}): {cmd}").into());
    }
    Ok(())
}

fn main() -> Res {
    let args = parse_args()?;

    step("open by serial");
    let mut yk = open(args.serial)?;
    if yk.version().major != 5 {
        return Err(format!("expected firmware 5.x, got {}", yk.version()).into());
    }

    // get_pin_retries re-selects the application, which un-verifies the PIN: ask first.
    println!("  PIN retries left: {}", yk.get_pin_retries()?);
    step("verify PIN 123456");
    let t = Instant::now();
    yk.verify_pin(PIN)?;
    println!("  ok in {}", ms(t.elapsed()));

    step("authenticate with the default management key");
    yk.authenticate(MgmKey::default())?;

    step("generate P-256 in slot 9d");
    let t = Instant::now();
    let spki = piv::generate(
        &mut yk,
        SlotId::KeyManagement,
        AlgorithmId::EccP256,
        PinPolicy::Default,
        TouchPolicy::Default,
    )?;
    let card_pub = PublicKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())?;
    println!(
        "  public key {} in {}",
        hex(card_pub.to_encoded_point(false).as_bytes()),
        ms(t.elapsed())
    );

    step("ECDH in 9d (piv::decrypt_data) against an ephemeral P-256 key");
    let eph = SecretKey::random(&mut OsRng);
    let t = Instant::now();
    let on_card = card_ecdh(&mut yk, &eph.public_key())?;
    let local = p256::ecdh::diffie_hellman(eph.to_nonzero_scalar(), card_pub.as_affine());
    if on_card.as_slice() != local.raw_secret_bytes().as_slice() {
        return Err(format!(
            "ECDH mismatch: card {} local {}",
            hex(&on_card),
            hex(local.raw_secret_bytes())
        )
        .into());
    }
    println!(
        "  shared secret matches ({} bytes) in {}",
        on_card.len(),
        ms(t.elapsed())
    );

    step("ECDSA in 9a");
    let spki_9a = piv::generate(
        &mut yk,
        SlotId::Authentication,
        AlgorithmId::EccP256,
        PinPolicy::Default,
        TouchPolicy::Default,
    )?;
    let vk = VerifyingKey::from_sec1_bytes(spki_9a.subject_public_key.raw_bytes())?;
    let digest = Sha256::digest(b"keyward smoke test");
    let sig = piv::sign_data(
        &mut yk,
        &digest,
        AlgorithmId::EccP256,
        SlotId::Authentication,
    )?;
    let sig = DerSignature::try_from(sig.as_slice())?;
    vk.verify_prehash(&digest, &sig)?;
    println!("  signature verifies");

    step("a new handle needs the PIN again (the crate resets the card on drop)");
    drop(yk);
    let mut yk = open(args.serial)?;
    match card_ecdh(&mut yk, &eph.public_key()) {
        Ok(_) => return Err("ECDH without PIN succeeded after reset".into()),
        Err(e) => println!("  ECDH without PIN refused as expected: {e:?}"),
    }
    yk.verify_pin(PIN)?;
    card_ecdh(&mut yk, &eph.public_key())?;
    drop(yk);

    step(&format!(
        "{} open / verify_pin / ECDH / drop cycles (no state leaks across resets)",
        args.cycles
    ));
    let t = Instant::now();
    for i in 0..args.cycles {
        let mut yk = YubiKey::open_by_serial(Serial(args.serial))?;
        yk.verify_pin(PIN)?;
        let s = card_ecdh(&mut yk, &eph.public_key())
            .map_err(|e| format!("cycle {i}: ECDH failed: {e:?}"))?;
        if s != on_card {
            return Err(format!("cycle {i}: ECDH result changed").into());
        }
    }
    println!(
        "  done in {} ({} per cycle)",
        ms(t.elapsed()),
        ms(t.elapsed() / args.cycles.max(1))
    );

    let (Some(stop), Some(start)) = (&args.stop_cmd, &args.start_cmd) else {
        println!("smoke: no --stop-cmd/--start-cmd: skipping removal test");
        println!("smoke: OK");
        return Ok(());
    };

    step("remove the card (stop its process) while a handle is open");
    let mut held = open(args.serial)?;
    held.verify_pin(PIN)?;
    run_shell(stop)?;
    let t = Instant::now();
    match held.verify_pin(PIN) {
        Ok(()) => return Err("verify_pin on a removed card succeeded".into()),
        Err(e) => println!(
            "  open handle: verify_pin failed after {}: {e:?} ({e})",
            ms(t.elapsed())
        ),
    }
    drop(held);
    let t = Instant::now();
    match YubiKey::open_by_serial(Serial(args.serial)) {
        Ok(_) => return Err("open_by_serial found a removed card".into()),
        Err(e) => println!(
            "  open_by_serial failed after {}: {e:?} ({e})",
            ms(t.elapsed())
        ),
    }
    let t = Instant::now();
    match YubiKey::open() {
        Ok(_) => return Err("open found a removed card".into()),
        Err(e) => println!("  open failed after {}: {e:?} ({e})", ms(t.elapsed())),
    }

    step("reinsert the card (restart its process)");
    run_shell(start)?;
    let mut yk = open(args.serial)?;
    yk.verify_pin(PIN)?;
    let again = card_ecdh(&mut yk, &eph.public_key())?;
    if again != on_card {
        return Err("key in 9d changed across restart (ECDH result differs)".into());
    }
    println!("  9d ECDH result unchanged across restart");
    // ECDH with the generator G yields the x coordinate of d*G, the card's public key:
    // a way to read back (the x half of) the 9d public key without GET METADATA.
    let g = PublicKey::from_affine(p256::AffinePoint::GENERATOR)?;
    let x = card_ecdh(&mut yk, &g)?;
    let expected_x = card_pub.to_encoded_point(false);
    if x.as_slice() != expected_x.x().expect("uncompressed point").as_slice() {
        return Err("9d public key x coordinate changed across restart".into());
    }
    println!(
        "  9d public key (x coordinate, via ECDH with G) unchanged: {}",
        hex(&x)
    );

    println!("smoke: OK");
    Ok(())
}
