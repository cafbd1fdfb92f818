//! The YubiKey root: a P-256 key in a PIV slot of a YubiKey (or any PIV card the `yubikey` crate
//! can open), scheme `yubikey-p256` for the root and `ecdh-p256` for KEKs (see
//! [`crate::root::ecdh`]).
//!
//! `init` generates the key on the card (slot 9d or a retired slot 82..95) with the configured PIN
//! and touch policies ([`options`]), and the root record keeps the card's serial, the slot and the
//! public key ([`locator`]), so `kek.create` does not touch the card. Opening a KEK does ECDH on
//! the card (`piv::decrypt_data`); the KEK then lives in agent memory (`MemoryKek`, zeroized,
//! mlocked) while the root is unlocked ([`root`]).
//!
//! Sharing: the card is opened for each card operation and dropped afterwards (the `yubikey` crate
//! resets the card on drop, which un-verifies the PIN), so the agent never holds the PC/SC handle
//! and other programs (ssh with ykcs11, gpg) can use the card in between. Each open needs
//! `verify_pin` again, so the PIN is held in a zeroizing `Pin` while unlocked, as the PKCS#11
//! backend does. Card access is serialised inside the agent.
//!
//! Removal: every use of an opened KEK first asks pcscd (no APDU, [`presence`]) whether the card
//! is still in its reader and was not removed and reinserted since the last contact. If it is gone
//! the backend forgets the PIN and wipes every KEK it handed out, and reports `Unavailable`
//! (`token_unavailable`); once the card is back the root is locked and needs the PIN again.
//!
//! This module must never change the card's PIN, PUK or management key, nor keep the PIN after
//! `lock` or a card removal.

mod locator;
pub mod options;
mod presence;
mod root;

pub use options::{
    options, parse_management_key, parse_pin_policy, parse_slot, parse_touch_policy,
    YubiKeyOptions, DEFAULT_SLOT,
};
pub use root::YubiKeyRoot;

/// The public key a card root's record (its `yubikey:` locator) carries.
pub(crate) fn locator_public(locator: &str) -> Option<p256::PublicKey> {
    locator::CardLocator::parse(locator).map(|l| l.public)
}
