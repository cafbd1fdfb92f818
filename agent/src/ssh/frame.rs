//! SSH agent framing: a 4-byte big-endian length, then that many bytes (type byte + payload).
//!
//! Our own, not `ssh-agent-lib`'s codec: a frame over [`MAX_SSH_FRAME`] is refused from its
//! length, before any of it is read or allocated. Once a frame's first byte has arrived, the
//! server gives the rest a deadline; an idle connection has none. The server reads with
//! [`Reader::next_blocking`] and writes with [`write_blocking`] (blocking std sockets, one OS
//! thread per connection); the async [`Reader::next`], [`read`] and [`read_with_deadline`] serve
//! the fuzz target and tests. This module must never allocate from an unchecked length, and never
//! resynchronise a stream after a bad frame (the caller closes it).

use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::{Zeroize, Zeroizing};

/// The largest frame read or written: 256 KiB (OpenSSH's own limit is the same).
pub const MAX_SSH_FRAME: usize = 256 * 1024;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame (no message type)")]
    Empty,
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    #[error("the frame did not arrive whole within {} ms of its first byte", .0.as_millis())]
    Timeout(Duration),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Read one frame; `Ok(None)` on a clean end of stream between frames. No deadline.
pub async fn read<R: AsyncRead + Unpin>(rd: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    read_inner(rd, None).await
}

/// Read one frame, waiting as long as it takes for its first byte (idle SSH connections stay
/// open: clients keep theirs) but no longer than `deadline` for the rest once it has begun (a
/// slowloris is cut off with [`FrameError::Timeout`]).
pub async fn read_with_deadline<R: AsyncRead + Unpin>(
    rd: &mut R,
    deadline: Duration,
) -> Result<Option<Vec<u8>>, FrameError> {
    read_inner(rd, Some(deadline)).await
}

async fn read_inner<R: AsyncRead + Unpin>(
    rd: &mut R,
    deadline: Option<Duration>,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let got = rd.read(&mut len).await?;
    if got == 0 {
        return Ok(None);
    }
    let rest = rest(rd, len, got);
    match deadline {
        None => rest.await.map(Some),
        Some(d) => match tokio::time::timeout(d, rest).await {
            Ok(body) => body.map(Some),
            Err(_) => Err(FrameError::Timeout(d)),
        },
    }
}

/// The rest of a frame whose first `got` length bytes are in `len`.
async fn rest<R: AsyncRead + Unpin>(
    rd: &mut R,
    mut len: [u8; 4],
    mut got: usize,
) -> Result<Vec<u8>, FrameError> {
    while got < 4 {
        let n = rd.read(&mut len[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated);
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_SSH_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_SSH_FRAME,
        });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(body)
}

/// Bytes read at most per `read` call while no frame length is known, or while much of one is
/// still to come: buffers grow as bytes arrive, never from a length prefix.
const CHUNK: usize = 16 * 1024;

/// A connection's frame reader: one `read` call usually brings a whole request (and tells tokio
/// the socket is drained, so no extra `read` that would only say "empty" is made before the
/// next request). Frames are taken from its buffer in order; bytes after a frame stay for the
/// next one. The buffer is wiped as frames are taken and when the reader is dropped (`ssh-add`
/// sends private keys).
#[derive(Default)]
pub struct Reader {
    buf: Zeroizing<Vec<u8>>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    /// Bytes of a further frame are already held (the client sent ahead).
    pub fn pending(&self) -> bool {
        self.start != self.end
    }

    /// The next frame: as long as it takes for its first byte (idle connections stay open), then
    /// at most `deadline` for the rest ([`FrameError::Timeout`]). `Ok(None)`: a clean end of
    /// stream between frames.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        deadline: Duration,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, FrameError> {
        if let Some(f) = self.take()? {
            return Ok(Some(f));
        }
        if self.start == self.end {
            if self.fill(rd).await? == 0 {
                return Ok(None);
            }
            if let Some(f) = self.take()? {
                return Ok(Some(f));
            }
        }
        let rest = async {
            loop {
                if self.fill(rd).await? == 0 {
                    return Err(FrameError::Truncated);
                }
                if let Some(f) = self.take()? {
                    return Ok(f);
                }
            }
        };
        match tokio::time::timeout(deadline, rest).await {
            Ok(f) => f.map(Some),
            Err(_) => Err(FrameError::Timeout(deadline)),
        }
    }

    /// The announced length of the frame at the head of the buffer, checked.
    fn head_len(&self) -> Result<Option<usize>, FrameError> {
        let Some(hdr) = self.buf.get(self.start..self.start + 4) else {
            return Ok(None);
        };
        if self.end - self.start < 4 {
            return Ok(None);
        }
        let mut b = [0u8; 4];
        b.copy_from_slice(hdr);
        let len = u32::from_be_bytes(b) as usize;
        if len > MAX_SSH_FRAME {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_SSH_FRAME,
            });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        Ok(Some(len))
    }

    /// A whole frame from the buffer, if one is there.
    fn take(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>, FrameError> {
        let Some(len) = self.head_len()? else {
            return Ok(None);
        };
        if self.end - self.start < 4 + len {
            return Ok(None);
        }
        let (from, to) = (self.start + 4, self.start + 4 + len);
        let body = Zeroizing::new(self.buf[from..to].to_vec());
        self.buf[self.start..to].zeroize();
        self.start = to;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(body))
    }

    /// The blocking twin of [`Reader::next`], for a connection served on its own OS thread
    /// (`ssh::server`): the same buffering and checks, with std's blocking reads. An idle wait
    /// has no timeout; once a frame has begun, the socket's read timeout (`SO_RCVTIMEO`) is set
    /// to what is left of `deadline` for each further read, and cleared again after the frame
    /// (so a request that arrives whole, the usual case, costs one `read` and no `setsockopt`).
    pub fn next_blocking(
        &mut self,
        rd: &std::os::unix::net::UnixStream,
        deadline: Duration,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, FrameError> {
        if let Some(f) = self.take()? {
            return Ok(Some(f));
        }
        if self.start == self.end {
            if self.fill_blocking(rd)? == 0 {
                return Ok(None);
            }
            if let Some(f) = self.take()? {
                return Ok(Some(f));
            }
        }
        let until = std::time::Instant::now() + deadline;
        let rest = (|| loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(FrameError::Timeout(deadline));
            }
            rd.set_read_timeout(Some(left))?;
            match self.fill_blocking(rd) {
                Ok(0) => return Err(FrameError::Truncated),
                Ok(_) => {}
                Err(FrameError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(FrameError::Timeout(deadline))
                }
                Err(e) => return Err(e),
            }
            if let Some(f) = self.take()? {
                return Ok(f);
            }
        })();
        rd.set_read_timeout(None)?;
        rest.map(Some)
    }

    /// One blocking `read` into the buffer (retried on EINTR); 0 at end of stream.
    fn fill_blocking(
        &mut self,
        mut rd: &std::os::unix::net::UnixStream,
    ) -> Result<usize, FrameError> {
        use std::io::Read;
        self.make_room()?;
        let n = loop {
            match rd.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        self.end += n;
        Ok(n)
    }

    /// One `read` into the buffer (after moving unread bytes to its front); 0 at end of stream.
    async fn fill<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<usize, FrameError> {
        self.make_room()?;
        let n = rd.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Move unread bytes to the front of the buffer and make room for the next `read`: the rest
    /// of a known frame (by CHUNKs), else one CHUNK.
    fn make_room(&mut self) -> Result<(), FrameError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            let (old_end, new_end) = (self.end, self.end - self.start);
            self.buf[new_end..old_end].zeroize();
            self.end = new_end;
            self.start = 0;
        }
        let want = match self.head_len()? {
            Some(len) => (4 + len - self.end).min(CHUNK),
            None => CHUNK,
        };
        if self.buf.len() < self.end + want {
            let mut bigger = Zeroizing::new(vec![0u8; self.end + want]);
            bigger[..self.end].copy_from_slice(&self.buf[..self.end]);
            self.buf = bigger;
        }
        Ok(())
    }
}

/// Write one frame (length prefix and body in one write).
pub async fn write<W: AsyncWrite + Unpin>(wr: &mut W, body: &[u8]) -> Result<(), FrameError> {
    if body.len() > MAX_SSH_FRAME {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_SSH_FRAME,
        });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    wr.write_all(&buf).await?;
    Ok(())
}

/// Write one frame (length prefix and body in one `write`) on a blocking socket whose write
/// timeout (`SO_SNDTIMEO`) is already `deadline` (the server sets it once per connection), and
/// within `deadline` overall: should the answer go out in pieces, each further `write` gets only
/// what is left ([`FrameError::Timeout`] when nothing is). The usual answer costs one `write`.
pub fn write_blocking(
    mut wr: &std::os::unix::net::UnixStream,
    body: &[u8],
    deadline: Duration,
) -> Result<(), FrameError> {
    use std::io::Write;
    if body.len() > MAX_SSH_FRAME {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_SSH_FRAME,
        });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    // A clock read (vDSO, no syscall) so a piecewise answer cannot take more than `deadline`.
    let until = std::time::Instant::now() + deadline;
    let mut shortened = false;
    let mut sent = 0;
    let result = loop {
        match wr.write(&buf[sent..]) {
            Ok(0) => break Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break Err(FrameError::Timeout(deadline))
            }
            Err(e) => break Err(e.into()),
        }
        if sent == buf.len() {
            break Ok(());
        }
        // Partway: the rest gets what is left of the deadline.
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break Err(FrameError::Timeout(deadline));
        }
        if let Err(e) = wr.set_write_timeout(Some(left)) {
            break Err(e.into());
        }
        shortened = true;
    };
    if shortened && result.is_ok() {
        wr.set_write_timeout(Some(deadline))?;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lengths_are_checked_before_reading() {
        let mut ok: &[u8] = &[0, 0, 0, 1, 11];
        assert_eq!(read(&mut ok).await.unwrap(), Some(vec![11]));
        let mut eof: &[u8] = &[];
        assert!(read(&mut eof).await.unwrap().is_none());
        let mut big: &[u8] = &[0, 4, 0, 1];
        assert!(matches!(
            read(&mut big).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read(&mut huge).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut short: &[u8] = &[0, 0, 0, 5, 11];
        assert!(matches!(read(&mut short).await, Err(FrameError::Truncated)));
        let mut half: &[u8] = &[0, 0];
        assert!(matches!(read(&mut half).await, Err(FrameError::Truncated)));
        let mut empty: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(read(&mut empty).await, Err(FrameError::Empty)));
    }

    #[tokio::test]
    async fn a_begun_frame_has_a_deadline_an_idle_stream_none() {
        let (mut a, mut b) = tokio::io::duplex(64);
        // Half a length prefix, then nothing: cut off at the deadline.
        b.write_all(&[0, 0]).await.unwrap();
        let d = Duration::from_millis(50);
        assert!(matches!(
            read_with_deadline(&mut a, d).await,
            Err(FrameError::Timeout(_))
        ));
        // Idle for longer than the deadline, then a whole frame: read.
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(120)).await;
            b.write_all(&[0, 0, 0, 1, 11]).await.unwrap();
            b
        });
        assert_eq!(read_with_deadline(&mut a, d).await.unwrap(), Some(vec![11]));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn the_reader_splits_and_joins_frames() {
        let d = Duration::from_millis(200);
        // Two frames in one read, then one in three pieces.
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        b.write_all(&[0, 0, 0, 1, 11, 0, 0, 0, 2, 13, 14])
            .await
            .unwrap();
        let mut r = Reader::new();
        assert_eq!(&r.next(&mut a, d).await.unwrap().unwrap()[..], &[11]);
        assert_eq!(&r.next(&mut a, d).await.unwrap().unwrap()[..], &[13, 14]);
        let big = vec![7u8; 100_000];
        let mut f = (big.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&big);
        let writer = tokio::spawn(async move {
            for piece in f.chunks(40_000) {
                b.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            b
        });
        assert_eq!(r.next(&mut a, d).await.unwrap().unwrap().len(), 100_000);
        let b = writer.await.unwrap();
        drop(b);
        assert!(r.next(&mut a, d).await.unwrap().is_none());
        // Bad lengths, a truncated frame and a slow one.
        for (bytes, want) in [
            (vec![0, 4, 0, 1], "TooLarge"),
            (vec![0, 0, 0, 0], "Empty"),
            (vec![0, 0, 0, 5, 1], "Truncated"),
        ] {
            let (mut a, mut b) = tokio::io::duplex(64);
            b.write_all(&bytes).await.unwrap();
            drop(b);
            let e = Reader::new().next(&mut a, d).await.unwrap_err();
            assert!(format!("{e:?}").starts_with(want), "{e:?}");
        }
        let (mut a, mut b) = tokio::io::duplex(64);
        b.write_all(&[0, 0, 0, 5, 1]).await.unwrap();
        let e = Reader::new().next(&mut a, d).await.unwrap_err();
        assert!(matches!(e, FrameError::Timeout(_)), "{e:?}");
    }

    /// The blocking reader (one OS thread per SSH connection) splits and joins frames as the
    /// async one does, keeps an idle connection open past the deadline, and cuts off a frame
    /// that stops halfway.
    #[test]
    fn the_blocking_reader_splits_joins_and_times_out() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let d = Duration::from_millis(200);
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[0, 0, 0, 1, 11, 0, 0, 0, 2, 13, 14]).unwrap();
        let mut r = Reader::new();
        assert_eq!(&r.next_blocking(&a, d).unwrap().unwrap()[..], &[11]);
        assert_eq!(&r.next_blocking(&a, d).unwrap().unwrap()[..], &[13, 14]);
        // A big frame in pieces, after an idle wait longer than the deadline.
        let big = vec![7u8; 100_000];
        let mut f = (big.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&big);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            for piece in f.chunks(40_000) {
                b.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            b
        });
        assert_eq!(r.next_blocking(&a, d).unwrap().unwrap().len(), 100_000);
        drop(writer.join().unwrap());
        assert!(r.next_blocking(&a, d).unwrap().is_none());
        for (bytes, want) in [
            (vec![0, 4, 0, 1], "TooLarge"),
            (vec![0xff, 0xff, 0xff, 0xff], "TooLarge"),
            (vec![0, 0, 0, 0], "Empty"),
            (vec![0, 0, 0, 5, 1], "Truncated"),
            (vec![0, 0], "Truncated"),
        ] {
            let (a, mut b) = UnixStream::pair().unwrap();
            b.write_all(&bytes).unwrap();
            drop(b);
            let e = Reader::new().next_blocking(&a, d).unwrap_err();
            assert!(format!("{e:?}").starts_with(want), "{bytes:?}: {e:?}");
        }
        // Half a frame, then nothing: Timeout after about the deadline, not before.
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[0, 0, 0, 5, 1]).unwrap();
        let t = std::time::Instant::now();
        let e = Reader::new().next_blocking(&a, d).unwrap_err();
        assert!(matches!(e, FrameError::Timeout(_)), "{e:?}");
        assert!(t.elapsed() >= d, "{:?}", t.elapsed());
        // After a frame that needed the deadline, an idle wait has none again.
        let (a, mut b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            b.write_all(&[0, 0, 0, 2, 1]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            b.write_all(&[2]).unwrap();
            std::thread::sleep(Duration::from_millis(400));
            b.write_all(&[0, 0, 0, 1, 3]).unwrap();
            b
        });
        let mut r = Reader::new();
        assert_eq!(&r.next_blocking(&a, d).unwrap().unwrap()[..], &[1, 2]);
        assert_eq!(&r.next_blocking(&a, d).unwrap().unwrap()[..], &[3]);
        drop(writer.join().unwrap());
    }

    /// A blocking write is one frame, refuses an oversized answer, and gives up with Timeout
    /// when the client does not take its answer.
    #[test]
    fn the_blocking_write_has_a_deadline() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        let d = Duration::from_millis(200);
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_write_timeout(Some(d)).unwrap();
        write_blocking(&a, &[14, 1, 2], d).unwrap();
        let mut got = [0u8; 7];
        b.read_exact(&mut got).unwrap();
        assert_eq!(got, [0, 0, 0, 3, 14, 1, 2]);
        assert!(matches!(
            write_blocking(&a, &vec![0; MAX_SSH_FRAME + 1], d),
            Err(FrameError::TooLarge { .. })
        ));
        // Nobody reads b: the socket buffer fills and the write stops at the deadline.
        let t = std::time::Instant::now();
        let e = loop {
            if let Err(e) = write_blocking(&a, &vec![5; MAX_SSH_FRAME], d) {
                break e;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "never blocked");
        };
        assert!(matches!(e, FrameError::Timeout(_)), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(10));
        drop(b);
    }
}
