//! A minimal, bounds-checked BSON document codec for Cryppo artefacts.
//!
//! Cryppo artefacts are tiny BSON documents using three element types only: 0x05 binary,
//! 0x02 UTF-8 string and 0x10 int32. This module reads and writes exactly those, and nothing
//! else. It is hand-written rather than built on the `bson` crate because:
//! - the subset is ~150 lines and fully specified; the `bson` crate brings serde, chrono,
//!   indexmap, uuid and its own base64/hex, a large attack surface for three element types;
//! - we need byte-exact round trips (field order and binary subtypes preserved) and strict
//!   rejection (duplicate keys, trailing bytes, unknown types), which are easier to guarantee
//!   in code we own;
//! - every read is checked against the buffer bounds and returns a typed [`Error::Bson`] —
//!   no indexing that can panic, no unchecked arithmetic on attacker-supplied lengths.
//!
//! This module must never panic on any input, never allocate more than the input size
//! (lengths are validated against the remaining bytes before any allocation), and never
//! silently drop or reorder a field.

use crate::error::{Error, Part, Result};

/// BSON element type: UTF-8 string.
const TYPE_STRING: u8 = 0x02;
/// BSON element type: binary.
const TYPE_BINARY: u8 = 0x05;
/// BSON element type: 32-bit integer.
const TYPE_INT32: u8 = 0x10;
/// Largest encoded document size BSON can express.
const MAX_DOC_LEN: usize = i32::MAX as usize;

/// A value of a Cryppo artefact field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value {
    /// BSON binary (type 0x05) with its subtype (Cryppo writes subtype 0).
    Binary {
        /// The BSON binary subtype byte.
        subtype: u8,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// BSON UTF-8 string (type 0x02).
    String(String),
    /// BSON int32 (type 0x10).
    Int32(i32),
}

impl Value {
    fn encoded_len(&self) -> usize {
        match self {
            // int32 length + subtype + bytes
            Value::Binary { bytes, .. } => 5usize.saturating_add(bytes.len()),
            // int32 length + bytes + NUL
            Value::String(s) => 5usize.saturating_add(s.len()),
            Value::Int32(_) => 4,
        }
    }
}

/// An ordered BSON document: field order is kept as read, so re-encoding is byte-exact.
///
/// Invariants (kept by every constructor): keys hold no NUL byte, keys are unique, and the
/// encoded size fits BSON's `i32` length, so encoding cannot fail.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Document {
    fields: Vec<(String, Value)>,
    /// Encoded size in bytes (length prefix, elements and terminator).
    encoded_len: usize,
}

impl Document {
    /// An empty document.
    pub(crate) fn new() -> Self {
        Document {
            fields: Vec::new(),
            encoded_len: 5,
        }
    }

    /// Append a field. Fails on a duplicate key, a key holding NUL, or a document that would
    /// exceed BSON's size limit.
    pub(crate) fn push(&mut self, key: &str, value: Value) -> Result<()> {
        if key.as_bytes().contains(&0) {
            return Err(Error::TooLarge("an artefact key holding NUL"));
        }
        if self.get(key).is_some() {
            return Err(Error::DuplicateField {
                part: Part::Artefacts,
                field: key.to_owned(),
            });
        }
        let added = 1usize // type
            .saturating_add(key.len())
            .saturating_add(1) // key NUL
            .saturating_add(value.encoded_len());
        let new_len = self.encoded_len.saturating_add(added);
        if new_len > MAX_DOC_LEN {
            return Err(Error::TooLarge("an artefacts document"));
        }
        self.encoded_len = new_len;
        self.fields.push((key.to_owned(), value));
        Ok(())
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The fields in document order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the document has no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Append the BSON encoding to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len);
        push_len(out, self.encoded_len);
        for (key, value) in &self.fields {
            let ty = match value {
                Value::Binary { .. } => TYPE_BINARY,
                Value::String(_) => TYPE_STRING,
                Value::Int32(_) => TYPE_INT32,
            };
            out.push(ty);
            out.extend_from_slice(key.as_bytes());
            out.push(0);
            match value {
                Value::Binary { subtype, bytes } => {
                    push_len(out, bytes.len());
                    out.push(*subtype);
                    out.extend_from_slice(bytes);
                }
                Value::String(s) => {
                    push_len(out, s.len().saturating_add(1));
                    out.extend_from_slice(s.as_bytes());
                    out.push(0);
                }
                Value::Int32(i) => out.extend_from_slice(&i.to_le_bytes()),
            }
        }
        out.push(0);
    }

    /// Decode a whole document; `input` must hold exactly one document and nothing after it.
    pub(crate) fn decode(part: Part, input: &[u8]) -> Result<Document> {
        let mut r = Reader {
            part,
            buf: input,
            pos: 0,
        };
        let total = r.len_i32("document length is negative")?;
        if total != input.len() {
            return Err(r.err(0, "document length does not match the data"));
        }
        if total < 5 {
            return Err(r.err(0, "document shorter than 5 bytes"));
        }
        let end = total - 1; // position of the terminating NUL
        let mut doc = Document::new();
        while r.pos < end {
            let at = r.pos;
            let ty = r.byte()?;
            let key = r.cstring()?;
            let value = match ty {
                TYPE_STRING => {
                    let len = r.len_i32("string length is negative")?;
                    if len == 0 {
                        return Err(r.err(at, "string length is 0 (must count the NUL)"));
                    }
                    let bytes = r.take(len)?;
                    let (text, nul) = bytes.split_at(len - 1);
                    if nul != [0] {
                        return Err(r.err(at, "string not NUL-terminated"));
                    }
                    let text =
                        core::str::from_utf8(text).map_err(|_| r.err(at, "string is not UTF-8"))?;
                    Value::String(text.to_owned())
                }
                TYPE_BINARY => {
                    let len = r.len_i32("binary length is negative")?;
                    let subtype = r.byte()?;
                    Value::Binary {
                        subtype,
                        bytes: r.take(len)?.to_vec(),
                    }
                }
                TYPE_INT32 => Value::Int32(i32::from_le_bytes(r.array4()?)),
                _ => return Err(r.err(at, "unsupported element type (only binary, string, int32)")),
            };
            if r.pos > end {
                return Err(r.err(at, "element overruns the document"));
            }
            doc.push(key, value).map_err(|e| match e {
                Error::DuplicateField { field, .. } => Error::DuplicateField { part, field },
                other => other,
            })?;
        }
        if r.pos != end || input.get(end) != Some(&0) {
            return Err(r.err(end, "document not NUL-terminated"));
        }
        Ok(doc)
    }
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    // Invariant of `Document`: every length fits in i32.
    let len = i32::try_from(len).unwrap_or(i32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
}

/// Cursor over the input; every read is bounds-checked.
struct Reader<'a> {
    part: Part,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, offset: usize, reason: &'static str) -> Error {
        Error::Bson {
            part: self.part,
            offset,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err(self.pos, "truncated"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.err(self.pos, "truncated"))?;
        self.pos = end;
        Ok(s)
    }

    fn array4(&mut self) -> Result<[u8; 4]> {
        let at = self.pos;
        self.take(4)?
            .try_into()
            .map_err(|_| self.err(at, "truncated"))
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn len_i32(&mut self, negative: &'static str) -> Result<usize> {
        let at = self.pos;
        let v = i32::from_le_bytes(self.array4()?);
        usize::try_from(v).map_err(|_| self.err(at, negative))
    }

    fn cstring(&mut self) -> Result<&'a str> {
        let at = self.pos;
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err(at, "field name not NUL-terminated"))?;
        let name = self.take(nul)?;
        self.pos += 1; // the NUL, known to be in bounds
        core::str::from_utf8(name).map_err(|_| self.err(at, "field name is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Document {
        let mut d = Document::new();
        d.push(
            "iv",
            Value::Binary {
                subtype: 0,
                bytes: vec![1; 12],
            },
        )
        .unwrap();
        d.push("i", Value::Int32(21138)).unwrap();
        d.push("ad", Value::String("none".into())).unwrap();
        d
    }

    #[test]
    fn round_trip_and_length() {
        let d = sample();
        let mut out = Vec::new();
        d.encode_into(&mut out);
        assert_eq!(out.len(), d.encoded_len);
        assert_eq!(Document::decode(Part::Artefacts, &out).unwrap(), d);
    }

    #[test]
    fn empty_document() {
        let mut out = Vec::new();
        Document::new().encode_into(&mut out);
        assert_eq!(out, [5, 0, 0, 0, 0]);
        assert!(Document::decode(Part::Artefacts, &out).unwrap().is_empty());
    }

    #[test]
    fn rejects_every_truncation_and_corruption() {
        let mut out = Vec::new();
        sample().encode_into(&mut out);
        for n in 0..out.len() {
            assert!(Document::decode(Part::Artefacts, &out[..n]).is_err(), "{n}");
        }
        for i in 0..out.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut c = out.clone();
                c[i] = v;
                // Must not panic; may or may not be accepted.
                let _ = Document::decode(Part::Artefacts, &c);
            }
        }
    }

    #[test]
    fn rejects_duplicates_and_unknown_types() {
        // {"a": int32 1, "a": int32 2}
        let doc = [
            19, 0, 0, 0, 0x10, b'a', 0, 1, 0, 0, 0, 0x10, b'a', 0, 2, 0, 0, 0, 0,
        ];
        assert!(matches!(
            Document::decode(Part::Artefacts, &doc),
            Err(Error::DuplicateField { .. })
        ));
        // {"a": bool true}
        let doc = [10, 0, 0, 0, 0x08, b'a', 0, 1, 0, 0];
        assert!(matches!(
            Document::decode(Part::Artefacts, &doc),
            Err(Error::Bson { offset: 4, .. })
        ));
    }
}
