//! `lock` on a PKCS#11 root reports a failed `C_Logout` instead of answering OK while promising
//! that the unwrapped keys were destroyed.
//!
//! SoftHSM's `C_Logout` cannot be made to fail from outside the process (it succeeds for any
//! open session, even with the token files gone), so this test finalizes the module behind the
//! root's back, in-process, through a second context on the same library: the root's sessions
//! die and its `C_Logout` answers CKR_CRYPTOKI_NOT_INITIALIZED. Its own test binary, because
//! that finalize would break any other test running in the same process.

mod common;

use cryptoki::context::Pkcs11;
use keyward_agent::root::{self, Cause, RootError, StoredRoot};
use keyward_proto::secret::Pin;
use keyward_proto::ErrorCode;

#[test]
fn pkcs11_lock_reports_a_failed_logout() {
    let module = common::require_softhsm();
    let cfg = common::pkcs11_aes_config();
    let r = root::from_config(&cfg.root).expect("PKCS#11 AES root");
    let pin = Pin::new(common::PIN);
    r.init(&pin).expect("init");
    let kek = r.generate_kek().expect("KEK");
    let opened = r.open_kek(&kek.bytes).expect("open KEK");

    // A normal lock logs out; a second one finds nobody logged in, which is fine too.
    r.lock().expect("lock");
    assert!(!r.is_unlocked());
    r.lock()
        .expect("lock when not logged in (CKR_USER_NOT_LOGGED_IN)");
    drop(opened);

    r.unlock(&pin, &StoredRoot::default()).expect("unlock");
    let opened = r.open_kek(&kek.bytes).expect("open KEK again");
    Pkcs11::new(&module)
        .expect("load SoftHSM")
        .finalize()
        .expect("C_Finalize behind the root's back");
    let err = r.lock().expect_err("lock must report the failed C_Logout");
    assert!(
        matches!(
            &err,
            RootError::Stale {
                op: "lock",
                cause: Cause::Pkcs11 {
                    call: "C_Logout",
                    ..
                },
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::TokenError);
    assert!(err.to_string().contains("C_Logout"), "{err}");
    assert!(
        !r.is_unlocked(),
        "the PIN is forgotten even when C_Logout fails"
    );
    drop(opened);

    // The module was dropped and starts afresh: the root unlocks and works again.
    r.unlock(&pin, &StoredRoot::default())
        .expect("unlock after the failure");
    r.open_kek(&kek.bytes).expect("open KEK after the failure");
    r.lock().expect("lock");
}
