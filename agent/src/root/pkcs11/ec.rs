//! The PKCS#11 EC root (`key_type = "ec"`): a P-256 key pair in a token with no AES key wrap,
//! e.g. a PIV card through ykcs11 or OpenSC, or SoftHSM. KEKs use the `ecdh-p256` scheme (see
//! [`crate::root::ecdh`]).
//!
//! `init` generates the key pair in the token (CKM_EC_KEY_PAIR_GEN; private half SENSITIVE,
//! EXTRACTABLE=false, DERIVE only) and the root record keeps the public key (`x-keyward-pub` in
//! the locator URI's query). KEKs are wrapped in software to that public key; opening one derives
//! the ECDH secret in the token (CKM_ECDH1_DERIVE, KDF NULL, into a short-lived session object
//! that is read and destroyed) and the KEK then lives in agent memory ([`MemoryKek`]) while
//! unlocked. This module must never create a root anywhere but in `init`, and never keep a
//! derived secret object after reading it.

use super::conn::{lock, read_ec_point, read_value, Connection, Sessions, TempKey, P256_PARAMS};
use super::error::ck;
use crate::root::ecdh;
use crate::root::memory_kek::{kek_bytes, random_key, MemoryKek};
use crate::root::{
    ExportedKek, Kek, Root, RootError, RootInit, Scheme, StoredRoot, TokenKeypairs, Wrapped,
};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use keyward_proto::ops::RootKind;
use keyward_proto::secret::Pin;
use std::collections::BTreeMap;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// The query attribute of an EC root's locator that carries its public key (hex SEC1).
const PUB_ATTR: &str = "x-keyward-pub=";

/// The public key recorded in an EC root's locator.
pub(crate) fn locator_public(locator: &str) -> Option<p256::PublicKey> {
    let start = locator.find(PUB_ATTR)? + PUB_ATTR.len();
    let h = locator[start..].split('&').next()?;
    p256::PublicKey::from_sec1_bytes(&hex::decode(h).ok()?).ok()
}

/// A root that is a P-256 key pair on a PKCS#11 token.
pub struct Pkcs11EcRoot {
    conn: std::sync::Arc<Connection>,
    /// The SO PIN `init` generates the key pair with (ykcs11: the management key).
    keygen_so_pin: Option<Pin>,
    /// The root's public key, once initialized or unlocked.
    public: Mutex<Option<p256::PublicKey>>,
}

impl Pkcs11EcRoot {
    /// As [`super::Pkcs11AesRoot::new`]. `keygen_so_pin`: `init` generates the key pair logged in
    /// as the SO with it (see `management_key_hex` in the config); without it, as the user.
    pub fn new(
        uri: &str,
        env: &BTreeMap<String, String>,
        keygen_so_pin: Option<Pin>,
    ) -> Result<Self, RootError> {
        Ok(Pkcs11EcRoot {
            conn: std::sync::Arc::new(Connection::new(uri, env)?),
            keygen_so_pin,
            public: Mutex::new(None),
        })
    }

    /// The root's private or public key: by id and/or label (the default label only when the
    /// URI names neither, so `id=%03` alone finds ykcs11's fixed-label slot 9d key).
    fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![
            Attribute::Class(class),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(true),
        ];
        let uri = self.conn.uri();
        if uri.object().is_some() || uri.id().is_none() {
            t.push(Attribute::Label(self.conn.label().as_bytes().to_vec()));
        }
        if let Some(id) = uri.id() {
            t.push(Attribute::Id(id.to_vec()));
        }
        t
    }

    fn root_template(&self) -> Vec<Attribute> {
        self.template(ObjectClass::PRIVATE_KEY)
    }

    /// After the root object is found: read the public key from the token's public-key object
    /// unless it is known (recorded, or from an earlier unlock).
    fn after_found(&self, s: &Sessions, op: &'static str) -> Result<(), RootError> {
        if lock(&self.public).is_some() {
            return Ok(());
        }
        let found = self
            .conn
            .find(s, &self.template(ObjectClass::PUBLIC_KEY), op)?;
        let [h] = found.as_slice() else {
            return Err(RootError::RootMissing { op });
        };
        let pk = read_ec_point(&*s.anchor(op)?, *h, op)?;
        *lock(&self.public) = Some(pk);
        Ok(())
    }

    fn public(&self, op: &'static str) -> Result<p256::PublicKey, RootError> {
        (*lock(&self.public)).ok_or(RootError::Locked { op })
    }

    /// Generate the key pair on the anchor session (already logged in); returns its CKA_ID and
    /// public key.
    fn generate(
        &self,
        s: &Sessions,
        op: &'static str,
    ) -> Result<(Vec<u8>, p256::PublicKey), RootError> {
        if !self.conn.find(s, &self.root_template(), op)?.is_empty() {
            return Err(RootError::RootExists { op });
        }
        let id = self.conn.new_root_id(s, op)?;
        let anchor = s.anchor(op)?;
        let label = Attribute::Label(self.conn.label().as_bytes().to_vec());
        let public_t = vec![
            Attribute::Token(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Verify(false),
            Attribute::Id(id.clone()),
            label.clone(),
        ];
        let private_t = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Derive(true),
            Attribute::Sign(false),
            Attribute::Decrypt(false),
            Attribute::Id(id.clone()),
            label,
        ];
        let (public, _private) =
            match anchor.generate_key_pair(&Mechanism::EccKeyPairGen, &public_t, &private_t) {
                Ok(pair) => pair,
                // PIV modules (ykcs11) take only a few attributes: the slot (CKA_ID) and the
                // curve; their keys are non-extractable and allow ECDH by construction.
                Err(CkError::Pkcs11(
                    RvError::AttributeTypeInvalid | RvError::TemplateInconsistent,
                    _,
                )) => {
                    tracing::info!(
                    "the token refused the full EC key template; generating with the minimal one"
                );
                    anchor
                        .generate_key_pair(
                            &Mechanism::EccKeyPairGen,
                            &[
                                Attribute::EcParams(P256_PARAMS.to_vec()),
                                Attribute::Id(id.clone()),
                            ],
                            &[Attribute::Id(id.clone())],
                        )
                        .map_err(ck(op, "C_GenerateKeyPair"))?
                }
                Err(e) => return Err(ck(op, "C_GenerateKeyPair")(e)),
            };
        let pk = read_ec_point(&anchor, public, op)?;
        Ok((id, pk))
    }

    /// ECDH in the token with the root's private key: the x coordinate (CKM_ECDH1_DERIVE, KDF
    /// NULL, into a session object that is read and destroyed at once).
    pub(super) fn token_ecdh(
        session: &Session,
        root: ObjectHandle,
        peer: &[u8],
        op: &'static str,
    ) -> Result<Zeroizing<Vec<u8>>, RootError> {
        let params = Ecdh1DeriveParams::new(EcKdf::null(), peer);
        let full = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::ValueLen(32.into()),
        ];
        let minimal = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
        ];
        let handle = match session.derive_key(&Mechanism::Ecdh1Derive(params), root, &full) {
            Ok(h) => h,
            // Some modules (ykcs11) take fewer attributes on derived keys.
            Err(CkError::Pkcs11(
                RvError::AttributeTypeInvalid
                | RvError::AttributeValueInvalid
                | RvError::TemplateInconsistent
                | RvError::TemplateIncomplete,
                _,
            )) => session
                .derive_key(&Mechanism::Ecdh1Derive(params), root, &minimal)
                .map_err(ck(op, "C_DeriveKey"))?,
            Err(e) => return Err(ck(op, "C_DeriveKey")(e)),
        };
        let key = TempKey { session, handle };
        read_value(session, key.handle, op)
    }
}

impl Root for Pkcs11EcRoot {
    fn scheme(&self) -> crate::root::Scheme {
        crate::root::Scheme::Pkcs11EcP256
    }

    fn kind(&self) -> RootKind {
        RootKind::Pkcs11
    }

    fn fast(&self) -> bool {
        self.conn.fast()
    }

    fn describe(&self) -> String {
        self.conn.describe(", EC P-256 root (ecdh-p256)")
    }

    fn token_serial(&self) -> Option<String> {
        self.conn.token_serial()
    }

    /// Generate the key pair (as SO when configured), log in as the user.
    fn init(&self, pin: &Pin) -> Result<RootInit, RootError> {
        const OP: &str = "init root";
        let s = self.conn.sessions(OP)?;
        if let Some(so) = &self.keygen_so_pin {
            self.conn
                .login_as(&s, UserType::So, so, OP)
                .map_err(|e| match e {
                    RootError::PinIncorrect { .. } => {
                        RootError::token(OP, "the token refused the SO PIN (management_key_hex)")
                    }
                    other => other,
                })?;
        } else {
            self.conn.login(&s, pin, OP)?;
        }
        let (id, pk) = self.generate(&s, OP)?;
        if self.keygen_so_pin.is_some() {
            self.conn.login(&s, pin, OP)?;
        }
        // Handles may change across logins: find the key again as the user.
        let root = self.conn.find_root(&s, &self.root_template(), OP)?;
        self.conn.set_unlocked(&s, root, pin);
        *lock(&self.public) = Some(pk);
        let tail = format!("type=private?{PUB_ATTR}{}", hex::encode(ecdh::sec1(&pk)));
        Ok(RootInit {
            scheme: Scheme::Pkcs11EcP256,
            locator: self.conn.root_locator(&s, &id, &tail, OP)?,
            check: None,
        })
    }

    fn unlock(&self, pin: &Pin, stored: &StoredRoot) -> Result<(), RootError> {
        // The recorded public key wins over the token's public object (ykcs11 may not show it).
        *lock(&self.public) = stored.locator.as_deref().and_then(locator_public);
        self.conn
            .unlock(pin, &self.root_template(), &|s, op| self.after_found(s, op))
    }

    fn lock(&self) -> Result<(), RootError> {
        self.conn.lock()
    }

    fn is_unlocked(&self) -> bool {
        self.conn.is_unlocked()
    }

    fn recover(&self) -> Result<(), RootError> {
        self.conn
            .recover(&self.root_template(), &|s, op| self.after_found(s, op))
    }

    fn generate_kek(&self) -> Result<Wrapped, RootError> {
        const OP: &str = "generate KEK";
        let s = self.conn.sessions(OP)?;
        self.conn.root_of(&s, OP)?;
        let public = self.public(OP)?;
        Ok(Wrapped {
            scheme: Scheme::EcdhP256,
            bytes: ecdh::wrap(&public, &random_key())?,
        })
    }

    fn open_kek(&self, wrapped: &[u8]) -> Result<Box<dyn Kek>, RootError> {
        const OP: &str = "unwrap KEK";
        let s = self.conn.sessions(OP)?;
        let root = self.conn.root_of(&s, OP)?;
        let public = self.public(OP)?;
        let kek = s.with_session(OP, |session| {
            ecdh::unwrap(&public, wrapped, |eph| {
                Self::token_ecdh(session, root, eph, OP)
            })
        })?;
        Ok(Box::new(CheckedKek {
            kek: MemoryKek::new(&kek),
            conn: self.conn.clone(),
        }))
    }

    /// The ECDH unwrap of `open_kek`, into locked memory instead of a [`MemoryKek`].
    fn export_kek(&self, wrapped: &[u8]) -> Result<ExportedKek, RootError> {
        const OP: &str = "export KEK";
        let s = self.conn.sessions(OP)?;
        let root = self.conn.root_of(&s, OP)?;
        let public = self.public(OP)?;
        let kek = s.with_session(OP, |session| {
            ecdh::unwrap(&public, wrapped, |eph| {
                Self::token_ecdh(session, root, eph, OP)
            })
        })?;
        Ok(ExportedKek::new(&kek))
    }

    /// Needs only the public key (known since `init` or `unlock`): no token call.
    fn import_kek(&self, kek: &[u8]) -> Result<Wrapped, RootError> {
        const OP: &str = "import KEK";
        let kek = kek_bytes(kek, OP)?;
        let public = self.public(OP)?;
        Ok(Wrapped {
            scheme: Scheme::EcdhP256,
            bytes: ecdh::wrap(&public, &kek)?,
        })
    }

    fn destroy_root(&self) -> Result<crate::root::RootDestroyed, RootError> {
        let n = self.conn.destroy_objects(
            &[
                self.template(ObjectClass::PRIVATE_KEY),
                self.template(ObjectClass::PUBLIC_KEY),
            ],
            "destroy root",
        )?;
        Ok(crate::root::RootDestroyed::Destroyed(format!(
            "{n} EC root object(s) (private and public key) labelled `{}` on {}",
            self.conn.label(),
            self.conn.describe("")
        )))
    }

    fn token_keypairs(&self) -> Option<&dyn TokenKeypairs> {
        Some(self.conn.as_ref())
    }

    /// Not on a token where only the SO may generate keys (`management_key_hex`: a PIV card
    /// through ykcs11): its keys live in a few fixed slots, one of them the root's, and a
    /// device key generated there would take a slot (or the root's); the device key is then a
    /// scalar wrapped to the root (ECDH on the card), as on a `yubikey` root.
    fn device_keys(&self) -> Option<&dyn crate::root::TokenDeviceKeys> {
        if self.keygen_so_pin.is_some() {
            return None;
        }
        Some(self.conn.as_ref())
    }
}

/// An opened `ecdh-p256` KEK: its material is in agent memory ([`MemoryKek`]), so nothing it
/// does would touch the token. Before each use it asks the token for the root object (one
/// `C_GetAttributeValue`), so a token that went away (removed, its files gone) is noticed as the
/// AES root notices it: the failure is reported as stale handles, the hierarchy drops every
/// opened KEK and reconnects, and while the token is away requests get a typed token error.
struct CheckedKek {
    kek: MemoryKek,
    conn: std::sync::Arc<Connection>,
}

impl CheckedKek {
    fn check(&self) -> Result<(), RootError> {
        const OP: &str = "check the token";
        let s = self.conn.sessions(OP)?;
        let root = self.conn.root_of(&s, OP)?;
        s.with_session(OP, |session| {
            session
                .get_attributes(root, &[AttributeType::Class])
                .map(|_| ())
                .map_err(|e| match ck(OP, "C_GetAttributeValue")(e) {
                    // Whatever the module answers about the root object (SoftHSM: a general
                    // error once its files are gone), the opened KEKs must not outlive it.
                    RootError::Token { op, cause } => RootError::Stale { op, cause },
                    other => other,
                })
        })
    }
}

impl Kek for CheckedKek {
    fn generate_dek(&self) -> Result<Wrapped, RootError> {
        self.check()?;
        self.kek.generate_dek()
    }
    fn seal(&self, dek: &[u8], iv: &[u8; 12], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, RootError> {
        self.check()?;
        self.kek.seal(dek, iv, aad, pt)
    }
    fn open(
        &self,
        dek: &[u8],
        iv: &[u8; 12],
        aad: &[u8],
        ct_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RootError> {
        self.check()?;
        self.kek.open(dek, iv, aad, ct_tag)
    }
    fn export_dek(&self, dek: &[u8]) -> Result<Zeroizing<Vec<u8>>, RootError> {
        self.check()?;
        self.kek.export_dek(dek)
    }
    fn wrap_secret(&self, secret: &[u8]) -> Result<Wrapped, RootError> {
        self.check()?;
        self.kek.wrap_secret(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_public_reads_the_recorded_key() {
        let pk = p256::SecretKey::from_slice(&[7u8; 32])
            .unwrap()
            .public_key();
        let loc = format!(
            "pkcs11:token=t;id=%01;type=private?{PUB_ATTR}{}&x=y",
            hex::encode(ecdh::sec1(&pk))
        );
        assert_eq!(locator_public(&loc), Some(pk));
        assert_eq!(locator_public("pkcs11:token=t"), None);
        assert_eq!(locator_public(&format!("pkcs11:?{PUB_ATTR}0")), None);
    }
}
