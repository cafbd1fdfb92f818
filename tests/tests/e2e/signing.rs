//! Signing through the socket with keys the agent keeps cached (`agent/src/key_cache.rs`) and
//! token keypairs whose object handles it keeps (`root/pkcs11/keypair.rs`): `sign.digest` (what
//! the PKCS#11 module sends for each C_Sign) and `sign` stop at once for a revoked or narrowed
//! key and after `lock`, although the key is cached; a token keypair finds its object again
//! after `lock`, is `token_unavailable` while its token is gone, and signs again once it is back
//! (the next signature's recovery re-initializes the module).

use keyward_tests::keyward_client::BlockingClient;
use keyward_tests::keyward_proto::ops::{
    op, KeyLimitsArgs, KeypairCreateArgs, SignDigestArgs, Usage,
};
use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::{expect_code, pin, RootKind, TestEnv};

fn keypair(c: &BlockingClient, on_token: bool) -> String {
    let args = KeypairCreateArgs {
        on_token,
        ..Default::default()
    };
    c.run(|c| c.keypair_create(&args)).expect("keypair").id
}

fn sign_digest(
    c: &BlockingClient,
    key: &str,
    digest: &[u8; 32],
) -> Result<Vec<u8>, keyward_tests::keyward_client::ClientError> {
    let args = SignDigestArgs {
        key: key.to_string(),
        digest: serde_bytes::ByteBuf::from(digest.to_vec()),
    };
    c.run(|c| c.call::<op::SignDigest>(&args))
        .map(|r| r.signature.into_vec())
}

/// `sign.digest` signs, and the signature verifies with the keypair's public key.
#[track_caller]
fn signs_and_verifies(c: &BlockingClient, key: &str) {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let digest = [0x3c; 32];
    let sig = sign_digest(c, key, &digest).expect("sign.digest");
    let info = c.run(|c| c.keypair_show(key)).expect("keypair.show");
    let pk = info.public_key.expect("public key");
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&pk).expect("P-256 key");
    let sig = p256::ecdsa::Signature::from_slice(&sig).expect("r‖s");
    vk.verify_prehash(&digest, &sig)
        .expect("the signature verifies");
}

#[test]
fn cached_keys_stop_signing_when_revoked_narrowed_or_locked() {
    let env = TestEnv::start(RootKind::Soft);
    env.init_with_keys(false, b"x");
    let c = env.client();
    let revoked = keypair(&c, false);
    let narrowed = keypair(&c, false);
    for k in [&revoked, &narrowed] {
        signs_and_verifies(&c, k);
        c.run(|c| c.sign(k, b"m", false)).expect("sign");
    }
    c.run(|c| c.keypair_revoke(&revoked)).expect("revoke");
    expect_code(sign_digest(&c, &revoked, &[1; 32]), ErrorCode::KeyInactive);
    expect_code(
        c.run(|c| c.sign(&revoked, b"m", false)),
        ErrorCode::KeyInactive,
    );
    let args = KeyLimitsArgs {
        id: narrowed.clone(),
        usage: Some(vec![Usage::Derive]),
        ..Default::default()
    };
    c.run(|c| c.key_limits(&args)).expect("narrow");
    expect_code(sign_digest(&c, &narrowed, &[1; 32]), ErrorCode::UsageDenied);
    expect_code(
        c.run(|c| c.sign(&narrowed, b"m", false)),
        ErrorCode::UsageDenied,
    );

    let other = keypair(&c, false);
    signs_and_verifies(&c, &other);
    c.run(|c| c.lock()).expect("lock");
    expect_code(sign_digest(&c, &other, &[1; 32]), ErrorCode::Locked);
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    signs_and_verifies(&c, &other);
}

#[test]
fn token_keypair_is_unavailable_while_its_token_is_gone_and_signs_again_once_back() {
    let env = TestEnv::start(RootKind::Pkcs11);
    env.init_with_keys(false, b"x");
    let c = env.client();
    let k = keypair(&c, true);
    for _ in 0..3 {
        signs_and_verifies(&c, &k);
    }
    // The kept object handle goes with the login: after lock and unlock it is found again.
    c.run(|c| c.lock()).expect("lock");
    expect_code(sign_digest(&c, &k, &[1; 32]), ErrorCode::Locked);
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
    signs_and_verifies(&c, &k);
    // The token's files vanish: a typed token error, never a signature.
    let tokens = env.dir().join("tokens");
    let away = env.dir().join("tokens.away");
    std::fs::rename(&tokens, &away).expect("move the token files away");
    let e = sign_digest(&c, &k, &[1; 32]).expect_err("signed with the token gone");
    assert_eq!(e.code(), Some(ErrorCode::TokenUnavailable), "{e}");
    // They come back: the module is re-initialized (new sessions, so new handles) and the key
    // signs again.
    std::fs::rename(&away, &tokens).expect("restore the token files");
    c.run(|c| c.unlock(pin(env.pin())))
        .expect("unlock after the token returned");
    signs_and_verifies(&c, &k);
    signs_and_verifies(&c, &k);
}
