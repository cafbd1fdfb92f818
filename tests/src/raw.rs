//! The raw protocol client: hand-made CBOR requests and length-prefixed frames on a bare
//! socket ([`RawConn`]), for the wire tests that must send what the client library never would
//! (bad frames, unknown ops, requests before `hello`).

use crate::env::TestEnv;
use crate::util::WAIT;
use ciborium::Value;
use keyward_proto::{ErrorCode, Response, MAX_FRAME};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A CBOR map from text keys.
pub fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::Text((*k).into()), v.clone()))
            .collect(),
    )
}

pub fn text(s: &str) -> Value {
    Value::Text(s.into())
}

pub fn int(i: u64) -> Value {
    Value::Integer(i.into())
}

/// A request `{id, op, args}`.
pub fn request(id: u64, op: &str, args: Value) -> Value {
    map(&[("id", int(id)), ("op", text(op)), ("args", args)])
}

pub fn cbor(v: &Value) -> Vec<u8> {
    let mut b = Vec::new();
    ciborium::into_writer(v, &mut b).expect("cbor encode");
    b
}

/// A socket connection speaking hand-made frames, with read timeouts of [`WAIT`].
pub struct RawConn {
    pub stream: UnixStream,
}

/// What a read from a [`RawConn`] gave.
#[derive(Debug)]
pub enum RawRead {
    Frame(Response),
    /// The agent closed the connection (EOF, or a reset).
    Closed,
}

impl RawConn {
    pub fn connect(path: &Path) -> RawConn {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        RawConn { stream }
    }

    /// Write raw bytes (no framing).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Write one frame with `body`.
    pub fn send_body(&mut self, body: &[u8]) {
        let mut b = (body.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(body);
        self.write_raw(&b);
    }

    pub fn send(&mut self, v: &Value) {
        self.send_body(&cbor(v));
    }

    /// Read one response frame, or learn that the agent closed. Panics on a timeout.
    pub fn read(&mut self) -> RawRead {
        match keyward_proto::frame::read_blocking(&mut self.stream, MAX_FRAME) {
            Ok(Some(b)) => RawRead::Frame(
                Response::from_cbor(&b).unwrap_or_else(|e| panic!("bad response frame: {e}")),
            ),
            Ok(None) => RawRead::Closed,
            Err(keyward_proto::frame::FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("no answer from the agent within {WAIT:?}")
            }
            Err(_) => RawRead::Closed,
        }
    }

    /// Read one response; panics if the agent closed instead.
    pub fn recv(&mut self) -> Response {
        match self.read() {
            RawRead::Frame(r) => r,
            RawRead::Closed => panic!("the agent closed the connection instead of answering"),
        }
    }

    /// Send `v` and read one response.
    pub fn call(&mut self, v: &Value) -> Response {
        self.send(v);
        self.recv()
    }

    /// Say `hello` (protocol 1) and require success.
    pub fn hello(&mut self, id: u64) {
        let r = self.call(&request(id, "hello", map(&[("version", int(1))])));
        assert_eq!(r.id, Some(id));
        assert!(r.ok.is_some(), "hello failed: {:?}", r.err);
    }

    /// Expect the agent to close the connection (no further frame).
    pub fn expect_closed(&mut self) {
        match self.read() {
            RawRead::Closed => {}
            RawRead::Frame(r) => panic!("expected the agent to close, got {r:?}"),
        }
    }
}

/// The error code of a raw response, or a panic if it succeeded.
#[track_caller]
pub fn err_code(r: &Response) -> ErrorCode {
    r.err
        .as_ref()
        .unwrap_or_else(|| panic!("expected an error response, got {r:?}"))
        .code
}

impl TestEnv {
    /// A raw socket connection (no `hello` sent).
    pub fn raw(&self) -> RawConn {
        RawConn::connect(self.socket_path())
    }
}
