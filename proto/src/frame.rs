//! Framing: a 4-byte big-endian length, then that many bytes of one CBOR item.
//!
//! The length is checked against the limit before a single body byte is read, so an oversized
//! frame costs the reader four bytes, not a megabyte of allocation. A frame within the limit is
//! not allocated from its length either: the body is read in chunks of at most [`CHUNK`] bytes
//! and the buffer grows as bytes arrive, so a peer that announces a megabyte and sends a byte
//! costs about one chunk. When the buffer grows, the old allocation is wiped before it is freed,
//! and frames come back as [`Zeroizing`] buffers, wiped when dropped: frames carry PINs,
//! plaintexts and exported keys. This module knows nothing of what the bytes mean.

use std::io;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Most bytes a frame body's buffer grows by in one step (64 KiB).
pub const CHUNK: usize = 64 * 1024;

/// A frame body, wiped when dropped.
pub type FrameBuf = Zeroizing<Vec<u8>>;

/// Make room for `additional` more bytes in `buf` (never past `cap_hint` when that is larger
/// than what is needed), moving the contents to a new allocation and wiping the old one, so no
/// copy of a secret is left behind in freed memory by a reallocation.
pub fn reserve_wiping(buf: &mut Vec<u8>, additional: usize, cap_hint: usize) {
    let need = buf.len().saturating_add(additional);
    if buf.capacity() >= need {
        return;
    }
    let want = need.max(buf.capacity().saturating_mul(2)).max(64);
    let want = if cap_hint >= need {
        want.min(cap_hint)
    } else {
        want
    };
    let mut grown = Vec::with_capacity(want);
    grown.extend_from_slice(buf);
    buf.zeroize();
    *buf = grown;
}

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("the frame did not arrive whole within {0:?}")]
    Timeout(std::time::Duration),
    #[error("frame i/o failed: {0}")]
    Io(#[from] io::Error),
}

/// Encode a frame header for a body of `len` bytes.
pub fn header(len: usize, max: usize) -> Result<[u8; 4], FrameError> {
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    Ok(len32.to_be_bytes())
}

fn check_len(hdr: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(hdr) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

fn eof_is_truncation(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

/// Blocking read of one frame. `Ok(None)` is a clean end of stream between frames.
pub fn read_blocking<R: io::Read>(r: &mut R, max: usize) -> Result<Option<FrameBuf>, FrameError> {
    let mut hdr = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut hdr[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = check_len(hdr, max)?;
    let mut body = Zeroizing::new(Vec::with_capacity(len.min(CHUNK)));
    while body.len() < len {
        let start = body.len();
        let step = (len - start).min(CHUNK);
        reserve_wiping(&mut body, step, len);
        body.resize(start + step, 0);
        match r.read(&mut body[start..]) {
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => body.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => body.truncate(start),
            Err(e) => return Err(eof_is_truncation(e)),
        }
    }
    Ok(Some(body))
}

/// Blocking write of one frame.
pub fn write_blocking<W: io::Write>(w: &mut W, body: &[u8], max: usize) -> Result<(), FrameError> {
    let hdr = header(body.len(), max)?;
    w.write_all(&hdr)?;
    w.write_all(body)?;
    w.flush()?;
    Ok(())
}

#[cfg(feature = "tokio")]
mod async_io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Read one frame. `Ok(None)` is a clean end of stream between frames.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        max: usize,
    ) -> Result<Option<FrameBuf>, FrameError> {
        let mut hdr = [0u8; 4];
        let got = r.read(&mut hdr).await?;
        if got == 0 {
            return Ok(None);
        }
        rest(r, hdr, got, max).await.map(Some)
    }

    /// Read one frame, waiting as long as it takes for its first byte (an idle connection is
    /// fine) but no longer than `deadline` from the first byte to the last (a slow sender is
    /// cut off with [`FrameError::Timeout`]). Cancel-safe until the first byte has arrived.
    pub async fn read_with_deadline<R: AsyncRead + Unpin>(
        r: &mut R,
        max: usize,
        deadline: std::time::Duration,
    ) -> Result<Option<FrameBuf>, FrameError> {
        let mut hdr = [0u8; 4];
        let got = r.read(&mut hdr).await?;
        if got == 0 {
            return Ok(None);
        }
        match tokio::time::timeout(deadline, rest(r, hdr, got, max)).await {
            Ok(body) => body.map(Some),
            Err(_) => Err(FrameError::Timeout(deadline)),
        }
    }

    /// The rest of a frame whose first `got` header bytes are in `hdr`.
    async fn rest<R: AsyncRead + Unpin>(
        r: &mut R,
        mut hdr: [u8; 4],
        mut got: usize,
        max: usize,
    ) -> Result<FrameBuf, FrameError> {
        while got < 4 {
            let n = r.read(&mut hdr[got..]).await?;
            if n == 0 {
                return Err(FrameError::Truncated);
            }
            got += n;
        }
        let len = check_len(hdr, max)?;
        let mut body = Zeroizing::new(Vec::with_capacity(len.min(CHUNK)));
        while body.len() < len {
            let start = body.len();
            let step = (len - start).min(CHUNK);
            reserve_wiping(&mut body, step, len);
            body.resize(start + step, 0);
            let n = r.read(&mut body[start..]).await;
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    body.truncate(start);
                    return Err(eof_is_truncation(e));
                }
            };
            if n == 0 {
                return Err(FrameError::Truncated);
            }
            body.truncate(start + n);
        }
        Ok(body)
    }

    /// Write one frame (header and body in one buffer, so one syscall for small frames).
    pub async fn write<W: AsyncWrite + Unpin>(
        w: &mut W,
        body: &[u8],
        max: usize,
    ) -> Result<(), FrameError> {
        let hdr = header(body.len(), max)?;
        // A copy of the body: wiped when dropped, like the body itself should be by the caller.
        let mut buf = Zeroizing::new(Vec::with_capacity(4 + body.len()));
        buf.extend_from_slice(&hdr);
        buf.extend_from_slice(body);
        w.write_all(&buf).await?;
        w.flush().await?;
        Ok(())
    }
}

#[cfg(feature = "tokio")]
pub use async_io::{read, read_with_deadline, write};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_blocking() {
        let mut buf = Vec::new();
        write_blocking(&mut buf, b"hello", 16).unwrap();
        assert_eq!(&buf[..4], &[0, 0, 0, 5]);
        let mut r = &buf[..];
        assert_eq!(&read_blocking(&mut r, 16).unwrap().unwrap()[..], b"hello");
        assert!(read_blocking(&mut r, 16).unwrap().is_none());
    }

    #[test]
    fn oversized_is_refused_from_the_header() {
        // Only the header is present: the reader must refuse without waiting for the body.
        let hdr = (2u32 << 20).to_be_bytes();
        let mut r = &hdr[..];
        match read_blocking(&mut r, 1 << 20) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, 2 << 20);
                assert_eq!(max, 1 << 20);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let mut w = Vec::new();
        assert!(matches!(
            write_blocking(&mut w, &[0u8; 17], 16),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(w.is_empty(), "nothing written for a refused frame");
    }

    #[test]
    fn truncated_body_and_header() {
        let mut r: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read_blocking(&mut r, 16),
            Err(FrameError::Truncated)
        ));
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_blocking(&mut r, 16),
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn round_trip_async() {
        let (mut a, mut b) = tokio::io::duplex(64);
        write(&mut a, b"abc", 16).await.unwrap();
        drop(a);
        assert_eq!(&read(&mut b, 16).await.unwrap().unwrap()[..], b"abc");
        assert!(read(&mut b, 16).await.unwrap().is_none());
    }

    /// The buffer grows with what arrives, not with what the length prefix announces.
    #[tokio::test]
    async fn announced_length_is_not_allocated_up_front() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        a.write_all(&[7u8; 10]).await.unwrap();
        let reading = tokio::spawn(async move {
            read_with_deadline(&mut b, 1 << 20, std::time::Duration::from_millis(200)).await
        });
        assert!(matches!(
            reading.await.unwrap(),
            Err(FrameError::Timeout(_))
        ));
        let mut v = Vec::with_capacity(4);
        v.extend_from_slice(b"abcd");
        reserve_wiping(&mut v, 10, 100);
        assert_eq!(&v[..], b"abcd");
        assert!(v.capacity() >= 14 && v.capacity() <= 100);
    }

    #[test]
    fn a_large_frame_arrives_in_chunks() {
        let body: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut buf = Vec::new();
        write_blocking(&mut buf, &body, 1 << 20).unwrap();
        // A reader that hands out 1000 bytes at a time.
        struct Trickle<'a>(&'a [u8]);
        impl io::Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = out.len().min(1000).min(self.0.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let got = read_blocking(&mut Trickle(&buf), 1 << 20).unwrap().unwrap();
        assert_eq!(&got[..], &body[..]);
    }
}
