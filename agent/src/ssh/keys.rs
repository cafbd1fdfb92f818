//! Which keys the SSH door offers, and how each signs.
//!
//! Two sources:
//! - keypairs in the keystore whose SSH flags say "offered" (`keypair create --ssh`,
//!   `keypair ssh ID --on|--confirm`, or added by `ssh-add FILE`): P-256 and Ed25519 keys wrapped
//!   under a KEK, RSA keys (PKCS#8 PEM under AES-256-GCM with a KEK-wrapped DEK, as
//!   `keypair import` stores them; signing `rsa-sha2-256`/`-512` only, never SHA-1), and P-256
//!   token keypairs, which sign in the token;
//! - keys added with a lifetime (`ssh-add -t`) or destination constraints (`ssh-add -h`): kept
//!   in memory only (zeroized on drop), never written to the keystore, gone at expiry, removal
//!   or exit.
//!
//! Signing a software keypair takes its key from the agent's one key cache (`key_cache.rs`),
//! shared with `sign`, `sign.digest` and the PKCS#11 module: unwrapped under its KEK once and
//! kept parsed (aws-lc's P-256 and RSA key pairs, dalek's Ed25519 key) while the agent is
//! unlocked, bounded, and emptied on `lock`, idle lock, token removal and whenever a sign finds
//! the agent locked; a key no longer offered to SSH is not reachable through the door, and a
//! deleted or revoked one leaves the cache. Memory keys (below) are held by the door itself.
//!
//! The stored identities are indexed in memory, keyed on the keystore's generation (any write
//! through the agent, or the MAC key loaded or dropped, rebuilds it): a sign request costs no
//! keystore query. [`SshKeys::ready`] hands the connection task a signer that is already in
//! memory, so such requests never leave it for a blocking thread.
//!
//! This module must never return or log a private key, never persist a key that came with a
//! lifetime or destination constraint, and never delete a keypair the SSH door did not add.

use super::SshError;
use crate::error::{AgentError, WrongKey};
use crate::hierarchy::Hierarchy;
use crate::key_cache::Key;
pub use crate::key_cache::Pinned;
use crate::keystore::{Algorithm, KeyKind, KeyRecord, KeyState, SshFlags};
use aws_lc_rs::signature::{RsaEncoding, RsaKeyPair, RSA_PKCS1_SHA256, RSA_PKCS1_SHA512};
use keyward_identity::ed25519::Ed25519Key;
use keyward_identity::{LocalKey, PublicKey};
use ssh_agent_lib::proto::extension::DestinationConstraint;
use ssh_key::private::KeypairData;
use ssh_key::public::{EcdsaPublicKey, Ed25519PublicKey, KeyData, RsaPublicKey};
use ssh_key::Mpint;
use ssh_key::{Algorithm as SshAlgorithm, HashAlg, Signature};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;
use zeroize::Zeroizing;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGN_REQUEST flags for RSA keys (OpenSSH `PROTOCOL.agent`).
pub const RSA_SHA2_256: u32 = 2;
pub const RSA_SHA2_512: u32 = 4;

/// A P-256 key from an unwrapped keypair, as the key cache holds it.
fn from_local(key: &LocalKey) -> Result<Key, SshError> {
    let scalar = Zeroizing::new(key.secret_key().to_bytes());
    let point = key.public_key().verifying_key().to_encoded_point(false);
    Key::p256(scalar.as_slice(), point.as_bytes())
        .map_err(|e| AgentError::crypto("ssh p256 key")(e).into())
}

/// How the SSH door signs with a key of the one key cache (`key_cache.rs`) or a memory key.
impl Pinned {
    /// Sign `data` (no keystore, no token: never blocks). `flags`: the request's (RSA hash).
    pub fn sign(&self, data: &[u8], flags: u32) -> Result<Signature, SshError> {
        match self.key() {
            Key::P256(_) => {
                let sig = self
                    .key()
                    .sign_p256_signature(data)
                    .map_err(|e| AgentError::crypto("ssh ecdsa sign")(e))?;
                Ok(Signature::try_from(sig)?)
            }
            Key::Ed25519(k) => Ok(Signature::new(
                SshAlgorithm::Ed25519,
                k.sign(data).to_vec(),
            )?),
            Key::Rsa(k) => {
                // rsa-sha2-512 when asked for it, else rsa-sha2-256 when asked; SHA-1 `ssh-rsa`
                // (no flag) is refused: OpenSSH has not asked for it since 8.8.
                let (padding, hash): (&'static dyn RsaEncoding, _) = if flags & RSA_SHA2_512 != 0 {
                    (&RSA_PKCS1_SHA512, HashAlg::Sha512)
                } else if flags & RSA_SHA2_256 != 0 {
                    (&RSA_PKCS1_SHA256, HashAlg::Sha256)
                } else {
                    return Err(SshError::Unsupported(
                        "SHA-1 ssh-rsa signatures (ask for rsa-sha2-256 or rsa-sha2-512)".into(),
                    ));
                };
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(
                    padding,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    data,
                    &mut sig,
                )
                .map_err(|e| AgentError::crypto("ssh rsa sign")(e))?;
                Ok(Signature::new(SshAlgorithm::Rsa { hash: Some(hash) }, sig)?)
            }
        }
    }
}

/// An `ssh-add`ed RSA key as aws-lc's key pair. The CRT exponents the SSH encoding lacks are
/// computed by the `rsa` crate (its conversion only: no private-key operation runs there).
fn rsa_key_pair(kp: &ssh_key::private::RsaKeypair) -> Result<RsaKeyPair, SshError> {
    use rsa::pkcs8::EncodePrivateKey as _;
    use rsa::traits::PublicKeyParts as _;
    // Not ssh-key 0.6.7's `TryFrom<&RsaKeypair>`: it passes `p` twice as the primes.
    let int = |m: &Mpint| rsa::BigUint::try_from(m);
    let key = rsa::RsaPrivateKey::from_components(
        int(&kp.public.n)?,
        int(&kp.public.e)?,
        int(&kp.private.d)?,
        vec![int(&kp.private.p)?, int(&kp.private.q)?],
    )
    .map_err(|_| SshError::Refused("inconsistent RSA key components".into()))?;
    if key.size() < 2048 / 8 {
        return Err(SshError::Refused("RSA keys under 2048 bits".into()));
    }
    let der = key
        .to_pkcs8_der()
        .map_err(|_| SshError::Refused("the RSA key does not encode as PKCS#8".into()))?;
    RsaKeyPair::from_pkcs8(der.as_bytes()).map_err(|e| AgentError::crypto("ssh rsa key")(e).into())
}

/// What a destination-constrained or lifetime key carries.
#[derive(Clone, Default)]
pub struct Constraints {
    pub expires: Option<Instant>,
    pub confirm: bool,
    pub destinations: Vec<DestinationConstraint>,
}

/// A key added through the SSH door that lives in memory only.
struct MemKey {
    public: KeyData,
    comment: String,
    secret: Arc<Pinned>,
    constraints: Constraints,
}

impl MemKey {
    fn offered(&self) -> Arc<Offered> {
        Arc::new(Offered {
            public: self.public.clone(),
            comment: self.comment.clone(),
            confirm: self.constraints.confirm,
            destinations: self.constraints.destinations.clone(),
            source: Source::Memory,
        })
    }
}

/// Where an offered identity's private half is.
#[derive(Clone)]
pub enum Source {
    /// A keystore keypair (wrapped, or a token object).
    Stored {
        rec: Box<KeyRecord>,
        flags: SshFlags,
    },
    /// A key added with a lifetime or destination constraints.
    Memory,
}

/// One identity the SSH door offers.
#[derive(Clone)]
pub struct Offered {
    pub public: KeyData,
    pub comment: String,
    pub confirm: bool,
    pub destinations: Vec<DestinationConstraint>,
    pub source: Source,
}

/// The SSH public key of a P-256, Ed25519 or RSA keypair record; `None` when it has none.
pub fn key_data(rec: &KeyRecord) -> Option<KeyData> {
    let bytes = rec.public_key.as_deref()?;
    match rec.algorithm {
        None | Some(Algorithm::P256) => {
            let pk = PublicKey::from_sec1_bytes(bytes).ok()?;
            Some(KeyData::Ecdsa(EcdsaPublicKey::from(pk.verifying_key())))
        }
        Some(Algorithm::Ed25519) => {
            let raw: [u8; 32] = bytes.try_into().ok()?;
            Some(KeyData::Ed25519(Ed25519PublicKey(raw)))
        }
        Some(Algorithm::Rsa) => {
            use rsa::pkcs1::DecodeRsaPublicKey as _;
            use rsa::pkcs8::DecodePublicKey as _;
            use rsa::traits::PublicKeyParts as _;
            let pem = std::str::from_utf8(bytes).ok()?;
            let (der, spki) = keyward_envelope::rsa::public_key_der(pem).ok()?;
            let key = if spki {
                rsa::RsaPublicKey::from_public_key_der(&der).ok()?
            } else {
                rsa::RsaPublicKey::from_pkcs1_der(&der).ok()?
            };
            Some(KeyData::Rsa(RsaPublicKey {
                e: Mpint::from_positive_bytes(&key.e().to_bytes_be()).ok()?,
                n: Mpint::from_positive_bytes(&key.n().to_bytes_be()).ok()?,
            }))
        }
    }
}

/// A record's `authorized_keys` line (comment: its label) and `SHA256:` fingerprint.
pub fn describe(rec: &KeyRecord) -> Option<(String, String)> {
    let kd = key_data(rec)?;
    let fp = kd.fingerprint(HashAlg::Sha256).to_string();
    let pk = ssh_key::PublicKey::new(kd, rec.label.clone().unwrap_or_default());
    Some((pk.to_openssh().ok()?, fp))
}

/// The stored identities, as built from the keystore at one [`Keystore::generation`].
///
/// [`Keystore::generation`]: crate::keystore::Keystore::generation
#[derive(Default)]
struct Index {
    generation: Option<(u64, u64)>,
    stored: Arc<Vec<Arc<Offered>>>,
}

/// The offered keys and the caches behind them.
impl SshKeys {
    /// Ok once the keystore's start-up check passed (`integrity.rs`).
    pub(crate) fn keystore_ready(&self) -> Result<(), crate::error::AgentError> {
        self.h.keystore_ready()
    }
}

pub struct SshKeys {
    h: Arc<Hierarchy>,
    mem: Mutex<Vec<MemKey>>,
    /// Stored identities, rebuilt when the keystore's generation moves (any write through the
    /// agent, or the MAC key loaded or dropped): no keystore query per sign request.
    index: Mutex<Index>,
}

impl SshKeys {
    pub fn new(h: Arc<Hierarchy>) -> SshKeys {
        SshKeys {
            h,
            mem: Mutex::new(Vec::new()),
            index: Mutex::new(Index::default()),
        }
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.h
    }

    /// Forget every unwrapped key: the one key cache (called on `lock`, which clears it too).
    pub fn clear_cache(&self) {
        self.h.key_cache.clear();
    }

    /// The stored identities, from the index while it is current, else rebuilt.
    fn stored(&self) -> Result<Arc<Vec<Arc<Offered>>>, SshError> {
        let generation = self.h.ks.generation();
        {
            let index = lock(&self.index);
            if index.generation == Some(generation) {
                return Ok(index.stored.clone());
            }
        }
        // Read after taking the generation: a write in between makes the next call rebuild.
        let mut list = Vec::new();
        for rec in self.h.ks.list(KeyKind::Keypair, None)? {
            if !rec.ssh.has(SshFlags::OFFERED) || rec.state != KeyState::Active {
                continue;
            }
            // Usage limits: a keypair that may not sign (or has expired) is not offered; one
            // whose limits ask for confirmation is confirmed by the door's own prompt.
            let limits = crate::limits::Limits::of(&rec);
            if !limits.usage.contains(crate::limits::Usage::Sign)
                || limits.expired(crate::keystore::now())
            {
                continue;
            }
            let Some(public) = key_data(&rec) else {
                continue;
            };
            list.push(Arc::new(Offered {
                public,
                comment: rec.label.clone().unwrap_or_default(),
                confirm: rec.ssh.has(SshFlags::CONFIRM) || limits.confirm,
                destinations: Vec::new(),
                source: Source::Stored {
                    flags: rec.ssh,
                    rec: Box::new(rec),
                },
            }));
        }
        let stored = Arc::new(list);
        *lock(&self.index) = Index {
            generation: Some(generation),
            stored: stored.clone(),
        };
        Ok(stored)
    }

    /// Memory keys that have not expired (expired ones are dropped here).
    fn memory(&self) -> Vec<Arc<Offered>> {
        let now = Instant::now();
        let mut mem = lock(&self.mem);
        mem.retain(|k| k.constraints.expires.is_none_or(|t| t > now));
        mem.iter().map(MemKey::offered).collect()
    }

    /// Every identity offered now: stored keypairs marked for SSH, then memory keys that have
    /// not expired.
    pub fn offered(&self) -> Result<Vec<Arc<Offered>>, SshError> {
        let mut out: Vec<Arc<Offered>> = self.stored()?.iter().cloned().collect();
        out.extend(self.memory());
        Ok(out)
    }

    /// The offered identity with this public key.
    pub fn find(&self, public: &KeyData) -> Result<Arc<Offered>, SshError> {
        if let Some(o) = self.stored()?.iter().find(|o| &o.public == public) {
            return Ok(o.clone());
        }
        self.memory()
            .into_iter()
            .find(|o| &o.public == public)
            .ok_or(SshError::UnknownKey)
    }

    /// The identity with this public key and a signer for it, when both are at hand without
    /// waiting (the index is current and its lock free, the key is a memory key or its unwrapped
    /// form is cached, the agent is unlocked); `None` sends the caller to the slow path.
    pub fn ready(&self, public: &KeyData) -> Option<(Arc<Offered>, Arc<Pinned>)> {
        if self.h.is_locked() {
            return None;
        }
        let generation = self.h.ks.try_generation()?;
        let stored = {
            let index = self.index.try_lock().ok()?;
            if index.generation != Some(generation) {
                return None;
            }
            index.stored.iter().find(|o| &o.public == public).cloned()
        };
        if let Some(o) = stored {
            let Source::Stored { rec, .. } = &o.source else {
                return None;
            };
            // An expiry that passed since the index was built: the slow path refuses it.
            if rec.not_after.is_some() {
                return None;
            }
            let signer = self.h.key_cache.get(&rec.id)?;
            return Some((o, signer));
        }
        let now = Instant::now();
        let mem = lock(&self.mem);
        let k = mem
            .iter()
            .find(|k| &k.public == public && k.constraints.expires.is_none_or(|t| t > now))?;
        Some((k.offered(), k.secret.clone()))
    }

    /// Sign `data` with an offered identity. Refused while the agent is locked.
    pub fn sign(&self, id: &Offered, data: &[u8], flags: u32) -> Result<Signature, SshError> {
        if self.h.is_locked() {
            self.clear_cache();
            return Err(AgentError::Locked { op: "ssh sign" }.into());
        }
        match &id.source {
            Source::Memory => {
                let secret = {
                    let mem = lock(&self.mem);
                    mem.iter()
                        .find(|k| k.public == id.public)
                        .map(|k| k.secret.clone())
                        .ok_or(SshError::UnknownKey)?
                };
                secret.sign(data, flags)
            }
            Source::Stored { rec, .. } => self.sign_stored(rec, data, flags),
        }
    }

    fn sign_stored(&self, rec: &KeyRecord, data: &[u8], flags: u32) -> Result<Signature, SshError> {
        // The record as it is now (the in-memory copy of this keystore generation: a revocation
        // or narrowed limit since the identity was found applies), then usage and expiry, in the
        // hierarchy; a confirmation the limits ask for was given to the door's prompt
        // (`Offered::confirm`) before this call.
        let rec = &*self.h.keypair_copy(&rec.id)?;
        Hierarchy::require_active(rec)?;
        self.h.check_limits(rec, crate::limits::Usage::Sign)?;
        let on_token = crate::root::Scheme::parse(&rec.scheme)
            .is_ok_and(crate::root::Scheme::is_token_keypair);
        if on_token {
            let sig = self
                .h
                .sign_p256_checked(rec, data, "ssh sign with token key")?;
            return Ok(Signature::try_from(sig)?);
        }
        // Unwrapped under its KEK and parsed once, then from the one key cache (emptied on
        // lock, idle lock, token removal).
        self.h.require_unlocked("ssh sign")?;
        self.h.cached_key(rec)?.sign(data, flags)
    }

    /// `ssh-add`: keep the key in memory (with a lifetime or destination constraints), or wrap
    /// it under a KEK as a keypair offered to SSH (persisting across restarts).
    pub fn add(
        &self,
        key: &KeypairData,
        comment: &str,
        constraints: Constraints,
    ) -> Result<(), SshError> {
        // Adding needs the agent unlocked (to wrap), even for memory keys: a locked agent holds
        // no usable key material.
        self.h.root_record("ssh add")?;
        // The P-256 scalar, for the keystore record (the signer itself is aws-lc's).
        let mut p256_local = None;
        let (secret, public) = match key {
            KeypairData::Ecdsa(ssh_key::private::EcdsaKeypair::NistP256 { private, .. }) => {
                let bytes: &[u8; 32] = private.as_ref();
                let local = LocalKey::from_bytes(bytes)
                    .map_err(|_| SshError::Refused("not a valid P-256 private key".into()))?;
                let public =
                    KeyData::Ecdsa(EcdsaPublicKey::from(local.public_key().verifying_key()));
                let secret = from_local(&local)?;
                p256_local = Some(local);
                (secret, public)
            }
            KeypairData::Ed25519(kp) => {
                let seed = Zeroizing::new(kp.private.to_bytes());
                let k = Ed25519Key::from_bytes(&seed);
                let public = KeyData::Ed25519(Ed25519PublicKey(k.public_key().to_bytes()));
                if public != KeyData::Ed25519(kp.public) {
                    return Err(SshError::Refused(
                        "Ed25519 public half does not match".into(),
                    ));
                }
                (Key::Ed25519(k), public)
            }
            KeypairData::Rsa(kp) => {
                let key = rsa_key_pair(kp)?;
                let public = KeyData::Rsa(kp.public.clone());
                (Key::Rsa(key), public)
            }
            other => {
                return Err(SshError::Unsupported(format!(
                "{} keys (Keyward's SSH door holds ecdsa-sha2-nistp256, ssh-ed25519 and ssh-rsa)",
                other.algorithm().map(|a| a.to_string()).unwrap_or_default()
            )))
            }
        };
        // A key added again replaces the earlier one (as OpenSSH does).
        self.remove_quietly(&public)?;
        if constraints.expires.is_some() || !constraints.destinations.is_empty() {
            lock(&self.mem).push(MemKey {
                public,
                comment: comment.to_string(),
                secret: Arc::new(Pinned::new(secret)),
                constraints,
            });
            tracing::info!("ssh: key added in memory only (lifetime or destination constraints)");
            return Ok(());
        }
        let kek = self.ssh_kek()?;
        let mut flags = SshFlags::OFFERED | SshFlags::ADDED;
        if constraints.confirm {
            flags |= SshFlags::CONFIRM;
        }
        let label = Some(comment.to_string()).filter(|c| !c.is_empty());
        if let Key::Rsa(k) = &secret {
            // Stored as the agent stores every RSA keypair: PKCS#8 PEM under AES-256-GCM with a
            // DEK wrapped under the KEK.
            let pem = keyward_envelope::rsa::private_pem(k)
                .map_err(|e| AgentError::crypto("ssh rsa key")(e))?;
            let id = self.h.keypair_import_with_ssh(
                pem.as_bytes(),
                Some(&kek.id.to_string()),
                label,
                SshFlags(flags),
            )?;
            tracing::info!(%id, "ssh: RSA key added as a keypair under KEK {}", kek.id);
            return Ok(());
        }
        let mut rec = match (&secret, &p256_local) {
            (Key::P256(_), Some(local)) => self.h.keypair_record(local, &kek)?,
            // Not reached: P-256 keys come with their scalar, RSA keys were stored above.
            (Key::P256(_), None) | (Key::Rsa(_), _) => {
                return Err(SshError::Refused("a key without its record".into()))
            }
            (Key::Ed25519(k), _) => {
                let seed = k.to_bytes();
                let w = self
                    .h
                    .with_recovery(|| Ok(self.h.kek_handle(&kek)?.wrap_secret(seed.as_ref())?))?;
                let mut rec = KeyRecord::new(KeyKind::Keypair, w.scheme.as_str());
                rec.parent = Some(kek.id);
                rec.wrapped = Some(w.bytes);
                rec.public_key = Some(k.public_key().to_bytes().to_vec());
                rec.algorithm = Some(Algorithm::Ed25519);
                rec
            }
        };
        rec.label = label;
        self.h.ks.insert_with_ssh_flags(&rec, SshFlags(flags))?;
        tracing::info!(id = %rec.id, "ssh: key added as a keypair wrapped under KEK {}", kek.id);
        Ok(())
    }

    /// The KEK that wraps keys added through `ssh-add`: the oldest active KEK, or a new one
    /// labelled `ssh` when there is none.
    fn ssh_kek(&self) -> Result<KeyRecord, SshError> {
        let active = self
            .h
            .kek_list()?
            .into_iter()
            .find(|k| k.state == KeyState::Active);
        match active {
            Some(k) => Ok(k),
            None => {
                let id = self.h.kek_create(Some("ssh".into()))?;
                Ok(self.h.record(&id.to_string(), KeyKind::Kek)?)
            }
        }
    }

    /// `ssh-add -d`: forget a memory key; delete a keypair the SSH door added; stop offering
    /// any other keypair (never deleting it).
    pub fn remove(&self, public: &KeyData) -> Result<(), SshError> {
        if self.remove_quietly(public)? {
            Ok(())
        } else {
            Err(SshError::UnknownKey)
        }
    }

    fn remove_quietly(&self, public: &KeyData) -> Result<bool, SshError> {
        let before = {
            let mut mem = lock(&self.mem);
            let n = mem.len();
            mem.retain(|k| &k.public != public);
            n != mem.len()
        };
        let mut found = before;
        for o in self.offered()? {
            if &o.public != public {
                continue;
            }
            if let Source::Stored { rec, flags } = &o.source {
                self.unoffer(rec, *flags)?;
                found = true;
            }
        }
        Ok(found)
    }

    fn unoffer(&self, rec: &KeyRecord, flags: SshFlags) -> Result<(), SshError> {
        self.h.key_cache.remove(&rec.id);
        if flags.has(SshFlags::ADDED) {
            self.h.keypair_delete(&rec.id.to_string())?;
            tracing::info!(id = %rec.id, "ssh: removed a key added through ssh-add");
        } else {
            self.h.ks.set_ssh_flags(&rec.id, SshFlags(0))?;
            tracing::info!(id = %rec.id, "ssh: keypair no longer offered to SSH (kept)");
        }
        Ok(())
    }

    /// `ssh-add -D`.
    pub fn remove_all(&self) -> Result<(), SshError> {
        lock(&self.mem).clear();
        for o in self.offered()? {
            if let Source::Stored { rec, flags } = &o.source {
                self.unoffer(rec, *flags)?;
            }
        }
        Ok(())
    }

    /// Seconds until the next memory key expires (for logs and tests).
    pub fn next_expiry(&self) -> Option<Duration> {
        let now = Instant::now();
        lock(&self.mem)
            .iter()
            .filter_map(|k| k.constraints.expires)
            .min()
            .map(|t| t.saturating_duration_since(now))
    }
}

impl Hierarchy {
    /// Mark a keypair for SSH (`on`, `confirm`) or stop offering it (`off`). P-256, Ed25519 and
    /// RSA keypairs can be offered.
    pub fn keypair_set_ssh(
        &self,
        id: &str,
        offered: bool,
        confirm: bool,
    ) -> Result<KeyRecord, AgentError> {
        let rec = self.record(id, KeyKind::Keypair)?;
        if offered && key_data(&rec).is_none() {
            return Err(AgentError::WrongKey(WrongKey::NotForSsh {
                id: rec.id,
                alg: rec.algorithm,
            }));
        }
        let old = self.keypair_ssh_flags(&rec.id)?;
        let mut flags = old.0 & SshFlags::ADDED;
        if offered {
            flags |= SshFlags::OFFERED;
            if confirm {
                flags |= SshFlags::CONFIRM;
            }
        }
        self.ks.set_ssh_flags(&rec.id, SshFlags(flags))?;
        tracing::info!(id = %rec.id, offered, confirm, "keypair SSH use changed");
        Ok(rec)
    }

    /// A keypair's SSH flags (0 when it has none).
    pub fn keypair_ssh_flags(&self, id: &Uuid) -> Result<SshFlags, AgentError> {
        Ok(self
            .ks
            .ssh_flags()?
            .into_iter()
            .find(|(k, _)| k == id)
            .map(|(_, f)| f)
            .unwrap_or_default())
    }
}
