//! The keystore's records, independent of where they are stored: the record types, the
//! canonical encodings every row's MAC covers (`record_body` and the other `*_body`
//! functions, each with its domain string), the MAC key ([`MacKey`]) and its state while
//! unlocked ([`MacState`]), the meta rows that carry MACs ([`MetaMac`]), and the types of paged
//! lists ([`ListFilter`], [`Cursor`], [`Page`], [`PageSize`]).
//!
//! Every backend (SQLite in `sqlite.rs`, PostgreSQL in `postgres.rs`) stores these records and
//! MACs exactly these bytes, so a row copied between backends (`keystore migrate`) verifies
//! under the same key. This module must never know SQL or a database client type, and never
//! change what a body encodes for rows already written (a new field is appended so that rows
//! MAC'd before it still verify: see `record_body`).

use super::KeystoreError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use thiserror::Error;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Meta row the v4 migration leaves when it found records written before v4 (without MACs).
pub const META_UPGRADE: &str = "integrity_upgrade";

// ---- integrity ------------------------------------------------------------------------------

/// The keystore MAC key: 32 bytes, zeroized on drop, on `mlock`ed memory where the limit allows.
/// Held only while the agent is unlocked.
pub struct MacKey {
    key: Box<Zeroizing<[u8; 32]>>,
    _lock: Option<region::LockGuard>,
}

impl MacKey {
    pub fn new(key: Zeroizing<[u8; 32]>) -> MacKey {
        let key = Box::new(key);
        let lock = region::lock(key.as_ptr(), 32).ok();
        MacKey { key, _lock: lock }
    }

    fn mac(&self, body: &[u8]) -> Option<Hmac<Sha256>> {
        // HMAC takes keys of any length: this does not fail.
        let key: &[u8] = &self.key[..];
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
        m.update(body);
        Some(m)
    }

    /// The MAC of `body` (an [`Encoder`] output).
    pub fn tag(&self, body: &[u8]) -> Vec<u8> {
        self.mac(body)
            .map(|m| m.finalize().into_bytes().to_vec())
            .unwrap_or_default()
    }

    /// Constant-time check of `tag` against `body`.
    pub fn verify(&self, body: &[u8], tag: &[u8]) -> bool {
        self.mac(body).is_some_and(|m| m.verify_slice(tag).is_ok())
    }
}

impl MacKey {
    /// A second copy of the key (its own mlocked, zeroizing block): for the destination of
    /// `keystore migrate`, which opens the copied rows with the same key.
    pub(crate) fn duplicate(&self) -> MacKey {
        MacKey::new(Zeroizing::new(**self.key))
    }
}

/// The MAC key a backend checks and makes MACs with: loaded at unlock, dropped at lock, and an
/// epoch bumped at each change (part of `Keystore::generation`). Each backend holds one (it
/// must load the key before the connection a re-keying commit used is released).
#[derive(Default)]
pub struct MacState {
    key: RwLock<Option<Arc<MacKey>>>,
    epoch: AtomicU64,
}

impl MacState {
    /// The key loaded now, if any.
    pub fn key(&self) -> Option<Arc<MacKey>> {
        self.key.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Load (`Some`) or drop (`None`) the key, and move the epoch.
    pub fn set(&self, key: Option<MacKey>) {
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = key.map(Arc::new);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Load a key already shared (a re-keying commit that used it inside its transaction), and
    /// move the epoch.
    pub(crate) fn set_shared(&self, key: Arc<MacKey>) {
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the key was loaded or dropped.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// Canonical encoding for MACs: a domain string, then each field as a presence byte and, when
/// present, a 4-byte big-endian length and the bytes. Unambiguous for any field contents.
pub struct Encoder(Vec<u8>);

impl Encoder {
    pub fn new(domain: &str) -> Encoder {
        let mut e = Encoder(Vec::with_capacity(256));
        e.field(Some(domain.as_bytes()));
        e
    }
    pub fn field(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.0.push(0),
            Some(b) => {
                self.0.push(1);
                self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
                self.0.extend_from_slice(b);
            }
        }
        self
    }
    pub fn text(&mut self, v: Option<&str>) -> &mut Self {
        self.field(v.map(str::as_bytes))
    }
    pub fn num(&mut self, v: Option<u64>) -> &mut Self {
        self.field(v.map(|n| n.to_be_bytes()).as_ref().map(|b| &b[..]))
    }
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// What a key row's MAC covers: every column but `mac`, in schema order. `certificate` (v5) is
/// appended only when present: a row without one has the v4 body, so MACs written before v5
/// still verify, while setting, changing or removing a certificate changes the body (the
/// encoding is length-prefixed, so the longer body can never equal the shorter one).
/// `min_version` (v7) likewise: when set, the certificate field is always written (absent or
/// present) and then the minimum, so the field sequence, and so the bytes, differ from every
/// body without one. Usage limits (v10, `usage` and `not_after`) likewise: when either is set,
/// certificate, minimum, usage and not-after are all written (each absent or present), four
/// fields where bodies without limits have at most two.
pub(crate) fn record_body(r: &KeyRecord) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/keys/v4");
    e.text(Some(&r.id.to_string()))
        .text(Some(r.kind.as_str()))
        .text(r.label.as_deref())
        .text(r.parent.map(|p| p.to_string()).as_deref())
        .text(Some(&r.scheme))
        .field(r.wrapped.as_deref())
        .field(r.public_key.as_deref())
        .text(r.locator.as_deref())
        .text(r.purpose.map(Purpose::as_str))
        .num(Some(r.exportable as u64))
        .num(Some(u64::from(r.version)))
        .num(Some(r.created))
        .num(r.rotated)
        .text(Some(r.state.as_str()))
        .text(r.name.as_deref())
        .text(r.issuer.map(|p| p.to_string()).as_deref())
        .field(r.statement.as_deref())
        .text(r.algorithm.map(Algorithm::as_str))
        .num(Some(u64::from(r.ssh.0)));
    let limited = r.usage.is_some() || r.not_after.is_some();
    match (limited, r.min_version, &r.certificate) {
        (false, None, None) => {}
        (false, None, Some(cert)) => {
            e.field(Some(cert));
        }
        (false, Some(min), cert) => {
            e.field(cert.as_deref()).num(Some(u64::from(min)));
        }
        (true, min, cert) => {
            e.field(cert.as_deref())
                .num(min.map(u64::from))
                .num(r.usage.map(u64::from))
                .num(r.not_after);
        }
    }
    e.finish()
}

/// What a `key_versions` row's MAC covers: the key's id, the version, the wrapped key and when
/// it was made (so a row cannot move to another key or version).
pub(crate) fn version_body(v: &KeyVersion) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/key_versions/v7");
    e.text(Some(&v.key.to_string()))
        .num(Some(u64::from(v.version)))
        .field(Some(&v.wrapped))
        .num(Some(v.created));
    e.finish()
}

/// A KEK rotation in progress (`kek_rotations`): the new KEK, wrapped under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRotation {
    pub kek: Uuid,
    pub wrapped: Vec<u8>,
    pub scheme: String,
    pub started: u64,
}

pub(crate) fn rotation_body(r: &PendingRotation) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/kek_rotations/v7");
    e.text(Some(&r.kek.to_string()))
        .field(Some(&r.wrapped))
        .text(Some(&r.scheme))
        .num(Some(r.started));
    e.finish()
}

/// One child's wrap under the new KEK, written before the swap (`kek_rotation_items`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationItem {
    pub kek: Uuid,
    pub key: Uuid,
    /// 1: the key row's `wrapped`; ≥ 2: a `key_versions` row.
    pub version: u32,
    pub wrapped: Vec<u8>,
}

pub(crate) fn item_body(i: &RotationItem) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/kek_rotation_items/v7");
    e.text(Some(&i.kek.to_string()))
        .text(Some(&i.key.to_string()))
        .num(Some(u64::from(i.version)))
        .field(Some(&i.wrapped));
    e.finish()
}

/// A DEK version above 1 (version 1 is the key row's own `wrapped`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub key: Uuid,
    pub version: u32,
    pub wrapped: Vec<u8>,
    pub created: u64,
}

/// What a revocation row's MAC covers.
pub(crate) fn revocation_body(r: &Revocation) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/revocations/v4");
    e.text(Some(&r.id.to_string()))
        .text(Some(&r.revoked.to_string()))
        .text(Some(&r.issuer.to_string()))
        .field(Some(&r.statement))
        .num(Some(r.created));
    e.finish()
}

pub(crate) fn check_mac(
    key: &MacKey,
    id: &str,
    body: &[u8],
    mac: Option<&[u8]>,
) -> Result<(), KeystoreError> {
    let tampered = |what: &str| KeystoreError::Tampered {
        id: id.to_string(),
        what: what.to_string(),
    };
    match mac {
        None => Err(tampered("no MAC")),
        Some(tag) if key.verify(body, tag) => Ok(()),
        Some(_) => Err(tampered("its MAC does not verify")),
    }
}

/// A meta row MAC'd under the keystore MAC key, for [`Keystore::rekey_integrity`]: the rows its
/// MAC covers (`values`, read inside the transaction, `None` when absent), the row holding the
/// MAC (hex), and the body the owner MACs (from those values, in that order). The names are
/// usually constants; some are per device (each device's audit chain head, `audit.rs`).
#[derive(Clone)]
pub struct MetaMac {
    pub values: std::borrow::Cow<'static, [std::borrow::Cow<'static, str>]>,
    pub mac: std::borrow::Cow<'static, str>,
    pub body: fn(&[Option<String>]) -> Vec<u8>,
}

/// A row read with the key loaded: parse errors are tampering too (the agent never writes them).
pub(crate) fn verified(
    key: Option<&MacKey>,
    id: &str,
    parsed: Result<KeyRecord, KeystoreError>,
    mac: Option<Vec<u8>>,
) -> Result<KeyRecord, KeystoreError> {
    match (key, parsed) {
        (None, parsed) => parsed,
        (Some(_), Err(KeystoreError::Corrupt { what, .. })) => Err(KeystoreError::Tampered {
            id: id.to_string(),
            what,
        }),
        (Some(_), Err(e)) => Err(e),
        (Some(k), Ok(r)) => {
            check_mac(k, id, &record_body(&r), mac.as_deref())?;
            Ok(r)
        }
    }
}

/// What a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Root,
    Kek,
    Dek,
    Keypair,
    /// A secret that is not a key of its own (a node-key derivation secret).
    Secret,
    /// The keystore integrity key: its KEK (parent: the root) and its secret (parent: that KEK).
    Integrity,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Root => "root",
            KeyKind::Kek => "kek",
            KeyKind::Dek => "dek",
            KeyKind::Keypair => "keypair",
            KeyKind::Secret => "secret",
            KeyKind::Integrity => "integrity",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "root" => KeyKind::Root,
            "kek" => KeyKind::Kek,
            "dek" => KeyKind::Dek,
            "keypair" => KeyKind::Keypair,
            "secret" => KeyKind::Secret,
            "integrity" => KeyKind::Integrity,
            _ => return None,
        })
    }
}

/// A key's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Retired,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => KeyState::Active,
            "retired" => KeyState::Retired,
            "revoked" => KeyState::Revoked,
            _ => return None,
        })
    }
}

/// One keystore row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: Uuid,
    pub kind: KeyKind,
    pub label: Option<String>,
    pub parent: Option<Uuid>,
    /// Wrapping scheme (`aes-kwp`, `ecdh-p256`, `pbkdf2`, ...) or, for a root, its kind.
    pub scheme: String,
    pub wrapped: Option<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    /// Where a key that is not wrapped lives (a PKCS#11 URI for a token root).
    pub locator: Option<String>,
    pub purpose: Option<Purpose>,
    pub exportable: bool,
    pub version: u32,
    pub created: u64,
    pub rotated: Option<u64>,
    pub state: KeyState,
    /// A node key's name (unique among active keys).
    pub name: Option<String>,
    /// The keypair that vouched for this one (node keys).
    pub issuer: Option<Uuid>,
    /// The signed statement that vouches for this key (a COSE_Sign1 delegation).
    pub statement: Option<Vec<u8>>,
    /// Keypairs: their algorithm.
    pub algorithm: Option<Algorithm>,
    /// Keypairs: how the SSH door offers them (MAC'd like every other column: a flipped
    /// `confirm` bit is tampering).
    pub ssh: SshFlags,
    /// Keypairs: an X.509 certificate for the key (DER), if one was set.
    pub certificate: Option<Vec<u8>>,
    /// DEKs: the oldest version that still decrypts (`None`: 1).
    pub min_version: Option<u32>,
    /// DEKs and keypairs: usage limits as a bit set (`crate::limits::Limits::bits`); `None`:
    /// the kind's default usages (every key made before v10, or without limits).
    pub usage: Option<u32>,
    /// DEKs and keypairs: Unix seconds after which the key is refused (`key_expired`).
    pub not_after: Option<u64>,
}

/// A signed revocation of a key, as kept for chain export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub id: Uuid,
    pub revoked: Uuid,
    pub issuer: Uuid,
    pub statement: Vec<u8>,
    pub created: u64,
}

impl KeyRecord {
    /// A fresh active record of `kind`, created now.
    pub fn new(kind: KeyKind, scheme: &str) -> Self {
        KeyRecord {
            id: Uuid::new_v4(),
            kind,
            label: None,
            parent: None,
            scheme: scheme.to_string(),
            wrapped: None,
            public_key: None,
            locator: None,
            purpose: None,
            exportable: false,
            version: 1,
            created: now(),
            rotated: None,
            state: KeyState::Active,
            name: None,
            issuer: None,
            statement: None,
            algorithm: None,
            ssh: SshFlags::default(),
            certificate: None,
            min_version: None,
            usage: None,
            not_after: None,
        }
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a DEK is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Purpose {
    /// The owner's own data.
    #[default]
    Personal,
    /// Data shared with someone else.
    Sharing,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Personal => "personal",
            Purpose::Sharing => "sharing",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        match s {
            "personal" => Some(Purpose::Personal),
            "sharing" => Some(Purpose::Sharing),
            _ => None,
        }
    }
}

/// A keypair's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA P-256 / ECDH: signing, key agreement, sharing, node keys.
    P256,
    /// Ed25519: signing only.
    Ed25519,
    /// RSA keys imported for Cryppo `Rsa4096` shares.
    Rsa,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::P256 => "p256",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa => "rsa",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "p256" => Some(Algorithm::P256),
            "ed25519" => Some(Algorithm::Ed25519),
            "rsa" => Some(Algorithm::Rsa),
            _ => None,
        }
    }
}

/// Which records a paged list holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFilter {
    /// Every record of this kind.
    Kind(KeyKind),
    /// The records of this kind under one parent (a KEK's DEKs).
    Children(KeyKind, Uuid),
    /// Keypairs with a node name (node keys, of any state).
    Nodes,
    /// Recovery shares held for others: secrets that carry a public key (the owner's recovery
    /// key; the node-derivation secret has none). `recovery.rs`.
    HeldShares,
}

/// A position in a paged list: the last record of the previous page (lists run in
/// (created, id) order). Its text form is opaque to clients: `1` then 48 hex digits, the
/// big-endian `created` (8 bytes) and the id (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created: u64,
    pub id: Uuid,
}

/// A cursor that is not one this agent handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("not a list cursor")]
pub struct BadCursor;

impl Cursor {
    const VERSION: char = '1';

    pub fn of(r: &KeyRecord) -> Cursor {
        Cursor {
            created: r.created,
            id: r.id,
        }
    }

    pub fn to_text(&self) -> String {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.created.to_be_bytes());
        b[8..].copy_from_slice(self.id.as_bytes());
        format!("{}{}", Cursor::VERSION, hex::encode(b))
    }

    pub fn parse(s: &str) -> Result<Cursor, BadCursor> {
        let rest = s.strip_prefix(Cursor::VERSION).ok_or(BadCursor)?;
        if rest.len() != 48 {
            return Err(BadCursor);
        }
        let b = hex::decode(rest).map_err(|_| BadCursor)?;
        let created = u64::from_be_bytes(b[..8].try_into().map_err(|_| BadCursor)?);
        // `created` is stored as an SQLite integer (i64): a larger one was never handed out.
        if i64::try_from(created).is_err() {
            return Err(BadCursor);
        }
        let id = Uuid::from_slice(&b[8..]).map_err(|_| BadCursor)?;
        Ok(Cursor { created, id })
    }
}

/// One page of a list, and where the next one starts (none: this was the last).
#[derive(Debug)]
pub struct Page {
    pub records: Vec<KeyRecord>,
    pub next: Option<Cursor>,
}

/// How big a page may be: at most `limit` records and, when `size` is given, at most `bytes`
/// of `size(record)` summed (but always at least one record, so a list always moves on).
/// `size` is called once per record read, in list order, before the record joins the page: on
/// the page's records and, when the budget ends the page, on the one that did not fit.
pub struct PageSize<'a> {
    pub limit: usize,
    pub bytes: usize,
    pub size: Option<&'a dyn Fn(&KeyRecord) -> usize>,
}

/// One page assembled from rows in list order, the same way on every backend: at most
/// `size.limit` records and, with a size callback, at most `size.bytes` (a first record always
/// fits); whether a next page exists (the backend fetches one row more than the limit). Rows are
/// checked (`verified`) by the backend before they are pushed.
pub(crate) struct PageBuilder<'s, 'a> {
    size: &'s PageSize<'a>,
    records: Vec<KeyRecord>,
    bytes: usize,
    more: bool,
}

impl<'s, 'a> PageBuilder<'s, 'a> {
    pub(crate) fn new(size: &'s PageSize<'a>) -> Self {
        PageBuilder {
            size,
            records: Vec::new(),
            bytes: 0,
            more: false,
        }
    }

    /// Whether the page still takes a row; `false` once it is full (the row at hand then means
    /// there is a next page).
    pub(crate) fn wants_more(&mut self) -> bool {
        if self.records.len() == self.size.limit {
            self.more = true;
        }
        !self.more
    }

    /// Add a checked record; `false` when the byte budget leaves it for the next page.
    pub(crate) fn push(&mut self, r: KeyRecord) -> bool {
        if let Some(f) = self.size.size {
            let len = f(&r);
            if !self.records.is_empty() && self.bytes.saturating_add(len) > self.size.bytes {
                self.more = true;
                return false;
            }
            self.bytes = self.bytes.saturating_add(len);
        }
        self.records.push(r);
        true
    }

    pub(crate) fn finish(self) -> Page {
        let next = if self.more {
            self.records.last().map(Cursor::of)
        } else {
            None
        };
        Page {
            records: self.records,
            next,
        }
    }
}

/// A keypair's SSH-agent flags (the `ssh` column; 0 = not offered to SSH).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SshFlags(pub u32);

impl SshFlags {
    /// Offered on the SSH-agent socket.
    pub const OFFERED: u32 = 1;
    /// Each signature is confirmed by the user first.
    pub const CONFIRM: u32 = 2;
    /// Added through the SSH door (`ssh-add`): removed through it too.
    pub const ADDED: u32 = 4;

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

// ---- several roots per KEK (schema v9) -------------------------------------------------------

/// Meta rows: the enrolled roots' ids (sorted, comma-separated) and their MAC.
pub const META_ROOT_SET: &str = "root_set";
pub const META_ROOT_SET_MAC: &str = "root_set_mac";

/// A KEK wrapped under one root: a `kek_wraps` row, or a `kek_rotation_wraps` row (then
/// `created` is the rotation's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekWrap {
    pub kek: Uuid,
    pub root: Uuid,
    /// The wrap's scheme (`aes-kwp`, `ecdh-p256`, `pbkdf2`): what the KEK row's `scheme`
    /// becomes if this root turns into the KEK's parent.
    pub scheme: String,
    pub wrapped: Vec<u8>,
    pub created: u64,
}

pub(crate) fn wrap_body(domain: &str, w: &KekWrap) -> Vec<u8> {
    let mut e = Encoder::new(domain);
    e.text(Some(&w.kek.to_string()))
        .text(Some(&w.root.to_string()))
        .text(Some(&w.scheme))
        .field(Some(&w.wrapped))
        .num(Some(w.created));
    e.finish()
}

pub(crate) const WRAPS: &str = "keyward/keystore/kek_wraps/v9";
pub(crate) const ROTATION_WRAPS: &str = "keyward/keystore/kek_rotation_wraps/v9";

pub(crate) fn root_set_text(ids: &BTreeSet<String>) -> String {
    ids.iter().cloned().collect::<Vec<_>>().join(",")
}

pub(crate) fn root_set_body(text: &str) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/root-set/v9");
    e.text(Some(text));
    e.finish()
}

/// The columns every read of `keys` selects, in this order (both backends read them by
/// position). `mac` is at [`MAC_COLUMN`].
pub(crate) const KEY_COLUMNS: &str = "id, kind, label, parent, scheme, wrapped, public_key, locator, purpose, exportable, version, created, rotated, state, name, issuer, statement, algorithm, ssh, certificate, min_version, usage, not_after, mac";
/// The position of `mac` in [`KEY_COLUMNS`].
pub(crate) const MAC_COLUMN: usize = 23;

// ---- a whole keystore (`keystore migrate`) ---------------------------------------------------

/// Records in an order that inserts each after its parent and issuer (both reference `keys`).
pub(crate) fn parents_first(keys: &[KeyRecord]) -> Vec<&KeyRecord> {
    let ids: std::collections::HashSet<Uuid> = keys.iter().map(|r| r.id).collect();
    let mut done: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(keys.len());
    let mut left: Vec<&KeyRecord> = keys.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        let ready = |p: Option<Uuid>| p.is_none_or(|p| !ids.contains(&p) || done.contains(&p));
        let (now, later): (Vec<&KeyRecord>, Vec<&KeyRecord>) = left
            .into_iter()
            .partition(|r| ready(r.parent) && ready(r.issuer));
        for r in &now {
            done.insert(r.id);
        }
        out.extend(now);
        left = later;
        if left.len() == before {
            // A cycle (never written by the agent): insert the rest as they are; the foreign
            // key check at commit refuses them.
            out.append(&mut left);
        }
    }
    out
}

/// How many rows each table of a keystore holds (`keystore migrate`'s progress and check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    pub keys: u64,
    pub versions: u64,
    pub revocations: u64,
    pub wraps: u64,
    pub rotations: u64,
    pub rotation_items: u64,
    pub rotation_wraps: u64,
    pub meta: u64,
    pub devices: u64,
}

impl RowCounts {
    /// Every table, by the name `keystore migrate` reports it under.
    pub fn tables(&self) -> [(&'static str, u64); 9] {
        [
            ("keys", self.keys),
            ("key_versions", self.versions),
            ("revocations", self.revocations),
            ("kek_wraps", self.wraps),
            ("kek_rotations", self.rotations),
            ("kek_rotation_items", self.rotation_items),
            ("kek_rotation_wraps", self.rotation_wraps),
            ("meta", self.meta),
            ("devices", self.devices),
        ]
    }

    pub fn total(&self) -> u64 {
        self.tables().iter().map(|(_, n)| n).sum()
    }
}

/// Every row of a keystore, each checked against its MAC when read (`Keystore::snapshot`), as
/// backend-independent records: what `keystore migrate` copies. Meta rows are copied as they
/// are (those with MACs carry them in other meta rows, over the same values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub keys: Vec<KeyRecord>,
    pub versions: Vec<KeyVersion>,
    pub revocations: Vec<Revocation>,
    pub wraps: Vec<KekWrap>,
    pub rotations: Vec<PendingRotation>,
    pub rotation_items: Vec<RotationItem>,
    /// `kek_rotation_wraps` rows (their `created` is 0: the column does not exist).
    pub rotation_wraps: Vec<KekWrap>,
    pub meta: Vec<(String, String)>,
    /// `devices` rows in (created, id) order: enrolled rows checked against their MAC, requests
    /// as they are (their MAC is never checked: the handshake checks them).
    pub devices: Vec<DeviceRow>,
}

impl Snapshot {
    pub fn counts(&self) -> RowCounts {
        RowCounts {
            keys: self.keys.len() as u64,
            versions: self.versions.len() as u64,
            revocations: self.revocations.len() as u64,
            wraps: self.wraps.len() as u64,
            rotations: self.rotations.len() as u64,
            rotation_items: self.rotation_items.len() as u64,
            rotation_wraps: self.rotation_wraps.len() as u64,
            meta: self.meta.len() as u64,
            devices: self.devices.len() as u64,
        }
    }
}

/// MAC domain of a `devices` row (schema v11).
pub(crate) const DEVICES: &str = "keyward/keystore/devices/v11";

/// A `devices` row (schema v11, `devices.rs`): an enrolled device, or an enrollment request a
/// new device filed. `body` is the JSON of the fields only the device code reads (where its
/// device key is, the handshake's commitment and nonces); `enrolled_by` and `signature` are set
/// on enrolled rows (the enrolling device's ECDSA P-256 signature, `devices.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: Uuid,
    /// `request` (filed by a device that has no key yet: not MAC'd) or `enrolled`.
    pub state: String,
    /// The device public key, uncompressed SEC1.
    pub public_key: Vec<u8>,
    pub token_serial: Option<String>,
    pub label: Option<String>,
    pub body: Vec<u8>,
    pub enrolled_by: Option<Uuid>,
    pub signature: Option<Vec<u8>>,
    pub created: u64,
}

/// What a `devices` row's MAC covers: every column but `mac`, in schema order.
pub(crate) fn device_body(d: &DeviceRow) -> Vec<u8> {
    let mut e = Encoder::new(DEVICES);
    e.text(Some(&d.id.to_string()))
        .text(Some(&d.state))
        .field(Some(&d.public_key))
        .text(d.token_serial.as_deref())
        .text(d.label.as_deref())
        .field(Some(&d.body))
        .text(d.enrolled_by.map(|u| u.to_string()).as_deref())
        .field(d.signature.as_deref())
        .num(Some(d.created));
    e.finish()
}

/// A `devices` row read back: enrolled rows are checked against their MAC when `key` is
/// given (a request is written by a device that has no key yet, and is checked by the
/// handshake instead: commitment, code and the enrolling device's signature).
pub(crate) fn device_verified(
    key: Option<&MacKey>,
    d: DeviceRow,
    mac: Option<Vec<u8>>,
) -> Result<DeviceRow, KeystoreError> {
    if d.state == "request" {
        return Ok(d);
    }
    if let Some(k) = key {
        let ok = mac
            .as_deref()
            .is_some_and(|m| k.verify(&device_body(&d), m));
        if !ok {
            return Err(KeystoreError::Tampered {
                id: d.id.to_string(),
                what: "device row: MAC missing or wrong".into(),
            });
        }
    }
    Ok(d)
}
