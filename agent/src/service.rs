//! The agent's operations: the protocol's [`Handler`], one typed method per operation.
//!
//! This is the edge between the wire and the hierarchy: it turns argument structs into the
//! hierarchy's own types and keystore records into [`KeyInfo`], so that neither the hierarchy nor
//! the keystore ever takes or returns a protocol type. Runs on blocking threads (token calls
//! block). It never sees the socket and never decides who may call it: the server has checked the
//! peer and the `hello` phase before a request gets here.

use crate::error::{AgentError, Problem};
use crate::hierarchy::Hierarchy;
use crate::keystore::{Algorithm, KeyRecord, Purpose, SshFlags};
use crate::keystore::{Cursor, Page, PageSize};
use crate::peer::{Door, Peer};
use keyward_proto::ops::{self as wire, *};
use keyward_proto::secret::SecretBytes;
use keyward_proto::{ErrorBody, ErrorCode, Request, Response, PROTOCOL_VERSION};
use std::sync::{Arc, OnceLock};

/// The agent's operations over one hierarchy.
#[derive(Clone)]
pub struct Service {
    h: Arc<Hierarchy>,
    /// The SSH door, when the agent serves one: its socket (for `hello`) and state (for `lock`).
    ssh: Option<(String, Arc<crate::ssh::requests::SshAgent>)>,
    /// The PIN prompt (`[prompt]`), when configured.
    prompt: Option<Arc<crate::prompt::Prompter>>,
    /// The configuration file, reported by `hello` (for `keyward doctor`).
    config_path: Option<String>,
    /// The connection's peer process (SO_PEERCRED and `/proc`), named in prompts.
    peer: Arc<Peer>,
    /// The policy file's rules (none: everything allowed), shared by every connection.
    policy: Arc<crate::policy::PolicyState>,
    /// The connection's front door, set by its `hello` (socket unless the client names itself
    /// the PKCS#11 module).
    door: Arc<OnceLock<Door>>,
    /// The audit log, when the agent keeps one: every request but `hello` is appended.
    audit: Option<Arc<crate::audit::Audit>>,
}

/// Ops that run while a required audit log is failing: they reveal and change no key (hello,
/// locking, and the audit log's own state).
fn runs_without_audit(op: &str) -> bool {
    [Op::Hello, Op::Lock, Op::AuditInfo, Op::RootInfo]
        .iter()
        .any(|o| o.name() == op)
}

/// Operations that read only the keystore (never the root or a token): they may run on the
/// socket's own task whatever the backend ([`Service::runs_inline`]).
const KEYSTORE_ONLY_OPS: &[Op] = &[
    Op::KekList,
    Op::DekList,
    Op::DekShow,
    Op::KeypairList,
    Op::KeypairShow,
    Op::NodeList,
    Op::NodeChain,
    Op::KekRotation,
];

/// Operations that may run on the socket's own task when the backend is fast
/// ([`Service::runs_inline`]): single-key crypto and small reads, each bounded to microseconds on
/// a fast backend. Left out, whatever the backend: keystore writes (a commit waits for the disk),
/// PIN and passphrase work (`init`, `unlock`: a KDF), and operations over many keys or records
/// (rotations, recovery, root changes, policy changes).
const FAST_BACKEND_OPS: &[Op] = &[
    Op::Hello,
    Op::DekExport,
    Op::Encrypt,
    Op::Decrypt,
    Op::DatakeyCreate,
    Op::DatakeyOpen,
    Op::Sign,
    Op::SignDigest,
    Op::GcmSeal,
    Op::GcmOpen,
    Op::KeypairEcdh,
    Op::Random,
    Op::Seal,
    Op::Open,
    Op::ShareSeal,
    Op::ShareOpen,
    Op::Rewrap,
    Op::RootInfo,
    Op::AgentsPolicy,
];

impl Service {
    pub fn new(h: Arc<Hierarchy>) -> Self {
        Service {
            h,
            ssh: None,
            prompt: None,
            config_path: None,
            peer: Arc::new(Peer::unknown()),
            policy: Arc::new(crate::policy::PolicyState::none()),
            door: Arc::new(OnceLock::new()),
            audit: None,
        }
    }

    /// Append every request to `audit` (and refuse key operations while it fails, if required).
    pub fn with_audit(mut self, audit: Option<Arc<crate::audit::Audit>>) -> Self {
        self.audit = audit;
        self
    }

    /// This service for one connection, whose peer process is `peer` (named in prompts).
    pub fn for_peer(&self, peer: Peer) -> Self {
        Service {
            peer: Arc::new(peer),
            door: Arc::new(OnceLock::new()),
            ..self.clone()
        }
    }

    /// The connection's peer process.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The connection's front door (the socket until its `hello` says otherwise).
    pub fn door(&self) -> Door {
        self.door.get().copied().unwrap_or(Door::Socket)
    }

    /// Enforce `policy` on every request but `hello`.
    pub fn with_policy(mut self, policy: Arc<crate::policy::PolicyState>) -> Self {
        self.policy = policy;
        self
    }

    /// The policy rules every request is checked against, before anything else runs.
    /// `hello` is never refused (clients must be able to learn the agent's state); every other
    /// op, known or malformed, is checked by its name and the key its arguments name.
    fn check_policy(&self, req: &Request) -> Result<(), AgentError> {
        if self.policy.current().is_none() || req.op == Op::Hello.name() {
            return Ok(());
        }
        let id = crate::policy::key_id_of(&req.args);
        let id = id.as_deref();
        // Read-only: the record's label, kind and purpose, only when a rule names them (the
        // record read checks its MAC). A key that is not found (or an id that is no UUID) is
        // matched by its id only.
        let rec = id
            .filter(|_| self.policy.names_key_attributes())
            .and_then(|i| uuid::Uuid::parse_str(i).ok())
            .and_then(|u| self.h.any_record_copy(&u).ok().flatten());
        let key = id.map(|id| crate::policy::KeyFacts {
            id,
            label: rec.as_ref().and_then(|r| r.label.as_deref()),
            kind: rec.as_ref().map(|r| r.kind.as_str()),
            purpose: rec.as_ref().and_then(|r| r.purpose.map(|p| p.as_str())),
        });
        // The sentence a `confirm` prompt shows, built only for a prompt; it names the key's
        // label, so the record is read then if the rules did not need it.
        let what = || {
            let label = rec.as_ref().map(|r| r.label.clone()).unwrap_or_else(|| {
                id.and_then(|i| uuid::Uuid::parse_str(i).ok())
                    .and_then(|u| self.h.any_record_copy(&u).ok().flatten())
                    .and_then(|r| r.label.clone())
            });
            match (id, label) {
                (Some(k), Some(l)) => format!("`{}` with key {k} ({l})", req.op),
                (Some(k), None) => format!("`{}` with key {k}", req.op),
                (None, _) => format!("`{}`", req.op),
            }
        };
        self.policy
            .check(
                &self.peer,
                self.door(),
                &req.op,
                key,
                what,
                self.prompt.as_deref(),
            )
            .map_err(AgentError::PolicyDenied)
    }

    /// Report the configuration file's path in `hello`.
    pub fn with_config_path(mut self, path: &std::path::Path) -> Self {
        self.config_path = Some(path.display().to_string());
        self
    }

    /// Ask for the PIN through pinentry when a request needs the root and the agent is locked.
    pub fn with_prompt(mut self, prompt: Option<Arc<crate::prompt::Prompter>>) -> Self {
        self.prompt = prompt;
        self
    }

    /// Tell clients about the SSH-agent socket, and empty its key cache on `lock`.
    pub fn with_ssh(
        mut self,
        socket: &std::path::Path,
        agent: Arc<crate::ssh::requests::SshAgent>,
    ) -> Self {
        self.ssh = Some((socket.display().to_string(), agent));
        self
    }

    /// A keypair's [`KeyInfo`] with its SSH mode (`on`/`confirm`) filled in.
    fn keypair_info(&self, r: &KeyRecord) -> Result<KeyInfo, AgentError> {
        let mut info = key_info(r);
        let f = self.h.keypair_ssh_flags(&r.id)?;
        info.ssh_mode = ssh_mode(f, r);
        Ok(info)
    }

    /// Whether `req` may run on the socket's own task (a runtime worker) instead of a blocking
    /// thread: only when nothing in it can wait for long. That needs all of: an op that reads
    /// only the keystore ([`KEYSTORE_ONLY_OPS`]), or one of [`FAST_BACKEND_OPS`] on a fast root
    /// backend ([`Hierarchy::fast_backend`]: in-process or a software token; cards and hardware
    /// tokens never); no pinentry configured (no prompt can come up: unlock on demand,
    /// `confirm` rules or key limits); no audit log that makes requests wait for an `fdatasync`
    /// (`[audit] sync_ms = 0`; otherwise a request writes its own entry with one `write`, as
    /// short as the keystore reads an inline request does anyway); and a keystore whose start-up check is done (its gate waits otherwise). The server adds
    /// its own condition: no other request of the connection in flight or queued
    /// (ARCHITECTURE.md "Where a request runs").
    pub fn runs_inline(&self, req: &Request) -> bool {
        let Some(op) = Op::from_name(&req.op) else {
            return false;
        };
        (KEYSTORE_ONLY_OPS.contains(&op)
            || (FAST_BACKEND_OPS.contains(&op) && self.h.fast_backend()))
            && self.prompt.is_none()
            && self.h.prompter().is_none()
            && self
                .audit
                .as_ref()
                .is_none_or(|a| !a.required() || a.acknowledges_before_sync())
            && self.h.keystore_settled()
            && self.h.ks.is_local()
    }

    /// Handle one request: decode, check access, run, encode. Failures are logged by code only
    /// (never with arguments).
    pub fn handle(&self, req: &Request) -> Response {
        // Until the keystore's start-up check passed, only `hello` (status) and `lock` run.
        let ready = if req.op == Op::Hello.name() || req.op == Op::Lock.name() {
            Ok(())
        } else {
            self.h.keystore_ready()
        };
        let audit = self.audit.as_ref().filter(|_| req.op != Op::Hello.name());
        let exempt = runs_without_audit(&req.op);
        let op_name = || Op::from_name(&req.op).map_or("request", Op::name);
        let mut resp = if audit.is_some_and(|a| a.refuses()) && !exempt {
            let e = AgentError::AuditUnavailable { op: op_name() };
            Response::err(Some(req.id), e.to_body())
        } else {
            // One `data_version` read for the whole request (policy check, record copies of
            // the key and its KEK, ...): `Keystore::one_request`.
            crate::keystore::Keystore::one_request(|| {
                match ready.and_then(|()| self.check_policy(req)) {
                    // Key limits that ask for confirmation name this connection's peer.
                    Ok(()) => {
                        let run = || {
                            crate::limits::with_requester(self.peer.clone(), || dispatch(self, req))
                        };
                        let r = run();
                        // Another device replaced the integrity key (`device.revoke`): load the
                        // new one and run the request again, once (a refusal changed nothing).
                        if !r.is_ok()
                            && r.err
                                .as_ref()
                                .is_some_and(|e| e.code == ErrorCode::KeystoreTampered)
                            && self.h.follow_integrity_rekey()
                        {
                            run()
                        } else {
                            r
                        }
                    }
                    Err(e) => Response::err(Some(req.id), e.to_body()),
                }
            })
        };
        if let Some(a) = audit {
            let mut r = crate::audit::Record::of(&req.op, self.door().name(), &self.peer);
            r.key = crate::policy::key_id_of(&req.args)
                .or_else(|| resp.result_text("id"))
                .map(|k| match k.len() {
                    0..=128 => k.to_string(),
                    _ => k.chars().take(128).collect(),
                });
            r.result = resp
                .err
                .as_ref()
                .map_or("ok", |e| e.code.as_str())
                .to_string();
            // Only a success waits for its entry: a refusal gave nothing away. The wait parks
            // this thread until the writer thread has `write`n the entry's batch (not synced:
            // audit.rs), so it is short, but it blocks: call `handle` off the async workers.
            let wait = a.required() && !exempt && resp.err.is_none();
            if !a.append(r, wait) && wait {
                // The result is withheld: a key or plaintext in it is wiped, not sent.
                resp.wipe_result();
                let e = AgentError::AuditUnavailable { op: op_name() };
                resp = Response::err(Some(req.id), e.to_body());
            }
        }
        if let Some(body) = &resp.err {
            if body.code == ErrorCode::Internal || body.code == ErrorCode::TokenError {
                tracing::error!(op = %req.op, error = %body.message, "request failed");
            } else {
                tracing::debug!(op = %req.op, code = %body.code, "request refused");
            }
        }
        resp
    }
}

impl HandlerError for AgentError {
    fn to_body(&self) -> ErrorBody {
        AgentError::to_body(self)
    }
}

fn policy_result(p: crate::agents::SignedAgentPolicy) -> AgentPolicyResult {
    AgentPolicyResult {
        root: p.policy.root.to_did_key(),
        seq: p.policy.seq,
        policy: serde_bytes::ByteBuf::from(p.bytes),
    }
}

/// An RFC 3339 `not_after` as Unix seconds (`invalid_args` names the field, never the text).
fn parse_not_after(text: &str) -> Result<u64, AgentError> {
    keyward_proto::rfc3339::parse(text)
        .ok_or_else(|| AgentError::invalid("not_after", Problem::NotRfc3339))
}

/// The limits a `dek.create` or `keypair.create` asks for, in the hierarchy's terms.
fn limits_request(
    spec: Option<&KeyLimitsSpec>,
) -> Result<crate::limits::LimitsRequest, AgentError> {
    let Some(spec) = spec else {
        return Ok(crate::limits::LimitsRequest::default());
    };
    Ok(crate::limits::LimitsRequest {
        usage: spec.usage.clone(),
        confirm: spec.confirm.then_some(true),
        not_after: spec.not_after.as_deref().map(parse_not_after).transpose()?,
    })
}

/// What a client may see of a keystore record: never key material.
pub fn key_info(r: &KeyRecord) -> KeyInfo {
    KeyInfo {
        id: r.id.to_string(),
        kind: r.kind.as_str().to_string(),
        label: r.label.clone(),
        parent: r.parent.map(|p| p.to_string()),
        scheme: r.scheme.clone(),
        purpose: r.purpose.map(|p| match p {
            Purpose::Personal => wire::Purpose::Personal,
            Purpose::Sharing => wire::Purpose::Sharing,
        }),
        exportable: r.exportable,
        version: r.version,
        created: r.created,
        rotated: r.rotated,
        state: r.state.as_str().to_string(),
        public_key: r.public_key.clone().map(serde_bytes::ByteBuf::from),
        name: r.name.clone(),
        algorithm: r.algorithm.map(|a| a.as_str().to_string()),
        ssh_mode: None,
        ssh: crate::ssh::keys::describe(r).map(|d| d.0),
        ssh_fingerprint: crate::ssh::keys::describe(r).map(|d| d.1),
        certificate: r.certificate.clone().map(serde_bytes::ByteBuf::from),
        min_version: r.min_version,
        // Absent for keys without stored limits (the kind's defaults, `KeyInfo::usage_or_default`):
        // old keys' answers stay as small as they were.
        usage: (r.usage.is_some() && crate::limits::possible_usage(r.kind).is_some())
            .then(|| crate::limits::Limits::of(r).usage.iter().collect()),
        confirm: crate::limits::possible_usage(r.kind).is_some()
            && crate::limits::Limits::of(r).confirm,
        not_after: r.not_after,
    }
}

fn revoked(ids: Vec<uuid::Uuid>) -> Revoked {
    Revoked {
        id: ids.first().map(|i| i.to_string()).unwrap_or_default(),
        revoked: ids.iter().map(|i| i.to_string()).collect(),
    }
}

/// `on`/`confirm` for a keypair whose flags say it is offered to SSH clients.
/// A keypair whose usage limits ask for confirmation is confirmed by the SSH door too, so it
/// shows as `confirm`.
fn ssh_mode(f: SshFlags, r: &KeyRecord) -> Option<SshMode> {
    f.has(SshFlags::OFFERED).then_some(
        if f.has(SshFlags::CONFIRM) || crate::limits::Limits::of(r).confirm {
            SshMode::Confirm
        } else {
            SshMode::On
        },
    )
}

/// A keypair's [`KeyInfo`] in a list: its SSH mode from the record's own (MAC-checked) flags,
/// which the SSH door honours only while the keypair is active (as `keypair_ssh_flags` reads).
fn listed_keypair_info(r: &KeyRecord) -> KeyInfo {
    let mut info = key_info(r);
    if r.state == crate::keystore::KeyState::Active {
        info.ssh_mode = ssh_mode(r.ssh, r);
    }
    info
}

/// Bytes of a value's CBOR encoding, counted without keeping them.
fn encoded_len(v: &KeyInfo) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Encoding a `KeyInfo` into a sink that never fails does not fail; if it did, counting the
    // page as full is the safe answer.
    match ciborium::into_writer(v, &mut c) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

/// The page a list request asks for: `limit` (1 to `MAX_PAGE`; absent: as many as fit), every
/// page bounded by `PAGE_BYTES` of encoded keys; `after` a cursor from an earlier `next`.
fn page_request(
    limit: Option<u32>,
    after: Option<&str>,
) -> Result<(usize, Option<Cursor>), AgentError> {
    let limit = page_limit(limit, "keys")?.unwrap_or(usize::MAX);
    let after = after
        .map(Cursor::parse)
        .transpose()
        .map_err(|_| AgentError::invalid("after", Problem::NotCursor))?;
    Ok((limit, after))
}

/// A list request's `limit`: 1 to `MAX_PAGE` (`unit` names what is counted in the refusal);
/// `None` when absent.
fn page_limit(limit: Option<u32>, unit: &'static str) -> Result<Option<usize>, AgentError> {
    match limit {
        None => Ok(None),
        Some(n @ 1..=MAX_PAGE) => Ok(Some(n as usize)),
        Some(_) => Err(AgentError::invalid(
            "limit",
            Problem::OutOfRange {
                min: 1,
                max: u64::from(MAX_PAGE),
                unit,
            },
        )),
    }
}

/// Run one page of a list: `fetch` reads the records (bounded by count and by the encoded size
/// of what `info` makes of them), `info` turns each into what the client sees.
fn list_page(
    limit: Option<u32>,
    after: Option<&str>,
    info: fn(&KeyRecord) -> KeyInfo,
    fetch: impl FnOnce(Option<&Cursor>, &PageSize) -> Result<Page, AgentError>,
) -> Result<KeyList, AgentError> {
    let (limit, after) = page_request(limit, after)?;
    // Each record's `KeyInfo` is made once: measured here, kept for the answer.
    let infos = std::cell::RefCell::new(Vec::new());
    let size = |r: &KeyRecord| {
        let i = info(r);
        let len = encoded_len(&i);
        infos.borrow_mut().push(i);
        len
    };
    let page = fetch(
        after.as_ref(),
        &PageSize {
            limit,
            bytes: PAGE_BYTES,
            size: Some(&size),
        },
    )?;
    // `size` saw the page's records in order, and perhaps the one that did not fit; or none,
    // when the page came from the hierarchy's page copies.
    let mut keys = infos.into_inner();
    if keys.len() < page.records.len() {
        keys = page.records.iter().map(info).collect();
    }
    keys.truncate(page.records.len());
    debug_assert!(keys
        .iter()
        .zip(&page.records)
        .all(|(k, r)| k.id == r.id.to_string()));
    Ok(KeyList {
        keys,
        next: page.next.map(|c| c.to_text()),
    })
}

/// What a client sees of a held recovery share.
fn held_info(f: crate::recovery::HeldFacts) -> HeldShareInfo {
    HeldShareInfo {
        id: f.id.to_string(),
        recovery: f.recovery.to_did_key(),
        tag: f.tag.to_hex(),
        index: f.hint.index,
        threshold: f.hint.threshold,
        trustees: f.hint.trustees,
        keypair: f.keypair.to_string(),
    }
}

fn created(id: uuid::Uuid) -> Created {
    Created { id: id.to_string() }
}

impl Handler for Service {
    type Error = AgentError;

    fn check_access(&self, op: Op) -> Result<(), AgentError> {
        match (self.h.root_record(op.name()), &self.prompt) {
            (Err(AgentError::Locked { .. }), Some(p)) => {
                let who = self.peer.describe();
                p.unlock(&self.h, op.name(), &who)?;
                self.h.root_record(op.name()).map(|_| ())
            }
            (r, _) => r.map(|_| ()),
        }
    }

    fn hello(&self, args: HelloArgs) -> Result<HelloResult, AgentError> {
        if args.version != PROTOCOL_VERSION {
            return Err(AgentError::UnsupportedVersion {
                client: args.version,
            });
        }
        let door = crate::peer::door_from_hello(args.client.as_deref());
        if self.door.set(door).is_ok() {
            let p = &self.peer;
            tracing::info!(
                door = door.name(),
                pid = p.pid,
                uid = p.uid,
                exe = p.exe_text().as_deref().unwrap_or("?"),
                unit = p.unit.as_deref().unwrap_or("-"),
                "client connected"
            );
        }
        let keystore_check = self.h.keystore_check();
        // A keystore whose start-up check has not passed may not even be readable: `hello`
        // still answers (status must say why), reporting it uninitialized; every other
        // request is refused by the gate in `handle`.
        let initialized = match self.h.is_initialized() {
            Ok(b) => b,
            Err(e)
                if keystore_check
                    .as_ref()
                    .is_some_and(|c| c.state != KeystoreCheckState::Ok) =>
            {
                tracing::warn!(error = %e, "hello: the keystore cannot be read before its check passed");
                false
            }
            Err(e) => return Err(e),
        };
        Ok(HelloResult {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            root_kind: self.h.root_kind(),
            token: self.h.describe(),
            initialized,
            locked: self.h.is_locked(),
            ops: Op::ALL.iter().map(|o| o.name().to_string()).collect(),
            ssh_socket: self.ssh.as_ref().map(|s| s.0.clone()),
            config: self.config_path.clone(),
            keystore: Some(self.h.ks.location()),
            pin_attempts_left: Some(self.h.pin_attempts_left()),
            keystore_check,
            audit_log: self.audit.as_ref().map(|a| a.path().display().to_string()),
        })
    }

    fn init(&self, a: PinArgs) -> Result<InitResult, AgentError> {
        let (root, joined) = self.h.init_or_join(&a.pin)?;
        if let Some(a) = &self.audit {
            if !joined {
                a.checkpoint("init");
            }
        }
        Ok(InitResult {
            id: root.to_string(),
            token: self.h.describe(),
            joined,
        })
    }

    fn device_request(&self, a: DeviceRequestArgs) -> Result<DeviceRequested, AgentError> {
        let (id, fingerprint) = self.h.device_request(a.label)?;
        Ok(DeviceRequested {
            id: id.to_string(),
            fingerprint,
        })
    }

    fn device_reveal(&self, _: Empty) -> Result<DeviceRevealed, AgentError> {
        let id = self
            .h
            .device
            .pending()
            .map(|p| p.id.to_string())
            .unwrap_or_default();
        let code = self.h.device_reveal()?;
        Ok(DeviceRevealed {
            id,
            answered: code.is_some(),
            code,
        })
    }

    fn device_approve(&self, a: DeviceApproveArgs) -> Result<DeviceApproved, AgentError> {
        use crate::devices::Approval;
        Ok(
            match self.h.device_approve(a.id.as_deref(), a.code.as_deref())? {
                Approval::Answered { id, fingerprint } => DeviceApproved {
                    id: id.to_string(),
                    state: "answered".into(),
                    fingerprint: Some(fingerprint),
                    root: None,
                    wrapped: None,
                },
                Approval::Waiting { id, fingerprint } => DeviceApproved {
                    id: id.to_string(),
                    state: "waiting".into(),
                    fingerprint: Some(fingerprint),
                    root: None,
                    wrapped: None,
                },
                Approval::Enrolled { id, root, wrapped } => DeviceApproved {
                    id: id.to_string(),
                    state: "enrolled".into(),
                    fingerprint: None,
                    root: Some(root.to_string()),
                    wrapped: Some(wrapped),
                },
            },
        )
    }

    fn device_list(&self, a: ListArgs) -> Result<DevicePage, AgentError> {
        // Without a limit, at most `MAX_PAGE` devices (a few hundred bytes each: well inside a
        // frame) and a `next`: the answer never grows with the fleet.
        let limit = page_limit(a.limit, "devices")?.unwrap_or(MAX_PAGE as usize);
        let (devices, next) = self.h.device_page(a.after.as_deref(), limit)?;
        Ok(DevicePage {
            devices: devices
                .into_iter()
                .map(|d| DeviceEntry {
                    id: d.row.id.to_string(),
                    state: d.row.state.clone(),
                    fingerprint: crate::devices::fingerprint(&d.row.public_key),
                    label: d.row.label.clone(),
                    token_serial: d.row.token_serial.clone(),
                    key: Some(if d.key_on_token { "token" } else { "root" }.to_string()),
                    root: d.root.map(|r| r.to_string()),
                    enrolled_by: d.row.enrolled_by.map(|r| r.to_string()),
                    created: d.row.created,
                    current: d.current,
                })
                .collect(),
            next,
        })
    }

    fn device_revoke(&self, a: IdArgs) -> Result<DeviceRevoked, AgentError> {
        let r = self.h.device_revoke(&a.id)?;
        Ok(DeviceRevoked {
            id: r.id.to_string(),
            keks: r.keks.into_iter().map(|u| u.to_string()).collect(),
            deks_rotated: r.deks_rotated,
            shared_deks: r.shared_deks,
        })
    }

    fn unlock(&self, a: PinArgs) -> Result<LockState, AgentError> {
        self.h.unlock(&a.pin)?;
        if let Some(a) = &self.audit {
            // Signs the entries written while locked.
            a.checkpoint("unlock");
        }
        Ok(LockState { locked: false })
    }

    fn lock(&self, _: Empty) -> Result<LockState, AgentError> {
        if let Some((_, ssh)) = &self.ssh {
            ssh.on_lock();
        }
        if let Some(a) = &self.audit {
            // The last signature before the key goes away.
            a.checkpoint("lock");
        }
        self.h.lock()?;
        Ok(LockState { locked: true })
    }

    fn kek_create(&self, a: KekCreateArgs) -> Result<Created, AgentError> {
        self.h.kek_create(a.label).map(created)
    }

    fn kek_list(&self, a: ListArgs) -> Result<KeyList, AgentError> {
        list_page(a.limit, a.after.as_deref(), key_info, |after, size| {
            self.h.kek_page(after, size)
        })
    }

    fn dek_create(&self, a: DekCreateArgs) -> Result<Created, AgentError> {
        let purpose = match a.purpose {
            wire::Purpose::Personal => Purpose::Personal,
            wire::Purpose::Sharing => Purpose::Sharing,
        };
        let limits = limits_request(a.limits.as_ref())?;
        self.h
            .dek_create_limited(a.kek.as_deref(), purpose, a.exportable, a.label, &limits)
            .map(created)
    }

    fn dek_list(&self, a: DekListArgs) -> Result<KeyList, AgentError> {
        list_page(a.limit, a.after.as_deref(), key_info, |after, size| {
            self.h.dek_page(a.kek.as_deref(), after, size)
        })
    }

    fn dek_export(&self, a: IdArgs) -> Result<ExportedKey, AgentError> {
        let key = self.h.dek_export(&a.id)?;
        Ok(ExportedKey {
            id: a.id,
            key: SecretBytes::from(key),
        })
    }

    fn dek_show(&self, a: IdArgs) -> Result<KeyInfo, AgentError> {
        self.h.dek_show(&a.id).map(|r| key_info(&r))
    }

    fn dek_rotate(&self, a: IdArgs) -> Result<DekRotated, AgentError> {
        let version = self.h.dek_rotate(&a.id)?;
        Ok(DekRotated { id: a.id, version })
    }

    fn dek_min_version(&self, a: DekMinVersionArgs) -> Result<DekMinVersionResult, AgentError> {
        let set = self.h.dek_min_version(&a.id, a.min_version)?;
        Ok(DekMinVersionResult {
            id: set.id.to_string(),
            version: set.version,
            min_version: set.min_version,
            warning: set.warning(),
        })
    }

    fn rewrap(&self, a: RewrapArgs) -> Result<Ciphertext, AgentError> {
        let ciphertext = self.h.rewrap(&a.ciphertext, a.dek.as_deref())?;
        Ok(Ciphertext { ciphertext })
    }

    fn key_limits(&self, a: KeyLimitsArgs) -> Result<KeyInfo, AgentError> {
        let req = crate::limits::LimitsRequest {
            usage: a.usage,
            confirm: a.confirm,
            not_after: a.not_after.as_deref().map(parse_not_after).transpose()?,
        };
        let r = self.h.key_limits(&a.id, &req)?;
        match r.kind {
            crate::keystore::KeyKind::Keypair => self.keypair_info(&r),
            _ => Ok(key_info(&r)),
        }
    }

    fn kek_rotate(&self, a: KekRotateArgs) -> Result<KekRotated, AgentError> {
        let r = self.h.kek_rotate_dropping(&a.id, &a.drop_roots)?;
        Ok(KekRotated {
            id: r.id.to_string(),
            version: r.version,
            rewrapped: r.rewrapped as u64,
        })
    }

    fn kek_rotation(&self, a: IdArgs) -> Result<KekRotationStatus, AgentError> {
        let (id, progress) = self.h.kek_rotation_progress(&a.id)?;
        let (done, total) = progress.unwrap_or((0, 0));
        Ok(KekRotationStatus {
            id: id.to_string(),
            pending: progress.is_some(),
            done,
            total,
        })
    }

    fn kek_revoke(&self, a: IdArgs) -> Result<Revoked, AgentError> {
        self.h
            .revoke(crate::keystore::KeyKind::Kek, &a.id)
            .map(revoked)
    }

    fn dek_revoke(&self, a: IdArgs) -> Result<Revoked, AgentError> {
        self.h
            .revoke(crate::keystore::KeyKind::Dek, &a.id)
            .map(revoked)
    }

    fn keypair_revoke(&self, a: IdArgs) -> Result<Revoked, AgentError> {
        self.h
            .revoke(crate::keystore::KeyKind::Keypair, &a.id)
            .map(revoked)
    }

    fn encrypt(&self, a: EncryptArgs) -> Result<Ciphertext, AgentError> {
        let ciphertext = self.h.encrypt(&a.dek, a.plaintext.expose())?;
        Ok(Ciphertext { ciphertext })
    }

    fn decrypt(&self, a: DecryptArgs) -> Result<Plaintext, AgentError> {
        let pt = self.h.decrypt(&a.ciphertext, a.dek.as_deref())?;
        Ok(Plaintext {
            plaintext: SecretBytes::from(pt),
        })
    }

    fn datakey_create(&self, a: DatakeyCreateArgs) -> Result<DataKey, AgentError> {
        let made = self.h.datakey_create(&a.dek)?;
        Ok(DataKey {
            dek: made.dek.to_string(),
            version: made.version,
            key: SecretBytes::from(made.key),
            wrapped: serde_bytes::ByteBuf::from(made.wrapped),
        })
    }

    fn datakey_open(&self, a: DatakeyOpenArgs) -> Result<OpenedDataKey, AgentError> {
        let key = self.h.datakey_open(&a.dek, a.version, &a.wrapped)?;
        Ok(OpenedDataKey {
            key: SecretBytes::from(key),
        })
    }

    fn keypair_create(&self, a: KeypairCreateArgs) -> Result<Created, AgentError> {
        let alg = match a.alg.as_deref() {
            None => None,
            Some(name) => Some(
                Algorithm::parse(name)
                    .ok_or_else(|| AgentError::invalid("alg", Problem::UnknownAlgorithm))?,
            ),
        };
        let limits = limits_request(a.limits.as_ref())?;
        let id =
            self.h
                .keypair_create_limited(a.kek.as_deref(), a.label, a.on_token, alg, &limits)?;
        if let Some(mode) = a.ssh.filter(|m| *m != SshMode::Off) {
            self.h
                .keypair_set_ssh(&id.to_string(), true, mode == SshMode::Confirm)?;
        }
        Ok(created(id))
    }

    fn keypair_list(&self, a: ListArgs) -> Result<KeyList, AgentError> {
        list_page(
            a.limit,
            a.after.as_deref(),
            listed_keypair_info,
            |after, size| self.h.keypair_page(after, size),
        )
    }

    fn keypair_show(&self, a: IdArgs) -> Result<KeyInfo, AgentError> {
        self.keypair_info(&self.h.keypair_show(&a.id)?)
    }

    fn keypair_ssh(&self, a: KeypairSshArgs) -> Result<KeyInfo, AgentError> {
        let on = a.mode != SshMode::Off;
        let r = self
            .h
            .keypair_set_ssh(&a.id, on, a.mode == SshMode::Confirm)?;
        self.keypair_info(&r)
    }

    fn root_add(&self, a: RootAddArgs) -> Result<wire::RootAdded, AgentError> {
        let new = root_from_text(&a.config, a.path.as_deref())?;
        let r = self.h.root_add(new.as_ref(), &a.pin, a.label)?;
        Ok(wire::RootAdded {
            id: r.id.to_string(),
            created: r.created,
            wrapped: r.wrapped as u64,
        })
    }

    fn root_list(&self, a: ListArgs) -> Result<RootPage, AgentError> {
        let (limit, after) = page_request(a.limit, a.after.as_deref())?;
        let (page, own) = self.h.root_page(
            after.as_ref(),
            &PageSize {
                limit,
                bytes: PAGE_BYTES,
                size: None,
            },
        )?;
        Ok(RootPage {
            roots: page
                .records
                .iter()
                .map(|r| RootEntry {
                    id: r.id.to_string(),
                    scheme: r.scheme.clone(),
                    label: r.label.clone(),
                    locator: r.locator.clone(),
                    created: r.created,
                    current: own == Some(r.id),
                })
                .collect(),
            next: page.next.map(|c| c.to_text()),
        })
    }

    fn root_rotate(&self, a: RootRotateArgs) -> Result<wire::RootRotated, AgentError> {
        let new = root_from_text(&a.config, a.path.as_deref())?;
        let r = self
            .h
            .root_rotate(new.as_ref(), &a.pin, a.label, a.destroy_old, a.compromised)?;
        use crate::root::RootDestroyed;
        let (destroyed, not_destroyed) = match r.destroyed {
            None => (None, None),
            Some(RootDestroyed::Destroyed(what)) => (Some(what), None),
            Some(RootDestroyed::Nothing) => (
                None,
                Some("a passphrase root is no object: nothing to destroy".into()),
            ),
            Some(RootDestroyed::Cannot(why)) => (None, Some(why.into())),
            Some(RootDestroyed::Failed(e)) => (None, Some(format!("destroying it failed: {e}"))),
        };
        Ok(wire::RootRotated {
            id: r.id.to_string(),
            old: r.old.to_string(),
            enrolled: r.enrolled,
            moved: r.moved as u64,
            destroyed,
            not_destroyed,
            deks: r.deks.iter().map(ToString::to_string).collect(),
            keks: r.keks.iter().map(ToString::to_string).collect(),
        })
    }

    fn root_remove(&self, a: IdArgs) -> Result<Deleted, AgentError> {
        let gone = self.h.root_remove(&a.id)?;
        Ok(Deleted {
            id: gone.to_string(),
            deleted: true,
        })
    }

    fn keypair_delete(&self, a: IdArgs) -> Result<Deleted, AgentError> {
        let gone = self.h.keypair_delete(&a.id)?;
        Ok(Deleted {
            id: gone.to_string(),
            deleted: true,
        })
    }

    fn keypair_cert_set(&self, a: KeypairCertSetArgs) -> Result<KeyInfo, AgentError> {
        self.h
            .keypair_cert_set(&a.id, a.cert.map(serde_bytes::ByteBuf::into_vec))
            .map(|r| key_info(&r))
    }

    fn keypair_import(&self, a: KeypairImportArgs) -> Result<Created, AgentError> {
        self.h
            .keypair_import(a.pem.expose(), a.kek.as_deref(), a.label)
            .map(created)
    }

    fn sign(&self, a: SignArgs) -> Result<SignatureResult, AgentError> {
        let sig = self.h.sign(&a.key, &a.data, a.raw)?;
        Ok(SignatureResult {
            signature: serde_bytes::ByteBuf::from(sig),
        })
    }

    fn share_seal(&self, a: ShareSealArgs) -> Result<SealedResult, AgentError> {
        let sealed = self.h.share_seal(&a.dek, &a.to, a.from.as_deref())?;
        Ok(SealedResult { sealed })
    }

    fn share_open(&self, a: ShareOpenArgs) -> Result<OpenedShareResult, AgentError> {
        let (id, sender) = self.h.share_open(
            &a.sealed,
            a.kek.as_deref(),
            a.from.as_deref(),
            a.id.as_deref(),
        )?;
        Ok(OpenedShareResult { id, sender })
    }

    fn node_derive(&self, a: NodeDeriveArgs) -> Result<Created, AgentError> {
        self.h
            .node_derive(
                &a.name,
                a.parent.as_deref(),
                a.kek.as_deref(),
                a.ttl_seconds,
            )
            .map(created)
    }

    fn node_rekey(&self, a: NodeRekeyArgs) -> Result<Created, AgentError> {
        self.h.node_rekey(&a.name, a.ttl_seconds).map(created)
    }

    fn node_root_rotate(&self, a: NodeRootRotateArgs) -> Result<NodeRootRotated, AgentError> {
        let r = self.h.node_root_rotate(a.compromised)?;
        Ok(NodeRootRotated {
            id: r.id.to_string(),
            old: r.old.to_string(),
            compromised: a.compromised,
            redelegated: r.redelegated as u64,
        })
    }

    fn node_revoke(&self, a: NodeRevokeArgs) -> Result<Created, AgentError> {
        self.h.node_revoke(&a.name, a.by.as_deref()).map(created)
    }

    fn node_list(&self, a: ListArgs) -> Result<KeyList, AgentError> {
        list_page(a.limit, a.after.as_deref(), key_info, |after, size| {
            self.h.node_page(after, size)
        })
    }

    fn node_chain(&self, a: NodeChainArgs) -> Result<ChainResult, AgentError> {
        let chain = self.h.node_chain(a.root.as_deref())?;
        Ok(ChainResult {
            chain: serde_bytes::ByteBuf::from(chain),
        })
    }

    fn seal(&self, a: SealArgs) -> Result<SealedResult, AgentError> {
        let sealed = self.h.seal(&a.to, &a.sign_with, a.plaintext.expose())?;
        Ok(SealedResult { sealed })
    }

    fn open(&self, a: OpenArgs) -> Result<OpenedMessage, AgentError> {
        let (pt, sender, sender_name) = self.h.open_checked(
            &a.sealed,
            a.chain.as_deref().map(|c| c.as_slice()),
            a.agents.as_deref().map(|c| c.as_slice()),
        )?;
        Ok(OpenedMessage {
            plaintext: SecretBytes::from(pt),
            sender,
            sender_name,
        })
    }

    // ---- agent authorization (agents.rs) ----

    fn agents_policy(&self, _: Empty) -> Result<AgentPolicyResult, AgentError> {
        Ok(policy_result(self.h.agents_policy()?))
    }

    fn agents_add(&self, a: AgentsAddArgs) -> Result<AgentPolicyResult, AgentError> {
        Ok(policy_result(
            self.h.agents_add(&a.key, &a.caps, a.expires)?,
        ))
    }

    fn agents_revoke(&self, a: AgentsRevokeArgs) -> Result<AgentPolicyResult, AgentError> {
        Ok(policy_result(self.h.agents_revoke(&a.key)?))
    }

    // ---- recovery (recovery.rs) ----

    fn recovery_hold(&self, a: RecoveryHoldArgs) -> Result<HeldShareInfo, AgentError> {
        self.h.recovery_hold(&a.share).map(held_info)
    }

    fn recovery_release(&self, a: RecoveryReleaseArgs) -> Result<ReleasedShareResult, AgentError> {
        let (released, facts) = self.h.recovery_release(&a.id, &a.to)?;
        Ok(ReleasedShareResult {
            id: facts.id.to_string(),
            index: facts.hint.index,
            recovery: facts.recovery.to_did_key(),
            released: serde_bytes::ByteBuf::from(released),
        })
    }

    fn recovery_delete(&self, a: IdArgs) -> Result<Deleted, AgentError> {
        let gone = self.h.recovery_delete(&a.id)?;
        Ok(Deleted {
            id: gone.to_string(),
            deleted: true,
        })
    }

    fn recovery_held(&self, a: ListArgs) -> Result<KeyList, AgentError> {
        list_page(a.limit, a.after.as_deref(), key_info, |after, size| {
            self.h.recovery_held_page(after, size)
        })
    }

    fn recovery_enroll(&self, a: RecoveryEnrollArgs) -> Result<EnrolledRecovery, AgentError> {
        let key = keyward_identity::PublicKey::from_sec1_bytes(&a.public_key)
            .map_err(|e| AgentError::invalid("public_key", Problem::NotP256Point(e)))?;
        let e = self.h.recovery_enroll(&key)?;
        Ok(EnrolledRecovery {
            id: e.id.to_string(),
            recovery: e.recovery.to_did_key(),
            keks: e.keks,
        })
    }

    fn recovery_restore(&self, a: RecoveryRestoreArgs) -> Result<RestoredResult, AgentError> {
        const LEN: usize = keyward_recovery::SECRET_LEN;
        if a.secret.expose().len() != LEN {
            return Err(AgentError::invalid(
                "secret",
                Problem::Length { expected: LEN },
            ));
        }
        let mut bytes = zeroize::Zeroizing::new([0u8; LEN]);
        bytes.copy_from_slice(a.secret.expose());
        let secret = keyward_recovery::RecoverySecret::from_bytes(*bytes);
        let r = self.h.recovery_restore(&secret, &a.pin)?;
        Ok(RestoredResult {
            root: r.root.to_string(),
            keks: r.keks,
            absent_roots: r.absent_roots.iter().map(|i| i.to_string()).collect(),
        })
    }

    // ---- the PKCS#11 module's operations (door.rs) ----

    fn root_info(&self, _: Empty) -> Result<RootInfoResult, AgentError> {
        Ok(RootInfoResult {
            id: self.h.root_id()?,
            initialized: self.h.is_initialized()?,
            locked: self.h.is_locked(),
            prompt: self.prompt.is_some(),
        })
    }

    fn unlock_prompt(&self, _: Empty) -> Result<LockState, AgentError> {
        if !self.h.is_initialized()? {
            return Err(AgentError::NotInitialized);
        }
        let Some(p) = &self.prompt else {
            return Err(crate::prompt::PromptError::Unavailable(
                crate::prompt::Unavailable::NotConfigured,
            )
            .into());
        };
        if self.h.is_locked() {
            let who = self.peer.describe();
            p.unlock(&self.h, "unlock.prompt", &who)?;
        }
        Ok(LockState {
            locked: self.h.is_locked(),
        })
    }

    fn sign_digest(&self, a: SignDigestArgs) -> Result<SignatureResult, AgentError> {
        let sig = self.h.sign_digest(&a.key, &a.digest)?;
        Ok(SignatureResult {
            signature: serde_bytes::ByteBuf::from(sig),
        })
    }

    fn gcm_seal(&self, a: GcmArgs) -> Result<GcmResult, AgentError> {
        let ct = self
            .h
            .gcm_seal(&a.dek, &a.iv, &a.aad, a.tag_len, a.data.expose())?;
        Ok(GcmResult {
            data: SecretBytes::new(ct),
        })
    }

    fn gcm_open(&self, a: GcmArgs) -> Result<GcmResult, AgentError> {
        let pt = self
            .h
            .gcm_open(&a.dek, &a.iv, &a.aad, a.tag_len, a.data.expose())?;
        Ok(GcmResult {
            data: SecretBytes::from(pt),
        })
    }

    fn keypair_ecdh(&self, a: EcdhArgs) -> Result<SharedSecret, AgentError> {
        let secret = self.h.keypair_ecdh(&a.key, &a.peer)?;
        Ok(SharedSecret {
            secret: SecretBytes::from(secret),
        })
    }

    fn audit_info(&self, _: Empty) -> Result<AuditInfoResult, AgentError> {
        match &self.audit {
            Some(a) => a.info(),
            None => Ok(AuditInfoResult {
                path: None,
                required: false,
                failing: false,
                public_key: None,
                head_seq: None,
                head_hash: None,
                checked: false,
                previous_keys: Vec::new(),
                key_device: None,
            }),
        }
    }

    fn keystore_migrate(&self, a: KeystoreMigrateArgs) -> Result<KeystoreMigrated, AgentError> {
        let r = self.h.ks.migrate_to(&a.to)?;
        tracing::info!(to = %r.to, rows = r.counts.total(), ms = r.ms, "keystore copied and checked");
        Ok(KeystoreMigrated {
            to: r.to,
            tables: r
                .counts
                .tables()
                .iter()
                .map(|(table, rows)| TableCount {
                    table: table.to_string(),
                    rows: *rows,
                })
                .collect(),
            ms: r.ms,
        })
    }

    fn random(&self, a: RandomArgs) -> Result<RandomBytes, AgentError> {
        Ok(RandomBytes {
            bytes: serde_bytes::ByteBuf::from(self.h.random(a.len)?),
        })
    }
}

/// The root a configuration text's `[root]` describes (`root.add`, `root.rotate`); `path` is the
/// file's, for its relative paths. A bad configuration is `invalid_args`, never echoing the text.
fn root_from_text(
    config: &str,
    path: Option<&str>,
) -> Result<Box<dyn crate::root::Root>, AgentError> {
    let path = std::path::PathBuf::from(path.unwrap_or("/root-add.toml"));
    let cfg = crate::config::Config::parse(config, &path).map_err(|e| {
        let detail = match e {
            crate::config::ConfigError::Invalid { message, .. } => message,
            _ => "not TOML, or a key keywardd does not know (as `keywardd --config FILE` reads it)"
                .into(),
        };
        AgentError::invalid("config", Problem::BadConfig(detail))
    })?;
    Ok(crate::root::from_config(&cfg.root)?)
}

#[cfg(test)]
mod tests {
    //! Paged lists at the wire edge: every page fits one frame, whatever the records hold.
    use super::*;
    use crate::keystore::{KeyKind, Keystore, ListFilter};
    use keyward_proto::MAX_FRAME;

    #[test]
    fn a_list_limit_is_1_to_max_page_and_names_what_it_counts() {
        assert_eq!(page_limit(None, "devices").unwrap(), None);
        assert_eq!(page_limit(Some(1), "devices").unwrap(), Some(1));
        assert_eq!(
            page_limit(Some(MAX_PAGE), "devices").unwrap(),
            Some(MAX_PAGE as usize)
        );
        for bad in [0, MAX_PAGE + 1] {
            match page_limit(Some(bad), "devices") {
                Err(AgentError::InvalidArgs {
                    arg: "limit",
                    problem: Problem::OutOfRange { unit, max, .. },
                }) => assert_eq!((unit, max), ("devices", u64::from(MAX_PAGE))),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    fn keystore() -> (tempfile::TempDir, Keystore) {
        let dir = tempfile::tempdir().unwrap();
        let ks = Keystore::open(&dir.path().join("k.db")).unwrap();
        (dir, ks)
    }

    /// A keypair record as large as the agent makes them: a certificate at its 16 KiB limit,
    /// a public key with its SSH line and fingerprint, a node name, a delegation statement
    /// (not sent), and a long label (labels have no limit of their own; 4 KiB here).
    fn big_keypair(parent: uuid::Uuid, i: u64) -> KeyRecord {
        let mut r = KeyRecord::new(KeyKind::Keypair, "aes-kwp");
        r.parent = Some(parent);
        r.created = 1_000 + i;
        r.algorithm = Some(Algorithm::Ed25519);
        r.public_key = Some(vec![7; 32]);
        r.wrapped = Some(vec![1; 72]);
        r.label = Some("l".repeat(4096));
        r.name = Some(format!("node-{i}-{}", "n".repeat(200)));
        r.statement = Some(vec![2; 400]);
        r.certificate = Some(vec![3; 16 * 1024]);
        r.ssh = SshFlags(SshFlags::OFFERED | SshFlags::CONFIRM);
        r
    }

    fn with_root_and_kek(ks: &Keystore) -> uuid::Uuid {
        let root = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
        ks.insert(&root).unwrap();
        let mut kek = KeyRecord::new(KeyKind::Kek, "aes-kwp");
        kek.parent = Some(root.id);
        ks.insert(&kek).unwrap();
        kek.id
    }

    fn frame_len(list: &KeyList) -> usize {
        Response::ok(u64::MAX, list)
            .unwrap()
            .to_cbor()
            .unwrap()
            .len()
    }

    #[test]
    fn the_page_budget_leaves_room_for_the_envelope() {
        // The answer around the keys: the largest id, an empty array, and a cursor.
        let empty = KeyList {
            keys: vec![],
            next: Some(
                Cursor {
                    created: u64::MAX >> 1,
                    id: uuid::Uuid::new_v4(),
                }
                .to_text(),
            ),
        };
        let envelope = frame_len(&empty) + 9; // + the array head growing to its widest
        assert!(PAGE_BYTES + envelope <= MAX_FRAME, "{envelope}");
        // The largest record is far inside one page, so a page always makes progress.
        let big = listed_keypair_info(&big_keypair(uuid::Uuid::new_v4(), 1));
        assert!(big.ssh.is_some() && big.ssh_mode == Some(SshMode::Confirm));
        let one = encoded_len(&big);
        assert!(one < 26 * 1024 && one * 30 < PAGE_BYTES, "{one}");
        // By count alone, MAX_PAGE of these would be ~22 MiB: it is the byte budget that keeps
        // such a page in one frame (as the next test shows), and the count limit for small
        // records: MAX_PAGE DEKs with 256-byte labels take a fraction of a frame.
        assert!(one * MAX_PAGE as usize > MAX_FRAME);
        let mut dek = KeyRecord::new(KeyKind::Dek, "aes-kwp");
        dek.parent = Some(uuid::Uuid::new_v4());
        dek.label = Some("d".repeat(256));
        dek.purpose = Some(Purpose::Sharing);
        dek.rotated = Some(u64::MAX >> 1);
        assert!(encoded_len(&key_info(&dek)) * (MAX_PAGE as usize) < PAGE_BYTES / 2);
    }

    #[test]
    fn pages_of_the_largest_keypairs_each_fit_one_frame() {
        let (_d, ks) = keystore();
        let kek = with_root_and_kek(&ks);
        let n = 130; // ~2.7 MiB of records: three frames' worth
        let mut want = Vec::new();
        for i in 0..n {
            let r = big_keypair(kek, i);
            ks.insert(&r).unwrap();
            want.push(r.id.to_string());
        }
        for (limit, filter) in [
            (None, ListFilter::Kind(KeyKind::Keypair)),
            (Some(MAX_PAGE), ListFilter::Kind(KeyKind::Keypair)),
            (Some(MAX_PAGE), ListFilter::Nodes),
        ] {
            let mut after: Option<String> = None;
            let mut got = Vec::new();
            let mut pages = 0;
            loop {
                let list = list_page(limit, after.as_deref(), listed_keypair_info, |a, s| {
                    Ok(ks.page(&filter, a, s)?)
                })
                .unwrap();
                assert!(frame_len(&list) <= MAX_FRAME, "{}", frame_len(&list));
                pages += 1;
                got.extend(list.keys.iter().map(|k| k.id.clone()));
                match list.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(got, want);
            assert!(pages >= 3, "{pages}");
        }
    }

    #[test]
    fn bad_limits_and_cursors_are_invalid_args() {
        let (_d, ks) = keystore();
        let run = |limit: Option<u32>, after: Option<&str>| {
            list_page(limit, after, key_info, |a, s| {
                Ok(ks.page(&ListFilter::Kind(KeyKind::Kek), a, s)?)
            })
        };
        for limit in [0, MAX_PAGE + 1, u32::MAX] {
            let e = run(Some(limit), None).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgs);
            assert!(e.to_string().contains("`limit`"), "{e}");
        }
        for bad in [
            "",
            "x",
            "1",
            "2000000000000000000000000000000000000000000000000",
        ] {
            let e = run(Some(5), Some(bad)).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgs);
            assert!(e.to_string().contains("`after`"), "{e}");
        }
        // Limits at both ends, and an empty list, answer.
        for limit in [1, MAX_PAGE] {
            let l = run(Some(limit), None).unwrap();
            assert!(l.keys.is_empty() && l.next.is_none());
        }
    }
}

#[cfg(test)]
mod policy_tests {
    //! The policy check at the wire edge: rules on a key's record (label, kind, purpose) still
    //! decide when the record is read only for them, and rules that name none still decide.
    use super::*;
    use crate::keystore::Keystore;
    use crate::root::memory::MemoryRoot;
    use ciborium::Value;

    fn service(policy: &str) -> (tempfile::TempDir, Service, String) {
        let dir = tempfile::tempdir().unwrap();
        let ks = Arc::new(Keystore::open(&dir.path().join("ks.db")).unwrap());
        let h = Hierarchy::new(
            ks,
            Box::new(MemoryRoot::new()),
            crate::config::UnlockPolicy::default(),
        );
        h.init(&keyward_proto::secret::Pin::new("right-pin-1234"))
            .unwrap();
        h.kek_create(None).unwrap();
        let dek = h
            .dek_create(None, Purpose::Sharing, false, Some("pay-1".into()))
            .unwrap()
            .to_string();
        let file = dir.path().join("policy.toml");
        std::fs::write(&file, policy).unwrap();
        let state = crate::policy::PolicyState::load(Some(&file)).unwrap();
        let svc = Service::new(Arc::new(h)).with_policy(Arc::new(state));
        (dir, svc, dek)
    }

    fn encrypt(svc: &Service, key: &str) -> Response {
        let args = Value::Map(vec![
            (Value::Text("dek".into()), Value::Text(key.into())),
            (Value::Text("plaintext".into()), Value::Bytes(vec![7; 64])),
        ]);
        svc.handle(&Request {
            id: 9,
            op: "encrypt".into(),
            args: keyward_proto::Args::serialized(&args).expect("encodes"),
        })
    }

    #[test]
    fn rules_on_label_kind_and_purpose_decide_and_others_do_not_read_the_record() {
        for (rule, denied) in [
            ("label = \"pay-*\"", true),
            ("label = \"other-*\"", false),
            ("kind = \"dek\"", true),
            ("kind = \"kek\"", false),
            ("purpose = \"sharing\"", true),
            ("purpose = \"personal\"", false),
            ("uid = 4242", false),
            ("ops = [\"encrypt\"]", true),
        ] {
            let text = format!("[[rule]]\nname = \"r\"\n{rule}\neffect = \"deny\"\n");
            let (_d, svc, dek) = service(&text);
            let attrs = rule.starts_with("label")
                || rule.starts_with("kind")
                || rule.starts_with("purpose");
            assert_eq!(svc.policy.names_key_attributes(), attrs, "{rule}");
            let r = encrypt(&svc, &dek);
            match &r.err {
                Some(e) if denied => {
                    assert_eq!(e.code, ErrorCode::PolicyDenied, "{rule}: {e:?}");
                    assert!(e.message.contains("rule 1 (\"r\")"), "{}", e.message);
                }
                None if !denied => assert!(r.is_ok(), "{rule}"),
                other => panic!("{rule}: {other:?}"),
            }
            // A key the keystore does not hold is matched by its id only, and the agent
            // keeps serving.
            let r = encrypt(&svc, &uuid::Uuid::new_v4().to_string());
            let code = r.err.map(|e| e.code);
            let want = if rule.starts_with("ops") {
                ErrorCode::PolicyDenied
            } else {
                ErrorCode::NotFound
            };
            assert_eq!(code, Some(want), "{rule}");
        }
    }
}
