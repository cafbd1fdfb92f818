//! The cache of unwrapped software private keys: a bounded, `mlock`ed, zeroizing table of
//! keypair secrets (a P-256 scalar or an Ed25519 seed, 32 bytes each), so that signing with a
//! software keypair does not ask the root to unwrap it every time (as ssh-agent and gpg-agent
//! keep keys while unlocked).
//!
//! The secrets live in one fixed array of [`CAPACITY`] slots allocated once and `mlock`ed for the
//! cache's life (where `RLIMIT_MEMLOCK` allows; otherwise it still works, unlocked), so they are
//! never swapped out and never copied by a growing collection. A slot is zeroized when its key is
//! evicted (least recently used first) or removed, and every slot is zeroized by [`KeyCache::clear`],
//! which the hierarchy calls on lock (explicit, idle, or a failed unlock) and when the root reports
//! stale handles (token removed or reset). The whole array is zeroized on drop.
//!
//! An unwrap that raced a `clear` must not refill the cache: callers read [`KeyCache::epoch`]
//! before unwrapping and [`KeyCache::insert`] drops the key if a `clear` happened since.
//!
//! This module must never hold token keys (they never leave the token), and never hand out a
//! reference into the table: [`KeyCache::get`] copies the secret into a zeroizing buffer.

use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

/// How many keys the cache holds at most.
pub const CAPACITY: usize = 64;

/// One cached secret.
pub type Secret = Zeroizing<[u8; 32]>;

struct Slots {
    /// The secrets; `mlock`ed for the cache's life.
    keys: Box<[[u8; 32]; CAPACITY]>,
    _locked: Option<region::LockGuard>,
    /// Key id → (slot, last use).
    index: HashMap<Uuid, (usize, u64)>,
    /// Slots not in use.
    free: Vec<usize>,
    clock: u64,
    epoch: u64,
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.keys.zeroize();
    }
}

/// The cache (see the module docs).
pub struct KeyCache {
    slots: Mutex<Slots>,
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
        let keys = Box::new([[0u8; 32]; CAPACITY]);
        let locked = region::lock(keys.as_ptr(), std::mem::size_of::<[[u8; 32]; CAPACITY]>()).ok();
        KeyCache {
            slots: Mutex::new(Slots {
                keys,
                _locked: locked,
                index: HashMap::with_capacity(CAPACITY),
                free: (0..CAPACITY).rev().collect(),
                clock: 0,
                epoch: 0,
            }),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the table could be `mlock`ed.
    pub fn is_locked_in_memory(&self) -> bool {
        self.slots()._locked.is_some()
    }

    /// The number of `clear`s so far: read it before unwrapping a key to insert.
    pub fn epoch(&self) -> u64 {
        self.slots().epoch
    }

    /// A copy of a cached key's secret.
    pub fn get(&self, id: &Uuid) -> Option<Secret> {
        let mut s = self.slots();
        s.clock += 1;
        let now = s.clock;
        let (slot, used) = s.index.get_mut(id)?;
        *used = now;
        let slot = *slot;
        Some(Zeroizing::new(s.keys[slot]))
    }

    /// Keep `secret` for `id`, evicting the least recently used key when full. Dropped if the
    /// cache was cleared since `epoch` was read.
    pub fn insert(&self, epoch: u64, id: Uuid, secret: &[u8; 32]) {
        let mut s = self.slots();
        if s.epoch != epoch {
            return;
        }
        s.clock += 1;
        let now = s.clock;
        let slot = if let Some((slot, _)) = s.index.get(&id) {
            *slot
        } else if let Some(slot) = s.free.pop() {
            slot
        } else {
            let Some((&old, &(slot, _))) = s.index.iter().min_by_key(|(_, (_, used))| *used) else {
                return;
            };
            s.index.remove(&old);
            slot
        };
        s.keys[slot].copy_from_slice(secret);
        s.index.insert(id, (slot, now));
    }

    /// Forget one key (deleted or revoked).
    pub fn remove(&self, id: &Uuid) {
        let mut s = self.slots();
        if let Some((slot, _)) = s.index.remove(id) {
            s.keys[slot].zeroize();
            s.free.push(slot);
        }
    }

    /// Forget every key, zeroizing the whole table.
    pub fn clear(&self) {
        let mut s = self.slots();
        s.keys.zeroize();
        s.index.clear();
        s.free = (0..CAPACITY).rev().collect();
        s.epoch += 1;
    }

    pub fn len(&self) -> usize {
        self.slots().index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lru_and_cleared() {
        let c = KeyCache::new();
        let ids: Vec<Uuid> = (0..CAPACITY + 1).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().take(CAPACITY).enumerate() {
            c.insert(c.epoch(), *id, &[i as u8; 32]);
        }
        assert_eq!(c.len(), CAPACITY);
        // Touch the first: the second is now the least recently used.
        assert_eq!(*c.get(&ids[0]).unwrap(), [0u8; 32]);
        c.insert(c.epoch(), ids[CAPACITY], &[0xee; 32]);
        assert_eq!(c.len(), CAPACITY);
        assert!(c.get(&ids[1]).is_none());
        assert_eq!(*c.get(&ids[CAPACITY]).unwrap(), [0xee; 32]);
        c.remove(&ids[0]);
        assert!(c.get(&ids[0]).is_none());

        let before = c.epoch();
        c.clear();
        assert!(c.is_empty());
        assert!(c.slots().keys.iter().all(|k| k == &[0u8; 32]));
        // An unwrap that started before the clear does not refill the cache.
        c.insert(before, ids[2], &[1; 32]);
        assert!(c.get(&ids[2]).is_none());
    }
}
