//! Root backends: where the root key (the MEK-equivalent) lives, behind one trait.
//!
//! A root wraps and unwraps KEKs; an opened KEK ([`Kek`]) wraps, unwraps and uses DEKs. A backend
//! does this inside its hardware where it can: the PKCS#11 backend never lets KEK or non-exportable
//! DEK material into agent memory, except a KEK through [`Root::export_kek`] for the moment it is
//! wrapped under another root (ARCHITECTURE.md "Key lifecycle"). A root that is only a public key
//! ([`PublicRoot`]) can still receive KEKs. Backends must never create a root except from an
//! explicit `init`, and never hold a PIN longer than they are unlocked. `[root.env]` is applied
//! once at start-up ([`env`]), never by a backend.
//!
//! Backends are built in one place, [`from_config`]; everything above this module (hierarchy,
//! keypairs, sharing, nodes) sees only the [`Root`], [`Kek`] and optional [`TokenKeypairs`]
//! traits, [`Scheme`] and [`RootError`]. A test-only in-memory root, `MemoryRoot`, exists with
//! the `testing` feature.

pub mod device;
pub mod ecdh;
pub mod env;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub(crate) mod memory_kek;
pub mod pkcs11;
mod public;
mod scheme;
pub mod soft;
pub mod uri;
pub mod yubikey;

#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryRoot;
pub use memory_kek::ExportedKek;
pub use public::{KekTarget, PublicRoot};
pub use scheme::{Scheme, UnknownScheme};

use crate::config::{Pkcs11KeyType, RootConfig};
use keyward_proto::ops::RootKind;
use keyward_proto::secret::Pin;
use keyward_proto::ErrorCode;
use thiserror::Error;
use zeroize::Zeroizing;

/// Why a root operation failed. Each variant names the operation (`op`); a failure that came
/// from a library keeps that library's error as its source ([`Cause`]), with the call that
/// returned it. How each variant answers on the wire is [`RootError::code`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RootError {
    /// `card_retries`: what the card itself says is left before it blocks the PIN, for
    /// hardware that counts (a PIV card); `None` where the token does not say (SoftHSM, soft).
    #[error("{op}: the PIN is incorrect")]
    PinIncorrect {
        op: &'static str,
        card_retries: Option<u32>,
    },
    #[error("{op}: the token has locked the PIN")]
    PinLocked { op: &'static str },
    #[error("{op}: the root key is not on the token (it is never re-created: restore the token or its backup)")]
    RootMissing { op: &'static str },
    #[error("{op}: the token already holds a Keyward root")]
    RootExists { op: &'static str },
    #[error("{op}: the root is locked")]
    Locked { op: &'static str },
    /// The token, card or PC/SC service is not there (removed, not inserted, not running).
    #[error("{op}: the token is not available: {cause}")]
    Unavailable {
        op: &'static str,
        #[source]
        cause: Cause,
    },
    /// A session or object handle went stale (re-login, token reset): recover and retry.
    #[error("{op}: token handles are stale: {cause}")]
    Stale {
        op: &'static str,
        #[source]
        cause: Cause,
    },
    #[error("{op}: authentication failed")]
    DecryptFailed { op: &'static str },
    /// The token, card or a cryptographic library failed in a way no other variant names.
    #[error("{op}: the token failed: {cause}")]
    Token {
        op: &'static str,
        #[source]
        cause: Cause,
    },
    #[error("{op}: unsupported: {detail}")]
    Unsupported { op: &'static str, detail: String },
    #[error("configuration: {0}")]
    Config(String),
    /// More than one device would fit and the configuration names none.
    #[error("{op}: {detail}")]
    Ambiguous { op: &'static str, detail: String },
    /// The token's policy refuses to unwrap a KEK as extractable, which taking it to another
    /// root needs (`export_kek`). The root still works for everything else, and can still
    /// receive KEKs (`import_kek`).
    #[error("{op}: the root {root} refuses to unwrap a KEK as extractable (its token's policy): run this from another enrolled root (a card, the recovery root), or enroll this root before KEKs exist")]
    NotExtractable { op: &'static str, root: String },
}

/// What lies under an `Unavailable`, `Stale` or `Token` error: the library call that failed with
/// the library's own error (kept as the `source`), or what the backend saw where no library
/// error says it.
///
/// The library error's text is part of this `Display` too, because clients get an error as its
/// `Display` text alone.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Cause {
    /// A PKCS#11 call (`call`: the `C_` function) failed.
    #[error("{}", pkcs11_text(call, source))]
    Pkcs11 {
        call: &'static str,
        #[source]
        source: cryptoki::error::Error,
    },
    /// A call of the `yubikey` crate (PIV on the card) failed.
    #[error("{call}: {source}")]
    Card {
        call: &'static str,
        #[source]
        source: ::yubikey::Error,
    },
    /// A PC/SC call (to pcscd) failed.
    #[error("PC/SC {call}: {source}")]
    Pcsc {
        call: &'static str,
        #[source]
        source: pcsc::Error,
    },
    /// A cryptographic operation in agent memory (Cryppo, AES-GCM, PBKDF2) failed.
    #[error("{call}: {source}")]
    Crypto {
        call: &'static str,
        #[source]
        source: keyward_envelope::Error,
    },
    /// No library error: what the backend found (a missing attribute, a removed card, ...).
    #[error("{0}")]
    Detail(String),
}

/// `C_Logout: CryptokiNotInitialized: <the CKR's description>`, or the call and cryptoki's text.
fn pkcs11_text(call: &str, e: &cryptoki::error::Error) -> String {
    match e {
        cryptoki::error::Error::Pkcs11(rv, _) => format!("{call}: {rv:?}: {rv}"),
        other => format!("{call}: {other}"),
    }
}

impl RootError {
    /// `Token` with a [`Cause::Detail`]: the token, card or library failed in a way no library
    /// error describes.
    pub fn token(op: &'static str, detail: impl Into<String>) -> RootError {
        RootError::Token {
            op,
            cause: Cause::Detail(detail.into()),
        }
    }

    /// `Stale` with a [`Cause::Detail`]: handles went stale; recover and retry.
    pub fn stale(op: &'static str, detail: impl Into<String>) -> RootError {
        RootError::Stale {
            op,
            cause: Cause::Detail(detail.into()),
        }
    }

    /// `Unavailable` with a [`Cause::Detail`]: the token or card is not there.
    pub fn unavailable(op: &'static str, detail: impl Into<String>) -> RootError {
        RootError::Unavailable {
            op,
            cause: Cause::Detail(detail.into()),
        }
    }

    /// A `Token` error from a cryptographic operation in agent memory.
    pub fn crypto(
        op: &'static str,
        call: &'static str,
        source: keyward_envelope::Error,
    ) -> RootError {
        RootError::Token {
            op,
            cause: Cause::Crypto { call, source },
        }
    }

    /// The wire error code. Every variant is listed (no catch-all): a new variant must be
    /// given its code here.
    pub fn code(&self) -> ErrorCode {
        match self {
            RootError::PinIncorrect { .. } => ErrorCode::PinIncorrect,
            RootError::PinLocked { .. } => ErrorCode::PinLocked,
            RootError::RootMissing { .. } => ErrorCode::TokenError,
            RootError::RootExists { .. } => ErrorCode::AlreadyInitialized,
            RootError::Locked { .. } => ErrorCode::Locked,
            RootError::Unavailable { .. } => ErrorCode::TokenUnavailable,
            RootError::Stale { .. } => ErrorCode::TokenError,
            RootError::DecryptFailed { .. } => ErrorCode::DecryptFailed,
            RootError::Token { .. } => ErrorCode::TokenError,
            RootError::Unsupported { .. } => ErrorCode::InvalidArgs,
            RootError::Config(_) => ErrorCode::TokenError,
            RootError::Ambiguous { .. } => ErrorCode::Ambiguous,
            RootError::NotExtractable { .. } => ErrorCode::NotExportable,
        }
    }
}

/// Build the root backend a configuration names: the one place that knows every backend.
/// PKCS#11 backends load their module and look for the token now (a missing token is not an
/// error until it is used); the others touch no hardware here.
pub fn from_config(cfg: &RootConfig) -> Result<Box<dyn Root>, RootError> {
    Ok(match cfg {
        RootConfig::Pkcs11 {
            uri,
            env,
            key_type: Pkcs11KeyType::Aes,
            ..
        } => Box::new(pkcs11::Pkcs11AesRoot::new(uri, env)?),
        RootConfig::Pkcs11 {
            uri,
            env,
            key_type: Pkcs11KeyType::Ec,
            management_key_hex,
        } => Box::new(pkcs11::Pkcs11EcRoot::new(
            uri,
            env,
            management_key_hex.as_deref().map(Pin::new),
        )?),
        yk @ RootConfig::YubiKey { .. } => {
            Box::new(yubikey::YubiKeyRoot::new(yubikey::options(yk)?)?)
        }
        RootConfig::Soft { iterations } => Box::new(soft::SoftRoot::new(*iterations)?),
    })
}

/// Check the backend-specific values of a configuration (slot names, policies, key formats)
/// without building the backend or touching hardware.
pub fn check_config(cfg: &RootConfig) -> Result<(), RootError> {
    match cfg {
        RootConfig::Pkcs11 {
            management_key_hex, ..
        } => {
            if let Some(k) = management_key_hex {
                yubikey::parse_management_key(k)?;
            }
            Ok(())
        }
        yk @ RootConfig::YubiKey { .. } => yubikey::options(yk).map(|_| ()),
        RootConfig::Soft { .. } => Ok(()),
    }
}

/// A key wrapped under its parent, with the scheme that wrapped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    pub scheme: Scheme,
    pub bytes: Vec<u8>,
}

/// What `init` made: the record the keystore keeps about the root.
#[derive(Debug, Clone)]
pub struct RootInit {
    /// The root's scheme in the keystore (`pkcs11-aes`, `pkcs11-ec-p256`, `yubikey-p256`,
    /// `pbkdf2`).
    pub scheme: Scheme,
    /// Where the root lives (a PKCS#11 URI naming the object), or how it is derived (soft).
    pub locator: String,
    /// A value that proves a PIN or passphrase right at unlock, for roots that need one.
    pub check: Option<Vec<u8>>,
}

/// What the keystore holds about the root, handed back at unlock.
#[derive(Debug, Clone, Default)]
pub struct StoredRoot {
    pub locator: Option<String>,
    pub check: Option<Vec<u8>>,
}

/// A root backend.
pub trait Root: Send + Sync {
    fn kind(&self) -> RootKind;
    /// Whether this backend's key operations take microseconds (in-process crypto, a software
    /// PKCS#11 token such as SoftHSM), so that a request may run on the socket's own task
    /// instead of a blocking thread (`server.rs`, ARCHITECTURE.md "Where a request runs").
    /// Cards and hardware tokens, which can take 100 ms and more, answer false: the default.
    fn fast(&self) -> bool {
        false
    }
    /// The scheme of the root record `init` makes (the same as `RootInit::scheme`).
    fn scheme(&self) -> Scheme;
    /// A description for people: token label, serial.
    fn describe(&self) -> String;
    /// The serial of the token or card this root is on (PKCS#11 `C_GetTokenInfo`
    /// serialNumber, trimmed, read without a PIN; a card's serial), for the device row and to
    /// tell which device of a shared keystore this agent is before it unlocks (the per-device
    /// PIN counter, `Hierarchy::pin_device`). `None` (the default): the backend has none
    /// (soft), or the token cannot be reached.
    fn token_serial(&self) -> Option<String> {
        None
    }
    /// Create the root. Refuses when one exists already. Leaves the root unlocked.
    fn init(&self, pin: &Pin) -> Result<RootInit, RootError>;
    /// Check the PIN and find the root. Never creates a root.
    fn unlock(&self, pin: &Pin, stored: &StoredRoot) -> Result<(), RootError>;
    /// Forget the PIN and destroy every unwrapped key the backend holds.
    fn lock(&self) -> Result<(), RootError>;
    fn is_unlocked(&self) -> bool;
    /// After a `Stale` error: reconnect, log in again with the PIN given at unlock, find the root.
    fn recover(&self) -> Result<(), RootError>;
    /// Make a new KEK and return it wrapped under the root.
    fn generate_kek(&self) -> Result<Wrapped, RootError>;
    /// Unwrap a KEK for use (inside the token where possible).
    fn open_kek(&self, wrapped: &[u8]) -> Result<Box<dyn Kek>, RootError>;
    /// The plaintext of a KEK wrapped under this root, to wrap it under another root: only for
    /// the administrative operations of ARCHITECTURE.md "Key lifecycle: when a KEK leaves the
    /// token" (root add, kek rotate, root rotate, recovery, device approve), never for a key
    /// operation. Token roots unwrap a second, extractable copy into a session object, read it
    /// and destroy the object on every path; a token whose policy refuses that answers
    /// [`RootError::NotExtractable`]. Needs the root unlocked.
    fn export_kek(&self, wrapped: &[u8]) -> Result<ExportedKek, RootError>;
    /// Wrap KEK material made elsewhere (32 bytes, from another root's [`Root::export_kek`])
    /// under this root: exactly the wrapped form this root's `open_kek` accepts. `ecdh-p256`
    /// roots need only their public key (no PIN once the key is known; see [`PublicRoot`] for
    /// a root that is nothing but a public key).
    fn import_kek(&self, kek: &[u8]) -> Result<Wrapped, RootError>;
    /// Keypairs whose private key stays on the root's token (`keypair create --on-token`), for
    /// backends that keep them; `None` (the default) for the others.
    fn token_keypairs(&self) -> Option<&dyn TokenKeypairs> {
        None
    }
    /// Where this backend can keep a device's key (`crate::devices`) on its token, generated
    /// there and never leaving it; `None` (the default): the device key is a scalar wrapped
    /// under the root.
    fn device_keys(&self) -> Option<&dyn TokenDeviceKeys> {
        None
    }
    /// Destroy the root object itself (`root.rotate --destroy-old`, only after the rotation
    /// committed and nothing in the keystore is wrapped under it any more). Needs the root
    /// unlocked. The default: this backend cannot (a card's key is not deleted by keyward).
    fn destroy_root(&self) -> Result<RootDestroyed, RootError> {
        Ok(RootDestroyed::Cannot(
            "this kind of root cannot be destroyed by keyward: reset or wipe the device yourself",
        ))
    }
}

/// What [`Root::destroy_root`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootDestroyed {
    /// The objects destroyed, described for people (token and labels; no key material).
    Destroyed(String),
    /// A root that is not an object anywhere (a passphrase root): nothing to destroy.
    Nothing,
    /// The backend cannot destroy it; why.
    Cannot(&'static str),
    /// Destroying it failed (the rotation stands; destroy it by hand): the error.
    Failed(String),
}

impl dyn Root + '_ {
    /// [`Root::token_keypairs`], or `Unsupported` (`invalid_args` on the wire) naming `op`.
    pub fn require_token_keypairs(
        &self,
        op: &'static str,
    ) -> Result<&dyn TokenKeypairs, RootError> {
        self.token_keypairs().ok_or_else(|| RootError::Unsupported {
            op,
            detail: format!(
                "a {} root keeps no keypairs on a token; PKCS#11 roots do",
                self.kind()
            ),
        })
    }
}

/// The optional capability of keeping P-256 keypairs on the token: the private key is generated
/// there, signs there and never leaves (no HPKE: opening shares needs the scalar in memory).
pub trait TokenKeypairs: Send + Sync {
    /// Generate a keypair labelled `label`; its record keeps the returned locator and public key.
    fn generate(&self, label: &str) -> Result<TokenKeypair, RootError>;
    /// ECDSA over a SHA-256 digest with a token keypair; returns raw r‖s.
    fn sign(&self, locator: &str, digest: &[u8; 32]) -> Result<Vec<u8>, RootError>;
    /// Destroy a token keypair's objects (private and public key).
    fn delete(&self, locator: &str) -> Result<(), RootError>;
}

/// The optional capability of keeping a device's key on the root's token (`crate::devices`):
/// a P-256 key pair generated inside the token (private key TOKEN, PRIVATE, SENSITIVE,
/// EXTRACTABLE=false, SIGN and DERIVE), named by the device id, found again by its locator
/// after a restart. Its ECDH (the device's `ecdh-p256` wraps) and its signatures (device rows)
/// run in the token. Needs the root unlocked.
pub trait TokenDeviceKeys: Send + Sync {
    /// Generate the device key of device `id`; the row keeps the returned locator and key.
    fn generate_device_key(&self, id: &uuid::Uuid) -> Result<TokenKeypair, RootError>;
    /// ECDH with the device key at `locator` and the SEC1 point `peer`: the shared x coordinate.
    fn device_ecdh(&self, locator: &str, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, RootError>;
    /// ECDSA over a SHA-256 digest with the device key at `locator`; returns raw r‖s.
    fn device_sign(&self, locator: &str, digest: &[u8; 32]) -> Result<Vec<u8>, RootError>;
}

/// A keypair generated inside a root's token.
#[derive(Debug, Clone)]
pub struct TokenKeypair {
    /// The scheme its record carries ([`Scheme::is_token_keypair`]).
    pub scheme: Scheme,
    /// Where the private key is (a PKCS#11 URI naming the object).
    pub locator: String,
    pub public: p256::PublicKey,
}

/// An unwrapped KEK. Dropping it destroys the unwrapped copy.
pub trait Kek: Send + Sync {
    /// Make a new AES-256 DEK and return it wrapped under this KEK.
    fn generate_dek(&self) -> Result<Wrapped, RootError>;
    /// AES-256-GCM with the wrapped DEK: returns ciphertext ‖ 16-byte tag.
    fn seal(&self, dek: &[u8], iv: &[u8; 12], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, RootError>;
    /// AES-256-GCM open of ciphertext ‖ tag with the wrapped DEK.
    fn open(
        &self,
        dek: &[u8],
        iv: &[u8; 12],
        aad: &[u8],
        ct_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RootError>;
    /// The plaintext of a 32-byte secret wrapped under this KEK: an exportable DEK (the caller
    /// checks), or a keypair's private scalar for the moment it is used.
    fn export_dek(&self, dek: &[u8]) -> Result<Zeroizing<Vec<u8>>, RootError>;
    /// Wrap a 32-byte secret made elsewhere (a keypair's private scalar, a DEK received in a
    /// share) under this KEK, with the same scheme as [`Kek::generate_dek`].
    fn wrap_secret(&self, secret: &[u8]) -> Result<Wrapped, RootError>;
}
