//! A root in agent memory, for tests of the policy layer (hierarchy, keypairs, sharing, nodes)
//! that need no token: [`MemoryRoot`].
//!
//! It behaves like the PKCS#11 AES root as the hierarchy sees it: `init` makes a random AES-256
//! root key and remembers the PIN given; `unlock` checks the PIN against it (`PinIncorrect`,
//! optionally with a card's retry counter, see [`MemoryRoot::with_card_retries`]) and never
//! creates a root; KEKs are AES-256, wrapped under the root with AES-KWP (RFC 5649) in memory and
//! opened as [`MemoryKek`]s, which `lock` wipes. Tests steer it through a clone of the root they
//! handed to the hierarchy (clones share one state): [`MemoryRoot::make_stale`] makes every use
//! fail with `Stale` until `recover`, [`MemoryRoot::remove_root`] loses the root as a reset token
//! would. It also keeps token keypairs ([`TokenKeypairs`]) in memory.
//!
//! This module is compiled only for tests and the `testing` feature: it must never be part of
//! keywardd, and never hold a key that matters.

use super::memory_kek::{kek_bytes, random_key, ExportedKek, Guard, KekCell, MemoryKek};
use super::{
    Kek, Root, RootError, RootInit, Scheme, StoredRoot, TokenKeypair, TokenKeypairs, Wrapped,
};
use keyward_proto::ops::RootKind;
use keyward_proto::secret::Pin;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use zeroize::Zeroizing;

/// The locator `init` records.
pub const LOCATOR: &str = "memory:keyward-root";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct State {
    /// The PIN given at `init` and the root key it made.
    made: Option<(Pin, Zeroizing<[u8; 32]>)>,
    unlocked: bool,
    /// Every use fails with `Stale` until `recover`.
    stale: bool,
    recoveries: u32,
    /// A card's own retry counter: `Some(n)` reports `card_retries` on a wrong PIN.
    card_retries: Option<u32>,
    card_retries_fresh: Option<u32>,
    keks: Vec<Weak<KekCell>>,
    token_keys: HashMap<String, p256::SecretKey>,
    next_token_key: u32,
    /// Set by [`MemoryRoot::slow`]: not `fast`, and every key use takes this long.
    delay: Option<std::time::Duration>,
    /// Set by [`MemoryRoot::set_token_serial`]: what `token_serial` answers.
    serial: Option<String>,
}

impl State {
    /// The root key, if unlocked and not stale.
    fn usable(&self, op: &'static str) -> Result<Zeroizing<[u8; 32]>, RootError> {
        if !self.unlocked {
            return Err(RootError::Locked { op });
        }
        if self.stale {
            return Err(RootError::stale(op, "the memory root was made stale"));
        }
        match &self.made {
            Some((_, key)) => Ok(key.clone()),
            None => Err(RootError::RootMissing { op }),
        }
    }

    fn wipe_keks(&mut self) {
        for k in self.keks.drain(..) {
            if let Some(cell) = k.upgrade() {
                cell.wipe();
            }
        }
    }
}

/// A test root in memory. Clones share one root (keep a clone to steer it after handing one to
/// a `Hierarchy`).
#[derive(Clone, Default)]
pub struct MemoryRoot {
    state: Arc<Mutex<State>>,
}

impl MemoryRoot {
    /// A root with nothing in it yet: `init` makes the root key.
    pub fn new() -> MemoryRoot {
        MemoryRoot::default()
    }

    /// Answer `token_serial` with `serial` (as a PKCS#11 token names itself before login).
    pub fn set_token_serial(&self, serial: Option<&str>) {
        lock(&self.state).serial = serial.map(str::to_string);
    }

    /// A root that counts wrong PINs as a PIV card does: each wrong PIN reports the retries left
    /// (`card_retries`), none left answers `PinLocked`, a right PIN resets the count to `retries`.
    pub fn with_card_retries(retries: u32) -> MemoryRoot {
        let r = MemoryRoot::new();
        {
            let mut st = lock(&r.state);
            st.card_retries = Some(retries);
            st.card_retries_fresh = Some(retries);
        }
        r
    }

    /// A root that behaves as a card for where requests run: not [`Root::fast`], and every use
    /// of a KEK (open, and each operation on an opened one) takes `delay`.
    pub fn slow(delay: std::time::Duration) -> MemoryRoot {
        let r = MemoryRoot::new();
        r.set_delay(Some(delay));
        r
    }

    /// Make this root slow (as [`MemoryRoot::slow`]) or, with `None`, fast again.
    pub fn set_delay(&self, delay: Option<std::time::Duration>) {
        lock(&self.state).delay = delay;
    }

    /// Make every use (KEK create and open, DEK operations on opened KEKs) fail with `Stale`
    /// until `recover`, as a token does after a reset.
    pub fn make_stale(&self) {
        lock(&self.state).stale = true;
    }

    /// How many times `recover` succeeded.
    pub fn recoveries(&self) -> u32 {
        lock(&self.state).recoveries
    }

    /// Lose the root key, as a token that was reset: `unlock` then answers `RootMissing`.
    pub fn remove_root(&self) {
        let mut st = lock(&self.state);
        st.made = None;
        st.unlocked = false;
        st.wipe_keks();
    }

    fn guard(&self) -> Guard {
        let state = self.state.clone();
        Arc::new(move |op| {
            let delay = lock(&state).delay;
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            lock(&state).usable(op).map(|_| ())
        })
    }
}

fn kwp(key: &[u8; 32]) -> aes_kw::KekAes256 {
    aes_kw::KekAes256::from(*key)
}

impl Root for MemoryRoot {
    fn scheme(&self) -> crate::root::Scheme {
        crate::root::Scheme::Memory
    }

    fn kind(&self) -> RootKind {
        // No hardware, like the soft root; the wire has no kind of its own for a test root.
        RootKind::Soft
    }

    fn token_serial(&self) -> Option<String> {
        lock(&self.state).serial.clone()
    }

    fn fast(&self) -> bool {
        lock(&self.state).delay.is_none()
    }

    fn describe(&self) -> String {
        "in-memory test root (no hardware)".into()
    }

    fn init(&self, pin: &Pin) -> Result<RootInit, RootError> {
        const OP: &str = "init memory root";
        let mut st = lock(&self.state);
        if st.made.is_some() {
            return Err(RootError::RootExists { op: OP });
        }
        st.made = Some((pin.clone(), random_key()));
        st.unlocked = true;
        Ok(RootInit {
            scheme: Scheme::Memory,
            locator: LOCATOR.into(),
            check: None,
        })
    }

    fn unlock(&self, pin: &Pin, _stored: &StoredRoot) -> Result<(), RootError> {
        const OP: &str = "unlock memory root";
        let mut st = lock(&self.state);
        st.unlocked = false;
        st.wipe_keks();
        let right = match &st.made {
            Some((made, _)) => made.expose() == pin.expose(),
            None => return Err(RootError::RootMissing { op: OP }),
        };
        if st.card_retries == Some(0) {
            return Err(RootError::PinLocked { op: OP });
        }
        if !right {
            let left = st.card_retries.map(|n| n.saturating_sub(1));
            st.card_retries = left;
            return Err(RootError::PinIncorrect {
                op: OP,
                card_retries: left,
            });
        }
        st.card_retries = st.card_retries_fresh;
        st.unlocked = true;
        st.stale = false;
        Ok(())
    }

    fn destroy_root(&self) -> Result<crate::root::RootDestroyed, RootError> {
        self.remove_root();
        Ok(crate::root::RootDestroyed::Destroyed(
            "the in-memory test root".into(),
        ))
    }

    fn lock(&self) -> Result<(), RootError> {
        let mut st = lock(&self.state);
        st.unlocked = false;
        st.wipe_keks();
        Ok(())
    }

    fn is_unlocked(&self) -> bool {
        lock(&self.state).unlocked
    }

    fn recover(&self) -> Result<(), RootError> {
        const OP: &str = "recover memory root";
        let mut st = lock(&self.state);
        if !st.unlocked {
            return Err(RootError::Locked { op: OP });
        }
        st.stale = false;
        st.recoveries += 1;
        Ok(())
    }

    fn generate_kek(&self) -> Result<Wrapped, RootError> {
        const OP: &str = "generate KEK";
        let root = lock(&self.state).usable(OP)?;
        let kek = random_key();
        let bytes = kwp(&root)
            .wrap_with_padding_vec(kek.as_ref())
            .map_err(|e| RootError::token(OP, format!("AES-KWP: {e}")))?;
        Ok(Wrapped {
            scheme: Scheme::AesKwp,
            bytes,
        })
    }

    fn open_kek(&self, wrapped: &[u8]) -> Result<Box<dyn Kek>, RootError> {
        const OP: &str = "unwrap KEK";
        let delay = lock(&self.state).delay;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let root = lock(&self.state).usable(OP)?;
        let key = Zeroizing::new(
            kwp(&root)
                .unwrap_with_padding_vec(wrapped)
                .map_err(|_| RootError::token(OP, "the KEK does not unwrap under this root"))?,
        );
        let key: Zeroizing<[u8; 32]> = Zeroizing::new(
            key.as_slice()
                .try_into()
                .map_err(|_| RootError::token(OP, "the unwrapped KEK is not 32 bytes"))?,
        );
        let kek = MemoryKek::with_guard(&key, self.guard());
        lock(&self.state).keks.push(kek.cell());
        Ok(Box::new(kek))
    }

    fn export_kek(&self, wrapped: &[u8]) -> Result<ExportedKek, RootError> {
        const OP: &str = "export KEK";
        let root = lock(&self.state).usable(OP)?;
        let key = Zeroizing::new(
            kwp(&root)
                .unwrap_with_padding_vec(wrapped)
                .map_err(|_| RootError::token(OP, "the KEK does not unwrap under this root"))?,
        );
        ExportedKek::take(key, OP)
    }

    fn import_kek(&self, kek: &[u8]) -> Result<Wrapped, RootError> {
        const OP: &str = "import KEK";
        let kek = kek_bytes(kek, OP)?;
        let root = lock(&self.state).usable(OP)?;
        let bytes = kwp(&root)
            .wrap_with_padding_vec(kek.as_ref())
            .map_err(|e| RootError::token(OP, format!("AES-KWP: {e}")))?;
        Ok(Wrapped {
            scheme: Scheme::AesKwp,
            bytes,
        })
    }

    fn token_keypairs(&self) -> Option<&dyn TokenKeypairs> {
        Some(self)
    }
}

impl TokenKeypairs for MemoryRoot {
    fn generate(&self, label: &str) -> Result<TokenKeypair, RootError> {
        const OP: &str = "generate token keypair";
        let mut st = lock(&self.state);
        st.usable(OP)?;
        st.next_token_key += 1;
        let locator = format!("memory:object={label};id={}", st.next_token_key);
        let key = p256::SecretKey::random(&mut rand_core::OsRng);
        let public = key.public_key();
        st.token_keys.insert(locator.clone(), key);
        Ok(TokenKeypair {
            scheme: Scheme::Pkcs11Token,
            locator,
            public,
        })
    }

    fn sign(&self, locator: &str, digest: &[u8; 32]) -> Result<Vec<u8>, RootError> {
        const OP: &str = "sign with token key";
        let st = lock(&self.state);
        st.usable(OP)?;
        let key = st
            .token_keys
            .get(locator)
            .ok_or_else(|| RootError::token(OP, "no token key has this locator"))?;
        let sig: p256::ecdsa::Signature =
            p256::ecdsa::SigningKey::from(key)
                .sign_prehash(digest)
                .map_err(|e| RootError::token(OP, format!("ECDSA: {e}")))?;
        Ok(sig.to_bytes().to_vec())
    }

    fn delete(&self, locator: &str) -> Result<(), RootError> {
        const OP: &str = "delete token key";
        let mut st = lock(&self.state);
        st.usable(OP)?;
        st.token_keys.remove(locator);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(s: &str) -> Pin {
        Pin::new(s)
    }

    #[test]
    fn pin_is_checked_and_root_never_remade() {
        let r = MemoryRoot::new();
        assert!(matches!(
            r.unlock(&pin("1234"), &StoredRoot::default()),
            Err(RootError::RootMissing { .. })
        ));
        let made = r.init(&pin("1234")).unwrap();
        assert_eq!(made.scheme, Scheme::Memory);
        assert!(matches!(
            r.init(&pin("1234")),
            Err(RootError::RootExists { .. })
        ));
        let w = r.generate_kek().unwrap();
        assert_eq!(w.scheme, Scheme::AesKwp);
        let kek = r.open_kek(&w.bytes).unwrap();
        let dek = kek.generate_dek().unwrap();
        r.lock().unwrap();
        assert!(!r.is_unlocked());
        assert!(matches!(
            kek.export_dek(&dek.bytes),
            Err(RootError::Locked { .. })
        ));
        assert!(matches!(
            r.unlock(&pin("0000"), &StoredRoot::default()),
            Err(RootError::PinIncorrect {
                card_retries: None,
                ..
            })
        ));
        r.unlock(&pin("1234"), &StoredRoot::default()).unwrap();
        let kek = r.open_kek(&w.bytes).unwrap();
        assert_eq!(kek.export_dek(&dek.bytes).unwrap().len(), 32);
    }

    #[test]
    fn stale_until_recover_and_card_retries() {
        let r = MemoryRoot::with_card_retries(2);
        r.init(&pin("1234")).unwrap();
        let w = r.generate_kek().unwrap();
        let kek = r.open_kek(&w.bytes).unwrap();
        let steer = r.clone();
        steer.make_stale();
        assert!(matches!(r.generate_kek(), Err(RootError::Stale { .. })));
        assert!(matches!(kek.generate_dek(), Err(RootError::Stale { .. })));
        r.recover().unwrap();
        assert_eq!(steer.recoveries(), 1);
        kek.generate_dek().unwrap();

        r.lock().unwrap();
        let stored = StoredRoot::default();
        assert!(matches!(
            r.unlock(&pin("0000"), &stored),
            Err(RootError::PinIncorrect {
                card_retries: Some(1),
                ..
            })
        ));
        r.unlock(&pin("1234"), &stored).unwrap();
        for left in [1, 0] {
            assert!(matches!(
                r.unlock(&pin("0000"), &stored),
                Err(RootError::PinIncorrect { card_retries: Some(n), .. }) if n == left
            ));
        }
        assert!(matches!(
            r.unlock(&pin("1234"), &stored),
            Err(RootError::PinLocked { .. })
        ));
        steer.remove_root();
        assert!(matches!(
            r.unlock(&pin("1234"), &stored),
            Err(RootError::RootMissing { .. })
        ));
    }

    #[test]
    fn token_keypairs_sign_and_delete() {
        let r = MemoryRoot::new();
        r.init(&pin("1234")).unwrap();
        let tk = r.token_keypairs().unwrap();
        let made = tk.generate("k").unwrap();
        let sig = tk.sign(&made.locator, &[3u8; 32]).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        p256::ecdsa::VerifyingKey::from(&made.public)
            .verify_prehash(&[3u8; 32], &sig)
            .unwrap();
        tk.delete(&made.locator).unwrap();
        assert!(tk.sign(&made.locator, &[3u8; 32]).is_err());
    }
}
