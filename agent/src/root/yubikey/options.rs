//! What the configuration says about the card: which card, which slot, the PIN and touch
//! policies `init` sets, the management key; and the parsing and checking of those values.
//!
//! This module only reads configuration values; it must never touch a card.

use crate::config::RootConfig;
use crate::root::RootError;
use yubikey::{PinPolicy, TouchPolicy};
use zeroize::Zeroizing;

/// The default slot: 9d, "Key Management" (ECDH is what it is for).
pub const DEFAULT_SLOT: u8 = 0x9d;

/// What the config says about the card.
#[derive(Clone)]
pub struct YubiKeyOptions {
    /// Which card (its serial); `None`: the only one present (at init), then the recorded one.
    pub serial: Option<u32>,
    /// 0x9d or a retired slot 0x82..=0x95.
    pub slot: u8,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    /// The 3DES management key for `init` (key generation); `None`: the factory default.
    pub management_key: Option<Zeroizing<[u8; 24]>>,
}

impl Default for YubiKeyOptions {
    fn default() -> Self {
        YubiKeyOptions {
            serial: None,
            slot: DEFAULT_SLOT,
            pin_policy: PinPolicy::Once,
            touch_policy: TouchPolicy::Cached,
            management_key: None,
        }
    }
}

/// Parse `9d` or `82`..`95`.
pub fn parse_slot(s: &str) -> Result<u8, RootError> {
    let bad = || {
        RootError::Config(format!(
            "yubikey slot `{s}`: use 9d or a retired slot 82..95"
        ))
    };
    let v = u8::from_str_radix(s.trim(), 16).map_err(|_| bad())?;
    if v == 0x9d || (0x82..=0x95).contains(&v) {
        Ok(v)
    } else {
        Err(bad())
    }
}

/// Parse a policy name from the config.
pub fn parse_pin_policy(s: &str) -> Result<PinPolicy, RootError> {
    match s {
        "default" => Ok(PinPolicy::Default),
        "never" => Ok(PinPolicy::Never),
        "once" => Ok(PinPolicy::Once),
        "always" => Ok(PinPolicy::Always),
        _ => Err(RootError::Config(format!(
            "yubikey pin_policy `{s}`: use once, always, never or default"
        ))),
    }
}

pub fn parse_touch_policy(s: &str) -> Result<TouchPolicy, RootError> {
    match s {
        "default" => Ok(TouchPolicy::Default),
        "never" => Ok(TouchPolicy::Never),
        "always" => Ok(TouchPolicy::Always),
        "cached" => Ok(TouchPolicy::Cached),
        _ => Err(RootError::Config(format!(
            "yubikey touch_policy `{s}`: use cached, always, never or default"
        ))),
    }
}

/// Parse a 24-byte 3DES management key given as 48 hex digits.
pub fn parse_management_key(hex_key: &str) -> Result<Zeroizing<[u8; 24]>, RootError> {
    let bad = || RootError::Config("yubikey management_key_hex: need 48 hex digits".into());
    let mut out = Zeroizing::new([0u8; 24]);
    hex::decode_to_slice(hex_key.trim(), out.as_mut()).map_err(|_| bad())?;
    Ok(out)
}

/// The backend options from a `kind = "yubikey"` config (checked).
pub fn options(cfg: &RootConfig) -> Result<YubiKeyOptions, RootError> {
    match cfg {
        RootConfig::YubiKey {
            serial,
            slot,
            pin_policy,
            touch_policy,
            management_key_hex,
        } => Ok(YubiKeyOptions {
            serial: *serial,
            slot: parse_slot(slot)?,
            pin_policy: parse_pin_policy(pin_policy)?,
            touch_policy: parse_touch_policy(touch_policy)?,
            management_key: management_key_hex
                .as_deref()
                .map(parse_management_key)
                .transpose()?,
        }),
        _ => Err(RootError::Config("not a yubikey root".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_parse() {
        assert_eq!(parse_slot("9d").unwrap(), 0x9d);
        assert_eq!(parse_slot("82").unwrap(), 0x82);
        assert_eq!(parse_slot("95").unwrap(), 0x95);
        assert!(parse_slot("9a").is_err());
        assert!(parse_slot("96").is_err());
        assert!(parse_pin_policy("sometimes").is_err());
        assert_eq!(parse_touch_policy("cached").unwrap(), TouchPolicy::Cached);
        let k = parse_management_key("010203040506070801020304050607080102030405060708").unwrap();
        assert_eq!(k[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(parse_management_key("0102").is_err());
        assert!(parse_management_key(&"zz".repeat(24)).is_err());
        assert!(parse_management_key(&"01".repeat(25)).is_err());
    }
}
