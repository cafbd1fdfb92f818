//! Base64 for Cryppo parts: RFC 4648 URL-safe alphabet, `=` padding required and canonical.
//!
//! This module decodes and encodes the dot-separated parts. It must never accept the standard
//! alphabet (`+`, `/`) in a part, nor unpadded or non-canonical encodings: one byte string has
//! exactly one encoding, so parse -> serialize is the identity on accepted input. The standard
//! alphabet is used only *inside* legacy YAML and PEM (see [`decode_standard`]).

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;

use crate::error::{Error, Part, Result};

/// Decode one part; reject `+`/`/` with [`Error::StandardBase64`].
pub(crate) fn decode(part: Part, text: &str) -> Result<Vec<u8>> {
    // `+` and `/` are outside the URL-safe alphabet, so the decoder rejects them; only then is
    // the part scanned to report them precisely (the happy path reads the input once).
    URL_SAFE.decode(text).map_err(|source| {
        match text.bytes().position(|b| b == b'+' || b == b'/') {
            Some(offset) => Error::StandardBase64 {
                part,
                offset,
                found: if text.as_bytes().get(offset) == Some(&b'+') {
                    '+'
                } else {
                    '/'
                },
            },
            None => Error::Base64 { part, source },
        }
    })
}

/// The padded URL-safe encoding of `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    URL_SAFE.encode(bytes)
}

/// Write the padded URL-safe encoding of `bytes` to a formatter, in chunks (no allocation).
pub(crate) fn write(bytes: &[u8], f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
    core::fmt::Display::fmt(&base64::display::Base64Display::new(bytes, &URL_SAFE), f)
}

/// Decode standard-alphabet base64 whose whitespace has been removed by the caller
/// (legacy YAML `!binary`, PEM bodies). Padding must be canonical when present.
pub(crate) fn decode_standard(text: &str) -> core::result::Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_standard_alphabet_with_offset() {
        let err = decode(Part::Ciphertext, "ab+d").unwrap_err();
        assert!(matches!(
            err,
            Error::StandardBase64 {
                part: Part::Ciphertext,
                offset: 2,
                found: '+'
            }
        ));
        let err = decode(Part::Artefacts, "abc/").unwrap_err();
        assert!(matches!(err, Error::StandardBase64 { found: '/', .. }));
    }

    #[test]
    fn requires_padding() {
        assert!(decode(Part::Ciphertext, "YQ==").is_ok());
        assert!(matches!(
            decode(Part::Ciphertext, "YQ"),
            Err(Error::Base64 { .. })
        ));
        assert!(matches!(
            decode(Part::Ciphertext, "YR=="),
            Err(Error::Base64 { .. })
        ));
    }
}
