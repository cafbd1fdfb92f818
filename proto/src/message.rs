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
    let mut w = WipingWriter(Vec::new());
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

/// A request: which operation, with what arguments. Its `args` are wiped when it is dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub op: String,
    pub args: Value,
}

impl Drop for Request {
    fn drop(&mut self) {
        wipe_value(&mut self.args);
    }
}

#[derive(Serialize)]
struct RequestWire<'a> {
    id: u64,
    op: &'a str,
    args: &'a Value,
}

impl Request {
    /// A request whose arguments are `args` serialized.
    pub fn new<A: Serialize>(id: u64, op: &str, args: &A) -> Result<Self, CodecError> {
        let args = Value::serialized(args).map_err(|e| CodecError::Encode(e.to_string()))?;
        Ok(Request {
            id,
            op: op.to_string(),
            args,
        })
    }

    pub fn to_cbor(&self) -> Result<Vec<u8>, CodecError> {
        to_cbor(&RequestWire {
            id: self.id,
            op: &self.op,
            args: &self.args,
        })
    }

    /// Parse a request frame with the default [`DecodeLimits`](crate::limits::DecodeLimits).
    pub fn from_cbor(bytes: &[u8]) -> Result<Request, (Option<u64>, ErrorBody)> {
        Self::from_cbor_limited(bytes, &crate::limits::DecodeLimits::default())
    }

    /// Parse a request frame, as the agent does: first a scan of the item heads against
    /// `limits` (nesting and item count: `invalid_request`, naming the id when it can be read),
    /// then the decoding. On failure, returns the id if one could be read (so the error response
    /// can name it) and the error to send.
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
        let v = cbor_value(bytes)
            .map_err(|e| (None, ErrorBody::new(ErrorCode::Malformed, e.to_string())))?;
        let Value::Map(entries) = v else {
            return Err((
                None,
                ErrorBody::new(ErrorCode::Malformed, "a request must be a CBOR map"),
            ));
        };
        let (mut id, mut op, mut args) = (None, None, None);
        let mut bad_id = false;
        let mut unknown = Vec::new();
        for (k, val) in entries {
            match k.as_text() {
                Some("id") => match val.as_integer().and_then(|i| u64::try_from(i).ok()) {
                    Some(i) => id = Some(i),
                    None => bad_id = true,
                },
                Some("op") => op = Some(val),
                Some("args") => args = Some(val),
                Some(other) => unknown.push(other.to_string()),
                None => unknown.push("(non-text key)".to_string()),
            }
        }
        let invalid = |id, msg: String| Err((id, ErrorBody::new(ErrorCode::InvalidRequest, msg)));
        if bad_id {
            return invalid(None, "`id` must be an unsigned integer".into());
        }
        let Some(id) = id else {
            return invalid(None, "the request has no `id`".into());
        };
        if !unknown.is_empty() {
            return invalid(
                Some(id),
                format!("unknown request fields: {}", unknown.join(", ")),
            );
        }
        let op = match op {
            Some(Value::Text(s)) => s,
            Some(_) => return invalid(Some(id), "`op` must be text".into()),
            None => return invalid(Some(id), "the request has no `op`".into()),
        };
        let args = match args {
            None => Value::Map(Vec::new()),
            Some(m @ Value::Map(_)) => m,
            Some(_) => return invalid(Some(id), "`args` must be a map".into()),
        };
        Ok(Request { id, op, args })
    }

    /// The arguments as the operation's typed argument struct. Unknown and mistyped fields are
    /// `invalid_args`; the message never quotes the values sent.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, ErrorBody> {
        self.args.deserialized().map_err(|e| {
            let ciborium::value::Error::Custom(text) = e;
            ErrorBody::new(
                ErrorCode::InvalidArgs,
                format!(
                    "invalid arguments for `{}`: {}",
                    self.op,
                    sanitize_serde_message(&text)
                ),
            )
        })
    }
}

/// A response: the request's id and either a result or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorBody>,
}

impl Response {
    pub fn ok<T: Serialize>(id: u64, result: &T) -> Result<Self, CodecError> {
        let v = Value::serialized(result).map_err(|e| CodecError::Encode(e.to_string()))?;
        Ok(Response {
            id: Some(id),
            ok: Some(v),
            err: None,
        })
    }

    pub fn err(id: Option<u64>, err: ErrorBody) -> Self {
        Response {
            id,
            ok: None,
            err: Some(err),
        }
    }

    pub fn to_cbor(&self) -> Result<Vec<u8>, CodecError> {
        to_cbor(self)
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
            args: Value::Map(vec![(
                Value::Text("pin".into()),
                Value::Integer(987654.into()),
            )]),
        };
        let e = r.args::<crate::ops::PinArgs>().unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgs);
        assert!(!e.message.contains("987654"), "{}", e.message);
        let r = Request {
            id: 1,
            op: "unlock".into(),
            args: Value::Map(vec![(
                Value::Text("pinn".into()),
                Value::Text("secret-ish".into()),
            )]),
        };
        let e = r.args::<crate::ops::PinArgs>().unwrap_err();
        assert!(!e.message.contains("secret-ish"), "{}", e.message);
        // The unknown field's name is kept: it is the client's own key, and the useful part.
        assert!(e.message.contains("unknown field `pinn`"), "{}", e.message);
    }

    #[test]
    fn response_needs_exactly_one_of_ok_and_err() {
        let both = Response {
            id: Some(1),
            ok: Some(Value::Map(vec![])),
            err: Some(ErrorBody::new(ErrorCode::Internal, "x")),
        };
        assert!(Response::from_cbor(&to_cbor(&both).unwrap()).is_err());
        let e = Response::err(None, ErrorBody::new(ErrorCode::FrameTooLarge, "big"));
        let back = Response::from_cbor(&e.to_cbor().unwrap()).unwrap();
        assert_eq!(back, e);
    }
}
