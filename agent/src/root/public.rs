//! Roots that only *receive* KEKs: [`PublicRoot`], an `ecdh-p256` root known by its public key
//! alone (an enrolled card or EC token that is not present, the recovery root whose private key
//! exists only as words on paper), and [`KekTarget`], either such a root or a full [`Root`].
//!
//! Wrapping a KEK to an `ecdh-p256` root needs nothing but its public key (ecdh.rs): no PIN, no
//! card. This module must never hold a private key or a KEK beyond the one call that wraps it.

use super::ecdh;
use super::memory_kek::kek_bytes;
use super::{Root, RootError, Scheme, Wrapped};
use p256::PublicKey;

/// An `ecdh-p256` root of which only the public key is here: it can wrap (import) KEKs, and
/// nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicRoot {
    public: PublicKey,
}

impl PublicRoot {
    /// A root that is this public key (the recovery root; tests).
    pub fn new(public: PublicKey) -> PublicRoot {
        PublicRoot { public }
    }

    /// The public root of a root record: its scheme and locator as the keystore keeps them.
    /// `pkcs11-ec-p256` (the `x-keyward-pub` of the locator URI) and `yubikey-p256` (the `pub`
    /// of the `yubikey:` locator) carry their public key; other schemes (`pkcs11-aes`,
    /// `pbkdf2`) have none and are `Unsupported`: wrapping under them needs the root itself.
    pub fn from_record(scheme: Scheme, locator: &str) -> Result<PublicRoot, RootError> {
        const OP: &str = "public root from record";
        let public = match scheme {
            Scheme::Pkcs11EcP256 => super::pkcs11::locator_public(locator),
            Scheme::YubiKeyP256 => super::yubikey::locator_public(locator),
            other => {
                return Err(RootError::Unsupported {
                    op: OP,
                    detail: format!(
                        "a {other} root has no public key: wrapping a KEK under it needs the root \
                         (its token and PIN)"
                    ),
                })
            }
        };
        public.map(PublicRoot::new).ok_or_else(|| {
            RootError::token(
                OP,
                format!("the {scheme} root record carries no P-256 public key"),
            )
        })
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Wrap a 32-byte KEK to this public key (scheme `ecdh-p256`): what `open_kek` of the card or
    /// token holding the private key (or the recovery key) accepts.
    pub fn import_kek(&self, kek: &[u8]) -> Result<Wrapped, RootError> {
        let kek = kek_bytes(kek, "import KEK")?;
        Ok(Wrapped {
            scheme: Scheme::EcdhP256,
            bytes: ecdh::wrap(&self.public, &kek)?,
        })
    }
}

/// Where a KEK can be wrapped to: a root this agent runs, or one known by its public key.
#[derive(Clone, Copy)]
pub enum KekTarget<'a> {
    Root(&'a dyn Root),
    Public(&'a PublicRoot),
}

impl KekTarget<'_> {
    /// [`Root::import_kek`] or [`PublicRoot::import_kek`].
    pub fn import_kek(&self, kek: &[u8]) -> Result<Wrapped, RootError> {
        match self {
            KekTarget::Root(r) => r.import_kek(kek),
            KekTarget::Public(p) => p.import_kek(kek),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root::ecdh;

    /// A public root from each record form wraps to the key that the record names: the holder of
    /// the private key (here a software scalar, as the card's) unwraps the same KEK.
    #[test]
    fn records_of_card_and_ec_token_roots_give_public_roots_that_import() {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let pub_hex = hex::encode(ecdh::sec1(&secret.public_key()));
        let records = [
            (
                Scheme::YubiKeyP256,
                format!("yubikey:serial=5437251;slot=9d;pub={pub_hex}"),
            ),
            (
                Scheme::Pkcs11EcP256,
                format!("pkcs11:token=t;object=o;id=%01;type=private?x-keyward-pub={pub_hex}"),
            ),
        ];
        let kek = [0x5au8; 32];
        for (scheme, locator) in records {
            let public = PublicRoot::from_record(scheme, &locator).expect("public root");
            assert_eq!(public.public_key(), &secret.public_key());
            let w = KekTarget::Public(&public).import_kek(&kek).expect("import");
            assert_eq!(w.scheme, Scheme::EcdhP256);
            let back = ecdh::unwrap(public.public_key(), &w.bytes, |e| {
                ecdh::software_ecdh(&secret, e)
            })
            .expect("the private key opens it");
            assert_eq!(*back, kek);
        }
        // A record without its public key, and a scheme without one, are typed errors.
        assert!(matches!(
            PublicRoot::from_record(Scheme::YubiKeyP256, "yubikey:serial=1;slot=9d"),
            Err(RootError::Token { .. })
        ));
        assert!(matches!(
            PublicRoot::from_record(Scheme::Pbkdf2, "Pbkdf2Hmac.x"),
            Err(RootError::Unsupported { .. })
        ));
        let p = PublicRoot::new(secret.public_key());
        assert!(matches!(
            p.import_kek(&[1u8; 31]),
            Err(RootError::Unsupported { .. })
        ));
    }
}
