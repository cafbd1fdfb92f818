//! The PKCS#11 AES root: an AES-256 key inside a token (HSM, smartcard, SoftHSM), token object,
//! SENSITIVE, EXTRACTABLE=false, WRAP/UNWRAP only. KEKs are generated in the token and wrapped by
//! it with CKM_AES_KEY_WRAP_PAD (scheme `aes-kwp`); opened KEKs are [`Pkcs11Kek`]s.
//!
//! This module must never create a root anywhere but in `init`, and never let KEK material out
//! of the token.

use super::conn::{Connection, Sessions};
use super::error::ck;
use super::kek::{generate_wrapped, Pkcs11Kek};
use crate::root::{Kek, Root, RootError, RootInit, Scheme, StoredRoot, TokenKeypairs, Wrapped};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use keyward_proto::ops::RootKind;
use keyward_proto::secret::Pin;
use std::collections::BTreeMap;

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

    fn describe(&self) -> String {
        self.conn.describe("")
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

    fn token_keypairs(&self) -> Option<&dyn TokenKeypairs> {
        Some(&self.conn)
    }
}
