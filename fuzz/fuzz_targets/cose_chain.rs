//! Delegation statements and chains (`identity/src/delegation.rs`, on `identity/src/cose.rs`).
//!
//! Two modes, picked by the low bit of the first byte:
//! - raw (even): the rest is a chain file (`Chain::from_cbor`), and also a single statement
//!   (`cose::parse`, `inspect_statement`) and a statement payload (`Statement::from_payload`);
//!   a chain that parses is asked about its root and the keys it names.
//! - structured (odd): the rest picks a verification time and a sequence of statements from a
//!   fixed pool signed at start-up (delegations, rekeys, revocations by ancestors, descendants
//!   and the key itself, expired and not-yet-valid links, a cycle, a forged signature, a deep
//!   chain), builds a chain of them and asks `verify_key` about one key. Signatures stay valid
//!   whatever the fuzzer does, so the walk and revocation logic are what gets exercised.
//!
//! Invariants checked (a violation is a crash):
//! - statements and chains re-encode and parse back to equal values;
//! - the root is always vouched for (unless revoked by itself), with the path `[root]`;
//! - a `Vouch` path starts at the key asked about, ends at the root, has no repeated key, and is
//!   at most `MAX_DEPTH + 1` long; its expiry is in the future;
//! - (structured) every step of a `Vouch` path is a delegation or rekey in the chain, issued by
//!   the next key, correctly signed, and valid at the time asked; and no correctly signed
//!   revocation in the chain revokes a key of the path by that key or one of its ancestors;
//! - a chain re-encodes and decodes to an equal chain.
#![no_main]

use keyward_identity::cose;
use keyward_identity::delegation::{inspect_statement, MAX_DEPTH};
use keyward_identity::{
    issue_delegation, issue_rekey, issue_revocation, Chain, ChainError, LocalKey, PublicKey,
    Statement, StatementKind, Vouch,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const T0: u64 = 1_000_000;
/// Times that sit on and around the pool's validity boundaries.
const TIMES: [u64; 12] = [
    0,
    T0 - 1,
    T0,
    T0 + 5,
    T0 + 99,
    T0 + 100,
    T0 + 499,
    T0 + 500,
    T0 + 999,
    T0 + 1000,
    T0 + 1999,
    u64::MAX,
];
const DEEP: usize = MAX_DEPTH + 2;

struct Pool {
    /// R, A, B, C, D, then the deep chain's keys.
    keys: Vec<PublicKey>,
    /// Signed statements, and whether the signature is genuine.
    statements: Vec<(Vec<u8>, bool)>,
    /// Indices in `statements` of the deep chain R -> K0 -> ... -> K(DEEP-1).
    deep: std::ops::Range<usize>,
}

fn key(n: u8) -> LocalKey {
    LocalKey::from_bytes(&[n; 32]).expect("valid scalar")
}

fn pool() -> &'static Pool {
    static P: OnceLock<Pool> = OnceLock::new();
    P.get_or_init(|| {
        let (r, a, b, c, d) = (key(1), key(2), key(3), key(4), key(5));
        let id = |k: &LocalKey| k.public_key().key_id();
        let del = |by: &LocalKey, to: &LocalKey, name: &str, iat, exp| {
            issue_delegation(by, &id(by), &to.public_key(), name, iat, exp).expect("issue")
        };
        let rev = |by: &LocalKey, who: &LocalKey, iat| {
            issue_revocation(by, &id(by), &id(who), iat).expect("issue")
        };
        let mut forged = del(&r, &d, "forged", T0, T0 + 1000);
        let last = forged.len() - 1;
        forged[last] ^= 1; // the signature's last byte
        let mut statements = vec![
            (del(&r, &a, "a", T0, T0 + 1000), true),
            (del(&a, &b, "b", T0, T0 + 1000), true),
            (del(&b, &c, "c", T0, T0 + 500), true),
            (del(&r, &b, "b-direct", T0 + 100, T0 + 2000), true),
            (del(&a, &a, "self", T0, T0 + 1000), true),
            (del(&c, &a, "loop", T0, T0 + 1000), true),
            (
                issue_rekey(&a, &d.public_key(), "d", T0, T0 + 1000).expect("issue"),
                true,
            ),
            (rev(&a, &b, T0 + 10), true),
            (rev(&b, &a, T0), true),
            (rev(&c, &c, T0), true),
            (rev(&r, &a, T0 + 5000), true),
            (forged, false),
            (del(&r, &c, "expired", 1, T0 - 1), true),
            (del(&d, &b, "b-via-d", T0 + 1, T0 + 999), true),
            (rev(&r, &c, T0), true),
            (del(&c, &d, "d-under-c", T0, T0 + 1000), true),
            (rev(&r, &r, T0), true),
            (del(&b, &r, "root-under-b", T0, T0 + 1000), true),
        ];
        let mut keys: Vec<PublicKey> = [&r, &a, &b, &c, &d]
            .iter()
            .map(|k| k.public_key())
            .collect();
        let start = statements.len();
        let mut parent = key(1);
        for i in 0..DEEP {
            let k = key(10 + i as u8);
            statements.push((del(&parent, &k, &format!("k{i}"), T0, T0 + 1000), true));
            keys.push(k.public_key());
            parent = k;
        }
        Pool {
            keys,
            statements,
            deep: start..start + DEEP,
        }
    })
}

/// Checks that hold for any chain and any answer.
fn check_vouch(chain: &Chain, key: &PublicKey, now: u64, v: &Vouch) {
    let root = chain.root().key_id();
    assert_eq!(v.key, key.key_id());
    assert_eq!(v.path.first(), Some(&v.key));
    assert_eq!(v.path.last(), Some(&root));
    assert!(v.path.len() <= MAX_DEPTH + 1, "path longer than MAX_DEPTH");
    for (i, k) in v.path.iter().enumerate() {
        assert!(!v.path[i + 1..].contains(k), "repeated key in path");
    }
    if v.key == root {
        assert_eq!(v.path.len(), 1);
        assert_eq!(v.expires_at, None);
    } else {
        assert!(
            v.expires_at.is_some_and(|e| e > now),
            "vouched by an expired link"
        );
    }
}

/// The structured mode's model: each step of the path is a genuine, currently valid link in the
/// chain, and no genuine revocation by a key at or above a path key revokes it.
fn check_vouch_model(chain: &Chain, genuine: &[bool], now: u64, v: &Vouch) {
    let decoded: Vec<Statement> = chain
        .statements()
        .iter()
        .map(|s| inspect_statement(s).expect("pool statements decode"))
        .collect();
    for w in v.path.windows(2) {
        let (child, parent) = (w[0], w[1]);
        let ok = decoded.iter().zip(genuine).any(|(st, &good)| {
            good && matches!(st.kind, StatementKind::Delegation | StatementKind::Rekey)
                && st.subject == child
                && st.issuer == parent
                && st.issued_at <= now
                && st.expires_at.is_some_and(|e| now < e)
        });
        assert!(
            ok,
            "path step {child} <- {parent} has no genuine valid link"
        );
    }
    for (st, &good) in decoded.iter().zip(genuine) {
        if !good || st.kind != StatementKind::Revocation {
            continue;
        }
        let i = v.path.iter().position(|k| *k == st.subject);
        let j = v.path.iter().position(|k| *k == st.issuer);
        if let (Some(i), Some(j)) = (i, j) {
            assert!(
                j < i,
                "vouched despite a revocation of {} by {}",
                st.subject,
                st.issuer
            );
        }
    }
}

fn verify(chain: &Chain, key: &PublicKey, now: u64) -> Result<Vouch, ChainError> {
    let r = chain.verify_key(key, now);
    if let Ok(v) = &r {
        check_vouch(chain, key, now, v);
    }
    // The chain file round-trips to an equal chain (so `verify_key` answers the same; it is
    // deterministic, and asking twice would double the signature checks).
    let again = Chain::from_cbor(&chain.to_cbor()).expect("a chain re-decodes");
    assert_eq!(&again, chain, "chain round trip");
    r
}

fn raw(data: &[u8]) {
    if let Ok(st) = Statement::from_payload(data) {
        assert_eq!(
            Statement::from_payload(&st.to_payload()).ok(),
            Some(st.clone())
        );
    }
    if cose::parse(data).is_ok() {
        if let Ok(st) = inspect_statement(data) {
            assert_eq!(Statement::from_payload(&st.to_payload()).ok(), Some(st));
        }
    }
    let Ok(chain) = Chain::from_cbor(data) else {
        return;
    };
    let root = *chain.root();
    match verify(&chain, &root, T0) {
        Ok(v) => assert_eq!(v.path, vec![root.key_id()]),
        // The root can revoke itself; a malformed self-revocation is a bad signature.
        Err(ChainError::Revoked { .. }) | Err(ChainError::BadSignature { .. }) => {}
        Err(e) => panic!("the root is not vouched for: {e}"),
    }
    // Ask about the first few keys the chain names (each answer costs signature checks).
    for s in chain.statements().iter().take(2) {
        if let Ok(st) = inspect_statement(s) {
            if let Some(k) = st.subject_key {
                let _ = verify(&chain, &k, st.issued_at);
            }
        }
    }
}

fn structured(data: &[u8]) {
    let p = pool();
    let [t, who, picks @ ..] = data else {
        return;
    };
    let now = TIMES[*t as usize % TIMES.len()];
    let key = p.keys[*who as usize % p.keys.len()];
    let mut chain = Chain::new(p.keys[0]);
    let mut genuine = Vec::new();
    for &b in picks.iter().take(24) {
        let idxs: Vec<usize> = if b == 0xff {
            p.deep.clone().collect()
        } else {
            vec![b as usize % p.statements.len()]
        };
        for i in idxs {
            let (s, good) = &p.statements[i];
            chain.push(s.clone()).expect("pool statements decode");
            genuine.push(*good);
        }
    }
    if let Ok(v) = verify(&chain, &key, now) {
        check_vouch_model(&chain, &genuine, now, &v);
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((m, rest)) if m & 1 == 0 => raw(rest),
        Some((_, rest)) => structured(rest),
        None => {}
    }
});
