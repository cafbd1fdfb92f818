//! `piv-card`: a software PIV card ("virtual YubiKey") for Keyward's end-to-end tests.
//!
//! The card runs the [`piv_authenticator`] application (Nitrokey's PIV implementation)
//! on a software Trussed platform and speaks the vsmartcard *vpicc* protocol to
//! `vpcd`, the vsmartcard reader driver loaded by `pcscd`. Clients (the `yubikey`
//! crate, ykcs11, OpenSC) therefore reach it through the real PC/SC stack:
//!
//! ```text
//! yubikey crate / ykcs11 --PC/SC--> pcscd --ifd--> vpcd --TCP 35963--> piv-card
//! ```
//!
//! # What this harness adds on top of `piv-authenticator`
//!
//! `piv-authenticator` alone is not enough for the `yubikey` crate (0.8). The harness
//! (the [`Card`] type) fixes four things, all measured in the original spike:
//!
//! 1. **Short PIV AID.** The `yubikey` crate (and ykpiv/ykcs11) select the PIV
//!    application with the 5-byte RID `A0 00 00 03 08`; `piv-authenticator` only
//!    accepts its AID truncated to 9 bytes or more. A SELECT whose AID is any prefix
//!    (at least 5 bytes) of `A0 00 00 03 08 00 00 10 00 01 00` is rewritten to the
//!    full AID before it reaches the application.
//! 2. **No `61 xx` for short answers.** Every answer that fits in one short response
//!    (<= 256 bytes), SELECT included, is returned as `data || 90 00`, whatever Le
//!    the command carried. The `yubikey` crate's SELECT does not follow `61 xx`.
//!    Only answers longer than 256 bytes to a short APDU are split with `61 xx` /
//!    GET RESPONSE (which the crate does handle, e.g. for certificates); extended
//!    APDUs get the whole answer at once.
//! 3. **GET VERSION reports 5.x.** `piv-authenticator` answers 6.6.6; the `yubikey`
//!    crate only reads the serial for majors 4 and 5, so `YubiKey::open` fails on 6.
//!    The harness answers GET VERSION (`INS FD`) itself, with `--fw-version`
//!    (default 5.2.7: new enough for everything the crate does on a 5.x key, older
//!    than 5.3 so clients do not expect GET METADATA, which is not emulated). It
//!    also answers GET SERIAL (`INS F8`) with `--serial`, so several cards can be
//!    told apart with `YubiKey::open_by_serial`.
//! 4. **Reset drops security state.** A real card forgets a verified PIN (and an
//!    authenticated management key) on reset/power-off; `piv-authenticator` keeps it
//!    for the life of the object. The `yubikey` crate resets the card when a
//!    `YubiKey` is dropped, and tests rely on a fresh handle needing `verify_pin`
//!    again. On every vpicc power-on, power-off and reset the harness drops the
//!    `Authenticator` and builds a new one on the same Trussed client, so all
//!    volatile state (PIN verified, management key authenticated, command caches)
//!    starts fresh, while persistent state (keys, PIN, PUK, management key) stays.
//!    A SELECT of the PIV application does the same, as on a YubiKey (the `yubikey`
//!    crate's `get_pin_retries` re-selects precisely to un-verify the PIN).
//!
//! Besides those: `TCP_QUICKACK` is set on the vpcd socket before every read (it is
//! not sticky on Linux). Without it delayed ACKs cost ~43 ms per APDU; with it
//! ~0.6 ms. `TCP_NODELAY` is set as well.
//!
//! # State
//!
//! With `--state DIR` the Trussed internal and external filesystems are kept in
//! `DIR/internal.lfs` and `DIR/external.lfs` (trussed's virt file-backed littlefs
//! store, 64 KiB each), so stopping the process ("removing" the card) and starting
//! it again ("reinserting" it) keeps keys, PIN, PUK and management key. Without
//! `--state` everything lives in RAM and is lost on exit.
//!
//! Unlike `trussed::virt`'s own platform (whose RNG uses a fixed seed, so every
//! fresh card would generate the *same* keys), the RNG here is seeded from the OS.
//!
//! # Connection
//!
//! The card connects to vpcd (`--vpcd-host`, `--vpcd-port`, default
//! 127.0.0.1:35963). If vpcd is not there yet, or the connection drops (pcscd
//! restarted), it retries every 500 ms, forever, unless `--exit-on-disconnect` is
//! given, in which case it exits with status 3 when the connection drops. Stopping
//! the process (SIGTERM/SIGINT/SIGKILL) is how tests "remove" the card: vpcd then
//! reports the reader as empty.

#![forbid(unsafe_code)]

mod platform;

use std::{
    io,
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    path::PathBuf,
    process::ExitCode,
    thread::sleep,
    time::Duration,
};

use iso7816::command::{Command as Apdu, CommandView};
use piv_authenticator::{Authenticator, Options};
use trussed_core::types::Location;

use platform::SharedClient;

/// The full PIV AID (NIST SP 800-73-4), as `piv-authenticator` knows it.
const PIV_AID_FULL: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];

/// ATR of a YubiKey 5 (NFC) over USB, so tools that look at the ATR treat the card as
/// a YubiKey. Its card-capabilities byte announces command chaining and extended
/// Lc/Le, both of which the harness supports.
const YUBIKEY5_ATR: [u8; 23] = [
    0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15, 0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59,
    0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0x40,
];

/// Largest command (after chaining) and response the harness buffers.
const MAX_APDU: usize = 7609;

const INS_SELECT: u8 = 0xA4;
const INS_GET_RESPONSE: u8 = 0xC0;
const INS_YK_GET_VERSION: u8 = 0xFD;
const INS_YK_GET_SERIAL: u8 = 0xF8;

const SW_OK: u16 = 0x9000;
const SW_WRONG_LENGTH: u16 = 0x6700;
const SW_CONDITIONS_NOT_SATISFIED: u16 = 0x6985;
const SW_FILE_NOT_FOUND: u16 = 0x6A82;
const SW_CLA_NOT_SUPPORTED: u16 = 0x6E00;

#[derive(Debug, Clone)]
struct Args {
    vpcd_host: String,
    vpcd_port: u16,
    state: Option<PathBuf>,
    serial: u32,
    fw_version: [u8; 3],
    exit_on_disconnect: bool,
}

const USAGE: &str = "\
piv-card: software PIV card (virtual YubiKey) served to pcscd through vsmartcard-vpcd

USAGE:
    piv-card [OPTIONS]

OPTIONS:
    --vpcd-host HOST        vpcd host [default: 127.0.0.1]
    --vpcd-port PORT        vpcd port [default: 35963; vpcd's second slot is 35964]
    --state DIR             keep the card's storage in DIR (created if missing), so keys
                            survive a restart; without it the card lives in RAM only
    --serial N              serial number reported by GET SERIAL [default: 5437251]
    --fw-version X.Y.Z      firmware version reported by GET VERSION [default: 5.2.7]
    --exit-on-disconnect    exit (status 3) when vpcd closes the connection instead of
                            reconnecting every 500 ms
    -h, --help              print this help

Logging: RUST_LOG=info (default), RUST_LOG=debug shows every APDU.
";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        vpcd_host: "127.0.0.1".into(),
        vpcd_port: vpicc::DEFAULT_PORT,
        state: None,
        serial: 5_437_251,
        fw_version: [5, 2, 7],
        exit_on_disconnect: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--vpcd-host" => args.vpcd_host = value("--vpcd-host")?,
            "--vpcd-port" => {
                let v = value("--vpcd-port")?;
                args.vpcd_port = v
                    .parse()
                    .map_err(|_| format!("--vpcd-port: not a port number: {v:?}"))?;
            }
            "--state" => args.state = Some(PathBuf::from(value("--state")?)),
            "--serial" => {
                let v = value("--serial")?;
                args.serial = v
                    .parse()
                    .map_err(|_| format!("--serial: not a 32-bit unsigned number: {v:?}"))?;
            }
            "--fw-version" => {
                let v = value("--fw-version")?;
                let parts: Vec<u8> = v
                    .split('.')
                    .map(|p| p.parse::<u8>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("--fw-version: expected X.Y.Z, got {v:?}"))?;
                let parts: [u8; 3] = parts
                    .try_into()
                    .map_err(|_| format!("--fw-version: expected X.Y.Z, got {v:?}"))?;
                if !(4..=5).contains(&parts[0]) {
                    log::warn!(
                        "--fw-version {v}: the yubikey crate only opens cards reporting major 4 or 5"
                    );
                }
                args.fw_version = parts;
            }
            "--exit-on-disconnect" => args.exit_on_disconnect = true,
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,piv_authenticator=off"),
    )
    .format_timestamp_millis()
    .init();

    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("piv-card: {e}");
            return ExitCode::from(2);
        }
    };

    let store = match &args.state {
        Some(dir) => match platform::file_store(dir) {
            Ok(store) => {
                log::info!("card storage: {}", dir.display());
                store
            }
            Err(e) => {
                eprintln!(
                    "piv-card: cannot use state directory {}: {e}",
                    dir.display()
                );
                return ExitCode::from(2);
            }
        },
        None => {
            log::info!("card storage: RAM only (no --state): keys are lost on exit");
            trussed::virt::StoreConfig::ram()
        }
    };

    match platform::with_piv_client(store, |client| run(&args, client)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("piv-card: {e}");
            ExitCode::from(3)
        }
    }
}

/// Connects to vpcd and serves the card, reconnecting unless told not to.
fn run(args: &Args, client: SharedClient<'_>) -> Result<(), String> {
    let addr: SocketAddr = (args.vpcd_host.as_str(), args.vpcd_port)
        .to_socket_addrs()
        .map_err(|e| {
            format!(
                "cannot resolve vpcd address {}:{}: {e}",
                args.vpcd_host, args.vpcd_port
            )
        })?
        .next()
        .ok_or_else(|| {
            format!(
                "vpcd address {}:{} resolves to nothing",
                args.vpcd_host, args.vpcd_port
            )
        })?;

    let mut card = Card::new(client, args.serial, args.fw_version);
    log::info!(
        "virtual PIV card: serial {}, firmware {}.{}.{}, vpcd {addr}",
        args.serial,
        args.fw_version[0],
        args.fw_version[1],
        args.fw_version[2]
    );

    let mut waiting_logged = false;
    loop {
        let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => stream,
            Err(e) => {
                if args.exit_on_disconnect {
                    return Err(format!(
                        "cannot connect to vpcd at {addr}: {e} (is pcscd running with the vpcd reader configured?)"
                    ));
                }
                if !waiting_logged {
                    log::warn!("vpcd not reachable at {addr} ({e}); retrying every 500 ms");
                    waiting_logged = true;
                }
                sleep(Duration::from_millis(500));
                continue;
            }
        };
        waiting_logged = false;
        log::info!("connected to vpcd at {addr}: card inserted");
        let result = serve(stream, &mut card);
        card.reset_session("vpcd connection ended");
        match result {
            Ok(()) => log::info!("vpcd closed the connection: card removed"),
            Err(e) => log::warn!("vpcd connection lost: {e}: card removed"),
        }
        if args.exit_on_disconnect {
            return Ok(());
        }
        sleep(Duration::from_millis(500));
    }
}

/// Serves one vpcd connection until it ends. `Ok(())` means an orderly close.
fn serve(stream: TcpStream, card: &mut Card<'_>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let control = stream.try_clone()?;
    let mut connection = vpicc::Connection::from(stream);
    loop {
        // TCP_QUICKACK is reset by the kernel after use: set it before every read.
        set_quickack(&control);
        if let Err(e) = connection.poll(card) {
            return match e.kind() {
                io::ErrorKind::UnexpectedEof => Ok(()),
                _ => Err(e),
            };
        }
    }
}

fn set_quickack(stream: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_quickack(true) {
        log::debug!("setsockopt(TCP_QUICKACK): {e}");
    }
}

/// The card as vpcd sees it: APDU framing and the YubiKey compatibility fixes around
/// a `piv_authenticator::Authenticator`.
struct Card<'a> {
    client: SharedClient<'a>,
    app: Authenticator<SharedClient<'a>>,
    serial: u32,
    fw_version: [u8; 3],
    /// Command chaining (CLA bit 0x10) in progress.
    chain: Option<Box<Apdu<MAX_APDU>>>,
    /// Rest of a long answer, handed out by GET RESPONSE.
    pending: Vec<u8>,
}

impl<'a> Card<'a> {
    fn new(client: SharedClient<'a>, serial: u32, fw_version: [u8; 3]) -> Self {
        Self {
            app: Authenticator::new(client.clone(), Options::default()),
            client,
            serial,
            fw_version,
            chain: None,
            pending: Vec::new(),
        }
    }

    /// Fix 4: forget all volatile state (PIN verified, management key authenticated,
    /// command caches, chaining) as a real card does on reset / power loss.
    fn reset_session(&mut self, why: &str) {
        log::debug!("{why}: clearing security status");
        self.app = Authenticator::new(self.client.clone(), Options::default());
        // The old Authenticator may have left key material in volatile storage (the
        // PIN-derived key of a verified PIN, decrypted user keys). A real card loses its
        // RAM on reset; here it would pile up in trussed's 64 KiB volatile store until
        // PIN verification fails. Wipe it.
        use trussed_core::CryptoClient as _;
        if let Err(e) = trussed_core::try_syscall!(self.client.delete_all(Location::Volatile)) {
            log::warn!("clearing volatile storage on reset failed: {e:?}");
        }
        self.chain = None;
        self.pending.clear();
    }

    fn handle(&mut self, raw: &[u8]) -> Vec<u8> {
        let view = match CommandView::try_from(raw) {
            Ok(view) => view,
            Err(e) => {
                log::warn!("malformed APDU {}: {e:?}", hex(raw));
                return sw(match e {
                    iso7816::command::FromSliceError::InvalidClass => SW_CLA_NOT_SUPPORTED,
                    _ => SW_WRONG_LENGTH,
                });
            }
        };
        let ins: u8 = view.instruction().into();

        if ins == INS_GET_RESPONSE && self.chain.is_none() {
            return self.next_chunk(view.expected());
        }
        // Any other command abandons an unread long answer.
        self.pending.clear();

        // Command chaining: collect the pieces, then run the whole command.
        let command: Box<Apdu<MAX_APDU>> = match self.chain.take() {
            Some(mut acc) => {
                if acc.instruction() != view.instruction() {
                    log::warn!("command chain interrupted by INS {ins:02X}");
                    return sw(SW_CONDITIONS_NOT_SATISFIED);
                }
                if acc.extend_from_command_view(view).is_err() {
                    return sw(SW_WRONG_LENGTH);
                }
                acc
            }
            None => match view.to_owned::<MAX_APDU>() {
                Ok(c) => Box::new(c),
                Err(_) => return sw(SW_WRONG_LENGTH),
            },
        };
        if view.class().chain().not_the_last() {
            self.chain = Some(command);
            return sw(SW_OK);
        }
        // Extended answers only for extended commands; chained short commands are
        // marked "extended" by iso7816, so look at the last piece.
        let extended = view.extended;
        let cla = command.class().into_inner() & !0x10;
        let command_view = command.as_view();

        // Fix 3: version and serial come from the harness.
        if cla == 0x00 && ins == INS_YK_GET_VERSION {
            return with_sw(self.fw_version.to_vec(), SW_OK);
        }
        if cla == 0x00 && ins == INS_YK_GET_SERIAL {
            return with_sw(self.serial.to_be_bytes().to_vec(), SW_OK);
        }

        // Fix 1: SELECT by the short PIV AID (or any truncation of the full AID).
        let rewritten;
        let command_view = if cla == 0x00 && ins == INS_SELECT && command_view.p1 == 0x04 {
            let aid = command_view.data();
            if aid.len() >= 5 && aid.len() <= PIV_AID_FULL.len() && PIV_AID_FULL.starts_with(aid) {
                // (Re-)selecting the PIV application clears its security status on a
                // YubiKey; the yubikey crate relies on this in `get_pin_retries`.
                self.reset_session("SELECT PIV");
                let mut apdu = vec![0x00, INS_SELECT, 0x04, 0x00, PIV_AID_FULL.len() as u8];
                apdu.extend_from_slice(&PIV_AID_FULL);
                apdu.push(0x00);
                rewritten = apdu;
                CommandView::try_from(rewritten.as_slice()).expect("valid SELECT APDU")
            } else {
                log::debug!("SELECT of unknown application {}", hex(aid));
                return sw(SW_FILE_NOT_FOUND);
            }
        } else {
            command_view
        };

        let mut reply = heapless::Vec::<u8, MAX_APDU>::new();
        let status = match self.app.respond(command_view, reply.as_mut_view()) {
            Ok(()) => SW_OK,
            Err(status) => u16::from(status),
        };
        if status != SW_OK {
            return sw(status);
        }
        // Fix 2: short answers go out whole with 9000, long ones via 61xx.
        if reply.len() <= 256 || extended {
            with_sw(reply.to_vec(), SW_OK)
        } else {
            self.pending = reply.to_vec();
            self.next_chunk(256)
        }
    }

    /// GET RESPONSE: hand out the next piece of a long answer.
    fn next_chunk(&mut self, le: usize) -> Vec<u8> {
        if self.pending.is_empty() {
            return sw(SW_CONDITIONS_NOT_SATISFIED);
        }
        let n = le.clamp(1, 256).min(self.pending.len());
        let chunk: Vec<u8> = self.pending.drain(..n).collect();
        let rest = self.pending.len();
        let status = match rest {
            0 => SW_OK,
            r if r >= 256 => 0x6100,
            r => 0x6100 | r as u16,
        };
        with_sw(chunk, status)
    }
}

impl vpicc::VSmartCard for Card<'_> {
    fn atr(&self) -> &[u8] {
        &YUBIKEY5_ATR
    }

    fn power_on(&mut self) {
        log::debug!("power on");
        self.reset_session("power on");
    }

    fn power_off(&mut self) {
        log::debug!("power off");
        self.reset_session("power off");
    }

    fn reset(&mut self) {
        log::debug!("reset");
        self.reset_session("reset");
    }

    fn execute(&mut self, msg: &[u8]) -> Vec<u8> {
        let response = self.handle(msg);
        log::debug!("APDU {} -> {}", hex(msg), hex(&response));
        response
    }
}

fn sw(status: u16) -> Vec<u8> {
    status.to_be_bytes().to_vec()
}

fn with_sw(mut data: Vec<u8>, status: u16) -> Vec<u8> {
    data.extend_from_slice(&status.to_be_bytes());
    data
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
