//! The signed agent authorization policy (`identity/src/authz.rs`): `verify_policy` on any
//! bytes, and `AgentPolicy::check` on whatever verifies.
//!
//! Invariants checked (a violation is a crash):
//! - nothing panics, whatever the bytes;
//! - a policy that verifies lists each key once, with sorted, unique capabilities;
//! - `check` says yes only for a listed, unrevoked, unexpired key that has the capability, and
//!   its refusals name the reason that holds.
#![no_main]

use keyward_identity::authz::{verify_policy, AuthzError, Capability};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = verify_policy(data, None) else {
        return;
    };
    for (i, a) in p.agents.iter().enumerate() {
        assert!(!p.agents[i + 1..].iter().any(|b| b.key == a.key), "a key listed twice");
        assert!(a.caps.windows(2).all(|w| w[0] < w[1]), "caps not sorted and unique");
        for now in [0, a.added, a.expires.unwrap_or(0), u64::MAX] {
            for cap in Capability::ALL {
                match p.check(&a.key, cap, now) {
                    Ok(_) => {
                        assert!(a.revoked.is_none());
                        assert!(a.expires.is_none_or(|e| now < e));
                        assert!(a.caps.contains(&cap));
                    }
                    Err(AuthzError::Revoked { .. }) => assert!(a.revoked.is_some()),
                    Err(AuthzError::Expired { .. }) => assert!(a.expires.is_some()),
                    Err(AuthzError::MissingCapability { .. }) => assert!(!a.caps.contains(&cap)),
                    Err(e) => panic!("unexpected refusal for a listed key: {e}"),
                }
            }
        }
    }
});
