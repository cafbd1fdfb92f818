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
use keyward_proto::ops::{self as wire, *};
use keyward_proto::secret::SecretBytes;
use keyward_proto::{ErrorBody, ErrorCode, Request, Response, PROTOCOL_VERSION};
use std::sync::Arc;

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
    /// The connection's peer process (SO_PEERCRED), named in PIN prompts.
    peer_pid: Option<i32>,
}

impl Service {
    pub fn new(h: Arc<Hierarchy>) -> Self {
        Service {
            h,
            ssh: None,
            prompt: None,
            config_path: None,
            peer_pid: None,
        }
    }

    /// This service for one connection, whose peer process is `pid` (named in PIN prompts).
    pub fn for_peer(&self, pid: Option<i32>) -> Self {
        Service {
            peer_pid: pid,
            ..self.clone()
        }
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
        info.ssh_mode = f
            .has(SshFlags::OFFERED)
            .then_some(if f.has(SshFlags::CONFIRM) {
                SshMode::Confirm
            } else {
                SshMode::On
            });
        Ok(info)
    }

    /// Handle one request: decode, check access, run, encode. Failures are logged by code only
    /// (never with arguments).
    pub fn handle(&self, req: &Request) -> Response {
        let resp = dispatch(self, req);
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
    }
}

fn revoked(ids: Vec<uuid::Uuid>) -> Revoked {
    Revoked {
        id: ids.first().map(|i| i.to_string()).unwrap_or_default(),
        revoked: ids.iter().map(|i| i.to_string()).collect(),
    }
}

fn key_list(keys: Vec<KeyRecord>) -> KeyList {
    KeyList {
        keys: keys.iter().map(key_info).collect(),
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
                let who = crate::ssh::confirm::describe_process(self.peer_pid);
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
        Ok(HelloResult {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            root_kind: self.h.root_kind(),
            token: self.h.describe(),
            initialized: self.h.is_initialized()?,
            locked: self.h.is_locked(),
            ops: Op::ALL.iter().map(|o| o.name().to_string()).collect(),
            ssh_socket: self.ssh.as_ref().map(|s| s.0.clone()),
            config: self.config_path.clone(),
            keystore: Some(self.h.ks.path().display().to_string()),
            pin_attempts_left: Some(self.h.pin_attempts_left()),
        })
    }

    fn init(&self, a: PinArgs) -> Result<InitResult, AgentError> {
        let root = self.h.init(&a.pin)?;
        Ok(InitResult {
            id: root.to_string(),
            token: self.h.describe(),
        })
    }

    fn unlock(&self, a: PinArgs) -> Result<LockState, AgentError> {
        self.h.unlock(&a.pin)?;
        Ok(LockState { locked: false })
    }

    fn lock(&self, _: Empty) -> Result<LockState, AgentError> {
        if let Some((_, ssh)) = &self.ssh {
            ssh.on_lock();
        }
        self.h.lock()?;
        Ok(LockState { locked: true })
    }

    fn kek_create(&self, a: KekCreateArgs) -> Result<Created, AgentError> {
        self.h.kek_create(a.label).map(created)
    }

    fn kek_list(&self, _: Empty) -> Result<KeyList, AgentError> {
        self.h.kek_list().map(key_list)
    }

    fn dek_create(&self, a: DekCreateArgs) -> Result<Created, AgentError> {
        let purpose = match a.purpose {
            wire::Purpose::Personal => Purpose::Personal,
            wire::Purpose::Sharing => Purpose::Sharing,
        };
        self.h
            .dek_create(a.kek.as_deref(), purpose, a.exportable, a.label)
            .map(created)
    }

    fn dek_list(&self, a: DekListArgs) -> Result<KeyList, AgentError> {
        self.h.dek_list(a.kek.as_deref()).map(key_list)
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

    fn kek_rotate(&self, a: IdArgs) -> Result<KekRotated, AgentError> {
        let r = self.h.kek_rotate(&a.id)?;
        Ok(KekRotated {
            id: r.id.to_string(),
            version: r.version,
            rewrapped: r.rewrapped as u64,
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
        let id = self
            .h
            .keypair_create(a.kek.as_deref(), a.label, a.on_token, alg)?;
        if let Some(mode) = a.ssh.filter(|m| *m != SshMode::Off) {
            self.h
                .keypair_set_ssh(&id.to_string(), true, mode == SshMode::Confirm)?;
        }
        Ok(created(id))
    }

    fn keypair_list(&self, _: Empty) -> Result<KeyList, AgentError> {
        let keys = self.h.keypair_list()?;
        let keys = keys.iter().map(|r| self.keypair_info(r));
        Ok(KeyList {
            keys: keys.collect::<Result<_, _>>()?,
        })
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

    fn node_revoke(&self, a: NodeRevokeArgs) -> Result<Created, AgentError> {
        self.h.node_revoke(&a.name, a.by.as_deref()).map(created)
    }

    fn node_list(&self, _: Empty) -> Result<KeyList, AgentError> {
        self.h.node_list().map(key_list)
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
        let (pt, sender, sender_name) = self
            .h
            .open(&a.sealed, a.chain.as_deref().map(|c| c.as_slice()))?;
        Ok(OpenedMessage {
            plaintext: SecretBytes::from(pt),
            sender,
            sender_name,
        })
    }

    // ---- the PKCS#11 module's operations (door.rs) ----

    fn root_info(&self, _: Empty) -> Result<RootInfoResult, AgentError> {
        Ok(RootInfoResult {
            id: self.h.root_id()?,
            initialized: self.h.is_initialized()?,
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

    fn random(&self, a: RandomArgs) -> Result<RandomBytes, AgentError> {
        Ok(RandomBytes {
            bytes: serde_bytes::ByteBuf::from(self.h.random(a.len)?),
        })
    }
}
