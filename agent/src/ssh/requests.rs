//! One SSH agent request in, one answer out.
//!
//! [`parse`] decodes a message body with `ssh-agent-lib`'s types; [`SshAgent::handle`] runs it
//! against the offered keys, the door lock and the connection's bindings, and encodes the answer.
//! Every refusal is `SSH_AGENT_FAILURE` plus a log line (never with key material or data); an
//! unknown message type is FAILURE too, and the connection stays usable. Runs on a blocking
//! thread (token signatures and confirmation prompts block). This module must never answer
//! anything but FAILURE while the door is locked (except the identity list, empty, and UNLOCK).

use super::confirm;
use super::keys::{Constraints, Offered, SshKeys};
use super::restrict::{self, Bindings};
use super::{SshError, SshSettings};
use crate::hierarchy::Hierarchy;
use ssh_agent_lib::proto::extension::{QueryResponse, RestrictDestination, SessionBind};
use ssh_agent_lib::proto::{
    AddIdentity, Extension, Identity, KeyConstraint, PrivateCredential, PublicCredential, Request,
    Response,
};
use ssh_encoding::{Decode, Encode};
use ssh_key::HashAlg;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The extensions this agent answers to.
pub const EXTENSIONS: &[&str] = &[
    "query",
    "session-bind@openssh.com",
    "restrict-destination-v00@openssh.com",
];

/// FAILURE, encoded.
pub const FAILURE: &[u8] = &[5];

/// How an SSH request ended, for its audit entry: the wire error code where the agent has one.
fn ssh_result(e: &SshError) -> &'static str {
    match e {
        SshError::Agent(a) => a.code().as_str(),
        SshError::Keystore(k) => k.code().as_str(),
        SshError::Malformed(_) | SshError::Encoding(_) | SshError::Key(_) => "malformed",
        SshError::DoorLocked => "door_locked",
        SshError::UnknownKey => "not_found",
        SshError::Unsupported(_) => "unsupported",
        SshError::Refused(_) => "refused",
        SshError::NotConfirmed(_) => "cancelled",
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decode one message body (type byte and payload). Unknown types and malformed payloads are
/// errors, answered FAILURE by the caller. The fuzz target's entry point.
pub fn parse(body: &[u8]) -> Result<Request, SshError> {
    let mut r = body;
    let req = Request::decode(&mut r)?;
    if !r.is_empty() {
        return Err(SshError::Refused(format!(
            "{} trailing bytes after the message",
            r.len()
        )));
    }
    Ok(req)
}

/// What one connection knows: who is on the other end and what it bound itself to.
#[derive(Default, Debug)]
pub struct Conn {
    pub peer: crate::peer::Peer,
    pub bindings: Bindings,
}

/// The door lock of `ssh-add -x`: a salted hash of the passphrase while locked.
struct DoorLock {
    salt: [u8; 16],
    hash: Option<Zeroizing<[u8; 32]>>,
}

/// The SSH door's shared state.
pub struct SshAgent {
    keys: SshKeys,
    settings: SshSettings,
    door: Mutex<DoorLock>,
}

impl SshAgent {
    pub fn new(h: Arc<Hierarchy>, settings: SshSettings) -> SshAgent {
        let mut salt = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
        SshAgent {
            keys: SshKeys::new(h),
            settings,
            door: Mutex::new(DoorLock { salt, hash: None }),
        }
    }

    pub fn keys(&self) -> &SshKeys {
        &self.keys
    }

    /// Called when the agent locks: unwrapped keys go.
    pub fn on_lock(&self) {
        self.keys.clear_cache();
    }

    fn door_locked(&self) -> bool {
        lock(&self.door).hash.is_some()
    }

    fn hash(&self, salt: &[u8; 16], pass: &[u8]) -> Zeroizing<[u8; 32]> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(salt);
        h.update(pass);
        Zeroizing::new(h.finalize().into())
    }

    /// Answer one message body (on a thread that may block).
    pub fn handle(&self, conn: &mut Conn, body: &[u8]) -> Vec<u8> {
        match parse(body) {
            Ok(req) => self.respond(conn, req),
            Err(e) => Self::malformed(body, &e),
        }
    }

    /// The answer to a message that did not parse: FAILURE, logged.
    pub fn malformed(body: &[u8], e: &SshError) -> Vec<u8> {
        let t = body.first().copied().unwrap_or(0);
        tracing::info!(message_type = t, error = %e, "ssh: request refused");
        FAILURE.to_vec()
    }

    /// Answer a parsed request (on a thread that may block: token signatures, confirmation
    /// prompts, keystore reads).
    pub fn respond(&self, conn: &mut Conn, req: Request) -> Vec<u8> {
        let what = req.message_id();
        let Some(audit) = self.settings.audit.clone() else {
            return Self::encode(what, self.answer(conn, req));
        };
        let rec = self.audit_record(conn, &req);
        let refuse = audit.refuses() && !matches!(req, Request::Lock(_) | Request::Unlock(_));
        let result = if refuse {
            Err(audit_unavailable())
        } else {
            self.answer(conn, req)
        };
        Self::encode(what, logged(&audit, rec, result))
    }

    /// The audit entry of an SSH request: its op name (the protocol's where there is one), and
    /// the key it names: a stored keypair's id (its label is added by the writer), else the
    /// key's SHA-256 fingerprint.
    fn audit_record(&self, conn: &Conn, req: &Request) -> crate::audit::Record {
        let (op, key) = match req {
            Request::RequestIdentities => ("keypair.list", None),
            Request::SignRequest(s) => ("sign", Some(s.credential.key_data())),
            Request::AddIdentity(_) | Request::AddIdConstrained(_) => ("ssh.add", None),
            Request::RemoveIdentity(r) => ("ssh.remove", Some(r.credential.key_data())),
            Request::RemoveAllIdentities => ("ssh.remove_all", None),
            Request::AddSmartcardKey(_)
            | Request::AddSmartcardKeyConstrained(_)
            | Request::RemoveSmartcardKey(_) => ("ssh.smartcard", None),
            Request::Lock(_) => ("ssh.lock", None),
            Request::Unlock(_) => ("ssh.unlock", None),
            Request::Extension(_) => ("ssh.extension", None),
        };
        let mut r = crate::audit::Record::of(op, "ssh", &conn.peer);
        r.key = key.map(|k| match self.keys.find(k).as_deref().map(|o| &o.source) {
            Ok(super::keys::Source::Stored { rec, .. }) => rec.id.to_string(),
            _ => k.fingerprint(HashAlg::Sha256).to_string(),
        });
        r
    }

    /// Answer now, on the connection's task, when nothing on the way can block: a SIGN_REQUEST
    /// for a key whose private half is already in memory (a memory key, or a software keypair
    /// whose unwrapped key is cached), with no confirmation, the door and the agent unlocked,
    /// and the identity index current. `None`: answer with [`SshAgent::respond`] on a blocking
    /// thread instead. The checks are the slow path's (destination constraints included).
    pub fn respond_now(&self, conn: &Conn, req: &Request) -> Option<Vec<u8>> {
        let Request::SignRequest(s) = req else {
            return None;
        };
        if self.door.try_lock().ok()?.hash.is_some() {
            return None;
        }
        // With a policy file every signature takes the slow path, where the rules are checked.
        if self.settings.policy.current().is_some() {
            return None;
        }
        // A failing required log refuses on the slow path (which logs the refusal).
        let audit = self.settings.audit.as_ref();
        if audit.is_some_and(|a| a.refuses()) {
            return None;
        }
        let (id, signer) = self.keys.ready(s.credential.key_data())?;
        if id.confirm {
            return None;
        }
        let result = self
            .check_destination(conn, &id, &s.data)
            .and_then(|_| signer.sign(&s.data, s.flags))
            .map(Response::SignResponse);
        if let Some(audit) = audit {
            // The entry as the slow path makes it (`audit_record`), from the cached identity:
            // the stored keypair's id and label, else the key's fingerprint.
            let mut rec = crate::audit::Record::of("sign", "ssh", &conn.peer);
            match &id.source {
                super::keys::Source::Stored { rec: k, .. } => {
                    rec.key = Some(k.id.to_string());
                    rec.label = k.label.clone();
                }
                super::keys::Source::Memory => {
                    rec.key = Some(id.public.fingerprint(HashAlg::Sha256).to_string());
                }
            }
            return Some(Self::encode(req.message_id(), logged(audit, rec, result)));
        }
        Some(Self::encode(req.message_id(), result))
    }

    fn encode(what: u8, result: Result<Response, SshError>) -> Vec<u8> {
        match result {
            Ok(resp) => {
                let mut out = Vec::new();
                match resp.encode(&mut out) {
                    Ok(()) => out,
                    Err(e) => {
                        tracing::error!(error = %e, "ssh: encoding an answer failed");
                        FAILURE.to_vec()
                    }
                }
            }
            Err(e) => {
                match &e {
                    SshError::Agent(crate::error::AgentError::Locked { .. }) => tracing::warn!(
                        message_type = what,
                        "ssh: refused: keywardd is locked (run `keyward unlock`)"
                    ),
                    _ => tracing::warn!(message_type = what, error = %e, "ssh: request refused"),
                }
                FAILURE.to_vec()
            }
        }
    }

    fn answer(&self, conn: &mut Conn, req: Request) -> Result<Response, SshError> {
        // Nothing the door answers runs before the keystore's start-up check passed.
        self.keys.keystore_ready()?;
        if self.door_locked() {
            return match req {
                Request::RequestIdentities => Ok(Response::IdentitiesAnswer(Vec::new())),
                Request::Unlock(pass) => self.unlock(pass),
                _ => Err(SshError::DoorLocked),
            };
        }
        match req {
            Request::RequestIdentities => {
                self.check_policy(conn, "keypair.list", None)?;
                let list: Vec<Identity> = self
                    .keys
                    .offered()?
                    .into_iter()
                    .filter(|o| conn.bindings.permitted(&o.destinations, None).is_ok())
                    .map(|o| Identity {
                        credential: PublicCredential::Key(o.public.clone()),
                        comment: o.comment.clone(),
                    })
                    .collect();
                Ok(Response::IdentitiesAnswer(bounded_identities(list)))
            }
            Request::SignRequest(s) => {
                let key = s.credential.key_data().clone();
                let id = self.keys.find(&key)?;
                let destination = self.check_destination(conn, &id, &s.data)?;
                self.check_policy(conn, "sign", Some(&id))?;
                if id.confirm {
                    self.confirm(conn, &id, destination.as_deref())?;
                }
                let sig = self.keys.sign(&id, &s.data, s.flags)?;
                tracing::debug!(key = %id.public.fingerprint(HashAlg::Sha256), "ssh: signed");
                Ok(Response::SignResponse(sig))
            }
            Request::AddIdentity(a) => self.add(a, &[]),
            Request::AddIdConstrained(a) => self.add(a.identity, &a.constraints),
            Request::RemoveIdentity(r) => {
                self.keys.remove(r.credential.key_data())?;
                Ok(Response::Success)
            }
            Request::RemoveAllIdentities => {
                self.keys.remove_all()?;
                Ok(Response::Success)
            }
            Request::AddSmartcardKey(_)
            | Request::AddSmartcardKeyConstrained(_)
            | Request::RemoveSmartcardKey(_) => Err(SshError::Unsupported(
                "smartcard keys: Keyward reaches tokens through its own root (keypair create --on-token --ssh)".into(),
            )),
            Request::Lock(pass) => {
                let pass = Zeroizing::new(pass);
                let mut door = lock(&self.door);
                let salt = door.salt;
                door.hash = Some(self.hash(&salt, pass.as_bytes()));
                tracing::info!("ssh: door locked (ssh-add -x)");
                Ok(Response::Success)
            }
            Request::Unlock(pass) => {
                drop(Zeroizing::new(pass));
                Err(SshError::Refused("the SSH door is not locked".into()))
            }
            Request::Extension(ext) => self.extension(conn, ext),
        }
    }

    fn unlock(&self, pass: String) -> Result<Response, SshError> {
        let pass = Zeroizing::new(pass);
        let mut door = lock(&self.door);
        let salt = door.salt;
        let given = self.hash(&salt, pass.as_bytes());
        let ok = door
            .hash
            .as_ref()
            .is_some_and(|h| subtle::ConstantTimeEq::ct_eq(&h[..], &given[..]).into());
        if ok {
            door.hash = None;
            tracing::info!("ssh: door unlocked (ssh-add -X)");
            Ok(Response::Success)
        } else {
            drop(door);
            // As OpenSSH: slow down guessing.
            std::thread::sleep(Duration::from_millis(100));
            Err(SshError::Refused("wrong passphrase for ssh-add -X".into()))
        }
    }

    fn add(&self, a: AddIdentity, constraints: &[KeyConstraint]) -> Result<Response, SshError> {
        let PrivateCredential::Key { privkey, comment } = a.credential else {
            return Err(SshError::Unsupported("certificates".into()));
        };
        let mut c = Constraints::default();
        for k in constraints {
            match k {
                KeyConstraint::Lifetime(secs) => {
                    c.expires = Some(Instant::now() + Duration::from_secs(u64::from(*secs)))
                }
                KeyConstraint::Confirm => c.confirm = true,
                KeyConstraint::Extension(ext) => {
                    match ext.parse_key_constraint::<RestrictDestination>() {
                        Ok(Some(r)) => c.destinations.extend(r.constraints),
                        Ok(None) => {
                            return Err(SshError::Unsupported(format!(
                                "key constraint {}",
                                ext.name
                            )))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        self.keys.add(&privkey, &comment, c)?;
        Ok(Response::Success)
    }

    fn extension(&self, conn: &mut Conn, ext: Extension) -> Result<Response, SshError> {
        if let Some(bind) = ext.parse_message::<SessionBind>()? {
            let r = conn.bindings.bind(&bind);
            match &r {
                Ok(()) => tracing::info!(
                    host_key = %bind.host_key.fingerprint(HashAlg::Sha256),
                    forwarding = bind.is_forwarding,
                    "ssh: session bound"
                ),
                Err(_) => conn.bindings.attempted = true,
            }
            r?;
            return Ok(Response::Success);
        }
        if ext.name == "query" {
            let q = QueryResponse {
                extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
            };
            return Ok(Response::ExtensionResponse(Extension::new_message(q)?));
        }
        Err(SshError::Unsupported(format!("extension {}", ext.name)))
    }

    /// OpenSSH's checks for a destination-constrained key; returns the destination host name.
    fn check_destination(
        &self,
        conn: &Conn,
        id: &Offered,
        data: &[u8],
    ) -> Result<Option<String>, SshError> {
        let last = conn.bindings.last();
        if id.destinations.is_empty() {
            return Ok(
                last.map(|b| format!("host key {}", b.host_key.fingerprint(HashAlg::Sha256)))
            );
        }
        let Some(last) = last else {
            return Err(SshError::Refused(
                "destination-constrained key used on a connection with no session binding".into(),
            ));
        };
        let ua = restrict::parse_userauth(data, &id.public)?;
        let host = conn.bindings.permitted(&id.destinations, Some(&ua.user))?;
        if ua.session_id != last.session_id {
            return Err(SshError::Refused(
                "the request is not for the bound session".into(),
            ));
        }
        if conn.bindings.hops.len() > 1 && ua.host_key.is_none() {
            return Err(SshError::Refused(
                "no host key in a forwarded request".into(),
            ));
        }
        if ua.host_key.as_ref().is_some_and(|k| k != &last.host_key) {
            return Err(SshError::Refused(
                "the request's host key is not the bound session's".into(),
            ));
        }
        let fp = last.host_key.fingerprint(HashAlg::Sha256);
        Ok(Some(match host {
            Some(h) => format!("{}@{h} (host key {fp})", ua.user),
            None => format!("{} (host key {fp})", ua.user),
        }))
    }

    /// The policy file's verdict on `op` (`sign`, `keypair.list`) for this connection's peer,
    /// with the keystore record of a stored key (a key added with `ssh-add` is matched by its
    /// fingerprint as `key`, with no label, kind or purpose).
    fn check_policy(&self, conn: &Conn, op: &str, id: Option<&Offered>) -> Result<(), SshError> {
        if self.settings.policy.current().is_none() {
            return Ok(());
        }
        let rec = match id.map(|o| &o.source) {
            Some(super::keys::Source::Stored { rec, .. }) => Some(rec),
            _ => None,
        };
        let fp = id.map(|o| o.public.fingerprint(HashAlg::Sha256).to_string());
        let key_id = rec.map(|r| r.id.to_string()).or_else(|| fp.clone());
        let key = key_id.as_deref().map(|i| crate::policy::KeyFacts {
            id: i,
            label: rec.and_then(|r| r.label.as_deref()),
            kind: rec.map(|r| r.kind.as_str()),
            purpose: rec.and_then(|r| r.purpose.map(|p| p.as_str())),
        });
        let what = match (id, &fp) {
            (Some(o), Some(fp)) if !o.comment.is_empty() => {
                format!("an SSH signature with key {} {fp}", o.comment)
            }
            (_, Some(fp)) => format!("an SSH signature with key {fp}"),
            _ => "listing the SSH keys".to_string(),
        };
        self.settings
            .policy
            .check(
                &conn.peer,
                crate::policy::Door::Ssh,
                op,
                key,
                || what,
                self.settings.pinentry.as_deref(),
            )
            .map_err(|d| SshError::Agent(crate::error::AgentError::PolicyDenied(d)))
    }

    fn confirm(
        &self,
        conn: &Conn,
        id: &Offered,
        destination: Option<&str>,
    ) -> Result<(), SshError> {
        let fp = id.public.fingerprint(HashAlg::Sha256).to_string();
        let who = conn.peer.describe();
        let q = confirm::prompt(&id.comment, &fp, &who, destination);
        let answer = match (&self.settings.askpass, &self.settings.pinentry) {
            (None, Some(p)) => match p.confirm(&q) {
                Ok(true) => Ok(()),
                Ok(false) => Err(SshError::NotConfirmed("denied (pinentry)".into())),
                Err(e) => Err(SshError::NotConfirmed(format!("pinentry: {e}"))),
            },
            (askpass, _) => confirm::ask(askpass.as_ref(), &q),
        };
        match answer {
            Ok(()) => {
                tracing::info!(key = %fp, requester = %who, "ssh: use confirmed");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(key = %fp, requester = %who, "ssh: use not confirmed");
                Err(e)
            }
        }
    }
}

/// The most identities one answer lists: OpenSSH's clients refuse an answer with more
/// (`MAX_AGENT_IDENTITIES` in authfd.c).
pub const MAX_IDENTITIES: usize = 2048;

/// The identities answer, bounded: the SSH agent protocol has no paging, so with more offered
/// keys than fit, the answer lists the first ones (in keystore order: created, then id) up to
/// [`MAX_IDENTITIES`] and up to one [`MAX_SSH_FRAME`](super::frame::MAX_SSH_FRAME) (less the
/// message's 9-byte head), and the agent logs how many it left out. Every offered key still
/// signs when a client names it (a client that has the public key file can use `-i`).
pub fn bounded_identities(mut list: Vec<Identity>) -> Vec<Identity> {
    let room = super::frame::MAX_SSH_FRAME - 9;
    let mut used = 0usize;
    let mut keep = 0usize;
    for id in list.iter().take(MAX_IDENTITIES) {
        let len = id.encoded_len().unwrap_or(usize::MAX);
        if used.saturating_add(len) > room {
            break;
        }
        used += len;
        keep += 1;
    }
    if keep < list.len() {
        tracing::warn!(
            offered = list.len(),
            listed = keep,
            "SSH identities answer bounded: more keys are offered than one answer can list"
        );
        list.truncate(keep);
    }
    list
}

/// The refusal while a required audit log cannot be written.
fn audit_unavailable() -> SshError {
    SshError::Agent(crate::error::AgentError::AuditUnavailable { op: "ssh request" })
}

/// `result` with its audit entry written (both paths, slow and fast): a success waits for its
/// entry's `write` (not its `fdatasync`: audit.rs) and becomes `audit_unavailable` if that
/// failed, since nothing may run unlogged; a refusal does not wait.
fn logged(
    audit: &crate::audit::Audit,
    mut rec: crate::audit::Record,
    result: Result<Response, SshError>,
) -> Result<Response, SshError> {
    rec.result = match &result {
        Ok(_) => "ok".into(),
        Err(e) => ssh_result(e).into(),
    };
    let wait = audit.required() && result.is_ok();
    if !audit.append(rec, wait) && wait {
        return Err(audit_unavailable());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_agent_lib::proto::{AddIdentityConstrained, SignRequest};
    use ssh_key::private::{Ed25519Keypair, KeypairData};
    use ssh_key::public::KeyData;

    /// Real message shapes (as `ssh-add` and `ssh` send them), encoded by ssh-agent-lib.
    fn seeds() -> Vec<Vec<u8>> {
        let kp = Ed25519Keypair::from_seed(&[7; 32]);
        let public = KeyData::Ed25519(kp.public);
        let add = AddIdentity {
            credential: PrivateCredential::Key {
                privkey: KeypairData::Ed25519(kp),
                comment: "seed".into(),
            },
        };
        let reqs = [
            Request::RequestIdentities,
            Request::SignRequest(SignRequest {
                credential: PublicCredential::Key(public),
                data: vec![0x42; 64],
                flags: 2,
            }),
            Request::AddIdentity(add.clone()),
            Request::AddIdConstrained(AddIdentityConstrained {
                identity: add,
                constraints: vec![KeyConstraint::Lifetime(2), KeyConstraint::Confirm],
            }),
            Request::Lock("pass".into()),
            Request::RemoveAllIdentities,
        ];
        let mut out: Vec<Vec<u8>> = reqs
            .iter()
            .map(|r| {
                let mut b = Vec::new();
                r.encode(&mut b).expect("encode seed");
                b
            })
            .collect();
        let mut q = vec![27, 0, 0, 0, 5];
        q.extend_from_slice(b"query");
        out.push(q);
        out
    }

    fn identity(i: u32, comment_len: usize) -> Identity {
        let mut raw = [0u8; 32];
        raw[..4].copy_from_slice(&i.to_be_bytes());
        Identity {
            credential: PublicCredential::Key(KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(
                raw,
            ))),
            comment: "c".repeat(comment_len),
        }
    }

    /// Many offered keys: the answer lists the first ones, at most MAX_IDENTITIES and never
    /// more than one SSH frame; a few keys are listed whole and in order.
    #[test]
    fn the_identities_answer_is_bounded() {
        let few: Vec<Identity> = (0..10).map(|i| identity(i, 10)).collect();
        assert_eq!(bounded_identities(few.clone()), few);
        let many: Vec<Identity> = (0..5000).map(|i| identity(i, 10)).collect();
        let out = bounded_identities(many.clone());
        assert_eq!(out.len(), MAX_IDENTITIES);
        assert_eq!(out[..], many[..MAX_IDENTITIES]);
        // Long comments (labels have no limit): bounded by bytes before the count.
        let big: Vec<Identity> = (0..1000).map(|i| identity(i, 1024)).collect();
        let out = bounded_identities(big);
        assert!(out.len() < 1000 && !out.is_empty());
        let answer = Response::IdentitiesAnswer(out);
        let mut body = Vec::new();
        answer.encode(&mut body).unwrap();
        assert!(
            body.len() <= crate::ssh::frame::MAX_SSH_FRAME,
            "{}",
            body.len()
        );
    }

    /// With a required audit log, a signature by a key whose private half is in memory still
    /// takes the fast path (`respond_now` answers it, no blocking hop) and is audited
    /// as on the slow path: the same `sign` entry of the `ssh` door (key id and label, client,
    /// result), in the file when the answer is given.
    #[test]
    fn the_fast_path_signs_with_an_audit_log_and_writes_its_entry_first() {
        use crate::root::memory::MemoryRoot;
        let dir = tempfile::tempdir().unwrap();
        let ks = Arc::new(crate::keystore::Keystore::open(&dir.path().join("ks.db")).unwrap());
        let unlock = crate::config::UnlockPolicy {
            backoff_base_ms: 0,
            ..Default::default()
        };
        let h = Arc::new(Hierarchy::new(ks, Box::new(MemoryRoot::new()), unlock));
        h.init(&keyward_proto::secret::Pin::new("1234")).unwrap();
        let path = dir.path().join("audit.log");
        let cfg = crate::audit::AuditConfig {
            sync_ms: 10_000,
            ..Default::default()
        };
        let audit = crate::audit::Audit::open(&cfg, &path, h.clone()).unwrap();
        let agent = SshAgent::new(
            h.clone(),
            SshSettings {
                audit: Some(audit.clone()),
                ..SshSettings::default()
            },
        );
        let mut conn = Conn {
            peer: crate::peer::Peer {
                uid: Some(1000),
                pid: Some(4242),
                exe: Some("/usr/bin/ssh".into()),
                ..Default::default()
            },
            bindings: Bindings::default(),
        };
        // `ssh-add`: stored as a keypair offered on the door.
        let kp = Ed25519Keypair::from_seed(&[9; 32]);
        let public = KeyData::Ed25519(kp.public);
        let add = Request::AddIdentity(AddIdentity {
            credential: PrivateCredential::Key {
                privkey: KeypairData::Ed25519(kp),
                comment: "added".into(),
            },
        });
        assert_ne!(agent.respond(&mut conn, add), FAILURE.to_vec());
        let sign = Request::SignRequest(SignRequest {
            credential: PublicCredential::Key(public.clone()),
            data: vec![0x42; 64],
            flags: 0,
        });
        // No unwrapped key yet: the fast path declines; the slow path signs (and caches it).
        assert!(agent.respond_now(&conn, &sign).is_none());
        let slow = agent.respond(&mut conn, sign.clone());
        assert_eq!(slow.first(), Some(&14), "SSH_AGENT_SIGN_RESPONSE");
        let answer = agent
            .respond_now(&conn, &sign)
            .expect("the fast path answers with an audit log on");
        assert_eq!(answer.first(), Some(&14), "SSH_AGENT_SIGN_RESPONSE");
        let signed: Vec<keyward_audit::Entry> = keyward_audit::read_lines(&path)
            .unwrap()
            .iter()
            .filter_map(|l| keyward_audit::parse_line(&l.text))
            .map(|p| p.entry)
            .filter(|e| e.op == "sign")
            .collect();
        assert_eq!(signed.len(), 2, "{signed:?}");
        let (slow, fast) = (&signed[0], &signed[1]);
        let id =
            h.ks.list(crate::keystore::KeyKind::Keypair, None)
                .unwrap()
                .first()
                .map(|r| r.id.to_string());
        assert!(id.is_some());
        assert_eq!(fast.key, id);
        assert_eq!(fast.label.as_deref(), Some("added"));
        assert_eq!(fast.door, "ssh");
        assert_eq!((fast.pid, fast.uid), (Some(4242), Some(1000)));
        assert_eq!(fast.exe.as_deref(), Some("/usr/bin/ssh"));
        assert_eq!(fast.result, "ok");
        let fields = |e: &keyward_audit::Entry| {
            (e.op.clone(), e.door.clone(), e.key.clone(), e.label.clone())
        };
        assert_eq!(fields(slow), fields(fast));
        assert_eq!(
            (slow.uid, slow.pid, &slow.exe),
            (fast.uid, fast.pid, &fast.exe)
        );
        audit.shutdown();
    }

    /// A small fuzz run in the unit tests: mutated real messages never panic the parser or the
    /// framing, and whatever parses re-encodes.
    #[tokio::test]
    async fn mutated_messages_never_panic() {
        let seeds = seeds();
        for s in &seeds {
            parse(s).expect("seed parses");
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..60_000u64 {
            let mut m = seeds[(i as usize) % seeds.len()].clone();
            for _ in 0..1 + next() % 4 {
                let r = next();
                let pos = (r >> 8) as usize % (m.len() + 1);
                match r % 4 {
                    0 if pos < m.len() => m[pos] ^= 1 << ((r >> 40) % 8),
                    1 => m.truncate(pos),
                    2 => m.insert(pos, (r >> 32) as u8),
                    _ if pos + 4 <= m.len() => {
                        m[pos..pos + 4].copy_from_slice(&((r >> 16) as u32).to_be_bytes())
                    }
                    _ => {}
                }
            }
            if let Ok(req) = parse(&m) {
                let mut again = Vec::new();
                req.encode(&mut again).expect("a parsed request re-encodes");
            }
            let mut framed = (m.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&m);
            framed.truncate((next() as usize) % (framed.len() + 1));
            let mut rd: &[u8] = &framed;
            let _ = super::super::frame::read(&mut rd).await;
        }
    }
}
