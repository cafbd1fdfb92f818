//! One function per protocol operation: typed arguments in, typed result or error out.
//!
//! Runs on blocking threads (token calls block). It never sees the socket and never decides who
//! may call it: the server has checked the peer and the `hello` phase before a request gets here.

use crate::error::AgentError;
use crate::hierarchy::Hierarchy;
use keyward_proto::ops::*;
use keyward_proto::secret::SecretBytes;
use keyward_proto::{ErrorBody, ErrorCode, Request, Response, PROTOCOL_VERSION};
use std::sync::Arc;

/// The agent's operations over one hierarchy.
#[derive(Clone)]
pub struct Service {
    h: Arc<Hierarchy>,
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, format!("encoding the result: {e}"))
}

impl Service {
    pub fn new(h: Arc<Hierarchy>) -> Self {
        Service { h }
    }

    /// The `hello` result.
    pub fn hello(&self) -> Result<HelloResult, AgentError> {
        Ok(HelloResult {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            root_kind: self.h.root_kind(),
            token: self.h.describe(),
            initialized: self.h.is_initialized()?,
            locked: self.h.is_locked(),
            ops: Op::ALL.iter().map(|o| o.name().to_string()).collect(),
        })
    }

    /// Handle one request (after the connection's `hello`).
    pub fn handle(&self, req: &Request) -> Response {
        let id = req.id;
        let Some(op) = Op::from_name(&req.op) else {
            return Response::err(
                Some(id),
                ErrorBody::new(
                    ErrorCode::UnknownOp,
                    format!("unknown operation `{}`", req.op),
                ),
            );
        };
        match self.dispatch(op, req) {
            Ok(r) => r,
            Err(body) => {
                if body.code == ErrorCode::Internal || body.code == ErrorCode::TokenError {
                    tracing::error!(op = op.name(), error = %body.message, "request failed");
                } else {
                    tracing::debug!(op = op.name(), code = %body.code, "request refused");
                }
                Response::err(Some(id), body)
            }
        }
    }

    fn dispatch(&self, op: Op, req: &Request) -> Result<Response, ErrorBody> {
        let id = req.id;
        let h = &self.h;
        let e = |e: AgentError| e.to_body();
        let ok = |r: Result<Response, _>| r.map_err(internal);
        match op {
            Op::Hello => {
                let _: HelloArgs = req.args()?;
                ok(Response::ok(id, &self.hello().map_err(e)?))
            }
            Op::Init => {
                let a: PinArgs = req.args()?;
                let root = h.init(&a.pin).map_err(e)?;
                ok(Response::ok(
                    id,
                    &InitResult {
                        id: root.to_string(),
                        token: h.describe(),
                    },
                ))
            }
            Op::Unlock => {
                let a: PinArgs = req.args()?;
                h.unlock(&a.pin).map_err(e)?;
                ok(Response::ok(id, &LockState { locked: false }))
            }
            Op::Lock => {
                let _: Empty = req.args()?;
                h.lock().map_err(e)?;
                ok(Response::ok(id, &LockState { locked: true }))
            }
            Op::KekCreate => {
                let a: KekCreateArgs = req.args()?;
                let kid = h.kek_create(a.label).map_err(e)?;
                ok(Response::ok(
                    id,
                    &Created {
                        id: kid.to_string(),
                    },
                ))
            }
            Op::KekList => {
                let _: Empty = req.args()?;
                ok(Response::ok(
                    id,
                    &KeyList {
                        keys: h.kek_list().map_err(e)?,
                    },
                ))
            }
            Op::DekCreate => {
                let a: DekCreateArgs = req.args()?;
                let did = h.dek_create(&a).map_err(e)?;
                ok(Response::ok(
                    id,
                    &Created {
                        id: did.to_string(),
                    },
                ))
            }
            Op::DekList => {
                let a: DekListArgs = req.args()?;
                ok(Response::ok(
                    id,
                    &KeyList {
                        keys: h.dek_list(a.kek.as_deref()).map_err(e)?,
                    },
                ))
            }
            Op::DekExport => {
                let a: IdArgs = req.args()?;
                let key = h.dek_export(&a.id).map_err(e)?;
                ok(Response::ok(
                    id,
                    &ExportedKey {
                        id: a.id,
                        key: SecretBytes::from(key),
                    },
                ))
            }
            Op::Encrypt => {
                let a: EncryptArgs = req.args()?;
                let ct = h.encrypt(&a.dek, a.plaintext.expose()).map_err(e)?;
                ok(Response::ok(id, &Ciphertext { ciphertext: ct }))
            }
            Op::Decrypt => {
                let a: DecryptArgs = req.args()?;
                let pt = h.decrypt(&a.ciphertext, a.dek.as_deref()).map_err(e)?;
                ok(Response::ok(
                    id,
                    &Plaintext {
                        plaintext: SecretBytes::from(pt),
                    },
                ))
            }
            Op::KeypairCreate => {
                let a: KeypairCreateArgs = req.args()?;
                let kid = h
                    .keypair_create(a.kek.as_deref(), a.label, a.on_token, a.alg.as_deref())
                    .map_err(e)?;
                ok(Response::ok(
                    id,
                    &Created {
                        id: kid.to_string(),
                    },
                ))
            }
            Op::KeypairList => {
                let _: Empty = req.args()?;
                ok(Response::ok(
                    id,
                    &KeyList {
                        keys: h.keypair_list().map_err(e)?,
                    },
                ))
            }
            Op::KeypairShow => {
                let a: IdArgs = req.args()?;
                ok(Response::ok(id, &h.keypair_show(&a.id).map_err(e)?))
            }
            Op::KeypairDelete => {
                let a: IdArgs = req.args()?;
                let gone = h.keypair_delete(&a.id).map_err(e)?;
                ok(Response::ok(
                    id,
                    &Deleted {
                        id: gone.to_string(),
                        deleted: true,
                    },
                ))
            }
            Op::KeypairImport => {
                let a: KeypairImportArgs = req.args()?;
                let kid = h
                    .keypair_import(a.pem.expose(), a.kek.as_deref(), a.label)
                    .map_err(e)?;
                ok(Response::ok(
                    id,
                    &Created {
                        id: kid.to_string(),
                    },
                ))
            }
            Op::Sign => {
                let a: SignArgs = req.args()?;
                let sig = h.sign(&a.key, &a.data, a.raw).map_err(e)?;
                ok(Response::ok(
                    id,
                    &SignatureResult {
                        signature: serde_bytes::ByteBuf::from(sig),
                    },
                ))
            }
            Op::ShareSeal => {
                let a: ShareSealArgs = req.args()?;
                let sealed = h.share_seal(&a.dek, &a.to, a.from.as_deref()).map_err(e)?;
                ok(Response::ok(id, &SealedResult { sealed }))
            }
            Op::ShareOpen => {
                let a: ShareOpenArgs = req.args()?;
                let (dek, sender) = h
                    .share_open(
                        &a.sealed,
                        a.kek.as_deref(),
                        a.from.as_deref(),
                        a.id.as_deref(),
                    )
                    .map_err(e)?;
                ok(Response::ok(id, &OpenedShareResult { id: dek, sender }))
            }
            Op::NodeDerive => {
                let a: NodeDeriveArgs = req.args()?;
                let nid = h
                    .node_derive(
                        &a.name,
                        a.parent.as_deref(),
                        a.kek.as_deref(),
                        a.ttl_seconds,
                    )
                    .map_err(e)?;
                ok(Response::ok(
                    id,
                    &Created {
                        id: nid.to_string(),
                    },
                ))
            }
            Op::NodeRekey => {
                let a: NodeRekeyArgs = req.args()?;
                let nid = h.node_rekey(&a.name, a.ttl_seconds).map_err(e)?;
                ok(Response::ok(
                    id,
                    &Created {
                        id: nid.to_string(),
                    },
                ))
            }
            Op::NodeRevoke => {
                let a: NodeRevokeArgs = req.args()?;
                let nid = h.node_revoke(&a.name, a.by.as_deref()).map_err(e)?;
                ok(Response::ok(
                    id,
                    &Created {
                        id: nid.to_string(),
                    },
                ))
            }
            Op::NodeList => {
                let _: Empty = req.args()?;
                ok(Response::ok(
                    id,
                    &KeyList {
                        keys: h.node_list().map_err(e)?,
                    },
                ))
            }
            Op::NodeChain => {
                let a: NodeChainArgs = req.args()?;
                let chain = h.node_chain(a.root.as_deref()).map_err(e)?;
                ok(Response::ok(
                    id,
                    &ChainResult {
                        chain: serde_bytes::ByteBuf::from(chain),
                    },
                ))
            }
            Op::Seal => {
                let a: SealArgs = req.args()?;
                let sealed = h
                    .seal(&a.to, &a.sign_with, a.plaintext.expose())
                    .map_err(e)?;
                ok(Response::ok(id, &SealedResult { sealed }))
            }
            Op::Open => {
                let a: OpenArgs = req.args()?;
                let (pt, sender, sender_name) = h
                    .open(&a.sealed, a.chain.as_deref().map(|c| c.as_slice()))
                    .map_err(e)?;
                ok(Response::ok(
                    id,
                    &OpenedMessage {
                        plaintext: SecretBytes::from(pt),
                        sender,
                        sender_name,
                    },
                ))
            }
            _ => Err(ErrorBody::new(
                ErrorCode::UnknownOp,
                format!("operation `{}` is not served by this agent", op.name()),
            )),
        }
    }
}
