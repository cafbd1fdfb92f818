//! The connection: a writer shared by callers, a reader task routing responses by id.
//!
//! Before a byte is sent, the socket is checked: its directory must be owned by this user
//! (euid) and not group- or world-writable, and the process listening on it (SO_PEERCRED) must
//! run as this user. Anything else is refused with [`ClientError::UnsafeSocket`]: a PIN sent to
//! a socket another user controls is a PIN given away. Every step has a deadline
//! ([`ClientOptions`]); `init` and `unlock`, which may wait for a person (a PIN pad, a touch),
//! have a longer one.

use crate::error::ClientError;
use crate::retry::ConflictRetry;
use keyward_proto::message::ResponseError;
use keyward_proto::ops::*;
use keyward_proto::secret::{Pin, SecretBytes};
use keyward_proto::{frame, ErrorCode, Request, Response, MAX_FRAME};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

/// Deadlines for one client. Defaults: 5 s to connect and say `hello`, 30 s per request, 120 s
/// for `init` and `unlock` (they may wait for a person).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Connecting, the socket checks and `hello`.
    pub connect_timeout: std::time::Duration,
    /// Writing a request and receiving its answer.
    pub request_timeout: std::time::Duration,
    /// The same for operations that may wait for a person: `init` and `unlock`.
    pub interactive_timeout: std::time::Duration,
}

impl ClientOptions {
    /// The deadline for one operation, by wire name.
    pub fn deadline_for(&self, op: &str) -> std::time::Duration {
        match op {
            "init" | "unlock" => self.interactive_timeout,
            _ => self.request_timeout,
        }
    }
}

/// The socket's directory must be ours and writable by no one else. A directory that cannot
/// be inspected is left to `connect`, which fails the same way and says why.
fn check_socket_dir(path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let me = nix::unistd::geteuid().as_raw();
    let unsafe_socket = |reason: String| ClientError::UnsafeSocket {
        path: path.to_path_buf(),
        reason,
    };
    if meta.uid() != me {
        return Err(unsafe_socket(format!(
            "its directory {} is owned by uid {}, not by you (uid {me})",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_socket(format!(
            "its directory {} is group- or world-writable (mode {:o})",
            dir.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The process at the other end must be ours (SO_PEERCRED).
fn check_peer(stream: &UnixStream, path: &Path) -> Result<(), ClientError> {
    let me = nix::unistd::geteuid().as_raw();
    let unsafe_socket = |reason: String| ClientError::UnsafeSocket {
        path: path.to_path_buf(),
        reason,
    };
    match stream.peer_cred() {
        Ok(c) if c.uid() == me => Ok(()),
        Ok(c) => Err(unsafe_socket(format!(
            "the process listening on it runs as uid {}, not as you (uid {me})",
            c.uid()
        ))),
        Err(e) => Err(unsafe_socket(format!(
            "the listening process's credentials cannot be read: {e}"
        ))),
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: std::time::Duration::from_secs(5),
            request_timeout: std::time::Duration::from_secs(30),
            interactive_timeout: std::time::Duration::from_secs(120),
        }
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Response>>>>>;

/// An async connection to the agent. Cheap to share by reference across tasks; requests made
/// concurrently are pipelined on the one socket.
pub struct Client {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    opts: ClientOptions,
    pending: Pending,
    /// A frame-level error (id null) that arrived while no request was waiting, e.g. the
    /// agent's refusal of this peer sent before our `hello`: reported instead of "closed".
    unclaimed: Arc<Mutex<Option<keyward_proto::ErrorBody>>>,
    next_id: AtomicU64,
    hello: HelloResult,
    reader: tokio::task::JoinHandle<()>,
    /// Retry requests answered with `conflict` ([`Client::retry_conflicts`]); off by default.
    conflict_retry: Option<ConflictRetry>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock_pending(
    p: &Pending,
) -> std::sync::MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<Response>>>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every page of a list from the cursor `after` (none: the start): `page(after)` fetches one,
/// and pages are followed by their `next` until a page has none. The result holds every key
/// and no `next`. A page that names a `next` but holds no key is a protocol error (it would
/// never end).
pub async fn all_pages<F, Fut>(
    op: &str,
    mut after: Option<String>,
    mut page: F,
) -> Result<KeyList, ClientError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<KeyList, ClientError>>,
{
    let mut keys = Vec::new();
    loop {
        let p = page(after.take()).await?;
        if p.next.is_some() && p.keys.is_empty() {
            return Err(ClientError::Protocol {
                op: op.to_string(),
                detail: "an empty page with a next cursor".into(),
            });
        }
        keys.extend(p.keys);
        match p.next {
            Some(next) => after = Some(next),
            None => return Ok(KeyList { keys, next: None }),
        }
    }
}

impl Client {
    /// Connect to the socket `KEYWARD_SOCK` names, or the default one.
    pub async fn connect_default() -> Result<Client, ClientError> {
        Self::connect(&keyward_proto::paths::socket_path(None)).await
    }

    /// Connect to the agent at `path` and say `hello`.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        Self::connect_with(path, &ClientOptions::default()).await
    }

    /// Connect with explicit deadlines: the socket checks, connecting and `hello` all within
    /// `opts.connect_timeout`.
    pub async fn connect_with(path: &Path, opts: &ClientOptions) -> Result<Client, ClientError> {
        match tokio::time::timeout(opts.connect_timeout, Self::connect_inner(path, opts)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                op: "connect".into(),
                after: opts.connect_timeout,
            }),
        }
    }

    async fn connect_inner(path: &Path, opts: &ClientOptions) -> Result<Client, ClientError> {
        check_socket_dir(path)?;
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: PathBuf::from(path),
                source,
            })?;
        check_peer(&stream, path)?;
        let (mut rd, wr) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let routes = pending.clone();
        let unclaimed = Arc::new(Mutex::new(None));
        let orphan = unclaimed.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(bytes)) = frame::read(&mut rd, MAX_FRAME).await {
                let Ok(resp) = Response::from_cbor(&bytes) else {
                    break;
                };
                let waiter = match resp.id {
                    Some(id) => lock_pending(&routes).as_mut().and_then(|m| m.remove(&id)),
                    // A frame-level error: it belongs to whichever request is oldest.
                    None => lock_pending(&routes).as_mut().and_then(|m| {
                        let oldest = m.keys().min().copied()?;
                        m.remove(&oldest)
                    }),
                };
                match waiter {
                    Some(w) => {
                        let _ = w.send(resp);
                    }
                    None if resp.id.is_none() => {
                        *orphan.lock().unwrap_or_else(|e| e.into_inner()) = resp.err;
                    }
                    None => {}
                }
            }
            // Closed: every waiter sees its sender dropped.
            lock_pending(&routes).take();
        });
        let mut client = Client {
            writer: tokio::sync::Mutex::new(wr),
            // The connect deadline covers hello (see connect_with).
            opts: ClientOptions {
                request_timeout: opts.connect_timeout,
                ..opts.clone()
            },
            pending,
            unclaimed,
            next_id: AtomicU64::new(1),
            hello: HelloResult {
                protocol: 0,
                agent_version: String::new(),
                root_kind: RootKind::Soft,
                token: String::new(),
                initialized: false,
                locked: true,
                ops: Vec::new(),
                ssh_socket: None,
                config: None,
                keystore: None,
                pin_attempts_left: None,
                keystore_check: None,
                audit_log: None,
            },
            reader,
            conflict_retry: None,
        };
        client.hello = client
            .call::<op::Hello>(&HelloArgs {
                version: keyward_proto::PROTOCOL_VERSION,
                client: Some(format!("keyward-client {}", env!("CARGO_PKG_VERSION"))),
            })
            .await?;
        client.opts = opts.clone();
        Ok(client)
    }

    /// The deadlines in force.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Change the deadlines for later requests.
    pub fn set_options(&mut self, opts: ClientOptions) {
        self.opts = opts;
    }

    /// Retry every request the agent answers with `conflict` (another agent changed the record
    /// meanwhile; nothing was changed) as `policy` says, then report it (`retry.rs` says why
    /// this is safe). `None` turns it off (the default).
    pub fn retry_conflicts(&mut self, policy: Option<ConflictRetry>) {
        self.conflict_retry = policy;
    }

    /// What the agent said at `hello` (as of connecting).
    pub fn hello_info(&self) -> &HelloResult {
        &self.hello
    }

    /// Send one request and wait for its response, typed by the operation:
    /// `client.call::<op::KekList>(&ListArgs::default())` returns a [`KeyList`].
    pub async fn call<O: Operation>(&self, args: &O::Args) -> Result<O::Result, ClientError> {
        self.call_named(O::OP.name(), args).await
    }

    /// Send one request by wire name with any arguments (for operations this library does not
    /// know, and for tests of the agent's refusals).
    pub async fn call_named<A: Serialize, R: DeserializeOwned>(
        &self,
        op: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        let mut attempt = 1;
        loop {
            match self.call_once(op, args).await {
                Err(ClientError::Agent { op, mut body }) if body.code == ErrorCode::Conflict => {
                    let Some(policy) = &self.conflict_retry else {
                        return Err(ClientError::Agent { op, body });
                    };
                    match policy.delay(attempt, ConflictRetry::jitter()) {
                        Some(wait) => {
                            if let Some(say) = policy.on_retry {
                                say(&op, attempt, wait);
                            }
                            tokio::time::sleep(wait).await;
                            attempt += 1;
                        }
                        None => {
                            if attempt > 1 {
                                body.message = format!(
                                    "{} (still in conflict after {attempt} attempts: another \
                                     agent keeps changing this record)",
                                    body.message
                                );
                            }
                            return Err(ClientError::Agent { op, body });
                        }
                    }
                }
                other => return other,
            }
        }
    }

    async fn call_once<A: Serialize, R: DeserializeOwned>(
        &self,
        op: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        match self.call_inner(op, args).await {
            Err(e @ (ClientError::Closed { .. } | ClientError::Transport { .. })) => {
                // A frame-level error the agent sent before closing (id null) explains the close.
                match self
                    .unclaimed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    Some(body) => Err(ClientError::Agent {
                        op: op.into(),
                        body,
                    }),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    async fn call_inner<A: Serialize, R: DeserializeOwned>(
        &self,
        op: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let after = self.opts.deadline_for(op);
        match tokio::time::timeout(after, self.exchange(id, op, args)).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(m) = lock_pending(&self.pending).as_mut() {
                    m.remove(&id);
                }
                Err(ClientError::Timeout {
                    op: op.into(),
                    after,
                })
            }
        }
    }

    async fn exchange<A: Serialize, R: DeserializeOwned>(
        &self,
        id: u64,
        op: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        let req = Request::new(id, op, args).map_err(|e| ClientError::Protocol {
            op: op.into(),
            detail: e.to_string(),
        })?;
        // The encoded request may hold a PIN or a plaintext: wiped once written.
        let bytes = zeroize::Zeroizing::new(req.to_cbor().map_err(|e| ClientError::Protocol {
            op: op.into(),
            detail: e.to_string(),
        })?);
        drop(req);
        let (tx, rx) = oneshot::channel();
        match lock_pending(&self.pending).as_mut() {
            Some(m) => m.insert(id, tx),
            None => return Err(ClientError::Closed { op: op.into() }),
        };
        let written = {
            let mut w = self.writer.lock().await;
            frame::write(&mut *w, &bytes, MAX_FRAME).await
        };
        drop(bytes);
        let resp = match written {
            Ok(()) => rx
                .await
                .map_err(|_| ClientError::Closed { op: op.into() })?,
            Err(e) => {
                // The agent may have refused the connection (`busy`) and closed before reading
                // this request: its frame, if it comes, explains the failed write.
                match tokio::time::timeout(std::time::Duration::from_millis(500), rx).await {
                    Ok(Ok(resp)) => resp,
                    _ => {
                        if let Some(m) = lock_pending(&self.pending).as_mut() {
                            m.remove(&id);
                        }
                        return Err(ClientError::Transport {
                            op: op.into(),
                            detail: e.to_string(),
                        });
                    }
                }
            }
        };
        resp.into_result().map_err(|e| match e {
            ResponseError::Agent(body) => ClientError::Agent {
                op: op.into(),
                body,
            },
            other => ClientError::Protocol {
                op: op.into(),
                detail: other.to_string(),
            },
        })
    }

    /// The agent's current state (a fresh `hello`).
    pub async fn status(&self) -> Result<HelloResult, ClientError> {
        self.call::<op::Hello>(&HelloArgs::current()).await
    }

    /// Create the root on the token. Returns the root's id.
    pub async fn init(&self, pin: Pin) -> Result<InitResult, ClientError> {
        self.call::<op::Init>(&PinArgs { pin }).await
    }

    pub async fn unlock(&self, pin: Pin) -> Result<LockState, ClientError> {
        self.call::<op::Unlock>(&PinArgs { pin }).await
    }

    pub async fn lock(&self) -> Result<LockState, ClientError> {
        self.call::<op::Lock>(&Empty {}).await
    }

    pub async fn kek_create(&self, label: Option<String>) -> Result<Created, ClientError> {
        self.call::<op::KekCreate>(&KekCreateArgs { label }).await
    }

    /// Every KEK (all pages).
    pub async fn kek_list(&self) -> Result<KeyList, ClientError> {
        all_pages("kek.list", None, |after| {
            self.kek_list_page(ListArgs { limit: None, after })
        })
        .await
    }

    /// One page of the KEKs: at most `limit`, after the cursor `after`; `next` names the rest.
    pub async fn kek_list_page(&self, page: ListArgs) -> Result<KeyList, ClientError> {
        self.call::<op::KekList>(&page).await
    }

    pub async fn dek_create(&self, args: &DekCreateArgs) -> Result<Created, ClientError> {
        self.call::<op::DekCreate>(args).await
    }

    /// Every DEK, or every DEK under `kek` (all pages).
    pub async fn dek_list(&self, kek: Option<String>) -> Result<KeyList, ClientError> {
        all_pages("dek.list", None, |after| {
            self.dek_list_page(DekListArgs {
                kek: kek.clone(),
                limit: None,
                after,
            })
        })
        .await
    }

    /// One page of the DEKs (`kek`, `limit` and `after` as in [`DekListArgs`]).
    pub async fn dek_list_page(&self, args: DekListArgs) -> Result<KeyList, ClientError> {
        self.call::<op::DekList>(&args).await
    }

    /// The plaintext of an exportable DEK.
    pub async fn dek_export(&self, id: &str) -> Result<ExportedKey, ClientError> {
        self.call::<op::DekExport>(&IdArgs { id: id.into() }).await
    }

    /// One DEK's record (newest and minimum version, state).
    pub async fn dek_show(&self, id: &str) -> Result<KeyInfo, ClientError> {
        self.call::<op::DekShow>(&IdArgs { id: id.into() }).await
    }

    /// Add a version to a DEK; returns the new version.
    pub async fn dek_rotate(&self, id: &str) -> Result<DekRotated, ClientError> {
        self.call::<op::DekRotate>(&IdArgs { id: id.into() }).await
    }

    /// Refuse decryption below `min_version`.
    /// Narrow a DEK's or keypair's usage limits (`key.limits`).
    pub async fn key_limits(&self, args: &KeyLimitsArgs) -> Result<KeyInfo, ClientError> {
        self.call::<op::KeyLimits>(args).await
    }

    pub async fn dek_min_version(
        &self,
        id: &str,
        min_version: u32,
    ) -> Result<DekMinVersionResult, ClientError> {
        self.call::<op::DekMinVersion>(&DekMinVersionArgs {
            id: id.into(),
            min_version,
        })
        .await
    }

    /// Re-encrypt a Cryppo ciphertext under the newest version of its DEK (inside the agent).
    pub async fn rewrap(&self, ciphertext: &str, dek: Option<&str>) -> Result<String, ClientError> {
        let args = RewrapArgs {
            ciphertext: ciphertext.into(),
            dek: dek.map(Into::into),
        };
        Ok(self.call::<op::Rewrap>(&args).await?.ciphertext)
    }

    /// A new KEK version, every child rewrapped under it.
    pub async fn kek_rotate(&self, id: &str) -> Result<KekRotated, ClientError> {
        self.kek_rotate_dropping(id, &[]).await
    }

    /// [`Client::kek_rotate`], removing the enrolled roots `drop_roots` first (`--drop-root`).
    pub async fn kek_rotate_dropping(
        &self,
        id: &str,
        drop_roots: &[String],
    ) -> Result<KekRotated, ClientError> {
        self.call::<op::KekRotate>(&KekRotateArgs {
            id: id.into(),
            drop_roots: drop_roots.to_vec(),
        })
        .await
    }

    /// How far the rotation of KEK `id` has come (`kek rotate --progress` polls this).
    pub async fn kek_rotation(&self, id: &str) -> Result<KekRotationStatus, ClientError> {
        self.call::<op::KekRotation>(&IdArgs { id: id.into() })
            .await
    }

    /// Enroll the root the configuration text `config` describes in its `[root]` (`path`: the
    /// file's absolute path, for its relative paths), with that root's PIN.
    pub async fn root_add(
        &self,
        config: String,
        path: Option<String>,
        pin: Pin,
        label: Option<String>,
    ) -> Result<RootAdded, ClientError> {
        self.call::<op::RootAdd>(&RootAddArgs {
            config,
            path,
            pin,
            label,
        })
        .await
    }

    /// One page of the enrolled roots.
    pub async fn root_list_page(&self, page: ListArgs) -> Result<RootPage, ClientError> {
        self.call::<op::RootList>(&page).await
    }

    /// Every enrolled root (all pages from `after`).
    pub async fn root_list(&self, mut after: Option<String>) -> Result<RootPage, ClientError> {
        let mut roots = Vec::new();
        loop {
            let p = self
                .root_list_page(ListArgs {
                    limit: None,
                    after: after.take(),
                })
                .await?;
            if p.next.is_some() && p.roots.is_empty() {
                return Err(ClientError::Protocol {
                    op: "root.list".into(),
                    detail: "an empty page with a next cursor".into(),
                });
            }
            roots.extend(p.roots);
            match p.next {
                Some(next) => after = Some(next),
                None => return Ok(RootPage { roots, next: None }),
            }
        }
    }

    /// Replace the agent's root by the one `args.config` describes (`root.rotate`); the agent
    /// locks afterwards and must be restarted with that configuration.
    pub async fn root_rotate(&self, args: &RootRotateArgs) -> Result<RootRotated, ClientError> {
        self.call::<op::RootRotate>(args).await
    }

    /// Remove an enrolled root.
    pub async fn root_remove(&self, id: &str) -> Result<Deleted, ClientError> {
        self.call::<op::RootRemove>(&IdArgs { id: id.into() }).await
    }

    /// On a new device: file the enrollment request with its commitment.
    pub async fn device_request(
        &self,
        label: Option<String>,
    ) -> Result<DeviceRequested, ClientError> {
        self.call::<op::DeviceRequest>(&DeviceRequestArgs { label })
            .await
    }

    /// On a new device: the code once an enrolled device answered (`code: None` meanwhile).
    pub async fn device_reveal(&self) -> Result<DeviceRevealed, ClientError> {
        self.call::<op::DeviceReveal>(&Empty {}).await
    }

    /// On an enrolled device: answer a request, or (with its code) enroll it.
    pub async fn device_approve(
        &self,
        id: Option<String>,
        code: Option<String>,
    ) -> Result<DeviceApproved, ClientError> {
        self.call::<op::DeviceApprove>(&DeviceApproveArgs { id, code })
            .await
    }

    /// One page of devices.
    pub async fn device_list_page(&self, page: ListArgs) -> Result<DevicePage, ClientError> {
        self.call::<op::DeviceList>(&page).await
    }

    /// Revoke a device: its wraps and root go, every KEK is rotated.
    pub async fn device_revoke(&self, id: &str) -> Result<DeviceRevoked, ClientError> {
        self.call::<op::DeviceRevoke>(&IdArgs { id: id.into() })
            .await
    }

    /// Revoke a KEK (and every key under it).
    pub async fn kek_revoke(&self, id: &str) -> Result<Revoked, ClientError> {
        self.call::<op::KekRevoke>(&IdArgs { id: id.into() }).await
    }

    /// Revoke a DEK.
    pub async fn dek_revoke(&self, id: &str) -> Result<Revoked, ClientError> {
        self.call::<op::DekRevoke>(&IdArgs { id: id.into() }).await
    }

    /// Revoke a keypair.
    pub async fn keypair_revoke(&self, id: &str) -> Result<Revoked, ClientError> {
        self.call::<op::KeypairRevoke>(&IdArgs { id: id.into() })
            .await
    }

    /// Encrypt under a DEK; returns a Cryppo `Aes256Gcm` string.
    pub async fn encrypt(&self, dek: &str, plaintext: &[u8]) -> Result<String, ClientError> {
        let args = EncryptArgs {
            dek: dek.into(),
            plaintext: SecretBytes::new(plaintext.to_vec()),
        };
        let r: Ciphertext = self.call::<op::Encrypt>(&args).await?;
        Ok(r.ciphertext)
    }

    /// Decrypt a Cryppo string; `dek` is needed only when the ciphertext does not name its DEK.
    pub async fn decrypt(
        &self,
        ciphertext: &str,
        dek: Option<&str>,
    ) -> Result<SecretBytes, ClientError> {
        let args = DecryptArgs {
            ciphertext: ciphertext.into(),
            dek: dek.map(Into::into),
        };
        let r: Plaintext = self.call::<op::Decrypt>(&args).await?;
        Ok(r.plaintext)
    }

    /// A fresh data key under an active DEK: plaintext and wrapped (`datakey.create`). Most
    /// programs want [`Client::encrypt_writer`] instead.
    pub async fn datakey_create(&self, dek: &str) -> Result<DataKey, ClientError> {
        self.call::<op::DatakeyCreate>(&DatakeyCreateArgs { dek: dek.into() })
            .await
    }

    /// Unwrap a data key `datakey.create` made under `dek` at `version` (`datakey.open`).
    pub async fn datakey_open(
        &self,
        dek: &str,
        version: u32,
        wrapped: &[u8],
    ) -> Result<SecretBytes, ClientError> {
        let args = DatakeyOpenArgs {
            dek: dek.into(),
            version,
            wrapped: serde_bytes::ByteBuf::from(wrapped.to_vec()),
        };
        let r: OpenedDataKey = self.call::<op::DatakeyOpen>(&args).await?;
        Ok(r.key)
    }
}

impl Client {
    pub async fn keypair_create(&self, args: &KeypairCreateArgs) -> Result<Created, ClientError> {
        self.call::<op::KeypairCreate>(args).await
    }

    /// Every keypair (all pages).
    pub async fn keypair_list(&self) -> Result<KeyList, ClientError> {
        all_pages("keypair.list", None, |after| {
            self.keypair_list_page(ListArgs { limit: None, after })
        })
        .await
    }

    /// One page of the keypairs.
    pub async fn keypair_list_page(&self, page: ListArgs) -> Result<KeyList, ClientError> {
        self.call::<op::KeypairList>(&page).await
    }

    pub async fn keypair_show(&self, id: &str) -> Result<KeyInfo, ClientError> {
        self.call::<op::KeypairShow>(&IdArgs { id: id.into() })
            .await
    }

    /// Import an RSA private key (PEM) for Cryppo `Rsa4096` shares.
    pub async fn keypair_import(&self, args: &KeypairImportArgs) -> Result<Created, ClientError> {
        self.call::<op::KeypairImport>(args).await
    }

    /// Offer a keypair on the SSH-agent socket (`on`, `confirm`), or stop (`off`).
    pub async fn keypair_ssh(&self, id: &str, mode: SshMode) -> Result<KeyInfo, ClientError> {
        self.call::<op::KeypairSsh>(&KeypairSshArgs {
            id: id.into(),
            mode,
        })
        .await
    }

    /// Set (`Some`, DER) or remove (`None`) a keypair's X.509 certificate.
    pub async fn keypair_cert_set(
        &self,
        id: &str,
        cert: Option<Vec<u8>>,
    ) -> Result<KeyInfo, ClientError> {
        let args = KeypairCertSetArgs {
            id: id.into(),
            cert: cert.map(serde_bytes::ByteBuf::from),
        };
        self.call::<op::KeypairCertSet>(&args).await
    }

    pub async fn keypair_delete(&self, id: &str) -> Result<Deleted, ClientError> {
        self.call::<op::KeypairDelete>(&IdArgs { id: id.into() })
            .await
    }

    /// ECDSA P-256 / SHA-256 signature over `data` (DER, or raw r‖s).
    pub async fn sign(&self, key: &str, data: &[u8], raw: bool) -> Result<Vec<u8>, ClientError> {
        let args = SignArgs {
            key: key.into(),
            data: serde_bytes::ByteBuf::from(data.to_vec()),
            raw,
        };
        let r: SignatureResult = self.call::<op::Sign>(&args).await?;
        Ok(r.signature.into_vec())
    }

    /// Seal a sharing DEK to a recipient (did:key, PEM or JWK); returns base64url text.
    pub async fn share_seal(&self, args: &ShareSealArgs) -> Result<String, ClientError> {
        let r: SealedResult = self.call::<op::ShareSeal>(args).await?;
        Ok(r.sealed)
    }

    pub async fn share_open(&self, args: &ShareOpenArgs) -> Result<OpenedShareResult, ClientError> {
        self.call::<op::ShareOpen>(args).await
    }

    pub async fn node_derive(&self, args: &NodeDeriveArgs) -> Result<Created, ClientError> {
        self.call::<op::NodeDerive>(args).await
    }

    pub async fn node_rekey(&self, args: &NodeRekeyArgs) -> Result<Created, ClientError> {
        self.call::<op::NodeRekey>(args).await
    }

    pub async fn node_revoke(&self, args: &NodeRevokeArgs) -> Result<Created, ClientError> {
        self.call::<op::NodeRevoke>(args).await
    }

    /// Every node key (all pages).
    pub async fn node_list(&self) -> Result<KeyList, ClientError> {
        all_pages("node.list", None, |after| {
            self.node_list_page(ListArgs { limit: None, after })
        })
        .await
    }

    /// One page of the node keys.
    pub async fn node_list_page(&self, page: ListArgs) -> Result<KeyList, ClientError> {
        self.call::<op::NodeList>(&page).await
    }

    /// The cluster's public chain as CBOR.
    pub async fn node_chain(&self, root: Option<String>) -> Result<Vec<u8>, ClientError> {
        let r: ChainResult = self.call::<op::NodeChain>(&NodeChainArgs { root }).await?;
        Ok(r.chain.into_vec())
    }

    /// Replace the cluster root `/` (`node root rotate [--compromised]`).
    pub async fn node_root_rotate(
        &self,
        args: &NodeRootRotateArgs,
    ) -> Result<NodeRootRotated, ClientError> {
        self.call::<op::NodeRootRotate>(args).await
    }

    /// Seal a message to `to`, authenticated by our keypair `sign_with`.
    pub async fn seal(
        &self,
        to: &str,
        sign_with: &str,
        plaintext: &[u8],
    ) -> Result<String, ClientError> {
        let args = SealArgs {
            to: to.into(),
            sign_with: sign_with.into(),
            plaintext: SecretBytes::new(plaintext.to_vec()),
        };
        let r: SealedResult = self.call::<op::Seal>(&args).await?;
        Ok(r.sealed)
    }

    /// Open a sealed message; with a chain, the agent refuses senders it does not vouch for.
    pub async fn open(
        &self,
        sealed: &str,
        chain: Option<Vec<u8>>,
    ) -> Result<OpenedMessage, ClientError> {
        self.open_checked(sealed, chain, None).await
    }

    /// Open a sealed message, refusing senders `chain` does not vouch for and senders a peer's
    /// signed agent policy `agents` revoked.
    pub async fn open_checked(
        &self,
        sealed: &str,
        chain: Option<Vec<u8>>,
        agents: Option<Vec<u8>>,
    ) -> Result<OpenedMessage, ClientError> {
        let args = OpenArgs {
            sealed: sealed.into(),
            chain: chain.map(serde_bytes::ByteBuf::from),
            agents: agents.map(serde_bytes::ByteBuf::from),
        };
        self.call::<op::Open>(&args).await
    }

    // ---- agent authorization (DKMS) ----

    /// The identity's signed agent policy (`not_found` before the first change).
    pub async fn agents_policy(&self) -> Result<AgentPolicyResult, ClientError> {
        self.call::<op::AgentsPolicy>(&Empty {}).await
    }

    /// Authorize agent key `key` (did:key) for `caps` until `expires` (unix seconds).
    pub async fn agents_add(
        &self,
        key: &str,
        caps: Vec<String>,
        expires: Option<u64>,
    ) -> Result<AgentPolicyResult, ClientError> {
        let args = AgentsAddArgs {
            key: key.into(),
            caps,
            expires,
        };
        self.call::<op::AgentsAdd>(&args).await
    }

    /// Revoke agent key `key` (did:key): final.
    pub async fn agents_revoke(&self, key: &str) -> Result<AgentPolicyResult, ClientError> {
        self.call::<op::AgentsRevoke>(&AgentsRevokeArgs { key: key.into() })
            .await
    }

    // ---- the PKCS#11 module's operations ----

    /// The root's id (stable for its life) and the lock state.
    /// The audit log's path, audit key and chain head (`audit.info`).
    pub async fn audit_info(&self) -> Result<AuditInfoResult, ClientError> {
        self.call::<op::AuditInfo>(&Empty {}).await
    }

    /// Copy the keystore into a new, empty one at `to` (an absolute path), checked record by
    /// record (`keystore.migrate`).
    pub async fn keystore_migrate(&self, to: &str) -> Result<KeystoreMigrated, ClientError> {
        self.call::<op::KeystoreMigrate>(&KeystoreMigrateArgs { to: to.to_string() })
            .await
    }

    pub async fn root_info(&self) -> Result<RootInfoResult, ClientError> {
        self.call::<op::RootInfo>(&Empty {}).await
    }

    /// Raw AES-256-GCM seal under a DEK: ciphertext ‖ the first `tag_len` bytes of the tag.
    pub async fn gcm_seal(&self, args: &GcmArgs) -> Result<Vec<u8>, ClientError> {
        let r = self.call::<op::GcmSeal>(args).await?;
        Ok(r.data.expose().to_vec())
    }

    /// Raw AES-256-GCM open under a DEK of ciphertext ‖ tag.
    pub async fn gcm_open(&self, args: &GcmArgs) -> Result<SecretBytes, ClientError> {
        Ok(self.call::<op::GcmOpen>(args).await?.data)
    }

    /// `len` random bytes from the agent.
    pub async fn random(&self, len: u32) -> Result<Vec<u8>, ClientError> {
        let r = self.call::<op::Random>(&RandomArgs { len }).await?;
        Ok(r.bytes.into_vec())
    }

    // ---- recovery ----

    /// Hold a recovery share (CBOR) sealed to one of the agent's keypairs.
    pub async fn recovery_hold(&self, share: &[u8]) -> Result<HeldShareInfo, ClientError> {
        let args = RecoveryHoldArgs {
            share: serde_bytes::ByteBuf::from(share.to_vec()),
        };
        self.call::<op::RecoveryHold>(&args).await
    }

    /// Release held share `id` to the owner's request key `to` (did:key).
    pub async fn recovery_release(
        &self,
        id: &str,
        to: &str,
    ) -> Result<ReleasedShareResult, ClientError> {
        let args = RecoveryReleaseArgs {
            id: id.into(),
            to: to.into(),
        };
        self.call::<op::RecoveryRelease>(&args).await
    }

    /// Forget held recovery share `id`.
    pub async fn recovery_delete(&self, id: &str) -> Result<Deleted, ClientError> {
        self.call::<op::RecoveryDelete>(&IdArgs { id: id.into() })
            .await
    }

    /// One page of the recovery shares the agent holds for others.
    pub async fn recovery_held_page(&self, page: ListArgs) -> Result<KeyList, ClientError> {
        self.call::<op::RecoveryHeld>(&page).await
    }

    /// Enroll a recovery public key (SEC1): every KEK is wrapped to it.
    pub async fn recovery_enroll(
        &self,
        public_key: &[u8],
    ) -> Result<EnrolledRecovery, ClientError> {
        let args = RecoveryEnrollArgs {
            public_key: serde_bytes::ByteBuf::from(public_key.to_vec()),
        };
        self.call::<op::RecoveryEnroll>(&args).await
    }

    /// Restore onto a fresh token with the recovery secret (32 bytes).
    pub async fn recovery_restore(
        &self,
        secret: SecretBytes,
        pin: Pin,
    ) -> Result<RestoredResult, ClientError> {
        self.call::<op::RecoveryRestore>(&RecoveryRestoreArgs { secret, pin })
            .await
    }
}

/// A blocking client: the async [`Client`] on a private current-thread runtime.
///
/// ```no_run
/// # fn main() -> Result<(), keyward_client::ClientError> {
/// let c = keyward_client::BlockingClient::connect_default()?;
/// let ct = c.run(|c| c.encrypt("6f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e", b"hi"))?;
/// # Ok(()) }
/// ```
pub struct BlockingClient {
    rt: tokio::runtime::Runtime,
    inner: Client,
}

impl BlockingClient {
    pub fn connect_default() -> Result<Self, ClientError> {
        Self::connect(&keyward_proto::paths::socket_path(None))
    }

    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        Self::connect_with(path, &ClientOptions::default())
    }

    /// Connect with explicit deadlines (see [`ClientOptions`]).
    pub fn connect_with(path: &Path, opts: &ClientOptions) -> Result<Self, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Transport {
                op: "connect".into(),
                detail: format!("starting a runtime: {e}"),
            })?;
        let inner = rt.block_on(Client::connect_with(path, opts))?;
        Ok(BlockingClient { rt, inner })
    }

    pub fn hello_info(&self) -> &HelloResult {
        self.inner.hello_info()
    }

    /// Run any [`Client`] method to completion: `c.run(|c| c.kek_list())`.
    pub fn run<'a, F, T>(&'a self, f: impl FnOnce(&'a Client) -> F) -> T
    where
        F: std::future::Future<Output = T> + 'a,
    {
        self.rt.block_on(f(&self.inner))
    }
}
