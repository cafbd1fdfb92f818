//! Keyward streaming encryption (format version 1): data of any size in authenticated chunks of
//! AES-256-GCM, in constant memory.
//!
//! ```text
//! header   magic "\x89KWSTRM\n" (8) ‖ version 0x01 (1) ‖ DEK id (16, UUID bytes)
//!          ‖ DEK version (u32 BE) ‖ chunk size (u32 BE, 16 B ..= 16 MiB) ‖ salt (32)
//!          ‖ nonce prefix (7) ‖ wrapped data key length (u16 BE, 1 ..= 1024) ‖ wrapped data key
//! key      K = HKDF-SHA256(ikm = data key, salt = salt, info = "keyward stream v1" ‖ H)
//!          where H = SHA-256(every header byte, exactly as read)
//! chunk i  AES-256-GCM(K, nonce = prefix ‖ i (u32 BE) ‖ last (0x00 | 0x01), aad = H)
//!          over chunk-size plaintext bytes; the last chunk holds 1 ..= chunk size bytes
//!          (0 only when it is the only chunk) and is the only one with last = 0x01
//! ```
//!
//! This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) as age's payload
//! and Tink's AES-GCM-HKDF streaming AEAD use it: a dropped tail fails (the new last chunk was
//! sealed with last = 0), reordered or repeated chunks fail (their counter is in the nonce),
//! and chunks or headers moved between files fail (the key and every chunk's AAD depend on the
//! whole header, whose salt is random). README and ARCHITECTURE.md compare it with age and Tink.
//!
//! The layers: [`Header`] (encode, parse, read), [`ChunkSealer`] / [`ChunkOpener`] (one chunk at a
//! time, no I/O), and the `std::io` adapters [`EncryptWriter`] and [`DecryptReader`]. The wrapped
//! data key is opaque here: the agent made it (`datakey.create`) and opens it (`datakey.open`).
//!
//! This module must never release the plaintext of a chunk whose tag did not verify, never
//! produce a chunk without the last flag once the stream is finished (or after it), never reuse a
//! (key, nonce) pair (a random salt per stream gives a fresh key; the counter never wraps), and
//! never keep a data key or a derived key outside `Zeroizing` memory or aws-lc's key schedule.

use std::io::{self, Read, Write};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::{digest, hkdf};
use zeroize::{Zeroize, Zeroizing};

/// The first 8 bytes of every stream (non-ASCII first byte, like PNG's, so text tools notice).
pub const MAGIC: [u8; 8] = *b"\x89KWSTRM\n";
/// The format version this module writes and reads.
pub const VERSION: u8 = 1;
/// Data key length in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// GCM tag length in bytes.
pub const TAG_LEN: usize = 16;
/// Salt length in bytes.
pub const SALT_LEN: usize = 32;
/// Nonce prefix length in bytes (12-byte GCM nonce = prefix ‖ u32 counter ‖ flag byte).
pub const PREFIX_LEN: usize = 7;
/// The chunk size written by default: 64 KiB of plaintext, as age.
pub const DEFAULT_CHUNK: u32 = 64 * 1024;
/// Smallest chunk size accepted.
pub const MIN_CHUNK: u32 = 16;
/// Largest chunk size accepted (bounds a reader's memory).
pub const MAX_CHUNK: u32 = 16 << 20;
/// Largest wrapped data key accepted.
pub const MAX_WRAPPED: usize = 1024;
/// Header length without the wrapped data key.
pub const FIXED_HEADER_LEN: usize = 8 + 1 + 16 + 4 + 4 + SALT_LEN + PREFIX_LEN + 2;
const KDF_INFO: &[u8] = b"keyward stream v1";

/// A header field, for [`StreamError::BadHeader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderField {
    /// The chunk size is outside `MIN_CHUNK ..= MAX_CHUNK`.
    ChunkSize,
    /// The wrapped data key's length is 0 or over `MAX_WRAPPED`.
    WrappedKeyLength,
}

impl std::fmt::Display for HeaderField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeaderField::ChunkSize => "chunk size",
            HeaderField::WrappedKeyLength => "wrapped data key length",
        })
    }
}

/// Why a stream does not decrypt (or could not be written). Chunks are counted from 0. Never
/// carries key or plaintext bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The input does not start with [`MAGIC`].
    #[error("not a Keyward stream (no stream magic)")]
    NotAStream,
    /// A version this reader does not know.
    #[error("stream format version {0} is not supported (this reader knows version 1)")]
    UnsupportedVersion(u8),
    /// A header field out of its range.
    #[error("the stream header's {0} is invalid")]
    BadHeader(HeaderField),
    /// The input ends inside the header.
    #[error("the stream ends inside its header")]
    TruncatedHeader,
    /// A chunk's tag does not verify: the chunk was changed, moved from another place or file,
    /// or the header was changed.
    #[error("chunk {chunk}: authentication failed (the data was changed, reordered, or comes from another file)")]
    Authentication {
        /// The chunk's index.
        chunk: u64,
    },
    /// The stream ends before its last chunk: chunks `0 .. chunk` verified, but none of them is
    /// marked last.
    #[error(
        "the stream is truncated: it ends before chunk {chunk}, and no chunk before is its last"
    )]
    Truncated {
        /// The index of the first missing chunk.
        chunk: u64,
    },
    /// Data follows a chunk that is marked last.
    #[error("chunk {chunk} is the stream's last, but data follows it")]
    TrailingData {
        /// The last chunk's index.
        chunk: u64,
    },
    /// An empty last chunk after other chunks (writers never make one).
    #[error("chunk {chunk}: an empty last chunk after other chunks")]
    EmptyLastChunk {
        /// The chunk's index.
        chunk: u64,
    },
    /// More than 2^32 chunks.
    #[error("the stream is over 2^32 chunks")]
    TooLong,
    /// The chunk was sealed or opened after the last one.
    #[error("the stream is already finished")]
    Finished,
    /// A wrong-length key or an AES backend failure.
    #[error("AES-256-GCM backend: {0}")]
    Backend(&'static str),
    /// Reading or writing the underlying stream.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl StreamError {
    /// A short stable code for programs (`keyward --json` prints it).
    pub fn code(&self) -> &'static str {
        match self {
            StreamError::NotAStream => "not_a_stream",
            StreamError::UnsupportedVersion(_) => "unsupported_version",
            StreamError::BadHeader(_) | StreamError::TruncatedHeader => "bad_header",
            StreamError::Authentication { .. } => "stream_authentication",
            StreamError::Truncated { .. } => "stream_truncated",
            StreamError::TrailingData { .. } => "stream_trailing_data",
            StreamError::EmptyLastChunk { .. } => "stream_malformed",
            StreamError::TooLong => "stream_too_long",
            StreamError::Finished | StreamError::Backend(_) => "internal",
            StreamError::Io(_) => "io",
        }
    }

    /// The chunk the error is about, when it is about one.
    pub fn chunk(&self) -> Option<u64> {
        match self {
            StreamError::Authentication { chunk }
            | StreamError::Truncated { chunk }
            | StreamError::TrailingData { chunk }
            | StreamError::EmptyLastChunk { chunk } => Some(*chunk),
            _ => None,
        }
    }

    /// The stream error inside an `io::Error` the adapters returned, if it is one.
    pub fn from_io(e: &io::Error) -> Option<&StreamError> {
        e.get_ref().and_then(|i| i.downcast_ref::<StreamError>())
    }

    /// As an `io::Error` (kind `InvalidData`, or the I/O error itself), recoverable with
    /// [`StreamError::from_io`].
    pub fn into_io(self) -> io::Error {
        match self {
            StreamError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

type Result<T> = std::result::Result<T, StreamError>;

/// A stream header. Built by [`Header::new`] (random salt and nonce prefix) or read by
/// [`Header::read_from`]; its encoding is kept as made or read, and hashed into every chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    dek_id: [u8; 16],
    dek_version: u32,
    chunk_size: u32,
    salt: [u8; SALT_LEN],
    nonce_prefix: [u8; PREFIX_LEN],
    wrapped_key: Vec<u8>,
    raw: Vec<u8>,
}

fn check_chunk(chunk_size: u32) -> Result<()> {
    if (MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
        Ok(())
    } else {
        Err(StreamError::BadHeader(HeaderField::ChunkSize))
    }
}

fn check_wrapped(len: usize) -> Result<()> {
    if (1..=MAX_WRAPPED).contains(&len) {
        Ok(())
    } else {
        Err(StreamError::BadHeader(HeaderField::WrappedKeyLength))
    }
}

impl Header {
    /// A header with a random salt and nonce prefix.
    pub fn new(
        dek_id: [u8; 16],
        dek_version: u32,
        wrapped_key: &[u8],
        chunk_size: u32,
    ) -> Result<Header> {
        let mut salt = [0u8; SALT_LEN];
        let mut prefix = [0u8; PREFIX_LEN];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| StreamError::Backend("random salt"))?;
        aws_lc_rs::rand::fill(&mut prefix).map_err(|_| StreamError::Backend("random prefix"))?;
        Self::with_randomness(dek_id, dek_version, wrapped_key, chunk_size, salt, prefix)
    }

    /// A header with the caller's salt and nonce prefix: for reproducible test vectors only. A
    /// salt used twice with one data key gives two streams the same key and nonces.
    pub fn with_randomness(
        dek_id: [u8; 16],
        dek_version: u32,
        wrapped_key: &[u8],
        chunk_size: u32,
        salt: [u8; SALT_LEN],
        nonce_prefix: [u8; PREFIX_LEN],
    ) -> Result<Header> {
        check_chunk(chunk_size)?;
        check_wrapped(wrapped_key.len())?;
        let len = u16::try_from(wrapped_key.len())
            .map_err(|_| StreamError::BadHeader(HeaderField::WrappedKeyLength))?;
        let mut raw = Vec::with_capacity(FIXED_HEADER_LEN + wrapped_key.len());
        raw.extend_from_slice(&MAGIC);
        raw.push(VERSION);
        raw.extend_from_slice(&dek_id);
        raw.extend_from_slice(&dek_version.to_be_bytes());
        raw.extend_from_slice(&chunk_size.to_be_bytes());
        raw.extend_from_slice(&salt);
        raw.extend_from_slice(&nonce_prefix);
        raw.extend_from_slice(&len.to_be_bytes());
        raw.extend_from_slice(wrapped_key);
        Ok(Header {
            dek_id,
            dek_version,
            chunk_size,
            salt,
            nonce_prefix,
            wrapped_key: wrapped_key.to_vec(),
            raw,
        })
    }

    /// Read a header from the start of `r` (exactly its bytes, no more).
    pub fn read_from<R: Read + ?Sized>(r: &mut R) -> Result<Header> {
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        let (magic, _) = fixed.split_at_mut(MAGIC.len());
        read_exact_or(r, magic, StreamError::NotAStream)?;
        Self::read_after_magic(r, fixed)
    }

    /// Read the rest of a header whose first `MAGIC.len()` bytes are in `fixed` (a caller that
    /// sniffed the magic to choose a format).
    pub fn read_after_magic<R: Read + ?Sized>(
        r: &mut R,
        mut fixed: [u8; FIXED_HEADER_LEN],
    ) -> Result<Header> {
        let (magic, rest) = fixed.split_at_mut(MAGIC.len());
        if *magic != MAGIC {
            return Err(StreamError::NotAStream);
        }
        let (version, rest) = rest.split_at_mut(1);
        read_exact_or(r, version, StreamError::TruncatedHeader)?;
        if version != [VERSION] {
            return Err(StreamError::UnsupportedVersion(
                version.first().copied().unwrap_or(0),
            ));
        }
        read_exact_or(r, rest, StreamError::TruncatedHeader)?;
        let (_, fields) = fixed.split_at(MAGIC.len() + 1);
        let mut f = Fields(fields);
        let dek_id: [u8; 16] = f.take()?;
        let dek_version = u32::from_be_bytes(f.take()?);
        let chunk_size = u32::from_be_bytes(f.take()?);
        let salt: [u8; SALT_LEN] = f.take()?;
        let nonce_prefix: [u8; PREFIX_LEN] = f.take()?;
        let len = usize::from(u16::from_be_bytes(f.take()?));
        check_chunk(chunk_size)?;
        check_wrapped(len)?;
        let mut wrapped = vec![0u8; len];
        read_exact_or(r, &mut wrapped, StreamError::TruncatedHeader)?;
        Self::with_randomness(
            dek_id,
            dek_version,
            &wrapped,
            chunk_size,
            salt,
            nonce_prefix,
        )
    }

    /// The DEK the data key is wrapped under (UUID bytes).
    pub fn dek_id(&self) -> [u8; 16] {
        self.dek_id
    }
    /// The DEK's version.
    pub fn dek_version(&self) -> u32 {
        self.dek_version
    }
    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
    /// The data key, wrapped under the DEK by the agent.
    pub fn wrapped_key(&self) -> &[u8] {
        &self.wrapped_key
    }
    /// The header's bytes, as written or read.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// SHA-256 of the header's bytes: every chunk's AAD.
    pub fn hash(&self) -> [u8; 32] {
        let d = digest::digest(&digest::SHA256, &self.raw);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
    /// The size of the stream for `plaintext_len` bytes of plaintext, header included.
    pub fn stream_len(&self, plaintext_len: u64) -> u64 {
        let chunk = u64::from(self.chunk_size);
        let chunks = plaintext_len.div_ceil(chunk).max(1);
        self.raw.len() as u64 + plaintext_len + chunks * TAG_LEN as u64
    }
}

/// Reads fixed-size fields off a slice.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, rest) = self
            .0
            .split_at_checked(N)
            .ok_or(StreamError::TruncatedHeader)?;
        self.0 = rest;
        head.try_into().map_err(|_| StreamError::TruncatedHeader)
    }
}

/// `read_exact`, with an early end reported as `eof`.
fn read_exact_or<R: Read + ?Sized>(r: &mut R, buf: &mut [u8], eof: StreamError) -> Result<()> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(eof),
        Err(e) => Err(StreamError::Io(e)),
    }
}

/// Read until `buf` is full or the input ends; returns how many bytes were read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..).filter(|b| !b.is_empty()) {
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The per-stream key and nonce sequence, shared by the sealer and the opener.
struct Keyed {
    key: LessSafeKey,
    aad: [u8; 32],
    prefix: [u8; PREFIX_LEN],
    counter: u64,
    finished: bool,
}

impl Keyed {
    fn new(data_key: &[u8; KEY_LEN], header: &Header) -> Result<Keyed> {
        let aad = header.hash();
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &header.salt);
        let prk = salt.extract(data_key);
        let info = [KDF_INFO, &aad[..]];
        let okm = prk
            .expand(&info, hkdf::HKDF_SHA256)
            .map_err(|_| StreamError::Backend("HKDF expand"))?;
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        okm.fill(&mut k[..])
            .map_err(|_| StreamError::Backend("HKDF fill"))?;
        let key = UnboundKey::new(&AES_256_GCM, &k[..])
            .map(LessSafeKey::new)
            .map_err(|_| StreamError::Backend("AES-256-GCM key setup"))?;
        Ok(Keyed {
            key,
            aad,
            prefix: header.nonce_prefix,
            counter: 0,
            finished: false,
        })
    }

    fn nonce(&self, last: bool) -> Result<Nonce> {
        let counter = u32::try_from(self.counter).map_err(|_| StreamError::TooLong)?;
        let mut n = [0u8; 12];
        let (p, rest) = n.split_at_mut(PREFIX_LEN);
        p.copy_from_slice(&self.prefix);
        let (c, flag) = rest.split_at_mut(4);
        c.copy_from_slice(&counter.to_be_bytes());
        flag.fill(u8::from(last));
        Ok(Nonce::assume_unique_for_key(n))
    }
}

/// Seals one chunk at a time (no I/O).
pub struct ChunkSealer {
    k: Keyed,
    chunk_size: usize,
}

impl ChunkSealer {
    /// A sealer for the stream `header` starts, with the data key its wrapped key holds.
    pub fn new(data_key: &[u8; KEY_LEN], header: &Header) -> Result<ChunkSealer> {
        Ok(ChunkSealer {
            k: Keyed::new(data_key, header)?,
            chunk_size: header.chunk_size as usize,
        })
    }

    /// Seal the plaintext in `buf` in place and append its tag. A chunk that is not `last` must
    /// hold exactly the chunk size; the last holds at most that (and is empty only when it is the
    /// first). After the last chunk the sealer refuses more.
    pub fn seal(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<()> {
        if self.k.finished {
            return Err(StreamError::Finished);
        }
        let ok_len = if last {
            buf.len() <= self.chunk_size && (self.k.counter == 0 || !buf.is_empty())
        } else {
            buf.len() == self.chunk_size
        };
        if !ok_len {
            return Err(StreamError::Backend("chunk length does not fit the format"));
        }
        let nonce = self.k.nonce(last)?;
        let tag = self
            .k
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(self.k.aad), buf)
            .map_err(|_| StreamError::Backend("AES-256-GCM seal"))?;
        buf.extend_from_slice(tag.as_ref());
        self.k.counter += 1;
        self.k.finished = last;
        Ok(())
    }

    /// How many chunks were sealed.
    pub fn chunks(&self) -> u64 {
        self.k.counter
    }
}

/// Opens one chunk at a time (no I/O).
pub struct ChunkOpener {
    k: Keyed,
    chunk_size: usize,
    /// A chunk's ciphertext, kept to read a failed chunk a second way (reused, wiped).
    spare: Zeroizing<Vec<u8>>,
}

impl ChunkOpener {
    /// An opener for the stream `header` starts, with the data key its wrapped key holds.
    pub fn new(data_key: &[u8; KEY_LEN], header: &Header) -> Result<ChunkOpener> {
        Ok(ChunkOpener {
            k: Keyed::new(data_key, header)?,
            chunk_size: header.chunk_size as usize,
            spare: Zeroizing::new(Vec::new()),
        })
    }

    /// The index of the next chunk.
    pub fn next_chunk(&self) -> u64 {
        self.k.counter
    }

    /// Verify and decrypt the chunk (ciphertext ‖ tag) in `buf` in place, leaving its
    /// plaintext. `last`: the input ends after this chunk. On failure `buf` is emptied and the
    /// error names the chunk: a chunk that verifies as a middle chunk where the input ends is
    /// [`StreamError::Truncated`], and one that verifies as the last where more follows,
    /// [`StreamError::TrailingData`].
    pub fn open(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<()> {
        let chunk = self.k.counter;
        if self.k.finished {
            buf.clear();
            return Err(StreamError::TrailingData {
                chunk: chunk.saturating_sub(1),
            });
        }
        let Some(ct_len) = buf.len().checked_sub(TAG_LEN) else {
            // Only the first chunk can be missing entirely: a reader looks one byte ahead.
            let empty = buf.is_empty();
            buf.clear();
            return Err(if last && empty {
                StreamError::Truncated { chunk }
            } else {
                StreamError::Authentication { chunk }
            });
        };
        let full = ct_len == self.chunk_size;
        if ct_len > self.chunk_size || (!last && !full) {
            buf.clear();
            return Err(StreamError::Authentication { chunk });
        }
        // Keep a copy only where a second reading can name the failure better.
        let retry = full;
        if retry {
            self.spare.clear();
            self.spare.extend_from_slice(buf);
        }
        if let Err(e) = self.try_open(buf, last) {
            buf.clear();
            if retry {
                let mut spare = std::mem::take(&mut *self.spare);
                let second = self.try_open(&mut spare, !last);
                spare.zeroize();
                *self.spare = spare;
                if second.is_ok() {
                    return Err(if last {
                        StreamError::Truncated { chunk: chunk + 1 }
                    } else {
                        StreamError::TrailingData { chunk }
                    });
                }
            }
            return Err(e);
        }
        if last && buf.is_empty() && chunk > 0 {
            return Err(StreamError::EmptyLastChunk { chunk });
        }
        self.k.counter += 1;
        self.k.finished = last;
        Ok(())
    }

    fn try_open(&self, buf: &mut Vec<u8>, last: bool) -> Result<()> {
        let chunk = self.k.counter;
        let nonce = self.k.nonce(last)?;
        let ct_len = buf
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(StreamError::Authentication { chunk })?;
        let (ct, tag) = buf.split_at_mut(ct_len);
        self.k
            .key
            .open_in_place_separate_tag(nonce, Aad::from(self.k.aad), tag, ct)
            .map_err(|_| StreamError::Authentication { chunk })?;
        buf.truncate(ct_len);
        Ok(())
    }
}

/// Encrypts what is written to it into `inner` as a stream. [`EncryptWriter::finish`] writes the
/// last chunk: a writer dropped without it leaves a stream that readers refuse as truncated.
pub struct EncryptWriter<W: Write> {
    inner: W,
    sealer: ChunkSealer,
    buf: Zeroizing<Vec<u8>>,
    chunk: usize,
    failed: bool,
}

impl<W: Write> EncryptWriter<W> {
    /// Write `header` to `inner` and start the stream.
    pub fn new(mut inner: W, data_key: &[u8; KEY_LEN], header: &Header) -> Result<Self> {
        let sealer = ChunkSealer::new(data_key, header)?;
        inner.write_all(header.as_bytes())?;
        let chunk = header.chunk_size as usize;
        Ok(EncryptWriter {
            inner,
            sealer,
            buf: Zeroizing::new(Vec::with_capacity(chunk + TAG_LEN)),
            chunk,
            failed: false,
        })
    }

    fn seal_and_write(&mut self, last: bool) -> Result<()> {
        let r = self
            .sealer
            .seal(&mut self.buf, last)
            .and_then(|()| Ok(self.inner.write_all(&self.buf)?));
        self.buf.clear();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// Seal and write the last chunk, flush, and give back the inner writer.
    pub fn finish(mut self) -> Result<W> {
        if self.failed {
            return Err(StreamError::Backend("an earlier write failed"));
        }
        self.seal_and_write(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// How many chunks were written so far.
    pub fn chunks(&self) -> u64 {
        self.sealer.chunks()
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(StreamError::Backend("an earlier write failed").into_io());
        }
        if data.is_empty() {
            return Ok(0);
        }
        // A full buffer is sealed only once more data arrives: until then it may be the last.
        if self.buf.len() == self.chunk {
            self.seal_and_write(false).map_err(StreamError::into_io)?;
        }
        let n = data.len().min(self.chunk - self.buf.len());
        self.buf
            .extend_from_slice(data.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts a stream read from `inner`, whose header was read already ([`Header::read_from`]).
/// Errors are `io::Error`s carrying a [`StreamError`] ([`StreamError::from_io`]) that names the
/// chunk. Plaintext is released chunk by chunk, each only once verified; a stream that ends early
/// is refused when the end is reached, after the chunks before it were read, so output must not
/// be trusted until `read` returned 0.
pub struct DecryptReader<R: Read> {
    inner: R,
    opener: ChunkOpener,
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    enc_chunk: usize,
    peek: Option<u8>,
    done: bool,
    failed: bool,
}

impl<R: Read> DecryptReader<R> {
    /// Decrypt the chunks that follow `header` in `inner`.
    pub fn new(inner: R, data_key: &[u8; KEY_LEN], header: &Header) -> Result<Self> {
        let enc_chunk = header.chunk_size as usize + TAG_LEN;
        Ok(DecryptReader {
            inner,
            opener: ChunkOpener::new(data_key, header)?,
            buf: Zeroizing::new(Vec::with_capacity(enc_chunk)),
            pos: 0,
            enc_chunk,
            peek: None,
            done: false,
            failed: false,
        })
    }

    /// The index of the next chunk to be read.
    pub fn next_chunk(&self) -> u64 {
        self.opener.next_chunk()
    }

    fn next(&mut self) -> Result<()> {
        self.buf.clear();
        self.buf.resize(self.enc_chunk, 0);
        let mut n = 0;
        if let (Some(b), Some(first)) = (self.peek.take(), self.buf.first_mut()) {
            *first = b;
            n = 1;
        }
        n += read_full(&mut self.inner, self.buf.get_mut(n..).unwrap_or_default())?;
        self.buf.truncate(n);
        let mut last = true;
        if n == self.enc_chunk {
            let mut one = [0u8; 1];
            if read_full(&mut self.inner, &mut one)? == 1 {
                self.peek = Some(one[0]);
                last = false;
            }
        }
        self.pos = 0;
        self.opener.open(&mut self.buf, last)?;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(StreamError::Finished.into_io());
        }
        while self.pos >= self.buf.len() {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            if let Err(e) = self.next() {
                self.failed = true;
                return Err(e.into_io());
            }
        }
        let avail = self.buf.get(self.pos..).unwrap_or_default();
        let n = avail.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), avail.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [0x42; 32];

    fn header(chunk: u32) -> Header {
        Header::new([7; 16], 1, &[9; 60], chunk).unwrap()
    }

    fn encrypt(pt: &[u8], h: &Header) -> Vec<u8> {
        let mut w = EncryptWriter::new(Vec::new(), &KEY, h).unwrap();
        // Odd write sizes, to cross chunk boundaries in every way.
        for part in pt.chunks(7) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    fn decrypt(ct: &[u8]) -> Result<Vec<u8>> {
        let mut r = ct;
        let h = Header::read_from(&mut r)?;
        let mut d = DecryptReader::new(r, &KEY, &h)?;
        let mut out = Vec::new();
        d.read_to_end(&mut out)
            .map_err(|e| match StreamError::from_io(&e) {
                Some(_) => match e.into_inner().map(|i| i.downcast::<StreamError>()) {
                    Some(Ok(s)) => *s,
                    _ => StreamError::Backend("?"),
                },
                None => StreamError::Io(e),
            })?;
        Ok(out)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_from_0_bytes_to_chunk_sizes_plus_minus_one() {
        for chunk in [16u32, 64, 1000] {
            let c = chunk as usize;
            for n in [
                0,
                1,
                c - 1,
                c,
                c + 1,
                2 * c - 1,
                2 * c,
                2 * c + 1,
                5 * c + 3,
            ] {
                let h = header(chunk);
                let pt = data(n);
                let ct = encrypt(&pt, &h);
                assert_eq!(ct.len() as u64, h.stream_len(n as u64), "len {n}/{chunk}");
                assert_eq!(decrypt(&ct).unwrap(), pt, "n {n} chunk {chunk}");
            }
        }
    }

    #[test]
    fn default_chunk_round_trip() {
        let h = header(DEFAULT_CHUNK);
        let pt = data(3 * DEFAULT_CHUNK as usize + 5);
        assert_eq!(decrypt(&encrypt(&pt, &h)).unwrap(), pt);
    }

    #[test]
    fn truncation_at_every_chunk_boundary_is_named() {
        let h = header(16);
        let pt = data(16 * 4 + 3);
        let ct = encrypt(&pt, &h);
        let hl = h.as_bytes().len();
        for k in 0..5usize {
            let cut = &ct[..hl + k * 32];
            match decrypt(cut) {
                Err(StreamError::Truncated { chunk }) => assert_eq!(chunk, k as u64),
                other => panic!("cut after {k} chunks: {other:?}"),
            }
        }
        // Inside the last chunk, and inside a tag.
        assert!(matches!(
            decrypt(&ct[..ct.len() - 1]),
            Err(StreamError::Authentication { chunk: 4 })
        ));
        // Inside the header.
        assert!(matches!(
            decrypt(&ct[..hl - 1]),
            Err(StreamError::TruncatedHeader)
        ));
    }

    #[test]
    fn reordered_flipped_and_appended_chunks_are_named() {
        let h = header(16);
        let pt = data(16 * 4);
        let ct = encrypt(&pt, &h);
        let hl = h.as_bytes().len();
        let mut swapped = ct.clone();
        let (a, b) = (hl + 32, hl + 64);
        let c1 = ct[a..a + 32].to_vec();
        swapped[a..a + 32].copy_from_slice(&ct[b..b + 32]);
        swapped[b..b + 32].copy_from_slice(&c1);
        assert!(matches!(
            decrypt(&swapped),
            Err(StreamError::Authentication { chunk: 1 })
        ));
        for i in hl..ct.len() {
            let mut f = ct.clone();
            f[i] ^= 1;
            let chunk = ((i - hl) / 32) as u64;
            match decrypt(&f) {
                Err(StreamError::Authentication { chunk: c }) => assert_eq!(c, chunk),
                other => panic!("flip at {i}: {other:?}"),
            }
        }
        let mut longer = ct.clone();
        longer.extend_from_slice(&[0u8; 32]);
        assert!(matches!(
            decrypt(&longer),
            Err(StreamError::TrailingData { chunk: 3 })
        ));
    }

    #[test]
    fn every_header_byte_is_bound() {
        let h = header(16);
        let ct = encrypt(&data(40), &h);
        for i in 0..h.as_bytes().len() {
            let mut f = ct.clone();
            f[i] ^= 0x01;
            assert!(decrypt(&f).is_err(), "flip in header byte {i} accepted");
        }
        // Another file's header (same key): chunk 0 fails.
        let other = header(16);
        let mut spliced = other.as_bytes().to_vec();
        spliced.extend_from_slice(&ct[h.as_bytes().len()..]);
        assert!(matches!(
            decrypt(&spliced),
            Err(StreamError::Authentication { chunk: 0 })
        ));
    }

    #[test]
    fn headers_are_checked() {
        assert!(matches!(
            decrypt(b"Aes256Gcm.abc"),
            Err(StreamError::NotAStream)
        ));
        let h = header(16);
        let mut v = h.as_bytes().to_vec();
        v[8] = 2;
        assert!(matches!(
            decrypt(&v),
            Err(StreamError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Header::new([0; 16], 1, &[1], 15),
            Err(StreamError::BadHeader(HeaderField::ChunkSize))
        ));
        assert!(matches!(
            Header::new([0; 16], 1, &[], 16),
            Err(StreamError::BadHeader(HeaderField::WrappedKeyLength))
        ));
        let mut r = h.as_bytes();
        assert_eq!(Header::read_from(&mut r).unwrap(), h);
    }

    #[test]
    fn sealer_refuses_misuse() {
        let h = header(16);
        let mut s = ChunkSealer::new(&KEY, &h).unwrap();
        assert!(s.seal(&mut vec![0; 15], false).is_err());
        s.seal(&mut vec![0; 16], false).unwrap();
        assert!(
            s.seal(&mut Vec::new(), true).is_err(),
            "empty last after others"
        );
        s.seal(&mut vec![0; 3], true).unwrap();
        assert!(matches!(
            s.seal(&mut vec![0; 3], true),
            Err(StreamError::Finished)
        ));
    }
}
