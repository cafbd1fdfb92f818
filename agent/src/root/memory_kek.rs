//! A KEK held in agent memory, for roots that cannot keep it inside hardware: the soft root
//! (`pbkdf2`), and the `ecdh-p256` roots (YubiKey PIV, EC-only PKCS#11 tokens), whose hardware
//! only does the ECDH half of the unwrap.
//!
//! DEKs under it are AES-KWP (RFC 5649, the `aes-kw` crate: the same bytes a token's
//! CKM_AES_KEY_WRAP_PAD makes for 32-byte keys) and data is AES-256-GCM through
//! `keyward_envelope::aes256gcm`.
//!
//! Memory: the 32 key bytes live on a page of their own inside a heap buffer, and that page is
//! `mlock`ed (through the `region` crate's safe API; this crate forbids `unsafe`), so it is not
//! swapped out. When the lock cannot be taken (RLIMIT_MEMLOCK exhausted) the key still works and a
//! warning is logged once. The buffer is zeroized before it is freed. Transient copies (the AES key
//! schedule inside `aes-kw`, zeroized on drop through the `aes` crate's `zeroize` feature; an
//! unwrapped DEK, in `Zeroizing`) live for the length of one operation; they are not locked. Core dumps are disabled for the whole process.
//!
//! A root may attach a *guard* (checked before every use: e.g. "is the card still there?") and
//! may *wipe* a KEK it handed out ([`KekCell::wipe`]), e.g. when the card is removed: after that
//! every use fails with `Locked`. This module must never log or return the KEK itself.

use super::{Kek, RootError, Scheme, Wrapped};
use keyward_envelope::aes256gcm;
use rand_core::{OsRng, RngCore};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use zeroize::{Zeroize, Zeroizing};

type Key = Zeroizing<[u8; 32]>;

/// Checked before each use of a KEK; an error is returned as the operation's error.
pub(crate) type Guard = Arc<dyn Fn(&'static str) -> Result<(), RootError> + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh random AES-256 key.
pub(crate) fn random_key() -> Key {
    let mut k = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(k.as_mut());
    k
}

static MLOCK_WARNED: AtomicBool = AtomicBool::new(false);

/// 32 key bytes at the start of a page that nothing else shares, locked into RAM if possible.
struct LockedKey {
    /// Dropped before `buf` (declaration order): munlock, then free.
    _lock: Option<region::LockGuard>,
    buf: Box<[u8]>,
    offset: usize,
}

impl LockedKey {
    fn new(key: &[u8; 32]) -> LockedKey {
        let page = region::page::size();
        // Two pages hold one whole page-aligned page whatever the allocation's alignment.
        let mut buf = vec![0u8; 2 * page].into_boxed_slice();
        let start = buf.as_ptr() as usize;
        let offset = region::page::ceil(buf.as_ptr()) as usize - start;
        buf[offset..offset + 32].copy_from_slice(key);
        let lock = match region::lock(buf[offset..].as_ptr(), 32) {
            Ok(g) => Some(g),
            Err(e) => {
                if !MLOCK_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "could not mlock KEK memory (RLIMIT_MEMLOCK?); KEKs may be swapped out");
                }
                None
            }
        };
        LockedKey {
            _lock: lock,
            buf,
            offset,
        }
    }

    fn key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(&self.buf[self.offset..self.offset + 32]);
        k
    }
}

/// KEK material taken out of a root to be wrapped under another root (ARCHITECTURE.md, "Key
/// lifecycle: when a KEK leaves the token"): 32 bytes on a page of their own, `mlock`ed where the
/// limit allows, zeroized and unlocked when dropped. It has no `Clone` and its `Debug` shows no
/// key; the only way to the bytes is [`ExportedKek::expose`], for the wrapping.
pub struct ExportedKek(LockedKey);

impl ExportedKek {
    pub(crate) fn new(key: &[u8; 32]) -> ExportedKek {
        ExportedKek(LockedKey::new(key))
    }

    /// Take token output (a `CKA_VALUE`, an unwrapped plaintext) into locked memory, zeroizing
    /// the given copy; it must be 32 bytes.
    pub(crate) fn take(
        mut v: Zeroizing<Vec<u8>>,
        op: &'static str,
    ) -> Result<ExportedKek, RootError> {
        let key: Result<&[u8; 32], _> = v.as_slice().try_into();
        let out = match key {
            Ok(k) => Ok(ExportedKek::new(k)),
            Err(_) => Err(RootError::token(
                op,
                format!("the KEK is {} bytes, not 32", v.len()),
            )),
        };
        v.zeroize();
        out
    }

    /// The 32 key bytes, for wrapping them under another root.
    pub fn expose(&self) -> &[u8] {
        &self.0.buf[self.0.offset..self.0.offset + 32]
    }
}

impl std::fmt::Debug for ExportedKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportedKek(32 bytes, not shown)")
    }
}

/// The 32-byte KEK given to `import_kek`, or `Unsupported` naming `op`.
pub(crate) fn kek_bytes(kek: &[u8], op: &'static str) -> Result<Zeroizing<[u8; 32]>, RootError> {
    let k: &[u8; 32] = kek.try_into().map_err(|_| RootError::Unsupported {
        op,
        detail: format!("a KEK is 32 bytes, not {}", kek.len()),
    })?;
    Ok(Zeroizing::new(*k))
}

impl Drop for LockedKey {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// Where a [`MemoryKek`]'s key lives; the root that made it may keep a [`Weak`] to wipe it.
pub(crate) struct KekCell(Mutex<Option<LockedKey>>);

impl KekCell {
    /// Zeroize and forget the key now; later uses of the KEK fail with `Locked`.
    pub(crate) fn wipe(&self) {
        *lock(&self.0) = None;
    }
}

/// An unwrapped KEK in agent memory (zeroized on drop or wipe).
pub(crate) struct MemoryKek {
    cell: Arc<KekCell>,
    guard: Option<Guard>,
}

impl MemoryKek {
    pub(crate) fn new(key: &[u8; 32]) -> MemoryKek {
        MemoryKek {
            cell: Arc::new(KekCell(Mutex::new(Some(LockedKey::new(key))))),
            guard: None,
        }
    }

    /// With a check run before every use.
    pub(crate) fn with_guard(key: &[u8; 32], guard: Guard) -> MemoryKek {
        MemoryKek {
            guard: Some(guard),
            ..MemoryKek::new(key)
        }
    }

    /// A handle the root may keep to wipe this KEK later.
    pub(crate) fn cell(&self) -> Weak<KekCell> {
        Arc::downgrade(&self.cell)
    }

    /// Run `f` with the AES-KW cipher of this KEK, after the guard.
    fn with_kw<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&aes_kw::KekAes256) -> Result<T, RootError>,
    ) -> Result<T, RootError> {
        if let Some(g) = &self.guard {
            g(op)?;
        }
        let mut key = {
            let cell = lock(&self.cell.0);
            cell.as_ref().ok_or(RootError::Locked { op })?.key()
        };
        let kw = aes_kw::KekAes256::from(key);
        key.zeroize();
        f(&kw)
    }

    fn unwrap_dek(&self, dek: &[u8], op: &'static str) -> Result<Key, RootError> {
        let v = self.with_kw(op, |kw| {
            kw.unwrap_with_padding_vec(dek)
                .map(Zeroizing::new)
                .map_err(|_| RootError::token(op, "the wrapped DEK does not unwrap under its KEK"))
        })?;
        let k: [u8; 32] = v
            .as_slice()
            .try_into()
            .map_err(|_| RootError::token(op, "the unwrapped DEK is not 32 bytes"))?;
        Ok(Zeroizing::new(k))
    }
}

impl Kek for MemoryKek {
    fn generate_dek(&self) -> Result<Wrapped, RootError> {
        const OP: &str = "generate DEK";
        let dek = random_key();
        let bytes = self.with_kw(OP, |kw| {
            kw.wrap_with_padding_vec(dek.as_ref())
                .map_err(|e| RootError::token(OP, e.to_string()))
        })?;
        Ok(Wrapped {
            scheme: Scheme::AesKwp,
            bytes,
        })
    }

    fn seal(&self, dek: &[u8], iv: &[u8; 12], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, RootError> {
        const OP: &str = "encrypt";
        let key = self.unwrap_dek(dek, OP)?;
        let (mut ct, tag) = aes256gcm::seal(&key, iv, aad, pt)
            .map_err(|e| RootError::crypto(OP, "aes256gcm::seal", e))?;
        ct.extend_from_slice(&tag);
        Ok(ct)
    }

    fn open(
        &self,
        dek: &[u8],
        iv: &[u8; 12],
        aad: &[u8],
        ct_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RootError> {
        const OP: &str = "decrypt";
        let key = self.unwrap_dek(dek, OP)?;
        let split = ct_tag
            .len()
            .checked_sub(16)
            .ok_or(RootError::DecryptFailed { op: OP })?;
        let (ct, tag) = ct_tag.split_at(split);
        let tag: [u8; 16] = tag
            .try_into()
            .map_err(|_| RootError::DecryptFailed { op: OP })?;
        aes256gcm::open(&key, iv, aad, ct, &tag).map_err(|_| RootError::DecryptFailed { op: OP })
    }

    fn export_dek(&self, dek: &[u8]) -> Result<Zeroizing<Vec<u8>>, RootError> {
        Ok(Zeroizing::new(self.unwrap_dek(dek, "export DEK")?.to_vec()))
    }

    fn wrap_secret(&self, secret: &[u8]) -> Result<Wrapped, RootError> {
        const OP: &str = "wrap secret";
        if secret.len() != 32 {
            return Err(RootError::Unsupported {
                op: OP,
                detail: format!("only 32-byte secrets are wrapped, not {}", secret.len()),
            });
        }
        let bytes = self.with_kw(OP, |kw| {
            kw.wrap_with_padding_vec(secret)
                .map_err(|e| RootError::token(OP, e.to_string()))
        })?;
        Ok(Wrapped {
            scheme: Scheme::AesKwp,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_wipe_and_guard() {
        let k = MemoryKek::new(&[7u8; 32]);
        let dek = k.generate_dek().unwrap();
        assert_eq!(dek.bytes.len(), 40);
        let sealed = k.seal(&dek.bytes, &[1; 12], b"ad", b"hello").unwrap();
        assert_eq!(
            &*k.open(&dek.bytes, &[1; 12], b"ad", &sealed).unwrap(),
            b"hello"
        );
        assert!(matches!(
            k.open(&dek.bytes, &[1; 12], b"other", &sealed),
            Err(RootError::DecryptFailed { .. })
        ));
        k.cell().upgrade().unwrap().wipe();
        assert!(matches!(
            k.open(&dek.bytes, &[1; 12], b"ad", &sealed),
            Err(RootError::Locked { .. })
        ));

        let g: Guard = Arc::new(|op| Err(RootError::unavailable(op, "gone")));
        let k = MemoryKek::with_guard(&[7u8; 32], g);
        assert!(matches!(
            k.export_dek(&dek.bytes),
            Err(RootError::Unavailable { .. })
        ));
    }

    #[test]
    fn key_sits_on_its_own_page() {
        let l = LockedKey::new(&[9u8; 32]);
        let addr = l.buf.as_ptr() as usize + l.offset;
        assert_eq!(addr % region::page::size(), 0);
        assert!(l.offset + region::page::size() <= l.buf.len());
        assert_eq!(l.key(), [9u8; 32]);
    }
}
