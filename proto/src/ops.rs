//! The operations: their names, argument types and result types.
//!
//! Argument structs refuse unknown fields, so a misspelt argument is an error rather than a
//! silently ignored option. Adding an optional field is a compatible change; removing or renaming
//! one needs a new protocol version.

use crate::secret::{Pin, SecretBytes};
use serde::{Deserialize, Serialize};

pub use crate::table::ArgsVisitor;
pub use crate::table::{dispatch, op, Access, Handler, HandlerError, Op, Operation};

/// Arguments of operations that take none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `hello` arguments: the client's protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloArgs {
    pub version: u32,
    /// Free text naming the client, for the agent's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

impl HelloArgs {
    pub fn current() -> Self {
        HelloArgs {
            version: crate::PROTOCOL_VERSION,
            client: None,
        }
    }
}

/// Where an agent's root key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RootKind {
    /// A key on a PKCS#11 token (HSM, smartcard, SoftHSM).
    Pkcs11,
    /// A key derived from a passphrase (no hardware).
    Soft,
    /// A P-256 key in a YubiKey PIV slot, through PC/SC.
    #[serde(rename = "yubikey")]
    YubiKey,
}

impl RootKind {
    /// The wire and config name.
    pub fn as_str(self) -> &'static str {
        match self {
            RootKind::Pkcs11 => "pkcs11",
            RootKind::Soft => "soft",
            RootKind::YubiKey => "yubikey",
        }
    }
}

impl std::fmt::Display for RootKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for RootKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// `hello` result: what this agent is and can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResult {
    pub protocol: u32,
    pub agent_version: String,
    pub root_kind: RootKind,
    /// A description of the token or card (label, serial), or of the soft root.
    pub token: String,
    pub initialized: bool,
    pub locked: bool,
    pub ops: Vec<String>,
    /// The agent's SSH-agent socket, when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_socket: Option<String>,
    /// The agent's configuration file (for `keyward doctor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The agent's keystore (for `keyward doctor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystore: Option<String>,
    /// Wrong PINs left before the agent refuses PINs (as far as it has seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_attempts_left: Option<u32>,
    /// The agent's audit log (`[audit] path`), when it keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<String>,
    /// SQLite's full check of the keystore, which runs just after the socket is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystore_check: Option<KeystoreCheck>,
}

/// Where the keystore's start-up check (SQLite `integrity_check`) stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoreCheck {
    /// `checking`, `ok` or `failed`.
    pub state: KeystoreCheckState,
    /// How long the check took (or has run so far), in milliseconds.
    pub ms: u64,
    /// What SQLite found, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The state of [`KeystoreCheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeystoreCheckState {
    /// Still running: key operations are refused with `keystore_checking`.
    Checking,
    /// Passed.
    Ok,
    /// Failed: every key operation is refused with `keystore_error`.
    Failed,
}

/// Arguments of `init` and `unlock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinArgs {
    pub pin: Pin,
}

/// `init` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitResult {
    /// The root's keystore id (a device that joined an existing identity: its enrollment
    /// request's id).
    pub id: String,
    pub token: String,
    /// Set when `init` found the identity already in a shared keystore: this device's root
    /// object and device key were made and filed as enrollment request `id`; the next step is
    /// `keyward device request`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joined: bool,
}

/// `unlock` and `lock` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    pub locked: bool,
}

/// `kek.create` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekCreateArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// The result of every operation that creates a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub id: String,
}

/// What a DEK is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// The owner's own data.
    #[default]
    Personal,
    /// Data shared with someone else (each sharing space has its own keys).
    Sharing,
}

/// `dek.create` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DekCreateArgs {
    /// The KEK to wrap it under; may be left out when there is exactly one active KEK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
    #[serde(default)]
    pub purpose: Purpose,
    /// Whether `dek.export` may ever hand this key out. Fixed at creation (shorthand for
    /// `export` in `limits.usage`).
    #[serde(default)]
    pub exportable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Usage limits (README "Key usage limits"); absent: the kind's default usages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<KeyLimitsSpec>,
}

/// What a key may be used for (`--usage`). Which operations need which usage: README
/// "Key usage limits".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    Encrypt,
    Decrypt,
    Sign,
    Derive,
    Export,
    Share,
}

impl Usage {
    pub const ALL: [Usage; 6] = [
        Usage::Encrypt,
        Usage::Decrypt,
        Usage::Sign,
        Usage::Derive,
        Usage::Export,
        Usage::Share,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Encrypt => "encrypt",
            Usage::Decrypt => "decrypt",
            Usage::Sign => "sign",
            Usage::Derive => "derive",
            Usage::Export => "export",
            Usage::Share => "share",
        }
    }

    pub fn parse(s: &str) -> Option<Usage> {
        Usage::ALL.into_iter().find(|u| u.as_str() == s)
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Usage limits given when a DEK or keypair is created (`dek.create`, `keypair.create`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitsSpec {
    /// The usages allowed (absent: the kind's default set; `exportable` adds `export`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Vec<Usage>>,
    /// Every use is confirmed by the user first (pinentry CONFIRM; SSH: the door's confirm).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm: bool,
    /// RFC 3339 date-time after which the key is refused (`key_expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// `key.limits` arguments: narrow a DEK's or keypair's limits. Absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitsArgs {
    pub id: String,
    /// The new usage set: it must be a subset of the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Vec<Usage>>,
    /// `true` adds confirmation; `false` on a key that has it is widening (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<bool>,
    /// RFC 3339; no later than a date already set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// The most keys one page of a list may be asked for (`limit`).
pub const MAX_PAGE: u32 = 1000;

/// The most bytes of encoded [`KeyInfo`]s one page carries: the agent ends a page early (with a
/// `next` cursor) rather than pass it, so an answer stays under [`crate::MAX_FRAME`] whatever the
/// records hold. The rest of the frame (64 KiB) is for the envelope: the response's id, the
/// `keys` array head and the `next` cursor need well under 100 bytes.
pub const PAGE_BYTES: usize = crate::MAX_FRAME - 64 * 1024;

/// Paging arguments of `kek.list`, `keypair.list` and `node.list` (`dek.list` has the same two
/// fields beside `kek`). Both are optional: a request without `limit` gets a page filled up to
/// [`PAGE_BYTES`], which holds every key of any list that fit in one frame before lists paged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// At most this many keys (1 to [`MAX_PAGE`]); a page may hold fewer and still have a `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page (opaque); absent: the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// `dek.list` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DekListArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
    /// As [`ListArgs::limit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// As [`ListArgs::after`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// `keypair.cert.set` arguments: an X.509 certificate (DER) for a keypair, whose public key must
/// be the keypair's; no `cert` removes the one set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeypairCertSetArgs {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<serde_bytes::ByteBuf>,
}

/// Arguments naming one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdArgs {
    pub id: String,
}

/// One keystore record as a client sees it (never any key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    /// `root`, `kek`, `dek`, `keypair`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Purpose>,
    pub exportable: bool,
    pub version: u32,
    /// Unix seconds.
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated: Option<u64>,
    /// `active`, `retired`, `revoked`.
    pub state: String,
    /// Keypairs: the public key, SEC1 compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<serde_bytes::ByteBuf>,
    /// Node keys: the node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Keypairs: `p256`, `ed25519` or `rsa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Keypairs offered to SSH clients: `on` or `confirm` (absent: not offered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_mode: Option<SshMode>,
    /// P-256, Ed25519 and RSA keypairs: the public key as an `authorized_keys` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    /// P-256, Ed25519 and RSA keypairs: the SSH fingerprint, `SHA256:...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_fingerprint: Option<String>,
    /// Keypairs: the X.509 certificate set for the key (DER), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<serde_bytes::ByteBuf>,
    /// DEKs: the oldest version that still decrypts, once `dek.min_version` has set one
    /// (absent: 1). `version` is the newest, which new ciphertexts use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<u32>,
    /// DEKs and keypairs with stored usage limits: what the key may be used for. Absent: the
    /// kind's default set ([`KeyInfo::usage_or_default`]), as for every key made before limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Vec<Usage>>,
    /// Every use is confirmed by the user first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm: bool,
    /// Unix seconds after which the key is refused (`key_expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
}

impl KeyInfo {
    /// What the key may be used for: `usage` when the agent reported limits, else the kind's
    /// default (DEKs: encrypt, decrypt, derive, share, and export when exportable; keypairs:
    /// sign, decrypt, derive, share; other kinds: none). The agent's `limits::default_usage`
    /// is the same table.
    pub fn usage_or_default(&self) -> Vec<Usage> {
        if let Some(u) = &self.usage {
            return u.clone();
        }
        match self.kind.as_str() {
            "dek" => {
                let mut u = vec![Usage::Encrypt, Usage::Decrypt, Usage::Derive];
                if self.exportable {
                    u.push(Usage::Export);
                }
                u.push(Usage::Share);
                u
            }
            "keypair" => vec![Usage::Decrypt, Usage::Sign, Usage::Derive, Usage::Share],
            _ => Vec::new(),
        }
    }
}

/// Whether a keypair is offered on the SSH-agent socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SshMode {
    /// Offered, and signs without asking.
    On,
    /// Not offered.
    Off,
    /// Offered; each signature is confirmed by the user first.
    Confirm,
}

/// `keypair.ssh` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeypairSshArgs {
    pub id: String,
    pub mode: SshMode,
}

/// `kek.list`, `dek.list`, `keypair.list` and `node.list` result: one page, in the order keys
/// were created (then by id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
    /// The cursor for the next page (`after`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `dek.export` result: the plaintext DEK, for client-side encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedKey {
    pub id: String,
    pub key: SecretBytes,
}

/// `encrypt` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptArgs {
    pub dek: String,
    pub plaintext: SecretBytes,
}

/// `encrypt` result: a Cryppo `Aes256Gcm` string whose `ad` names the DEK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ciphertext {
    pub ciphertext: String,
}

/// `decrypt` arguments. `dek` is optional: the ciphertext names its DEK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecryptArgs {
    pub ciphertext: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dek: Option<String>,
}

/// `decrypt` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plaintext {
    pub plaintext: SecretBytes,
}

/// `datakey.create` arguments: a fresh data key under this DEK (which must be active).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatakeyCreateArgs {
    pub dek: String,
}

/// `datakey.create` result: a random 256-bit data key, in plaintext and wrapped under the DEK
/// (AES-256-GCM, `iv ‖ ciphertext ‖ tag`, AAD binding the DEK id and version), and the DEK id
/// and version that wrapped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKey {
    pub dek: String,
    pub version: u32,
    pub key: SecretBytes,
    pub wrapped: serde_bytes::ByteBuf,
}

/// `datakey.open` arguments: a data key `datakey.create` wrapped under `dek` at `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatakeyOpenArgs {
    pub dek: String,
    pub version: u32,
    pub wrapped: serde_bytes::ByteBuf,
}

/// `datakey.open` result: the data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedDataKey {
    pub key: SecretBytes,
}

/// `keypair.create` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeypairCreateArgs {
    /// The KEK that wraps the private half; may be left out when there is exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Keep the private key in the root's token as a non-extractable object (PKCS#11 roots).
    /// Such a key signs, but cannot open shares or sealed messages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_token: bool,
    /// `p256` (the default: signing, key agreement, sharing, node keys) or `ed25519` (signing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Offer the new keypair on the SSH-agent socket (`on` or `confirm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshMode>,
    /// Usage limits (README "Key usage limits"); absent: the kind's default usages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<KeyLimitsSpec>,
}

/// `keypair.import` arguments: an RSA private key (PKCS#1 or PKCS#8 PEM), for Cryppo
/// `Rsa4096` shares as Meeco's connections use them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeypairImportArgs {
    pub pem: SecretBytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// `keypair.delete` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub id: String,
    /// Always true: the key is gone from the keystore.
    pub deleted: bool,
}

/// `sign` arguments: ECDSA P-256 / SHA-256 over `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignArgs {
    pub key: String,
    pub data: serde_bytes::ByteBuf,
    /// Raw r‖s (64 bytes) instead of DER.
    #[serde(default)]
    pub raw: bool,
}

/// `sign` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureResult {
    pub signature: serde_bytes::ByteBuf,
}

/// `share.seal` arguments: seal a sharing DEK to a recipient's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareSealArgs {
    pub dek: String,
    /// The recipient: did:key, SPKI PEM or JWK.
    pub to: String,
    /// The sender keypair (authenticates the share); may be left out when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// `share.seal` and `seal` result: base64url text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedResult {
    pub sealed: String,
}

/// `share.open` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareOpenArgs {
    pub sealed: String,
    /// The KEK to import the DEK under; may be left out when there is exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
    /// Refuse shares from anyone but this sender (did:key, PEM or JWK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The DEK's id, for Cryppo `Rsa4096` shares (which carry none); default: a new id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `share.open` result: the imported DEK keeps the sender's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedShareResult {
    pub id: String,
    /// The sender's did:key.
    pub sender: String,
}

/// `node.derive` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDeriveArgs {
    pub name: String,
    /// The parent keypair that signs the delegation; default: the cluster root (made on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
    /// Validity of the delegation in seconds (default 365 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// `node.rekey` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRekeyArgs {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// `node.revoke` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRevokeArgs {
    pub name: String,
    /// The ancestor keypair that signs the revocation; default: the node's parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// `node.root_rotate` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRootRotateArgs {
    /// The old root is compromised: it revokes itself instead of vouching for the new root.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compromised: bool,
}

/// `node.root_rotate` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRootRotated {
    /// The new cluster root `/`.
    pub id: String,
    /// The old root: retired (it vouched for the new one), or revoked (`compromised`).
    pub old: String,
    pub compromised: bool,
    /// Direct children of the old root now delegated by the new one.
    pub redelegated: u64,
}

/// `node.chain` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeChainArgs {
    /// The keypair the chain is rooted at (default: the cluster root `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

/// `node.chain` result: the cluster's public chain (root key, delegations, revocations) as CBOR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainResult {
    pub chain: serde_bytes::ByteBuf,
}

/// `seal` arguments: encrypt to a node's public key, authenticated by our keypair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealArgs {
    pub to: String,
    pub sign_with: String,
    pub plaintext: SecretBytes,
}

/// `open` arguments: decrypt a sealed message addressed to one of our keypairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenArgs {
    pub sealed: String,
    /// A cluster chain (CBOR): refuse senders it does not vouch for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<serde_bytes::ByteBuf>,
    /// A peer's signed agent policy (COSE_Sign1, `agents.policy`): refuse senders it revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<serde_bytes::ByteBuf>,
}

/// `open` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedMessage {
    pub plaintext: SecretBytes,
    /// The sender's did:key.
    pub sender: String,
    /// The sender's node name, when a chain vouched for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
}

// ---- agent authorization (DKMS) ------------------------------------------------------------

/// `agents.add` arguments: list an agent key (did:key, P-256) with capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsAddArgs {
    pub key: String,
    /// Any of `sign`, `decrypt`, `recover`, `admin` (at least one).
    pub caps: Vec<String>,
    /// When the authorization ends (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// `agents.revoke` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsRevokeArgs {
    pub key: String,
}

/// The identity's signed agent authorization policy (COSE_Sign1 bytes) and its signer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPolicyResult {
    pub policy: serde_bytes::ByteBuf,
    /// The identity root's did:key (the cluster root `/`), which signs it.
    pub root: String,
    /// The policy's sequence number.
    pub seq: u64,
}

// ---- operations for the PKCS#11 module (pkcs11-shim) ----------------------------------------

/// Largest `random` request, in bytes.
pub const MAX_RANDOM: u32 = 64 * 1024;

/// `root.info` result: the root's keystore id (stable for the root's life) and the lock state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootInfoResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub initialized: bool,
    pub locked: bool,
    /// The agent asks for the PIN itself (`[prompt] pinentry`): `unlock.prompt` works, and the
    /// PKCS#11 module offers a protected authentication path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prompt: bool,
}

/// `sign.digest` arguments: ECDSA P-256 over a digest the caller computed (PKCS#11 `CKM_ECDSA`).
/// The digest is taken as ECDSA takes any hash: its leftmost 32 bytes, or left-padded with zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignDigestArgs {
    pub key: String,
    pub digest: serde_bytes::ByteBuf,
}

/// `gcm.seal` / `gcm.open` arguments: raw AES-256-GCM under a DEK with the caller's 12-byte IV,
/// AAD and tag length (4..=16 bytes). `data` is the plaintext (seal) or ciphertext ‖ tag (open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcmArgs {
    pub dek: String,
    pub iv: serde_bytes::ByteBuf,
    #[serde(default)]
    pub aad: serde_bytes::ByteBuf,
    pub tag_len: u8,
    pub data: SecretBytes,
}

/// `gcm.seal` / `gcm.open` result: ciphertext ‖ tag (seal) or the plaintext (open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcmResult {
    pub data: SecretBytes,
}

/// `keypair.ecdh` arguments: ECDH (P-256, no KDF) of a keypair with a peer's SEC1 point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcdhArgs {
    pub key: String,
    pub peer: serde_bytes::ByteBuf,
}

/// `keypair.ecdh` result: the shared x-coordinate (32 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedSecret {
    pub secret: SecretBytes,
}

/// `random` arguments: how many bytes (at most [`MAX_RANDOM`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomArgs {
    pub len: u32,
}

/// `random` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomBytes {
    pub bytes: serde_bytes::ByteBuf,
}

// ---- key life cycle ---------------------------------------------------------------------------

/// `dek.rotate` result: the DEK's new (newest) version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DekRotated {
    pub id: String,
    pub version: u32,
}

/// `dek.min_version` arguments: refuse decryption below `min_version` (1 to the newest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DekMinVersionArgs {
    pub id: String,
    pub min_version: u32,
}

/// `dek.min_version` result. `warning` is set when versions that decrypted before this call
/// no longer do (ciphertexts under them may still exist and need `rewrap` first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DekMinVersionResult {
    pub id: String,
    pub version: u32,
    pub min_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `rewrap` arguments: a Cryppo ciphertext to re-encrypt under the newest version of its DEK.
/// `dek` as in `decrypt`, for ciphertexts that name none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewrapArgs {
    pub ciphertext: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dek: Option<String>,
}

/// `kek.revoke`, `dek.revoke`, `keypair.revoke` result: every key revoked (the one named
/// first; a KEK's children after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub id: String,
    pub revoked: Vec<String>,
}

/// `kek.rotate` result: the KEK's new version and how many wrapped secrets (DEK versions,
/// keypairs, secrets) were moved under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekRotated {
    pub id: String,
    pub version: u32,
    pub rewrapped: u64,
}

/// `kek.rotation` result: how far a KEK rotation has come, from its journal in the keystore (so
/// it also shows a rotation a crash left for the next unlock to finish). `done` counts the
/// wrapped secrets already rewrapped, `total` the secrets under the KEK; both 0 when
/// `pending` is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekRotationStatus {
    pub id: String,
    pub pending: bool,
    pub done: u64,
    pub total: u64,
}

// ---- the audit log ---------------------------------------------------------------------------

/// `audit.info` result: where the agent's audit log is, and what a verifier must take from the
/// agent's keystore rather than from the log: the audit key's public half and the chain head.
/// `checked` says whether the agent verified those keystore rows' MAC just now (only possible
/// while unlocked); a verifier should not trust unchecked values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditInfoResult {
    /// The live log file (rotated files beside it: `PATH.1`, `PATH.2`, …); none: no audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Key operations are refused while the log cannot be written.
    pub required: bool,
    /// The log cannot be written right now.
    pub failing: bool,
    /// The audit key's public half (SEC1), once the agent made it (at the first checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<serde_bytes::ByteBuf>,
    /// The newest entry the keystore recorded: its sequence number and hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<serde_bytes::ByteBuf>,
    /// The MACs of the key and head rows verified under the keystore integrity key just now.
    pub checked: bool,
    /// The audit keys used before each replacement of the keystore integrity key (`root rotate
    /// --compromised`), oldest first (SEC1): checkpoints signed before a replacement verify with
    /// the key of their time. Covered by `checked` when present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<serde_bytes::ByteBuf>,
    /// The device whose device key `public_key` is (from its device row, signed back to the
    /// first device); none: the key derived from the keystore MAC key (an agent on no
    /// device's root, or a keystore without devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_device: Option<String>,
}

/// `kek.rotate` arguments: the KEK, and enrolled roots to remove first (`--drop-root`: absent
/// roots that would need their secret to receive the new version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekRotateArgs {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_roots: Vec<String>,
}

/// `root.add` arguments: the text of a keywardd configuration file whose `[root]` describes the
/// root to enroll (read by the client, so the agent needs no access to the file), and that
/// token's PIN (or the soft root's passphrase).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootAddArgs {
    pub config: String,
    /// The file's absolute path: relative paths in it are resolved against its directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub pin: Pin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// `root.add` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootAdded {
    pub id: String,
    /// Whether the root object was made on its token now (else one was there already).
    pub created: bool,
    /// KEKs (the keystore integrity KEK included) wrapped under it.
    pub wrapped: u64,
}

/// `root.rotate` arguments: as `root.add`'s (the new root's configuration text and PIN), and
/// what to do besides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootRotateArgs {
    pub config: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub pin: Pin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// After the rotation committed, destroy the old root object on its token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub destroy_old: bool,
    /// The old root is compromised: list every DEK it could reach, and rotate every KEK (at
    /// the next unlock, on the new root).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compromised: bool,
}

/// `root.rotate` result. The agent is locked afterwards: restart it with the new root's
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotated {
    /// The new root.
    pub id: String,
    /// The old root (no longer enrolled).
    pub old: String,
    /// The new root was enrolled now (else it was already: an interrupted rotation).
    pub enrolled: bool,
    /// KEKs (the keystore integrity KEK included) now under the new root.
    pub moved: u64,
    /// `destroy_old`: what was destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed: Option<String>,
    /// `destroy_old`: why the old root object was left (a card, a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_destroyed: Option<String>,
    /// `compromised`: every DEK whose data must be re-encrypted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deks: Vec<String>,
    /// `compromised`: the KEKs the agent rotates at its next unlock on the new root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keks: Vec<String>,
}

/// One enrolled root (`root.list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootEntry {
    pub id: String,
    /// `pkcs11-aes`, `pkcs11-ec-p256`, `yubikey-p256`, `pbkdf2`, `public-p256`.
    pub scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Where the root lives (a PKCS#11 URI, `yubikey:...`, `public:recovery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locator: Option<String>,
    /// Unix seconds.
    pub created: u64,
    /// The root this agent runs on.
    pub current: bool,
}

/// `root.list` result (`RootPage`): one page, in enrollment order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPage {
    pub roots: Vec<RootEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

// ---- recovery (issue 14, parts 5 and 6; README "Recovery") -----------------------------------

/// `recovery.hold` arguments: a recovery share sealed to one of this agent's P-256 keypairs
/// (the CBOR file `keyward recovery create -o DIR` wrote for this trustee).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryHoldArgs {
    pub share: serde_bytes::ByteBuf,
}

/// What a trustee's agent knows of a share it holds (all of it signed by the recovery key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldShareInfo {
    /// The held share's keystore id (`recovery.release` takes it).
    pub id: String,
    /// The owner's recovery public key, as a did:key.
    pub recovery: String,
    /// Which secret the share belongs to (hex).
    pub tag: String,
    /// This share's index (1 to N).
    pub index: u8,
    /// Shares needed to recover (K).
    pub threshold: u8,
    /// Every trustee of the split, in share order.
    pub trustees: Vec<String>,
    /// The keypair of this agent the share is sealed to.
    pub keypair: String,
}

/// `recovery.release` arguments: seal held share `id` to the owner's one-time request key
/// (`to`, a did:key the trustee checked out of band).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryReleaseArgs {
    pub id: String,
    pub to: String,
}

/// `recovery.release` result: the released share (CBOR) for the owner's `recovery restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedShareResult {
    pub id: String,
    pub index: u8,
    pub recovery: String,
    pub released: serde_bytes::ByteBuf,
}

/// `recovery.enroll` arguments: the recovery public key (SEC1) to wrap every KEK to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryEnrollArgs {
    pub public_key: serde_bytes::ByteBuf,
}

/// `recovery.enroll` result: the enrolled recovery root and how many KEKs were wrapped to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledRecovery {
    /// The recovery root's keystore id.
    pub id: String,
    /// The recovery public key, as a did:key.
    pub recovery: String,
    pub keks: u64,
}

/// `recovery.restore` arguments: the recovery secret (from the words or the combined shares,
/// checked by the client) and the PIN of the fresh token the new root is made on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryRestoreArgs {
    pub secret: SecretBytes,
    pub pin: Pin,
}

/// `recovery.restore` result: the new root, the KEKs rewrapped under it, and the enrolled roots
/// that are not present (for `root remove`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredResult {
    pub root: String,
    pub keks: u64,
    #[serde(default)]
    pub absent_roots: Vec<String>,
}

/// `keystore.migrate` arguments: the new, empty keystore to copy into (an absolute SQLite file
/// path; it must not exist or be empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoreMigrateArgs {
    pub to: String,
}

/// One table of a `keystore.migrate`: the rows copied and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    pub table: String,
    pub rows: u64,
}

/// `keystore.migrate` result: the destination, the rows copied and checked per table, and how
/// long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeystoreMigrated {
    pub to: String,
    pub tables: Vec<TableCount>,
    pub ms: u64,
}

// ---- devices (issue 17 item 2; README "Devices") ---------------------------------------------

/// `device.request` arguments (on the new device).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequestArgs {
    /// A name for people (default: the root's description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// `device.request` result: the request filed with its commitment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRequested {
    pub id: String,
    /// The device key's fingerprint (first 8 bytes of its SHA-256, hex).
    pub fingerprint: String,
}

/// `device.reveal` result: `code` once an enrolled device has answered (the nonce is then
/// revealed); absent while waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRevealed {
    pub id: String,
    /// Whether an enrolled device has answered (then `code` is set).
    pub answered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `device.approve` arguments (on an enrolled, unlocked device).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceApproveArgs {
    /// The request (default: the only one pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The code the new device printed (absent: answer the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `device.approve` result. `state`: `answered` (this device's nonce is filed: the new device
/// now prints the code), `waiting` (answered, no reveal or no code yet), `enrolled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceApproved {
    pub id: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Enrolled: the device's root (a `public-p256` root, locator `public:device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Enrolled: KEKs (the integrity KEK included) wrapped to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped: Option<u64>,
}

/// One device (`device.list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub id: String,
    /// `enrolled` or `request`.
    pub state: String,
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_serial: Option<String>,
    /// Where the device key is: `token` (generated on the device's PKCS#11 token, never out of
    /// it) or `root` (a scalar wrapped under the device's root). Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_by: Option<String>,
    /// Unix seconds.
    pub created: u64,
    /// This agent is this device.
    pub current: bool,
}

/// `device.list` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePage {
    pub devices: Vec<DeviceEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `device.revoke` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRevoked {
    pub id: String,
    /// KEKs rotated (the device could open them all).
    pub keks: Vec<String>,
    /// DEKs given a new version (every active DEK the device could read, sharing DEKs
    /// excepted): new data is encrypted under versions it never saw; data written before is
    /// re-encrypted with `keyward rewrap`. A count, not a list: the answer does not grow with
    /// the keystore (`keyward dek list` pages them).
    pub deks_rotated: u64,
    /// Active sharing DEKs it could read: not rotated (their recipients hold version 1), so
    /// what they protect is re-shared under a new DEK.
    pub shared_deks: u64,
}
