//! The link to one PKCS#11 token that both root types share: the loaded module, the token's
//! slot, the login, the anchor session and the pool of worker sessions, and reconnecting when
//! handles go stale.
//!
//! How sessions are kept follows what SoftHSM does (see ARCHITECTURE.md): one context per
//! process, one login, an anchor session open for the process's life (closing the last session
//! would log out and destroy every session object), KEK objects created in the anchor session,
//! and a pool of worker sessions (a `Session` is `Send` but not `Sync`). When handles go stale,
//! [`Connection::recover`] finalizes the library, initializes it again, logs in with the PIN held
//! since unlock and finds the root again. This module knows nothing of the root's key type: the
//! root types hand it the template that finds their root object. It must never create an object
//! itself, and never keep the PIN after `lock`.

use super::error::{ck, logout_result};
use super::DEFAULT_ROOT_LABEL;
use crate::root::uri::{encode, Pkcs11Uri};
use crate::root::RootError;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyward_proto::secret::Pin;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// DER of the P-256 (prime256v1) OID, for CKA_EC_PARAMS.
pub(super) const P256_PARAMS: [u8; 10] =
    [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these mutexes stays consistent across a panic (handles and sessions only).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One loaded and initialized module with its anchor session and worker pool.
pub(super) struct Sessions {
    pub(super) ctx: Pkcs11,
    pub(super) slot: Slot,
    /// Open for the process's life; login happens here and KEK objects are created here.
    pub(super) anchor: Mutex<Session>,
    pool: Mutex<Vec<Session>>,
    /// The root object, once unlocked.
    pub(super) root: Mutex<Option<ObjectHandle>>,
    /// True once the module was finalized. Every call through a worker session holds this for
    /// reading; [`Connection::disconnect`] takes it for writing before `C_Finalize`, so no call
    /// is inside the library when it is finalized (SoftHSM crashed on that under load).
    finalized: RwLock<bool>,
}

impl Sessions {
    /// Run `f` on a pooled worker session. A session that saw a stale-handle error is dropped.
    pub(super) fn with_session<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Session) -> Result<T, RootError>,
    ) -> Result<T, RootError> {
        let finalized = self.finalized.read().unwrap_or_else(|p| p.into_inner());
        if *finalized {
            return Err(RootError::stale(op, "the PKCS#11 module was finalized"));
        }
        let pooled = lock(&self.pool).pop();
        let session = match pooled {
            Some(s) => s,
            None => self
                .ctx
                .open_rw_session(self.slot)
                .map_err(ck(op, "C_OpenSession"))?,
        };
        let out = f(&session);
        if !matches!(out, Err(RootError::Stale { .. })) {
            lock(&self.pool).push(session);
        }
        out
    }
}

/// The anchor session is logged in as the user and the root object answers.
fn usable(s: &Sessions, root: ObjectHandle) -> bool {
    let anchor = lock(&s.anchor);
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

/// The token a root lives on, shared by [`super::Pkcs11AesRoot`] and [`super::Pkcs11EcRoot`].
pub(super) struct Connection {
    module: String,
    uri: Pkcs11Uri,
    /// The root object's label (the URI's `object`, else [`DEFAULT_ROOT_LABEL`]).
    label: String,
    live: RwLock<Option<Arc<Sessions>>>,
    /// Held while unlocked, for re-login after the token or library resets. Never on disk.
    pin: Mutex<Option<Pin>>,
    /// Held by the one recovery running: concurrent recoveries would finalize the library
    /// under each other's logins (SoftHSM crashes on that).
    recovering: Mutex<()>,
}

impl Connection {
    /// Parse the URI, set `env`, load the module and look for the token. A missing token is not
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
        for (k, v) in env {
            // Start-up, before any thread that could read the environment exists.
            std::env::set_var(k, v);
        }
        let label = uri.object().unwrap_or_else(|| DEFAULT_ROOT_LABEL.into());
        let conn = Connection {
            module,
            uri,
            label,
            live: RwLock::new(None),
            pin: Mutex::new(None),
            recovering: Mutex::new(()),
        };
        if let Err(e) = conn.sessions("connect") {
            tracing::warn!(error = %e, "token not reachable at start-up; will retry on use");
        }
        Ok(conn)
    }

    pub(super) fn uri(&self) -> &Pkcs11Uri {
        &self.uri
    }

    pub(super) fn label(&self) -> &str {
        &self.label
    }

    fn connect(&self, op: &'static str) -> Result<Sessions, RootError> {
        let ctx = Pkcs11::new(&self.module)
            .map_err(|e| RootError::unavailable(op, format!("loading {}: {e}", self.module)))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(ck(op, "C_Initialize")(e)),
        }
        let slot = self.find_slot(&ctx, op)?;
        let anchor = ctx.open_rw_session(slot).map_err(ck(op, "C_OpenSession"))?;
        Ok(Sessions {
            ctx,
            slot,
            anchor: Mutex::new(anchor),
            pool: Mutex::new(Vec::new()),
            root: Mutex::new(None),
            finalized: RwLock::new(false),
        })
    }

    fn find_slot(&self, ctx: &Pkcs11, op: &'static str) -> Result<Slot, RootError> {
        let want = |field: Option<String>, have: &str| field.is_none_or(|w| w == have.trim_end());
        for slot in ctx
            .get_slots_with_initialized_token()
            .map_err(ck(op, "C_GetSlotList"))?
        {
            if self.uri.slot_id().is_some_and(|id| id != slot.id()) {
                continue;
            }
            let info = ctx.get_token_info(slot).map_err(ck(op, "C_GetTokenInfo"))?;
            if want(self.uri.token(), info.label())
                && want(self.uri.serial(), info.serial_number())
                && want(self.uri.manufacturer(), info.manufacturer_id())
                && want(self.uri.model(), info.model())
            {
                return Ok(slot);
            }
        }
        Err(RootError::unavailable(
            op,
            format!(
                "no initialized token matches {}",
                self.uri
                    .token()
                    .map_or("the URI".into(), |t| format!("token `{t}`"))
            ),
        ))
    }

    /// The current sessions, connecting if there are none.
    pub(super) fn sessions(&self, op: &'static str) -> Result<Arc<Sessions>, RootError> {
        if let Some(c) = self.live.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let mut w = self.live.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = w.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(self.connect(op)?);
        *w = Some(c.clone());
        Ok(c)
    }

    /// Drop the sessions and finalize the library, so the next use starts afresh.
    pub(super) fn disconnect(&self) {
        let old = self.live.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(sessions) = old {
            // PKCS#11 leaves C_Finalize undefined while other threads are in calls, and SoftHSM
            // can hang then: give requests still using these sessions a moment to let go (new
            // ones get new sessions). Cached KEKs hold them too; callers empty that cache first.
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
            let ctx = sessions.ctx.clone();
            {
                // No call may be inside the library while it finalizes: wait for the anchor and
                // for every worker call to finish, and mark the sessions finalized so that later
                // holders (cached KEKs of in-flight requests) fail with stale handles and retry
                // on new sessions instead of calling into a finalized module.
                let _anchor = lock(&sessions.anchor);
                let mut finalized = sessions
                    .finalized
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                *finalized = true;
                let _ = ctx.finalize();
            }
            drop(sessions);
        }
    }

    /// Log in as the user on the anchor session (logging out first, so the PIN is really
    /// checked).
    pub(super) fn login(&self, s: &Sessions, pin: &Pin, op: &'static str) -> Result<(), RootError> {
        self.login_as(s, UserType::User, pin, op)
    }

    /// Log in as `user` on the anchor session, after a logout that forgets the root handle and
    /// the worker sessions.
    pub(super) fn login_as(
        &self,
        s: &Sessions,
        user: UserType,
        pin: &Pin,
        op: &'static str,
    ) -> Result<(), RootError> {
        let anchor = lock(&s.anchor);
        let _ = anchor.logout();
        *lock(&s.root) = None;
        lock(&s.pool).clear();
        anchor
            .login(user, Some(&AuthPin::from(pin.expose().to_string())))
            .map_err(ck(op, "C_Login"))
    }

    /// The objects matching `template`, found on the anchor session.
    pub(super) fn find(
        &self,
        s: &Sessions,
        template: &[Attribute],
        op: &'static str,
    ) -> Result<Vec<ObjectHandle>, RootError> {
        lock(&s.anchor)
            .find_objects(template)
            .map_err(ck(op, "C_FindObjects"))
    }

    /// The one root object `template` finds.
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
            _ => Err(RootError::token(
                op,
                format!(
                    "{} objects match the root's label `{}`",
                    found.len(),
                    self.label
                ),
            )),
        }
    }

    /// The CKA_ID for a new root: the URI's, else 16 random bytes from the token.
    pub(super) fn new_root_id(&self, s: &Sessions, op: &'static str) -> Result<Vec<u8>, RootError> {
        match self.uri.id() {
            Some(id) => Ok(id.to_vec()),
            None => {
                let mut id = vec![0u8; 16];
                lock(&s.anchor)
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
        let info = s
            .ctx
            .get_token_info(s.slot)
            .map_err(ck(op, "C_GetTokenInfo"))?;
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
        *lock(&s.root) = Some(root);
        *lock(&self.pin) = Some(pin.clone());
    }

    /// Log in, find the root with `template`, run `found` (the root type's own checks), and
    /// hold the PIN.
    fn unlock_once(
        &self,
        pin: &Pin,
        op: &'static str,
        template: &[Attribute],
        found: &dyn Fn(&Sessions, &'static str) -> Result<(), RootError>,
    ) -> Result<(), RootError> {
        let s = self.sessions(op)?;
        self.login(&s, pin, op)?;
        let root = self.find_root(&s, template, op)?;
        found(&s, op)?;
        self.set_unlocked(&s, root, pin);
        Ok(())
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
            // This never creates a root: a missing root stays `RootMissing`.
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
    /// root.
    pub(super) fn recover(
        &self,
        template: &[Attribute],
        found: &dyn Fn(&Sessions, &'static str) -> Result<(), RootError>,
    ) -> Result<(), RootError> {
        const OP: &str = "recover token session";
        let _one = lock(&self.recovering);
        let pin = lock(&self.pin)
            .clone()
            .ok_or(RootError::Locked { op: OP })?;
        let live = self.live.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(s) = live {
            let root = *lock(&s.root);
            match root {
                // Another request recovered while this one waited (or the trouble has passed):
                // the sessions work; finalizing them would fail every request using them.
                Some(root) if usable(&s, root) => return Ok(()),
                // Connected after a recovery that failed (the token's files were gone, and are
                // back): log in on them.
                None => {
                    if self.unlock_once(&pin, OP, template, found).is_ok() {
                        tracing::info!("token reachable again: logged in with the held PIN");
                        return Ok(());
                    }
                }
                Some(_) => {}
            }
        }
        tracing::warn!("token handles went stale: reinitializing the module and logging in again");
        self.disconnect();
        self.unlock_once(&pin, OP, template, found)
    }

    /// Forget the PIN and log out, which destroys every private session object (all unwrapped
    /// KEKs and DEKs). A failed `C_Logout` is reported, not hidden: the library is then finalized
    /// (closing every session, which takes its objects with it) and the error returned.
    pub(super) fn lock(&self) -> Result<(), RootError> {
        *lock(&self.pin) = None;
        let live = self.live.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(s) = live else {
            return Ok(());
        };
        *lock(&s.root) = None;
        lock(&s.pool).clear();
        let out = logout_result(lock(&s.anchor).logout());
        drop(s);
        if let Err(e) = &out {
            tracing::error!(error = %e, "lock: C_Logout failed; finalizing the PKCS#11 module to close every session");
            self.disconnect();
        }
        out
    }

    pub(super) fn is_unlocked(&self) -> bool {
        lock(&self.pin).is_some()
    }

    /// The root object on `s`. Sessions without it while the PIN is held were connected after
    /// a recovery that failed (the token's files were gone, so `C_Initialize` or the login
    /// failed): that is `Stale`, so the caller's recovery logs in again with the held PIN once
    /// the token is back, instead of every operation answering `locked` from an agent that
    /// says it is unlocked. Without the PIN it is `Locked`.
    pub(super) fn root_of(
        &self,
        s: &Sessions,
        op: &'static str,
    ) -> Result<ObjectHandle, RootError> {
        match *lock(&s.root) {
            Some(h) => Ok(h),
            None if self.is_unlocked() => Err(RootError::stale(
                op,
                "the module was re-initialized without the root (an earlier recovery failed)",
            )),
            None => Err(RootError::Locked { op }),
        }
    }

    /// A description for people; `suffix` says what kind of root.
    pub(super) fn describe(&self, suffix: &str) -> String {
        let token = self.uri.token().unwrap_or_else(|| "(any)".into());
        match self.sessions("describe").and_then(|s| {
            s.ctx
                .get_token_info(s.slot)
                .map_err(ck("describe", "C_GetTokenInfo"))
                .map(|i| {
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
