//! The link to one PKCS#11 token that both root types share: the loaded module, the token's
//! slot, the login, the anchor session and the pool of worker sessions, and reconnecting when
//! handles go stale.
//!
//! How sessions are kept follows what SoftHSM does (see ARCHITECTURE.md): one context per
//! module per process, shared by every root on it ([`super::module`]: sessions of a generation
//! the module has left answer `Stale`), one login per token, an anchor session open for the
//! token's life in this process (closing the last session would log out and destroy every
//! session object), KEK objects created in the anchor session, and a pool of worker sessions (a
//! `Session` is `Send` but not `Sync`). When handles go stale, [`Connection::recover`]
//! re-initializes the module (unless another root already did), logs in with the PIN held since
//! unlock and finds the root again.
//!
//! Several roots on *one* token (two object labels: `root add` / `root rotate` to another object
//! on the agent's own token) share one [`Token`] (registry keyed by module and token): one set of
//! sessions, one login. PKCS#11 logs in per application and token, so a second login or a logout
//! by one root would be the other's too: a root logs in (after a logout, so the PIN is checked)
//! only while no other root on the token is unlocked, else it checks its PIN against the one the
//! token is logged in with; it logs out at `lock` only when it is the last unlocked root there.
//! Each root keeps its own root object handle in the shared sessions.
//!
//! This module knows nothing of the root's key type: the root types hand it the template that
//! finds their root object. It must never create an object itself, and never keep the PIN after
//! `lock`.

use super::error::{ck, logout_result};
use super::module::{self, Inside, Module};
use super::DEFAULT_ROOT_LABEL;
use crate::root::uri::{encode, Pkcs11Uri};
use crate::root::RootError;
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use cryptoki::types::AuthPin;
use keyward_proto::secret::Pin;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// DER of the P-256 (prime256v1) OID, for CKA_EC_PARAMS.
pub(super) const P256_PARAMS: [u8; 10] =
    [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these mutexes stays consistent across a panic (handles and sessions only).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sessions of one connection on one generation of its module: the anchor session and
/// the pool of worker sessions. Every call goes through [`Module::enter`] with the generation
/// they were opened in, so after a re-initialization of the module (by this root or another on
/// it) they answer `Stale` instead of reaching handles that now belong to someone else.
pub(super) struct Sessions {
    module: Arc<Module>,
    generation: u64,
    pub(super) slot: Slot,
    /// Open for the connection's life; login happens here and KEK objects are created here.
    /// `None` only inside `Drop`.
    anchor: Mutex<Option<Session>>,
    pool: Mutex<Vec<Session>>,
    /// Each root's object on this token, once unlocked (by [`Connection`] number: several roots
    /// on one token share these sessions).
    roots: Mutex<BTreeMap<u64, ObjectHandle>>,
    /// The user PIN these sessions are logged in with (PKCS#11 logs in per token: every session
    /// of this generation shares it). `None` before the login and after a logout.
    pub(super) login: Mutex<Option<Pin>>,
    /// Token keypairs' private-key handles by locator, found once per login on these sessions
    /// (`keypair.rs`); emptied whenever the login ends or objects are destroyed.
    pub(super) keypairs: Mutex<std::collections::HashMap<String, ObjectHandle>>,
    /// The slot says it is hardware (`CKF_HW_SLOT`: a card reader, an HSM); false for a
    /// software token (SoftHSM), whose calls take microseconds.
    hardware: bool,
}

/// The anchor session, locked, with the module entered for the call.
pub(super) struct Anchor<'a> {
    // Dropped first: the session's lock, then the module's gate.
    session: MutexGuard<'a, Option<Session>>,
    _inside: Inside<'a>,
}

impl std::ops::Deref for Anchor<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        match self.session.as_ref() {
            Some(s) => s,
            // The anchor is taken out only in `Drop for Sessions`, which has `&mut self`: no
            // `Anchor` can exist then.
            None => unreachable!("the anchor session is present until the sessions drop"),
        }
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        let anchor = self
            .anchor
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let pool = std::mem::take(self.pool.get_mut().unwrap_or_else(|p| p.into_inner()));
        // Close the sessions only while their generation is current: after a re-initialization
        // their handle numbers may name another root's sessions.
        if let Ok(_inside) = self.module.enter(self.generation, "close sessions") {
            for s in pool {
                let _ = s.close();
            }
            if let Some(a) = anchor {
                let _ = a.close();
            }
        }
    }
}

impl Sessions {
    /// Whether the module is still in the generation these sessions were opened in.
    pub(super) fn is_current(&self) -> bool {
        self.module.is_current(self.generation)
    }

    /// The anchor session for one call: `Stale` once the module was re-initialized.
    pub(super) fn anchor(&self, op: &'static str) -> Result<Anchor<'_>, RootError> {
        let inside = self.module.enter(self.generation, op)?;
        Ok(Anchor {
            session: lock(&self.anchor),
            _inside: inside,
        })
    }

    /// The token's information (label, serial, ...).
    pub(super) fn token_info(&self, op: &'static str) -> Result<TokenInfo, RootError> {
        let inside = self.module.enter(self.generation, op)?;
        inside
            .ctx()
            .get_token_info(self.slot)
            .map_err(ck(op, "C_GetTokenInfo"))
    }

    /// Close the worker sessions (after a logout: they are opened again on demand).
    fn clear_pool(&self, op: &'static str) {
        let pool = std::mem::take(&mut *lock(&self.pool));
        if let Ok(_inside) = self.module.enter(self.generation, op) {
            for s in pool {
                let _ = s.close();
            }
        }
    }

    /// Run `f` on a pooled worker session. A session that saw a stale-handle error is dropped.
    pub(super) fn with_session<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Session) -> Result<T, RootError>,
    ) -> Result<T, RootError> {
        let inside = self.module.enter(self.generation, op)?;
        let pooled = lock(&self.pool).pop();
        let session = match pooled {
            Some(s) => s,
            None => inside
                .ctx()
                .open_rw_session_no_drop(self.slot)
                .map_err(ck(op, "C_OpenSession"))?,
        };
        let out = f(&session);
        if matches!(out, Err(RootError::Stale { .. })) {
            // Its handle is no good; closing it could only fail.
            drop(session);
        } else {
            lock(&self.pool).push(session);
        }
        out
    }
}

/// The anchor session is logged in as the user and the root object answers.
fn usable(s: &Sessions, root: ObjectHandle) -> bool {
    let Ok(anchor) = s.anchor("check the token session") else {
        return false;
    };
    anchor
        .get_session_info()
        .is_ok_and(|i| matches!(i.session_state(), SessionState::RwUser))
        && anchor.get_attributes(root, &[AttributeType::Class]).is_ok()
}

/// A session object destroyed when this guard drops.
pub(super) struct TempKey<'a> {
    pub(super) session: &'a Session,
    pub(super) handle: ObjectHandle,
}

impl Drop for TempKey<'_> {
    fn drop(&mut self) {
        let _ = self.session.destroy_object(self.handle);
    }
}

/// The public key from a CKA_EC_POINT (DER OCTET STRING, or raw as some tokens give).
fn ec_point(bytes: &[u8]) -> Option<p256::PublicKey> {
    let raw = match bytes {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        raw => raw,
    };
    p256::PublicKey::from_sec1_bytes(raw).ok()
}

/// The P-256 public key of an EC public-key object (its CKA_EC_POINT).
pub(super) fn read_ec_point(
    session: &Session,
    handle: ObjectHandle,
    op: &'static str,
) -> Result<p256::PublicKey, RootError> {
    session
        .get_attributes(handle, &[AttributeType::EcPoint])
        .map_err(ck(op, "C_GetAttributeValue"))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => ec_point(&p),
            _ => None,
        })
        .ok_or_else(|| RootError::token(op, "the public key object has no P-256 CKA_EC_POINT"))
}

/// The CKA_VALUE of a non-sensitive session object (an exportable DEK, a derived ECDH secret),
/// copied once into zeroizing memory.
pub(super) fn read_value(
    session: &Session,
    handle: ObjectHandle,
    op: &'static str,
) -> Result<Zeroizing<Vec<u8>>, RootError> {
    for a in session
        .get_attributes(handle, &[AttributeType::Value])
        .map_err(ck(op, "C_GetAttributeValue"))?
    {
        if let Attribute::Value(mut v) = a {
            let out = Zeroizing::new(v.clone());
            zeroize::Zeroize::zeroize(&mut v);
            return Ok(out);
        }
    }
    Err(RootError::token(
        op,
        "the token returned no readable CKA_VALUE",
    ))
}

/// One token as this process uses it, shared by every root object on it ([`Connection`]s
/// whose URIs select the same token of the same module): its sessions (one login) and who is
/// unlocked on it.
struct Token {
    live: RwLock<Option<Arc<Sessions>>>,
    /// Held by the one recovery running on this token: concurrent recoveries would finalize
    /// the library under each other's logins (SoftHSM crashes on that).
    recovering: Mutex<()>,
    /// The roots (by [`Connection`] number) logged in on this token: unlocked, or between their
    /// login and the end of their unlock. Held while logging in or out, so one root's logout
    /// never meets another's login.
    logged_in: Mutex<BTreeSet<u64>>,
}

/// The process's tokens in use, by [`token_key`]; an entry lives as long as a root on it.
fn tokens() -> &'static Mutex<BTreeMap<String, Weak<Token>>> {
    static TOKENS: OnceLock<Mutex<BTreeMap<String, Weak<Token>>>> = OnceLock::new();
    TOKENS.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// The shared [`Token`] for `key`, made on first use.
fn token_for(key: String) -> Arc<Token> {
    let mut reg = lock(tokens());
    reg.retain(|_, t| t.strong_count() > 0);
    if let Some(t) = reg.get(&key).and_then(Weak::upgrade) {
        return t;
    }
    let t = Arc::new(Token {
        live: RwLock::new(None),
        recovering: Mutex::new(()),
        logged_in: Mutex::new(BTreeSet::new()),
    });
    reg.insert(key, Arc::downgrade(&t));
    t
}

/// What identifies the token `uri` selects: the module (as the file it resolves to) and the
/// token's slot and serial when the token can be found now, else the URI's token attributes
/// (two URIs that spell one absent token differently then get two [`Token`]s, as before
/// sharing existed).
fn token_key(module_path: &str, uri: &Pkcs11Uri) -> String {
    let module = module::registry_key(module_path);
    const OP: &str = "connect";
    let found = (|| {
        let m = module::module(module_path, OP)?;
        let generation = m.initialize(OP)?;
        let inside = m.enter(generation, OP)?;
        let slot = find_slot(uri, inside.ctx(), OP)?;
        let info = inside
            .ctx()
            .get_token_info(slot)
            .map_err(ck(OP, "C_GetTokenInfo"))?;
        Ok::<_, RootError>(format!(
            "{module}\nslot={}\nserial={}",
            slot.id(),
            info.serial_number().trim_end()
        ))
    })();
    found.unwrap_or_else(|_| {
        format!(
            "{module}\nuri:token={:?};serial={:?};slot-id={:?};manufacturer={:?};model={:?}",
            uri.token(),
            uri.serial(),
            uri.slot_id(),
            uri.manufacturer(),
            uri.model()
        )
    })
}

/// The one slot whose token the URI names (`slot-id`, `token`, `serial`, `manufacturer`,
/// `model`). Several matching tokens are `Ambiguous`, naming what tells them apart.
fn find_slot(uri: &Pkcs11Uri, ctx: &Pkcs11, op: &'static str) -> Result<Slot, RootError> {
    let want = |field: Option<String>, have: &str| field.is_none_or(|w| w == have.trim_end());
    let mut found = Vec::new();
    // Every slot, and each token's information on its own: a token that fails (another
    // root's, whose files are gone) must not hide this root's token. SoftHSM fails the
    // whole C_GetSlotList(tokenPresent) then.
    let mut failed = None;
    for slot in ctx.get_all_slots().map_err(ck(op, "C_GetSlotList"))? {
        if uri.slot_id().is_some_and(|id| id != slot.id()) {
            continue;
        }
        let info = match ctx.get_token_info(slot) {
            Ok(i) => i,
            Err(CkError::Pkcs11(RvError::TokenNotPresent, _)) => continue,
            Err(e) => {
                failed.get_or_insert(e);
                continue;
            }
        };
        if !info.token_initialized() {
            continue;
        }
        if want(uri.token(), info.label())
            && want(uri.serial(), info.serial_number())
            && want(uri.manufacturer(), info.manufacturer_id())
            && want(uri.model(), info.model())
        {
            found.push((slot, info));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0).0),
        0 if failed.is_some() => Err(failed.map_or_else(
            || RootError::unavailable(op, "no token"),
            ck(op, "C_GetTokenInfo"),
        )),
        0 => Err(RootError::unavailable(
            op,
            format!(
                "no initialized token matches {}",
                uri.token()
                    .map_or("the URI".into(), |t| format!("token `{t}`"))
            ),
        )),
        n => Err(RootError::Ambiguous {
            op,
            detail: format!(
                "{n} tokens match the root's URI ({}): add `token=`, `serial=` or `slot-id=` \
                 to the URI to name one",
                found
                    .iter()
                    .map(|(slot, i)| format!(
                        "slot-id={} token={} serial={}",
                        slot.id(),
                        i.label().trim_end(),
                        i.serial_number().trim_end()
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }),
    }
}

/// Numbers the connections of this process (the key of their root handle in [`Sessions`]).
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// The token a root lives on, shared by [`super::Pkcs11AesRoot`] and [`super::Pkcs11EcRoot`]:
/// one per root object. Several connections may share one module ([`module`]): each is one
/// token or slot, told apart by the URI's `token=`, `serial=`, `slot-id=`; connections to one
/// token (several root objects there) share its [`Token`] (sessions and login).
pub(super) struct Connection {
    /// This connection's number: its key in the token's shared state.
    number: u64,
    module: String,
    uri: Pkcs11Uri,
    /// The root object's label (the URI's `object`, else [`DEFAULT_ROOT_LABEL`]).
    label: String,
    token: Arc<Token>,
    /// Held while unlocked, for re-login after the token or library resets. Never on disk.
    pin: Mutex<Option<Pin>>,
}

impl Drop for Connection {
    /// A root dropped while logged in (a `root add` that failed half-way) must not keep the
    /// token logged in for the roots that stay: the last one out logs out.
    fn drop(&mut self) {
        let _ = self.lock();
    }
}

impl Connection {
    /// Parse the URI, check that `env` is the process's (it is applied once, at start-up:
    /// [`crate::root::env`]), load the module and look for the token. A missing token is not
    /// fatal: operations report `token_unavailable` and connect once it is there.
    pub(super) fn new(uri: &str, env: &BTreeMap<String, String>) -> Result<Self, RootError> {
        let uri = Pkcs11Uri::parse(uri).map_err(|e| RootError::Config(e.to_string()))?;
        let module = uri
            .module_path()
            .or_else(|| uri.module_name().map(|n| format!("lib{n}.so")))
            .ok_or_else(|| {
                RootError::Config(
                    "the PKCS#11 URI names no module (add ?module-path=/path/to/module.so)".into(),
                )
            })?;
        crate::root::env::check_applied(env)?;
        let label = uri.object().unwrap_or_else(|| DEFAULT_ROOT_LABEL.into());
        let token = token_for(token_key(&module, &uri));
        let conn = Connection {
            number: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
            module,
            uri,
            label,
            token,
            pin: Mutex::new(None),
        };
        if let Err(e) = conn.sessions("connect") {
            tracing::warn!(error = %e, "token not reachable at start-up; will retry on use");
        }
        Ok(conn)
    }

    /// Whether the token is a software token (its slot is not `CKF_HW_SLOT`), so that its
    /// calls take microseconds ([`crate::root::Root::fast`]). False while not connected.
    pub(super) fn fast(&self) -> bool {
        self.token
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| !s.hardware)
    }

    pub(super) fn uri(&self) -> &Pkcs11Uri {
        &self.uri
    }

    pub(super) fn label(&self) -> &str {
        &self.label
    }

    /// Open the anchor session on the token, initializing the shared module if it is not.
    fn connect(&self, op: &'static str) -> Result<Sessions, RootError> {
        let m = module::module(&self.module, op)?;
        let generation = m.initialize(op)?;
        let inside = m.enter(generation, op)?;
        let slot = find_slot(&self.uri, inside.ctx(), op)?;
        // Unknown slot information counts as hardware: the safe side (`Connection::fast`).
        let hardware = inside
            .ctx()
            .get_slot_info(slot)
            .map_or(true, |i| i.hardware_slot());
        tracing::debug!(
            hardware,
            "token slot is {}",
            if hardware {
                "hardware: requests run on blocking threads"
            } else {
                "a software token: fast requests may run on the socket's task"
            }
        );
        let anchor = inside
            .ctx()
            .open_rw_session_no_drop(slot)
            .map_err(ck(op, "C_OpenSession"))?;
        drop(inside);
        Ok(Sessions {
            module: m,
            generation,
            slot,
            anchor: Mutex::new(Some(anchor)),
            pool: Mutex::new(Vec::new()),
            roots: Mutex::new(BTreeMap::new()),
            login: Mutex::new(None),
            keypairs: Mutex::new(std::collections::HashMap::new()),
            hardware,
        })
    }

    /// The current sessions, connecting if there are none or if the module was re-initialized
    /// since they were opened (by this root or another root on the module). New sessions have
    /// no root handle: while the PIN is held, [`Connection::root_of`] answers `Stale` on them,
    /// so the caller's recovery logs in again.
    pub(super) fn sessions(&self, op: &'static str) -> Result<Arc<Sessions>, RootError> {
        if let Some(c) = self
            .token
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if c.is_current() {
                return Ok(c.clone());
            }
        }
        let mut w = self.token.live.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = w.as_ref() {
            if c.is_current() {
                return Ok(c.clone());
            }
        }
        // Sessions of an older generation are gone with it: forget them (never closed, see
        // `Drop for Sessions`).
        *w = None;
        let c = Arc::new(self.connect(op)?);
        *w = Some(c.clone());
        Ok(c)
    }

    /// Drop the sessions and finalize the module, so the next use starts afresh (also without
    /// sessions: a module finds its tokens only when it initializes). Every other
    /// connection on the module then finds its sessions of an older generation (`Stale`) and
    /// logs in again on its next use. The module is finalized only if it is still in the
    /// generation of these sessions: another root may have re-initialized it already.
    pub(super) fn disconnect(&self) {
        let old = self
            .token
            .live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(sessions) = old {
            // Give requests still using these sessions a moment to let go (new ones get new
            // sessions). Cached KEKs hold them too; callers empty that cache first. The module's
            // gate then waits for every call of every connection to leave the library.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Arc::strong_count(&sessions) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            let users = Arc::strong_count(&sessions) - 1;
            if users > 0 {
                tracing::warn!(
                    users,
                    "finalizing the PKCS#11 module while requests still hold its sessions"
                );
            }
            sessions.module.finalize(sessions.generation);
            drop(sessions);
        } else if let Some(m) = module::loaded(&self.module) {
            // No sessions: the last connect failed (SoftHSM saw no such token at its
            // C_Initialize, e.g. its files were gone). A module finds tokens only when it
            // initializes, so start it afresh for the next try even though other roots on it
            // then log in again.
            m.finalize(m.generation());
        }
    }

    /// Log in as the user on the anchor session (logging out first, so the PIN is really
    /// checked).
    pub(super) fn login(&self, s: &Sessions, pin: &Pin, op: &'static str) -> Result<(), RootError> {
        self.login_as(s, UserType::User, pin, op)
    }

    /// Log in as `user` on the anchor session, after a logout that forgets the root handles and
    /// the worker sessions. While another root on this token is logged in (unlocked), the token
    /// is not logged out (that would log the other root out and destroy its opened KEKs): a user
    /// login then only checks `pin` against the PIN the token is logged in with, and an SO login
    /// is refused.
    pub(super) fn login_as(
        &self,
        s: &Sessions,
        user: UserType,
        pin: &Pin,
        op: &'static str,
    ) -> Result<(), RootError> {
        let as_user = matches!(user, UserType::User);
        let mut logged_in = lock(&self.token.logged_in);
        if logged_in.iter().any(|n| *n != self.number) {
            if !as_user {
                return Err(RootError::token(
                    op,
                    "cannot log in as the security officer while another root on this token is \
                     unlocked (a login is per token)",
                ));
            }
            let held = lock(&s.login).clone();
            if let Some(held) = held {
                let same: bool = held
                    .expose()
                    .as_bytes()
                    .ct_eq(pin.expose().as_bytes())
                    .into();
                if !same {
                    // The token is logged in with the right PIN; another one is wrong.
                    return Err(RootError::PinIncorrect {
                        op,
                        card_retries: None,
                    });
                }
                logged_in.insert(self.number);
                return Ok(());
            }
            // These sessions are not logged in yet (a new generation): log in as usual.
        }
        let anchor = s.anchor(op)?;
        let _ = anchor.logout();
        *lock(&s.login) = None;
        lock(&s.roots).clear();
        lock(&s.keypairs).clear();
        s.clear_pool(op);
        anchor
            .login(user, Some(&AuthPin::from(pin.expose().to_string())))
            .map_err(ck(op, "C_Login"))?;
        if as_user {
            *lock(&s.login) = Some(pin.clone());
            logged_in.insert(self.number);
        }
        Ok(())
    }

    /// The objects matching `template`, found on the anchor session.
    pub(super) fn find(
        &self,
        s: &Sessions,
        template: &[Attribute],
        op: &'static str,
    ) -> Result<Vec<ObjectHandle>, RootError> {
        s.anchor(op)?
            .find_objects(template)
            .map_err(ck(op, "C_FindObjects"))
    }

    /// The one root object `template` finds (the root types put the object's label, and its
    /// CKA_ID when the URI has `id=`, in it). Several are `Ambiguous`, naming the labels and
    /// ids that would tell them apart in the URI.
    pub(super) fn find_root(
        &self,
        s: &Sessions,
        template: &[Attribute],
        op: &'static str,
    ) -> Result<ObjectHandle, RootError> {
        let found = self.find(s, template, op)?;
        match found.as_slice() {
            [h] => Ok(*h),
            [] => Err(RootError::RootMissing { op }),
            _ => {
                let anchor = s.anchor(op)?;
                let names: Vec<String> = found
                    .iter()
                    .map(|h| {
                        let attrs = anchor
                            .get_attributes(*h, &[AttributeType::Label, AttributeType::Id])
                            .unwrap_or_default();
                        let mut label = String::new();
                        let mut id = String::new();
                        for a in attrs {
                            match a {
                                Attribute::Label(l) => label = encode(&l),
                                Attribute::Id(i) => id = encode(&i),
                                _ => {}
                            }
                        }
                        format!("object={label};id={id}")
                    })
                    .collect();
                let token = self.uri.token().unwrap_or_else(|| "(any)".into());
                Err(RootError::Ambiguous {
                    op,
                    detail: format!(
                        "{} root objects on token `{token}` match the URI ({}): add the `id=` \
                         (and `object=`) of the one to use to the URI",
                        found.len(),
                        names.join(", ")
                    ),
                })
            }
        }
    }

    /// The CKA_ID for a new root: the URI's, else 16 random bytes from the token.
    pub(super) fn new_root_id(&self, s: &Sessions, op: &'static str) -> Result<Vec<u8>, RootError> {
        match self.uri.id() {
            Some(id) => Ok(id.to_vec()),
            None => {
                let mut id = vec![0u8; 16];
                s.anchor(op)?
                    .generate_random_slice(&mut id)
                    .map_err(ck(op, "C_GenerateRandom"))?;
                Ok(id)
            }
        }
    }

    /// The locator of a root object just made with `id`: token label and serial, object label
    /// and id, and `tail` (`type=...` and any query).
    pub(super) fn root_locator(
        &self,
        s: &Sessions,
        id: &[u8],
        tail: &str,
        op: &'static str,
    ) -> Result<String, RootError> {
        let info = s.token_info(op)?;
        Ok(format!(
            "pkcs11:token={};serial={};object={};id={};{tail}",
            encode(info.label().trim_end().as_bytes()),
            encode(info.serial_number().trim_end().as_bytes()),
            encode(self.label.as_bytes()),
            encode(id)
        ))
    }

    /// Record the root as found and the PIN as right: the connection is unlocked.
    pub(super) fn set_unlocked(&self, s: &Sessions, root: ObjectHandle, pin: &Pin) {
        lock(&s.roots).insert(self.number, root);
        *lock(&self.pin) = Some(pin.clone());
        lock(&self.token.logged_in).insert(self.number);
    }

    /// Log in, find the root with `template`, run `found` (the root type's own checks), and
    /// hold the PIN. When another root re-initializes the module meanwhile (the sessions turn
    /// `Stale` because their generation is gone), start again on new sessions, a few times.
    fn unlock_once(
        &self,
        pin: &Pin,
        op: &'static str,
        template: &[Attribute],
        found: &dyn Fn(&Sessions, &'static str) -> Result<(), RootError>,
    ) -> Result<(), RootError> {
        let mut tries = 0;
        loop {
            let s = self.sessions(op)?;
            let out = self.login(&s, pin, op).and_then(|()| {
                let root = self.find_root(&s, template, op)?;
                found(&s, op)?;
                self.set_unlocked(&s, root, pin);
                Ok(())
            });
            match out {
                Err(RootError::Stale { .. }) if !s.is_current() && tries < 3 => tries += 1,
                Err(e) => {
                    // Logged in for nothing: do not keep the token logged in for this root.
                    if !self.is_unlocked() {
                        let _ = self.leave();
                    }
                    return Err(e);
                }
                ok => return ok,
            }
        }
    }

    /// `unlock`: check the PIN and find the root; never creates one.
    pub(super) fn unlock(
        &self,
        pin: &Pin,
        template: &[Attribute],
        found: &dyn Fn(&Sessions, &'static str) -> Result<(), RootError>,
    ) -> Result<(), RootError> {
        const OP: &str = "unlock";
        match self.unlock_once(pin, OP, template, found) {
            // SoftHSM (and other file-backed modules) never heal in-process once their token
            // files were gone: only C_Finalize + C_Initialize does (ARCHITECTURE.md). So when
            // unlock fails for any reason but the PIN, start the module afresh and try once more.
            // This never creates a root: a missing root stays `RootMissing`. Other roots on the
            // module see `Stale` once and log in again.
            Err(
                e @ (RootError::Token { .. }
                | RootError::Stale { .. }
                | RootError::Unavailable { .. }
                | RootError::RootMissing { .. }),
            ) => {
                tracing::warn!(error = %e, "unlock failed: reinitializing the PKCS#11 module and trying once more");
                self.disconnect();
                self.unlock_once(pin, OP, template, found)
            }
            other => other,
        }
    }

    /// After a `Stale` error: reconnect, log in again with the PIN given at unlock, find the
    /// root. When another root re-initialized the module (the sessions are of an older
    /// generation), this only opens new sessions and logs in: finalizing again would take the
    /// other root's new sessions with it.
    pub(super) fn recover(
        &self,
        template: &[Attribute],
        found: &dyn Fn(&Sessions, &'static str) -> Result<(), RootError>,
    ) -> Result<(), RootError> {
        const OP: &str = "recover token session";
        let _one = lock(&self.token.recovering);
        let pin = lock(&self.pin)
            .clone()
            .ok_or(RootError::Locked { op: OP })?;
        let live = self
            .token
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(s) = live {
            if !s.is_current() {
                drop(s);
                match self.unlock_once(&pin, OP, template, found) {
                    Ok(()) => {
                        tracing::info!("the PKCS#11 module was re-initialized (another root's recovery): logged in again with the held PIN");
                        return Ok(());
                    }
                    // The module is being re-initialized again by another root: finalizing it
                    // here as well would only take that root's new sessions too.
                    Err(e @ RootError::Stale { .. }) => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "logging in again after the module's re-initialization failed");
                    }
                }
            } else {
                let root = lock(&s.roots).get(&self.number).copied();
                match root {
                    // Another request recovered while this one waited (or the trouble has
                    // passed): the sessions work; finalizing them would fail every request
                    // using them.
                    Some(root) if usable(&s, root) => return Ok(()),
                    // Connected after a recovery that failed (the token's files were gone, and
                    // are back): log in on them.
                    None => {
                        if self.unlock_once(&pin, OP, template, found).is_ok() {
                            tracing::info!("token reachable again: logged in with the held PIN");
                            return Ok(());
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        tracing::warn!("token handles went stale: reinitializing the module and logging in again");
        self.disconnect();
        self.unlock_once(&pin, OP, template, found)
            .map_err(|e| match e {
                // The token answered before and cannot be reached now (SoftHSM with its files
                // gone fails `C_Initialize` with CKR_GENERAL_ERROR): unavailable, not broken.
                RootError::Token { op, cause } => RootError::Unavailable { op, cause },
                e => e,
            })
    }

    /// Forget the PIN and log out, which destroys every private session object (all unwrapped
    /// KEKs and DEKs). A failed `C_Logout` is reported, not hidden: the library is then finalized
    /// (closing every session, which takes its objects with it) and the error returned. Sessions
    /// of an older generation are gone already: nothing to log out. While another root on this
    /// token is unlocked, only this root's PIN and object handle are forgotten: the token stays
    /// logged in for the other (its KEKs are its own; this root's opened KEKs are dropped by
    /// the hierarchy, which destroys their objects).
    pub(super) fn lock(&self) -> Result<(), RootError> {
        *lock(&self.pin) = None;
        self.leave()
    }

    /// This root leaves the token's login: its object handle is forgotten, and the token is
    /// logged out unless another root on it is still logged in.
    fn leave(&self) -> Result<(), RootError> {
        let mut logged_in = lock(&self.token.logged_in);
        logged_in.remove(&self.number);
        let live = self
            .token
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(s) = live else {
            return Ok(());
        };
        lock(&s.roots).remove(&self.number);
        if !logged_in.is_empty() {
            return Ok(());
        }
        *lock(&s.login) = None;
        lock(&s.keypairs).clear();
        s.clear_pool("lock");
        let out = match s.anchor("lock") {
            Ok(anchor) => logout_result(anchor.logout()),
            Err(_) => Ok(()),
        };
        drop(s);
        drop(logged_in);
        if let Err(e) = &out {
            tracing::error!(error = %e, "lock: C_Logout failed; finalizing the PKCS#11 module to close every session");
            self.disconnect();
        }
        out
    }

    /// Destroy every token object each of `templates` finds (`root.rotate --destroy-old`);
    /// returns how many. Needs the connection unlocked.
    pub(super) fn destroy_objects(
        &self,
        templates: &[Vec<Attribute>],
        op: &'static str,
    ) -> Result<usize, RootError> {
        let s = self.sessions(op)?;
        self.root_of(&s, op)?;
        let n = s.with_session(op, |sess| {
            let mut n = 0;
            for t in templates {
                for h in sess.find_objects(t).map_err(ck(op, "C_FindObjects"))? {
                    sess.destroy_object(h).map_err(ck(op, "C_DestroyObject"))?;
                    n += 1;
                }
            }
            Ok(n)
        })?;
        lock(&s.roots).remove(&self.number);
        lock(&s.keypairs).clear();
        Ok(n)
    }

    pub(super) fn is_unlocked(&self) -> bool {
        lock(&self.pin).is_some()
    }

    /// The root object on `s`. Sessions without it while the PIN is held were connected after
    /// a recovery that failed (the token's files were gone, so `C_Initialize` or the login
    /// failed), or after another root re-initialized the module: that is `Stale`, so the
    /// caller's recovery logs in again with the held PIN, instead of every operation answering
    /// `locked` from an agent that says it is unlocked. Without the PIN it is `Locked`.
    pub(super) fn root_of(
        &self,
        s: &Sessions,
        op: &'static str,
    ) -> Result<ObjectHandle, RootError> {
        let root = lock(&s.roots).get(&self.number).copied();
        match root {
            Some(h) => Ok(h),
            None if self.is_unlocked() => Err(RootError::stale(
                op,
                "the module was re-initialized without the root (an earlier recovery failed, or \
                 another root on the module recovered)",
            )),
            None => Err(RootError::Locked { op }),
        }
    }

    /// The token's serial (`C_GetTokenInfo`, no login), `None` when it cannot be read.
    pub(super) fn token_serial(&self) -> Option<String> {
        const OP: &str = "token serial";
        let info = self.sessions(OP).and_then(|s| s.token_info(OP)).ok()?;
        Some(info.serial_number().trim_end().to_string())
    }

    /// A description for people; `suffix` says what kind of root.
    pub(super) fn describe(&self, suffix: &str) -> String {
        let token = self.uri.token().unwrap_or_else(|| "(any)".into());
        match self.sessions("describe").and_then(|s| {
            s.token_info("describe").map(|i| {
                (
                    i.manufacturer_id().to_string(),
                    i.serial_number().to_string(),
                )
            })
        }) {
            Ok((mfr, serial)) => format!(
                "PKCS#11 token `{token}` ({mfr}, serial {serial}) via {}{suffix}",
                self.module
            ),
            Err(_) => format!(
                "PKCS#11 token `{token}` via {}{suffix} (not reachable)",
                self.module
            ),
        }
    }
}
