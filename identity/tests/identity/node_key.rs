use keyward_identity::{derive_node_key, LocalKey, NodeKeyError};

fn secret() -> [u8; 32] {
    core::array::from_fn(|i| i as u8)
}

#[test]
fn derivation_is_deterministic_and_matches_independent_computation() {
    let a = derive_node_key(&secret(), "cluster-a/node-1").unwrap();
    let b = derive_node_key(&secret(), "cluster-a/node-1").unwrap();
    assert_eq!(a.to_bytes(), b.to_bytes());
    // Expected values computed independently (Python hmac/hashlib HKDF,
    // salt = "", info = "keyward node v1" || path || 0x00).
    assert_eq!(
        hex::encode(a.to_bytes()),
        "a8b651dd952752421c2835db7da1b2ac31fdd17547cd5ad01e5b526ecbfff4a4"
    );
    let c = derive_node_key(&secret(), "cluster-a/node-2").unwrap();
    assert_eq!(
        hex::encode(c.to_bytes()),
        "f78def5221bb5996c9b6cddc3bcb555c6f2dace8dfbb6dead2f17e6d3ae6c7c2"
    );
    let mut other = secret();
    other[0] ^= 1;
    assert_ne!(
        derive_node_key(&other, "cluster-a/node-1")
            .unwrap()
            .to_bytes(),
        a.to_bytes()
    );
    // Usable as a signing key.
    let k = LocalKey::from(a);
    assert!(k.public_key().to_did_key().starts_with("did:key:zDn"));
}

#[test]
fn invalid_paths_are_refused() {
    assert_eq!(
        derive_node_key(&secret(), "").unwrap_err(),
        NodeKeyError::InvalidPath
    );
    assert_eq!(
        derive_node_key(&secret(), "a\nb").unwrap_err(),
        NodeKeyError::InvalidPath
    );
    assert_eq!(
        derive_node_key(&secret(), &"x".repeat(256)).unwrap_err(),
        NodeKeyError::InvalidPath
    );
    assert!(derive_node_key(&secret(), &"x".repeat(255)).is_ok());
}
