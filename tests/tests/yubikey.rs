//! End-to-end tests of the `ecdh-p256` roots: the YubiKey (PIV) backend and EC roots through
//! PKCS#11 on the virtual PIV card of `vcard-setup.sh` (through the real pcscd), and EC roots on
//! SoftHSM.
//!
//! Card tests have `yubikey` in their names and need `./vcard-setup.sh start` first; pcscd has
//! one socket and each test resets the one card, so run them one at a time:
//! `cargo test -p keyward-tests yubikey -- --test-threads=1`. The parallel run skips them
//! (`cargo test --workspace -- --skip yubikey`) and runs the SoftHSM EC tests (`pkcs11_ec_*`).

#[path = "yubikey/card.rs"]
mod card;
#[path = "yubikey/several.rs"]
mod several;
#[path = "yubikey/softhsm_ec.rs"]
mod softhsm_ec;
#[path = "yubikey/ykcs11.rs"]
mod ykcs11;
