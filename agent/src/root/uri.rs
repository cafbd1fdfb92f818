//! PKCS#11 URIs (RFC 7512): which module, which token, which object.
//!
//! Only the parts Keyward uses are interpreted (`token`, `manufacturer`, `serial`, `model`,
//! `slot-id`, `object`, `id`; `module-path`, `module-name`); others are kept and ignored, as the
//! RFC asks. A `pin-value` is refused: PINs never live in URIs or configs here.

use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UriError {
    #[error("a PKCS#11 URI starts with `pkcs11:`")]
    Scheme,
    #[error("bad percent-encoding in `{0}`")]
    Percent(String),
    #[error("attribute `{0}` has no `=`")]
    NoValue(String),
    #[error("attribute `{0}` appears twice")]
    Duplicate(String),
    #[error("`pin-value` is not accepted: give the PIN at unlock")]
    PinValue,
    #[error("`slot-id` is not a number")]
    SlotId,
}

/// A parsed PKCS#11 URI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub path: BTreeMap<String, Vec<u8>>,
    pub query: BTreeMap<String, Vec<u8>>,
}

fn decode(s: &str) -> Result<Vec<u8>, UriError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| UriError::Percent(s.into()))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UriError::Percent(s.into()))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn attrs(part: &str, sep: char) -> Result<BTreeMap<String, Vec<u8>>, UriError> {
    let mut m = BTreeMap::new();
    for a in part.split(sep).filter(|a| !a.is_empty()) {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| UriError::NoValue(a.into()))?;
        if m.insert(k.to_string(), decode(v)?).is_some() {
            return Err(UriError::Duplicate(k.into()));
        }
    }
    Ok(m)
}

impl Pkcs11Uri {
    pub fn parse(s: &str) -> Result<Self, UriError> {
        let rest = s.strip_prefix("pkcs11:").ok_or(UriError::Scheme)?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let uri = Pkcs11Uri {
            path: attrs(path, ';')?,
            query: attrs(query, '&')?,
        };
        if uri.query.contains_key("pin-value") {
            return Err(UriError::PinValue);
        }
        if let Some(v) = uri.path.get("slot-id") {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(UriError::SlotId)?;
        }
        Ok(uri)
    }

    fn text(map: &BTreeMap<String, Vec<u8>>, k: &str) -> Option<String> {
        map.get(k).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn token(&self) -> Option<String> {
        Self::text(&self.path, "token")
    }
    pub fn manufacturer(&self) -> Option<String> {
        Self::text(&self.path, "manufacturer")
    }
    pub fn serial(&self) -> Option<String> {
        Self::text(&self.path, "serial")
    }
    pub fn model(&self) -> Option<String> {
        Self::text(&self.path, "model")
    }
    pub fn slot_id(&self) -> Option<u64> {
        Self::text(&self.path, "slot-id").and_then(|s| s.parse().ok())
    }
    pub fn object(&self) -> Option<String> {
        Self::text(&self.path, "object")
    }
    pub fn id(&self) -> Option<&[u8]> {
        self.path.get("id").map(|v| v.as_slice())
    }
    pub fn module_path(&self) -> Option<String> {
        Self::text(&self.query, "module-path")
    }
    pub fn module_name(&self) -> Option<String> {
        Self::text(&self.query, "module-name")
    }
}

/// Percent-encode a value for a URI path attribute.
pub fn encode(v: &[u8]) -> String {
    let mut s = String::new();
    for &b in v {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02x}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7512_examples() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token&module-path=/usr/lib/p11.so",
        )
        .unwrap();
        assert_eq!(u.token().unwrap(), "The Software PKCS#11 Softtoken");
        assert_eq!(u.manufacturer().unwrap(), "Snake Oil, Inc.");
        assert_eq!(u.object().unwrap(), "my-certificate");
        assert_eq!(
            u.id().unwrap(),
            &[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91]
        );
        assert_eq!(u.serial().unwrap(), "");
        assert_eq!(u.module_path().unwrap(), "/usr/lib/p11.so");
        assert_eq!(Pkcs11Uri::parse("pkcs11:").unwrap(), Pkcs11Uri::default());
    }

    #[test]
    fn rejects_bad_uris() {
        assert_eq!(Pkcs11Uri::parse("pkcs12:token=x"), Err(UriError::Scheme));
        assert!(matches!(
            Pkcs11Uri::parse("pkcs11:token=%zz"),
            Err(UriError::Percent(_))
        ));
        assert!(matches!(
            Pkcs11Uri::parse("pkcs11:token"),
            Err(UriError::NoValue(_))
        ));
        assert!(matches!(
            Pkcs11Uri::parse("pkcs11:token=a;token=b"),
            Err(UriError::Duplicate(_))
        ));
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=a?pin-value=1234"),
            Err(UriError::PinValue)
        );
        assert_eq!(Pkcs11Uri::parse("pkcs11:slot-id=x"), Err(UriError::SlotId));
        assert!(matches!(
            Pkcs11Uri::parse("pkcs11:token=%4"),
            Err(UriError::Percent(_))
        ));
    }

    #[test]
    fn encode_round_trips() {
        let raw = b"keyward root #1/\x00\xff";
        let u = Pkcs11Uri::parse(&format!("pkcs11:object={}", encode(raw))).unwrap();
        assert_eq!(u.path["object"], raw);
    }
}
