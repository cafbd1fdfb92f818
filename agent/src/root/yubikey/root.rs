//! The YubiKey root itself: [`YubiKeyRoot`], the [`Root`] over a PIV slot, its card sessions
//! (open, verify the PIN, operate, drop) and how `yubikey` errors become root errors.
//!
//! This module must never call `block_puk` or anything that changes the PIN, PUK or management
//! key, never generate a key except in `init` (and never over a slot that holds a P-256 key), and
//! never keep the PIN after `lock` or a card removal. A PIN rejected by the card during an
//! operation is forgotten at once, so a changed PIN cannot burn the card's retries.

use super::locator::CardLocator;
use super::options::{parse_slot, YubiKeyOptions};
use super::presence::{Presence, Seen, Verdict};
use crate::root::ecdh;
use crate::root::memory_kek::{kek_bytes, random_key, Guard, KekCell, MemoryKek};
use crate::root::{
    Cause, ExportedKek, Kek, Root, RootError, RootInit, Scheme, StoredRoot, Wrapped,
};
use keyward_proto::ops::RootKind;
use keyward_proto::secret::Pin;
use p256::PublicKey;
use std::ffi::CString;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use yubikey::piv::{self, AlgorithmId, SlotId};
use yubikey::{MgmKey, Serial, YubiKey};
use zeroize::Zeroizing;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct State {
    root: Option<CardLocator>,
    /// Held while unlocked; dropped on lock and on card removal.
    pin: Option<Pin>,
    seen: Option<Seen>,
    keks: Vec<Weak<KekCell>>,
}

struct Inner {
    opts: YubiKeyOptions,
    /// Serialises card sessions (open, verify, operate, drop). Taken before `presence` and `state`.
    gate: Mutex<()>,
    /// For presence checks (no APDUs). Taken before `state`.
    presence: Presence,
    state: Mutex<State>,
}

/// Map a `yubikey` error from `call` to a root error for `op`; the error stays as the source.
fn yk_err(op: &'static str, call: &'static str, e: yubikey::Error) -> RootError {
    use pcsc::Error as P;
    use yubikey::Error as E;
    match e {
        E::WrongPin { tries } => RootError::PinIncorrect {
            op,
            card_retries: Some(u32::from(tries)),
        },
        E::PinLocked => RootError::PinLocked { op },
        source => {
            enum Kind {
                Stale,
                Unavailable,
                Token,
            }
            let kind = match &source {
                E::NotFound => Kind::Unavailable,
                E::PcscError { inner: Some(p) } => match p {
                    P::ResetCard => Kind::Stale,
                    P::SharingViolation
                    | P::RemovedCard
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
                    | P::UnknownCard => Kind::Unavailable,
                    _ => Kind::Token,
                },
                _ => Kind::Token,
            };
            let cause = Cause::Card { call, source };
            match kind {
                Kind::Stale => RootError::Stale { op, cause },
                Kind::Unavailable => RootError::Unavailable { op, cause },
                Kind::Token => RootError::Token { op, cause },
            }
        }
    }
}

impl Inner {
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
        match self.presence.check(&reader, events) {
            Verdict::Present => Ok(()),
            Verdict::Reinserted => {
                self.forget("the YubiKey was removed and reinserted");
                Err(RootError::Locked { op })
            }
            Verdict::Removed => {
                self.forget("the YubiKey was removed");
                Err(RootError::unavailable(op, "the YubiKey was removed"))
            }
            Verdict::Unreachable(source) => {
                self.forget("PC/SC is not reachable");
                Err(RootError::Unavailable {
                    op,
                    cause: Cause::Pcsc {
                        call: "SCardGetStatusChange",
                        source,
                    },
                })
            }
        }
    }

    /// Open the card: by serial when one is known, else the only card present.
    fn open_card(&self, serial: Option<u32>, op: &'static str) -> Result<YubiKey, RootError> {
        let yk = match serial {
            Some(s) => YubiKey::open_by_serial(Serial(s)).map_err(|e| match e {
                yubikey::Error::NotFound => {
                    RootError::unavailable(op, format!("no YubiKey with serial {s} is present"))
                }
                e => yk_err(op, "YubiKey::open_by_serial", e),
            })?,
            None => {
                let mut ctx = yubikey::reader::Context::open()
                    .map_err(|e| yk_err(op, "reader::Context::open", e))?;
                let mut found: Vec<YubiKey> = Vec::new();
                for reader in ctx
                    .iter()
                    .map_err(|e| yk_err(op, "reader::Context::iter", e))?
                {
                    if let Ok(yk) = reader.open() {
                        found.push(yk);
                    }
                }
                match found.len() {
                    0 => return Err(RootError::unavailable(op, "no YubiKey is present")),
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
        let events = self.presence.events(&reader);
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
        f: impl FnOnce(&mut YubiKey, &CardLocator) -> Result<T, RootError>,
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
                let err = yk_err(op, "YubiKey::verify_pin", e);
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
        let slot = SlotId::try_from(slot).map_err(|e| yk_err(op, "SlotId::try_from", e))?;
        piv::decrypt_data(yk, peer_sec1, AlgorithmId::EccP256, slot)
            .map_err(|e| yk_err(op, "piv::decrypt_data", e))
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
                presence: Presence::default(),
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
        let retries = yk
            .get_pin_retries()
            .map_err(|e| yk_err(op, "YubiKey::get_pin_retries", e))?;
        if retries == 0 {
            return Err(RootError::PinLocked { op });
        }
        yk.verify_pin(pin.expose().as_bytes())
            .map_err(|e| yk_err(op, "YubiKey::verify_pin", e))?;
        Ok(yk)
    }
}

impl Root for YubiKeyRoot {
    fn scheme(&self) -> crate::root::Scheme {
        crate::root::Scheme::YubiKeyP256
    }

    fn kind(&self) -> RootKind {
        RootKind::YubiKey
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
            Some((reader, version)) => match inner.presence.reader_state(reader) {
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
                        let events = inner.presence.events(&r);
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
            Some(k) => MgmKey::new(**k).map_err(|e| yk_err(OP, "MgmKey::new", e))?,
            None => MgmKey::default(),
        };
        yk.authenticate(mgm).map_err(|e| match e {
            // The library says only "authentication error": say what to do about it.
            yubikey::Error::AuthenticationError => RootError::token(
                OP,
                "the card refused the management key (set management_key_hex in [root])",
            ),
            e => yk_err(OP, "YubiKey::authenticate", e),
        })?;
        let slot_id = SlotId::try_from(slot).map_err(|e| yk_err(OP, "SlotId::try_from", e))?;
        let spki = piv::generate(
            &mut yk,
            slot_id,
            AlgorithmId::EccP256,
            inner.opts.pin_policy,
            inner.opts.touch_policy,
        )
        .map_err(|e| yk_err(OP, "piv::generate", e))?;
        let public =
            PublicKey::from_sec1_bytes(spki.subject_public_key.raw_bytes()).map_err(|_| {
                RootError::token(
                    OP,
                    "the card returned a public key that is not a P-256 point",
                )
            })?;
        let root = CardLocator {
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
        let locator = root.to_string();
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
            .and_then(CardLocator::parse)
            .ok_or_else(|| {
                RootError::token(OP, "the root record's locator is not a yubikey: locator")
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

    /// The card's serial: the one the root is on (known since `init` or `unlock`), else the
    /// one the config names.
    fn token_serial(&self) -> Option<String> {
        let st = lock(&self.inner.state);
        st.root
            .as_ref()
            .map(|r| r.serial)
            .or(self.inner.opts.serial)
            .map(|s| s.to_string())
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

    /// The card's ECDH unwrap of `open_kek`, into locked memory instead of a `MemoryKek`.
    fn export_kek(&self, wrapped: &[u8]) -> Result<ExportedKek, RootError> {
        const OP: &str = "export KEK";
        let kek = self.inner.session(OP, |yk, root| {
            ecdh::unwrap(&root.public, wrapped, |eph| {
                Inner::card_ecdh(yk, root.slot, eph, OP)
            })
        })?;
        Ok(ExportedKek::new(&kek))
    }

    /// Needs only the slot's public key (known since `init` or `unlock`): the card need not be
    /// present.
    fn import_kek(&self, kek: &[u8]) -> Result<Wrapped, RootError> {
        const OP: &str = "import KEK";
        let kek = kek_bytes(kek, OP)?;
        let public = match &lock(&self.inner.state).root {
            Some(r) => r.public,
            None => return Err(RootError::Locked { op: OP }),
        };
        Ok(Wrapped {
            scheme: Scheme::EcdhP256,
            bytes: ecdh::wrap(&public, &kek)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn wrong_pin_maps_to_card_retries() {
        assert!(matches!(
            yk_err("x", "verify", yubikey::Error::WrongPin { tries: 2 }),
            RootError::PinIncorrect {
                card_retries: Some(2),
                ..
            }
        ));
        assert!(matches!(
            yk_err("x", "verify", yubikey::Error::PinLocked),
            RootError::PinLocked { .. }
        ));
        let removed = yk_err(
            "x",
            "piv::decrypt_data",
            yubikey::Error::PcscError {
                inner: Some(pcsc::Error::RemovedCard),
            },
        );
        assert!(matches!(
            &removed,
            RootError::Unavailable {
                cause: Cause::Card {
                    call: "piv::decrypt_data",
                    ..
                },
                ..
            }
        ));
        // The card error is kept as the source chain: RootError -> Cause -> yubikey::Error.
        let card = removed.source().and_then(|c| c.source());
        assert!(card.is_some_and(|e| e.to_string().contains("PC/SC")));
        assert!(matches!(
            yk_err(
                "x",
                "c",
                yubikey::Error::PcscError {
                    inner: Some(pcsc::Error::ResetCard)
                }
            ),
            RootError::Stale { .. }
        ));
        assert!(matches!(
            yk_err("x", "c", yubikey::Error::GenericError),
            RootError::Token { .. }
        ));
    }
}
