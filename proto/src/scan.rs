//! A request frame read without building a generic CBOR tree: a well-formedness check of the
//! whole item, the envelope's three fields found by position, and one text field of the
//! arguments map peeked by name.
//!
//! The agent decodes a request's arguments once, straight from their bytes into the operation's
//! typed struct (`Request::args`); what it needs before that (the envelope's `id` and `op`, the
//! key id the policy check and the audit entry name) is read here, in place. This module must
//! never allocate per item (a frame of many small items costs one pass over its heads) and never
//! accept bytes the typed decoder would read differently: anything not well-formed is refused
//! here, as `malformed`, before any typed decoding.

use std::borrow::Cow;

/// One item head: major type, argument, and whether the length is indefinite.
#[derive(Clone, Copy)]
struct Head {
    major: u8,
    info: u8,
    arg: u64,
}

impl Head {
    fn indefinite(&self) -> bool {
        self.info == 31
    }
    fn is_break(&self) -> bool {
        self.major == 7 && self.info == 31
    }
}

/// Why bytes are not one well-formed CBOR item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// The bytes end inside an item.
    Truncated,
    /// Bytes are left after the item.
    Trailing(usize),
    /// Not well-formed at this offset (reserved head, bad string chunk, stray break, text that
    /// is not UTF-8, a simple value the decoder does not read).
    Invalid(usize),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Truncated => write!(f, "the CBOR item is truncated"),
            ScanError::Trailing(n) => write!(f, "{n} trailing bytes after the CBOR item"),
            ScanError::Invalid(at) => write!(f, "CBOR not well-formed at byte {at}"),
        }
    }
}

fn head(b: &[u8], pos: &mut usize) -> Result<Head, ScanError> {
    let at = *pos;
    let first = *b.get(at).ok_or(ScanError::Truncated)?;
    *pos += 1;
    let (major, info) = (first >> 5, first & 0x1f);
    let n = match info {
        0..=23 => {
            return Ok(Head {
                major,
                info,
                arg: u64::from(info),
            })
        }
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 if matches!(major, 2..=5 | 7) => 0,
        _ => return Err(ScanError::Invalid(at)),
    };
    let end = pos.checked_add(n).ok_or(ScanError::Truncated)?;
    let bytes = b.get(*pos..end).ok_or(ScanError::Truncated)?;
    *pos = end;
    let arg = bytes.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
    // A one-byte simple value below 32 is not well-formed (RFC 8949 §3.3).
    if major == 7 && info == 24 && arg < 32 {
        return Err(ScanError::Invalid(at));
    }
    Ok(Head { major, info, arg })
}

/// The string body of a definite head at `*pos`, advancing past it.
fn body<'a>(b: &'a [u8], pos: &mut usize, h: Head) -> Result<&'a [u8], ScanError> {
    let len = usize::try_from(h.arg).map_err(|_| ScanError::Truncated)?;
    let end = pos.checked_add(len).ok_or(ScanError::Truncated)?;
    let s = b.get(*pos..end).ok_or(ScanError::Truncated)?;
    *pos = end;
    Ok(s)
}

/// Check one string item (definite, or indefinite made of definite chunks of its own major
/// type); text must be UTF-8, chunk by chunk.
fn string(b: &[u8], pos: &mut usize, h: Head, utf8: bool) -> Result<(), ScanError> {
    let check = |at: usize, s: &[u8]| {
        if utf8 && h.major == 3 && std::str::from_utf8(s).is_err() {
            Err(ScanError::Invalid(at))
        } else {
            Ok(())
        }
    };
    if !h.indefinite() {
        let at = *pos;
        let s = body(b, pos, h)?;
        return check(at, s);
    }
    loop {
        let at = *pos;
        let c = head(b, pos)?;
        if c.is_break() {
            return Ok(());
        }
        if c.major != h.major || c.indefinite() {
            return Err(ScanError::Invalid(at));
        }
        let s = body(b, pos, c)?;
        check(at, s)?;
    }
}

/// Deepest nesting [`well_formed`] follows (the agent's own limit, `max_depth`, is checked
/// before, and is lower); deeper is refused rather than recursed into.
const MAX_DEPTH: usize = 256;

/// Skip one well-formed item at `*pos` (with everything inside it), or say why it is not one.
fn item(b: &[u8], pos: &mut usize) -> Result<(), ScanError> {
    nested(b, pos, 0, true)
}

/// Skip one item of bytes already checked by [`well_formed`] (or encoded by this crate): the
/// same walk without checking text for UTF-8 again.
fn skip(b: &[u8], pos: &mut usize) -> Result<(), ScanError> {
    nested(b, pos, 0, false)
}

fn nested(b: &[u8], pos: &mut usize, depth: usize, utf8: bool) -> Result<(), ScanError> {
    let at = *pos;
    if depth > MAX_DEPTH {
        return Err(ScanError::Invalid(at));
    }
    let item = |b: &[u8], pos: &mut usize| nested(b, pos, depth + 1, utf8);
    let h = head(b, pos)?;
    match h.major {
        0 | 1 => Ok(()),
        2 | 3 => string(b, pos, h, utf8),
        4 | 5 => {
            let per = if h.major == 5 { 2 } else { 1 };
            if h.indefinite() {
                let mut n = 0u64;
                loop {
                    if b.get(*pos) == Some(&0xff) {
                        *pos += 1;
                        return if n % per == 0 {
                            Ok(())
                        } else {
                            Err(ScanError::Invalid(*pos - 1))
                        };
                    }
                    item(b, pos)?;
                    n += 1;
                }
            }
            let count = h.arg.checked_mul(per).ok_or(ScanError::Truncated)?;
            for _ in 0..count {
                item(b, pos)?;
            }
            Ok(())
        }
        6 => item(b, pos),
        // Simple values: false, true, null, undefined, and floats; a break outside an
        // indefinite item and unassigned simple values are refused.
        _ => match h.info {
            20..=23 | 25..=27 => Ok(()),
            _ => Err(ScanError::Invalid(at)),
        },
    }
}

/// Check that `bytes` is exactly one well-formed CBOR item. Run after the limits pre-scan
/// (`limits::check`), which bounds the nesting this recurses through.
pub fn well_formed(bytes: &[u8]) -> Result<(), ScanError> {
    let mut pos = 0;
    item(bytes, &mut pos)?;
    match bytes.len() - pos {
        0 => Ok(()),
        n => Err(ScanError::Trailing(n)),
    }
}

/// A text item at `*pos` (definite: borrowed; indefinite: its chunks joined), or `None` (and
/// `*pos` past the item) for any other item. Only for bytes that passed [`well_formed`].
fn text_at<'a>(b: &'a [u8], pos: &mut usize) -> Option<Cow<'a, str>> {
    let start = *pos;
    let h = head(b, pos).ok()?;
    if h.major != 3 {
        *pos = start;
        skip(b, pos).ok()?;
        return None;
    }
    if !h.indefinite() {
        return std::str::from_utf8(body(b, pos, h).ok()?)
            .ok()
            .map(Cow::Borrowed);
    }
    let mut s = String::new();
    loop {
        let c = head(b, pos).ok()?;
        if c.is_break() {
            return Some(Cow::Owned(s));
        }
        s.push_str(std::str::from_utf8(body(b, pos, c).ok()?).ok()?);
    }
}

/// The entries of the map at `*pos`: calls `f(key, value_pos)` for each entry whose key is
/// text; `f` returns whether to stop. Only for bytes that passed [`well_formed`]. `None`: not a
/// map.
fn entries<'a>(
    b: &'a [u8],
    pos: &mut usize,
    mut f: impl FnMut(Option<Cow<'a, str>>, usize) -> bool,
) -> Option<()> {
    let h = head(b, pos).ok()?;
    if h.major != 5 {
        return None;
    }
    let mut left = h.arg;
    loop {
        if h.indefinite() {
            if b.get(*pos) == Some(&0xff) {
                *pos += 1;
                return Some(());
            }
        } else if left == 0 {
            return Some(());
        } else {
            left -= 1;
        }
        let key = text_at(b, pos);
        let at = *pos;
        if f(key, at) {
            return Some(());
        }
        *pos = at;
        skip(b, pos).ok()?;
    }
}

/// What the envelope `{id, op, args}` of a well-formed request holds, read in place.
pub(crate) struct Envelope<'a> {
    /// `Some(Ok(id))`, `Some(Err(()))` for an `id` that is not an unsigned integer.
    pub id: Option<Result<u64, ()>>,
    /// `Some(Some(op))`, `Some(None)` for an `op` that is not text.
    pub op: Option<Option<Cow<'a, str>>>,
    /// The bytes of the `args` item, and whether it is a map.
    pub args: Option<(&'a [u8], bool)>,
    /// Keys other than `id`, `op` and `args`, in order (`(non-text key)` for others).
    pub unknown: Vec<String>,
}

/// Read the envelope of `bytes`, which passed [`well_formed`]. `None`: the top level is not a
/// map. A key given twice keeps its last value (as a decoded map would).
pub(crate) fn envelope(bytes: &[u8]) -> Option<Envelope<'_>> {
    let mut env = Envelope {
        id: None,
        op: None,
        args: None,
        unknown: Vec::new(),
    };
    let mut pos = 0;
    entries(bytes, &mut pos, |key, at| {
        let mut p = at;
        match key.as_deref() {
            Some("id") => {
                env.id = Some(match head(bytes, &mut p) {
                    Ok(h) if h.major == 0 => Ok(h.arg),
                    _ => Err(()),
                })
            }
            Some("op") => env.op = Some(text_at(bytes, &mut p)),
            Some("args") => {
                if skip(bytes, &mut p).is_ok() {
                    let is_map = bytes.get(at).is_some_and(|b| b >> 5 == 5);
                    env.args = Some((&bytes[at..p], is_map));
                }
            }
            Some(other) => env.unknown.push(other.to_string()),
            None => env.unknown.push("(non-text key)".to_string()),
        }
        false
    })?;
    Some(env)
}

/// The text value of the first of `names` (in the order of `names`) that the map `args` has
/// with a text value. Only for bytes that passed [`well_formed`]; anything else is `None`.
pub fn text_field<'a>(args: &'a [u8], names: &[&str]) -> Option<Cow<'a, str>> {
    let mut best: Option<(usize, Cow<'a, str>)> = None;
    let mut pos = 0;
    entries(args, &mut pos, |key, at| {
        let rank = key.and_then(|k| names.iter().position(|n| *n == k));
        if let Some(r) = rank.filter(|r| best.as_ref().is_none_or(|(b, _)| r < b)) {
            let mut p = at;
            if let Some(v) = text_at(args, &mut p) {
                best = Some((r, v));
            }
        }
        best.as_ref().is_some_and(|(r, _)| *r == 0)
    });
    best.map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciborium::Value;

    fn cbor(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        ciborium::into_writer(v, &mut b).unwrap();
        b
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn well_formed_accepts_what_the_decoder_reads_and_nothing_else() {
        let v = Value::Map(vec![
            (t("a"), Value::Array(vec![Value::Bool(true), Value::Null])),
            (t("b"), Value::Tag(2, Box::new(Value::Bytes(vec![1, 2])))),
            (t("c"), Value::Float(1.5)),
            (Value::Integer((-3).into()), t("x")),
        ]);
        assert_eq!(well_formed(&cbor(&v)), Ok(()));
        // Indefinite strings of definite chunks, indefinite maps and arrays.
        assert_eq!(
            well_formed(&[0xbf, 0x7f, 0x61, b'a', 0xff, 0x9f, 0x01, 0xff, 0xff]),
            Ok(())
        );
        for bad in [
            &[0xff][..],               // a stray break
            &[0x1c],                   // reserved additional information
            &[0x62, 0xc3, 0x28],       // text that is not UTF-8
            &[0x7f, 0x41, 0x00, 0xff], // a byte-string chunk in text
            &[0xbf, 0x01, 0xff],       // a key without its value
            &[0xf8, 0x10],             // a two-byte simple value below 32
            &[0xf0],                   // an unassigned simple value
        ] {
            assert!(
                matches!(well_formed(bad), Err(ScanError::Invalid(_))),
                "{bad:x?}"
            );
        }
        assert_eq!(well_formed(&[0x82, 0x01]), Err(ScanError::Truncated));
        assert_eq!(
            well_formed(&[0x9a, 0xff, 0xff, 0xff, 0xff]),
            Err(ScanError::Truncated)
        );
        assert_eq!(well_formed(&[0x01, 0x02]), Err(ScanError::Trailing(1)));
    }

    #[test]
    fn text_fields_are_found_by_rank_in_any_encoding() {
        let m = cbor(&Value::Map(vec![
            (t("kek"), t("k")),
            (t("x"), Value::Array(vec![t("id"), t("no")])),
            (t("dek"), t("d")),
        ]));
        assert_eq!(text_field(&m, &["dek", "kek"]).as_deref(), Some("d"));
        assert_eq!(text_field(&m, &["id", "kek"]).as_deref(), Some("k"));
        assert_eq!(text_field(&m, &["id"]), None);
        // A non-text value is passed over for a lower-ranked text one.
        let m = cbor(&Value::Map(vec![
            (t("dek"), Value::Integer(1.into())),
            (t("kek"), t("k")),
        ]));
        assert_eq!(text_field(&m, &["dek", "kek"]).as_deref(), Some("k"));
        // Indefinite map, indefinite key and value: still found (a policy rule must not be
        // dodged by an encoding).
        let m = [
            0xbf, 0x7f, 0x61, b'd', 0x62, b'e', b'k', 0xff, 0x7f, 0x61, b'a', 0x61, b'b', 0xff,
            0xff,
        ];
        assert_eq!(text_field(&m, &["dek"]).as_deref(), Some("ab"));
        assert_eq!(text_field(&[0x01], &["dek"]), None);
    }
}
