//! Frame decoding (`keyward_proto::frame`), the first thing the agent does with a client's bytes.
//!
//! Input: one control byte, then the byte stream a client sends. The control byte picks how the
//! stream is cut into `read` calls (1..=16 bytes, or whole) and whether reads are interrupted
//! (`EINTR`), and which frame limit is in force (the real `MAX_FRAME`, or a small one so that
//! oversized frames are cheap to reach). Every frame read is then decoded the way the agent
//! (`Request::from_cbor`) and the client (`Response::from_cbor`) decode it.
//!
//! Invariants checked (a violation is a crash):
//! - a frame read is at most `max` bytes, and re-framing it with `write_blocking` gives back
//!   exactly the bytes of the stream it was read from;
//! - an oversized frame is refused after its 4-byte header, without reading any of its body;
//! - `Truncated` only when the stream really ends inside a frame; `Ok(None)` only at its end;
//! - a decoded request or response re-encodes and decodes to the same id, op / error.
#![no_main]

use keyward_proto::frame::{self, FrameError};
use keyward_proto::{Request, Response, MAX_FRAME};
use libfuzzer_sys::fuzz_target;
use std::io;

/// A reader over the fuzz input that hands out at most `chunk` bytes per call and, if asked,
/// fails every other call with `Interrupted`, as a socket may.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
    interrupt: bool,
    calls: u64,
}

impl io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.interrupt && self.calls.is_multiple_of(2) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn check_body(body: &[u8]) {
    // What the agent does with a frame: must answer, never panic.
    match Request::from_cbor(body) {
        Ok(req) => {
            // A parsed request re-encodes and parses back to itself (ids, op and args kept).
            let bytes = req.to_cbor().expect("a parsed request re-encodes");
            let again = Request::from_cbor(&bytes).expect("a re-encoded request parses");
            assert_eq!(again.id, req.id);
            assert_eq!(again.op, req.op);
            // No byte-level fixed point: see the note on ciborium's tag 2 in request.rs.
        }
        Err((id, err)) => {
            assert!(!err.message.is_empty(), "an error always says why");
            let _ = id;
        }
    }
    // What a client does with a frame.
    if let Ok(resp) = Response::from_cbor(body) {
        assert!(resp.ok.is_some() != resp.err.is_some());
        let b1 = resp.to_cbor().expect("a parsed response re-encodes");
        let r2 = Response::from_cbor(&b1).expect("a re-encoded response parses");
        assert_eq!((r2.id, &r2.err), (resp.id, &resp.err));
        assert_eq!(r2.ok.is_some(), resp.ok.is_some());
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, stream)) = input.split_first() else {
        return;
    };
    let chunk = match ctl & 0x0f {
        0 => usize::MAX,
        n => n as usize,
    };
    let interrupt = ctl & 0x10 != 0;
    // A small limit makes `TooLarge` reachable; the real one is what the agent uses.
    let max = if ctl & 0x20 != 0 { 64 } else { MAX_FRAME };
    let check_bodies = ctl & 0x40 == 0;

    let mut r = Chunked {
        data: stream,
        pos: 0,
        chunk,
        interrupt,
        calls: 0,
    };
    loop {
        let start = r.pos;
        match frame::read_blocking(&mut r, max) {
            Ok(None) => {
                assert_eq!(
                    start,
                    stream.len(),
                    "clean end only at the end of the stream"
                );
                assert_eq!(r.pos, stream.len());
                break;
            }
            Ok(Some(body)) => {
                assert!(body.len() <= max);
                let mut again = Vec::new();
                frame::write_blocking(&mut again, &body, max).expect("a frame read can be written");
                assert_eq!(
                    &again[..],
                    &stream[start..r.pos],
                    "re-framing gives the same bytes"
                );
                if check_bodies {
                    check_body(&body);
                }
            }
            Err(FrameError::TooLarge { len, max: m }) => {
                assert_eq!(m, max);
                assert!(len > max);
                assert_eq!(
                    r.pos,
                    start + 4,
                    "refused from the header alone, no body read"
                );
                let hdr: [u8; 4] = stream[start..start + 4].try_into().unwrap();
                assert_eq!(u32::from_be_bytes(hdr) as usize, len);
                assert!(frame::header(len, max).is_err());
                break;
            }
            Err(FrameError::Truncated) => {
                assert_eq!(
                    r.pos,
                    stream.len(),
                    "truncated only at the end of the stream"
                );
                let rest = &stream[start..];
                let complete = rest.len() >= 4 && {
                    let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                    rest.len() >= 4 + len
                };
                assert!(!complete, "a complete frame was reported truncated");
                break;
            }
            Err(e) => panic!("unexpected frame error from an in-memory reader: {e}"),
        }
    }
});
