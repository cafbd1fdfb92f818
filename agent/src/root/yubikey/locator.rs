//! The root record's locator for a card root: `yubikey:serial=N;slot=9d;pub=<hex SEC1>`, which
//! card, which slot, and the slot's public key (cards below firmware 5.3 cannot give a slot's
//! public key back, and wrapping a new KEK needs only that public key).
//!
//! This module only formats and parses; it must never touch a card.

use super::options::parse_slot;
use crate::root::ecdh;
use p256::PublicKey;
use std::fmt;

/// Where a card root is, as the keystore records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CardLocator {
    pub(super) serial: u32,
    pub(super) slot: u8,
    pub(super) public: PublicKey,
}

impl fmt::Display for CardLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "yubikey:serial={};slot={:02x};pub={}",
            self.serial,
            self.slot,
            hex::encode(ecdh::sec1(&self.public))
        )
    }
}

impl CardLocator {
    /// `None` unless every part is there and valid; unknown parts are ignored.
    pub(super) fn parse(s: &str) -> Option<CardLocator> {
        let rest = s.strip_prefix("yubikey:")?;
        let (mut serial, mut slot, mut public) = (None, None, None);
        for part in rest.split(';') {
            let (k, v) = part.split_once('=')?;
            match k {
                "serial" => serial = v.parse().ok(),
                "slot" => slot = parse_slot(v).ok(),
                "pub" => {
                    public = hex::decode(v)
                        .ok()
                        .and_then(|b| PublicKey::from_sec1_bytes(&b).ok())
                }
                _ => {}
            }
        }
        Some(CardLocator {
            serial: serial?,
            slot: slot?,
            public: public?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_round_trips() {
        let public = p256::SecretKey::from_slice(&[7u8; 32])
            .unwrap()
            .public_key();
        let r = CardLocator {
            serial: 5437251,
            slot: 0x9d,
            public,
        };
        let s = r.to_string();
        assert!(s.starts_with("yubikey:serial=5437251;slot=9d;pub=04"));
        assert_eq!(CardLocator::parse(&s), Some(r));
        assert_eq!(CardLocator::parse("pkcs11:token=x"), None);
        assert_eq!(CardLocator::parse("yubikey:serial=1;slot=9a;pub=04"), None);
        assert_eq!(CardLocator::parse("yubikey:serial=1;slot=9d;pub=0"), None);
    }
}
