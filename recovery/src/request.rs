//! The owner's one-time request key: a fresh P-256 key made on the new
//! machine, whose `did:key` the owner gives the trustees out of band, and to
//! which each trustee re-seals (releases) their share.
//!
//! File format (CBOR map, at most [`MAX_REQUEST_FILE_LEN`] bytes):
//! `{ "v": 1, "kind": "keyward-recovery-request", "d": bstr(32) }` where `d`
//! is the big-endian private scalar. [`RequestKey::write_to`] creates the file
//! with mode 0600 atomically (written and synced under a temporary name in the
//! same directory, then hard-linked to the final name, which fails if that name
//! exists: the file is never visible half-written, never with a wider mode, and
//! an existing file is never overwritten). [`RequestKey::read_from`] refuses a
//! file that group or others can read or write.
//!
//! This module must never log the scalar, never write it anywhere but the
//! file the caller names, and never overwrite an existing file.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keyward_identity::{LocalKey, PublicKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Current request file version.
pub const REQUEST_VERSION: u8 = 1;
/// The `kind` string of a request file.
pub const REQUEST_KIND: &str = "keyward-recovery-request";
/// Largest request file accepted, in bytes.
pub const MAX_REQUEST_FILE_LEN: u64 = 256;

/// Errors writing or reading a request key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// An I/O error on `path`.
    #[error("request key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `path` already exists (never overwritten).
    #[error("request key file {0} already exists")]
    Exists(PathBuf),
    /// The file can be read or written by group or others.
    #[error("request key file {path} has mode {mode:o}; it must be 0600 (or stricter)")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than [`MAX_REQUEST_FILE_LEN`].
    #[error("request key file is larger than {MAX_REQUEST_FILE_LEN} bytes")]
    TooLarge,
    /// The file is not a request key (CBOR, kind, version or scalar).
    #[error("not a keyward recovery request key file: {0}")]
    Malformed(&'static str),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u8,
    kind: String,
    #[serde(with = "serde_bytes")]
    d: Vec<u8>,
}

impl Drop for Wire {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.d);
    }
}

/// A one-time P-256 request key.
#[derive(Clone)]
pub struct RequestKey {
    key: LocalKey,
}

impl core::fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RequestKey({})", self.key.public_key())
    }
}

impl RequestKey {
    /// A fresh key.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        Self {
            key: LocalKey::generate(rng),
        }
    }

    /// Wraps an existing key (tests).
    pub fn from_local_key(key: LocalKey) -> Self {
        Self { key }
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The `did:key` the owner gives the trustees.
    pub fn did_key(&self) -> String {
        self.key.public_key().to_did_key()
    }

    /// The private key (to open released shares).
    pub fn local_key(&self) -> &LocalKey {
        &self.key
    }

    /// The file contents (CBOR), in a zeroizing buffer.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let wire = Wire {
            v: REQUEST_VERSION,
            kind: REQUEST_KIND.to_owned(),
            d: self.key.to_bytes().to_vec(),
        };
        let mut out = Zeroizing::new(Vec::with_capacity(96));
        // Serializing a plain struct into a Vec cannot fail.
        let _ = ciborium::into_writer(&wire, &mut *out);
        out
    }

    /// Parses file contents.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RequestError> {
        if bytes.len() as u64 > MAX_REQUEST_FILE_LEN {
            return Err(RequestError::TooLarge);
        }
        let wire: Wire = keyward_identity::cbor::from_slice(bytes)
            .map_err(|_| RequestError::Malformed("not a CBOR request map"))?;
        if wire.kind != REQUEST_KIND {
            return Err(RequestError::Malformed("wrong kind"));
        }
        if wire.v != REQUEST_VERSION {
            return Err(RequestError::Malformed("unsupported version"));
        }
        let d: &[u8; 32] = wire
            .d
            .as_slice()
            .try_into()
            .map_err(|_| RequestError::Malformed("scalar is not 32 bytes"))?;
        let key = LocalKey::from_bytes(d)
            .map_err(|_| RequestError::Malformed("scalar is not in 1..n"))?;
        Ok(Self { key })
    }

    /// Creates `path` with mode 0600 holding this key; refuses if it exists.
    pub fn write_to(&self, path: &Path) -> Result<(), RequestError> {
        let io = |source| RequestError::Io {
            path: path.to_owned(),
            source,
        };
        if fs::symlink_metadata(path).is_ok() {
            return Err(RequestError::Exists(path.to_owned()));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| io(std::io::Error::other("not a file name")))?;
        let mut nonce = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            // The umask can only narrow 0600; set it explicitly anyway.
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io)?;
            f.write_all(&self.to_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    RequestError::Exists(path.to_owned())
                } else {
                    io(e)
                }
            })?;
            if let Ok(d) = fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Reads a key written by [`write_to`](Self::write_to).
    pub fn read_from(path: &Path) -> Result<Self, RequestError> {
        let io = |source| RequestError::Io {
            path: path.to_owned(),
            source,
        };
        let f = fs::File::open(path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(RequestError::InsecurePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() > MAX_REQUEST_FILE_LEN {
            return Err(RequestError::TooLarge);
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(128));
        f.take(MAX_REQUEST_FILE_LEN + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
        Self::from_bytes(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn write_read_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("req");
        let key = RequestKey::generate(&mut OsRng);
        key.write_to(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = RequestKey::read_from(&path).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(back.did_key(), key.did_key());
        assert!(back.did_key().starts_with("did:key:z"));
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("req");
        fs::write(&path, b"keep me").unwrap();
        let key = RequestKey::generate(&mut OsRng);
        assert!(matches!(key.write_to(&path), Err(RequestError::Exists(_))));
        assert_eq!(fs::read(&path).unwrap(), b"keep me");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_to_a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let key = RequestKey::generate(&mut OsRng);
        let r = key.write_to(&dir.path().join("nope/req"));
        assert!(matches!(r, Err(RequestError::Io { .. })));
    }

    #[test]
    fn read_refuses_group_or_world_readable_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("req");
        RequestKey::generate(&mut OsRng).write_to(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            RequestKey::read_from(&path),
            Err(RequestError::InsecurePermissions { mode: 0o640, .. })
        ));
    }

    #[test]
    fn malformed_files_are_typed() {
        let good = RequestKey::generate(&mut OsRng).to_bytes();
        assert!(RequestKey::from_bytes(&good).is_ok());
        assert!(matches!(
            RequestKey::from_bytes(b"\xff\x00"),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            RequestKey::from_bytes(&vec![0u8; 300]),
            Err(RequestError::TooLarge)
        ));
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(matches!(
            RequestKey::from_bytes(&trailing),
            Err(RequestError::Malformed(_))
        ));
        let enc = |w: &Wire| {
            let mut v = Vec::new();
            ciborium::into_writer(w, &mut v).unwrap();
            v
        };
        let wrong_kind = Wire {
            v: 1,
            kind: "other".into(),
            d: vec![1; 32],
        };
        assert!(matches!(
            RequestKey::from_bytes(&enc(&wrong_kind)),
            Err(RequestError::Malformed("wrong kind"))
        ));
        let wrong_v = Wire {
            v: 2,
            kind: REQUEST_KIND.into(),
            d: vec![1; 32],
        };
        assert!(matches!(
            RequestKey::from_bytes(&enc(&wrong_v)),
            Err(RequestError::Malformed("unsupported version"))
        ));
        let zero = Wire {
            v: 1,
            kind: REQUEST_KIND.into(),
            d: vec![0; 32],
        };
        assert!(matches!(
            RequestKey::from_bytes(&enc(&zero)),
            Err(RequestError::Malformed("scalar is not in 1..n"))
        ));
        let short = Wire {
            v: 1,
            kind: REQUEST_KIND.into(),
            d: vec![1; 31],
        };
        assert!(matches!(
            RequestKey::from_bytes(&enc(&short)),
            Err(RequestError::Malformed("scalar is not 32 bytes"))
        ));
    }
}
