//! The agent's errors, and how each becomes a wire error code.
//!
//! Every variant carries typed data: ids are `Uuid`s, kinds and states are the keystore's enums,
//! and the closed sets of reasons are sub-enums ([`Missing`], [`DecryptFailure`], [`Problem`],
//! [`WrongKey`], [`Existing`], [`Unverified`], [`Tampering`], [`Internal`]) whose library errors
//! are kept as `#[source]`. The `Display` text is the wire message, so it includes the cause's
//! text as well; a printer that walks `source()` should skip causes already in the message.
//!
//! Messages name the operation and the kind of failure; they never carry PINs, keys or
//! plaintexts, and `invalid_args` messages name fields, never their values.

use crate::keystore::{Algorithm, KeyKind, KeyState, KeystoreError};
use crate::root::RootError;
use keyward_identity::{
    ChainError, FormatError, KeyId, MessageError, NodeKeyError, ShareError, SignError,
    StatementError,
};
use keyward_proto::{ErrorBody, ErrorCode};
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(
        "client speaks protocol {client}, this agent speaks {}",
        keyward_proto::PROTOCOL_VERSION
    )]
    UnsupportedVersion { client: u32 },
    #[error("no root yet: run `keyward init`")]
    NotInitialized,
    #[error("a root exists already; init never makes a second one")]
    AlreadyInitialized,
    #[error("the agent is locked: run `keyward unlock` (refused: {op})")]
    Locked { op: &'static str },
    #[error(transparent)]
    Prompt(#[from] crate::prompt::PromptError),
    #[error("the PIN or passphrase is incorrect")]
    PinIncorrect {
        attempts_left: u32,
        retry_after_ms: Option<u64>,
    },
    #[error("too many wrong PINs: wait before trying again")]
    PinBackoff { retry_after_ms: u64 },
    #[error("the PIN attempt limit is used up: the agent refuses PINs until an administrator resets the counter (keywardd reset-pin-attempts)")]
    PinLocked,
    #[error("{0}")]
    NotFound(Missing),
    #[error("{count} {}: name one{}", .what.plural(), .what.hint())]
    Ambiguous { what: Choice, count: usize },
    #[error("DEK {id} was created non-exportable")]
    NotExportable { id: Uuid },
    #[error("{} {id} is {}", kind.as_str(), state.as_str())]
    KeyInactive {
        kind: KeyKind,
        id: Uuid,
        state: KeyState,
    },
    #[error("decrypt: {0}")]
    DecryptFailed(#[source] DecryptFailure),
    /// The ciphertext (or data key) is under a DEK version below the DEK's minimum.
    #[error("DEK {id} version {version} is retired (the minimum version is {min}): rewrap what was encrypted under it before raising the minimum, or lower it with `keyward dek min-version`")]
    VersionRetired { id: Uuid, version: u32, min: u32 },
    #[error("invalid `{arg}`: {problem}")]
    InvalidArgs {
        arg: &'static str,
        #[source]
        problem: Problem,
    },
    #[error("{op}: {len} bytes is over the {max}-byte limit of one request")]
    TooLarge {
        op: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0}")]
    AlreadyExists(Existing),
    #[error("{0}")]
    WrongKey(WrongKey),
    #[error("{0}")]
    VerifyFailed(#[source] Unverified),
    #[error(transparent)]
    Root(#[from] RootError),
    /// Integrity data the hierarchy checks itself (the PIN counter, the integrity records, the
    /// root record) was changed outside the agent. A single record whose MAC the keystore finds
    /// missing or wrong is `Keystore(KeystoreError::Tampered)`, with the same wire code.
    #[error("keystore record {} was modified outside the agent ({}): refusing to use it; restore the keystore from a backup", .0.record(), .0)]
    KeystoreTampered(Tampering),
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// `keystore.migrate` failed: the destination, or the check of the copy.
    #[error(transparent)]
    Migrate(#[from] crate::keystore::MigrateError),
    #[error("internal error: {0}")]
    Internal(#[source] Internal),
    /// The agent authorization policy revoked this agent key: it cannot be listed again.
    #[error("agent key {key} was revoked: a revocation is final")]
    AgentKeyRevoked { key: KeyId },
    /// SQLite's full check of the keystore, started just after the socket, has not finished.
    #[error("the keystore is still being checked (started {ms} ms ago): try again shortly")]
    KeystoreChecking { ms: u64 },
    /// A rule of the policy file refused the request (`policy_denied`).
    #[error("{0}")]
    PolicyDenied(crate::policy::Denied),
    /// The audit log cannot be written and the config requires it (`audit_unavailable`).
    #[error("`{op}` refused: the audit log cannot be written (disk full, read-only or removed); key operations are refused until it can (`[audit] required = false` opts out)")]
    AuditUnavailable { op: &'static str },
    /// The key's usage limits refuse this use, or its confirmation was not given.
    #[error("{} {id} may not be used for `{usage}`: {why}", kind.as_str())]
    UsageDenied {
        kind: KeyKind,
        id: Uuid,
        usage: crate::limits::Usage,
        #[source]
        why: crate::limits::Refusal,
    },
    /// The key's `not_after` has passed.
    #[error("{} {id} expired at {} (its not-after date): it is refused for every use", kind.as_str(), keyward_proto::rfc3339::format(*not_after))]
    KeyExpired {
        kind: KeyKind,
        id: Uuid,
        not_after: u64,
    },
    /// `key.limits` asked for wider limits than the key has.
    #[error("the limits of key {id} only narrow: refused {what}")]
    LimitsWidened {
        id: Uuid,
        what: crate::limits::Widening,
    },
    /// An operation on the enrolled roots refused (`roots.rs`).
    #[error("{0}")]
    Roots(RootRefusal),
    /// A device operation refused (`devices.rs`).
    #[error("{0}")]
    Devices(DeviceRefusal),
}

/// What the agent picks when the caller names none: the only active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Kek,
    Keypair,
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Choice {
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Kek => "kek",
            Choice::Keypair => "keypair",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Choice::Kek => "active KEKs",
            Choice::Keypair => "keypairs",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Choice::Kek => " with --kek",
            Choice::Keypair => "",
        }
    }
}

/// What was looked for and not found.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Missing {
    #[error("no {} with id {id}", kind.as_str())]
    Key { kind: KeyKind, id: Uuid },
    /// The id given is not a UUID, so no key has it (echoed: an id is not a secret).
    #[error("no {} with id {given}", kind.as_str())]
    NotAnId { kind: KeyKind, given: String },
    /// Nothing was named, and there is none to choose.
    #[error("no {what} exists: create one with `keyward {what} create`")]
    NoneToChoose { what: Choice },
    #[error("no node named `{name}`")]
    Node { name: String },
    #[error("no cluster root yet: run `keyward node derive NAME`, or name a --root")]
    ClusterRoot,
    #[error("no agent authorization policy yet: run `keyward agents add DID --cap ...`")]
    AgentPolicy,
    /// `key.limits`: limits are for DEKs and keypairs.
    #[error("no DEK or keypair with id {id}")]
    DekOrKeypair { id: Uuid },
}

/// Why a ciphertext does not decrypt.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecryptFailure {
    #[error("not a Cryppo string: {0}")]
    NotCryppo(#[source] keyward_envelope::Error),
    #[error("not Cryppo encrypted data")]
    NotEncrypted,
    #[error("not Aes256Gcm data: {0}")]
    NotAesGcm(#[source] keyward_envelope::Error),
    /// The ciphertext's `ad` names one DEK and the caller another. Both as written: the `ad`
    /// is the ciphertext's text, `given` the caller's, and neither need be a UUID.
    #[error("the ciphertext is for DEK {named}, not {given}")]
    DekMismatch { named: String, given: String },
    #[error("the ciphertext names no Keyward DEK: give one with --dek")]
    NoDekNamed,
    /// The ciphertext or data key names a version the DEK does not have (0, or above its
    /// newest).
    #[error("it names version {version} of DEK {id}, which has versions 1 to {current}")]
    DekVersion {
        id: Uuid,
        version: u32,
        current: u32,
    },
    /// The `ad` names a Keyward DEK but its version suffix is not `:v<N>` with N ≥ 2.
    #[error("the ciphertext's DEK version is malformed (expected keyward:dek:<id> or keyward:dek:<id>:v<N>, N ≥ 2)")]
    BadVersion,
    #[error("gcm.open: shorter than its tag")]
    ShorterThanTag,
    #[error("gcm.open: authentication failed")]
    Authentication,
}

/// What is wrong with an argument. Never carries the argument's value.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Problem {
    #[error("must be {min} to {max} {unit}")]
    OutOfRange {
        min: u64,
        max: u64,
        unit: &'static str,
    },
    #[error("must be {expected} bytes")]
    Length { expected: usize },
    #[error("holds {len} bytes, not a {expected}-byte key")]
    KeyLength { len: usize, expected: usize },
    #[error("not a UUID")]
    NotUuid,
    #[error("unknown keypair algorithm: p256 or ed25519")]
    UnknownAlgorithm,
    #[error("keypair algorithm {} is not one `keypair.create` makes: p256 or ed25519", .0.as_str())]
    UnsupportedAlgorithm(Algorithm),
    #[error("reserved: {0}")]
    Reserved(&'static str),
    #[error("not with {0}")]
    Conflicts(&'static str),
    #[error("not a public key: {0}")]
    NotPublicKey(#[source] FormatError),
    #[error("not a P-256 point: {0}")]
    NotP256Point(#[source] FormatError),
    #[error("neither a P-256 key ({p256}) nor an RSA key ({rsa})")]
    NeitherP256NorRsa {
        p256: FormatError,
        #[source]
        rsa: keyward_envelope::Error,
    },
    #[error("not PEM text")]
    NotPemText,
    #[error("not an RSA private key: {0}")]
    NotRsaKey(#[source] keyward_envelope::Error),
    #[error("not a node name: {0}")]
    NotNodeName(#[source] NodeKeyError),
    #[error("not a sealed message: {0}")]
    NotSealedMessage(#[source] MessageError),
    #[error("not a sealed share: {0}")]
    NotSealedShare(#[source] ShareError),
    #[error("not a recovery share: {0}")]
    NotRecoveryShare(#[source] keyward_recovery::ShareError),
    #[error("not a chain: {0}")]
    NotChain(#[source] ChainError),
    #[error("not X.509 DER: {0}")]
    NotCertificate(#[source] x509_cert::der::Error),
    #[error("certificates are for P-256 and Ed25519 keypairs")]
    NoCertificateForRsa,
    #[error("not a cursor from a list's `next`")]
    NotCursor,
    #[error("unknown capability: sign, decrypt, recover or admin (at least one)")]
    UnknownCapability,
    #[error("{0}")]
    AgentPolicy(#[source] keyward_identity::AuthzError),
    #[error("`{usage}` is not a usage of a {}", kind.as_str())]
    UsageForKind {
        usage: crate::limits::Usage,
        kind: KeyKind,
    },
    #[error("not an RFC 3339 date-time (e.g. 2027-01-31T18:00:00Z) or date")]
    NotRfc3339,
    /// `root.add`: the configuration text does not give a usable `[root]` (what is wrong, never
    /// the file's text: a TOML syntax error is not quoted).
    #[error("not a keywardd configuration with a usable [root]: {0}")]
    BadConfig(String),
}

/// Something that must not exist yet.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Existing {
    #[error("node `{name}` exists: use `node rekey` for a new key")]
    Node { name: String },
    #[error("a key with id {id} exists already in this keystore")]
    KeyId { id: Uuid },
    #[error("this root is enrolled already, as root {id}")]
    Root { id: Uuid },
    #[error("this agent holds that recovery share already (held share {id})")]
    HeldShare { id: Uuid },
}

/// The key named (or found) cannot do what was asked.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WrongKey {
    #[error("keypair {id} lives on the token: it signs, but cannot open shares or messages")]
    OnToken { id: Uuid },
    #[error("keypair {id} is {}: ECDH, sharing, sealed messages and node keys use P-256 keypairs", .alg.as_str())]
    NotP256 { id: Uuid, alg: Algorithm },
    #[error("keypair {id} has vouched for {count} node key(s): it stays for their chain's history (revoke it instead)")]
    VouchedFor { id: Uuid, count: usize },
    #[error("keypair {id} opens {count} recovery share(s) held for others: `keyward recovery delete` them first (once their owners no longer need them)")]
    HoldsRecoveryShares { id: Uuid, count: usize },
    #[error("`{name}` has no parent to vouch for a new key")]
    NoParentToVouch { name: String },
    #[error("`{name}` has no parent: name a revoker with --by")]
    NoParentToRevoke { name: String },
    #[error("keypair {id} is not an ancestor of `{name}`: only ancestors may revoke it")]
    NotAncestor { id: Uuid, name: String },
    #[error("the {what} is sealed to key {key}, which this agent does not hold")]
    NotHeld { what: &'static str, key: KeyId },
    #[error(
        "DEK {id} is a personal DEK: only DEKs created with --purpose sharing are sealed to others"
    )]
    PersonalDek { id: Uuid },
    #[error(
        "an Rsa4096 share needs an RSA keypair: import one with `keyward keypair import --pem`"
    )]
    NoRsaKeypair,
    #[error("none of this agent's {tried} RSA keypair(s) opens the share")]
    NoRsaKeypairOpens { tried: usize },
    #[error("the certificate's public key is not keypair {id}'s")]
    CertificateMismatch { id: Uuid },
    #[error("DEK {id} is a sharing DEK: its recipients hold version 1, so it is not rotated (create a new sharing DEK instead)")]
    SharedDekRotation { id: Uuid },
    #[error("keypair {id} is {}: SSH takes P-256, Ed25519 and RSA keypairs", .alg.map_or("unknown", Algorithm::as_str))]
    NotForSsh { id: Uuid, alg: Option<Algorithm> },
}

/// A signature, a sealed message or a share that does not verify.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Unverified {
    #[error("open: {0}")]
    Message(#[source] MessageError),
    #[error("the sender is not vouched for: {0}")]
    NotVouched(#[source] ChainError),
    #[error("share.open: {0}")]
    Share(#[source] ShareError),
    #[error("the sender's agent key {key} was revoked at {at} by the agent authorization policy")]
    AgentRevoked { key: KeyId, at: u64 },
    #[error("{op}: {source}")]
    RecoveryShare {
        op: &'static str,
        #[source]
        source: keyward_recovery::ShareError,
    },
}

/// What the hierarchy found changed outside the agent.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Tampering {
    #[error("the PIN counter's MAC does not verify")]
    PinCounter,
    #[error("the keystore has no integrity key")]
    NoIntegrityKey,
    #[error("not exactly one integrity KEK")]
    IntegrityKeks,
    #[error("not exactly one integrity secret")]
    IntegritySecrets,
    #[error("it has no wrapped key")]
    NoWrappedKey { id: Uuid },
    #[error("its wrapped key does not unwrap")]
    DoesNotUnwrap { id: Uuid },
    #[error("the root record differs from the one the agent read")]
    RootRecord { id: Uuid },
    #[error("the agent authorization policy's MAC or signature does not verify")]
    AgentPolicy,
    #[error("the audit key's row does not verify (its MAC, or its contents)")]
    AuditKey,
    /// The list of KEKs a `root rotate --compromised` left to rotate: its MAC is missing or
    /// does not verify.
    #[error("the list of KEKs left to rotate by `root rotate --compromised` does not verify")]
    CompromisedList,
    /// The mark by which `root rotate --compromised` asks the next unlock to replace the
    /// keystore integrity key: its MAC is missing or does not verify.
    #[error("the integrity key replacement mark of `root rotate --compromised` does not verify")]
    IntegrityRekey,
}

impl Tampering {
    /// The record the message names.
    pub fn record(&self) -> String {
        match self {
            Tampering::PinCounter => crate::hierarchy::META_FAILURES.to_string(),
            Tampering::AuditKey => "(audit key)".to_string(),
            Tampering::NoIntegrityKey | Tampering::IntegrityKeks | Tampering::IntegritySecrets => {
                "(keystore integrity key)".to_string()
            }
            Tampering::AgentPolicy => crate::agents::META_POLICY.to_string(),
            Tampering::CompromisedList => crate::root_rotate::META_COMPROMISED.to_string(),
            Tampering::IntegrityRekey => crate::root_rotate::META_REKEY.to_string(),
            Tampering::NoWrappedKey { id }
            | Tampering::DoesNotUnwrap { id }
            | Tampering::RootRecord { id } => id.to_string(),
        }
    }
}

/// Failures that are not the caller's: a damaged record, a crypto library refusing, a token
/// that could not clean up. Wire code `internal`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Internal {
    #[error("{} {id} {defect}", kind.as_str())]
    BadRecord {
        kind: KeyKind,
        id: Uuid,
        defect: Defect,
    },
    #[error("{op}: {source}")]
    Crypto {
        op: &'static str,
        source: CryptoError,
    },
    #[error("{op}: the token returned {len} bytes, fewer than a GCM tag")]
    ShortGcmOutput { op: &'static str, len: usize },
    #[error("unlocked without a remembered PIN")]
    NoHeldPin,
    /// The keystore record is gone; its token objects may remain.
    #[error("keypair {id} is deleted from the keystore, but destroying its token objects failed: {source}")]
    TokenCleanup { id: Uuid, source: RootError },
}

/// What is wrong with a stored record (the agent never writes such records).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Defect {
    #[error("has no wrapped key")]
    NoWrappedKey,
    #[error("has no parent")]
    NoParent,
    #[error("has no locator")]
    NoLocator,
    #[error("has no readable public key")]
    NoPublicKey,
    #[error("is not a P-256 scalar")]
    NotP256Scalar,
    #[error("unwraps to {len} bytes, not {expected}")]
    BadLength { len: usize, expected: usize },
    #[error("is truncated")]
    Truncated,
    #[error("is not PEM")]
    NotPem,
    /// A KEK with no wrap under an enrolled root (the agent writes every root's wrap with the
    /// KEK, in one transaction).
    #[error("has no wrap under root {root}")]
    NoWrapForRoot { root: Uuid },
    #[error("does not hold a recovery share: {0}")]
    NotHeldShare(#[source] keyward_recovery::ShareError),
}

/// Why an operation on the enrolled roots (`root.add`, `root.remove`, and the KEK operations
/// that wrap under every root) is refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RootRefusal {
    /// `root.remove` of the root this agent runs on.
    #[error("{op}: root {id} is the root this agent runs on: remove it from an agent started on another enrolled root")]
    OwnRoot { op: &'static str, id: Uuid },
    /// `root.remove` of the only enrolled root.
    #[error("{op}: root {id} is the last enrolled root: every key would be lost")]
    LastRoot { op: &'static str, id: Uuid },
    /// A root that needs its secret to wrap a KEK (an AES token, a soft root) is not the one
    /// this agent runs on.
    #[error("{op}: enrolled root {id} ({scheme}) needs its token or passphrase to wrap a KEK and is not present in this agent: run this from an agent started on it, or drop it (`--drop-root {id}` or `keyward root remove {id}`)")]
    Absent {
        op: &'static str,
        id: Uuid,
        scheme: String,
    },
    /// No enrolled root is of the configured backend's scheme.
    #[error("unlock: no enrolled root is a {scheme} root (the configured [root]): start the agent with the configuration of an enrolled root")]
    NoneOfScheme { scheme: &'static str },
    /// `root.rotate` to the root this agent runs on (the same token object, or passphrase).
    #[error("{op}: the new root is root {id}, the one this agent runs on: give the configuration of another token, object or passphrase")]
    SameRoot { op: &'static str, id: Uuid },
    /// `root.rotate` while keypairs live on the old root's token (`keypair create --on-token`):
    /// they cannot move to another root.
    #[error("{op}: {count} keypair(s) live on the token of root {id} (`--on-token`) and cannot move to another root: delete them first")]
    TokenKeys {
        op: &'static str,
        id: Uuid,
        count: usize,
    },
    /// `--drop-root` named the root this agent runs on, or twice the same root.
    #[error("{op}: --drop-root {id}: {problem}")]
    BadDrop {
        op: &'static str,
        id: Uuid,
        problem: &'static str,
    },
    /// `recovery.restore`: the keystore has no enrolled recovery root.
    #[error("{op}: this keystore has no enrolled recovery root (`keyward recovery create` was not run on it, or its recovery root was removed); nothing was changed")]
    NoRecoveryRoot { op: &'static str },
    /// `recovery.restore`: the words (or shares) give a recovery key that is not an enrolled
    /// recovery root.
    #[error("{op}: wrong recovery root: the recovery key {did} is not enrolled in this keystore (words or shares of another recovery secret); nothing was changed")]
    WrongRecoveryRoot { op: &'static str, did: String },
    /// `recovery.restore` on an agent that already runs on an enrolled root.
    #[error("{op}: the agent is unlocked on enrolled root {id}: restore runs on an agent started on a fresh token, locked; nothing was changed")]
    RunningOnEnrolled { op: &'static str, id: Uuid },
    /// `recovery.restore` while a KEK rotation is journaled (its new version is wrapped only
    /// under the roots enrolled when it began).
    #[error("{op}: KEK {kek} has a rotation in progress: finish it first (unlock an agent on an enrolled root); nothing was changed")]
    RotationPending { op: &'static str, kek: Uuid },
}

impl RootRefusal {
    fn code(&self) -> ErrorCode {
        match self {
            RootRefusal::OwnRoot { .. }
            | RootRefusal::LastRoot { .. }
            | RootRefusal::BadDrop { .. }
            | RootRefusal::SameRoot { .. }
            | RootRefusal::TokenKeys { .. } => ErrorCode::WrongKey,
            RootRefusal::Absent { .. } => ErrorCode::TokenUnavailable,
            RootRefusal::NoneOfScheme { .. } => ErrorCode::NotInitialized,
            RootRefusal::NoRecoveryRoot { .. } => ErrorCode::NotFound,
            RootRefusal::WrongRecoveryRoot { .. } => ErrorCode::WrongKey,
            RootRefusal::RunningOnEnrolled { .. } => ErrorCode::AlreadyInitialized,
            RootRefusal::RotationPending { .. } => ErrorCode::Busy,
        }
    }
}

/// Why a device operation (`devices.rs`) refused. Each names the operation.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DeviceRefusal {
    /// This agent's device filed a request that no enrolled device has approved yet.
    #[error("{op}: this device (request {id}) is not enrolled yet: run `keyward device request` here and `keyward device approve` on an enrolled device")]
    NotEnrolled { op: &'static str, id: Uuid },
    /// `device.request`/`device.reveal` on an agent that has no pending request of its own.
    #[error("{op}: this agent has no enrollment request of its own: run `keyward init` on a keystore that holds the identity (or `keyward unlock` after a restart)")]
    NoOwnRequest { op: &'static str },
    /// `device.approve`: no enrollment request is pending (or none with that id).
    #[error("{op}: no pending enrollment request{}", given.as_ref().map(|g| format!(" {g}")).unwrap_or_default())]
    NoRequest {
        op: &'static str,
        given: Option<String>,
    },
    /// `device.approve` without an id while several requests are pending.
    #[error("{op}: {count} enrollment requests are pending: name one with --id")]
    SeveralRequests { op: &'static str, count: usize },
    /// The code given is not the one both devices compute.
    #[error("{op}: wrong code for request {id}: compare the code the new device printed, character by character; nothing was enrolled")]
    WrongCode { op: &'static str, id: Uuid },
    /// The new device's revealed nonce does not match its commitment.
    #[error("{op}: request {id}: the revealed nonce does not match the commitment (a changed request): nothing was enrolled; file a new request")]
    BadReveal { op: &'static str, id: Uuid },
    /// An id that is not a UUID, or no device has it.
    #[error("{op}: no device {given}")]
    Unknown { op: &'static str, given: String },
    /// A device row whose signature does not verify, or whose signer is not an enrolled device.
    #[error("{op}: device row {id} does not verify ({what}): it was not written by an enrolled device; refusing it")]
    BadSignature {
        op: &'static str,
        id: Uuid,
        what: &'static str,
    },
    /// This agent's root has no device row (a keystore from before v11 with devices added by
    /// another agent).
    #[error("{op}: the root this agent runs on has no device row")]
    NoOwnDevice { op: &'static str },
    /// `device.revoke` of the device this agent is.
    #[error("{op}: device {id} is this agent: revoke it from another enrolled device")]
    OwnDevice { op: &'static str, id: Uuid },
}

impl DeviceRefusal {
    fn code(&self) -> ErrorCode {
        match self {
            DeviceRefusal::NotEnrolled { .. } | DeviceRefusal::NoOwnRequest { .. } => {
                ErrorCode::NotInitialized
            }
            DeviceRefusal::NoRequest { .. }
            | DeviceRefusal::Unknown { .. }
            | DeviceRefusal::NoOwnDevice { .. } => ErrorCode::NotFound,
            DeviceRefusal::SeveralRequests { .. } => ErrorCode::Ambiguous,
            DeviceRefusal::WrongCode { .. } | DeviceRefusal::BadReveal { .. } => {
                ErrorCode::VerifyFailed
            }
            DeviceRefusal::BadSignature { .. } => ErrorCode::KeystoreTampered,
            DeviceRefusal::OwnDevice { .. } => ErrorCode::WrongKey,
        }
    }
}

/// A cryptography library's error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Statement(#[from] StatementError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Authz(#[from] keyward_identity::AuthzError),
    #[error(transparent)]
    Envelope(#[from] keyward_envelope::Error),
    #[error(transparent)]
    RecoveryDerive(#[from] keyward_recovery::DeriveError),
    #[error("HMAC-SHA256 refused its key")]
    Hmac,
    #[error("aws-lc: {0}")]
    AwsLc(#[from] aws_lc_rs::error::Unspecified),
    #[error("aws-lc refused the key: {0}")]
    KeyRejected(#[from] aws_lc_rs::error::KeyRejected),
    #[error("ECDSA signature: {0}")]
    Ecdsa(#[from] keyward_identity::p256::ecdsa::Error),
    #[error("cached key: {0}")]
    CachedKey(#[from] crate::key_cache::KeyError),
}

impl AgentError {
    /// A damaged record.
    pub(crate) fn bad_record(kind: KeyKind, id: Uuid, defect: Defect) -> Self {
        AgentError::Internal(Internal::BadRecord { kind, id, defect })
    }

    /// A cryptography library's failure during `op`.
    pub(crate) fn crypto<E: Into<CryptoError>>(op: &'static str) -> impl FnOnce(E) -> Self {
        move |e| {
            AgentError::Internal(Internal::Crypto {
                op,
                source: e.into(),
            })
        }
    }

    pub(crate) fn invalid(arg: &'static str, problem: Problem) -> Self {
        AgentError::InvalidArgs { arg, problem }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            AgentError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            AgentError::NotInitialized => ErrorCode::NotInitialized,
            AgentError::AlreadyInitialized => ErrorCode::AlreadyInitialized,
            AgentError::Locked { .. } => ErrorCode::Locked,
            AgentError::Prompt(e) => e.code(),
            AgentError::PinIncorrect { .. } => ErrorCode::PinIncorrect,
            AgentError::PinBackoff { .. } => ErrorCode::PinBackoff,
            AgentError::PinLocked => ErrorCode::PinLocked,
            AgentError::NotFound(_) => ErrorCode::NotFound,
            AgentError::Ambiguous { .. } => ErrorCode::Ambiguous,
            AgentError::NotExportable { .. } => ErrorCode::NotExportable,
            AgentError::KeyInactive { .. } => ErrorCode::KeyInactive,
            AgentError::DecryptFailed(_) => ErrorCode::DecryptFailed,
            AgentError::VersionRetired { .. } => ErrorCode::VersionRetired,
            AgentError::InvalidArgs { .. } => ErrorCode::InvalidArgs,
            AgentError::TooLarge { .. } => ErrorCode::TooLarge,
            AgentError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            AgentError::WrongKey(_) => ErrorCode::WrongKey,
            AgentError::VerifyFailed(_) => ErrorCode::VerifyFailed,
            AgentError::Root(r) => r.code(),
            AgentError::KeystoreTampered(_) => ErrorCode::KeystoreTampered,
            AgentError::Keystore(k) => k.code(),
            AgentError::Migrate(m) => m.code(),
            AgentError::Internal(_) => ErrorCode::Internal,
            AgentError::PolicyDenied(_) => ErrorCode::PolicyDenied,
            AgentError::AgentKeyRevoked { .. } => ErrorCode::KeyInactive,
            AgentError::KeystoreChecking { .. } => ErrorCode::KeystoreChecking,
            AgentError::AuditUnavailable { .. } => ErrorCode::AuditUnavailable,
            AgentError::Roots(r) => r.code(),
            AgentError::Devices(d) => d.code(),
            AgentError::UsageDenied { .. } => ErrorCode::UsageDenied,
            AgentError::KeyExpired { .. } => ErrorCode::KeyExpired,
            AgentError::LimitsWidened { .. } => ErrorCode::LimitsWidened,
        }
    }

    pub fn to_body(&self) -> ErrorBody {
        let mut b = ErrorBody::new(self.code(), self.to_string());
        match self {
            AgentError::PinIncorrect {
                attempts_left,
                retry_after_ms,
            } => {
                b.attempts_left = Some(*attempts_left);
                b.retry_after_ms = *retry_after_ms;
            }
            AgentError::PinBackoff { retry_after_ms } => b.retry_after_ms = Some(*retry_after_ms),
            _ => {}
        }
        b
    }
}
