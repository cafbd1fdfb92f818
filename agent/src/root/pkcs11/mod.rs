//! The PKCS#11 roots: a root key inside a token (HSM, smartcard, SoftHSM), reached through its
//! module and selected by an RFC 7512 URI.
//!
//! Two root types share one [`conn::Connection`] (module, slot, login, sessions, recovery):
//! - [`Pkcs11AesRoot`] (`key_type = "aes"`, scheme `pkcs11-aes`): an AES-256 root that wraps KEKs
//!   with CKM_AES_KEY_WRAP_PAD (`aes-kwp`); KEKs ([`kek`]) and DEKs stay inside the token;
//! - [`Pkcs11EcRoot`] (`key_type = "ec"`, scheme `pkcs11-ec-p256`): a P-256 key pair for tokens
//!   without AES key wrap; KEKs are `ecdh-p256` and live in agent memory while unlocked.
//!
//! A module is loaded and initialized once per process ([`module`]): several roots on one module
//! (a backup token, a second card) are several `Connection`s on it, each told apart by its URI,
//! and a re-initialization by one makes the others' sessions `Stale` (re-login), never wrong.
//! Several root objects on one *token* (two labels) share that token's sessions and its one
//! login ([`conn`]): locking one never logs the other out.
//! Both keep token keypairs ([`keypair`], `keypair create --on-token`) and the device key
//! ([`device_key`]). How CKR values become
//! root errors is [`error`]. This module must never create a root anywhere but in `init`, and
//! never keep the PIN after `lock`.

mod aes;
mod conn;
mod device_key;
mod ec;
mod error;
mod kek;
mod keypair;
mod module;

pub use aes::Pkcs11AesRoot;
pub(crate) use ec::locator_public;
pub use ec::Pkcs11EcRoot;

/// Default label of the root object when the URI names none.
pub const DEFAULT_ROOT_LABEL: &str = "keyward-root";
