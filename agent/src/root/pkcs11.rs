//! The PKCS#11 root: an AES-256 key inside a token (HSM, smartcard, SoftHSM), scheme `aes-kwp`.
//!
//! KEKs are generated in the token, wrapped by the root with CKM_AES_KEY_WRAP_PAD (RFC 5649) and
//! unwrapped into session objects (TOKEN=false, SENSITIVE, EXTRACTABLE=false). DEKs are generated,
//! wrapped, unwrapped and used (CKM_AES_GCM) inside the token too; only DEKs created exportable are
//! ever read out, on `dek.export`.
//!
//! How sessions are kept follows what SoftHSM does (DESIGN.md): one context per process, one login,
//! an anchor session open for the process's life (closing the last session would log out and
//! destroy every session object), KEK objects created in the anchor session, and a pool of worker
//! sessions (a `Session` is `Send` but not `Sync`). When handles go stale, [`Root::recover`]
//! finalizes the library, initializes it again, logs in with the PIN held since unlock and finds
//! the root again. This module must never create a root anywhere but in `init`, and never keep
//! the PIN after `lock`.
//!
//! **EC roots** (`key_type = "ec"`, scheme `ecdh-p256`, see [`super::ecdh`]) are for tokens with
//! no AES key wrap, e.g. PIV cards through ykcs11 or OpenSC: `init` generates a P-256 key pair in
//! the token (CKM_EC_KEY_PAIR_GEN; private half SENSITIVE, EXTRACTABLE=false, DERIVE only) and the
//! root record keeps the public key (`x-keyward-pub` in the locator URI's query). KEKs are wrapped
//! in software to that public key; opening one derives the ECDH secret in the token
//! (CKM_ECDH1_DERIVE, KDF NULL, into a short-lived session object that is read and destroyed) and
//! the KEK then lives in agent memory ([`MemoryKek`]) while unlocked.

use super::ecdh;
use super::memory_kek::{random_key, MemoryKek};
use super::uri::{encode, Pkcs11Uri};
use super::{
    Kek, Root, RootError, RootInit, Scheme, StoredRoot, TokenKeypair, TokenKeypairs, Wrapped,
};
use crate::config::Pkcs11KeyType;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyward_proto::secret::Pin;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use zeroize::Zeroizing;

/// Default label of the root object when the URI names none.
pub const DEFAULT_ROOT_LABEL: &str = "keyward-root";
/// DER of the P-256 (prime256v1) OID, for CKA_EC_PARAMS.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// The query attribute of an EC root's locator that carries its public key (hex SEC1).
const PUB_ATTR: &str = "x-keyward-pub=";

/// The public key from an EC root's CKA_EC_POINT (DER OCTET STRING, or raw as some tokens give).
fn ec_point(bytes: &[u8]) -> Option<p256::PublicKey> {
    let raw = match bytes {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        raw => raw,
    };
    p256::PublicKey::from_sec1_bytes(raw).ok()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The public key recorded in an EC root's locator.
fn locator_public(locator: &str) -> Option<p256::PublicKey> {
    let start = locator.find(PUB_ATTR)? + PUB_ATTR.len();
    let h = locator[start..].split('&').next()?;
    if h.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect();
    p256::PublicKey::from_sec1_bytes(&bytes?).ok()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these mutexes stays consistent across a panic (handles and sessions only).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Map a cryptoki error to a root error, keeping the operation's name.
fn ck(op: &'static str) -> impl Fn(CkError) -> RootError {
    move |e| match e {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::PinIncorrect => RootError::PinIncorrect {
                op,
                card_retries: None,
            },
            RvError::PinLocked => RootError::PinLocked { op },
            RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
            | RvError::WrappingKeyHandleInvalid
            | RvError::UnwrappingKeyHandleInvalid => RootError::Stale {
                op,
                detail: e.to_string(),
            },
            RvError::DeviceRemoved | RvError::TokenNotPresent | RvError::DeviceError => {
                RootError::Unavailable {
                    op,
                    detail: e.to_string(),
                }
            }
            _ => RootError::Token {
                op,
                detail: e.to_string(),
            },
        },
        other => RootError::Token {
            op,
            detail: other.to_string(),
        },
    }
}

/// One loaded and initialized module with its anchor session and worker pool.
struct Conn {
    ctx: Pkcs11,
    slot: Slot,
    /// Open for the process's life; login happens here and KEK objects are created here.
    anchor: Mutex<Session>,
    pool: Mutex<Vec<Session>>,
    /// The root object, once unlocked.
    root: Mutex<Option<ObjectHandle>>,
}

impl Conn {
    /// Run `f` on a pooled worker session. A session that saw a stale-handle error is dropped.
    fn with_session<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Session) -> Result<T, RootError>,
    ) -> Result<T, RootError> {
        let pooled = lock(&self.pool).pop();
        let session = match pooled {
            Some(s) => s,
            None => self.ctx.open_rw_session(self.slot).map_err(ck(op))?,
        };
        let out = f(&session);
        if !matches!(out, Err(RootError::Stale { .. })) {
            lock(&self.pool).push(session);
        }
        out
    }

    fn root_handle(&self, op: &'static str) -> Result<ObjectHandle, RootError> {
        lock(&self.root).ok_or(RootError::Locked { op })
    }
}

/// A session object destroyed when this guard drops.
struct TempKey<'a> {
    session: &'a Session,
    handle: ObjectHandle,
}

impl Drop for TempKey<'_> {
    fn drop(&mut self) {
        let _ = self.session.destroy_object(self.handle);
    }
}

/// The P-256 public key of an EC public-key object (its CKA_EC_POINT).
fn read_ec_point(
    session: &Session,
    handle: ObjectHandle,
    op: &'static str,
) -> Result<p256::PublicKey, RootError> {
    session
        .get_attributes(handle, &[AttributeType::EcPoint])
        .map_err(ck(op))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => ec_point(&p),
            _ => None,
        })
        .ok_or_else(|| RootError::Token {
            op,
            detail: "the public key object has no P-256 CKA_EC_POINT".into(),
        })
}

/// The CKA_VALUE of a non-sensitive session object (an exportable DEK, a derived ECDH secret),
/// copied once into zeroizing memory.
fn read_value(
    session: &Session,
    handle: ObjectHandle,
    op: &'static str,
) -> Result<Zeroizing<Vec<u8>>, RootError> {
    for a in session
        .get_attributes(handle, &[AttributeType::Value])
        .map_err(ck(op))?
    {
        if let Attribute::Value(mut v) = a {
            let out = Zeroizing::new(v.clone());
            zeroize::Zeroize::zeroize(&mut v);
            return Ok(out);
        }
    }
    Err(RootError::Token {
        op,
        detail: "the token returned no readable CKA_VALUE".into(),
    })
}

/// Every boolean attribute given (SoftHSM's defaults are permissive), never CKA_VALUE_LEN.
fn secret_template(sensitive: bool, extractable: bool, wrap: bool, crypt: bool) -> Vec<Attribute> {
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
fn generate_wrapped(
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
            .map_err(ck(op))?,
    };
    let bytes = session
        .wrap_key(&Mechanism::AesKeyWrapPad, wrapping_key, key.handle)
        .map_err(ck(op))?;
    Ok(Wrapped {
        scheme: Scheme::AesKwp,
        bytes,
    })
}

/// The PKCS#11 root backend.
pub struct Pkcs11Root {
    module: String,
    uri: Pkcs11Uri,
    label: String,
    conn: RwLock<Option<Arc<Conn>>>,
    /// Held while unlocked, for re-login after the token or library resets. Never on disk.
    pin: Mutex<Option<Pin>>,
    key_type: Pkcs11KeyType,
    /// EC roots: the SO PIN `init` generates the key pair with (ykcs11: the management key).
    keygen_so_pin: Option<Pin>,
    /// EC roots: the root's public key, once initialized or unlocked.
    ec_public: Mutex<Option<p256::PublicKey>>,
}

impl Pkcs11Root {
    /// Set up the backend from a URI. `env` is applied before the module loads. The module is
    /// loaded and the token looked for now, but a missing token is not fatal: operations report
    /// `token_unavailable` and connect once it is there.
    pub fn new(uri: &str, env: &BTreeMap<String, String>) -> Result<Self, RootError> {
        Self::with_key_type(uri, env, Pkcs11KeyType::Aes, None)
    }

    /// [`Pkcs11Root::new`] for an AES or an EC root. `keygen_so_pin`: EC roots only, see
    /// `management_key_hex` in the config.
    pub fn with_key_type(
        uri: &str,
        env: &BTreeMap<String, String>,
        key_type: Pkcs11KeyType,
        keygen_so_pin: Option<Pin>,
    ) -> Result<Self, RootError> {
        let uri = Pkcs11Uri::parse(uri).map_err(|e| RootError::Config(e.to_string()))?;
        let module = uri
            .module_path()
            .or_else(|| uri.module_name().map(|n| format!("lib{n}.so")))
            .ok_or_else(|| {
                RootError::Config(
                    "the PKCS#11 URI names no module (add ?module-path=/path/to/module.so)".into(),
                )
            })?;
        for (k, v) in env {
            // Start-up, before any thread that could read the environment exists.
            std::env::set_var(k, v);
        }
        let label = uri.object().unwrap_or_else(|| DEFAULT_ROOT_LABEL.into());
        let root = Pkcs11Root {
            module,
            uri,
            label,
            conn: RwLock::new(None),
            pin: Mutex::new(None),
            key_type,
            keygen_so_pin,
            ec_public: Mutex::new(None),
        };
        if let Err(e) = root.conn("connect") {
            tracing::warn!(error = %e, "token not reachable at start-up; will retry on use");
        }
        Ok(root)
    }

    fn connect(&self, op: &'static str) -> Result<Conn, RootError> {
        let ctx = Pkcs11::new(&self.module).map_err(|e| RootError::Unavailable {
            op,
            detail: format!("loading {}: {e}", self.module),
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(ck(op)(e)),
        }
        let slot = self.find_slot(&ctx, op)?;
        let anchor = ctx.open_rw_session(slot).map_err(ck(op))?;
        Ok(Conn {
            ctx,
            slot,
            anchor: Mutex::new(anchor),
            pool: Mutex::new(Vec::new()),
            root: Mutex::new(None),
        })
    }

    fn find_slot(&self, ctx: &Pkcs11, op: &'static str) -> Result<Slot, RootError> {
        let want = |field: Option<String>, have: &str| field.is_none_or(|w| w == have.trim_end());
        for slot in ctx.get_slots_with_initialized_token().map_err(ck(op))? {
            if self.uri.slot_id().is_some_and(|id| id != slot.id()) {
                continue;
            }
            let info = ctx.get_token_info(slot).map_err(ck(op))?;
            if want(self.uri.token(), info.label())
                && want(self.uri.serial(), info.serial_number())
                && want(self.uri.manufacturer(), info.manufacturer_id())
                && want(self.uri.model(), info.model())
            {
                return Ok(slot);
            }
        }
        Err(RootError::Unavailable {
            op,
            detail: format!(
                "no initialized token matches {}",
                self.uri
                    .token()
                    .map_or("the URI".into(), |t| format!("token `{t}`"))
            ),
        })
    }

    /// The current connection, connecting if there is none.
    fn conn(&self, op: &'static str) -> Result<Arc<Conn>, RootError> {
        if let Some(c) = self.conn.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let mut w = self.conn.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = w.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(self.connect(op)?);
        *w = Some(c.clone());
        Ok(c)
    }

    /// Drop the connection and finalize the library, so the next use starts afresh.
    fn disconnect(&self) {
        let old = self.conn.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(conn) = old {
            let ctx = conn.ctx.clone();
            drop(conn);
            // Other holders of the old connection (in-flight operations) fail with stale
            // handles and retry on the new one.
            let _ = ctx.finalize();
        }
    }

    fn root_template(&self) -> Vec<Attribute> {
        if self.key_type == Pkcs11KeyType::Ec {
            return self.ec_template(ObjectClass::PRIVATE_KEY);
        }
        let mut t = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Label(self.label.as_bytes().to_vec()),
        ];
        if let Some(id) = self.uri.id() {
            t.push(Attribute::Id(id.to_vec()));
        }
        t
    }

    /// An EC root's private or public key: by id and/or label (the default label only when the
    /// URI names neither, so `id=%03` alone finds ykcs11's fixed-label slot 9d key).
    fn ec_template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![
            Attribute::Class(class),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(true),
        ];
        if self.uri.object().is_some() || self.uri.id().is_none() {
            t.push(Attribute::Label(self.label.as_bytes().to_vec()));
        }
        if let Some(id) = self.uri.id() {
            t.push(Attribute::Id(id.to_vec()));
        }
        t
    }

    /// The public key of the EC root from the token's public-key object (for unlock without a
    /// recorded one).
    fn token_ec_public(
        &self,
        session: &Session,
        op: &'static str,
    ) -> Result<p256::PublicKey, RootError> {
        let found = session
            .find_objects(&self.ec_template(ObjectClass::PUBLIC_KEY))
            .map_err(ck(op))?;
        let [h] = found.as_slice() else {
            return Err(RootError::RootMissing { op });
        };
        read_ec_point(session, *h, op)
    }

    /// `init` for an EC root: generate the key pair (as SO when configured), log in as the user.
    fn init_ec(&self, conn: &Conn, pin: &Pin, op: &'static str) -> Result<RootInit, RootError> {
        if let Some(so) = &self.keygen_so_pin {
            let anchor = lock(&conn.anchor);
            let _ = anchor.logout();
            anchor
                .login(UserType::So, Some(&AuthPin::from(so.expose().to_string())))
                .map_err(|e| match ck(op)(e) {
                    RootError::PinIncorrect { .. } => RootError::Token {
                        op,
                        detail: "the token refused the SO PIN (management_key_hex)".into(),
                    },
                    other => other,
                })?;
        } else {
            self.login(conn, pin, op)?;
        }
        let generated = (|| {
            let anchor = lock(&conn.anchor);
            if !self.find_roots(&anchor, op)?.is_empty() {
                return Err(RootError::RootExists { op });
            }
            let id = match self.uri.id() {
                Some(id) => id.to_vec(),
                None => {
                    let mut id = vec![0u8; 16];
                    anchor.generate_random_slice(&mut id).map_err(ck(op))?;
                    id
                }
            };
            let label = Attribute::Label(self.label.as_bytes().to_vec());
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
            let (public, private) = match anchor.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_t,
                &private_t,
            ) {
                Ok(pair) => pair,
                // PIV modules (ykcs11) take only a few attributes: the slot (CKA_ID) and the
                // curve; their keys are non-extractable and allow ECDH by construction.
                Err(CkError::Pkcs11(
                    RvError::AttributeTypeInvalid | RvError::TemplateInconsistent,
                    _,
                )) => {
                    tracing::info!("the token refused the full EC key template; generating with the minimal one");
                    anchor
                        .generate_key_pair(
                            &Mechanism::EccKeyPairGen,
                            &[
                                Attribute::EcParams(P256_PARAMS.to_vec()),
                                Attribute::Id(id.clone()),
                            ],
                            &[Attribute::Id(id.clone())],
                        )
                        .map_err(ck(op))?
                }
                Err(e) => return Err(ck(op)(e)),
            };
            let pk = read_ec_point(&anchor, public, op)?;
            Ok((id, private, pk))
        })();
        let (id, _, pk) = generated?;
        if self.keygen_so_pin.is_some() {
            self.login(conn, pin, op)?;
        }
        // Handles may change across logins: find the key again as the user.
        let root = self.find_root(conn, op)?;
        *lock(&conn.root) = Some(root);
        *lock(&self.pin) = Some(pin.clone());
        *lock(&self.ec_public) = Some(pk);
        let info = conn.ctx.get_token_info(conn.slot).map_err(ck(op))?;
        Ok(RootInit {
            scheme: Scheme::Pkcs11EcP256,
            locator: format!(
                "pkcs11:token={};serial={};object={};id={};type=private?{PUB_ATTR}{}",
                encode(info.label().trim_end().as_bytes()),
                encode(info.serial_number().trim_end().as_bytes()),
                encode(self.label.as_bytes()),
                encode(&id),
                hex(&ecdh::sec1(&pk))
            ),
            check: None,
        })
    }

    /// ECDH in the token with the root's private key: the x coordinate (CKM_ECDH1_DERIVE, KDF
    /// NULL, into a session object that is read and destroyed at once).
    fn token_ecdh(
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
                .map_err(ck(op))?,
            Err(e) => return Err(ck(op)(e)),
        };
        let key = TempKey { session, handle };
        read_value(session, key.handle, op)
    }

    fn find_roots(
        &self,
        session: &Session,
        op: &'static str,
    ) -> Result<Vec<ObjectHandle>, RootError> {
        session.find_objects(&self.root_template()).map_err(ck(op))
    }

    /// Log in on the anchor session (logging out first, so the PIN is really checked).
    fn login(&self, conn: &Conn, pin: &Pin, op: &'static str) -> Result<(), RootError> {
        let anchor = lock(&conn.anchor);
        let _ = anchor.logout();
        *lock(&conn.root) = None;
        lock(&conn.pool).clear();
        anchor
            .login(
                UserType::User,
                Some(&AuthPin::from(pin.expose().to_string())),
            )
            .map_err(ck(op))
    }

    fn find_root(&self, conn: &Conn, op: &'static str) -> Result<ObjectHandle, RootError> {
        let anchor = lock(&conn.anchor);
        let found = self.find_roots(&anchor, op)?;
        match found.as_slice() {
            [h] => Ok(*h),
            [] => Err(RootError::RootMissing { op }),
            _ => Err(RootError::Token {
                op,
                detail: format!(
                    "{} objects match the root's label `{}`",
                    found.len(),
                    self.label
                ),
            }),
        }
    }

    fn key_kind(&self) -> &'static str {
        match self.key_type {
            Pkcs11KeyType::Aes => "",
            Pkcs11KeyType::Ec => ", EC P-256 root (ecdh-p256)",
        }
    }

    fn unlock_inner(&self, pin: &Pin, op: &'static str) -> Result<(), RootError> {
        let conn = self.conn(op)?;
        self.login(&conn, pin, op)?;
        let root = self.find_root(&conn, op)?;
        if self.key_type == Pkcs11KeyType::Ec && lock(&self.ec_public).is_none() {
            let pk = self.token_ec_public(&lock(&conn.anchor), op)?;
            *lock(&self.ec_public) = Some(pk);
        }
        *lock(&conn.root) = Some(root);
        *lock(&self.pin) = Some(pin.clone());
        Ok(())
    }
}

impl Root for Pkcs11Root {
    fn kind(&self) -> keyward_proto::ops::RootKind {
        keyward_proto::ops::RootKind::Pkcs11
    }

    fn describe(&self) -> String {
        let token = self.uri.token().unwrap_or_else(|| "(any)".into());
        match self.conn("describe").and_then(|c| {
            c.ctx
                .get_token_info(c.slot)
                .map_err(ck("describe"))
                .map(|i| {
                    (
                        i.manufacturer_id().to_string(),
                        i.serial_number().to_string(),
                    )
                })
        }) {
            Ok((mfr, serial)) => format!(
                "PKCS#11 token `{token}` ({mfr}, serial {serial}) via {}{}",
                self.module,
                self.key_kind()
            ),
            Err(_) => format!(
                "PKCS#11 token `{token}` via {}{} (not reachable)",
                self.module,
                self.key_kind()
            ),
        }
    }

    fn init(&self, pin: &Pin) -> Result<RootInit, RootError> {
        const OP: &str = "init root";
        let conn = self.conn(OP)?;
        if self.key_type == Pkcs11KeyType::Ec {
            return self.init_ec(&conn, pin, OP);
        }
        self.login(&conn, pin, OP)?;
        let anchor = lock(&conn.anchor);
        if !self.find_roots(&anchor, OP)?.is_empty() {
            return Err(RootError::RootExists { op: OP });
        }
        let id = match self.uri.id() {
            Some(id) => id.to_vec(),
            None => {
                let mut id = vec![0u8; 16];
                anchor.generate_random_slice(&mut id).map_err(ck(OP))?;
                id
            }
        };
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
            Attribute::Label(self.label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let root = anchor
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(ck(OP))?;
        drop(anchor);
        *lock(&conn.root) = Some(root);
        *lock(&self.pin) = Some(pin.clone());
        let info = conn.ctx.get_token_info(conn.slot).map_err(ck(OP))?;
        Ok(RootInit {
            scheme: Scheme::Pkcs11Aes,
            locator: format!(
                "pkcs11:token={};serial={};object={};id={};type=secret-key",
                encode(info.label().trim_end().as_bytes()),
                encode(info.serial_number().trim_end().as_bytes()),
                encode(self.label.as_bytes()),
                encode(&id)
            ),
            check: None,
        })
    }

    fn unlock(&self, pin: &Pin, stored: &StoredRoot) -> Result<(), RootError> {
        if self.key_type == Pkcs11KeyType::Ec {
            // The recorded public key wins over the token's public object (ykcs11 may not show it).
            *lock(&self.ec_public) = stored.locator.as_deref().and_then(locator_public);
        }
        match self.unlock_inner(pin, "unlock") {
            // SoftHSM (and other file-backed modules) never heal in-process once their token
            // files were gone: only C_Finalize + C_Initialize does (DESIGN.md). So when unlock
            // fails for any reason but the PIN, start the module afresh and try once more.
            // This never creates a root: a missing root stays `RootMissing`.
            Err(
                e @ (RootError::Token { .. }
                | RootError::Stale { .. }
                | RootError::Unavailable { .. }
                | RootError::RootMissing { .. }),
            ) => {
                tracing::warn!(error = %e, "unlock failed: reinitializing the PKCS#11 module and trying once more");
                self.disconnect();
                self.unlock_inner(pin, "unlock")
            }
            other => other,
        }
    }

    fn lock(&self) -> Result<(), RootError> {
        *lock(&self.pin) = None;
        if let Some(conn) = self.conn.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            *lock(&conn.root) = None;
            lock(&conn.pool).clear();
            // C_Logout destroys every private session object: all unwrapped KEKs and DEKs.
            let _ = lock(&conn.anchor).logout();
        }
        Ok(())
    }

    fn is_unlocked(&self) -> bool {
        lock(&self.pin).is_some()
    }

    fn recover(&self) -> Result<(), RootError> {
        const OP: &str = "recover token session";
        let pin = lock(&self.pin)
            .clone()
            .ok_or(RootError::Locked { op: OP })?;
        tracing::warn!("token handles went stale: reinitializing the module and logging in again");
        self.disconnect();
        self.unlock_inner(&pin, OP)
    }

    fn generate_kek(&self) -> Result<Wrapped, RootError> {
        const OP: &str = "generate KEK";
        let conn = self.conn(OP)?;
        let root = conn.root_handle(OP)?;
        if self.key_type == Pkcs11KeyType::Ec {
            let public = (*lock(&self.ec_public)).ok_or(RootError::Locked { op: OP })?;
            return Ok(Wrapped {
                scheme: Scheme::EcdhP256,
                bytes: ecdh::wrap(&public, &random_key())?,
            });
        }
        conn.with_session(OP, |s| generate_wrapped(s, root, OP))
    }

    fn open_kek(&self, wrapped: &[u8]) -> Result<Box<dyn Kek>, RootError> {
        const OP: &str = "unwrap KEK";
        let conn = self.conn(OP)?;
        let root = conn.root_handle(OP)?;
        if self.key_type == Pkcs11KeyType::Ec {
            let public = (*lock(&self.ec_public)).ok_or(RootError::Locked { op: OP })?;
            let kek = conn.with_session(OP, |s| {
                ecdh::unwrap(&public, wrapped, |eph| Self::token_ecdh(s, root, eph, OP))
            })?;
            return Ok(Box::new(MemoryKek::new(&kek)));
        }
        let handle = {
            let anchor = lock(&conn.anchor);
            anchor
                .unwrap_key(
                    &Mechanism::AesKeyWrapPad,
                    root,
                    wrapped,
                    &secret_template(true, false, true, false),
                )
                .map_err(ck(OP))?
        };
        Ok(Box::new(Pkcs11Kek { conn, handle }))
    }

    fn token_keypairs(&self) -> Option<&dyn TokenKeypairs> {
        Some(self)
    }
}

impl TokenKeypairs for Pkcs11Root {
    fn generate(&self, label: &str) -> Result<TokenKeypair, RootError> {
        self.generate_token_keypair_inner(label)
    }

    fn sign(&self, locator: &str, digest: &[u8; 32]) -> Result<Vec<u8>, RootError> {
        self.token_sign_inner(locator, digest)
    }

    fn delete(&self, locator: &str) -> Result<(), RootError> {
        self.token_delete_inner(locator)
    }
}

mod keypair;

/// A KEK unwrapped into a session object of the anchor session.
struct Pkcs11Kek {
    conn: Arc<Conn>,
    handle: ObjectHandle,
}

impl Drop for Pkcs11Kek {
    fn drop(&mut self) {
        let _ = lock(&self.conn.anchor).destroy_object(self.handle);
    }
}

impl Pkcs11Kek {
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
            .map_err(ck(op))?;
        Ok(TempKey { session: s, handle })
    }
}

impl Kek for Pkcs11Kek {
    fn generate_dek(&self) -> Result<Wrapped, RootError> {
        const OP: &str = "generate DEK";
        self.conn
            .with_session(OP, |s| generate_wrapped(s, self.handle, OP))
    }

    fn seal(&self, dek: &[u8], iv: &[u8; 12], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, RootError> {
        const OP: &str = "encrypt";
        self.conn.with_session(OP, |s| {
            let key = self.unwrap_dek(s, dek, false, OP)?;
            let mut iv = *iv;
            let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(ck(OP))?;
            s.encrypt(&Mechanism::AesGcm(params), key.handle, pt)
                .map_err(ck(OP))
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
        self.conn.with_session(OP, |s| {
            let key = self.unwrap_dek(s, dek, false, OP)?;
            let mut iv = *iv;
            let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(ck(OP))?;
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
                Err(e) => Err(ck(OP)(e)),
            }
        })
    }

    fn export_dek(&self, dek: &[u8]) -> Result<Zeroizing<Vec<u8>>, RootError> {
        const OP: &str = "export DEK";
        self.conn.with_session(OP, |s| {
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
        // secrets only: SoftHSM's KWP is RFC 5649 exact for those (DESIGN.md).
        self.conn.with_session(OP, |s| {
            let mut t = secret_template(true, true, false, false);
            t.push(Attribute::Value(secret.to_vec()));
            let key = TempKey {
                session: s,
                handle: s.create_object(&t).map_err(ck(OP))?,
            };
            let bytes = s
                .wrap_key(&Mechanism::AesKeyWrapPad, self.handle, key.handle)
                .map_err(ck(OP))?;
            Ok(Wrapped {
                scheme: Scheme::AesKwp,
                bytes,
            })
        })
    }
}
