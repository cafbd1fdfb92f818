//! The KEK of the AES root: an AES-256 key unwrapped (CKM_AES_KEY_WRAP_PAD) into a session object
//! of the anchor session (TOKEN=false, SENSITIVE, EXTRACTABLE=false), and DEKs under it, which
//! are generated, wrapped, unwrapped and used (CKM_AES_GCM) inside the token too.
//!
//! Only DEKs created exportable are ever read out, on `dek.export` (and 32-byte secrets such as
//! keypair scalars, for the moment they are used). This module must never make a KEK object
//! extractable, nor leave an unwrapped DEK object behind after an operation.

use super::conn::{read_value, Sessions, TempKey};
use super::error::ck;
use crate::root::{Kek, RootError, Scheme, Wrapped};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::sync::Arc;
use zeroize::Zeroizing;

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
}

impl Drop for Pkcs11Kek {
    fn drop(&mut self) {
        if let Ok(anchor) = self.sessions.anchor("destroy KEK") {
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
        Ok(Pkcs11Kek { sessions, handle })
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
        self.sessions.with_session(OP, |s| {
            let key = self.unwrap_dek(s, dek, false, OP)?;
            let mut iv = *iv;
            let params =
                GcmParams::new(&mut iv, aad, 128.into()).map_err(ck(OP, "CK_GCM_PARAMS"))?;
            s.encrypt(&Mechanism::AesGcm(params), key.handle, pt)
                .map_err(ck(OP, "C_Encrypt"))
        })
    }

    fn open(
        &self,
        dek: &[u8],
        iv: &[u8; 12],
        aad: &[u8],
        ct_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RootError> {
        const OP: &str = "decrypt";
        self.sessions.with_session(OP, |s| {
            let key = self.unwrap_dek(s, dek, false, OP)?;
            let mut iv = *iv;
            let params =
                GcmParams::new(&mut iv, aad, 128.into()).map_err(ck(OP, "CK_GCM_PARAMS"))?;
            match s.decrypt(&Mechanism::AesGcm(params), key.handle, ct_tag) {
                Ok(pt) => Ok(Zeroizing::new(pt)),
                // SoftHSM reports a bad GCM tag as CKR_GENERAL_ERROR; others use
                // CKR_ENCRYPTED_DATA_INVALID.
                Err(CkError::Pkcs11(
                    RvError::GeneralError
                    | RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange,
                    _,
                )) => Err(RootError::DecryptFailed { op: OP }),
                Err(e) => Err(ck(OP, "C_Decrypt")(e)),
            }
        })
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
