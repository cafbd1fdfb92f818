//! The soft root: no hardware; the MEK is derived from a passphrase (scheme `pbkdf2`).
//!
//! MEK = PBKDF2-HMAC-SHA256(passphrase, 20-byte salt, >= 600,000 iterations), as in Meeco's
//! passphrase-based key management. The root record keeps the salt and count as a 2-part Cryppo
//! derivation string and a check value (a Cryppo string under the MEK) that tells a wrong
//! passphrase from a right one. Each KEK is stored as a 5-part Cryppo `Aes256Gcm` string under the
//! MEK carrying the same derivation artefacts, the way Meeco's keystore stores its KEK. DEKs under
//! a KEK are AES-KWP (RFC 5649) with the `aes-kw` crate: the same bytes a token produces.
//!
//! Unlike the PKCS#11 root, key material is in agent memory here (zeroized on drop; the KEK in a
//! `MemoryKek`, see `memory_kek.rs`): this backend
//! exists for machines without hardware. It must never store the passphrase or the MEK.

use super::memory_kek::{kek_bytes, random_key, ExportedKek, MemoryKek};
use super::{Kek, Root, RootError, RootInit, Scheme, StoredRoot, Wrapped};
use keyward_envelope::{aes256gcm, pbkdf2, EncryptedData, Serialized};
use keyward_proto::secret::Pin;
use std::sync::{Mutex, MutexGuard};
use zeroize::Zeroizing;

/// The least PBKDF2 count the agent accepts (OWASP 2023 for PBKDF2-HMAC-SHA256).
pub const MIN_ITERATIONS: u32 = 600_000;
const CHECK_AD: &str = "keyward:soft-root:check";
const CHECK_PLAINTEXT: &[u8] = b"keyward soft root v1";
const KEK_AD: &str = "keyward:kek";

type Key = Zeroizing<[u8; 32]>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn env_err(op: &'static str, call: &'static str) -> impl Fn(keyward_envelope::Error) -> RootError {
    move |e| RootError::crypto(op, call, e)
}

/// The passphrase root backend.
pub struct SoftRoot {
    iterations: u32,
    /// The MEK and its derivation artefacts while unlocked.
    mek: Mutex<Option<(Key, keyward_envelope::DerivationArtefacts)>>,
}

impl SoftRoot {
    pub fn new(iterations: u32) -> Result<Self, RootError> {
        if iterations < MIN_ITERATIONS {
            return Err(RootError::Config(format!(
                "soft root: iterations {iterations} is below the minimum {MIN_ITERATIONS}"
            )));
        }
        Ok(SoftRoot {
            iterations,
            mek: Mutex::new(None),
        })
    }

    fn mek(
        &self,
        op: &'static str,
    ) -> Result<(Key, keyward_envelope::DerivationArtefacts), RootError> {
        lock(&self.mek)
            .as_ref()
            .map(|(k, a)| (k.clone(), a.clone()))
            .ok_or(RootError::Locked { op })
    }
}

impl Root for SoftRoot {
    fn scheme(&self) -> crate::root::Scheme {
        crate::root::Scheme::Pbkdf2
    }

    fn kind(&self) -> keyward_proto::ops::RootKind {
        keyward_proto::ops::RootKind::Soft
    }

    fn fast(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "soft root: passphrase, PBKDF2-HMAC-SHA256 x {} (no hardware)",
            self.iterations
        )
    }

    fn init(&self, pin: &Pin) -> Result<RootInit, RootError> {
        const OP: &str = "init soft root";
        let (mek, artefacts) = pbkdf2::derive_new_key(pin.expose(), self.iterations)
            .map_err(env_err(OP, "pbkdf2::derive_new_key"))?;
        let check = aes256gcm::encrypt(&mek, CHECK_PLAINTEXT, CHECK_AD)
            .map_err(env_err(OP, "aes256gcm::encrypt"))?;
        let locator = artefacts.to_string();
        *lock(&self.mek) = Some((mek, artefacts));
        Ok(RootInit {
            scheme: Scheme::Pbkdf2,
            locator,
            check: Some(check.into_bytes()),
        })
    }

    fn unlock(&self, pin: &Pin, stored: &StoredRoot) -> Result<(), RootError> {
        const OP: &str = "unlock soft root";
        let corrupt =
            |what: &str| RootError::token(OP, format!("the root record's {what} is unreadable"));
        let artefacts = match stored.locator.as_deref().map(Serialized::parse) {
            Some(Ok(Serialized::DerivedKey(a))) => a,
            _ => return Err(corrupt("derivation artefacts")),
        };
        let check = stored
            .check
            .as_deref()
            .and_then(|c| std::str::from_utf8(c).ok())
            .ok_or_else(|| corrupt("check value"))?;
        let mek = pbkdf2::derive_key_from(pin.expose(), &artefacts)
            .map_err(env_err(OP, "pbkdf2::derive_key_from"))?;
        match aes256gcm::decrypt_with_key(check, &mek) {
            Ok(pt) if pt.as_slice() == CHECK_PLAINTEXT => {}
            _ => {
                return Err(RootError::PinIncorrect {
                    op: OP,
                    card_retries: None,
                })
            }
        }
        *lock(&self.mek) = Some((mek, artefacts));
        Ok(())
    }

    fn destroy_root(&self) -> Result<crate::root::RootDestroyed, RootError> {
        Ok(crate::root::RootDestroyed::Nothing)
    }

    fn lock(&self) -> Result<(), RootError> {
        *lock(&self.mek) = None;
        Ok(())
    }

    fn is_unlocked(&self) -> bool {
        lock(&self.mek).is_some()
    }

    fn recover(&self) -> Result<(), RootError> {
        // Nothing can go stale in memory.
        Ok(())
    }

    fn generate_kek(&self) -> Result<Wrapped, RootError> {
        self.wrap_kek(&random_key(), "generate KEK")
    }

    fn open_kek(&self, wrapped: &[u8]) -> Result<Box<dyn Kek>, RootError> {
        let key = self.unwrap_kek(wrapped, "unwrap KEK")?;
        Ok(Box::new(MemoryKek::new(&key)))
    }

    fn export_kek(&self, wrapped: &[u8]) -> Result<ExportedKek, RootError> {
        let key = self.unwrap_kek(wrapped, "export KEK")?;
        Ok(ExportedKek::new(&key))
    }

    fn import_kek(&self, kek: &[u8]) -> Result<Wrapped, RootError> {
        const OP: &str = "import KEK";
        self.wrap_kek(&kek_bytes(kek, OP)?, OP)
    }
}

impl SoftRoot {
    /// A KEK as the soft root stores it: a Cryppo `Aes256Gcm` string under the MEK carrying the
    /// derivation artefacts.
    fn wrap_kek(&self, kek: &Key, op: &'static str) -> Result<Wrapped, RootError> {
        let (mek, artefacts) = self.mek(op)?;
        let data = aes256gcm::encrypt_data(&mek, kek.as_ref(), KEK_AD)
            .map_err(env_err(op, "aes256gcm::encrypt_data"))?;
        let with_derivation = EncryptedData::new(
            data.strategy(),
            data.ciphertext().to_vec(),
            data.artefacts().clone(),
            Some(artefacts),
        )
        .map_err(env_err(op, "EncryptedData::new"))?;
        Ok(Wrapped {
            scheme: Scheme::Pbkdf2,
            bytes: with_derivation.to_string().into_bytes(),
        })
    }

    fn unwrap_kek(&self, wrapped: &[u8], op: &'static str) -> Result<Key, RootError> {
        let (mek, _) = self.mek(op)?;
        let text = std::str::from_utf8(wrapped)
            .map_err(|_| RootError::token(op, "the wrapped KEK is not a Cryppo string"))?;
        let pt =
            aes256gcm::decrypt_with_key(text, &mek).map_err(|_| RootError::DecryptFailed { op })?;
        let key: [u8; 32] = pt
            .as_slice()
            .try_into()
            .map_err(|_| RootError::token(op, "the unwrapped KEK is not 32 bytes"))?;
        Ok(Zeroizing::new(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_passphrase_is_pin_incorrect_and_right_one_unlocks() {
        let r = SoftRoot::new(MIN_ITERATIONS).unwrap();
        let made = r.init(&Pin::new("correct horse")).unwrap();
        let stored = StoredRoot {
            locator: Some(made.locator.clone()),
            check: made.check.clone(),
        };
        assert!(made.locator.starts_with("Pbkdf2Hmac."));
        let kek = r.generate_kek().unwrap();
        assert!(std::str::from_utf8(&kek.bytes)
            .unwrap()
            .contains(".Pbkdf2Hmac."));
        r.lock().unwrap();
        assert!(matches!(
            r.unlock(&Pin::new("wrong"), &stored),
            Err(RootError::PinIncorrect { .. })
        ));
        assert!(!r.is_unlocked());
        r.unlock(&Pin::new("correct horse"), &stored).unwrap();
        let k = r.open_kek(&kek.bytes).unwrap();
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
    }

    #[test]
    fn kwp_matches_rfc5649_for_the_token_path() {
        // RFC 5649 section 6, 20-octet example, KEK 5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8.
        let kek = hex::decode("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8").unwrap();
        let kw = aes_kw::KekAes192::try_from(kek.as_slice()).unwrap();
        let wrapped = kw
            .wrap_with_padding_vec(
                &hex::decode("c37b7e6492584340bed12207808941155068f738").unwrap(),
            )
            .unwrap();
        assert_eq!(
            hex::encode(wrapped),
            "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"
        );
    }

    #[test]
    fn too_few_iterations_are_refused() {
        assert!(matches!(SoftRoot::new(1000), Err(RootError::Config(_))));
    }
}
