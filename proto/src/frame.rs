//! Framing: a 4-byte big-endian length, then that many bytes of one CBOR item.
//!
//! The length is checked against the limit before a single body byte is read, so an oversized
//! frame costs the reader four bytes, not a megabyte of allocation. This module knows nothing of
//! what the bytes mean.

use std::io;
use thiserror::Error;

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
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
pub fn read_blocking<R: io::Read>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
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
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(eof_is_truncation)?;
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
    ) -> Result<Option<Vec<u8>>, FrameError> {
        let mut hdr = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let n = r.read(&mut hdr[got..]).await?;
            if n == 0 {
                return if got == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            got += n;
        }
        let len = check_len(hdr, max)?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.map_err(eof_is_truncation)?;
        Ok(Some(body))
    }

    /// Write one frame (header and body in one buffer, so one syscall for small frames).
    pub async fn write<W: AsyncWrite + Unpin>(
        w: &mut W,
        body: &[u8],
        max: usize,
    ) -> Result<(), FrameError> {
        let hdr = header(body.len(), max)?;
        let mut buf = Vec::with_capacity(4 + body.len());
        buf.extend_from_slice(&hdr);
        buf.extend_from_slice(body);
        w.write_all(&buf).await?;
        w.flush().await?;
        Ok(())
    }
}

#[cfg(feature = "tokio")]
pub use async_io::{read, write};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_blocking() {
        let mut buf = Vec::new();
        write_blocking(&mut buf, b"hello", 16).unwrap();
        assert_eq!(&buf[..4], &[0, 0, 0, 5]);
        let mut r = &buf[..];
        assert_eq!(read_blocking(&mut r, 16).unwrap().unwrap(), b"hello");
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
        assert_eq!(read(&mut b, 16).await.unwrap().unwrap(), b"abc");
        assert!(read(&mut b, 16).await.unwrap().is_none());
    }
}
