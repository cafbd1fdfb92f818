//! The PKCS#11 AES root: an AES-256 key inside a token (HSM, smartcard, SoftHSM), token object,
//! SENSITIVE, EXTRACTABLE=false, WRAP/UNWRAP only. KEKs are generated in the token and wrapped by
//! it with CKM_AES_KEY_WRAP_PAD (scheme `aes-kwp`); opened KEKs are [`Pkcs11Kek`]s.
//!
//! This module must never create a root anywhere but in `init`, and never let KEK material out
//! of the token except through `export_kek` (the administrative operations of ARCHITECTURE.md
//! "Key lifecycle: when a KEK leaves the token"; never for a key operation).

use super::conn::{Connection, Sessions, TempKey};
use super::error::ck;
use super::kek::{generate_wrapped, secret_template, Pkcs11Kek};
use crate::root::memory_kek::kek_bytes;
use crate::root::{
    ExportedKek, Kek, Root, RootError, RootInit, Scheme, StoredRoot, TokenKeypairs, Wrapped,
};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use keyward_proto::ops::RootKind;
use keyward_proto::secret::Pin;
use std::collections::BTreeMap;
use zeroize::{Zeroize, Zeroizing};

/// A root that is an AES-256 key on a PKCS#11 token.
pub struct Pkcs11AesRoot {
    conn: Connection,
}

impl Pkcs11AesRoot {
    /// Set up the backend from a URI. `env` is applied before the module loads. The module is
    /// loaded and the token looked for now, but a missing token is not fatal: operations report
    /// `token_unavailable` and connect once it is there.
    pub fn new(uri: &str, env: &BTreeMap<String, String>) -> Result<Self, RootError> {
        Ok(Pkcs11AesRoot {
            conn: Connection::new(uri, env)?,
        })
    }

    /// What finds the root object: an AES token key with the root's label (and the URI's id).
    fn template(&self) -> Vec<Attribute> {
        let mut t = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Label(self.conn.label().as_bytes().to_vec()),
        ];
        if let Some(id) = self.conn.uri().id() {
            t.push(Attribute::Id(id.to_vec()));
        }
        t
    }
}

/// What a token answers when its policy refuses an extractable, non-sensitive copy of a key.
pub(super) fn refuses_extractable(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::TemplateInconsistent
                | RvError::AttributeValueInvalid
                | RvError::AttributeReadOnly
                | RvError::AttributeSensitive
                | RvError::KeyUnextractable,
            _
        )
    )
}

/// Nothing to check once the root object is found.
fn nothing_more(_: &Sessions, _: &'static str) -> Result<(), RootError> {
    Ok(())
}

impl Root for Pkcs11AesRoot {
    fn scheme(&self) -> crate::root::Scheme {
        crate::root::Scheme::Pkcs11Aes
    }

    fn kind(&self) -> RootKind {
        RootKind::Pkcs11
    }

    fn fast(&self) -> bool {
        self.conn.fast()
    }

    fn describe(&self) -> String {
        self.conn.describe("")
    }

    fn token_serial(&self) -> Option<String> {
        self.conn.token_serial()
    }

    fn init(&self, pin: &Pin) -> Result<RootInit, RootError> {
        const OP: &str = "init root";
        let s = self.conn.sessions(OP)?;
        self.conn.login(&s, pin, OP)?;
        if !self.conn.find(&s, &self.template(), OP)?.is_empty() {
            return Err(RootError::RootExists { op: OP });
        }
        let id = self.conn.new_root_id(&s, OP)?;
        let template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(self.conn.label().as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let root = s
            .anchor(OP)?
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(ck(OP, "C_GenerateKey"))?;
        self.conn.set_unlocked(&s, root, pin);
        Ok(RootInit {
            scheme: Scheme::Pkcs11Aes,
            locator: self.conn.root_locator(&s, &id, "type=secret-key", OP)?,
            check: None,
        })
    }

    fn unlock(&self, pin: &Pin, _stored: &StoredRoot) -> Result<(), RootError> {
        self.conn.unlock(pin, &self.template(), &nothing_more)
    }

    fn lock(&self) -> Result<(), RootError> {
        self.conn.lock()
    }

    fn is_unlocked(&self) -> bool {
        self.conn.is_unlocked()
    }

    fn recover(&self) -> Result<(), RootError> {
        self.conn.recover(&self.template(), &nothing_more)
    }

    fn generate_kek(&self) -> Result<Wrapped, RootError> {
        const OP: &str = "generate KEK";
        let s = self.conn.sessions(OP)?;
        let root = self.conn.root_of(&s, OP)?;
        s.with_session(OP, |session| generate_wrapped(session, root, OP))
    }

    fn open_kek(&self, wrapped: &[u8]) -> Result<Box<dyn Kek>, RootError> {
        const OP: &str = "unwrap KEK";
        let s = self.conn.sessions(OP)?;
        let root = self.conn.root_of(&s, OP)?;
        Ok(Box::new(Pkcs11Kek::unwrap(s, root, wrapped, OP)?))
    }

    /// A second unwrap of the KEK into its own session object of a worker session, with
    /// CKA_EXTRACTABLE=TRUE and CKA_SENSITIVE=FALSE, read (CKA_VALUE) into locked memory; the
    /// object is destroyed on every path ([`TempKey`]). A token that refuses the template, or
    /// forces the object sensitive or non-extractable, is `NotExtractable`.
    fn export_kek(&self, wrapped: &[u8]) -> Result<ExportedKek, RootError> {
        const OP: &str = "export KEK";
        let s = self.conn.sessions(OP)?;
        let root = self.conn.root_of(&s, OP)?;
        let refused = || RootError::NotExtractable {
            op: OP,
            root: self.conn.describe(""),
        };
        let value = s.with_session(OP, |session| {
            let handle = match session.unwrap_key(
                &Mechanism::AesKeyWrapPad,
                root,
                wrapped,
                &secret_template(false, true, false, false),
            ) {
                Ok(h) => h,
                Err(e) if refuses_extractable(&e) => return Err(refused()),
                Err(e) => return Err(ck(OP, "C_UnwrapKey")(e)),
            };
            let key = TempKey { session, handle };
            let flags = session
                .get_attributes(
                    key.handle,
                    &[AttributeType::Extractable, AttributeType::Sensitive],
                )
                .map_err(ck(OP, "C_GetAttributeValue"))?;
            let forced = flags.iter().any(|a| {
                matches!(
                    a,
                    Attribute::Extractable(false) | Attribute::Sensitive(true)
                )
            });
            if forced {
                return Err(refused());
            }
            match session.get_attributes(key.handle, &[AttributeType::Value]) {
                Err(e) if refuses_extractable(&e) => Err(refused()),
                Err(e) => Err(ck(OP, "C_GetAttributeValue")(e)),
                Ok(attrs) => {
                    let mut out = None;
                    for a in attrs {
                        if let Attribute::Value(v) = a {
                            out = Some(Zeroizing::new(v));
                        }
                    }
                    out.ok_or_else(|| RootError::token(OP, "the token returned no CKA_VALUE"))
                }
            }
        })?;
        ExportedKek::take(value, OP)
    }

    /// The KEK enters the token as an extractable AES-256 session object just long enough for
    /// the root to wrap it (CKM_AES_KEY_WRAP_PAD, what `generate_kek` makes), then it is
    /// destroyed.
    fn import_kek(&self, kek: &[u8]) -> Result<Wrapped, RootError> {
        const OP: &str = "import KEK";
        let kek = kek_bytes(kek, OP)?;
        let s = self.conn.sessions(OP)?;
        let root = self.conn.root_of(&s, OP)?;
        s.with_session(OP, |session| {
            let mut t = secret_template(true, true, false, false);
            t.push(Attribute::Value(kek.to_vec()));
            let created = session.create_object(&t);
            for a in &mut t {
                if let Attribute::Value(v) = a {
                    v.zeroize();
                }
            }
            let key = TempKey {
                session,
                handle: created.map_err(ck(OP, "C_CreateObject"))?,
            };
            let bytes = session
                .wrap_key(&Mechanism::AesKeyWrapPad, root, key.handle)
                .map_err(ck(OP, "C_WrapKey"))?;
            Ok(Wrapped {
                scheme: Scheme::AesKwp,
                bytes,
            })
        })
    }

    fn destroy_root(&self) -> Result<crate::root::RootDestroyed, RootError> {
        let n = self
            .conn
            .destroy_objects(&[self.template()], "destroy root")?;
        Ok(crate::root::RootDestroyed::Destroyed(format!(
            "{n} AES root object(s) labelled `{}` on {}",
            self.conn.label(),
            self.conn.describe("")
        )))
    }

    fn token_keypairs(&self) -> Option<&dyn TokenKeypairs> {
        Some(&self.conn)
    }

    fn device_keys(&self) -> Option<&dyn crate::root::TokenDeviceKeys> {
        Some(&self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;
    use keyward_proto::ErrorCode;

    #[test]
    fn a_token_refusing_extractable_unwrap_is_not_extractable() {
        for rv in [
            RvError::TemplateInconsistent,
            RvError::AttributeValueInvalid,
            RvError::AttributeSensitive,
            RvError::KeyUnextractable,
        ] {
            assert!(refuses_extractable(&CkError::Pkcs11(
                rv,
                Function::UnwrapKey
            )));
        }
        for rv in [RvError::GeneralError, RvError::SessionHandleInvalid] {
            assert!(!refuses_extractable(&CkError::Pkcs11(
                rv,
                Function::UnwrapKey
            )));
        }
        let e = RootError::NotExtractable {
            op: "export KEK",
            root: "PKCS#11 token `hsm`".into(),
        };
        assert_eq!(e.code(), ErrorCode::NotExportable);
        let m = e.to_string();
        assert!(
            m.starts_with("export KEK: the root PKCS#11 token `hsm` refuses"),
            "{m}"
        );
        assert!(m.contains("another enrolled root"), "{m}");
    }
}
