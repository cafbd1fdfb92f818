//! Strict CBOR decoding helper: one item, no trailing bytes. It must never
//! accept input with data after the first item (so two encodings of one value
//! cannot differ by appended junk).

use serde::de::DeserializeOwned;

/// Decodes exactly one CBOR item from `bytes`; trailing data is an error.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut cursor = std::io::Cursor::new(bytes);
    let value: T = ciborium::from_reader(&mut cursor).map_err(|e| e.to_string())?;
    if usize::try_from(cursor.position()).ok() != Some(bytes.len()) {
        return Err("trailing bytes after CBOR item".into());
    }
    Ok(value)
}
