//! The operation table: every operation declared once, with its wire name, argument type, result
//! type and whether it needs the agent unlocked.
//!
//! From the one table [`operations!`] generates:
//! - [`Op`], [`Op::ALL`], [`Op::name`], [`Op::from_name`] and [`Op::access`];
//! - a marker type per operation in [`op`] implementing [`Operation`], so that a client call is
//!   typed end to end (`client.call::<op::KekList>(&ListArgs::default())` returns a [`KeyList`]);
//! - the [`Handler`] trait with one method per operation, and [`dispatch`], which decodes a
//!   request's arguments, checks access, calls the method and encodes the result. `dispatch`
//!   matches every `Op` with no catch-all, and `Handler` has no default methods: an operation
//!   added to the table without a handler is a compile error in the agent.
//!
//! The model is rustls's `enum_builder!` (a wire table declared once) and age-plugin's
//! `RecipientPluginV1` (the library owns the protocol loop; the plugin implements one typed
//! method per message). This module must never decide policy: access is declared here and
//! enforced by the handler's [`Handler::check_access`].
//!
//! Adding an operation: one line here, its argument and result types in `ops`, a CDDL rule and a
//! sample in `tests/cddl.rs`, the handler method in the agent, the client/CLI surface, and a test
//! (ARCHITECTURE.md, "Add an operation").

use crate::ops::*;
use crate::{ErrorBody, ErrorCode, Request, Response};
use serde::{de::DeserializeOwned, Serialize};

/// Whether an operation may run while the agent is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Runs whatever the lock state (status, listing public records, init, unlock, lock).
    Always,
    /// Needs an initialized, unlocked agent: it touches key material.
    Unlocked,
}

/// One operation as a type: what it is called and what it takes and gives.
pub trait Operation {
    const OP: Op;
    type Args: Serialize + DeserializeOwned;
    type Result: Serialize + DeserializeOwned;
}

/// An error a [`Handler`] returns: it knows its wire form.
pub trait HandlerError {
    fn to_body(&self) -> ErrorBody;
}

/// Something done with an operation's argument type, chosen at run time by [`Op::visit_args`].
pub trait ArgsVisitor {
    type Out;
    fn visit<A>(self, op: Op) -> Self::Out
    where
        A: DeserializeOwned + Serialize + std::fmt::Debug;
}

macro_rules! operations {
    ($(
        $(#[$doc:meta])*
        $variant:ident, $method:ident, $name:literal: $args:ty => $result:ty, $access:ident;
    )+) => {
        /// Every operation this protocol version defines.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Op {
            $( $(#[$doc])* $variant, )+
        }

        impl Op {
            /// Every operation, in table order.
            pub const ALL: &'static [Op] = &[ $( Op::$variant, )+ ];

            /// The wire name.
            pub const fn name(self) -> &'static str {
                match self { $( Op::$variant => $name, )+ }
            }

            /// Whether the agent must be unlocked.
            pub const fn access(self) -> Access {
                match self { $( Op::$variant => Access::$access, )+ }
            }

            pub fn from_name(name: &str) -> Option<Op> {
                match name {
                    $( $name => Some(Op::$variant), )+
                    _ => None,
                }
            }

            /// Call `v` with this operation's argument type (fuzzing and checks that must
            /// cover every operation without a hand-kept list).
            pub fn visit_args<V: ArgsVisitor>(self, v: V) -> V::Out {
                match self { $( Op::$variant => v.visit::<$args>(self), )+ }
            }
        }

        /// One marker type per operation, for typed calls.
        pub mod op {
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Debug, Clone, Copy)]
                pub struct $variant;
                impl Operation for $variant {
                    const OP: Op = Op::$variant;
                    type Args = $args;
                    type Result = $result;
                }
            )+
        }

        /// What an agent implements: one typed method per operation, no defaults.
        pub trait Handler {
            type Error: HandlerError;
            /// Refuse an [`Access::Unlocked`] operation while the agent cannot serve it (not
            /// initialized, locked). Called after the arguments decoded, before the method.
            fn check_access(&self, op: Op) -> Result<(), Self::Error>;
            $(
                $(#[$doc])*
                fn $method(&self, args: $args) -> Result<$result, Self::Error>;
            )+
        }

        /// Run one request through `h`: decode its arguments, check access, call the operation's
        /// method, encode the result. Every failure is a typed error response with the
        /// request's id.
        pub fn dispatch<H: Handler + ?Sized>(h: &H, req: &Request) -> Response {
            let Some(op) = Op::from_name(&req.op) else {
                return Response::err(
                    Some(req.id),
                    ErrorBody::new(
                        ErrorCode::UnknownOp,
                        format!("unknown operation `{}`", req.op),
                    ),
                );
            };
            let result = match op {
                $( Op::$variant => run(h, req, op, H::$method), )+
            };
            match result {
                Ok(r) => r,
                Err(body) => Response::err(Some(req.id), body),
            }
        }
    };
}

fn run<H, A, R>(
    h: &H,
    req: &Request,
    op: Op,
    method: impl FnOnce(&H, A) -> Result<R, H::Error>,
) -> Result<Response, ErrorBody>
where
    H: Handler + ?Sized,
    A: DeserializeOwned,
    R: Serialize,
{
    let args: A = req.args()?;
    if op.access() == Access::Unlocked {
        h.check_access(op).map_err(|e| e.to_body())?;
    }
    let result = method(h, args).map_err(|e| e.to_body())?;
    Response::ok(req.id, &result).map_err(|e| {
        ErrorBody::new(
            ErrorCode::Internal,
            format!("{}: encoding the result: {e}", op.name()),
        )
    })
}

operations! {
    /// Protocol version and agent state; the first request on every connection.
    Hello, hello, "hello": HelloArgs => HelloResult, Always;
    /// Create the root on the token (never a second one).
    Init, init, "init": PinArgs => InitResult, Always;
    Unlock, unlock, "unlock": PinArgs => LockState, Always;
    /// Forget the PIN and destroy every unwrapped key.
    Lock, lock, "lock": Empty => LockState, Always;
    KekCreate, kek_create, "kek.create": KekCreateArgs => Created, Unlocked;
    KekList, kek_list, "kek.list": ListArgs => KeyList, Always;
    DekCreate, dek_create, "dek.create": DekCreateArgs => Created, Unlocked;
    DekList, dek_list, "dek.list": DekListArgs => KeyList, Always;
    /// The plaintext of a DEK created exportable.
    DekExport, dek_export, "dek.export": IdArgs => ExportedKey, Unlocked;
    Encrypt, encrypt, "encrypt": EncryptArgs => Ciphertext, Unlocked;
    Decrypt, decrypt, "decrypt": DecryptArgs => Plaintext, Unlocked;
    /// A fresh data key, in plaintext and wrapped under a DEK (streaming encryption).
    DatakeyCreate, datakey_create, "datakey.create": DatakeyCreateArgs => DataKey, Unlocked;
    /// Unwrap a data key `datakey.create` made.
    DatakeyOpen, datakey_open, "datakey.open": DatakeyOpenArgs => OpenedDataKey, Unlocked;
    KeypairCreate, keypair_create, "keypair.create": KeypairCreateArgs => Created, Unlocked;
    KeypairList, keypair_list, "keypair.list": ListArgs => KeyList, Always;
    KeypairShow, keypair_show, "keypair.show": IdArgs => KeyInfo, Always;
    KeypairDelete, keypair_delete, "keypair.delete": IdArgs => Deleted, Unlocked;
    /// Set or remove a keypair's X.509 certificate.
    KeypairCertSet, keypair_cert_set, "keypair.cert.set": KeypairCertSetArgs => KeyInfo, Unlocked;
    KeypairImport, keypair_import, "keypair.import": KeypairImportArgs => Created, Unlocked;
    Sign, sign, "sign": SignArgs => SignatureResult, Unlocked;
    ShareSeal, share_seal, "share.seal": ShareSealArgs => SealedResult, Unlocked;
    ShareOpen, share_open, "share.open": ShareOpenArgs => OpenedShareResult, Unlocked;
    NodeDerive, node_derive, "node.derive": NodeDeriveArgs => Created, Unlocked;
    NodeRekey, node_rekey, "node.rekey": NodeRekeyArgs => Created, Unlocked;
    NodeRevoke, node_revoke, "node.revoke": NodeRevokeArgs => Created, Unlocked;
    NodeList, node_list, "node.list": ListArgs => KeyList, Always;
    NodeChain, node_chain, "node.chain": NodeChainArgs => ChainResult, Always;
    /// Replace the cluster root `/`; the old root vouches for it (or, compromised, revokes itself).
    NodeRootRotate, node_root_rotate, "node.root_rotate": NodeRootRotateArgs => NodeRootRotated, Unlocked;
    Seal, seal, "seal": SealArgs => SealedResult, Unlocked;
    Open, open, "open": OpenArgs => OpenedMessage, Unlocked;
    // For the PKCS#11 module (ARCHITECTURE.md, "The PKCS#11 door").
    /// The root's id (the module's token serial) and the lock state.
    RootInfo, root_info, "root.info": Empty => RootInfoResult, Always;
    /// Unlock with a PIN the agent asks for through its pinentry (`C_Login` with a NULL PIN);
    /// `prompt_unavailable` when it has none configured.
    UnlockPrompt, unlock_prompt, "unlock.prompt": Empty => LockState, Always;
    /// ECDSA P-256 over a caller's digest: raw r‖s.
    SignDigest, sign_digest, "sign.digest": SignDigestArgs => SignatureResult, Unlocked;
    /// Raw AES-256-GCM under a DEK (caller IV, AAD, tag length).
    GcmSeal, gcm_seal, "gcm.seal": GcmArgs => GcmResult, Unlocked;
    GcmOpen, gcm_open, "gcm.open": GcmArgs => GcmResult, Unlocked;
    /// ECDH with a P-256 keypair: the shared x-coordinate.
    KeypairEcdh, keypair_ecdh, "keypair.ecdh": EcdhArgs => SharedSecret, Unlocked;
    /// Random bytes from the agent's CSPRNG (at most `MAX_RANDOM`).
    Random, random, "random": RandomArgs => RandomBytes, Always;
    /// Offer a keypair on the SSH-agent socket (`on`, `confirm`) or stop (`off`).
    KeypairSsh, keypair_ssh, "keypair.ssh": KeypairSshArgs => KeyInfo, Always;
    // Key life cycle (README "Key lifecycle").
    /// One DEK's record: its newest and minimum versions, state.
    DekShow, dek_show, "dek.show": IdArgs => KeyInfo, Always;
    /// Add a version to a DEK; new encryptions use it.
    DekRotate, dek_rotate, "dek.rotate": IdArgs => DekRotated, Unlocked;
    /// Refuse decryption below a version (`version_retired`).
    DekMinVersion, dek_min_version, "dek.min_version": DekMinVersionArgs => DekMinVersionResult, Unlocked;
    /// Re-encrypt a Cryppo ciphertext under the newest version of its DEK, inside the agent.
    Rewrap, rewrap, "rewrap": RewrapArgs => Ciphertext, Unlocked;
    /// Revoke a KEK (and every key under it), a DEK or a keypair: final.
    KekRevoke, kek_revoke, "kek.revoke": IdArgs => Revoked, Unlocked;
    DekRevoke, dek_revoke, "dek.revoke": IdArgs => Revoked, Unlocked;
    KeypairRevoke, keypair_revoke, "keypair.revoke": IdArgs => Revoked, Unlocked;
    /// A new KEK version: every child rewrapped under it (journaled), the old wrap destroyed.
    KekRotate, kek_rotate, "kek.rotate": KekRotateArgs => KekRotated, Unlocked;
    /// How far a KEK rotation has come (its journal): `kek rotate --progress` polls it.
    KekRotation, kek_rotation, "kek.rotation": IdArgs => KekRotationStatus, Always;
    // Agent authorization (DKMS; README "Agent authorization").
    /// The identity's signed agent policy (`not_found` before the first `agents.add`/`revoke`).
    AgentsPolicy, agents_policy, "agents.policy": Empty => AgentPolicyResult, Always;
    /// List an agent key with capabilities (and expiry); re-signs the policy.
    AgentsAdd, agents_add, "agents.add": AgentsAddArgs => AgentPolicyResult, Unlocked;
    /// Revoke an agent key (final); re-signs the policy.
    AgentsRevoke, agents_revoke, "agents.revoke": AgentsRevokeArgs => AgentPolicyResult, Unlocked;
    // Several roots per KEK (README "Several roots").
    /// Enroll the root a configuration's `[root]` describes; every KEK is wrapped under it.
    RootAdd, root_add, "root.add": RootAddArgs => RootAdded, Unlocked;
    /// The enrolled roots, one page.
    RootList, root_list, "root.list": ListArgs => RootPage, Unlocked;
    /// Remove an enrolled root (not the agent's own, not the last).
    RootRemove, root_remove, "root.remove": IdArgs => Deleted, Unlocked;
    /// A new device (after `init` joined a shared keystore): file its enrollment request
    /// with a commitment to a nonce.
    DeviceRequest, device_request, "device.request": DeviceRequestArgs => DeviceRequested, Always;
    /// A new device: reveal its nonce once an enrolled device answered, and give the code.
    DeviceReveal, device_reveal, "device.reveal": Empty => DeviceRevealed, Always;
    /// An enrolled device: answer a request, or (with the code) enroll it.
    DeviceApprove, device_approve, "device.approve": DeviceApproveArgs => DeviceApproved, Unlocked;
    DeviceList, device_list, "device.list": ListArgs => DevicePage, Unlocked;
    /// Remove a device's wraps and root, rotate every KEK it could read.
    DeviceRevoke, device_revoke, "device.revoke": IdArgs => DeviceRevoked, Unlocked;
    /// Replace the agent's root by the one a configuration describes; the agent locks after.
    RootRotate, root_rotate, "root.rotate": RootRotateArgs => RootRotated, Unlocked;
    // Recovery (README "Recovery").
    /// Store a recovery share sealed to one of this agent's keypairs, wrapped under its KEK.
    RecoveryHold, recovery_hold, "recovery.hold": RecoveryHoldArgs => HeldShareInfo, Unlocked;
    /// Seal a held share to the owner's one-time request key.
    RecoveryRelease, recovery_release, "recovery.release": RecoveryReleaseArgs => ReleasedShareResult, Unlocked;
    /// Forget a held recovery share (its owner no longer needs it).
    RecoveryDelete, recovery_delete, "recovery.delete": IdArgs => Deleted, Unlocked;
    /// The recovery shares this agent holds for others (paged).
    RecoveryHeld, recovery_held, "recovery.held": ListArgs => KeyList, Always;
    /// Enroll a recovery public key: every existing and future KEK is wrapped to it.
    RecoveryEnroll, recovery_enroll, "recovery.enroll": RecoveryEnrollArgs => EnrolledRecovery, Unlocked;
    /// Restore with the recovery secret onto a fresh token (a new root; every KEK rewrapped).
    RecoveryRestore, recovery_restore, "recovery.restore": RecoveryRestoreArgs => RestoredResult, Always;
    /// Narrow a DEK's or keypair's usage limits (usage set, confirm, not-after).
    KeyLimits, key_limits, "key.limits": KeyLimitsArgs => KeyInfo, Unlocked;
    /// The audit log's path, and the audit key and chain head from the keystore (for
    /// `keyward audit verify`).
    AuditInfo, audit_info, "audit.info": Empty => AuditInfoResult, Always;
    /// Copy the whole keystore into a new, empty one and check the copy record by record
    /// (README "Moving the keystore").
    KeystoreMigrate, keystore_migrate, "keystore.migrate": KeystoreMigrateArgs => KeystoreMigrated, Unlocked;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(*op));
        }
        assert_eq!(Op::from_name("rm -rf"), None);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = Op::ALL.iter().map(|o| o.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Op::ALL.len());
    }

    #[test]
    fn marker_types_name_their_op() {
        assert_eq!(<op::KekList as Operation>::OP, Op::KekList);
        assert_eq!(<op::Hello as Operation>::OP.name(), "hello");
        assert_eq!(Op::Encrypt.access(), Access::Unlocked);
        assert_eq!(Op::KekList.access(), Access::Always);
    }
}
