//! Data keys for streaming encryption (`datakey.create`, `datakey.open`), as Vault Transit's
//! `datakey` and AWS KMS's `GenerateDataKey`: the agent makes a random 256-bit key and returns
//! it in plaintext and wrapped under a DEK; the client encrypts locally (the streaming format of
//! `keyward_envelope::stream`) and keeps only the wrapped key, which the agent opens later.
//!
//! The wrapping is AES-256-GCM with the DEK wherever its KEK keeps it (inside the token on
//! PKCS#11 roots: `Kek::seal`/`Kek::open` with the wrapped DEK, as `Hierarchy::encrypt`), a
//! random 12-byte IV, and an AAD binding the purpose, the DEK id and the DEK version:
//! `"keyward datakey v1" ‖ DEK id (16 bytes) ‖ version (u32 BE)`. Wrapped form: IV ‖ ciphertext
//! ‖ tag (60 bytes).
//!
//! Policy follows `encrypt` and `decrypt`: `datakey.create` needs an active DEK and wraps under
//! its newest version (named in the result and in the stream header); `datakey.open` works with
//! an active or retired DEK, never a revoked one, and with the version the stream names, unless
//! that version is below the DEK's minimum (`version_retired`). This module must never return a data
//! key except to the caller of these two operations, never log one, and never keep one after the
//! call (they live in `Zeroizing` buffers).

use crate::error::{AgentError, Problem};
use crate::hierarchy::Hierarchy;
use crate::keystore::{KeyKind, KeyRecord, KeyState};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

/// The AAD's purpose label.
pub const DATAKEY_PURPOSE: &[u8] = b"keyward datakey v1";
/// Data key length (AES-256).
pub const DATAKEY_LEN: usize = 32;
/// Wrapped length: IV (12) ‖ ciphertext (32) ‖ tag (16).
pub const WRAPPED_LEN: usize = 12 + DATAKEY_LEN + 16;

fn aad(dek: &KeyRecord, version: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(DATAKEY_PURPOSE.len() + 20);
    a.extend_from_slice(DATAKEY_PURPOSE);
    a.extend_from_slice(dek.id.as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a
}

/// A data key made by [`Hierarchy::datakey_create`].
pub struct NewDataKey {
    pub dek: uuid::Uuid,
    pub version: u32,
    pub key: Zeroizing<Vec<u8>>,
    pub wrapped: Vec<u8>,
}

impl Hierarchy {
    /// A fresh data key under an active DEK, in plaintext and wrapped.
    pub fn datakey_create(&self, dek_id: &str) -> Result<NewDataKey, AgentError> {
        let (dek, kek) = self.active_dek("datakey.create", dek_id)?;
        let (version, wrapped_dek) = self.dek_newest(&dek)?;
        let wrapped_dek = &wrapped_dek[..];
        let mut key = Zeroizing::new(vec![0u8; DATAKEY_LEN]);
        OsRng.fill_bytes(&mut key);
        let mut iv = [0u8; 12];
        OsRng.fill_bytes(&mut iv);
        let aad = aad(&dek, version);
        let sealed = self
            .with_recovery(|| Ok(self.kek_handle(&kek)?.seal(wrapped_dek, &iv, &aad, &key)?))?;
        if sealed.len() != DATAKEY_LEN + 16 {
            return Err(AgentError::Internal(
                crate::error::Internal::ShortGcmOutput {
                    op: "datakey.create",
                    len: sealed.len(),
                },
            ));
        }
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.extend_from_slice(&iv);
        wrapped.extend_from_slice(&sealed);
        Ok(NewDataKey {
            dek: dek.id,
            version,
            key,
            wrapped,
        })
    }

    /// Unwrap a data key made under `dek_id` at `version`; the DEK may be active or retired.
    pub fn datakey_open(
        &self,
        dek_id: &str,
        version: u32,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        if wrapped.len() != WRAPPED_LEN {
            return Err(AgentError::invalid(
                "wrapped",
                Problem::Length {
                    expected: WRAPPED_LEN,
                },
            ));
        }
        self.require_unlocked("datakey.open")?;
        let dek = self.record_for_use(dek_id, KeyKind::Dek)?;
        // A retired DEK still opens what it wrapped; a revoked one does nothing.
        if dek.state == KeyState::Revoked {
            return Err(AgentError::KeyInactive {
                kind: dek.kind,
                id: dek.id,
                state: dek.state,
            });
        }
        let kek = self.parent_kek_for_use(&dek)?;
        self.permit(&dek, crate::limits::Usage::Decrypt)?;
        // The version must exist (`decrypt_failed`) and not be retired (`version_retired`).
        let wrapped_dek = self.dek_version_for_open(&dek, version)?;
        let wrapped_dek = &wrapped_dek[..];
        let (iv, ct_tag) = wrapped.split_at(12);
        let iv: &[u8; 12] = iv.try_into().map_err(|_| {
            AgentError::invalid(
                "wrapped",
                Problem::Length {
                    expected: WRAPPED_LEN,
                },
            )
        })?;
        let aad = aad(&dek, version);
        let key = self
            .with_recovery(|| Ok(self.kek_handle(&kek)?.open(wrapped_dek, iv, &aad, ct_tag)?))?;
        if key.len() != DATAKEY_LEN {
            return Err(AgentError::invalid(
                "wrapped",
                Problem::KeyLength {
                    len: key.len(),
                    expected: DATAKEY_LEN,
                },
            ));
        }
        Ok(key)
    }
}
