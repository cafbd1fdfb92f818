//! Streaming encryption through the agent: data of any size in constant memory.
//!
//! The agent makes a data key (`datakey.create`) and wraps it under a DEK; this module encrypts
//! locally in the streaming format of [`keyward_envelope::stream`] (whose header carries the
//! wrapped key), and for decryption reads the header and has the agent unwrap the key
//! (`datakey.open`). Adapters:
//! - blocking `std::io`: [`Client::encrypt_writer`] gives an [`EncryptWriter`] (call
//!   [`EncryptWriter::finish`]), [`Client::decrypt_reader`] a [`DecryptReader`];
//! - tokio: [`Client::async_encrypt_writer`] gives an [`AsyncEncryptWriter`] (`shutdown()` writes
//!   the last chunk), [`Client::async_decrypt_reader`] an [`AsyncDecryptReader`].
//!
//! A reader releases each chunk's plaintext once its tag verified, but a stream cut short is only
//! known at its end: output must not be trusted until the reader reached end of file without an
//! error. This module must never return unverified plaintext, write a stream without its last
//! chunk when `finish`/`shutdown` succeeded, or keep a data key outside [`StreamKey`] (zeroized on
//! drop).

use crate::{Client, ClientError};
use keyward_envelope::stream::{
    ChunkOpener, ChunkSealer, Header, StreamError, FIXED_HEADER_LEN, KEY_LEN, MAGIC, TAG_LEN,
};
pub use keyward_envelope::stream::{
    DecryptReader, EncryptWriter, StreamError as Error, DEFAULT_CHUNK,
};
use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use zeroize::Zeroizing;

/// The [`StreamError`] inside an `io::Error` an adapter returned, if it is one.
pub fn stream_error(e: &std::io::Error) -> Option<&StreamError> {
    StreamError::from_io(e)
}

/// A data key in memory: zeroized on drop, never printed.
pub struct StreamKey(Zeroizing<[u8; KEY_LEN]>);

impl StreamKey {
    fn from_secret(op: &str, bytes: &[u8]) -> Result<StreamKey, ClientError> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| ClientError::Protocol {
            op: op.into(),
            detail: format!("a data key of {} bytes, not {KEY_LEN}", bytes.len()),
        })?;
        Ok(StreamKey(Zeroizing::new(arr)))
    }

    /// The key's bytes.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamKey(..)")
    }
}

fn dek_uuid(op: &str, id: &str) -> Result<uuid::Uuid, ClientError> {
    uuid::Uuid::parse_str(id).map_err(|_| ClientError::Protocol {
        op: op.into(),
        detail: "the DEK id is not a UUID".into(),
    })
}

impl Client {
    /// A new stream's header and data key for `dek` (`datakey.create`).
    pub async fn stream_start(
        &self,
        dek: &str,
        chunk_size: u32,
    ) -> Result<(Header, StreamKey), ClientError> {
        let dk = self.datakey_create(dek).await?;
        let key = StreamKey::from_secret("datakey.create", dk.key.expose())?;
        let id = dek_uuid("datakey.create", &dk.dek)?;
        let header = Header::new(*id.as_bytes(), dk.version, &dk.wrapped, chunk_size)?;
        Ok((header, key))
    }

    /// The data key of a stream whose header was read (`datakey.open`).
    pub async fn stream_key(&self, header: &Header) -> Result<StreamKey, ClientError> {
        let dek = uuid::Uuid::from_bytes(header.dek_id()).to_string();
        let key = self
            .datakey_open(&dek, header.dek_version(), header.wrapped_key())
            .await?;
        StreamKey::from_secret("datakey.open", key.expose())
    }

    /// Encrypt into `inner` under `dek`: the header is written now, each chunk as it fills, and
    /// the last chunk by [`EncryptWriter::finish`].
    pub async fn encrypt_writer<W: Write>(
        &self,
        dek: &str,
        inner: W,
    ) -> Result<EncryptWriter<W>, ClientError> {
        let (header, key) = self.stream_start(dek, DEFAULT_CHUNK).await?;
        Ok(EncryptWriter::new(inner, key.expose(), &header)?)
    }

    /// Decrypt the stream `inner` holds: reads its header now and has the agent open its key.
    pub async fn decrypt_reader<R: Read>(
        &self,
        mut inner: R,
    ) -> Result<DecryptReader<R>, ClientError> {
        let header = Header::read_from(&mut inner)?;
        let key = self.stream_key(&header).await?;
        Ok(DecryptReader::new(inner, key.expose(), &header)?)
    }

    /// [`Client::encrypt_writer`] for tokio writers.
    pub async fn async_encrypt_writer<W: AsyncWrite + Unpin>(
        &self,
        dek: &str,
        inner: W,
    ) -> Result<AsyncEncryptWriter<W>, ClientError> {
        let (header, key) = self.stream_start(dek, DEFAULT_CHUNK).await?;
        Ok(AsyncEncryptWriter::new(inner, key.expose(), &header)?)
    }

    /// [`Client::decrypt_reader`] for tokio readers.
    pub async fn async_decrypt_reader<R: AsyncRead + Unpin>(
        &self,
        mut inner: R,
    ) -> Result<AsyncDecryptReader<R>, ClientError> {
        let header = read_header_async(&mut inner).await?;
        let key = self.stream_key(&header).await?;
        Ok(AsyncDecryptReader::new(inner, key.expose(), &header)?)
    }
}

/// Read a stream header from a tokio reader (exactly its bytes).
pub async fn read_header_async<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, StreamError> {
    async fn exact<R: AsyncRead + Unpin>(
        r: &mut R,
        buf: &mut [u8],
        eof: StreamError,
    ) -> Result<(), StreamError> {
        match r.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(eof),
            Err(e) => Err(StreamError::Io(e)),
        }
    }
    let mut fixed = [0u8; FIXED_HEADER_LEN];
    let (magic, rest) = fixed.split_at_mut(MAGIC.len());
    exact(r, magic, StreamError::NotAStream).await?;
    if *magic != MAGIC {
        return Err(StreamError::NotAStream);
    }
    let (version, rest) = rest.split_at_mut(1);
    exact(r, version, StreamError::TruncatedHeader).await?;
    // Checked (version, then lengths) by the parser below before it reads any further.
    if version[0] != keyward_envelope::stream::VERSION {
        return Err(StreamError::UnsupportedVersion(version[0]));
    }
    exact(r, rest, StreamError::TruncatedHeader).await?;
    let len = usize::from(u16::from_be_bytes([
        fixed[FIXED_HEADER_LEN - 2],
        fixed[FIXED_HEADER_LEN - 1],
    ]));
    let mut whole = fixed.to_vec();
    if (1..=keyward_envelope::stream::MAX_WRAPPED).contains(&len) {
        let mut wrapped = vec![0u8; len];
        exact(r, &mut wrapped, StreamError::TruncatedHeader).await?;
        whole.extend_from_slice(&wrapped);
    }
    Header::read_from(&mut whole.as_slice())
}

/// A tokio writer that encrypts into `inner` as a stream. `poll_shutdown` seals and writes the
/// last chunk, then shuts `inner` down; a writer dropped without it leaves a truncated stream.
pub struct AsyncEncryptWriter<W> {
    inner: W,
    sealer: ChunkSealer,
    /// Plaintext of the chunk being filled.
    buf: Zeroizing<Vec<u8>>,
    /// Bytes (header, sealed chunks) waiting to be written to `inner`.
    out: Vec<u8>,
    out_pos: usize,
    chunk: usize,
    finished: bool,
}

impl<W: AsyncWrite + Unpin> AsyncEncryptWriter<W> {
    /// Start a stream into `inner` (the header is written with the first data or flush).
    pub fn new(inner: W, data_key: &[u8; KEY_LEN], header: &Header) -> Result<Self, StreamError> {
        let chunk = header.chunk_size() as usize;
        Ok(AsyncEncryptWriter {
            inner,
            sealer: ChunkSealer::new(data_key, header)?,
            buf: Zeroizing::new(Vec::with_capacity(chunk + TAG_LEN)),
            out: header.as_bytes().to_vec(),
            out_pos: 0,
            chunk,
            finished: false,
        })
    }

    /// The inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some(rest) = self.out.get(self.out_pos..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Seal the buffered chunk and queue it (the queue is empty).
    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        self.sealer
            .seal(&mut self.buf, last)
            .map_err(StreamError::into_io)?;
        self.out.extend_from_slice(&self.buf);
        self.buf.clear();
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for AsyncEncryptWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(StreamError::Finished.into_io()));
        }
        ready!(this.poll_drain(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // A full chunk is sealed only once more data arrives: until then it may be the last.
        if this.buf.len() == this.chunk {
            this.seal(false)?;
        }
        let n = data.len().min(this.chunk - this.buf.len());
        this.buf
            .extend_from_slice(data.get(..n).unwrap_or_default());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.finished {
            ready!(this.poll_drain(cx))?;
            this.seal(true)?;
            this.finished = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// A tokio reader that decrypts a stream whose header was read ([`read_header_async`]). Errors
/// carry a [`StreamError`] naming the chunk ([`StreamError::from_io`]).
pub struct AsyncDecryptReader<R> {
    inner: R,
    opener: ChunkOpener,
    /// Ciphertext being read (with one byte of look-ahead), then the chunk's plaintext.
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
    pos: usize,
    plain: bool,
    enc_chunk: usize,
    done: bool,
    failed: bool,
}

impl<R: AsyncRead + Unpin> AsyncDecryptReader<R> {
    /// Decrypt the chunks that follow `header` in `inner`.
    pub fn new(inner: R, data_key: &[u8; KEY_LEN], header: &Header) -> Result<Self, StreamError> {
        let enc_chunk = header.chunk_size() as usize + TAG_LEN;
        Ok(AsyncDecryptReader {
            inner,
            opener: ChunkOpener::new(data_key, header)?,
            buf: Zeroizing::new(vec![0u8; enc_chunk + 1]),
            filled: 0,
            pos: 0,
            plain: false,
            enc_chunk,
            done: false,
            failed: false,
        })
    }

    /// Read the next chunk and open it; `Ready(Ok)` leaves its plaintext in `buf`.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut eof = false;
        while self.filled < self.enc_chunk + 1 {
            let Some(space) = self.buf.get_mut(self.filled..) else {
                break;
            };
            let mut rb = ReadBuf::new(space);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                eof = true;
                break;
            }
            self.filled += n;
        }
        let last = eof;
        let carry = if last {
            None
        } else {
            self.buf.get(self.enc_chunk).copied()
        };
        self.buf.truncate(self.filled.min(self.enc_chunk));
        let opened = self.opener.open(&mut self.buf, last);
        // Restore the read buffer's shape for the next chunk; the plaintext stays in front.
        let plain_len = self.buf.len();
        self.buf.resize(self.enc_chunk + 1, 0);
        if let Err(e) = opened {
            self.failed = true;
            return Poll::Ready(Err(e.into_io()));
        }
        self.filled = plain_len;
        self.pos = 0;
        self.plain = true;
        self.done = last;
        if let Some(c) = carry {
            // Kept after the plaintext; moved to the front once the plaintext is consumed.
            if let Some(slot) = self.buf.get_mut(self.enc_chunk) {
                *slot = c;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for AsyncDecryptReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.failed {
                return Poll::Ready(Err(StreamError::Finished.into_io()));
            }
            if this.plain {
                if this.pos < this.filled {
                    let avail = this.buf.get(this.pos..this.filled).unwrap_or_default();
                    let n = avail.len().min(out.remaining());
                    out.put_slice(avail.get(..n).unwrap_or_default());
                    this.pos += n;
                    return Poll::Ready(Ok(()));
                }
                if this.done || out.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                // Plaintext consumed: the look-ahead byte starts the next chunk.
                let carry = this.buf.get(this.enc_chunk).copied().unwrap_or(0);
                if let Some(first) = this.buf.first_mut() {
                    *first = carry;
                }
                this.filled = 1;
                this.plain = false;
            }
            ready!(this.poll_chunk(cx))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const KEY: [u8; 32] = [5; 32];

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[tokio::test]
    async fn async_adapters_round_trip_and_match_the_sync_ones() {
        for chunk in [16u32, 100] {
            let c = chunk as usize;
            for n in [0, 1, c - 1, c, c + 1, 3 * c, 3 * c + 1] {
                let h = Header::new([1; 16], 3, &[2; 60], chunk).unwrap();
                let pt = data(n);
                let mut w = AsyncEncryptWriter::new(Vec::new(), &KEY, &h).unwrap();
                for part in pt.chunks(13) {
                    w.write_all(part).await.unwrap();
                }
                w.shutdown().await.unwrap();
                let ct = w.into_inner();
                // The sync reader reads what the async writer wrote...
                let mut r = ct.as_slice();
                let h2 = Header::read_from(&mut r).unwrap();
                let mut out = Vec::new();
                DecryptReader::new(r, &KEY, &h2)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
                assert_eq!(out, pt, "sync read of {n}/{chunk}");
                // ...and the async reader too, through a tiny-read reader.
                let mut r = tokio::io::BufReader::with_capacity(5, ct.as_slice());
                let h3 = read_header_async(&mut r).await.unwrap();
                assert_eq!(h3, h);
                let mut d = AsyncDecryptReader::new(r, &KEY, &h3).unwrap();
                let mut out = Vec::new();
                d.read_to_end(&mut out).await.unwrap();
                assert_eq!(out, pt, "async read of {n}/{chunk}");
                // Cut at the last chunk boundary: refused as truncated, naming the chunk.
                if n > c {
                    let chunks = n.div_ceil(c);
                    let cut = h.as_bytes().len() + (chunks - 1) * (c + TAG_LEN);
                    let mut r = &ct[..cut];
                    let h4 = read_header_async(&mut r).await.unwrap();
                    let mut d = AsyncDecryptReader::new(r, &KEY, &h4).unwrap();
                    let e = d.read_to_end(&mut Vec::new()).await.unwrap_err();
                    assert!(
                        matches!(
                            StreamError::from_io(&e),
                            Some(StreamError::Truncated { chunk }) if *chunk == (chunks - 1) as u64
                        ),
                        "{e}"
                    );
                }
            }
        }
        let mut r: &[u8] = b"Aes256Gcm.x.y";
        assert!(matches!(
            read_header_async(&mut r).await,
            Err(StreamError::NotAStream)
        ));
    }
}
