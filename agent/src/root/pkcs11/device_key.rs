//! A device's key on the token (`crate::devices`, issue #17 item 2): a P-256 key pair generated
//! inside the token the PKCS#11 root (AES or EC) is on, private key TOKEN, PRIVATE, SENSITIVE,
//! EXTRACTABLE=false, with CKA_SIGN (the device rows it signs, CKM_ECDSA over a SHA-256 digest)
//! and CKA_DERIVE (the `ecdh-p256` wraps to it, CKM_ECDH1_DERIVE through the EC root's derive
//! path). Label `keyward-device-<id>`, CKA_ID the device id's 16 bytes: found again after a
//! restart by its locator, which the device row keeps (with the public key; nothing secret).
//! This module must never create a key with EXTRACTABLE=true, and never keep a derived secret
//! object after reading it.

use super::conn::{read_ec_point, Connection};
use super::ec::Pkcs11EcRoot;
use super::error::ck;
use crate::root::uri::{encode, Pkcs11Uri};
use crate::root::{RootError, Scheme, TokenDeviceKeys, TokenKeypair};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use zeroize::Zeroizing;

/// The label of device `id`'s key objects.
pub(crate) fn device_label(id: &uuid::Uuid) -> String {
    format!("keyward-device-{id}")
}

/// The CKA_ID a device key's locator names.
fn locator_id(locator: &str, op: &'static str) -> Result<Vec<u8>, RootError> {
    let uri = Pkcs11Uri::parse(locator)
        .map_err(|e| RootError::token(op, format!("bad device key locator: {e}")))?;
    uri.id()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| RootError::token(op, "the device key locator has no id"))
}

/// The device key's private object, by CKA_ID (and label): exactly one.
fn find_private(s: &Session, locator: &str, op: &'static str) -> Result<ObjectHandle, RootError> {
    let found = super::keypair::ec_private_keys(s, locator_id(locator, op)?, op)?;
    match found.as_slice() {
        [h] => Ok(*h),
        // The token was reset or replaced: stale, so the hierarchy's recovery checks the
        // sessions and the root (a token that is gone is then `token_unavailable`).
        [] => Err(RootError::stale(
            op,
            "no token object is the device key (token reset or replaced?)",
        )),
        more => Err(RootError::token(
            op,
            format!("{} token objects match the device key (want 1)", more.len()),
        )),
    }
}

impl TokenDeviceKeys for Connection {
    fn generate_device_key(&self, device: &uuid::Uuid) -> Result<TokenKeypair, RootError> {
        const OP: &str = "generate device key";
        let conn = self.sessions(OP)?;
        self.root_of(&conn, OP)?;
        let label = device_label(device);
        let id = device.as_bytes().to_vec();
        conn.with_session(OP, |s| {
            let (public, private) = super::keypair::p256_templates(label.as_bytes(), &id, true);
            let (pub_h, _) = s
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map_err(|e| match e {
                    // A token that cannot make such a key (no EC key generation, or not one
                    // that both signs and derives): the device key stays under the root.
                    CkError::Pkcs11(
                        RvError::MechanismInvalid
                        | RvError::AttributeTypeInvalid
                        | RvError::AttributeValueInvalid
                        | RvError::TemplateInconsistent
                        | RvError::TemplateIncomplete
                        | RvError::FunctionNotSupported,
                        _,
                    ) => RootError::Unsupported {
                        op: OP,
                        detail: format!("the token cannot generate a device key: {e}"),
                    },
                    e => ck(OP, "C_GenerateKeyPair")(e),
                })?;
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

    fn device_ecdh(&self, locator: &str, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, RootError> {
        const OP: &str = "ECDH with device key";
        let conn = self.sessions(OP)?;
        self.root_of(&conn, OP)?;
        conn.with_session(OP, |s| {
            let key = find_private(s, locator, OP)?;
            Pkcs11EcRoot::token_ecdh(s, key, peer, OP)
        })
    }

    fn device_sign(&self, locator: &str, digest: &[u8; 32]) -> Result<Vec<u8>, RootError> {
        const OP: &str = "sign with device key";
        let conn = self.sessions(OP)?;
        self.root_of(&conn, OP)?;
        conn.with_session(OP, |s| {
            let key = find_private(s, locator, OP)?;
            s.sign(&Mechanism::Ecdsa, key, digest)
                .map_err(ck(OP, "C_Sign"))
        })
    }
}

impl Connection {
    /// The token's serial number (`C_GetTokenInfo` serialNumber, trimmed); `None` when the
    /// token cannot be asked or has none.
    pub(super) fn token_serial(&self) -> Option<String> {
        let s = self.sessions("token serial").ok()?;
        let info = s.token_info("token serial").ok()?;
        let serial = info.serial_number().trim().to_string();
        (!serial.is_empty()).then_some(serial)
    }
}
