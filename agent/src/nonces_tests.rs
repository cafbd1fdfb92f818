use super::*;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};

/// A pool of `n` filled by hand (no refill thread).
fn filled(n: usize) -> NoncePool {
    let pool = NoncePool::new();
    pool.size(n);
    pool.enable();
    while pool.len() < n {
        assert!(pool.fill_once(epoch_of(&pool)).unwrap() > 0);
    }
    pool
}

/// The pool's epoch (its guard dropped before `fill_once` locks again).
fn epoch_of(pool: &NoncePool) -> u64 {
    pool.state().epoch
}

fn key(seed: u8) -> (Scalar, VerifyingKey) {
    let sk = SigningKey::from_bytes(&[seed; 32].into()).unwrap();
    let d: Scalar = *sk.as_nonzero_scalar().as_ref();
    (d, *sk.verifying_key())
}

fn sig(r: Scalar, s: Scalar) -> Signature {
    Signature::from_scalars(r.to_bytes(), s.to_bytes()).unwrap()
}

#[test]
fn a_precomputed_nonce_gives_the_signature_rustcrypto_gives_for_that_k() {
    let (d, vk) = key(7);
    let digest = [0xa5u8; 32];
    let k = Scalar::from_repr([0x42u8; 32].into()).unwrap();
    let (r, s) = Nonce::from_k(&k).sign(&d, &digest_scalar(&digest)).unwrap();
    // RustCrypto's ECDSA with the same k (hazmat: k chosen by the caller).
    let (want, _) =
        ecdsa::hazmat::sign_prehashed::<p256::NistP256, _>(&d, k, &digest.into()).unwrap();
    assert_eq!(sig(r, s), want);
    vk.verify_prehash(&digest, &sig(r, s)).unwrap();
}

#[test]
fn a_batch_makes_distinct_nonces_that_verify() {
    let (d, vk) = key(9);
    let nonces = make(BATCH).unwrap();
    assert_eq!(nonces.len(), BATCH);
    let mut rs = std::collections::HashSet::new();
    for (i, n) in nonces.into_iter().enumerate() {
        let digest = [i as u8; 32];
        let (r, s) = n.sign(&d, &digest_scalar(&digest)).unwrap();
        assert!(rs.insert(r.to_bytes()), "nonce {i} repeats an r");
        vk.verify_prehash(&digest, &sig(r, s))
            .unwrap_or_else(|e| panic!("nonce {i} of the batch: {e}"));
    }
}

#[test]
fn a_batch_of_one_and_a_partial_batch_invert_correctly() {
    let (d, vk) = key(3);
    for count in [1, 5, BATCH + 10] {
        let nonces = make(count).unwrap();
        assert_eq!(nonces.len(), count.min(BATCH));
        for n in nonces {
            let digest = [0x11; 32];
            let (r, s) = n.sign(&d, &digest_scalar(&digest)).unwrap();
            vk.verify_prehash(&digest, &sig(r, s)).unwrap();
        }
    }
}

#[test]
fn take_hands_each_nonce_out_once_and_wipes_its_slot() {
    let pool = filled(40);
    let mut seen = std::collections::HashSet::new();
    while let Some(n) = pool.take() {
        assert!(seen.insert(n.r.to_bytes()), "a nonce was handed out twice");
        // The slot just vacated holds no k⁻¹ any more.
        let s = pool.state();
        assert_eq!(
            s.slots[s.count].k_inv,
            Scalar::ZERO,
            "the taken slot still holds k⁻¹"
        );
    }
    assert_eq!(seen.len(), 40);
    assert!(pool.take().is_none());
}

#[test]
fn clear_wipes_the_pool_and_stops_the_refill_until_enabled() {
    let pool = filled(BATCH);
    let epoch = epoch_of(&pool);
    pool.clear();
    assert!(pool.is_empty());
    assert!(
        pool.state().slots.iter().all(|n| n.k_inv == Scalar::ZERO),
        "clear left a k⁻¹ behind"
    );
    // A batch made across the clear is dropped, and none is added while off.
    assert_eq!(pool.fill_once(epoch).unwrap(), 0);
    assert_eq!(pool.fill_once(epoch_of(&pool)).unwrap(), 0);
    assert!(pool.is_empty());
    pool.enable();
    assert!(pool.fill_once(epoch_of(&pool)).unwrap() > 0);
}

#[test]
fn the_pool_never_fills_past_its_capacity() {
    let pool = filled(10);
    assert_eq!(pool.len(), 10);
    assert_eq!(pool.fill_once(epoch_of(&pool)).unwrap(), 0);
    assert_eq!(pool.len(), 10);
}

#[test]
fn an_unstarted_pool_hands_out_nothing() {
    let pool = NoncePool::new();
    pool.enable();
    assert!(pool.take().is_none());
    assert_eq!(pool.fill_once(epoch_of(&pool)).unwrap(), 0);
}
