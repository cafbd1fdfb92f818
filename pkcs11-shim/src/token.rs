//! The module's state and every PKCS#11 operation, in safe Rust: one slot and one token standing
//! for the agent, sessions, login, objects, and the mechanisms.
//!
//! The FFI layer (`ffi.rs`) turns C arguments into the plain values these functions take, and
//! their results back into C; nothing here touches a raw pointer. State is per process: after
//! `fork` the child sees `CKR_CRYPTOKI_NOT_INITIALIZED` until it calls `C_Initialize`, which
//! leaves the parent's state alone (it is leaked, never torn down: its sockets are the
//! parent's). No lock is held while the agent is called, so threads sign concurrently, each on
//! a pooled connection. This module must never keep a PIN, never hold a private or secret key's
//! value (a derived session secret is the one exception, and it is zeroized when its session
//! closes), and never start a thread.

use crate::conn::{Agent, CallError};
use crate::objects::{self, unwrap_point, Curve, Kind, Object, Read};
use crate::template;
use cryptoki_sys::*;
use keyward_proto::ops::{self as wire, op, Operation};
use keyward_proto::secret::{Pin, SecretBytes};
use keyward_proto::ErrorCode;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use zeroize::Zeroizing;

/// A PKCS#11 return value other than `CKR_OK`.
pub type R<T> = Result<T, CK_RV>;

/// The one slot.
pub const SLOT: CK_SLOT_ID = 1;
/// Largest message a multi-part operation buffers (EdDSA and GCM need the whole message).
const MAX_BUFFERED: usize = 760 * 1024;
/// Signatures of every mechanism here are 64 bytes (P-256 r‖s, Ed25519).
const SIG_LEN: usize = 64;

/// The mechanisms the token offers, with `CK_MECHANISM_INFO` (min, max, flags).
pub const MECHANISMS: &[(CK_MECHANISM_TYPE, CK_ULONG, CK_ULONG, CK_FLAGS)] = &[
    (
        CKM_EC_KEY_PAIR_GEN,
        256,
        256,
        CKF_GENERATE_KEY_PAIR | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS,
    ),
    (CKM_EC_EDWARDS_KEY_PAIR_GEN, 255, 255, CKF_GENERATE_KEY_PAIR),
    (
        CKM_ECDSA,
        256,
        256,
        CKF_SIGN | CKF_VERIFY | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS,
    ),
    (
        CKM_ECDSA_SHA256,
        256,
        256,
        CKF_SIGN | CKF_VERIFY | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS,
    ),
    (CKM_EDDSA, 255, 255, CKF_SIGN | CKF_VERIFY),
    (
        CKM_ECDH1_DERIVE,
        256,
        256,
        CKF_DERIVE | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS,
    ),
    (CKM_AES_KEY_GEN, 32, 32, CKF_GENERATE),
    (CKM_AES_GCM, 32, 32, CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_SHA256, 0, 0, CKF_DIGEST),
    (CKM_SHA384, 0, 0, CKF_DIGEST),
    (CKM_SHA512, 0, 0, CKF_DIGEST),
];

/// A mechanism with its parameters, read from the caller's `CK_MECHANISM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mech {
    /// A mechanism whose parameter this module ignores or that has none.
    Plain(CK_MECHANISM_TYPE),
    Gcm {
        iv: Vec<u8>,
        aad: Vec<u8>,
        tag_bits: CK_ULONG,
    },
    Ecdh {
        kdf: CK_ULONG,
        shared: Vec<u8>,
        public: Vec<u8>,
    },
    Eddsa {
        prehash: bool,
        context: Vec<u8>,
    },
}

impl Mech {
    pub fn kind(&self) -> CK_MECHANISM_TYPE {
        match self {
            Mech::Plain(t) => *t,
            Mech::Gcm { .. } => CKM_AES_GCM,
            Mech::Ecdh { .. } => CKM_ECDH1_DERIVE,
            Mech::Eddsa { .. } => CKM_EDDSA,
        }
    }
}

/// An attribute template a caller gave: `(type, value)`.
pub type Template = Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>;

/// What an output-producing call gives the FFI layer (the two-call convention).
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// NULL buffer: the length, and the operation stays active.
    Need(usize),
    /// Too small a buffer: `CKR_BUFFER_TOO_SMALL` with the length; the operation stays active.
    TooSmall(usize),
    /// The output; the operation is over.
    Done(Zeroizing<Vec<u8>>),
}

fn out_for(need: usize, cap: Option<usize>) -> Option<Out> {
    match cap {
        None => Some(Out::Need(need)),
        Some(c) if c < need => Some(Out::TooSmall(need)),
        _ => None,
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(m: CK_MECHANISM_TYPE) -> Option<Hasher> {
        Some(match m {
            CKM_SHA256 => Hasher::Sha256(sha2::Sha256::new()),
            CKM_SHA384 => Hasher::Sha384(sha2::Sha384::new()),
            CKM_SHA512 => Hasher::Sha512(sha2::Sha512::new()),
            _ => return None,
        })
    }
    fn len(&self) -> usize {
        match self {
            Hasher::Sha256(_) => 32,
            Hasher::Sha384(_) => 48,
            Hasher::Sha512(_) => 64,
        }
    }
    fn update(&mut self, d: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(d),
            Hasher::Sha384(h) => h.update(d),
            Hasher::Sha512(h) => h.update(d),
        }
    }
    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// The message of a sign or verify operation so far.
enum Input {
    /// Hashed as it comes (`CKM_ECDSA_SHA256`).
    Hashed(sha2::Sha256),
    /// Kept whole (`CKM_ECDSA` takes a digest, `CKM_EDDSA` the message).
    Buffer(Vec<u8>),
}

impl Input {
    fn new(mech: CK_MECHANISM_TYPE) -> Input {
        if mech == CKM_ECDSA_SHA256 {
            Input::Hashed(sha2::Sha256::new())
        } else {
            Input::Buffer(Vec::new())
        }
    }
    fn update(&mut self, d: &[u8]) -> R<()> {
        match self {
            Input::Hashed(h) => h.update(d),
            Input::Buffer(b) => {
                if b.len() + d.len() > MAX_BUFFERED {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                b.extend_from_slice(d)
            }
        }
        Ok(())
    }
}

struct KeyOp {
    mech: Mech,
    key: Object,
    input: Input,
    /// Whether `*Update` was called (then the single-part call is refused).
    multi: bool,
}

struct CryptOp {
    encrypt: bool,
    key_id: String,
    iv: Vec<u8>,
    aad: Vec<u8>,
    tag_len: usize,
    data: Zeroizing<Vec<u8>>,
    multi: bool,
}

#[derive(Default)]
struct Session {
    rw: bool,
    find: Option<Vec<CK_OBJECT_HANDLE>>,
    sign: Option<KeyOp>,
    verify: Option<KeyOp>,
    digest: Option<Hasher>,
    crypt: Option<CryptOp>,
}

/// Which half of a key a handle names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Half {
    Private,
    Public,
    Secret,
    Cert,
}

#[derive(Default)]
struct State {
    sessions: HashMap<CK_SESSION_HANDLE, Session>,
    next_session: CK_SESSION_HANDLE,
    logged_in: bool,
    objects: HashMap<CK_OBJECT_HANDLE, Object>,
    handles: HashMap<(String, Half), CK_OBJECT_HANDLE>,
    next_object: CK_OBJECT_HANDLE,
    listed: bool,
}

impl State {
    fn session(&mut self, h: CK_SESSION_HANDLE) -> R<&mut Session> {
        self.sessions.get_mut(&h).ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    /// An object this session may see (private ones only after login).
    fn object(&self, h: CK_OBJECT_HANDLE) -> R<&Object> {
        let o = self.objects.get(&h).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
        if o.is_private() && !self.logged_in {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        Ok(o)
    }

    fn key(&self, h: CK_OBJECT_HANDLE) -> R<&Object> {
        self.object(h).map_err(|e| {
            if e == CKR_OBJECT_HANDLE_INVALID {
                CKR_KEY_HANDLE_INVALID
            } else {
                e
            }
        })
    }

    fn handle_for(&mut self, key: String, half: Half) -> CK_OBJECT_HANDLE {
        if let Some(h) = self.handles.get(&(key.clone(), half)) {
            return *h;
        }
        self.next_object += 1;
        let h = self.next_object;
        self.handles.insert((key, half), h);
        h
    }

    fn add_session_object(&mut self, o: Object) -> CK_OBJECT_HANDLE {
        self.next_object += 1;
        let h = self.next_object;
        self.objects.insert(h, o);
        h
    }

    fn drop_session(&mut self, h: CK_SESSION_HANDLE) {
        self.sessions.remove(&h);
        self.objects
            .retain(|_, o| !matches!(o.kind, Kind::Derived { session, .. } if session == h));
        if self.sessions.is_empty() {
            // The spec: closing the last session logs the application out.
            self.logged_in = false;
        }
    }
}

/// The module as initialized in one process.
pub struct Module {
    pid: u32,
    agent: Agent,
    st: Mutex<State>,
    /// `KEYWARD_PKCS11_HIDE_EDDSA=1`: show no Ed25519 keypairs. libp11 0.4.12 (Debian 12's
    /// OpenSSL engine) fails its whole key enumeration on a key type it does not know.
    hide_eddsa: bool,
}

/// The environment variable that hides Ed25519 keypairs from the module's host.
pub const HIDE_EDDSA_ENV: &str = "KEYWARD_PKCS11_HIDE_EDDSA";

static MODULE: RwLock<Option<Arc<Module>>> = RwLock::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `C_Initialize` after the FFI layer checked its arguments.
pub fn initialize() -> R<()> {
    let mut g = MODULE.write().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = g.as_ref() {
        if m.pid == std::process::id() {
            return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
    }
    let sock = keyward_proto::paths::socket_path(std::env::var_os("KEYWARD_SOCK").map(Into::into));
    let fresh = Arc::new(Module {
        pid: std::process::id(),
        agent: Agent::new(sock),
        st: Mutex::new(State::default()),
        hide_eddsa: std::env::var_os(HIDE_EDDSA_ENV).is_some_and(|v| v == "1"),
    });
    if let Some(inherited) = g.replace(fresh) {
        // A forked child: the parent's connections are the parent's. Leak them, never close.
        std::mem::forget(inherited);
    }
    Ok(())
}

/// `C_Finalize`.
pub fn finalize() -> R<()> {
    let mut g = MODULE.write().unwrap_or_else(|p| p.into_inner());
    match g.take() {
        Some(m) if m.pid == std::process::id() => {
            m.agent.close();
            Ok(())
        }
        Some(inherited) => {
            std::mem::forget(inherited);
            Err(CKR_CRYPTOKI_NOT_INITIALIZED)
        }
        None => Err(CKR_CRYPTOKI_NOT_INITIALIZED),
    }
}

/// The module of this process, or `CKR_CRYPTOKI_NOT_INITIALIZED` (also in a forked child).
pub fn module() -> R<Arc<Module>> {
    let g = MODULE.read().unwrap_or_else(|p| p.into_inner());
    match g.as_ref() {
        Some(m) if m.pid == std::process::id() => Ok(m.clone()),
        _ => Err(CKR_CRYPTOKI_NOT_INITIALIZED),
    }
}

/// A key's usage limits as the module shows them (no `usage` reported: the kind's defaults,
/// which refuse nothing the module offers).
fn limits_of(k: &wire::KeyInfo) -> objects::Limits {
    let usage = k.usage_or_default();
    let lacks = |u| !usage.contains(&u);
    objects::Limits {
        no_sign: lacks(wire::Usage::Sign),
        no_encrypt: lacks(wire::Usage::Encrypt),
        no_decrypt: lacks(wire::Usage::Decrypt),
        no_derive: lacks(wire::Usage::Derive),
        end_date: k.not_after.map(|t| {
            let text = keyward_proto::rfc3339::format(t);
            let b = text.as_bytes();
            let mut d = [b'0'; 8];
            d[..4].copy_from_slice(&b[0..4]);
            d[4..6].copy_from_slice(&b[5..7]);
            d[6..8].copy_from_slice(&b[8..10]);
            d
        }),
    }
}

/// The agent's refusal as a PKCS#11 code.
pub fn code_rv(code: ErrorCode) -> CK_RV {
    match code {
        ErrorCode::Locked => CKR_USER_NOT_LOGGED_IN,
        ErrorCode::NotInitialized => CKR_USER_PIN_NOT_INITIALIZED,
        ErrorCode::PinIncorrect => CKR_PIN_INCORRECT,
        ErrorCode::PinLocked => CKR_PIN_LOCKED,
        // The agent's own PIN prompt (a NULL-PIN `C_Login`) was cancelled.
        ErrorCode::Cancelled => CKR_FUNCTION_CANCELED,
        ErrorCode::NotFound => CKR_OBJECT_HANDLE_INVALID,
        ErrorCode::WrongKey
        | ErrorCode::KeyInactive
        | ErrorCode::NotExportable
        | ErrorCode::UsageDenied
        | ErrorCode::KeyExpired => CKR_KEY_FUNCTION_NOT_PERMITTED,
        ErrorCode::DecryptFailed => CKR_ENCRYPTED_DATA_INVALID,
        ErrorCode::VerifyFailed => CKR_SIGNATURE_INVALID,
        ErrorCode::InvalidArgs => CKR_ARGUMENTS_BAD,
        ErrorCode::TooLarge => CKR_DATA_LEN_RANGE,
        ErrorCode::TokenUnavailable => CKR_DEVICE_REMOVED,
        ErrorCode::TokenError | ErrorCode::KeystoreError => CKR_DEVICE_ERROR,
        // pin_backoff (wait, then retry), ambiguous, and anything else.
        _ => CKR_FUNCTION_FAILED,
    }
}

fn pad<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b;
    }
    out
}

fn version(major: u8, minor: u8) -> CK_VERSION {
    CK_VERSION { major, minor }
}

/// `C_GetInfo`.
pub fn info() -> CK_INFO {
    CK_INFO {
        cryptokiVersion: version(3, 0),
        manufacturerID: pad("Keyward"),
        flags: 0,
        libraryDescription: pad("Keyward agent PKCS#11 module"),
        libraryVersion: version(0, 1),
    }
}

pub fn mechanism_info(t: CK_MECHANISM_TYPE) -> R<CK_MECHANISM_INFO> {
    MECHANISMS
        .iter()
        .find(|m| m.0 == t)
        .map(|&(_, min, max, flags)| CK_MECHANISM_INFO {
            ulMinKeySize: min,
            ulMaxKeySize: max,
            flags,
        })
        .ok_or(CKR_MECHANISM_INVALID)
}

fn uuid_bytes(id: &str) -> Vec<u8> {
    uuid::Uuid::parse_str(id).map_or_else(|_| id.as_bytes().to_vec(), |u| u.as_bytes().to_vec())
}

impl Module {
    fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.st)
    }

    /// One agent call, its refusal mapped; a `locked` agent also ends this module's login.
    fn call<O: Operation>(&self, args: &O::Args) -> R<O::Result> {
        self.agent.call::<O>(args).map_err(|e| match e {
            CallError::Agent(b) => {
                if b.code == ErrorCode::Locked {
                    self.st().logged_in = false;
                }
                code_rv(b.code)
            }
            CallError::Unreachable(_) => CKR_DEVICE_REMOVED,
            CallError::Protocol(_) => CKR_DEVICE_ERROR,
        })
    }

    fn check_slot(slot: CK_SLOT_ID) -> R<()> {
        if slot == SLOT {
            Ok(())
        } else {
            Err(CKR_SLOT_ID_INVALID)
        }
    }

    // ---- slot and token ---------------------------------------------------------------------

    /// One slot while the agent answers; none while it does not.
    pub fn slot_list(&self) -> Vec<CK_SLOT_ID> {
        if self.agent.hello().is_ok() {
            vec![SLOT]
        } else {
            Vec::new()
        }
    }

    pub fn slot_info(&self, slot: CK_SLOT_ID) -> R<CK_SLOT_INFO> {
        Self::check_slot(slot)?;
        let present = self.agent.hello().is_ok();
        Ok(CK_SLOT_INFO {
            slotDescription: pad("Keyward agent"),
            manufacturerID: pad("Keyward"),
            flags: if present { CKF_TOKEN_PRESENT } else { 0 },
            hardwareVersion: version(0, 1),
            firmwareVersion: version(0, 1),
        })
    }

    pub fn token_info(&self, slot: CK_SLOT_ID) -> R<CK_TOKEN_INFO> {
        Self::check_slot(slot)?;
        let info = self.call::<op::RootInfo>(&wire::Empty {})?;
        // The serial: the root's id, stable for the root's life (16 hex digits of its UUID).
        let serial: String = info
            .id
            .as_deref()
            .unwrap_or("0")
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(16)
            .collect();
        let mut flags = CKF_USER_PIN_INITIALIZED | CKF_RNG | CKF_LOGIN_REQUIRED;
        if info.initialized {
            flags |= CKF_TOKEN_INITIALIZED;
        }
        if info.prompt {
            flags |= CKF_PROTECTED_AUTHENTICATION_PATH;
        }
        let st = self.st();
        let rw = st.sessions.values().filter(|s| s.rw).count() as CK_ULONG;
        Ok(CK_TOKEN_INFO {
            label: pad("Keyward"),
            manufacturerID: pad("Keyward"),
            model: pad("keywardd"),
            serialNumber: pad(&serial),
            flags,
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: st.sessions.len() as CK_ULONG,
            ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
            ulRwSessionCount: rw,
            ulMaxPinLen: 256,
            ulMinPinLen: 1,
            ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
            hardwareVersion: version(0, 1),
            firmwareVersion: version(0, 1),
            utcTime: pad(""),
        })
    }

    pub fn mechanism_list(&self, slot: CK_SLOT_ID) -> R<Vec<CK_MECHANISM_TYPE>> {
        Self::check_slot(slot)?;
        Ok(MECHANISMS.iter().map(|m| m.0).collect())
    }

    // ---- sessions and login -----------------------------------------------------------------

    pub fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> R<CK_SESSION_HANDLE> {
        Self::check_slot(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
        }
        let mut st = self.st();
        st.next_session += 1;
        let h = st.next_session;
        st.sessions.insert(
            h,
            Session {
                rw: flags & CKF_RW_SESSION != 0,
                ..Session::default()
            },
        );
        Ok(h)
    }

    pub fn close_session(&self, h: CK_SESSION_HANDLE) -> R<()> {
        let mut st = self.st();
        st.session(h)?;
        st.drop_session(h);
        Ok(())
    }

    pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> R<()> {
        Self::check_slot(slot)?;
        let mut st = self.st();
        let all: Vec<_> = st.sessions.keys().copied().collect();
        for h in all {
            st.drop_session(h);
        }
        Ok(())
    }

    pub fn session_info(&self, h: CK_SESSION_HANDLE) -> R<CK_SESSION_INFO> {
        let mut st = self.st();
        let logged_in = st.logged_in;
        let s = st.session(h)?;
        let state = match (s.rw, logged_in) {
            (false, false) => CKS_RO_PUBLIC_SESSION,
            (false, true) => CKS_RO_USER_FUNCTIONS,
            (true, false) => CKS_RW_PUBLIC_SESSION,
            (true, true) => CKS_RW_USER_FUNCTIONS,
        };
        Ok(CK_SESSION_INFO {
            slotID: SLOT,
            state,
            flags: CKF_SERIAL_SESSION | if s.rw { CKF_RW_SESSION } else { 0 },
            ulDeviceError: 0,
        })
    }

    /// `C_Login(CKU_USER)` unlocks the agent (the agent counts wrong PINs). The security officer
    /// does not exist here: `CKR_USER_TYPE_INVALID`.
    /// `C_Login`. A `None` PIN (NULL in C) asks the agent to prompt for it, which it offers
    /// (`CKF_PROTECTED_AUTHENTICATION_PATH`) only with a pinentry configured; without one it is
    /// `CKR_ARGUMENTS_BAD`, as the spec says for a token without a protected path.
    pub fn login(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: Option<&[u8]>) -> R<()> {
        let already = {
            let mut st = self.st();
            st.session(h)?;
            st.logged_in
        };
        match user {
            CKU_USER => {}
            CKU_CONTEXT_SPECIFIC => return Err(CKR_OPERATION_NOT_INITIALIZED),
            _ => return Err(CKR_USER_TYPE_INVALID),
        }
        let info = self.call::<op::RootInfo>(&wire::Empty {})?;
        if already && !info.locked {
            return Err(CKR_USER_ALREADY_LOGGED_IN);
        }
        match pin {
            Some(pin) => {
                let pin = std::str::from_utf8(pin).map_err(|_| CKR_PIN_INCORRECT)?;
                self.call::<op::Unlock>(&wire::PinArgs { pin: Pin::new(pin) })?;
            }
            None if info.prompt => {
                self.call::<op::UnlockPrompt>(&wire::Empty {})?;
            }
            None => return Err(CKR_ARGUMENTS_BAD),
        }
        self.st().logged_in = true;
        self.refresh()?;
        Ok(())
    }

    /// Ends this module's login; the agent stays unlocked for its other clients.
    pub fn logout(&self, h: CK_SESSION_HANDLE) -> R<()> {
        let mut st = self.st();
        st.session(h)?;
        if !st.logged_in {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        st.logged_in = false;
        for s in st.sessions.values_mut() {
            s.sign = None;
            s.crypt = None;
        }
        Ok(())
    }

    // ---- objects ----------------------------------------------------------------------------

    /// Every page of a list: `page(after)` fetches one; pages are followed by `next` to the
    /// end (a page with a `next` and no keys would never end: CKR_DEVICE_ERROR).
    fn all_pages(
        &self,
        mut page: impl FnMut(Option<String>) -> R<wire::KeyList>,
    ) -> R<Vec<wire::KeyInfo>> {
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let p = page(after.take())?;
            if p.next.is_some() && p.keys.is_empty() {
                return Err(CKR_DEVICE_ERROR);
            }
            keys.extend(p.keys);
            match p.next {
                Some(n) => after = Some(n),
                None => return Ok(keys),
            }
        }
    }

    /// Read the agent's keypairs and DEKs (every page of each) into objects, keeping every
    /// handle stable.
    pub fn refresh(&self) -> R<()> {
        let keypairs = self.all_pages(|after| {
            self.call::<op::KeypairList>(&wire::ListArgs { limit: None, after })
        })?;
        let deks = self.all_pages(|after| {
            self.call::<op::DekList>(&wire::DekListArgs {
                kek: None,
                limit: None,
                after,
            })
        })?;
        let mut st = self.st();
        let mut fresh: Vec<(String, Half, Object)> = Vec::new();
        for k in keypairs.iter().filter(|k| k.state != "revoked") {
            let (curve, public) = match (k.algorithm.as_deref(), k.public_key.as_deref()) {
                (None | Some("p256"), Some(pk)) => match p256::PublicKey::from_sec1_bytes(pk) {
                    Ok(p) => (Curve::P256, p.to_encoded_point(false).as_bytes().to_vec()),
                    Err(_) => continue,
                },
                (Some("ed25519"), Some(pk)) if pk.len() == 32 && !self.hide_eddsa => {
                    (Curve::Ed25519, pk.to_vec())
                }
                _ => continue, // RSA imports and keys without a public key are not shown.
            };
            let label = k
                .label
                .clone()
                .or_else(|| k.name.clone())
                .unwrap_or_else(|| format!("keypair {}", &k.id[..8.min(k.id.len())]));
            let base = Object {
                kind: Kind::Private(curve),
                key_id: k.id.clone(),
                ck_id: uuid_bytes(&k.id),
                label,
                public,
                on_token: k.scheme == "pkcs11-token",
                limits: limits_of(k),
            };
            let mut public = base.clone();
            public.kind = Kind::Public(curve);
            // A certificate that does not parse (the agent checked it) is not shown.
            if let Some(cert) = k.certificate.as_ref().and_then(|c| objects::Cert::parse(c)) {
                let mut c = public.clone();
                c.kind = Kind::Cert(cert);
                fresh.push((k.id.clone(), Half::Cert, c));
            }
            fresh.push((k.id.clone(), Half::Private, base));
            fresh.push((k.id.clone(), Half::Public, public));
        }
        for k in deks.iter().filter(|k| k.state != "revoked") {
            fresh.push((
                k.id.clone(),
                Half::Secret,
                Object {
                    kind: Kind::Dek {
                        exportable: k.exportable,
                    },
                    key_id: k.id.clone(),
                    ck_id: uuid_bytes(&k.id),
                    label: k
                        .label
                        .clone()
                        .unwrap_or_else(|| format!("dek {}", &k.id[..8.min(k.id.len())])),
                    public: Vec::new(),
                    on_token: false,
                    limits: limits_of(k),
                },
            ));
        }
        st.objects
            .retain(|_, o| matches!(o.kind, Kind::Derived { .. }));
        let mut live = std::collections::HashSet::new();
        for (id, half, o) in fresh {
            let h = st.handle_for(id.clone(), half);
            live.insert((id, half));
            st.objects.insert(h, o);
        }
        st.handles.retain(|k, _| live.contains(k));
        st.listed = true;
        Ok(())
    }

    fn ensure_listed(&self) -> R<()> {
        if self.st().listed {
            Ok(())
        } else {
            self.refresh()
        }
    }

    pub fn find_init(&self, h: CK_SESSION_HANDLE, template: Template) -> R<()> {
        {
            let mut st = self.st();
            if st.session(h)?.find.is_some() {
                return Err(CKR_OPERATION_ACTIVE);
            }
        }
        self.refresh()?;
        let mut st = self.st();
        let logged_in = st.logged_in;
        let mut found: Vec<CK_OBJECT_HANDLE> = st
            .objects
            .iter()
            .filter(|(_, o)| (logged_in || !o.is_private()) && o.matches(&template))
            .map(|(h, _)| *h)
            .collect();
        found.sort_unstable();
        found.reverse(); // popped from the end: lowest handle first
        st.session(h)?.find = Some(found);
        Ok(())
    }

    pub fn find(&self, h: CK_SESSION_HANDLE, max: usize) -> R<Vec<CK_OBJECT_HANDLE>> {
        let mut st = self.st();
        let list = st
            .session(h)?
            .find
            .as_mut()
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let n = max.min(list.len());
        Ok((0..n).filter_map(|_| list.pop()).collect())
    }

    pub fn find_final(&self, h: CK_SESSION_HANDLE) -> R<()> {
        let mut st = self.st();
        st.session(h)?
            .find
            .take()
            .map(|_| ())
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)
    }

    pub fn get_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        template: &[(CK_ATTRIBUTE_TYPE, Option<usize>)],
    ) -> R<(Vec<Read>, CK_RV)> {
        self.ensure_listed()?;
        let mut st = self.st();
        st.session(h)?;
        let o = st.object(obj)?;
        Ok(objects::read_template(o, template))
    }

    pub fn object_size(&self, h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> R<CK_ULONG> {
        self.ensure_listed()?;
        let mut st = self.st();
        st.session(h)?;
        st.object(obj)?;
        Ok(CK_UNAVAILABLE_INFORMATION)
    }

    /// Deletes a keypair (named by its private half) or a derived secret. A public half alone
    /// and DEKs (which the agent revokes, never deletes) are refused: `CKR_ACTION_PROHIBITED`.
    pub fn destroy(&self, h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> R<()> {
        self.ensure_listed()?;
        let key_id = {
            let mut st = self.st();
            let rw = st.session(h)?.rw;
            let o = st.object(obj)?;
            match o.kind {
                Kind::Derived { .. } => {
                    st.objects.remove(&obj);
                    return Ok(());
                }
                Kind::Private(_) if !rw => return Err(CKR_SESSION_READ_ONLY),
                Kind::Private(_) => o.key_id.clone(),
                _ => return Err(CKR_ACTION_PROHIBITED),
            }
        };
        self.call::<op::KeypairDelete>(&wire::IdArgs { id: key_id })?;
        self.refresh()
    }

    // ---- signing and verifying --------------------------------------------------------------

    fn key_op(st: &mut State, mech: Mech, key: CK_OBJECT_HANDLE, sign: bool) -> R<KeyOp> {
        let o = st.key(key)?.clone();
        let curve = o.curve().ok_or(CKR_KEY_TYPE_INCONSISTENT)?;
        match (&o.kind, sign) {
            (Kind::Private(_), true) if o.can_sign() => {}
            (Kind::Public(_), false) => {}
            _ => return Err(CKR_KEY_FUNCTION_NOT_PERMITTED),
        }
        match (&mech, curve) {
            (Mech::Plain(CKM_ECDSA | CKM_ECDSA_SHA256), Curve::P256) => {}
            (
                Mech::Eddsa {
                    prehash: false,
                    context,
                },
                Curve::Ed25519,
            ) if context.is_empty() => {}
            (Mech::Plain(CKM_EDDSA), Curve::Ed25519) => {}
            (Mech::Eddsa { .. }, Curve::Ed25519) => return Err(CKR_MECHANISM_PARAM_INVALID),
            (Mech::Plain(CKM_ECDSA | CKM_ECDSA_SHA256 | CKM_EDDSA) | Mech::Eddsa { .. }, _) => {
                return Err(CKR_KEY_TYPE_INCONSISTENT)
            }
            _ => return Err(CKR_MECHANISM_INVALID),
        }
        Ok(KeyOp {
            input: Input::new(mech.kind()),
            mech,
            key: o,
            multi: false,
        })
    }

    pub fn sign_init(&self, h: CK_SESSION_HANDLE, mech: Mech, key: CK_OBJECT_HANDLE) -> R<()> {
        self.ensure_listed()?;
        let mut st = self.st();
        if st.session(h)?.sign.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let op = Self::key_op(&mut st, mech, key, true)?;
        st.session(h)?.sign = Some(op);
        Ok(())
    }

    pub fn sign_update(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> R<()> {
        let mut st = self.st();
        let s = st.session(h)?;
        let op = s.sign.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        op.multi = true;
        let r = op.input.update(data);
        if r.is_err() {
            s.sign = None;
        }
        r
    }

    /// `C_Sign` (`data` = Some) or `C_SignFinal` (None).
    pub fn sign(&self, h: CK_SESSION_HANDLE, data: Option<&[u8]>, cap: Option<usize>) -> R<Out> {
        let op = {
            let mut st = self.st();
            let s = st.session(h)?;
            let op = s.sign.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
            if data.is_some() && op.multi {
                return Err(CKR_OPERATION_ACTIVE);
            }
            if let Some(o) = out_for(SIG_LEN, cap) {
                return Ok(o);
            }
            s.sign.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?
        };
        let KeyOp {
            mech,
            key,
            mut input,
            ..
        } = op;
        if let Some(d) = data {
            input.update(d)?;
        }
        let sig = match (mech.kind(), input) {
            (CKM_EDDSA, Input::Buffer(msg)) => {
                self.call::<op::Sign>(&wire::SignArgs {
                    key: key.key_id.clone(),
                    data: serde_bytes::ByteBuf::from(msg),
                    raw: true,
                })?
                .signature
            }
            (_, Input::Hashed(h)) => self.sign_digest(&key, h.finalize().to_vec())?,
            (_, Input::Buffer(digest)) => {
                if digest.is_empty() || digest.len() > 64 {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                self.sign_digest(&key, digest)?
            }
        };
        if sig.len() != SIG_LEN {
            return Err(CKR_DEVICE_ERROR);
        }
        Ok(Out::Done(Zeroizing::new(sig.into_vec())))
    }

    fn sign_digest(&self, key: &Object, digest: Vec<u8>) -> R<serde_bytes::ByteBuf> {
        Ok(self
            .call::<op::SignDigest>(&wire::SignDigestArgs {
                key: key.key_id.clone(),
                digest: serde_bytes::ByteBuf::from(digest),
            })?
            .signature)
    }

    pub fn verify_init(&self, h: CK_SESSION_HANDLE, mech: Mech, key: CK_OBJECT_HANDLE) -> R<()> {
        self.ensure_listed()?;
        let mut st = self.st();
        if st.session(h)?.verify.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let op = Self::key_op(&mut st, mech, key, false)?;
        st.session(h)?.verify = Some(op);
        Ok(())
    }

    pub fn verify_update(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> R<()> {
        let mut st = self.st();
        let s = st.session(h)?;
        let op = s.verify.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        op.multi = true;
        let r = op.input.update(data);
        if r.is_err() {
            s.verify = None;
        }
        r
    }

    /// `C_Verify` (`data` = Some) or `C_VerifyFinal` (None), in the module with the public key.
    pub fn verify(&self, h: CK_SESSION_HANDLE, data: Option<&[u8]>, sig: &[u8]) -> R<()> {
        let op = {
            let mut st = self.st();
            let s = st.session(h)?;
            if data.is_some() && s.verify.as_ref().is_some_and(|o| o.multi) {
                s.verify = None;
                return Err(CKR_OPERATION_ACTIVE);
            }
            s.verify.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?
        };
        let KeyOp { key, mut input, .. } = op;
        if let Some(d) = data {
            input.update(d)?;
        }
        if sig.len() != SIG_LEN {
            return Err(CKR_SIGNATURE_LEN_RANGE);
        }
        let ok = match (key.curve(), input) {
            (Some(Curve::Ed25519), Input::Buffer(msg)) => {
                let pk: [u8; 32] = key
                    .public
                    .as_slice()
                    .try_into()
                    .map_err(|_| CKR_DEVICE_ERROR)?;
                let sig: [u8; 64] = sig.try_into().map_err(|_| CKR_SIGNATURE_LEN_RANGE)?;
                ed25519_dalek::VerifyingKey::from_bytes(&pk)
                    .map_err(|_| CKR_DEVICE_ERROR)?
                    .verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
                    .is_ok()
            }
            (Some(Curve::P256), input) => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                let digest = match input {
                    Input::Hashed(h) => h.finalize().to_vec(),
                    Input::Buffer(d) if !d.is_empty() && d.len() <= 64 => d,
                    Input::Buffer(_) => return Err(CKR_DATA_LEN_RANGE),
                };
                let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key.public)
                    .map_err(|_| CKR_DEVICE_ERROR)?;
                match p256::ecdsa::Signature::from_slice(sig) {
                    Ok(s) => vk.verify_prehash(&digest_to_32(&digest), &s).is_ok(),
                    Err(_) => false,
                }
            }
            _ => return Err(CKR_KEY_TYPE_INCONSISTENT),
        };
        if ok {
            Ok(())
        } else {
            Err(CKR_SIGNATURE_INVALID)
        }
    }

    // ---- digests ----------------------------------------------------------------------------

    pub fn digest_init(&self, h: CK_SESSION_HANDLE, mech: Mech) -> R<()> {
        let mut st = self.st();
        let s = st.session(h)?;
        if s.digest.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        s.digest = Some(Hasher::new(mech.kind()).ok_or(CKR_MECHANISM_INVALID)?);
        Ok(())
    }

    pub fn digest_update(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> R<()> {
        let mut st = self.st();
        st.session(h)?
            .digest
            .as_mut()
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)?
            .update(data);
        Ok(())
    }

    /// `C_Digest` (`data` = Some) or `C_DigestFinal` (None).
    pub fn digest(&self, h: CK_SESSION_HANDLE, data: Option<&[u8]>, cap: Option<usize>) -> R<Out> {
        let mut st = self.st();
        let s = st.session(h)?;
        let d = s.digest.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if let Some(o) = out_for(d.len(), cap) {
            return Ok(o);
        }
        let mut d = s.digest.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if let Some(data) = data {
            d.update(data);
        }
        Ok(Out::Done(Zeroizing::new(d.finish())))
    }

    // ---- AES-GCM ----------------------------------------------------------------------------

    pub fn crypt_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: Mech,
        key: CK_OBJECT_HANDLE,
        encrypt: bool,
    ) -> R<()> {
        self.ensure_listed()?;
        let mut st = self.st();
        if st.session(h)?.crypt.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let o = st.key(key)?;
        let Mech::Gcm { iv, aad, tag_bits } = mech else {
            return Err(if mech.kind() == CKM_AES_GCM {
                CKR_MECHANISM_PARAM_INVALID
            } else {
                CKR_MECHANISM_INVALID
            });
        };
        if !matches!(o.kind, Kind::Dek { .. }) {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        // The DEK's usage limits (CKA_ENCRYPT / CKA_DECRYPT); the agent checks them too.
        if !o.can_crypt(encrypt) {
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        if iv.len() != 12 || tag_bits % 8 != 0 || !(32..=128).contains(&tag_bits) {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        let op = CryptOp {
            encrypt,
            key_id: o.key_id.clone(),
            iv,
            aad,
            tag_len: (tag_bits / 8) as usize,
            data: Zeroizing::new(Vec::new()),
            multi: false,
        };
        st.session(h)?.crypt = Some(op);
        Ok(())
    }

    fn crypt_session(st: &mut State, h: CK_SESSION_HANDLE, encrypt: bool) -> R<&mut Session> {
        let s = st.session(h)?;
        match &s.crypt {
            Some(op) if op.encrypt == encrypt => Ok(s),
            _ => Err(CKR_OPERATION_NOT_INITIALIZED),
        }
    }

    /// `C_EncryptUpdate` / `C_DecryptUpdate`: GCM is one-shot in the agent, so the data is kept
    /// and everything comes out at `Final` (no output now).
    pub fn crypt_update(&self, h: CK_SESSION_HANDLE, data: &[u8], encrypt: bool) -> R<()> {
        let mut st = self.st();
        let s = Self::crypt_session(&mut st, h, encrypt)?;
        let Some(op) = s.crypt.as_mut() else {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        };
        if op.data.len() + data.len() > MAX_BUFFERED {
            s.crypt = None;
            return Err(CKR_DATA_LEN_RANGE);
        }
        op.multi = true;
        op.data.extend_from_slice(data);
        Ok(())
    }

    /// `C_Encrypt`/`C_Decrypt` (`data` = Some) or their `Final` (None).
    pub fn crypt(
        &self,
        h: CK_SESSION_HANDLE,
        data: Option<&[u8]>,
        cap: Option<usize>,
        encrypt: bool,
    ) -> R<Out> {
        let op = {
            let mut st = self.st();
            let s = Self::crypt_session(&mut st, h, encrypt)?;
            let Some(op) = s.crypt.as_ref() else {
                return Err(CKR_OPERATION_NOT_INITIALIZED);
            };
            if data.is_some() && op.multi {
                return Err(CKR_OPERATION_ACTIVE);
            }
            let len = op.data.len() + data.map_or(0, <[u8]>::len);
            let need = if encrypt {
                len + op.tag_len
            } else if len < op.tag_len {
                s.crypt = None;
                return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
            } else {
                len - op.tag_len
            };
            if let Some(o) = out_for(need, cap) {
                return Ok(o);
            }
            s.crypt.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?
        };
        let mut all = op.data;
        if let Some(d) = data {
            all.extend_from_slice(d);
        }
        if all.len() > keyward_proto::MAX_PLAINTEXT {
            return Err(CKR_DATA_LEN_RANGE);
        }
        let args = wire::GcmArgs {
            dek: op.key_id,
            iv: serde_bytes::ByteBuf::from(op.iv),
            aad: serde_bytes::ByteBuf::from(op.aad),
            tag_len: op.tag_len as u8,
            data: SecretBytes::new(all.to_vec()),
        };
        let out = if encrypt {
            self.call::<op::GcmSeal>(&args)?.data
        } else {
            self.call::<op::GcmOpen>(&args)?.data
        };
        Ok(Out::Done(Zeroizing::new(out.expose().to_vec())))
    }

    // ---- key generation, derivation, random -------------------------------------------------

    fn require_rw_user(&self, h: CK_SESSION_HANDLE) -> R<()> {
        let mut st = self.st();
        let logged_in = st.logged_in;
        let s = st.session(h)?;
        if !s.rw {
            return Err(CKR_SESSION_READ_ONLY);
        }
        if !logged_in {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        Ok(())
    }

    fn handle_of(&self, key: &str, half: Half) -> R<CK_OBJECT_HANDLE> {
        self.st()
            .handles
            .get(&(key.to_string(), half))
            .copied()
            .ok_or(CKR_DEVICE_ERROR)
    }

    /// `CKM_AES_KEY_GEN`: a new DEK in the agent (never extractable, always a token object).
    pub fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: Mech,
        t: &Template,
    ) -> R<CK_OBJECT_HANDLE> {
        if mech.kind() != CKM_AES_KEY_GEN {
            return Err(CKR_MECHANISM_INVALID);
        }
        self.require_rw_user(h)?;
        let label = template::secret_key_gen(t)?;
        let id = self
            .call::<op::DekCreate>(&wire::DekCreateArgs {
                label,
                ..Default::default()
            })?
            .id;
        self.refresh()?;
        self.handle_of(&id, Half::Secret)
    }

    /// `CKM_EC_KEY_PAIR_GEN` (P-256) or `CKM_EC_EDWARDS_KEY_PAIR_GEN` (Ed25519): a new agent
    /// keypair, wrapped under the agent's KEK. `CKA_ID` is always the agent's key id.
    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: Mech,
        public: &Template,
        private: &Template,
    ) -> R<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let kind = mech.kind();
        if kind != CKM_EC_KEY_PAIR_GEN && kind != CKM_EC_EDWARDS_KEY_PAIR_GEN {
            return Err(CKR_MECHANISM_INVALID);
        }
        self.require_rw_user(h)?;
        let (curve, label) = template::key_pair_gen(kind, public, private)?;
        let id = self
            .call::<op::KeypairCreate>(&wire::KeypairCreateArgs {
                label,
                alg: Some(match curve {
                    Curve::P256 => "p256".into(),
                    Curve::Ed25519 => "ed25519".into(),
                }),
                ..Default::default()
            })?
            .id;
        self.refresh()?;
        Ok((
            self.handle_of(&id, Half::Public)?,
            self.handle_of(&id, Half::Private)?,
        ))
    }

    /// `CKM_ECDH1_DERIVE` with `CKD_NULL`: the shared x-coordinate as a session secret key,
    /// sensitive unless the template says `CKA_SENSITIVE = FALSE`.
    pub fn derive(
        &self,
        h: CK_SESSION_HANDLE,
        mech: Mech,
        base: CK_OBJECT_HANDLE,
        t: &Template,
    ) -> R<CK_OBJECT_HANDLE> {
        self.ensure_listed()?;
        let Mech::Ecdh {
            kdf,
            shared,
            public,
        } = mech
        else {
            return Err(if mech.kind() == CKM_ECDH1_DERIVE {
                CKR_MECHANISM_PARAM_INVALID
            } else {
                CKR_MECHANISM_INVALID
            });
        };
        if kdf != CKD_NULL || !shared.is_empty() {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        let key = {
            let mut st = self.st();
            st.session(h)?;
            let o = st.key(base)?;
            if !o.can_derive() {
                return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
            }
            o.key_id.clone()
        };
        let d = template::derived_secret(t)?;
        let secret = self
            .call::<op::KeypairEcdh>(&wire::EcdhArgs {
                key,
                peer: serde_bytes::ByteBuf::from(unwrap_point(&public).to_vec()),
            })?
            .secret;
        let mut value = Zeroizing::new(secret.expose().to_vec());
        value.truncate(d.len);
        let o = Object {
            kind: Kind::Derived {
                value,
                sensitive: d.sensitive,
                session: h,
            },
            key_id: String::new(),
            ck_id: Vec::new(),
            label: d.label,
            public: Vec::new(),
            on_token: false,
            limits: objects::Limits::default(),
        };
        let mut st = self.st();
        st.session(h)?;
        Ok(st.add_session_object(o))
    }

    /// `C_GenerateRandom`: from the agent, in requests of at most `MAX_RANDOM` bytes.
    pub fn random(&self, h: CK_SESSION_HANDLE, len: usize) -> R<Vec<u8>> {
        self.st().session(h)?;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(wire::MAX_RANDOM as usize);
            let got = self
                .call::<op::Random>(&wire::RandomArgs { len: n as u32 })?
                .bytes;
            if got.len() != n {
                return Err(CKR_DEVICE_ERROR);
            }
            out.extend_from_slice(&got);
        }
        Ok(out)
    }

    /// Check a session handle (for functions this module refuses on a valid session).
    pub fn check_session(&self, h: CK_SESSION_HANDLE) -> R<()> {
        self.st().session(h).map(|_| ())
    }
}

/// ECDSA's reading of a digest of any length as a P-256 input (as the agent reads it).
pub fn digest_to_32(digest: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if digest.len() >= 32 {
        out.copy_from_slice(&digest[..32]);
    } else {
        out[32 - digest.len()..].copy_from_slice(digest);
    }
    out
}
