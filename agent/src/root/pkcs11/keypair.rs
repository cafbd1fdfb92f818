//! Keypairs that live on the token (`keypair create --on-token`): a P-256 key pair generated
//! inside the token, the private key a token object (TOKEN, PRIVATE, SENSITIVE,
//! EXTRACTABLE=false, SIGN only). It signs through CKM_ECDSA over a SHA-256 digest (SoftHSM has no
//! CKM_ECDSA_SHA256) and never exists outside the token. It cannot open HPKE shares or messages:
//! the `hpke` crate needs the scalar. This module must never create a key with EXTRACTABLE=true.

use super::conn::{lock, read_ec_point, Connection, P256_PARAMS};
use super::error::ck;
use crate::root::uri::{encode, Pkcs11Uri};
use crate::root::{RootError, Scheme, TokenKeypair, TokenKeypairs};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};

/// The CKA_ID a token keypair's locator names.
/// The public and private templates of a P-256 token key pair (`C_GenerateKeyPair`): a token
/// object, the private half private, sensitive and never extractable, signing only, or signing
/// and deriving (`derive`: a device key, whose ECDH runs in the token); never decrypting or
/// unwrapping.
pub(super) fn p256_templates(
    label: &[u8],
    id: &[u8],
    derive: bool,
) -> ([Attribute; 11], [Attribute; 12]) {
    let public = [
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::Label(label.to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let private = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Derive(derive),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    (public, private)
}

/// The EC private key token objects with this `CKA_ID` (a token keypair's or a device key's).
pub(super) fn ec_private_keys(
    s: &cryptoki::session::Session,
    id: Vec<u8>,
    op: &'static str,
) -> Result<Vec<cryptoki::object::ObjectHandle>, RootError> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Id(id),
    ])
    .map_err(ck(op, "C_FindObjects"))
}

fn key_id(locator: &str, op: &'static str) -> Result<Vec<u8>, RootError> {
    let uri = Pkcs11Uri::parse(locator)
        .map_err(|e| RootError::token(op, format!("bad key locator: {e}")))?;
    uri.id()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| RootError::token(op, "the key locator has no id"))
}

/// Both PKCS#11 roots keep token keypairs, on the token the root is on (logged in: unlocked).
impl TokenKeypairs for Connection {
    fn generate(&self, label: &str) -> Result<TokenKeypair, RootError> {
        const OP: &str = "generate token keypair";
        let conn = self.sessions(OP)?;
        self.root_of(&conn, OP)?;
        conn.with_session(OP, |s| {
            let mut id = vec![0u8; 16];
            s.generate_random_slice(&mut id)
                .map_err(ck(OP, "C_GenerateRandom"))?;
            let (public, private) = p256_templates(label.as_bytes(), &id, false);
            let (pub_h, _) = s
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map_err(ck(OP, "C_GenerateKeyPair"))?;
            let point = read_ec_point(s, pub_h, OP)?;
            Ok(TokenKeypair {
                scheme: Scheme::Pkcs11Token,
                locator: format!(
                    "pkcs11:object={};id={};type=private",
                    encode(label.as_bytes()),
                    encode(&id)
                ),
                public: point,
            })
        })
    }

    /// Destroy every token object with the keypair's CKA_ID (its private and public key).
    fn delete(&self, locator: &str) -> Result<(), RootError> {
        const OP: &str = "delete token key";
        let id = key_id(locator, OP)?;
        let conn = self.sessions(OP)?;
        self.root_of(&conn, OP)?;
        lock(&conn.keypairs).remove(locator);
        conn.with_session(OP, |s| {
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                let found = s
                    .find_objects(&[
                        Attribute::Class(class),
                        Attribute::KeyType(KeyType::EC),
                        Attribute::Token(true),
                        Attribute::Id(id.clone()),
                    ])
                    .map_err(ck(OP, "C_FindObjects"))?;
                for h in found {
                    s.destroy_object(h).map_err(ck(OP, "C_DestroyObject"))?;
                }
            }
            Ok(())
        })
    }

    /// One C_Sign with the private key's handle kept from an earlier signature on these
    /// sessions (per login: the handles go with every logout, lock and re-initialization, see
    /// `Sessions::keypairs`). The key is looked up (C_FindObjects by CKA_ID) only the first time,
    /// or when the kept handle is refused (object or key handle invalid: the object was
    /// destroyed, or the token reset); then it signs once more with what is found.
    fn sign(&self, locator: &str, digest: &[u8; 32]) -> Result<Vec<u8>, RootError> {
        const OP: &str = "sign with token key";
        let conn = self.sessions(OP)?;
        self.root_of(&conn, OP)?;
        let kept = lock(&conn.keypairs).get(locator).copied();
        conn.with_session(OP, |s| {
            if let Some(h) = kept {
                match s.sign(&Mechanism::Ecdsa, h, digest) {
                    Ok(sig) => return Ok(sig),
                    Err(CkError::Pkcs11(
                        RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid,
                        _,
                    )) => {
                        lock(&conn.keypairs).remove(locator);
                    }
                    Err(e) => return Err(ck(OP, "C_Sign")(e)),
                }
            }
            let found = ec_private_keys(s, key_id(locator, OP)?, OP)?;
            let h = match found.as_slice() {
                [h] => h,
                // The object the keypair names is not there: the token was reset or its files
                // vanished (a module that has not re-initialized since they came back does not
                // see them). Stale, so the hierarchy's recovery checks the sessions and root and
                // re-initializes the module if they fail (a token that is gone is then
                // `token_unavailable`); with a working token it stays a token error.
                [] => {
                    return Err(RootError::stale(
                        OP,
                        "no token object matches the key (token reset or replaced?)",
                    ))
                }
                more => {
                    return Err(RootError::token(
                        OP,
                        format!("{} token objects match the key (want 1)", more.len()),
                    ))
                }
            };
            let sig = s
                .sign(&Mechanism::Ecdsa, *h, digest)
                .map_err(ck(OP, "C_Sign"))?;
            // Kept only while these sessions are logged in (the login is forgotten, with the
            // handles, at each logout).
            if lock(&conn.login).is_some() {
                lock(&conn.keypairs).insert(locator.to_string(), *h);
            }
            Ok(sig)
        })
    }
}
