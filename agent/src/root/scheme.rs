//! The names of wrapping and root schemes, as the keystore records them in each key's `scheme`.
//!
//! One enum for every scheme string the agent writes, so code compares [`Scheme`] values rather
//! than strings, and a string read back from the keystore is parsed once ([`Scheme::parse`]) into
//! a known scheme or a typed error. This module must never change an existing string: keystores
//! on disk hold them.

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// A wrapping scheme (how a key's `wrapped` bytes were made) or, for a root record, the kind of
/// root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// AES key wrap with padding (RFC 5649): KEKs under a PKCS#11 AES root, and DEKs, keypair
    /// scalars and secrets under every KEK (CKM_AES_KEY_WRAP_PAD in a token, `aes-kw` in memory).
    AesKwp,
    /// A KEK wrapped to a P-256 root public key (ECDH + HKDF + RFC 3394; see `root::ecdh`).
    EcdhP256,
    /// The soft root (a passphrase through PBKDF2), and KEKs under it (Cryppo `Aes256Gcm` strings
    /// carrying the PBKDF2 derivation).
    Pbkdf2,
    /// Root record: an AES-256 key on a PKCS#11 token.
    Pkcs11Aes,
    /// Root record: a P-256 key pair on a PKCS#11 token.
    Pkcs11EcP256,
    /// Root record: a P-256 key in a YubiKey PIV slot.
    YubiKeyP256,
    /// A keypair whose private key is a token object (nothing wrapped; the record's locator
    /// names the object).
    Pkcs11Token,
    /// An RSA keypair: its PEM under AES-256-GCM with a KEK-wrapped DEK (`rsa_keys`).
    RsaPemGcm,
    /// Root record of the in-memory test root (`root::memory`); never written by keywardd.
    #[cfg(any(test, feature = "testing"))]
    Memory,
}

/// A scheme string that names no scheme this agent knows.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown key scheme `{0}`")]
pub struct UnknownScheme(pub String);

impl Scheme {
    /// Every scheme, for tests and listings.
    pub const ALL: &'static [Scheme] = &[
        Scheme::AesKwp,
        Scheme::EcdhP256,
        Scheme::Pbkdf2,
        Scheme::Pkcs11Aes,
        Scheme::Pkcs11EcP256,
        Scheme::YubiKeyP256,
        Scheme::Pkcs11Token,
        Scheme::RsaPemGcm,
        #[cfg(any(test, feature = "testing"))]
        Scheme::Memory,
    ];

    /// The keystore's string.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::AesKwp => "aes-kwp",
            Scheme::EcdhP256 => "ecdh-p256",
            Scheme::Pbkdf2 => "pbkdf2",
            Scheme::Pkcs11Aes => "pkcs11-aes",
            Scheme::Pkcs11EcP256 => "pkcs11-ec-p256",
            Scheme::YubiKeyP256 => "yubikey-p256",
            Scheme::Pkcs11Token => "pkcs11-token",
            Scheme::RsaPemGcm => "rsa-pem-gcm",
            #[cfg(any(test, feature = "testing"))]
            Scheme::Memory => "memory-aes",
        }
    }

    /// The scheme a keystore string names; unknown strings are refused.
    pub fn parse(s: &str) -> Result<Scheme, UnknownScheme> {
        Scheme::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownScheme(s.to_string()))
    }

    /// Keypairs whose private key lives on a token (signs there, is never unwrapped).
    pub fn is_token_keypair(self) -> bool {
        self == Scheme::Pkcs11Token
    }
}

impl FromStr for Scheme {
    type Err = UnknownScheme;

    fn from_str(s: &str) -> Result<Scheme, UnknownScheme> {
        Scheme::parse(s)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_stay_as_stored() {
        for s in Scheme::ALL {
            assert_eq!(Scheme::parse(s.as_str()), Ok(*s));
            assert_eq!(s.as_str().parse::<Scheme>(), Ok(*s));
        }
        // The strings existing keystores hold.
        let stored = [
            "aes-kwp",
            "ecdh-p256",
            "pbkdf2",
            "pkcs11-aes",
            "pkcs11-ec-p256",
            "yubikey-p256",
            "pkcs11-token",
            "rsa-pem-gcm",
        ];
        for s in stored {
            assert_eq!(Scheme::parse(s).map(Scheme::as_str), Ok(s));
        }
        assert_eq!(Scheme::RsaPemGcm.as_str(), crate::rsa_keys::RSA_SCHEME);
        assert_eq!(Scheme::parse("aes-kw"), Err(UnknownScheme("aes-kw".into())));
        assert!(Scheme::parse("").is_err());
        assert!(Scheme::Pkcs11Token.is_token_keypair());
        assert!(!Scheme::AesKwp.is_token_keypair());
    }
}
