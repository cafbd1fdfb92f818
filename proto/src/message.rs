//! Request and response envelopes, and their CBOR encoding.
//!
//! A request is `{id, op, args}`; `args` is a map whose shape depends on `op` (see `ops`). A
//! response is `{id, ok: result}` or `{id, err: {code, message, ...}}`. Requests on one connection
//! may be pipelined: responses carry the request's `id` and may come back in any order. A response
//! to a frame that had no readable id (malformed CBOR, an oversized frame) carries `id: null`.

use crate::error::{ErrorBody, ErrorCode};
use ciborium::Value;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;

/// Encoding or decoding a message failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("CBOR encoding failed: {0}")]
    Encode(String),
    #[error("CBOR decoding failed: {0}")]
    Decode(String),
    #[error("malformed message: {0}")]
    Shape(String),
}

/// A `Vec` writer that wipes its old allocation whenever it grows (messages carry secrets).
struct WipingWriter(Vec<u8>);

impl std::io::Write for WipingWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        crate::frame::reserve_wiping(&mut self.0, b.len(), 0);
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encode any serializable message as one CBOR item. Growing the buffer leaves no copy behind;
/// callers holding secret-bearing messages wipe the result when done (see `frame`).
pub fn to_cbor<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    // Most messages fit: fewer regrowths (each of which copies and wipes the old buffer).
    let mut w = WipingWriter(Vec::with_capacity(256));
    ciborium::into_writer(msg, &mut w).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(w.0)
}

/// Overwrite every string and byte string in `v` (before it is dropped: a decoded request's
/// `args` may hold a PIN or a plaintext, a response's result a key).
pub fn wipe_value(v: &mut Value) {
    use zeroize::Zeroize;
    match v {
        Value::Text(s) => s.zeroize(),
        Value::Bytes(b) => b.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(wipe_value),
        Value::Map(m) => m.iter_mut().for_each(|(k, v)| {
            wipe_value(k);
            wipe_value(v);
        }),
        Value::Tag(_, inner) => wipe_value(inner),
        _ => {}
    }
}

/// Decode exactly one CBOR item from `bytes`; trailing bytes are an error.
pub fn cbor_value(bytes: &[u8]) -> Result<Value, CodecError> {
    let mut cursor = std::io::Cursor::new(bytes);
    let v: Value =
        ciborium::from_reader(&mut cursor).map_err(|e| CodecError::Decode(e.to_string()))?;
    if cursor.position() as usize != bytes.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes after the CBOR item",
            bytes.len() - cursor.position() as usize
        )));
    }
    Ok(v)
}

/// Serde's messages quote the offending value (`invalid type: string "1234"`), which could be a
/// PIN sent with the wrong type. Keep the shape of the message and drop quoted values.
pub fn sanitize_serde_message(msg: &str) -> String {
    // "unknown field `x`, expected ...": the field's name is the client's own key, not a value,
    // and naming it is the useful part of the message.
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((name, _)) = rest.split_once('`') {
            return format!("unknown field `{name}`");
        }
    }
    let mut out = String::with_capacity(msg.len());
    let mut in_quote: Option<char> = None;
    for ch in msg.chars() {
        match in_quote {
            Some(q) if ch == q => in_quote = None,
            Some(_) => {}
            None if ch == '`' || ch == '"' => {
                in_quote = Some(ch);
                out.push_str("(value)");
            }
            None => out.push(ch),
        }
    }
    out
}

/// A CBOR item head (major type, argument) in its shortest form, as ciborium writes it.
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

/// A request: which operation, with what arguments. Its `args` are wiped when it is dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub op: String,
    pub args: Args,
}

/// A request's arguments as they came: the bytes of one well-formed CBOR item (a map, for a
/// request the agent decoded). They are decoded once, straight into the operation's typed
/// struct ([`Request::args`]); the key id the policy check and the audit entry need is peeked
/// in place ([`Cbor::text_field`]).
pub type Args = Cbor;

/// One CBOR item kept as its bytes (a request's arguments, a response's encoded result), wiped
/// on drop (a PIN, a plaintext or a key may be in them) and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Cbor(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Cbor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cbor({} bytes)", self.0.len())
    }
}

impl Cbor {
    /// The empty map (a request without `args`).
    pub fn empty() -> Cbor {
        Cbor(zeroize::Zeroizing::new(vec![0xa0]))
    }

    /// `v` serialized (any serializable value; a request's args must be a map).
    pub fn serialized<A: Serialize>(v: &A) -> Result<Cbor, CodecError> {
        to_cbor(v).map(|b| Cbor(zeroize::Zeroizing::new(b)))
    }

    /// The CBOR bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The arguments as a generic CBOR value (for tests and tools; the agent never builds it).
    /// The caller wipes it (`wipe_value`) when it may hold a secret.
    pub fn to_value(&self) -> Result<Value, CodecError> {
        cbor_value(&self.0)
    }

    /// The text value of the first of `names` (by their order) that the map has with a text
    /// value, read in place; `None` when there is none (or these are not a map).
    pub fn text_field(&self, names: &[&str]) -> Option<std::borrow::Cow<'_, str>> {
        crate::scan::text_field(&self.0, names)
    }
}

impl Request {
    /// A request whose arguments are `args` serialized.
    pub fn new<A: Serialize>(id: u64, op: &str, args: &A) -> Result<Self, CodecError> {
        Ok(Request {
            id,
            op: op.to_string(),
            args: Args::serialized(args)?,
        })
    }

    /// The request as one CBOR map `{id, op, args}` (the args' bytes as they are).
    pub fn to_cbor(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(self.op.len() + self.args.0.len() + 24);
        out.push(0xa3);
        out.extend(*b"\x62id");
        head(&mut out, 0, self.id);
        out.extend(*b"\x62op");
        head(&mut out, 3, self.op.len() as u64);
        out.extend(self.op.as_bytes());
        out.extend(*b"\x64args");
        out.extend_from_slice(&self.args.0);
        Ok(out)
    }

    /// Parse a request frame with the default [`DecodeLimits`](crate::limits::DecodeLimits).
    pub fn from_cbor(bytes: &[u8]) -> Result<Request, (Option<u64>, ErrorBody)> {
        Self::from_cbor_limited(bytes, &crate::limits::DecodeLimits::default())
    }

    /// Parse a request frame, as the agent does: first a scan of the item heads against
    /// `limits` (nesting and item count: `invalid_request`, naming the id when it can be read),
    /// then a well-formedness check of the whole item (`malformed`), then the envelope's fields,
    /// read in place ([`crate::scan`]): no generic CBOR tree is built, and the arguments stay
    /// bytes until [`Request::args`] decodes them into the operation's struct. On failure,
    /// returns the id if one could be read (so the error response can name it) and the error to
    /// send.
    pub fn from_cbor_limited(
        bytes: &[u8],
        limits: &crate::limits::DecodeLimits,
    ) -> Result<Request, (Option<u64>, ErrorBody)> {
        if let Err(e) = crate::limits::check(bytes, limits) {
            return Err((
                crate::limits::peek_id(bytes),
                ErrorBody::new(ErrorCode::InvalidRequest, e.to_string()),
            ));
        }
        crate::scan::well_formed(bytes).map_err(|e| {
            let e = CodecError::Decode(e.to_string());
            (None, ErrorBody::new(ErrorCode::Malformed, e.to_string()))
        })?;
        let Some(env) = crate::scan::envelope(bytes) else {
            return Err((
                None,
                ErrorBody::new(ErrorCode::Malformed, "a request must be a CBOR map"),
            ));
        };
        let invalid = |id, msg: String| Err((id, ErrorBody::new(ErrorCode::InvalidRequest, msg)));
        let id = match env.id {
            Some(Ok(i)) => i,
            Some(Err(())) => return invalid(None, "`id` must be an unsigned integer".into()),
            None => return invalid(None, "the request has no `id`".into()),
        };
        if !env.unknown.is_empty() {
            return invalid(
                Some(id),
                format!("unknown request fields: {}", env.unknown.join(", ")),
            );
        }
        let op = match env.op {
            Some(Some(s)) => s.into_owned(),
            Some(None) => return invalid(Some(id), "`op` must be text".into()),
            None => return invalid(Some(id), "the request has no `op`".into()),
        };
        let args = match env.args {
            None => Args::empty(),
            Some((b, true)) => Cbor(zeroize::Zeroizing::new(b.to_vec())),
            Some((_, false)) => return invalid(Some(id), "`args` must be a map".into()),
        };
        Ok(Request { id, op, args })
    }

    /// The arguments as the operation's typed argument struct, decoded from their bytes in one
    /// pass. Unknown and mistyped fields are `invalid_args`; the message never quotes the values
    /// sent.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, ErrorBody> {
        use zeroize::Zeroize;
        // ciborium reads strings through this buffer (a PIN may pass): wiped after. Small, since
        // wiping is byte by byte (4 KiB, ciborium's default, cost 10k instructions a request);
        // longer strings and byte strings are read in chunks of it into their own buffers, and
        // only field names and enum variants must fit in it whole (none is near 256 bytes).
        let mut scratch = [0u8; 256];
        let r = ciborium::de::from_reader_with_buffer(&self.args.0[..], &mut scratch);
        scratch.zeroize();
        r.map_err(|e| {
            use ciborium::de::Error;
            let text = match e {
                Error::Semantic(_, text) => sanitize_serde_message(&text),
                Error::Syntax(at) => format!("CBOR not readable at byte {at}"),
                Error::Io(_) => "the arguments end early".to_string(),
                Error::RecursionLimitExceeded => "the arguments nest too deeply".to_string(),
            };
            ErrorBody::new(
                ErrorCode::InvalidArgs,
                format!("invalid arguments for `{}`: {text}", self.op),
            )
        })
    }
}

/// A response: the request's id and either a result or an error. A response the agent builds
/// ([`Response::ok`]) holds its result already encoded (`ok_cbor`), straight from the typed
/// result, with no generic CBOR value in between; a response a client decodes
/// ([`Response::from_cbor`]) holds it as a value (`ok`). [`Response::is_ok`] covers both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorBody>,
    /// The result as encoded by [`Response::ok`] (sent as the `ok` member).
    #[serde(skip)]
    pub ok_cbor: Option<Cbor>,
}

impl Response {
    /// A successful response: `result` encoded once, as the bytes of the `ok` member.
    pub fn ok<T: Serialize>(id: u64, result: &T) -> Result<Self, CodecError> {
        Ok(Response {
            id: Some(id),
            ok: None,
            err: None,
            ok_cbor: Some(Cbor::serialized(result)?),
        })
    }

    pub fn err(id: Option<u64>, err: ErrorBody) -> Self {
        Response {
            id,
            ok: None,
            err: Some(err),
            ok_cbor: None,
        }
    }

    /// Whether this is a result (not an error).
    pub fn is_ok(&self) -> bool {
        self.err.is_none() && (self.ok.is_some() || self.ok_cbor.is_some())
    }

    /// The text member `name` of the result map, if it has one (read in place when encoded).
    pub fn result_text(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        if let Some(c) = &self.ok_cbor {
            return c.text_field(&[name]);
        }
        let Some(Value::Map(m)) = &self.ok else {
            return None;
        };
        m.iter().find_map(|(k, v)| match (k, v) {
            (Value::Text(k), Value::Text(v)) if k == name => Some(v.as_str().into()),
            _ => None,
        })
    }

    /// Drop the result (wiping it: it may be a key or a plaintext).
    pub fn wipe_result(&mut self) {
        if let Some(mut v) = self.ok.take() {
            wipe_value(&mut v);
        }
        self.ok_cbor = None;
    }

    /// The response as one CBOR map: `{id, ok}` or `{id, err}` (an encoded result's bytes as they
    /// are, the same bytes the generic encoder writes for the value).
    pub fn to_cbor(&self) -> Result<Vec<u8>, CodecError> {
        let Some(ok) = self.ok_cbor.as_ref().filter(|_| self.err.is_none()) else {
            return to_cbor(self);
        };
        // Sized up front: the buffer never grows, so no copy of a result is left behind.
        let mut out = Vec::with_capacity(ok.0.len() + 16);
        out.push(0xa2);
        out.extend(*b"\x62id");
        match self.id {
            Some(id) => head(&mut out, 0, id),
            None => out.push(0xf6),
        }
        out.extend(*b"\x62ok");
        out.extend_from_slice(&ok.0);
        Ok(out)
    }

    /// Parse a response frame, as a client does. Exactly one of `ok` and `err` must be present.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut v = cbor_value(bytes)?;
        let r = v.deserialized::<Response>();
        wipe_value(&mut v);
        let r = r.map_err(|e| CodecError::Shape(e.to_string()))?;
        if r.ok.is_some() == r.err.is_some() {
            return Err(CodecError::Shape(
                "a response must have exactly one of `ok` and `err`".into(),
            ));
        }
        Ok(r)
    }

    /// The result as the operation's typed result, or the agent's error.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, ResponseError> {
        if let (Some(c), None) = (&self.ok_cbor, &self.err) {
            let mut scratch = [0u8; 256];
            let r = ciborium::de::from_reader_with_buffer(&c.0[..], &mut scratch)
                .map_err(|e| ResponseError::Codec(CodecError::Shape(e.to_string())));
            zeroize::Zeroize::zeroize(&mut scratch);
            return r;
        }
        match (self.ok, self.err) {
            (_, Some(e)) => Err(ResponseError::Agent(e)),
            (Some(mut v), None) => {
                // The result may be a key or a plaintext: the typed copy is the caller's to
                // keep (secret types wipe themselves), this one is wiped here.
                let r = v
                    .deserialized()
                    .map_err(|e| ResponseError::Codec(CodecError::Shape(e.to_string())));
                wipe_value(&mut v);
                r
            }
            (None, None) => Err(ResponseError::Codec(CodecError::Shape(
                "empty response".into(),
            ))),
        }
    }
}

/// A response that is not the expected result.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ResponseError {
    #[error("agent error {0}")]
    Agent(ErrorBody),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: &Value) -> Vec<u8> {
        to_cbor(v).unwrap()
    }

    #[test]
    fn request_round_trip() {
        let r = Request::new(7, "hello", &crate::ops::HelloArgs::current()).unwrap();
        let back = Request::from_cbor(&r.to_cbor().unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn requests_encode_as_the_generic_encoder_would_and_args_decode_once() {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: u64,
            op: &'a str,
            args: &'a crate::ops::ListArgs,
        }
        let args = crate::ops::ListArgs::default();
        for id in [0, 23, 24, 255, 256, 70_000, 5_000_000_000] {
            let r = Request::new(id, "kek.list", &args).unwrap();
            let generic = to_cbor(&Wire {
                id,
                op: "kek.list",
                args: &args,
            })
            .unwrap();
            assert_eq!(r.to_cbor().unwrap(), generic, "id {id}");
            let back = Request::from_cbor(&generic).unwrap();
            assert_eq!(back.args::<crate::ops::ListArgs>().unwrap(), args);
        }
        // No `args`: the empty map.
        let no_args = Value::Map(vec![
            (Value::Text("id".into()), Value::Integer(1.into())),
            (Value::Text("op".into()), Value::Text("lock".into())),
        ]);
        let r = Request::from_cbor(&frame(&no_args)).unwrap();
        assert_eq!(r.args, Args::empty());
        // `args` that are not a map, an `op` that is not text.
        let bad = |k: &str, v: Value| {
            let mut m = vec![(Value::Text("id".into()), Value::Integer(2.into()))];
            if k != "op" {
                m.push((Value::Text("op".into()), Value::Text("lock".into())));
            }
            m.push((Value::Text(k.into()), v));
            Request::from_cbor(&frame(&Value::Map(m))).unwrap_err()
        };
        let (id, e) = bad("args", Value::Array(vec![]));
        assert_eq!((id, e.code), (Some(2), ErrorCode::InvalidRequest));
        let (id, e) = bad("op", Value::Integer(3.into()));
        assert_eq!((id, e.code), (Some(2), ErrorCode::InvalidRequest));
        // Not well-formed inside the args (text that is not UTF-8): malformed, as before any
        // typed decoding.
        let mut b = Request::new(
            3,
            "kek.list",
            &Value::Map(vec![(
                Value::Text("after".into()),
                Value::Text("ab".into()),
            )]),
        )
        .unwrap()
        .to_cbor()
        .unwrap();
        let n = b.len();
        b[n - 1] = 0xff;
        assert_eq!(
            Request::from_cbor(&b).unwrap_err().1.code,
            ErrorCode::Malformed
        );
    }

    #[test]
    fn malformed_and_shapeless_requests() {
        let (id, e) = Request::from_cbor(&[0xff, 0x00]).unwrap_err();
        assert_eq!((id, e.code), (None, ErrorCode::Malformed));
        let (_, e) = Request::from_cbor(&frame(&Value::Integer(3.into()))).unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed);
        let no_id = Value::Map(vec![(Value::Text("op".into()), Value::Text("x".into()))]);
        let (id, e) = Request::from_cbor(&frame(&no_id)).unwrap_err();
        assert_eq!((id, e.code), (None, ErrorCode::InvalidRequest));
        let extra = Value::Map(vec![
            (Value::Text("id".into()), Value::Integer(4.into())),
            (Value::Text("op".into()), Value::Text("hello".into())),
            (Value::Text("evil".into()), Value::Bool(true)),
        ]);
        let (id, e) = Request::from_cbor(&frame(&extra)).unwrap_err();
        assert_eq!((id, e.code), (Some(4), ErrorCode::InvalidRequest));
        assert!(e.message.contains("evil"));
    }

    #[test]
    fn limits_are_checked_before_decoding() {
        let mut deep = vec![0x81u8; 40];
        deep.push(0);
        let r = Request::new(
            5,
            "kek.list",
            &Value::Map(vec![(
                Value::Text("x".into()),
                ciborium::from_reader::<Value, _>(&deep[..]).unwrap(),
            )]),
        )
        .unwrap();
        let (id, e) = Request::from_cbor(&r.to_cbor().unwrap()).unwrap_err();
        assert_eq!((id, e.code), (Some(5), ErrorCode::InvalidRequest));
        assert!(e.message.contains("nested"), "{}", e.message);
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut b = Request::new(1, "lock", &crate::ops::Empty {})
            .unwrap()
            .to_cbor()
            .unwrap();
        b.push(0);
        assert_eq!(
            Request::from_cbor(&b).unwrap_err().1.code,
            ErrorCode::Malformed
        );
    }

    #[test]
    fn invalid_args_never_quote_values() {
        // A PIN sent as a number: the error must not echo it.
        let r = Request {
            id: 1,
            op: "unlock".into(),
            args: Args::serialized(&Value::Map(vec![(
                Value::Text("pin".into()),
                Value::Integer(987654.into()),
            )]))
            .unwrap(),
        };
        let e = r.args::<crate::ops::PinArgs>().unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgs);
        assert!(!e.message.contains("987654"), "{}", e.message);
        let r = Request {
            id: 1,
            op: "unlock".into(),
            args: Args::serialized(&Value::Map(vec![(
                Value::Text("pinn".into()),
                Value::Text("secret-ish".into()),
            )]))
            .unwrap(),
        };
        let e = r.args::<crate::ops::PinArgs>().unwrap_err();
        assert!(!e.message.contains("secret-ish"), "{}", e.message);
        // The unknown field's name is kept: it is the client's own key, and the useful part.
        assert!(e.message.contains("unknown field `pinn`"), "{}", e.message);
    }

    #[test]
    fn encoded_results_are_the_bytes_the_generic_encoder_writes() {
        let list = crate::ops::KeyList {
            keys: vec![],
            next: None,
        };
        let created = Value::Map(vec![
            (Value::Text("id".into()), Value::Text("k-1".into())),
            (Value::Text("n".into()), Value::Bytes(vec![0; 300])),
        ]);
        for id in [0, 24, 70_000, u64::MAX] {
            let r = Response::ok(id, &created).unwrap();
            let generic = Response {
                id: Some(id),
                ok: Some(created.clone()),
                err: None,
                ok_cbor: None,
            };
            assert_eq!(r.to_cbor().unwrap(), to_cbor(&generic).unwrap(), "id {id}");
            assert!(r.is_ok() && generic.is_ok());
            assert_eq!(r.result_text("id").as_deref(), Some("k-1"));
            assert_eq!(generic.result_text("id").as_deref(), Some("k-1"));
            assert_eq!(r.result_text("n"), None);
            let back = Response::from_cbor(&r.to_cbor().unwrap()).unwrap();
            assert_eq!(back.ok, Some(created.clone()));
            let l = Response::ok(id, &list).unwrap();
            let typed: crate::ops::KeyList = l.clone().into_result().unwrap();
            assert_eq!(typed, list);
            let typed: crate::ops::KeyList = Response::from_cbor(&l.to_cbor().unwrap())
                .unwrap()
                .into_result()
                .unwrap();
            assert_eq!(typed, list);
        }
        let mut r = Response::ok(1, &created).unwrap();
        r.wipe_result();
        assert!(!r.is_ok() && r.ok_cbor.is_none());
        let e = Response::err(None, ErrorBody::new(ErrorCode::Malformed, "m"));
        assert!(!e.is_ok());
    }

    #[test]
    fn response_needs_exactly_one_of_ok_and_err() {
        let both = Response {
            id: Some(1),
            ok: Some(Value::Map(vec![])),
            err: Some(ErrorBody::new(ErrorCode::Internal, "x")),
            ok_cbor: None,
        };
        assert!(Response::from_cbor(&to_cbor(&both).unwrap()).is_err());
        let e = Response::err(None, ErrorBody::new(ErrorCode::FrameTooLarge, "big"));
        let back = Response::from_cbor(&e.to_cbor().unwrap()).unwrap();
        assert_eq!(back, e);
    }
}
