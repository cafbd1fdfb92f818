//! The root an enrolled device runs on (`crate::devices`): the configured root, and, once the
//! device has been enrolled by another one, its **device key** in front of it.
//!
//! Every hierarchy's root is a [`DeviceRoot`]. Until [`DeviceRoot::set_device_key`] it is the
//! configured root, method for method (the first device of an identity, and every agent that is
//! not on a shared keystore). On a device enrolled by `device approve`, the agent's own root
//! record is the device's public-key root (`public-p256`, locator `public:device`): every KEK
//! is wrapped to the device key (`ecdh-p256`), by any device, with the public key alone. At its
//! unlock the configured root (the PIN) opens the device key ([`DeviceKey`]): a scalar kept
//! wrapped under that root in the device row, or a key on the root's token
//! (`Root::device_keys`); from then on KEKs are generated, opened, exported and imported with
//! the device key (`ecdh.rs`: in software for a scalar, ECDH in the token for a token key), and
//! everything else (PIN, lock, token keypairs) is still the configured root's.
//!
//! It must never hold the device scalar while locked, and never return it.

use super::ecdh;
use super::memory_kek::{kek_bytes, random_key, MemoryKek};
use super::{
    ExportedKek, Kek, Root, RootDestroyed, RootError, RootInit, Scheme, StoredRoot,
    TokenDeviceKeys, TokenKeypairs, Wrapped,
};
use keyward_proto::ops::RootKind;
use keyward_proto::secret::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The configured root, with the device key in front of it once one is set.
pub struct DeviceRoot {
    inner: Box<dyn Root>,
    /// Whether `key` is set (checked first, without the mutex, on every KEK operation).
    active: AtomicBool,
    key: Mutex<Option<DeviceKey>>,
    /// This device's own enrollment request while it waits (its id, and the nonce it committed
    /// to, until revealed). Forgotten at lock.
    pending: Mutex<Option<Pending>>,
}

/// The device key in front of the configured root.
pub enum DeviceKey {
    /// A scalar opened from the device row with the configured root (in memory while unlocked).
    Scalar(p256::SecretKey),
    /// A key pair on the configured root's token (`Root::device_keys`): its ECDH and signatures
    /// run in the token.
    Token {
        locator: String,
        public: p256::PublicKey,
    },
}

impl DeviceKey {
    /// Its public key.
    pub fn public(&self) -> p256::PublicKey {
        match self {
            DeviceKey::Scalar(k) => k.public_key(),
            DeviceKey::Token { public, .. } => *public,
        }
    }
}

/// ECDSA P-256 over SHA-256 of `msg` with a device key on a token, DER-encoded as device rows
/// keep it (the token answers raw r‖s).
pub fn token_sign(
    keys: &dyn TokenDeviceKeys,
    locator: &str,
    msg: &[u8],
) -> Result<Vec<u8>, RootError> {
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(msg).into();
    let raw = keys.device_sign(locator, &digest)?;
    let sig = p256::ecdsa::Signature::from_slice(&raw)
        .map_err(|_| RootError::token("sign with device key", "not a P-256 r‖s signature"))?;
    Ok(sig.to_der().as_bytes().to_vec())
}

/// A device's own enrollment request, while it is not enrolled.
#[derive(Clone)]
pub struct Pending {
    pub id: uuid::Uuid,
    pub nonce: Option<[u8; 32]>,
}

impl DeviceRoot {
    pub fn new(inner: Box<dyn Root>) -> DeviceRoot {
        DeviceRoot {
            inner,
            active: AtomicBool::new(false),
            key: Mutex::new(None),
            pending: Mutex::new(None),
        }
    }

    /// This device's pending request, if any.
    pub fn pending(&self) -> Option<Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_pending(&self, p: Option<Pending>) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    /// The configured root, for what only it does (opening the device key's scalar).
    pub fn configured(&self) -> &dyn Root {
        self.inner.as_ref()
    }

    /// Run on the device key from now until [`Root::lock`].
    pub fn set_device_key(&self, key: DeviceKey) {
        *self.key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
        self.active.store(true, Ordering::SeqCst);
    }

    /// Whether the device key is in front of the configured root.
    pub fn on_device_key(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Sign `msg` with the device key (ECDSA P-256 over SHA-256, DER), when it is set: in
    /// software, or in the token for a key on the token.
    pub fn sign_device(&self, msg: &[u8]) -> Option<Result<Vec<u8>, RootError>> {
        use p256::ecdsa::signature::Signer;
        let g = self.key.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref()? {
            DeviceKey::Scalar(k) => {
                let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(k).sign(msg);
                Some(Ok(sig.to_der().as_bytes().to_vec()))
            }
            DeviceKey::Token { locator, .. } => Some(match self.inner.device_keys() {
                Some(keys) => token_sign(keys, locator, msg),
                None => Err(no_device_keys("sign with device key")),
            }),
        }
    }

    fn with_key<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&DeviceKey) -> Result<T, RootError>,
    ) -> Result<T, RootError> {
        let g = self.key.lock().unwrap_or_else(|p| p.into_inner());
        let k = g.as_ref().ok_or(RootError::Locked { op })?;
        f(k)
    }

    fn open(
        &self,
        wrapped: &[u8],
        op: &'static str,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, RootError> {
        self.with_key(op, |k| match k {
            DeviceKey::Scalar(s) => {
                ecdh::unwrap(&s.public_key(), wrapped, |e| ecdh::software_ecdh(s, e))
            }
            DeviceKey::Token { locator, public } => {
                let keys = self.inner.device_keys().ok_or(no_device_keys(op))?;
                ecdh::unwrap(public, wrapped, |e| keys.device_ecdh(locator, e))
            }
        })
    }
}

/// A device row says its key is on the token, and the configured root keeps no keys there.
fn no_device_keys(op: &'static str) -> RootError {
    RootError::Unsupported {
        op,
        detail: "the device key is on a token, and the configured root keeps no device keys"
            .to_string(),
    }
}

impl Root for DeviceRoot {
    fn kind(&self) -> RootKind {
        self.inner.kind()
    }
    fn fast(&self) -> bool {
        self.inner.fast()
    }
    fn scheme(&self) -> Scheme {
        self.inner.scheme()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn token_serial(&self) -> Option<String> {
        self.inner.token_serial()
    }
    fn init(&self, pin: &Pin) -> Result<RootInit, RootError> {
        self.inner.init(pin)
    }
    fn unlock(&self, pin: &Pin, stored: &StoredRoot) -> Result<(), RootError> {
        self.inner.unlock(pin, stored)
    }
    fn lock(&self) -> Result<(), RootError> {
        self.active.store(false, Ordering::SeqCst);
        *self.key.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.set_pending(None);
        self.inner.lock()
    }
    fn is_unlocked(&self) -> bool {
        self.inner.is_unlocked()
    }
    fn recover(&self) -> Result<(), RootError> {
        self.inner.recover()
    }
    fn generate_kek(&self) -> Result<Wrapped, RootError> {
        if !self.on_device_key() {
            return self.inner.generate_kek();
        }
        let kek = random_key();
        self.import_kek(kek.as_ref())
    }
    fn open_kek(&self, wrapped: &[u8]) -> Result<Box<dyn Kek>, RootError> {
        if !self.on_device_key() {
            return self.inner.open_kek(wrapped);
        }
        let k = self.open(wrapped, "open KEK (device key)")?;
        Ok(Box::new(MemoryKek::new(&k)))
    }
    fn export_kek(&self, wrapped: &[u8]) -> Result<ExportedKek, RootError> {
        if !self.on_device_key() {
            return self.inner.export_kek(wrapped);
        }
        let k = self.open(wrapped, "export KEK (device key)")?;
        Ok(ExportedKek::new(&k))
    }
    fn import_kek(&self, kek: &[u8]) -> Result<Wrapped, RootError> {
        if !self.on_device_key() {
            return self.inner.import_kek(kek);
        }
        let kek = kek_bytes(kek, "import KEK (device key)")?;
        let public = self.with_key("import KEK (device key)", |k| Ok(k.public()))?;
        Ok(Wrapped {
            scheme: Scheme::EcdhP256,
            bytes: ecdh::wrap(&public, &kek)?,
        })
    }
    fn token_keypairs(&self) -> Option<&dyn TokenKeypairs> {
        self.inner.token_keypairs()
    }
    fn device_keys(&self) -> Option<&dyn TokenDeviceKeys> {
        self.inner.device_keys()
    }
    fn destroy_root(&self) -> Result<RootDestroyed, RootError> {
        self.inner.destroy_root()
    }
}

/// A shared root is a root (the hierarchy keeps its [`DeviceRoot`] behind an `Arc`, for the
/// device code, and as its `Box<dyn Root>`).
impl<T: Root + ?Sized> Root for std::sync::Arc<T> {
    fn kind(&self) -> RootKind {
        (**self).kind()
    }
    fn fast(&self) -> bool {
        (**self).fast()
    }
    fn scheme(&self) -> Scheme {
        (**self).scheme()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn init(&self, pin: &Pin) -> Result<RootInit, RootError> {
        (**self).init(pin)
    }
    fn unlock(&self, pin: &Pin, stored: &StoredRoot) -> Result<(), RootError> {
        (**self).unlock(pin, stored)
    }
    fn lock(&self) -> Result<(), RootError> {
        (**self).lock()
    }
    fn is_unlocked(&self) -> bool {
        (**self).is_unlocked()
    }
    fn recover(&self) -> Result<(), RootError> {
        (**self).recover()
    }
    fn generate_kek(&self) -> Result<Wrapped, RootError> {
        (**self).generate_kek()
    }
    fn open_kek(&self, wrapped: &[u8]) -> Result<Box<dyn Kek>, RootError> {
        (**self).open_kek(wrapped)
    }
    fn export_kek(&self, wrapped: &[u8]) -> Result<ExportedKek, RootError> {
        (**self).export_kek(wrapped)
    }
    fn import_kek(&self, kek: &[u8]) -> Result<Wrapped, RootError> {
        (**self).import_kek(kek)
    }
    fn token_keypairs(&self) -> Option<&dyn TokenKeypairs> {
        (**self).token_keypairs()
    }
    fn device_keys(&self) -> Option<&dyn TokenDeviceKeys> {
        (**self).device_keys()
    }
    fn token_serial(&self) -> Option<String> {
        (**self).token_serial()
    }
    fn destroy_root(&self) -> Result<RootDestroyed, RootError> {
        (**self).destroy_root()
    }
}
