//! Precomputed ECDSA P-256 nonces: the "offline" half of a signature, made while the agent has
//! nothing else to do, so that a request's signature only pays the "online" half.
//!
//! An ECDSA signature with private scalar `d` over a digest `z` is `r = x(k·G) mod n`,
//! `s = k⁻¹·(z + r·d) mod n` for a fresh random nonce `k`. Everything that costs (the base-point
//! multiplication `k·G` and the inversion `k⁻¹`) depends on neither the key nor the message, so a
//! pool of `(k⁻¹, r)` pairs made ahead of time turns a signature into two scalar
//! multiplications and an addition (~0.1 µs instead of aws-lc's ~22 µs on the reference VM).
//! With one client signing back to back (an `ssh` login, `git` signing a rebase, a PKCS#11 loop)
//! that is a quarter of the round trip.
//!
//! How a pair is made: `k` and `k·G` come from aws-lc's P-256 key generation (its DRBG and its
//! constant-time base-point table, as for its own ECDSA nonces); a batch of [`BATCH`] `k`s is
//! inverted at once with Montgomery's trick (one constant-time inversion in `p256`, then
//! multiplications), in buffers wiped on drop. A background thread at the lowest `nice` (19)
//! refills the pool whenever it falls to half, so it runs on otherwise idle CPU: when every core
//! is busy (many clients) it hardly runs, the pool drains and signatures fall back to aws-lc's own
//! signing, which costs the same as making the pair.
//!
//! This module must never hand out a pair twice (a reused `k` gives the private key away from two
//! signatures): [`NoncePool::take`] moves a pair out under the lock and wipes its slot, and a
//! [`Nonce`] is consumed by [`Nonce::sign`] and wiped when dropped. Unused pairs are as secret as
//! the signatures they will make: the pool's buffer is `mlock`ed where `RLIMIT_MEMLOCK` allows,
//! and [`NoncePool::clear`] (called with the key cache's `clear`: lock, idle lock, a failed
//! unlock, a removed token) wipes every pair and stops the refill until a key is cached again, so
//! no nonce made while unlocked survives into a locked agent whose memory someone reads.

use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::Field as _;
use p256::elliptic_curve::PrimeField;
use p256::{FieldBytes, Scalar, U256};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

/// How many pairs are made at once (one inversion per batch).
pub const BATCH: usize = 32;

/// The default pool size (`[server] ecdsa_nonces`): one client's worth of signatures for ~20 ms.
pub const DEFAULT_POOL: usize = 256;

/// The largest pool `[server] ecdsa_nonces` may ask for.
pub const MAX_POOL: usize = 65536;

/// One precomputed nonce: `k⁻¹` (secret) and `r = x(k·G) mod n` (public once used).
pub struct Nonce {
    k_inv: Scalar,
    r: Scalar,
}

impl Drop for Nonce {
    fn drop(&mut self) {
        self.k_inv.zeroize();
        self.r.zeroize();
    }
}

impl Nonce {
    /// An empty slot's value (what wiping leaves).
    const ZERO: Nonce = Nonce {
        k_inv: Scalar::ZERO,
        r: Scalar::ZERO,
    };

    /// The signature `(r, s)` of digest `z` (already reduced mod n) by private scalar `d`,
    /// consuming the nonce. `None` in the negligible case `s = 0` (the caller signs another way).
    pub fn sign(self, d: &Scalar, z: &Scalar) -> Option<(Scalar, Scalar)> {
        let s = self.k_inv * (*z + self.r * d);
        if bool::from(s.is_zero()) {
            return None;
        }
        Some((self.r, s))
    }

    /// A nonce with a chosen `k` (tests: the known-answer check against RustCrypto's ECDSA).
    #[cfg(test)]
    pub(crate) fn from_k(k: &Scalar) -> Nonce {
        use p256::elliptic_curve::point::AffineCoordinates;
        let x = (p256::ProjectivePoint::GENERATOR * k).to_affine().x();
        Nonce {
            k_inv: Option::from(k.invert()).unwrap_or(Scalar::ZERO),
            r: <Scalar as Reduce<U256>>::reduce_bytes(&x),
        }
    }
}

/// A 32-byte digest as ECDSA's `z` for P-256 (the digest's 256 bits, reduced mod n).
pub fn digest_scalar(digest: &[u8; 32]) -> Scalar {
    <Scalar as Reduce<U256>>::reduce_bytes(FieldBytes::from_slice(digest))
}

/// Why a batch could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NonceError {
    #[error("making a nonce: aws-lc's P-256 key generation failed")]
    Generate,
    #[error("making a nonce: the batch's inversion failed")]
    Invert,
}

/// Make `count` pairs (at most [`BATCH`]).
pub fn make(count: usize) -> Result<Vec<Nonce>, NonceError> {
    use aws_lc_rs::agreement::{PrivateKey, ECDH_P256};
    use aws_lc_rs::encoding::{AsBigEndian, EcPrivateKeyBin};
    let count = count.min(BATCH);
    // k values, their running products, and the inverses: all wiped on drop.
    let mut ks: Zeroizing<Vec<Scalar>> = Zeroizing::new(Vec::with_capacity(count));
    let mut rs = Vec::with_capacity(count);
    while ks.len() < count {
        let key = PrivateKey::generate(&ECDH_P256).map_err(|_| NonceError::Generate)?;
        let point = key.compute_public_key().map_err(|_| NonceError::Generate)?;
        let bytes: EcPrivateKeyBin = key.as_be_bytes().map_err(|_| NonceError::Generate)?;
        let repr = Zeroizing::new(*FieldBytes::from_slice(bytes.as_ref()));
        let k: Option<Scalar> = Scalar::from_repr(*repr).into();
        // Uncompressed SEC1: 0x04 ‖ x ‖ y.
        let x = point.as_ref().get(1..33).ok_or(NonceError::Generate)?;
        let r = <Scalar as Reduce<U256>>::reduce_bytes(FieldBytes::from_slice(x));
        match k {
            Some(k) if !bool::from(k.is_zero()) && !bool::from(r.is_zero()) => {
                ks.push(k);
                rs.push(r);
            }
            _ => continue,
        }
    }
    // Montgomery's trick: prefix products, one inversion, then back down.
    let mut prefix: Zeroizing<Vec<Scalar>> = Zeroizing::new(Vec::with_capacity(count));
    let mut acc = Zeroizing::new(Scalar::ONE);
    for k in ks.iter() {
        *acc *= k;
        prefix.push(*acc);
    }
    let inv: Option<Scalar> = acc.invert().into();
    let mut inv = Zeroizing::new(inv.ok_or(NonceError::Invert)?);
    let mut inverses: Zeroizing<Vec<Scalar>> = Zeroizing::new(vec![Scalar::ZERO; count]);
    for i in (0..count).rev() {
        // inv = (k_0 ⋯ k_i)⁻¹
        inverses[i] = if i == 0 { *inv } else { *inv * prefix[i - 1] };
        *inv *= ks[i];
    }
    Ok(inverses
        .iter()
        .zip(rs)
        .map(|(k_inv, r)| Nonce { k_inv: *k_inv, r })
        .collect())
}

struct State {
    /// `capacity` slots, allocated (and `mlock`ed) once; `slots[..count]` hold nonces, the rest
    /// are wiped (zero).
    slots: Vec<Nonce>,
    count: usize,
    /// Refill wanted (a key is cached); off after [`NoncePool::clear`].
    filling: bool,
    /// Moved by every `clear`: a batch made across one is dropped, not added.
    epoch: u64,
    _lock: Option<region::LockGuard>,
}

/// The pool (see the module docs). Signatures use [`NoncePool::global`]; tests make their own.
pub struct NoncePool {
    state: Mutex<State>,
    wake: Condvar,
}

impl Default for NoncePool {
    fn default() -> Self {
        Self::new()
    }
}

impl NoncePool {
    pub const fn new() -> NoncePool {
        NoncePool {
            state: Mutex::new(State {
                slots: Vec::new(),
                count: 0,
                filling: false,
                epoch: 0,
                _lock: None,
            }),
            wake: Condvar::new(),
        }
    }

    /// The agent's one pool: empty (and signatures use aws-lc's own nonces) until `keywardd`
    /// starts it.
    pub fn global() -> &'static NoncePool {
        static POOL: NoncePool = NoncePool::new();
        &POOL
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Size the pool (its buffer `mlock`ed if the limit allows) and start its refill thread.
    /// Called once, at start-up; `capacity` 0 leaves the pool off. Returns whether the buffer is
    /// locked in memory.
    pub fn start(&'static self, capacity: usize) -> std::io::Result<bool> {
        static STARTED: OnceLock<()> = OnceLock::new();
        let capacity = capacity.min(MAX_POOL);
        if capacity == 0 || STARTED.set(()).is_err() {
            return Ok(self.state()._lock.is_some());
        }
        let locked = self.size(capacity);
        std::thread::Builder::new()
            .name("ecdsa-nonces".into())
            .spawn(move || self.refill())?;
        Ok(locked)
    }

    /// Give the pool its buffer (tests size their own pools with this and fill them by hand).
    fn size(&self, capacity: usize) -> bool {
        let mut s = self.state();
        s._lock = None;
        s.slots = (0..capacity).map(|_| Nonce::ZERO).collect();
        s.count = 0;
        let bytes = capacity * std::mem::size_of::<Nonce>();
        s._lock = region::lock(s.slots.as_ptr(), bytes).ok();
        s._lock.is_some()
    }

    /// The refill thread: lowest priority, sleeps until the pool falls to half or a key is
    /// cached again (an idle agent never wakes it), then fills it in batches. Every change that
    /// should wake it (`enable`, `take` crossing half) notifies under the pool's lock, so no
    /// wake-up is lost.
    fn refill(&self) {
        // On Linux `setpriority(PRIO_PROCESS, tid)` sets one thread's nice value.
        if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
            tracing::debug!(error = %e, "ecdsa-nonces: could not lower the refill thread's priority");
        }
        loop {
            let epoch = {
                let mut s = self.state();
                while !(s.filling && s.count < s.slots.len()) {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                s.epoch
            };
            if let Err(e) = self.fill_once(epoch) {
                tracing::warn!(error = %e, "ecdsa-nonces: refill stopped for a second");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    /// Make one batch and add it, unless a `clear` came in between. Returns how many were added.
    fn fill_once(&self, epoch: u64) -> Result<usize, NonceError> {
        let room = {
            let s = self.state();
            s.slots.len() - s.count
        };
        if room == 0 {
            return Ok(0);
        }
        let batch = make(room.min(BATCH))?;
        let mut s = self.state();
        if s.epoch != epoch || !s.filling {
            return Ok(0);
        }
        let mut added = 0;
        for n in batch {
            let i = s.count;
            let Some(slot) = s.slots.get_mut(i) else {
                break;
            };
            *slot = n;
            s.count += 1;
            added += 1;
        }
        Ok(added)
    }

    /// One nonce, moved out of the pool (its slot wiped), or `None` when it is empty.
    pub fn take(&self) -> Option<Nonce> {
        let mut s = self.state();
        let i = s.count.checked_sub(1)?;
        // Moved out; the slot is left holding zeros.
        let n = std::mem::replace(s.slots.get_mut(i)?, Nonce::ZERO);
        s.count = i;
        // Wake the refill once, as the pool crosses half (not at every signature).
        if s.count == s.slots.len() / 2 && s.filling {
            self.wake.notify_one();
        }
        Some(n)
    }

    /// A key is cached: keep the pool filled.
    pub fn enable(&self) {
        let mut s = self.state();
        if !s.filling && !s.slots.is_empty() {
            s.filling = true;
            self.wake.notify_one();
        }
    }

    /// Wipe every pair and stop refilling until [`NoncePool::enable`].
    pub fn clear(&self) {
        let mut s = self.state();
        s.filling = false;
        s.epoch += 1;
        let count = s.count;
        for n in s.slots.iter_mut().take(count) {
            // Dropping the old value wipes it once more; the slot holds zeros.
            *n = Nonce::ZERO;
        }
        s.count = 0;
    }

    pub fn len(&self) -> usize {
        self.state().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[path = "nonces_tests.rs"]
mod tests;
