//! Bounds on what one request may hold, checked by a cheap pre-scan of the CBOR item heads
//! before anything is decoded or allocated: nesting depth, and the number of items (every key,
//! value, element, tag and string chunk counts as one). A frame of a million one-byte items is
//! refused after reading a million heads, not after building a million `Value`s.

/// How deep and how big a request may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Nesting depth of arrays, maps and tags (a request with its `args` map is depth 2).
    pub max_depth: usize,
    /// CBOR items in the whole request.
    pub max_items: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_depth: 16,
            max_items: 4096,
        }
    }
}

/// A limit the scanned bytes break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    TooDeep { max: usize },
    TooManyItems { max: usize },
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitError::TooDeep { max } => write!(
                f,
                "the request is nested more than {max} levels deep (the agent's `max_depth`)"
            ),
            LimitError::TooManyItems { max } => write!(
                f,
                "the request holds more than {max} CBOR items (the agent's `max_items`)"
            ),
        }
    }
}

/// One item head: major type, argument, and whether the length is indefinite.
struct Head {
    major: u8,
    arg: u64,
    indefinite: bool,
    is_break: bool,
}

/// Read the head at `*pos`. `None`: truncated or not well-formed (the decoder will say which).
fn head(b: &[u8], pos: &mut usize) -> Option<Head> {
    let first = *b.get(*pos)?;
    *pos += 1;
    let (major, info) = (first >> 5, first & 0x1f);
    let mut h = Head {
        major,
        arg: 0,
        indefinite: false,
        is_break: first == 0xff,
    };
    if h.is_break {
        return Some(h);
    }
    let n = match info {
        0..=23 => {
            h.arg = u64::from(info);
            0
        }
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 if matches!(major, 2..=5) => {
            h.indefinite = true;
            0
        }
        _ => return None,
    };
    let bytes = b.get(*pos..pos.checked_add(n)?)?;
    *pos += n;
    for &x in bytes {
        h.arg = (h.arg << 8) | u64::from(x);
    }
    Some(h)
}

/// What is left to read of one open container.
enum Open {
    Count(u64),
    Indefinite,
}

/// Check `bytes` against `limits`. Malformed or truncated input passes (the decoder refuses it
/// with its own message): every item present has been counted by then, so nothing past the
/// limits can reach the decoder either way.
pub fn check(bytes: &[u8], limits: &DecodeLimits) -> Result<(), LimitError> {
    let mut pos = 0usize;
    let mut items = 0usize;
    // The bottom entry is the top level: one item expected.
    let mut stack: Vec<Open> = vec![Open::Count(1)];
    loop {
        while let Some(Open::Count(0)) = stack.last() {
            stack.pop();
        }
        if stack.is_empty() {
            return Ok(());
        }
        let Some(h) = head(bytes, &mut pos) else {
            return Ok(());
        };
        if h.is_break {
            match stack.last() {
                Some(Open::Indefinite) => {
                    stack.pop();
                    continue;
                }
                _ => return Ok(()),
            }
        }
        if let Some(Open::Count(n)) = stack.last_mut() {
            *n -= 1;
        }
        items += 1;
        if items > limits.max_items {
            return Err(LimitError::TooManyItems {
                max: limits.max_items,
            });
        }
        let open = match h.major {
            2 | 3 if h.indefinite => Some(Open::Indefinite),
            2 | 3 => {
                let Some(end) = usize::try_from(h.arg).ok().and_then(|n| pos.checked_add(n)) else {
                    return Ok(());
                };
                if end > bytes.len() {
                    return Ok(());
                }
                pos = end;
                None
            }
            4 if h.indefinite => Some(Open::Indefinite),
            4 => Some(Open::Count(h.arg)),
            5 if h.indefinite => Some(Open::Indefinite),
            5 => Some(Open::Count(h.arg.saturating_mul(2))),
            6 => Some(Open::Count(1)),
            _ => None,
        };
        if let Some(o) = open {
            stack.push(o);
            // The bottom entry is not a level of nesting.
            if stack.len() - 1 > limits.max_depth {
                return Err(LimitError::TooDeep {
                    max: limits.max_depth,
                });
            }
        }
    }
}

/// The request's `id`, if it can be read cheaply: the top level is a definite map and `id` is
/// an unsigned integer under a text key before any indefinite-length value. Used to name the
/// request in an error when the whole cannot be decoded.
pub fn peek_id(bytes: &[u8]) -> Option<u64> {
    let mut pos = 0;
    let top = head(bytes, &mut pos)?;
    if top.major != 5 || top.indefinite {
        return None;
    }
    for _ in 0..top.arg {
        let k = head(bytes, &mut pos)?;
        if k.major != 3 || k.indefinite {
            return None;
        }
        let end = pos.checked_add(usize::try_from(k.arg).ok()?)?;
        let key = bytes.get(pos..end)?;
        pos = end;
        if key == b"id" {
            let v = head(bytes, &mut pos)?;
            return (v.major == 0).then_some(v.arg);
        }
        skip(bytes, &mut pos)?;
    }
    None
}

/// Skip one item of definite length (with everything inside it).
fn skip(bytes: &[u8], pos: &mut usize) -> Option<()> {
    let mut remaining: u64 = 1;
    while remaining > 0 {
        let h = head(bytes, pos)?;
        if h.indefinite || h.is_break {
            return None;
        }
        remaining -= 1;
        match h.major {
            2 | 3 => {
                *pos = pos.checked_add(usize::try_from(h.arg).ok()?)?;
                if *pos > bytes.len() {
                    return None;
                }
            }
            4 => remaining = remaining.checked_add(h.arg)?,
            5 => remaining = remaining.checked_add(h.arg.checked_mul(2)?)?,
            6 => remaining += 1,
            _ => {}
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(v: &ciborium::Value) -> Vec<u8> {
        let mut b = Vec::new();
        ciborium::into_writer(v, &mut b).unwrap();
        b
    }

    #[test]
    fn depth_and_items_are_counted() {
        let l = DecodeLimits {
            max_depth: 3,
            max_items: 10,
        };
        // [[[0]]]: depth 3, 4 items.
        assert_eq!(check(&[0x81, 0x81, 0x81, 0x00], &l), Ok(()));
        assert_eq!(
            check(&[0x81, 0x81, 0x81, 0x81, 0x00], &l),
            Err(LimitError::TooDeep { max: 3 })
        );
        // Indefinite arrays and tags nest too.
        assert_eq!(
            check(&[0x9f, 0xc1, 0x9f, 0x81, 0x00, 0xff, 0xff], &l),
            Err(LimitError::TooDeep { max: 3 })
        );
        let mut many = vec![0x8b]; // 11 elements: 12 items
        many.extend([0u8; 11]);
        assert_eq!(check(&many, &l), Err(LimitError::TooManyItems { max: 10 }));
        // A header promising 4 billion items with none present: passes to the decoder.
        assert_eq!(check(&[0x9a, 0xff, 0xff, 0xff, 0xff], &l), Ok(()));
        // Strings are skipped by their length, whatever they hold.
        let s = cbor(&ciborium::Value::Bytes(vec![0x81; 5000]));
        assert_eq!(check(&s, &l), Ok(()));
    }

    #[test]
    fn real_requests_pass_and_ids_are_peeked() {
        let r = crate::Request::new(42, "hello", &crate::ops::HelloArgs::current()).unwrap();
        let b = r.to_cbor().unwrap();
        assert_eq!(check(&b, &DecodeLimits::default()), Ok(()));
        assert_eq!(peek_id(&b), Some(42));
        assert_eq!(peek_id(&[0x81, 0x00]), None);
    }
}
