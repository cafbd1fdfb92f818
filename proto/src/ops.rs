//! The operations: their names, argument types and result types.
//!
//! Argument structs refuse unknown fields, so a misspelt argument is an error rather than a
//! silently ignored option. Adding an optional field is a compatible change; removing or renaming
//! one needs a new protocol version.

use crate::secret::{Pin, SecretBytes};
use serde::{Deserialize, Serialize};

/// Every operation this protocol version defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    Hello,
    Init,
    Unlock,
    Lock,
    KekCreate,
    KekList,
    DekCreate,
    DekList,
    DekExport,
    Encrypt,
    Decrypt,
}

impl Op {
    pub const ALL: &'static [Op] = &[
        Op::Hello,
        Op::Init,
        Op::Unlock,
        Op::Lock,
        Op::KekCreate,
        Op::KekList,
        Op::DekCreate,
        Op::DekList,
        Op::DekExport,
        Op::Encrypt,
        Op::Decrypt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Init => "init",
            Op::Unlock => "unlock",
            Op::Lock => "lock",
            Op::KekCreate => "kek.create",
            Op::KekList => "kek.list",
            Op::DekCreate => "dek.create",
            Op::DekList => "dek.list",
            Op::DekExport => "dek.export",
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| op.name() == name)
    }
}

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

/// `hello` result: what this agent is and can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResult {
    pub protocol: u32,
    pub agent_version: String,
    /// `pkcs11`, `soft`, `yubikey`.
    pub root_kind: String,
    /// A description of the token or card (label, serial), or of the soft root.
    pub token: String,
    pub initialized: bool,
    pub locked: bool,
    pub ops: Vec<String>,
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
    /// The root's keystore id.
    pub id: String,
    pub token: String,
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
    /// Whether `dek.export` may ever hand this key out. Fixed at creation.
    #[serde(default)]
    pub exportable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// `dek.list` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DekListArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
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
}

/// `kek.list` and `dek.list` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
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
}
