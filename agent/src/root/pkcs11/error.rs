//! How a PKCS#11 failure becomes a [`RootError`]: the CKR value decides the kind (wrong PIN,
//! stale handles, token gone, anything else), and the cryptoki error stays as the source with
//! the `C_` function that returned it.
//!
//! This module only classifies; it must never retry, log in or touch a session.

use crate::root::{Cause, RootError};
use cryptoki::error::{Error as CkError, RvError};

/// Map a cryptoki error from `call` (the `C_` function) to a root error for `op`.
pub(super) fn ck(op: &'static str, call: &'static str) -> impl Fn(CkError) -> RootError {
    move |source| {
        let rv = match &source {
            CkError::Pkcs11(rv, _) => Some(*rv),
            _ => None,
        };
        let cause = Cause::Pkcs11 { call, source };
        match rv {
            Some(RvError::PinIncorrect) => RootError::PinIncorrect {
                op,
                card_retries: None,
            },
            Some(RvError::PinLocked) => RootError::PinLocked { op },
            Some(
                RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::WrappingKeyHandleInvalid
                | RvError::UnwrappingKeyHandleInvalid,
            ) => RootError::Stale { op, cause },
            Some(RvError::DeviceRemoved | RvError::TokenNotPresent | RvError::DeviceError) => {
                RootError::Unavailable { op, cause }
            }
            _ => RootError::Token { op, cause },
        }
    }
}

/// What `C_Logout` answered, for `lock`: not being logged in is what `lock` wants anyway.
pub(super) fn logout_result(r: Result<(), CkError>) -> Result<(), RootError> {
    match r {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => Ok(()),
        Err(e) => Err(ck("lock", "C_Logout")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;
    use std::error::Error as _;

    #[test]
    fn ckr_values_choose_the_kind_and_keep_the_source() {
        let e = ck("unlock", "C_Login")(CkError::Pkcs11(RvError::PinIncorrect, Function::Login));
        assert!(matches!(
            e,
            RootError::PinIncorrect {
                card_retries: None,
                ..
            }
        ));
        let e = ck("encrypt", "C_Encrypt")(CkError::Pkcs11(
            RvError::SessionHandleInvalid,
            Function::Encrypt,
        ));
        assert!(matches!(
            &e,
            RootError::Stale {
                cause: Cause::Pkcs11 {
                    call: "C_Encrypt",
                    ..
                },
                ..
            }
        ));
        // RootError -> Cause -> the cryptoki error itself.
        let source = e
            .source()
            .and_then(|c| c.source())
            .and_then(|s| s.downcast_ref::<CkError>());
        assert!(matches!(
            source,
            Some(CkError::Pkcs11(
                RvError::SessionHandleInvalid,
                Function::Encrypt
            ))
        ));
        let e = ck("x", "C_OpenSession")(CkError::Pkcs11(
            RvError::DeviceRemoved,
            Function::OpenSession,
        ));
        assert!(matches!(e, RootError::Unavailable { .. }));
        let e = ck("x", "C_GenerateKey")(CkError::Pkcs11(
            RvError::GeneralError,
            Function::GenerateKey,
        ));
        assert!(matches!(e, RootError::Token { .. }));
    }

    #[test]
    fn logout_not_logged_in_is_success_other_failures_are_reported() {
        assert!(logout_result(Ok(())).is_ok());
        assert!(logout_result(Err(CkError::Pkcs11(
            RvError::UserNotLoggedIn,
            Function::Logout
        )))
        .is_ok());
        let e = logout_result(Err(CkError::Pkcs11(
            RvError::GeneralError,
            Function::Logout,
        )));
        assert!(matches!(
            e,
            Err(RootError::Token {
                op: "lock",
                cause: Cause::Pkcs11 {
                    call: "C_Logout",
                    ..
                }
            })
        ));
        assert!(matches!(
            logout_result(Err(CkError::Pkcs11(
                RvError::DeviceRemoved,
                Function::Logout
            ))),
            Err(RootError::Unavailable { .. })
        ));
    }
}
