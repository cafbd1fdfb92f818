//! The KEK of the AES root: an AES-256 key unwrapped (CKM_AES_KEY_WRAP_PAD) into a session object
//! of the anchor session (TOKEN=false, SENSITIVE, EXTRACTABLE=false), and DEKs under it, which
//! are generated, wrapped, unwrapped and used (CKM_AES_GCM) inside the token too.
//!
//! Only DEKs created exportable are ever read out, on `dek.export` (and 32-byte secrets such as
//! keypair scalars, for the moment they are used). This module must never make a KEK object
//! extractable, nor leave an extractable DEK object behind after an operation.
//!
//! For `encrypt`/`decrypt` (seal, open) a KEK keeps the DEKs it unwrapped as non-extractable,
//! sensitive session objects of the anchor session ([`DEK_OBJECTS`] at most, the least recently
//! used destroyed first), keyed by the wrapped bytes, so a request on a known DEK is one
//! `C_Encrypt`/`C_Decrypt` instead of `C_UnwrapKey` + the operation + `C_DestroyObject`. They go
//! with the KEK object: when the KEK is dropped (lock, idle lock, stale handles, KEK revoked or
//! rotated) each is destroyed, and `C_Logout` destroys them anyway. Whether a DEK may be used is
//! decided by the hierarchy before the token is asked (a revoked DEK's object is never used).

use super::conn::{lock, read_value, Sessions, TempKey};
use super::error::ck;
use crate::root::{Kek, RootError, Scheme, Wrapped};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// How many unwrapped DEK objects one KEK keeps in the token.
pub(super) const DEK_OBJECTS: usize = 64;

/// Wrapped DEK → (its unwrapped object in the anchor session, last use).
#[derive(Default)]
struct DekObjects {
    map: HashMap<Vec<u8>, (ObjectHandle, u64)>,
    clock: u64,
}

/// Every boolean attribute given (SoftHSM's defaults are permissive), never CKA_VALUE_LEN.
pub(super) fn secret_template(
    sensitive: bool,
    extractable: bool,
    wrap: bool,
    crypt: bool,
) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(sensitive),
        Attribute::Extractable(extractable),
        Attribute::Wrap(wrap),
        Attribute::Unwrap(wrap),
        Attribute::Encrypt(crypt),
        Attribute::Decrypt(crypt),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
    ]
}

/// Generate a 256-bit AES session key that may be wrapped out once, then wrap it.
pub(super) fn generate_wrapped(
    session: &Session,
    wrapping_key: ObjectHandle,
    op: &'static str,
) -> Result<Wrapped, RootError> {
    let mut t = secret_template(true, true, false, false);
    t.push(Attribute::ValueLen(32.into()));
    let key = TempKey {
        session,
        handle: session
            .generate_key(&Mechanism::AesKeyGen, &t)
            .map_err(ck(op, "C_GenerateKey"))?,
    };
    let bytes = session
        .wrap_key(&Mechanism::AesKeyWrapPad, wrapping_key, key.handle)
        .map_err(ck(op, "C_WrapKey"))?;
    Ok(Wrapped {
        scheme: Scheme::AesKwp,
        bytes,
    })
}

/// A KEK unwrapped into a session object of the anchor session.
pub(super) struct Pkcs11Kek {
    sessions: Arc<Sessions>,
    handle: ObjectHandle,
    deks: Mutex<DekObjects>,
}

impl Drop for Pkcs11Kek {
    fn drop(&mut self) {
        let deks = std::mem::take(&mut lock(&self.deks).map);
        if let Ok(anchor) = self.sessions.anchor("destroy KEK") {
            for (h, _) in deks.into_values() {
                let _ = anchor.destroy_object(h);
            }
            let _ = anchor.destroy_object(self.handle);
        }
    }
}

impl Pkcs11Kek {
    /// Unwrap a KEK under the root (in the anchor session, so it lives as long as the login).
    pub(super) fn unwrap(
        sessions: Arc<Sessions>,
        root: ObjectHandle,
        wrapped: &[u8],
        op: &'static str,
    ) -> Result<Pkcs11Kek, RootError> {
        let handle = sessions
            .anchor(op)?
            .unwrap_key(
                &Mechanism::AesKeyWrapPad,
                root,
                wrapped,
                &secret_template(true, false, true, false),
            )
            .map_err(ck(op, "C_UnwrapKey"))?;
        Ok(Pkcs11Kek {
            sessions,
            handle,
            deks: Mutex::default(),
        })
    }

    /// The kept object of DEK `dek` (wrapped), unwrapped into the anchor session on first use.
    fn dek_object(&self, dek: &[u8], op: &'static str) -> Result<ObjectHandle, RootError> {
        {
            let mut d = lock(&self.deks);
            d.clock += 1;
            let now = d.clock;
            if let Some((h, used)) = d.map.get_mut(dek) {
                *used = now;
                return Ok(*h);
            }
        }
        let anchor = self.sessions.anchor(op)?;
        let made = anchor
            .unwrap_key(
                &Mechanism::AesKeyWrapPad,
                self.handle,
                dek,
                &secret_template(true, false, false, true),
            )
            .map_err(ck(op, "C_UnwrapKey"))?;
        let (handle, surplus) = {
            let mut d = lock(&self.deks);
            d.clock += 1;
            let now = d.clock;
            if let Some((h, used)) = d.map.get_mut(dek) {
                // Another request unwrapped it meanwhile: keep theirs.
                *used = now;
                (*h, Some(made))
            } else {
                let evicted = if d.map.len() >= DEK_OBJECTS {
                    let old = d
                        .map
                        .iter()
                        .min_by_key(|(_, (_, used))| *used)
                        .map(|(k, _)| k.clone());
                    old.and_then(|k| d.map.remove(&k)).map(|(h, _)| h)
                } else {
                    None
                };
                d.map.insert(dek.to_vec(), (made, now));
                (made, evicted)
            }
        };
        if let Some(h) = surplus {
            let _ = anchor.destroy_object(h);
        }
        Ok(handle)
    }

    /// Forget (and destroy) the kept object `handle` of `dek`, after the token refused it.
    fn drop_dek_object(&self, dek: &[u8], handle: ObjectHandle) {
        let gone = {
            let mut d = lock(&self.deks);
            match d.map.get(dek) {
                Some((h, _)) if *h == handle => d.map.remove(dek),
                _ => None,
            }
        };
        if let (Some((h, _)), Ok(anchor)) = (gone, self.sessions.anchor("destroy DEK")) {
            let _ = anchor.destroy_object(h);
        }
    }

    /// Run `f` with the kept object of `dek`. A handle the token no longer knows (evicted and
    /// destroyed by another request between the lookup and the call) is dropped and `f` runs
    /// once more on a fresh object, rather than reporting the root stale.
    fn with_dek<T>(
        &self,
        dek: &[u8],
        op: &'static str,
        f: impl Fn(&Session, ObjectHandle) -> Result<T, CkError>,
        map: impl Fn(CkError) -> RootError,
    ) -> Result<T, RootError> {
        let handle = self.dek_object(dek, op)?;
        match self.sessions.with_session(op, |s| Ok(f(s, handle)))? {
            Ok(v) => Ok(v),
            Err(CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)) => {
                self.drop_dek_object(dek, handle);
                let handle = self.dek_object(dek, op)?;
                self.sessions
                    .with_session(op, |s| f(s, handle).map_err(&map))
            }
            Err(e) => Err(map(e)),
        }
    }

    fn unwrap_dek<'s>(
        &self,
        s: &'s Session,
        dek: &[u8],
        exportable: bool,
        op: &'static str,
    ) -> Result<TempKey<'s>, RootError> {
        let template = if exportable {
            secret_template(false, true, false, false)
        } else {
            secret_template(true, false, false, true)
        };
        let handle = s
            .unwrap_key(&Mechanism::AesKeyWrapPad, self.handle, dek, &template)
            .map_err(ck(op, "C_UnwrapKey"))?;
        Ok(TempKey { session: s, handle })
    }
}

impl Kek for Pkcs11Kek {
    fn generate_dek(&self) -> Result<Wrapped, RootError> {
        const OP: &str = "generate DEK";
        self.sessions
            .with_session(OP, |s| generate_wrapped(s, self.handle, OP))
    }

    fn seal(&self, dek: &[u8], iv: &[u8; 12], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, RootError> {
        const OP: &str = "encrypt";
        self.with_dek(
            dek,
            OP,
            |s, key| {
                let mut iv = *iv;
                let params = GcmParams::new(&mut iv, aad, 128.into())?;
                s.encrypt(&Mechanism::AesGcm(params), key, pt)
            },
            ck(OP, "C_Encrypt"),
        )
    }

    fn open(
        &self,
        dek: &[u8],
        iv: &[u8; 12],
        aad: &[u8],
        ct_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RootError> {
        const OP: &str = "decrypt";
        self.with_dek(
            dek,
            OP,
            |s, key| {
                let mut iv = *iv;
                let params = GcmParams::new(&mut iv, aad, 128.into())?;
                s.decrypt(&Mechanism::AesGcm(params), key, ct_tag)
                    .map(Zeroizing::new)
            },
            |e| match e {
                // SoftHSM reports a bad GCM tag as CKR_GENERAL_ERROR; others use
                // CKR_ENCRYPTED_DATA_INVALID.
                CkError::Pkcs11(
                    RvError::GeneralError
                    | RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange,
                    _,
                ) => RootError::DecryptFailed { op: OP },
                e => ck(OP, "C_Decrypt")(e),
            },
        )
    }

    fn export_dek(&self, dek: &[u8]) -> Result<Zeroizing<Vec<u8>>, RootError> {
        const OP: &str = "export DEK";
        self.sessions.with_session(OP, |s| {
            let key = self.unwrap_dek(s, dek, true, OP)?;
            read_value(s, key.handle, OP)
        })
    }

    fn wrap_secret(&self, secret: &[u8]) -> Result<Wrapped, RootError> {
        const OP: &str = "wrap secret";
        if secret.len() != 32 {
            return Err(RootError::Unsupported {
                op: OP,
                detail: format!("only 32-byte secrets are wrapped, not {}", secret.len()),
            });
        }
        // The secret enters the token as an extractable AES-256 session object just long enough
        // to be wrapped by the KEK (which never leaves the token), then it is destroyed. 32-byte
        // secrets only: SoftHSM's KWP is RFC 5649 exact for those (ARCHITECTURE.md).
        self.sessions.with_session(OP, |s| {
            let mut t = secret_template(true, true, false, false);
            t.push(Attribute::Value(secret.to_vec()));
            let key = TempKey {
                session: s,
                handle: s.create_object(&t).map_err(ck(OP, "C_CreateObject"))?,
            };
            let bytes = s
                .wrap_key(&Mechanism::AesKeyWrapPad, self.handle, key.handle)
                .map_err(ck(OP, "C_WrapKey"))?;
            Ok(Wrapped {
                scheme: Scheme::AesKwp,
                bytes,
            })
        })
    }
}
