//! Reader for the legacy YAML artefacts of Cryppo < 0.6 (READ-only).
//!
//! Old Cryppo versions serialized artefacts as a YAML mapping, e.g.
//! ```text
//! ---
//! iv: !binary |-
//!   7oIK3u0eSLXS7BaW
//! 'at': !!binary |-
//!   VhVkRpRUxCpZZxGMat1JCA==
//! ad: none
//! 'i': 20030
//! ```
//! This module reads exactly that shape — a flat mapping of plain or quoted keys to
//! `!binary`/`!!binary` block or inline scalars (standard base64), quoted strings, plain
//! strings and integers — into a [`Document`]. It is a hand-written line parser, not a YAML
//! implementation: anything else (nesting, anchors, flow collections, multi-documents,
//! escapes in double quotes) is rejected with [`Error::Yaml`].
//!
//! This module must never panic on any input, never write YAML (new data is always BSON),
//! and never guess: an unreadable construct is an error, not a skipped line.

use crate::b64;
use crate::bson::{Document, Value};
use crate::error::{Error, Part, Result};

/// Whether decoded artefact bytes are legacy YAML rather than versioned BSON.
pub(crate) fn is_legacy(bytes: &[u8]) -> bool {
    bytes.starts_with(b"---")
}

/// Parse legacy YAML artefacts.
pub(crate) fn parse(part: Part, bytes: &[u8]) -> Result<Document> {
    let err = |line: usize, reason: &'static str| Error::Yaml { part, line, reason };
    let text = core::str::from_utf8(bytes).map_err(|_| err(1, "not UTF-8"))?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l)).peekable();

    match lines.next() {
        Some((_, first)) if first.trim_end() == "---" => {}
        Some((_, first)) if first.starts_with("--- ") => {
            // `--- {}` style inline documents are not Cryppo artefacts.
            if first.trim_end() != "--- {}" {
                return Err(err(1, "content after the document marker"));
            }
            return Ok(Document::new());
        }
        _ => return Err(err(1, "missing '---' document marker")),
    }

    let mut doc = Document::new();
    while let Some((no, line)) = lines.next() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            return Err(err(no, "unexpected indentation"));
        }
        if line.trim_end() == "..." {
            break;
        }
        let (key, rest) = split_key(line).ok_or_else(|| err(no, "expected 'key: value'"))?;
        let key = key.map_err(|reason| err(no, reason))?;
        let rest = rest.trim();

        let value = if let Some(tagged) = rest
            .strip_prefix("!!binary")
            .or_else(|| rest.strip_prefix("!binary"))
        {
            let tagged = tagged.trim();
            let b64text = if matches!(tagged, "|" | "|-" | "|+") {
                // Block scalar: the indented lines that follow.
                let mut s = String::new();
                while let Some(&(_, next)) = lines.peek() {
                    if next.starts_with(' ') || next.starts_with('\t') {
                        s.extend(next.split_ascii_whitespace());
                        lines.next();
                    } else if next.trim().is_empty() {
                        lines.next();
                    } else {
                        break;
                    }
                }
                s
            } else if tagged.starts_with(['|', '>']) {
                return Err(err(no, "unsupported block scalar style"));
            } else {
                scalar(tagged).map_err(|reason| err(no, reason))?.0
            };
            let bytes =
                b64::decode_standard(&b64text).map_err(|_| err(no, "invalid base64 in !binary"))?;
            Value::Binary { subtype: 0, bytes }
        } else if rest.starts_with('!') {
            return Err(err(no, "unsupported YAML tag"));
        } else if rest.is_empty() {
            return Err(err(no, "nested or empty values are not artefacts"));
        } else {
            let (text, quoted) = scalar(rest).map_err(|reason| err(no, reason))?;
            match (quoted, parse_int(&text)) {
                (false, Some(i)) => Value::Int32(i),
                _ => Value::String(text),
            }
        };
        doc.push(&key, value).map_err(|e| match e {
            Error::DuplicateField { field, .. } => Error::DuplicateField { part, field },
            _ => err(no, "field cannot be stored"),
        })?;
    }
    Ok(doc)
}

type KeyResult = core::result::Result<String, &'static str>;

/// Split `key: rest` where the key may be single-quoted, double-quoted or plain.
fn split_key(line: &str) -> Option<(KeyResult, &str)> {
    if line.starts_with(['\'', '"']) {
        let (key, used) = match quoted_prefix(line) {
            Ok(v) => v,
            Err(e) => return Some((Err(e), "")),
        };
        let rest = line.get(used..)?.strip_prefix(':')?;
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return None;
        }
        return Some((Ok(key), rest));
    }
    let colon = line
        .find(": ")
        .or_else(|| line.strip_suffix(':').map(|k| k.len()))?;
    let key = line.get(..colon)?;
    let rest = line.get(colon + 1..)?;
    // Ruby symbol keys (`:iv:`) are written with a leading colon.
    let key = key.strip_prefix(':').unwrap_or(key);
    if key.is_empty() || key.contains(['{', '}', '[', ']', '&', '*', '#', '!', '|', '>']) {
        return Some((Err("unsupported key"), rest));
    }
    Some((Ok(key.to_owned()), rest))
}

/// Parse a quoted scalar at the start of `s`; returns the text and the bytes consumed.
fn quoted_prefix(s: &str) -> core::result::Result<(String, usize), &'static str> {
    let mut chars = s.char_indices();
    let quote = match chars.next() {
        Some((_, q @ ('\'' | '"'))) => q,
        _ => return Err("expected a quote"),
    };
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            if quote == '\'' && s.get(i + 1..).is_some_and(|r| r.starts_with('\'')) {
                out.push('\'');
                chars.next();
                continue;
            }
            return Ok((out, i + 1));
        }
        if quote == '"' && c == '\\' {
            return Err("escapes in double-quoted strings are not supported");
        }
        out.push(c);
    }
    Err("unterminated quoted string")
}

/// A whole scalar value: quoted (returns `true`) or plain (comment-stripped, trimmed).
fn scalar(s: &str) -> core::result::Result<(String, bool), &'static str> {
    if s.starts_with(['\'', '"']) {
        let (text, used) = quoted_prefix(s)?;
        let tail = s.get(used..).unwrap_or_default().trim();
        if !(tail.is_empty() || tail.starts_with('#')) {
            return Err("content after a quoted string");
        }
        return Ok((text, true));
    }
    if s.starts_with(['[', '{', '&', '*', '|', '>', '%', '@', '`']) {
        return Err("unsupported YAML value");
    }
    let plain = match s.find(" #") {
        Some(i) => s.get(..i).unwrap_or_default(),
        None => s,
    };
    Ok((plain.trim().to_owned(), false))
}

fn parse_int(s: &str) -> Option<i32> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin(v: &Value) -> &[u8] {
        match v {
            Value::Binary { bytes, .. } => bytes,
            other => panic!("not binary: {other:?}"),
        }
    }

    #[test]
    fn ruby_shapes() {
        let d = parse(
            Part::Artefacts,
            b"---\niv: !binary |-\n  7oIK3u0eSLXS7BaW\nat: !binary |-\n  VhVkRpRUxCpZZxGMat1JCA==\nad: none\n",
        )
        .unwrap();
        assert_eq!(bin(d.get("iv").unwrap()).len(), 12);
        assert_eq!(bin(d.get("at").unwrap()).len(), 16);
        assert_eq!(d.get("ad"), Some(&Value::String("none".into())));

        let d = parse(
            Part::DerivationArtefacts,
            b"---\n'i': 20030\n'iv': !!binary |-\n  fpc0yPy0psETSKUSYE8pw53TTyM=\n'l': 32\n",
        )
        .unwrap();
        assert_eq!(d.get("i"), Some(&Value::Int32(20030)));
        assert_eq!(d.get("l"), Some(&Value::Int32(32)));
        assert_eq!(bin(d.get("iv").unwrap()).len(), 20);

        let d = parse(Part::Artefacts, b"---\n'ad': ''\n'at': ''\n'iv': ''\n").unwrap();
        assert_eq!(d.get("iv"), Some(&Value::String(String::new())));
        assert_eq!(d.get("ad"), Some(&Value::String(String::new())));
    }

    #[test]
    fn multi_line_block_and_symbols() {
        let d = parse(
            Part::Artefacts,
            b"---\n:iv: !binary |\n  AAAA\n  AAAA\n:note: 'it''s'\n",
        )
        .unwrap();
        assert_eq!(bin(d.get("iv").unwrap()), [0u8; 6]);
        assert_eq!(d.get("note"), Some(&Value::String("it's".into())));
    }

    #[test]
    fn rejects_what_it_does_not_read() {
        for bad in [
            &b"iv: x\n"[..],
            b"---\n  iv: x\n",
            b"---\niv:\n  nested: 1\n",
            b"---\niv: !binary |-\n  not*base64\n",
            b"---\niv: &a x\n",
            b"---\na: 1\na: 2\n",
            b"---\n'unterminated: 1\n",
            b"---\niv: !ruby/object x\n",
            b"---\xff\n",
        ] {
            assert!(
                parse(Part::Artefacts, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
