//! The YubiKey root: a P-256 key in a PIV slot of a YubiKey (or any PIV card the `yubikey` crate
//! can open), scheme `ecdh-p256` for KEKs (see [`super::ecdh`]).
//!
//! `init` generates the key on the card (slot 9d or a retired slot 82..95) with the configured PIN
//! and touch policies, and the root record keeps the card's serial, the slot and the public key
//! (`yubikey:serial=N;slot=9d;pub=<hex SEC1>`): cards below firmware 5.3 cannot give a slot's
//! public key back, and wrapping a new KEK needs only that public key, so `kek.create` does not
//! touch the card. Opening a KEK does ECDH on the card (`piv::decrypt_data`); the KEK then lives
//! in agent memory ([`MemoryKek`], zeroized, mlocked) while the root is unlocked.
//!
//! Sharing: the card is opened for each card operation and dropped afterwards (the `yubikey` crate
//! resets the card on drop, which un-verifies the PIN), so the agent never holds the PC/SC handle
//! and other programs (ssh with ykcs11, gpg) can use the card in between. Each open needs
//! `verify_pin` again, so the PIN is held in a zeroizing [`Pin`] while unlocked, as the PKCS#11
//! backend does. Card access is serialised inside the agent.
//!
//! Removal: every use of an opened KEK first asks pcscd (no APDU) whether the card is still in
//! its reader and was not removed and reinserted since the last contact. If it is gone the backend
//! forgets the PIN and wipes every KEK it handed out, and reports `Unavailable`
//! (`token_unavailable`); once the card is back the root is locked and needs the PIN again.
//!
//! This module must never call `block_puk` or anything that changes the PIN, PUK or management
//! key, never generate a key except in `init` (and never over a slot that holds a P-256 key), and
//! never keep the PIN after `lock` or a card removal. A PIN rejected by the card during an
//! operation is forgotten at once, so a changed PIN cannot burn the card's retries.

use super::ecdh;
use super::memory_kek::{random_key, Guard, KekCell, MemoryKek};
use super::{Kek, Root, RootError, RootInit, Scheme, StoredRoot, Wrapped};
use keyward_proto::secret::Pin;
use p256::PublicKey;
use std::ffi::CString;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use yubikey::piv::{self, AlgorithmId, SlotId};
use yubikey::{MgmKey, PinPolicy, Serial, TouchPolicy, YubiKey};
use zeroize::Zeroizing;

/// The default slot: 9d, "Key Management" (ECDH is what it is for).
pub const DEFAULT_SLOT: u8 = 0x9d;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the config says about the card.
#[derive(Clone)]
pub struct YubiKeyOptions {
    /// Which card (its serial); `None`: the only one present (at init), then the recorded one.
    pub serial: Option<u32>,
    /// 0x9d or a retired slot 0x82..=0x95.
    pub slot: u8,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    /// The 3DES management key for `init` (key generation); `None`: the factory default.
    pub management_key: Option<Zeroizing<[u8; 24]>>,
}

impl Default for YubiKeyOptions {
    fn default() -> Self {
        YubiKeyOptions {
            serial: None,
            slot: DEFAULT_SLOT,
            pin_policy: PinPolicy::Once,
            touch_policy: TouchPolicy::Cached,
            management_key: None,
        }
    }
}

/// Parse `9d` or `82`..`95`.
pub fn parse_slot(s: &str) -> Result<u8, RootError> {
    let bad = || {
        RootError::Config(format!(
            "yubikey slot `{s}`: use 9d or a retired slot 82..95"
        ))
    };
    let v = u8::from_str_radix(s.trim(), 16).map_err(|_| bad())?;
    if v == 0x9d || (0x82..=0x95).contains(&v) {
        Ok(v)
    } else {
        Err(bad())
    }
}

/// Parse a policy name from the config.
pub fn parse_pin_policy(s: &str) -> Result<PinPolicy, RootError> {
    match s {
        "default" => Ok(PinPolicy::Default),
        "never" => Ok(PinPolicy::Never),
        "once" => Ok(PinPolicy::Once),
        "always" => Ok(PinPolicy::Always),
        _ => Err(RootError::Config(format!(
            "yubikey pin_policy `{s}`: use once, always, never or default"
        ))),
    }
}

pub fn parse_touch_policy(s: &str) -> Result<TouchPolicy, RootError> {
    match s {
        "default" => Ok(TouchPolicy::Default),
        "never" => Ok(TouchPolicy::Never),
        "always" => Ok(TouchPolicy::Always),
        "cached" => Ok(TouchPolicy::Cached),
        _ => Err(RootError::Config(format!(
            "yubikey touch_policy `{s}`: use cached, always, never or default"
        ))),
    }
}

/// Parse a 24-byte 3DES management key given as 48 hex digits.
pub fn parse_management_key(hex_key: &str) -> Result<Zeroizing<[u8; 24]>, RootError> {
    let bad = || RootError::Config("yubikey management_key_hex: need 48 hex digits".into());
    let s = hex_key.trim();
    if s.len() != 48 {
        return Err(bad());
    }
    let mut out = Zeroizing::new([0u8; 24]);
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The backend options from a `kind = "yubikey"` config (checked).
pub fn options(cfg: &crate::config::RootConfig) -> Result<YubiKeyOptions, RootError> {
    match cfg {
        crate::config::RootConfig::YubiKey {
            serial,
            slot,
            pin_policy,
            touch_policy,
            management_key_hex,
        } => Ok(YubiKeyOptions {
            serial: *serial,
            slot: parse_slot(slot)?,
            pin_policy: parse_pin_policy(pin_policy)?,
            touch_policy: parse_touch_policy(touch_policy)?,
            management_key: management_key_hex
                .as_deref()
                .map(parse_management_key)
                .transpose()?,
        }),
        _ => Err(RootError::Config("not a yubikey root".into())),
    }
}

/// The root as the keystore records it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CardRoot {
    serial: u32,
    slot: u8,
    public: PublicKey,
}

impl CardRoot {
    fn locator(&self) -> String {
        format!(
            "yubikey:serial={};slot={:02x};pub={}",
            self.serial,
            self.slot,
            hex_encode(&ecdh::sec1(&self.public))
        )
    }

    fn parse(s: &str) -> Option<CardRoot> {
        let rest = s.strip_prefix("yubikey:")?;
        let (mut serial, mut slot, mut public) = (None, None, None);
        for part in rest.split(';') {
            let (k, v) = part.split_once('=')?;
            match k {
                "serial" => serial = v.parse().ok(),
                "slot" => slot = parse_slot(v).ok(),
                "pub" => public = PublicKey::from_sec1_bytes(&hex_decode(v)?).ok(),
                _ => {}
            }
        }
        Some(CardRoot {
            serial: serial?,
            slot: slot?,
            public: public?,
        })
    }
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The last contact with the card.
struct Seen {
    reader: CString,
    version: String,
    /// pcsc-lite's per-reader insert/remove counter when we last saw the card.
    events: Option<u32>,
}

#[derive(Default)]
struct State {
    root: Option<CardRoot>,
    /// Held while unlocked; dropped on lock and on card removal.
    pin: Option<Pin>,
    seen: Option<Seen>,
    keks: Vec<Weak<KekCell>>,
}

struct Inner {
    opts: YubiKeyOptions,
    /// Serialises card sessions (open, verify, operate, drop). Taken before `pcsc` and `state`.
    gate: Mutex<()>,
    /// For presence checks (no APDUs). Taken before `state`.
    pcsc: Mutex<Option<pcsc::Context>>,
    state: Mutex<State>,
}

/// Map a `yubikey` error to a root error, keeping the operation's name.
fn yk_err(op: &'static str, e: yubikey::Error) -> RootError {
    use pcsc::Error as P;
    use yubikey::Error as E;
    match e {
        E::WrongPin { tries } => RootError::PinIncorrect {
            op,
            card_retries: Some(u32::from(tries)),
        },
        E::PinLocked => RootError::PinLocked { op },
        E::NotFound => RootError::Unavailable {
            op,
            detail: "the YubiKey is not present".into(),
        },
        E::PcscError { inner: Some(p) } => match p {
            P::ResetCard => RootError::Stale {
                op,
                detail: "the card was reset by another program".into(),
            },
            P::SharingViolation => RootError::Unavailable {
                op,
                detail: "another program holds the card exclusively".into(),
            },
            P::RemovedCard
            | P::NoSmartcard
            | P::NoService
            | P::ServiceStopped
            | P::NoReadersAvailable
            | P::ReaderUnavailable
            | P::UnknownReader
            | P::CommError
            | P::UnpoweredCard
            | P::UnresponsiveCard
            | P::Shutdown
            | P::UnknownCard => RootError::Unavailable {
                op,
                detail: format!("PC/SC: {p}"),
            },
            other => RootError::Token {
                op,
                detail: format!("PC/SC: {other}"),
            },
        },
        E::AuthenticationError => RootError::Token {
            op,
            detail: "the card refused the management key (set management_key_hex in [root])".into(),
        },
        other => RootError::Token {
            op,
            detail: format!("card: {other}"),
        },
    }
}

impl Inner {
    /// The reader's state from pcscd: (card present, event counter).
    fn reader_state(&self, reader: &CString) -> Result<(bool, u32), pcsc::Error> {
        let mut ctx = lock(&self.pcsc);
        for attempt in 0..2 {
            if ctx.is_none() {
                *ctx = Some(pcsc::Context::establish(pcsc::Scope::User)?);
            }
            let Some(c) = ctx.as_ref() else { continue };
            let mut rs = [pcsc::ReaderState::new(reader.clone(), pcsc::State::UNAWARE)];
            match c.get_status_change(Duration::ZERO, &mut rs) {
                Ok(()) => {
                    let st = rs[0].event_state();
                    let present = st.contains(pcsc::State::PRESENT)
                        && !st.intersects(pcsc::State::UNAVAILABLE | pcsc::State::UNKNOWN);
                    return Ok((present, rs[0].event_count()));
                }
                Err(pcsc::Error::UnknownReader) => return Ok((false, 0)),
                Err(e) if attempt == 1 => return Err(e),
                // pcscd restarted: a new context, once.
                Err(_) => *ctx = None,
            }
        }
        Err(pcsc::Error::NoService)
    }

    /// Forget the PIN and wipe every KEK handed out (card removed or PIN no longer right).
    fn forget(&self, why: &str) {
        let mut st = lock(&self.state);
        if st.pin.is_some() && !matches!(why, "lock" | "unlock") {
            tracing::warn!("{why}: locking the YubiKey root (the PIN is needed again)");
        }
        st.pin = None;
        for k in st.keks.drain(..) {
            if let Some(cell) = k.upgrade() {
                cell.wipe();
            }
        }
    }

    /// Is the card we last talked to still there, untouched? Forgets the PIN if not.
    fn check_present(&self, op: &'static str) -> Result<(), RootError> {
        let (reader, events) = {
            let st = lock(&self.state);
            if st.pin.is_none() {
                return Err(RootError::Locked { op });
            }
            match &st.seen {
                Some(s) => (s.reader.clone(), s.events),
                None => return Ok(()),
            }
        };
        match self.reader_state(&reader) {
            Ok((true, n)) if events.is_none_or(|e| e == n) => Ok(()),
            Ok((true, _)) => {
                self.forget("the YubiKey was removed and reinserted");
                Err(RootError::Locked { op })
            }
            Ok((false, _)) => {
                self.forget("the YubiKey was removed");
                Err(RootError::Unavailable {
                    op,
                    detail: "the YubiKey was removed".into(),
                })
            }
            Err(e) => {
                self.forget("PC/SC is not reachable");
                Err(RootError::Unavailable {
                    op,
                    detail: format!("PC/SC: {e}"),
                })
            }
        }
    }

    /// Open the card: by serial when one is known, else the only card present.
    fn open_card(&self, serial: Option<u32>, op: &'static str) -> Result<YubiKey, RootError> {
        let yk = match serial {
            Some(s) => YubiKey::open_by_serial(Serial(s)).map_err(|e| match e {
                yubikey::Error::NotFound => RootError::Unavailable {
                    op,
                    detail: format!("no YubiKey with serial {s} is present"),
                },
                e => yk_err(op, e),
            })?,
            None => {
                let mut ctx = yubikey::reader::Context::open().map_err(|e| yk_err(op, e))?;
                let mut found: Vec<YubiKey> = Vec::new();
                for reader in ctx.iter().map_err(|e| yk_err(op, e))? {
                    if let Ok(yk) = reader.open() {
                        found.push(yk);
                    }
                }
                match found.len() {
                    0 => {
                        return Err(RootError::Unavailable {
                            op,
                            detail: "no YubiKey is present".into(),
                        })
                    }
                    1 => found.remove(0),
                    n => {
                        let serials: Vec<String> =
                            found.iter().map(|y| y.serial().to_string()).collect();
                        for y in found {
                            let _ = y.disconnect(pcsc::Disposition::LeaveCard);
                        }
                        return Err(RootError::Ambiguous {
                            op,
                            detail: format!(
                                "{n} YubiKeys are present (serials {}): name one with `serial = N` in [root]",
                                serials.join(", ")
                            ),
                        });
                    }
                }
            }
        };
        Ok(yk)
    }

    /// Remember the reader, firmware and event counter after a contact (the card dropped).
    fn record_seen(&self, reader: CString, version: String) {
        let events = self.reader_state(&reader).ok().map(|(_, n)| n);
        lock(&self.state).seen = Some(Seen {
            reader,
            version,
            events,
        });
    }

    /// One card session for an unlocked root: open, check the card, verify the PIN, run `f`,
    /// drop the card (reset: the PIN is un-verified again).
    fn session<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut YubiKey, &CardRoot) -> Result<T, RootError>,
    ) -> Result<T, RootError> {
        let _gate = lock(&self.gate);
        self.check_present(op)?;
        let (root, pin) = {
            let st = lock(&self.state);
            match (&st.root, &st.pin) {
                (Some(r), Some(p)) => (r.clone(), p.clone()),
                _ => return Err(RootError::Locked { op }),
            }
        };
        let result = (|| {
            let mut yk = self.open_card(Some(root.serial), op)?;
            let reader = CString::new(yk.name()).ok();
            let version = yk.version().to_string();
            if let Err(e) = yk.verify_pin(pin.expose().as_bytes()) {
                let err = yk_err(op, e);
                if matches!(
                    err,
                    RootError::PinIncorrect { .. } | RootError::PinLocked { .. }
                ) {
                    // The PIN changed since unlock: never try it again.
                    self.forget("the card refused the PIN given at unlock");
                    return Err(RootError::Locked { op });
                }
                return Err(err);
            }
            let out = f(&mut yk, &root);
            drop(yk);
            if let Some(r) = reader {
                self.record_seen(r, version);
            }
            out
        })();
        if let Err(RootError::Unavailable { .. }) = &result {
            self.forget("the YubiKey is not reachable");
        }
        result
    }

    /// ECDH with the slot's private key: the x coordinate of the shared point.
    fn card_ecdh(
        yk: &mut YubiKey,
        slot: u8,
        peer_sec1: &[u8],
        op: &'static str,
    ) -> Result<Zeroizing<Vec<u8>>, RootError> {
        let slot = SlotId::try_from(slot).map_err(|e| yk_err(op, e))?;
        piv::decrypt_data(yk, peer_sec1, AlgorithmId::EccP256, slot).map_err(|e| yk_err(op, e))
    }

    /// The x coordinate of the slot's public key, if it holds a P-256 key: ECDH with the
    /// generator G returns it (no metadata needed).
    fn slot_public_x(yk: &mut YubiKey, slot: u8, op: &'static str) -> Option<Vec<u8>> {
        let g = p256::AffinePoint::GENERATOR;
        let g = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&g, false);
        Self::card_ecdh(yk, slot, g.as_bytes(), op)
            .ok()
            .map(|x| x.to_vec())
    }
}

/// The YubiKey (PIV) root backend.
pub struct YubiKeyRoot {
    inner: Arc<Inner>,
}

impl YubiKeyRoot {
    /// No card access here: a missing card is reported when it is needed.
    pub fn new(opts: YubiKeyOptions) -> Result<Self, RootError> {
        parse_slot(&format!("{:02x}", opts.slot))?;
        Ok(YubiKeyRoot {
            inner: Arc::new(Inner {
                opts,
                gate: Mutex::new(()),
                pcsc: Mutex::new(None),
                state: Mutex::new(State::default()),
            }),
        })
    }

    fn serial_hint(&self) -> Option<u32> {
        let st = lock(&self.inner.state);
        self.inner
            .opts
            .serial
            .or(st.root.as_ref().map(|r| r.serial))
    }

    /// Open, read retries, verify the PIN: the start of `init` and `unlock`.
    fn open_verified(
        &self,
        serial: Option<u32>,
        pin: &Pin,
        op: &'static str,
    ) -> Result<YubiKey, RootError> {
        let mut yk = self.inner.open_card(serial, op)?;
        // Before verify_pin: it re-selects the applet, which un-verifies the PIN.
        let retries = yk.get_pin_retries().map_err(|e| yk_err(op, e))?;
        if retries == 0 {
            return Err(RootError::PinLocked { op });
        }
        yk.verify_pin(pin.expose().as_bytes())
            .map_err(|e| yk_err(op, e))?;
        Ok(yk)
    }
}

impl Root for YubiKeyRoot {
    fn kind(&self) -> keyward_proto::ops::RootKind {
        keyward_proto::ops::RootKind::YubiKey
    }

    fn describe(&self) -> String {
        let inner = &self.inner;
        let slot = {
            let st = lock(&inner.state);
            st.root.as_ref().map_or(inner.opts.slot, |r| r.slot)
        };
        let serial = self.serial_hint();
        let _gate = lock(&inner.gate);
        let seen = {
            let st = lock(&inner.state);
            st.seen
                .as_ref()
                .map(|s| (s.reader.clone(), s.version.clone()))
        };
        let present = match &seen {
            Some((reader, version)) => match inner.reader_state(reader) {
                Ok((true, _)) => Some((version.clone(), None)),
                _ => None,
            },
            // Never seen yet: look once (no PIN, no reset).
            None => match inner.open_card(serial, "describe") {
                Ok(yk) => {
                    let v = yk.version().to_string();
                    let s = yk.serial().0;
                    let reader = CString::new(yk.name()).ok();
                    let _ = yk.disconnect(pcsc::Disposition::LeaveCard);
                    if let Some(r) = reader {
                        let events = inner.reader_state(&r).ok().map(|(_, n)| n);
                        lock(&inner.state).seen = Some(Seen {
                            reader: r,
                            version: v.clone(),
                            events,
                        });
                    }
                    Some((v, Some(s)))
                }
                Err(_) => None,
            },
        };
        let serial_text = |s: Option<u32>| s.map_or("(any)".to_string(), |s| s.to_string());
        match present {
            Some((version, found)) => format!(
                "YubiKey serial {}, firmware {version}, slot {slot:02x}",
                serial_text(serial.or(found))
            ),
            None => format!(
                "YubiKey serial {}, slot {slot:02x} (card not present)",
                serial_text(serial)
            ),
        }
    }

    fn init(&self, pin: &Pin) -> Result<RootInit, RootError> {
        const OP: &str = "init YubiKey root";
        let inner = &self.inner;
        let _gate = lock(&inner.gate);
        let slot = inner.opts.slot;
        let mut yk = self.open_verified(inner.opts.serial, pin, OP)?;
        if Inner::slot_public_x(&mut yk, slot, OP).is_some() {
            return Err(RootError::RootExists { op: OP });
        }
        let mgm = match &inner.opts.management_key {
            Some(k) => MgmKey::new(**k).map_err(|e| yk_err(OP, e))?,
            None => MgmKey::default(),
        };
        yk.authenticate(mgm).map_err(|e| yk_err(OP, e))?;
        let slot_id = SlotId::try_from(slot).map_err(|e| yk_err(OP, e))?;
        let spki = piv::generate(
            &mut yk,
            slot_id,
            AlgorithmId::EccP256,
            inner.opts.pin_policy,
            inner.opts.touch_policy,
        )
        .map_err(|e| yk_err(OP, e))?;
        let public =
            PublicKey::from_sec1_bytes(spki.subject_public_key.raw_bytes()).map_err(|_| {
                RootError::Token {
                    op: OP,
                    detail: "the card returned a public key that is not a P-256 point".into(),
                }
            })?;
        let root = CardRoot {
            serial: yk.serial().0,
            slot,
            public,
        };
        let reader = CString::new(yk.name()).ok();
        let version = yk.version().to_string();
        drop(yk);
        if let Some(r) = reader {
            inner.record_seen(r, version);
        }
        let locator = root.locator();
        tracing::info!(serial = root.serial, slot = %format!("{slot:02x}"), "YubiKey root generated");
        let mut st = lock(&inner.state);
        st.root = Some(root);
        st.pin = Some(pin.clone());
        Ok(RootInit {
            scheme: Scheme::YubiKeyP256,
            locator,
            check: None,
        })
    }

    fn unlock(&self, pin: &Pin, stored: &StoredRoot) -> Result<(), RootError> {
        const OP: &str = "unlock YubiKey root";
        let inner = &self.inner;
        let root = stored
            .locator
            .as_deref()
            .and_then(CardRoot::parse)
            .ok_or_else(|| RootError::Token {
                op: OP,
                detail: "the root record's locator is not a yubikey: locator".into(),
            })?;
        if let Some(s) = inner.opts.serial.filter(|s| *s != root.serial) {
            return Err(RootError::Config(format!(
                "{OP}: the config names YubiKey serial {s} but the root is on serial {}",
                root.serial
            )));
        }
        let _gate = lock(&inner.gate);
        inner.forget("unlock");
        let mut yk = self.open_verified(Some(root.serial), pin, OP)?;
        let want_x = ecdh::sec1(&root.public)[1..33].to_vec();
        if Inner::slot_public_x(&mut yk, root.slot, OP).as_deref() != Some(&want_x[..]) {
            return Err(RootError::RootMissing { op: OP });
        }
        let reader = CString::new(yk.name()).ok();
        let version = yk.version().to_string();
        drop(yk);
        if let Some(r) = reader {
            inner.record_seen(r, version);
        }
        let mut st = lock(&inner.state);
        st.root = Some(root);
        st.pin = Some(pin.clone());
        Ok(())
    }

    fn lock(&self) -> Result<(), RootError> {
        self.inner.forget("lock");
        Ok(())
    }

    fn is_unlocked(&self) -> bool {
        lock(&self.inner.state).pin.is_some()
    }

    fn recover(&self) -> Result<(), RootError> {
        // Nothing is held open: the next operation opens the card afresh.
        if self.is_unlocked() {
            Ok(())
        } else {
            Err(RootError::Locked {
                op: "recover YubiKey session",
            })
        }
    }

    fn generate_kek(&self) -> Result<Wrapped, RootError> {
        const OP: &str = "generate KEK";
        let public = {
            let st = lock(&self.inner.state);
            match (&st.root, &st.pin) {
                (Some(r), Some(_)) => r.public,
                _ => return Err(RootError::Locked { op: OP }),
            }
        };
        let kek = random_key();
        Ok(Wrapped {
            scheme: Scheme::EcdhP256,
            bytes: ecdh::wrap(&public, &kek)?,
        })
    }

    fn open_kek(&self, wrapped: &[u8]) -> Result<Box<dyn Kek>, RootError> {
        const OP: &str = "unwrap KEK";
        let inner = self.inner.clone();
        let kek = self.inner.session(OP, |yk, root| {
            ecdh::unwrap(&root.public, wrapped, |eph| {
                Inner::card_ecdh(yk, root.slot, eph, OP)
            })
        })?;
        let guard: Guard = Arc::new(move |op| inner.check_present(op));
        let k = MemoryKek::with_guard(&kek, guard);
        lock(&self.inner.state).keks.push(k.cell());
        Ok(Box::new(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_round_trips() {
        let public = p256::SecretKey::from_slice(&[7u8; 32])
            .unwrap()
            .public_key();
        let r = CardRoot {
            serial: 5437251,
            slot: 0x9d,
            public,
        };
        let s = r.locator();
        assert!(s.starts_with("yubikey:serial=5437251;slot=9d;pub=04"));
        assert_eq!(CardRoot::parse(&s), Some(r));
        assert_eq!(CardRoot::parse("pkcs11:token=x"), None);
        assert_eq!(CardRoot::parse("yubikey:serial=1;slot=9a;pub=04"), None);
    }

    #[test]
    fn config_values_parse() {
        assert_eq!(parse_slot("9d").unwrap(), 0x9d);
        assert_eq!(parse_slot("82").unwrap(), 0x82);
        assert_eq!(parse_slot("95").unwrap(), 0x95);
        assert!(parse_slot("9a").is_err());
        assert!(parse_slot("96").is_err());
        assert!(parse_pin_policy("sometimes").is_err());
        assert_eq!(parse_touch_policy("cached").unwrap(), TouchPolicy::Cached);
        let k = parse_management_key("010203040506070801020304050607080102030405060708").unwrap();
        assert_eq!(k[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(parse_management_key("0102").is_err());
    }

    #[test]
    fn wrong_pin_maps_to_card_retries() {
        assert!(matches!(
            yk_err("x", yubikey::Error::WrongPin { tries: 2 }),
            RootError::PinIncorrect {
                card_retries: Some(2),
                ..
            }
        ));
        assert!(matches!(
            yk_err("x", yubikey::Error::PinLocked),
            RootError::PinLocked { .. }
        ));
        assert!(matches!(
            yk_err(
                "x",
                yubikey::Error::PcscError {
                    inner: Some(pcsc::Error::RemovedCard)
                }
            ),
            RootError::Unavailable { .. }
        ));
    }
}
