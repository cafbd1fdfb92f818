//! The one cache of unwrapped software private keys, shared by every door that signs (the SSH
//! door, `sign`, `sign.digest` and so the PKCS#11 module, and the operations that need a
//! keypair's scalar: ECDH, HPKE): a bounded table of keys parsed once into the object that signs
//! (aws-lc's P-256 and RSA key pairs, dalek's Ed25519 key), so a signature neither asks the root to
//! unwrap the key nor rebuilds it (as ssh-agent and gpg-agent keep keys while unlocked).
//!
//! Each key sits in its own heap block ([`Pinned`]), `mlock`ed where `RLIMIT_MEMLOCK` allows (it
//! still works unlocked otherwise). An Ed25519 key lives inside that block; a P-256 or RSA key's
//! numbers live in aws-lc's heap, which cleanses every allocation when it frees it
//! (`OPENSSL_free`), so they are wiped on drop but not `mlock`ed. At most [`CAPACITY`] keys are
//! kept; the least recently used one goes when a new one comes. A key is dropped (wiped) when it
//! is evicted, removed (deleted, revoked, its KEK rotated) or by [`KeyCache::clear`], which the
//! hierarchy calls on lock (explicit, idle, or a failed unlock) and when the root reports stale
//! handles (token removed or reset). A signature in flight holds its key (`Arc`) until it ends.
//!
//! An unwrap that raced a `clear` must not refill the cache: callers read [`KeyCache::epoch`]
//! before unwrapping and [`KeyCache::insert`] drops the key if a `clear` happened since.
//!
//! Next to the keys, the cache keeps in-memory copies of the records requests use ([`RecordCopies`]:
//! keypairs for signatures, DEKs and KEKs for `encrypt`, `decrypt`, `dek.export`, ...), so that a
//! request's checks (state, usage limits, `not_after`) cost no keystore read and no record MAC
//! check: the copies are tagged with a [`Generation`] (the keystore's
//! [`crate::keystore::Keystore::generation`], moved by every record write through the agent, by
//! any other connection's commit (SQLite's `data_version`; a shared database's notifications)
//! and by loading or dropping the MAC key) and all dropped when it moves, so a revocation, a narrowed limit or a row
//! edited outside the agent applies to the very next request, cached key or not.
//!
//! This module must never hold token keys (they never leave the token), never hand out the
//! secret bytes it holds, and never keep a key past `clear`.

use aws_lc_rs::signature::{EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use keyward_identity::ed25519::Ed25519Key;
use keyward_identity::p256::ecdsa::Signature as P256Signature;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

use crate::keystore::KeyRecord;

/// How many keys the cache holds at most.
pub const CAPACITY: usize = 64;

/// How many record copies are kept at most (all are dropped when full, and at each generation).
pub const RECORDS_MAX: usize = 4096;

/// What record copies are tagged with: [`crate::keystore::Keystore::generation`] (record writes
/// through the agent, commits by any other connection or agent, the MAC key's loads and drops).
pub type Generation = (u64, u64);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A private key in agent memory, parsed once into the object that signs.
pub enum Key {
    /// aws-lc's P-256 key pair (its heap is cleansed on free), and the scalar for signing with a
    /// precomputed nonce (`nonces.rs`).
    P256(P256Key),
    /// dalek's Ed25519 key (zeroized on drop).
    Ed25519(Ed25519Key),
    /// aws-lc's RSA key pair (its heap is cleansed on free); signs through the SSH door only.
    Rsa(RsaKeyPair),
}

/// Why a cached key could not sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("the key is not a P-256 key")]
    NotP256,
    #[error("the P-256 key could not be built or sign (aws-lc)")]
    Crypto,
}

/// A P-256 private key: aws-lc's key pair, and the same scalar as `p256`'s for the online half
/// of a signature with a precomputed nonce. Lives in its [`Pinned`] block; the scalar is wiped
/// on drop.
pub struct P256Key {
    pair: EcdsaKeyPair,
    d: P256Scalar,
}

struct P256Scalar(p256::Scalar);

impl Drop for P256Scalar {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Key {
    /// A P-256 key from its scalar (big-endian) and public point (SEC1). Without a precomputed
    /// nonce it signs in aws-lc's own output, DER, which [`Key::p256_signature`] reads into r and
    /// s: aws-lc-rs's FIXED format turns the same DER into r‖s through aws-lc's `ECDSA_SIG` and
    /// BIGNUMs (~8,700 instructions per signature under callgrind, 3% of an SSH signature;
    /// `p256`'s DER reader takes a few hundred).
    pub fn p256(scalar: &[u8], public_sec1: &[u8]) -> Result<Key, KeyError> {
        use p256::elliptic_curve::PrimeField as _;
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            scalar,
            public_sec1,
        )
        .map_err(|_| KeyError::Crypto)?;
        let repr: [u8; 32] = scalar.try_into().map_err(|_| KeyError::Crypto)?;
        let repr = zeroize::Zeroizing::new(repr);
        let d: Option<p256::Scalar> =
            p256::Scalar::from_repr(*p256::FieldBytes::from_slice(repr.as_slice())).into();
        let d = P256Scalar(d.ok_or(KeyError::Crypto)?);
        Ok(Key::P256(P256Key { pair, d }))
    }

    /// ECDSA P-256 over a 32-byte digest (the caller's hash): raw r‖s.
    pub fn sign_prehash(&self, digest: &[u8; 32]) -> Result<[u8; 64], KeyError> {
        let Key::P256(k) = self else {
            return Err(KeyError::NotP256);
        };
        if let Some(sig) = Self::sign_precomputed(k, || *digest) {
            return Self::fixed(sig?);
        }
        let d = aws_lc_rs::digest::Digest::import_less_safe(digest, &aws_lc_rs::digest::SHA256)
            .map_err(|_| KeyError::Crypto)?;
        let sig = k.pair.sign_digest(&d).map_err(|_| KeyError::Crypto)?;
        Self::fixed(Self::p256_signature(sig.as_ref())?)
    }

    /// The signature with a nonce of the agent's pool (`nonces.rs`), or `None` when the pool is
    /// empty (off, locked, or drained by a busy agent): then aws-lc signs with its own nonce.
    fn sign_precomputed(
        k: &P256Key,
        digest: impl FnOnce() -> [u8; 32],
    ) -> Option<Result<P256Signature, KeyError>> {
        let nonce = crate::nonces::NoncePool::global().take()?;
        let z = crate::nonces::digest_scalar(&digest());
        let (r, s) = nonce.sign(&k.d.0, &z)?;
        #[cfg(test)]
        tests::PRECOMPUTED.with(|n| n.set(n.get() + 1));
        Some(P256Signature::from_scalars(r.to_bytes(), s.to_bytes()).map_err(|_| KeyError::Crypto))
    }

    /// ECDSA P-256 with SHA-256 over `data`: raw r‖s. The nonce is a precomputed one of the
    /// agent's pool (`nonces.rs`), else aws-lc's own.
    pub fn sign_p256(&self, data: &[u8]) -> Result<[u8; 64], KeyError> {
        Self::fixed(self.sign_p256_signature(data)?)
    }

    /// [`Key::sign_p256`] as `p256`'s signature (r and s checked in range), for encoders that
    /// take one (the SSH door's).
    pub fn sign_p256_signature(&self, data: &[u8]) -> Result<P256Signature, KeyError> {
        let Key::P256(k) = self else {
            return Err(KeyError::NotP256);
        };
        let digest = || {
            use sha2::Digest as _;
            sha2::Sha256::digest(data).into()
        };
        if let Some(sig) = Self::sign_precomputed(k, digest) {
            return sig;
        }
        let sig = k
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), data)
            .map_err(|_| KeyError::Crypto)?;
        Self::p256_signature(sig.as_ref())
    }

    /// aws-lc's DER signature read by `p256` (strict DER; r and s in 1..n).
    fn p256_signature(der: &[u8]) -> Result<P256Signature, KeyError> {
        P256Signature::from_der(der).map_err(|_| KeyError::Crypto)
    }

    fn fixed(sig: P256Signature) -> Result<[u8; 64], KeyError> {
        sig.to_bytes()
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Crypto)
    }

    /// The P-256 scalar (for ECDH and HPKE, which need it as a `LocalKey`), in a buffer aws-lc
    /// wipes on drop.
    pub fn p256_scalar(&self) -> Result<aws_lc_rs::encoding::EcPrivateKeyBin<'static>, KeyError> {
        use aws_lc_rs::encoding::AsBigEndian as _;
        let Key::P256(k) = self else {
            return Err(KeyError::NotP256);
        };
        k.pair
            .private_key()
            .as_be_bytes()
            .map_err(|_| KeyError::Crypto)
    }
}

/// A [`Key`] in its own heap block, locked into RAM if the limit allows.
pub struct Pinned {
    /// Dropped before `key` (field order): munlock, then wipe and free.
    _lock: Option<region::LockGuard>,
    key: Box<Key>,
}

impl Pinned {
    pub fn new(key: Key) -> Pinned {
        let key = Box::new(key);
        let lock = region::lock(&*key as *const Key, std::mem::size_of::<Key>()).ok();
        Pinned { _lock: lock, key }
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Whether the key's block could be `mlock`ed.
    pub fn is_locked_in_memory(&self) -> bool {
        self._lock.is_some()
    }
}

struct Keys {
    /// Key id → (key, last use).
    map: HashMap<Uuid, (Arc<Pinned>, u64)>,
    clock: u64,
    epoch: u64,
}

/// In-memory copies of keypair records, valid for one keystore generation.
#[derive(Default)]
struct RecordCopies {
    generation: Option<Generation>,
    map: HashMap<Uuid, Arc<KeyRecord>>,
}

/// The cache (see the module docs).
pub struct KeyCache {
    keys: Mutex<Keys>,
    records: Mutex<RecordCopies>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyCache({} keys)", self.len())
    }
}

impl KeyCache {
    pub fn new() -> KeyCache {
        KeyCache {
            keys: Mutex::new(Keys {
                map: HashMap::with_capacity(CAPACITY),
                clock: 0,
                epoch: 0,
            }),
            records: Mutex::new(RecordCopies::default()),
        }
    }

    /// The number of `clear`s so far: read it before unwrapping a key to insert.
    pub fn epoch(&self) -> u64 {
        lock(&self.keys).epoch
    }

    /// The cached key of keypair `id`.
    pub fn get(&self, id: &Uuid) -> Option<Arc<Pinned>> {
        let mut k = lock(&self.keys);
        k.clock += 1;
        let now = k.clock;
        let (key, used) = k.map.get_mut(id)?;
        *used = now;
        Some(key.clone())
    }

    /// Keep `key` for `id`, evicting the least recently used key when full. Dropped if the
    /// cache was cleared since `epoch` was read.
    pub fn insert(&self, epoch: u64, id: Uuid, key: Arc<Pinned>) {
        let evicted;
        {
            let mut k = lock(&self.keys);
            if k.epoch != epoch {
                return;
            }
            k.clock += 1;
            let now = k.clock;
            evicted = if k.map.len() >= CAPACITY && !k.map.contains_key(&id) {
                let old = k
                    .map
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(i, _)| *i);
                old.and_then(|o| k.map.remove(&o))
            } else {
                None
            };
            k.map.insert(id, (key, now));
        }
        // A key is cached: keep precomputed nonces ready (`nonces.rs`).
        crate::nonces::NoncePool::global().enable();
        // Wiped outside the lock.
        drop(evicted);
    }

    /// Forget one key (deleted, revoked, rewrapped).
    pub fn remove(&self, id: &Uuid) {
        let gone = lock(&self.keys).map.remove(id);
        drop(gone);
        lock(&self.records).map.remove(id);
    }

    /// Forget every key (wiping each), every record copy and every precomputed nonce.
    pub fn clear(&self) {
        let gone = {
            let mut k = lock(&self.keys);
            k.epoch += 1;
            std::mem::take(&mut k.map)
        };
        drop(gone);
        *lock(&self.records) = RecordCopies::default();
        crate::nonces::NoncePool::global().clear();
    }

    pub fn len(&self) -> usize {
        lock(&self.keys).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The copy of record `id` made at keystore generation `generation`, if one is kept. A
    /// different generation drops every copy.
    pub fn record(&self, generation: Generation, id: &Uuid) -> Option<Arc<KeyRecord>> {
        let mut r = lock(&self.records);
        if r.generation != Some(generation) {
            r.map.clear();
            r.generation = Some(generation);
            return None;
        }
        r.map.get(id).cloned()
    }

    /// Keep a copy of `rec`, read from the keystore at (or after) `generation`.
    pub fn keep_record(&self, generation: Generation, rec: Arc<KeyRecord>) {
        let mut r = lock(&self.records);
        if r.generation != Some(generation) {
            r.map.clear();
            r.generation = Some(generation);
        }
        if r.map.len() >= RECORDS_MAX {
            r.map.clear();
        }
        r.map.insert(rec.id, rec);
    }

    /// The copy of `id` kept at the last generation a request checked, without checking the
    /// generation again: for what only describes a request that just used the record (the
    /// audit entry's label), never for a decision. `None` when no copy is kept.
    pub fn last_record(&self, id: &Uuid) -> Option<Arc<KeyRecord>> {
        lock(&self.records).map.get(id).cloned()
    }

    /// How many record copies are kept (tests).
    pub fn records_len(&self) -> usize {
        lock(&self.records).map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Signatures this thread made with a precomputed nonce.
        pub(super) static PRECOMPUTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    use crate::keystore::KeyKind;

    fn ed(i: u8) -> Arc<Pinned> {
        Arc::new(Pinned::new(Key::Ed25519(Ed25519Key::from_bytes(&[i; 32]))))
    }

    fn seed_of(p: &Pinned) -> [u8; 32] {
        match p.key() {
            Key::Ed25519(k) => k.to_bytes().as_slice().try_into().unwrap(),
            _ => panic!("not ed25519"),
        }
    }

    #[test]
    fn bounded_lru_and_cleared() {
        let c = KeyCache::new();
        let ids: Vec<Uuid> = (0..CAPACITY + 1).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().take(CAPACITY).enumerate() {
            c.insert(c.epoch(), *id, ed(i as u8));
        }
        assert_eq!(c.len(), CAPACITY);
        // Touch the first: the second is now the least recently used.
        assert_eq!(seed_of(&c.get(&ids[0]).unwrap()), [0u8; 32]);
        c.insert(c.epoch(), ids[CAPACITY], ed(0xee));
        assert_eq!(c.len(), CAPACITY);
        assert!(c.get(&ids[1]).is_none());
        assert_eq!(seed_of(&c.get(&ids[CAPACITY]).unwrap()), [0xee; 32]);
        c.remove(&ids[0]);
        assert!(c.get(&ids[0]).is_none());

        let before = c.epoch();
        c.clear();
        assert!(c.is_empty());
        // An unwrap that started before the clear does not refill the cache.
        c.insert(before, ids[2], ed(1));
        assert!(c.get(&ids[2]).is_none());
    }

    #[test]
    fn record_copies_last_one_generation() {
        let c = KeyCache::new();
        let rec = Arc::new(KeyRecord::new(KeyKind::Keypair, "soft"));
        let g = (1, 0);
        assert!(c.record(g, &rec.id).is_none());
        c.keep_record(g, rec.clone());
        assert_eq!(c.record(g, &rec.id).unwrap().id, rec.id);
        // The keystore was written (by the agent or another process): every copy goes.
        assert!(c.record((2, 0), &rec.id).is_none());
        assert_eq!(c.records_len(), 0);
        c.keep_record((2, 0), rec.clone());
        // The MAC key dropped (lock): the same.
        assert!(c.record((2, 1), &rec.id).is_none());
        c.keep_record((2, 1), rec.clone());
        c.clear();
        assert!(c.record((2, 1), &rec.id).is_none());
    }

    /// aws-lc signs in DER, read by `p256` into r and s: the raw r‖s and the `p256` signature
    /// are the same signature, and it verifies over the message.
    #[test]
    fn p256_signs_messages_that_verify_raw_and_as_p256_signatures() {
        use keyward_identity::p256::ecdsa::signature::Verifier;
        let local = keyward_identity::LocalKey::generate(&mut rand_core::OsRng);
        let scalar = local.secret_key().to_bytes();
        let point = local.public_key().verifying_key().to_encoded_point(false);
        let k = Key::p256(scalar.as_slice(), point.as_bytes()).unwrap();
        let vk = local.public_key().verifying_key();
        for msg in [&b""[..], b"hello", &[0xa5; 1000][..]] {
            let raw = k.sign_p256(msg).unwrap();
            vk.verify(msg, &P256Signature::from_slice(&raw).unwrap())
                .unwrap();
            let sig = k.sign_p256_signature(msg).unwrap();
            vk.verify(msg, &sig).unwrap();
        }
        assert!(Key::p256_signature(&[0x30, 0x00]).is_err());
        let ed = Key::Ed25519(Ed25519Key::from_bytes(&[1; 32]));
        assert!(matches!(ed.sign_p256(b"x"), Err(KeyError::NotP256)));
    }

    #[test]
    fn p256_signs_prehashed_digests_that_verify() {
        use keyward_identity::p256::ecdsa::signature::hazmat::PrehashVerifier;
        let local = keyward_identity::LocalKey::generate(&mut rand_core::OsRng);
        let scalar = local.secret_key().to_bytes();
        let point = local.public_key().verifying_key().to_encoded_point(false);
        let k = Key::p256(scalar.as_slice(), point.as_bytes()).unwrap();
        let digest = [0x5a; 32];
        let sig = k.sign_prehash(&digest).unwrap();
        let sig = keyward_identity::p256::ecdsa::Signature::from_slice(&sig).unwrap();
        local
            .public_key()
            .verifying_key()
            .verify_prehash(&digest, &sig)
            .unwrap();
        assert_eq!(k.p256_scalar().unwrap().as_ref(), scalar.as_slice());
    }

    #[test]
    fn p256_signs_with_the_agents_precomputed_nonces_once_a_key_is_cached() {
        use keyward_identity::p256::ecdsa::signature::hazmat::PrehashVerifier;
        use keyward_identity::p256::ecdsa::signature::Verifier;
        use std::time::{Duration, Instant};
        // The process's one pool, as keywardd starts it (other tests may clear it meanwhile:
        // keep signing until some signatures used it).
        crate::nonces::NoncePool::global().start(64).unwrap();
        let local = keyward_identity::LocalKey::generate(&mut rand_core::OsRng);
        let scalar = local.secret_key().to_bytes();
        let point = local.public_key().verifying_key().to_encoded_point(false);
        let cache = KeyCache::new();
        let id = Uuid::new_v4();
        let pinned = Arc::new(Pinned::new(
            Key::p256(scalar.as_slice(), point.as_bytes()).unwrap(),
        ));
        let vk = local.public_key().verifying_key();
        let before = PRECOMPUTED.with(|n| n.get());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut rs = std::collections::HashSet::new();
        while PRECOMPUTED.with(|n| n.get()) < before + 20 {
            assert!(
                Instant::now() < deadline,
                "no signature used a precomputed nonce"
            );
            cache.insert(cache.epoch(), id, pinned.clone());
            let k = cache.get(&id).unwrap();
            let msg = b"the same message each time";
            let sig = k.key().sign_p256_signature(msg).unwrap();
            vk.verify(msg, &sig).unwrap();
            assert!(
                rs.insert(sig.r().to_bytes()),
                "two signatures share a nonce"
            );
            let digest = [0x3c; 32];
            let raw = k.key().sign_prehash(&digest).unwrap();
            let raw = keyward_identity::p256::ecdsa::Signature::from_slice(&raw).unwrap();
            vk.verify_prehash(&digest, &raw).unwrap();
            assert!(
                rs.insert(raw.r().to_bytes()),
                "two signatures share a nonce"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
#[path = "key_cache_tests.rs"]
mod hierarchy_tests;
