//! Every message type the code emits validates against `protocol.cddl`, and messages that break
//! the spec do not (so the check can fail).

use keyward_proto::ops::*;
use keyward_proto::secret::{Pin, SecretBytes};
use keyward_proto::{ErrorBody, ErrorCode, Request, Response};

const CDDL: &str = include_str!("../protocol.cddl");
const ID: &str = "6f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e";

fn validate(cbor: &[u8]) -> Result<(), String> {
    cddl::validate_cbor_from_slice(CDDL, cbor, None).map_err(|e| e.to_string())
}

fn req<A: serde::Serialize>(op: Op, args: &A) -> Vec<u8> {
    Request::new(1, op.name(), args).unwrap().to_cbor().unwrap()
}

fn key_info() -> KeyInfo {
    KeyInfo {
        id: ID.into(),
        kind: "dek".into(),
        label: Some("photos".into()),
        parent: Some(ID.into()),
        scheme: "aes-kwp".into(),
        purpose: Some(Purpose::Sharing),
        exportable: true,
        version: 1,
        created: 1_763_700_000,
        rotated: None,
        state: "active".into(),
        public_key: None,
        name: None,
        algorithm: None,
        ssh_mode: None,
        ssh: None,
        ssh_fingerprint: None,
        certificate: None,
        min_version: None,
        usage: None,
        confirm: false,
        not_after: None,
    }
}

#[test]
fn every_request_validates() {
    let pin = PinArgs {
        pin: Pin::new("123456"),
    };
    let gcm = GcmArgs {
        dek: ID.into(),
        iv: serde_bytes::ByteBuf::from(vec![1; 12]),
        aad: serde_bytes::ByteBuf::from(b"hdr".to_vec()),
        tag_len: 12,
        data: SecretBytes::new(b"pt".to_vec()),
    };
    let requests: Vec<(Op, Vec<u8>)> = vec![
        (Op::Hello, req(Op::Hello, &HelloArgs::current())),
        (
            Op::Hello,
            req(
                Op::Hello,
                &HelloArgs {
                    version: 1,
                    client: Some("test".into()),
                },
            ),
        ),
        (Op::Init, req(Op::Init, &pin)),
        (Op::Unlock, req(Op::Unlock, &pin)),
        (Op::Lock, req(Op::Lock, &Empty {})),
        (Op::KekCreate, req(Op::KekCreate, &KekCreateArgs::default())),
        (
            Op::KekCreate,
            req(
                Op::KekCreate,
                &KekCreateArgs {
                    label: Some("main".into()),
                },
            ),
        ),
        (Op::KekList, req(Op::KekList, &ListArgs::default())),
        (
            Op::KekList,
            req(
                Op::KekList,
                &ListArgs {
                    limit: Some(MAX_PAGE),
                    after: Some("01000000006920b3c01f6b1a2c3d4e4f5061728394a5b6c7d8".into()),
                },
            ),
        ),
        (Op::DekCreate, req(Op::DekCreate, &DekCreateArgs::default())),
        (
            Op::DekCreate,
            req(
                Op::DekCreate,
                &DekCreateArgs {
                    kek: Some(ID.into()),
                    purpose: Purpose::Sharing,
                    exportable: true,
                    label: Some("x".into()),
                    limits: Some(KeyLimitsSpec {
                        usage: Some(vec![Usage::Decrypt, Usage::Export]),
                        confirm: true,
                        not_after: Some("2030-01-01T00:00:00Z".into()),
                    }),
                },
            ),
        ),
        (Op::DekList, req(Op::DekList, &DekListArgs::default())),
        (
            Op::DekList,
            req(
                Op::DekList,
                &DekListArgs {
                    kek: Some(ID.into()),
                    limit: Some(1),
                    after: Some("cursor".into()),
                },
            ),
        ),
        (Op::DekExport, req(Op::DekExport, &IdArgs { id: ID.into() })),
        (
            Op::Encrypt,
            req(
                Op::Encrypt,
                &EncryptArgs {
                    dek: ID.into(),
                    plaintext: SecretBytes::new(b"hi".to_vec()),
                },
            ),
        ),
        (
            Op::Decrypt,
            req(
                Op::Decrypt,
                &DecryptArgs {
                    ciphertext: "Aes256Gcm.x.y".into(),
                    dek: None,
                },
            ),
        ),
        (
            Op::KeypairCreate,
            req(
                Op::KeypairCreate,
                &KeypairCreateArgs {
                    kek: Some(ID.into()),
                    label: Some("me".into()),
                    on_token: true,
                    alg: Some("ed25519".into()),
                    ssh: Some(SshMode::Confirm),
                    limits: Some(KeyLimitsSpec {
                        usage: Some(vec![Usage::Sign]),
                        confirm: false,
                        not_after: None,
                    }),
                },
            ),
        ),
        (Op::KeypairList, req(Op::KeypairList, &ListArgs::default())),
        (
            Op::KeypairList,
            req(
                Op::KeypairList,
                &ListArgs {
                    limit: Some(10),
                    after: None,
                },
            ),
        ),
        (
            Op::KeypairImport,
            req(
                Op::KeypairImport,
                &KeypairImportArgs {
                    pem: SecretBytes::new(b"-----BEGIN PRIVATE KEY-----".to_vec()),
                    kek: None,
                    label: Some("rsa".into()),
                },
            ),
        ),
        (
            Op::KeypairShow,
            req(Op::KeypairShow, &IdArgs { id: ID.into() }),
        ),
        (
            Op::KeypairDelete,
            req(Op::KeypairDelete, &IdArgs { id: ID.into() }),
        ),
        (
            Op::KeypairSsh,
            req(
                Op::KeypairSsh,
                &KeypairSshArgs {
                    id: ID.into(),
                    mode: SshMode::On,
                },
            ),
        ),
        (
            Op::KeypairCertSet,
            req(
                Op::KeypairCertSet,
                &KeypairCertSetArgs {
                    id: ID.into(),
                    cert: Some(serde_bytes::ByteBuf::from(vec![0x30, 0])),
                },
            ),
        ),
        (
            Op::Sign,
            req(
                Op::Sign,
                &SignArgs {
                    key: ID.into(),
                    data: serde_bytes::ByteBuf::from(b"m".to_vec()),
                    raw: true,
                },
            ),
        ),
        (
            Op::ShareSeal,
            req(
                Op::ShareSeal,
                &ShareSealArgs {
                    dek: ID.into(),
                    to: "did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169".into(),
                    from: None,
                },
            ),
        ),
        (
            Op::ShareOpen,
            req(
                Op::ShareOpen,
                &ShareOpenArgs {
                    sealed: "b64".into(),
                    kek: None,
                    from: Some("did:key:z".into()),
                    id: Some(ID.into()),
                },
            ),
        ),
        (
            Op::NodeDerive,
            req(
                Op::NodeDerive,
                &NodeDeriveArgs {
                    name: "web1".into(),
                    ttl_seconds: Some(30),
                    ..Default::default()
                },
            ),
        ),
        (
            Op::NodeRekey,
            req(
                Op::NodeRekey,
                &NodeRekeyArgs {
                    name: "web1".into(),
                    ttl_seconds: None,
                },
            ),
        ),
        (
            Op::NodeRootRotate,
            req(Op::NodeRootRotate, &NodeRootRotateArgs::default()),
        ),
        (
            Op::NodeRootRotate,
            req(
                Op::NodeRootRotate,
                &NodeRootRotateArgs { compromised: true },
            ),
        ),
        (
            Op::NodeRevoke,
            req(
                Op::NodeRevoke,
                &NodeRevokeArgs {
                    name: "web1".into(),
                    by: Some(ID.into()),
                },
            ),
        ),
        (Op::NodeList, req(Op::NodeList, &ListArgs::default())),
        (
            Op::NodeList,
            req(
                Op::NodeList,
                &ListArgs {
                    limit: None,
                    after: Some("cursor".into()),
                },
            ),
        ),
        (
            Op::NodeChain,
            req(
                Op::NodeChain,
                &NodeChainArgs {
                    root: Some(ID.into()),
                },
            ),
        ),
        (
            Op::Seal,
            req(
                Op::Seal,
                &SealArgs {
                    to: "did:key:z".into(),
                    sign_with: ID.into(),
                    plaintext: SecretBytes::new(b"x".to_vec()),
                },
            ),
        ),
        (
            Op::Open,
            req(
                Op::Open,
                &OpenArgs {
                    sealed: "b64".into(),
                    chain: Some(serde_bytes::ByteBuf::from(vec![0xa0])),
                    agents: Some(serde_bytes::ByteBuf::from(vec![0xd2])),
                },
            ),
        ),
        // The PKCS#11 module's operations.
        (Op::RootInfo, req(Op::RootInfo, &Empty {})),
        (Op::AuditInfo, req(Op::AuditInfo, &Empty {})),
        (
            Op::KeystoreMigrate,
            req(
                Op::KeystoreMigrate,
                &KeystoreMigrateArgs {
                    to: "/home/u/new/keystore.db".into(),
                },
            ),
        ),
        (Op::UnlockPrompt, req(Op::UnlockPrompt, &Empty {})),
        (
            Op::SignDigest,
            req(
                Op::SignDigest,
                &SignDigestArgs {
                    key: ID.into(),
                    digest: serde_bytes::ByteBuf::from(vec![9; 32]),
                },
            ),
        ),
        (
            Op::DatakeyCreate,
            req(Op::DatakeyCreate, &DatakeyCreateArgs { dek: ID.into() }),
        ),
        (
            Op::DatakeyOpen,
            req(
                Op::DatakeyOpen,
                &DatakeyOpenArgs {
                    dek: ID.into(),
                    version: 1,
                    wrapped: serde_bytes::ByteBuf::from(vec![7; 60]),
                },
            ),
        ),
        (Op::GcmSeal, req(Op::GcmSeal, &gcm)),
        (Op::GcmOpen, req(Op::GcmOpen, &gcm)),
        (
            Op::KeypairEcdh,
            req(
                Op::KeypairEcdh,
                &EcdhArgs {
                    key: ID.into(),
                    peer: serde_bytes::ByteBuf::from(vec![4; 65]),
                },
            ),
        ),
        (Op::Random, req(Op::Random, &RandomArgs { len: 32 })),
        (
            Op::KekRotation,
            req(Op::KekRotation, &IdArgs { id: ID.into() }),
        ),
        (
            Op::KekRotate,
            req(
                Op::KekRotate,
                &KekRotateArgs {
                    id: ID.into(),
                    drop_roots: vec![],
                },
            ),
        ),
        (
            Op::KekRotate,
            req(
                Op::KekRotate,
                &KekRotateArgs {
                    id: ID.into(),
                    drop_roots: vec![ID.into()],
                },
            ),
        ),
        (
            Op::RootAdd,
            req(
                Op::RootAdd,
                &RootAddArgs {
                    config: "[root]\nkind = \"soft\"\n".into(),
                    path: Some("/home/u/backup.toml".into()),
                    pin: Pin::new("123456"),
                    label: Some("backup".into()),
                },
            ),
        ),
        (Op::RootList, req(Op::RootList, &ListArgs::default())),
        (
            Op::DeviceRequest,
            req(
                Op::DeviceRequest,
                &DeviceRequestArgs {
                    label: Some("laptop".into()),
                },
            ),
        ),
        (Op::DeviceReveal, req(Op::DeviceReveal, &Empty {})),
        (
            Op::DeviceApprove,
            req(
                Op::DeviceApprove,
                &DeviceApproveArgs {
                    id: Some(ID.into()),
                    code: Some("7K3M-Q9ZD-1V0B".into()),
                },
            ),
        ),
        (
            Op::DeviceApprove,
            req(Op::DeviceApprove, &DeviceApproveArgs::default()),
        ),
        (Op::DeviceList, req(Op::DeviceList, &ListArgs::default())),
        (
            Op::DeviceRevoke,
            req(Op::DeviceRevoke, &IdArgs { id: ID.into() }),
        ),
        (
            Op::RootRotate,
            req(
                Op::RootRotate,
                &RootRotateArgs {
                    config: "[root]\nkind = \"soft\"\n".into(),
                    path: Some("/home/u/new.toml".into()),
                    pin: Pin::new("123456"),
                    label: Some("new".into()),
                    destroy_old: true,
                    compromised: true,
                },
            ),
        ),
        (Op::AgentsPolicy, req(Op::AgentsPolicy, &Empty {})),
        (
            Op::AgentsAdd,
            req(
                Op::AgentsAdd,
                &AgentsAddArgs {
                    key: "did:key:zDnae".into(),
                    caps: vec!["sign".into(), "decrypt".into()],
                    expires: Some(1_900_000_000),
                },
            ),
        ),
        (
            Op::AgentsRevoke,
            req(
                Op::AgentsRevoke,
                &AgentsRevokeArgs {
                    key: "did:key:zDnae".into(),
                },
            ),
        ),
        (
            Op::RootRemove,
            req(Op::RootRemove, &IdArgs { id: ID.into() }),
        ),
        (Op::DekShow, req(Op::DekShow, &IdArgs { id: ID.into() })),
        (Op::DekRotate, req(Op::DekRotate, &IdArgs { id: ID.into() })),
        (
            Op::DekMinVersion,
            req(
                Op::DekMinVersion,
                &DekMinVersionArgs {
                    id: ID.into(),
                    min_version: 2,
                },
            ),
        ),
        (
            Op::Rewrap,
            req(
                Op::Rewrap,
                &RewrapArgs {
                    ciphertext: "Aes256Gcm.a.b".into(),
                    dek: None,
                },
            ),
        ),
        (
            Op::Rewrap,
            req(
                Op::Rewrap,
                &RewrapArgs {
                    ciphertext: "Aes256Gcm.a.b".into(),
                    dek: Some(ID.into()),
                },
            ),
        ),
        (Op::KekRevoke, req(Op::KekRevoke, &IdArgs { id: ID.into() })),
        (Op::DekRevoke, req(Op::DekRevoke, &IdArgs { id: ID.into() })),
        (
            Op::KeypairRevoke,
            req(Op::KeypairRevoke, &IdArgs { id: ID.into() }),
        ),
        (
            Op::RecoveryHold,
            req(
                Op::RecoveryHold,
                &RecoveryHoldArgs {
                    share: serde_bytes::ByteBuf::from(vec![0xa1; 900]),
                },
            ),
        ),
        (
            Op::RecoveryRelease,
            req(
                Op::RecoveryRelease,
                &RecoveryReleaseArgs {
                    id: ID.into(),
                    to: "did:key:zDnae".into(),
                },
            ),
        ),
        (
            Op::RecoveryHeld,
            req(Op::RecoveryHeld, &ListArgs::default()),
        ),
        (
            Op::RecoveryDelete,
            req(Op::RecoveryDelete, &IdArgs { id: ID.into() }),
        ),
        (
            Op::RecoveryEnroll,
            req(
                Op::RecoveryEnroll,
                &RecoveryEnrollArgs {
                    public_key: serde_bytes::ByteBuf::from(vec![2; 33]),
                },
            ),
        ),
        (
            Op::RecoveryRestore,
            req(
                Op::RecoveryRestore,
                &RecoveryRestoreArgs {
                    secret: keyward_proto::secret::SecretBytes::new(vec![9; 32]),
                    pin: keyward_proto::secret::Pin::new("1234"),
                },
            ),
        ),
        (
            Op::KeyLimits,
            req(
                Op::KeyLimits,
                &KeyLimitsArgs {
                    id: ID.into(),
                    usage: Some(vec![Usage::Sign, Usage::Derive]),
                    confirm: Some(true),
                    not_after: Some("2030-01-01".into()),
                },
            ),
        ),
        (
            Op::KeyLimits,
            req(
                Op::KeyLimits,
                &KeyLimitsArgs {
                    id: ID.into(),
                    ..Default::default()
                },
            ),
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    for (op, cbor) in &requests {
        validate(cbor).unwrap_or_else(|e| panic!("{} request: {e}", op.name()));
        seen.insert(*op);
    }
    for op in Op::ALL {
        assert!(seen.contains(op), "no CDDL check for {}", op.name());
    }
}

#[test]
fn every_response_validates() {
    let results = vec![
        Response::ok(
            1,
            &HelloResult {
                protocol: 1,
                agent_version: "0.1.0".into(),
                root_kind: keyward_proto::ops::RootKind::Pkcs11,
                token: "keyward".into(),
                initialized: true,
                locked: false,
                ops: Op::ALL.iter().map(|o| o.name().to_string()).collect(),
                ssh_socket: Some("/run/user/1000/keyward/ssh.sock".into()),
                config: Some("/home/u/.config/keyward/keyward.toml".into()),
                keystore: Some("/home/u/.local/share/keyward/keystore.db".into()),
                pin_attempts_left: Some(10),
                keystore_check: Some(keyward_proto::ops::KeystoreCheck {
                    state: keyward_proto::ops::KeystoreCheckState::Failed,
                    ms: 12,
                    detail: Some("integrity_check: row 3 missing from index".into()),
                }),
                audit_log: Some("/home/u/.local/share/keyward/audit.log".into()),
            },
        ),
        Response::ok(
            1,
            &InitResult {
                id: ID.into(),
                token: "t".into(),
                joined: false,
            },
        ),
        Response::ok(
            1,
            &InitResult {
                id: ID.into(),
                token: "t".into(),
                joined: true,
            },
        ),
        Response::ok(1, &LockState { locked: true }),
        Response::ok(
            1,
            &DekRotated {
                id: ID.into(),
                version: 2,
            },
        ),
        Response::ok(
            1,
            &DekMinVersionResult {
                id: ID.into(),
                version: 3,
                min_version: 2,
                warning: Some("versions 1 to 1 no longer decrypt".into()),
            },
        ),
        Response::ok(
            1,
            &HeldShareInfo {
                id: ID.into(),
                recovery: "did:key:zDnae".into(),
                tag: "ab".repeat(32),
                index: 2,
                threshold: 2,
                trustees: vec!["did:key:zDna".into(), "did:key:zDnb".into()],
                keypair: ID.into(),
            },
        ),
        Response::ok(
            1,
            &ReleasedShareResult {
                id: ID.into(),
                index: 2,
                recovery: "did:key:zDnae".into(),
                released: serde_bytes::ByteBuf::from(vec![0xa1; 700]),
            },
        ),
        Response::ok(
            1,
            &EnrolledRecovery {
                id: ID.into(),
                recovery: "did:key:zDnae".into(),
                keks: 3,
            },
        ),
        Response::ok(
            1,
            &RestoredResult {
                root: ID.into(),
                keks: 3,
                absent_roots: vec![ID.into()],
            },
        ),
        Response::ok(
            1,
            &KekRotated {
                id: ID.into(),
                version: 2,
                rewrapped: 1000,
            },
        ),
        Response::ok(
            1,
            &KekRotationStatus {
                id: ID.into(),
                pending: true,
                done: 640,
                total: 1337,
            },
        ),
        Response::ok(
            1,
            &AgentPolicyResult {
                policy: serde_bytes::ByteBuf::from(vec![0xd2, 0x84]),
                root: "did:key:zDnae".into(),
                seq: 3,
            },
        ),
        Response::ok(
            1,
            &NodeRootRotated {
                id: ID.into(),
                old: ID.into(),
                compromised: false,
                redelegated: 2,
            },
        ),
        Response::ok(
            1,
            &RootRotated {
                id: ID.into(),
                old: ID.into(),
                enrolled: true,
                moved: 2,
                destroyed: Some("1 AES root object(s)".into()),
                not_destroyed: None,
                deks: vec![ID.into()],
                keks: vec![ID.into()],
            },
        ),
        Response::ok(
            1,
            &DeviceRequested {
                id: ID.into(),
                fingerprint: "0a1b:2c3d:4e5f:6071".into(),
            },
        ),
        Response::ok(
            1,
            &DeviceRevealed {
                id: ID.into(),
                answered: true,
                code: Some("7K3M-Q9ZD-1V0B".into()),
            },
        ),
        Response::ok(
            1,
            &DeviceRevealed {
                id: ID.into(),
                answered: false,
                code: None,
            },
        ),
        Response::ok(
            1,
            &DeviceApproved {
                id: ID.into(),
                state: "enrolled".into(),
                fingerprint: None,
                root: Some(ID.into()),
                wrapped: Some(3),
            },
        ),
        Response::ok(
            1,
            &DevicePage {
                devices: vec![DeviceEntry {
                    id: ID.into(),
                    state: "enrolled".into(),
                    fingerprint: "0a1b:2c3d:4e5f:6071".into(),
                    label: Some("laptop".into()),
                    token_serial: Some("a1b2c3d4e5f60718".into()),
                    key: Some("token".into()),
                    root: Some(ID.into()),
                    enrolled_by: Some(ID.into()),
                    created: 1_700_000_000,
                    current: true,
                }],
                next: Some(ID.into()),
            },
        ),
        Response::ok(
            1,
            &DeviceRevoked {
                id: ID.into(),
                keks: vec![ID.into()],
                deks_rotated: 3,
                shared_deks: 1,
            },
        ),
        Response::ok(
            1,
            &RootAdded {
                id: ID.into(),
                created: true,
                wrapped: 3,
            },
        ),
        Response::ok(
            1,
            &RootPage {
                roots: vec![
                    RootEntry {
                        id: ID.into(),
                        scheme: "pkcs11-aes".into(),
                        label: Some("backup".into()),
                        locator: Some("pkcs11:token=b;object=keyward-root".into()),
                        created: 1_700_000_000,
                        current: true,
                    },
                    RootEntry {
                        id: ID.into(),
                        scheme: "public-p256".into(),
                        label: None,
                        locator: None,
                        created: 1_700_000_001,
                        current: false,
                    },
                ],
                next: Some("01000000006920b3c01f6b1a2c3d4e4f5061728394a5b6c7d8".into()),
            },
        ),
        Response::ok(
            1,
            &Revoked {
                id: ID.into(),
                revoked: vec![ID.into(), ID.into()],
            },
        ),
        Response::ok(1, &{
            let mut k = key_info();
            k.version = 3;
            k.min_version = Some(2);
            k
        }),
        Response::ok(1, &{
            let mut k = key_info();
            k.usage = Some(vec![Usage::Encrypt, Usage::Decrypt]);
            k.confirm = true;
            k.not_after = Some(1_900_000_000);
            k
        }),
        Response::ok(1, &Created { id: ID.into() }),
        Response::ok(
            1,
            &KeyList {
                keys: vec![key_info(), {
                    let mut k = key_info();
                    k.kind = "kek".into();
                    k.purpose = None;
                    k.label = None;
                    k.rotated = Some(1_763_700_100);
                    k
                }],
                next: None,
            },
        ),
        Response::ok(
            1,
            &KeyList {
                keys: vec![key_info()],
                next: Some("01000000006920b3c01f6b1a2c3d4e4f5061728394a5b6c7d8".into()),
            },
        ),
        Response::ok(
            1,
            &ExportedKey {
                id: ID.into(),
                key: SecretBytes::new(vec![7; 32]),
            },
        ),
        Response::ok(
            1,
            &Ciphertext {
                ciphertext: "Aes256Gcm.a.b".into(),
            },
        ),
        Response::ok(
            1,
            &Plaintext {
                plaintext: SecretBytes::new(vec![]),
            },
        ),
        Response::ok(1, &{
            let mut k = key_info();
            k.kind = "keypair".into();
            k.purpose = None;
            k.public_key = Some(serde_bytes::ByteBuf::from(vec![2; 33]));
            k.name = Some("web1".into());
            k.algorithm = Some("p256".into());
            k.certificate = Some(serde_bytes::ByteBuf::from(vec![0x30, 0]));
            k
        }),
        // keypair.ssh / keypair.show of a keypair offered to SSH.
        Response::ok(1, &{
            let mut k = key_info();
            k.kind = "keypair".into();
            k.purpose = None;
            k.algorithm = Some("ed25519".into());
            k.ssh_mode = Some(SshMode::Confirm);
            k.ssh = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== laptop".into());
            k.ssh_fingerprint = Some("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".into());
            k
        }),
        Response::ok(
            1,
            &Deleted {
                id: ID.into(),
                deleted: true,
            },
        ),
        Response::ok(
            1,
            &SignatureResult {
                signature: serde_bytes::ByteBuf::from(vec![1; 64]),
            },
        ),
        Response::ok(
            1,
            &SealedResult {
                sealed: "b64".into(),
            },
        ),
        Response::ok(
            1,
            &OpenedShareResult {
                id: ID.into(),
                sender: "did:key:z".into(),
            },
        ),
        Response::ok(
            1,
            &ChainResult {
                chain: serde_bytes::ByteBuf::from(vec![0xa0]),
            },
        ),
        Response::ok(
            1,
            &OpenedMessage {
                plaintext: SecretBytes::new(b"hi".to_vec()),
                sender: "did:key:z".into(),
                sender_name: Some("web1".into()),
            },
        ),
        Response::ok(
            1,
            &DataKey {
                dek: ID.into(),
                version: 1,
                key: SecretBytes::new(vec![1; 32]),
                wrapped: serde_bytes::ByteBuf::from(vec![2; 60]),
            },
        ),
        Response::ok(
            1,
            &OpenedDataKey {
                key: SecretBytes::new(vec![1; 32]),
            },
        ),
        Response::ok(
            1,
            &KeystoreMigrated {
                to: "/home/u/new/keystore.db".into(),
                tables: vec![TableCount {
                    table: "keys".into(),
                    rows: 12,
                }],
                ms: 40,
            },
        ),
        Response::ok(
            1,
            &AuditInfoResult {
                path: Some("/home/u/.local/share/keyward/audit.log".into()),
                required: true,
                failing: false,
                public_key: Some(serde_bytes::ByteBuf::from(vec![2; 33])),
                head_seq: Some(41),
                head_hash: Some(serde_bytes::ByteBuf::from(vec![7; 32])),
                checked: true,
                previous_keys: vec![serde_bytes::ByteBuf::from(vec![3; 33])],
                key_device: Some("0b6f1c6e-6a43-4b2e-9d2f-3f1f6f3e2a10".into()),
            },
        ),
        // The PKCS#11 module's operations.
        Response::ok(
            1,
            &RootInfoResult {
                id: Some(ID.into()),
                initialized: true,
                locked: false,
                prompt: true,
            },
        ),
        Response::ok(
            1,
            &GcmResult {
                data: SecretBytes::new(vec![1; 20]),
            },
        ),
        Response::ok(
            1,
            &SharedSecret {
                secret: SecretBytes::new(vec![3; 32]),
            },
        ),
        Response::ok(
            1,
            &RandomBytes {
                bytes: serde_bytes::ByteBuf::from(vec![5; 8]),
            },
        ),
    ];
    for r in results {
        let r = r.unwrap();
        validate(&r.to_cbor().unwrap()).unwrap_or_else(|e| panic!("{r:?}: {e}"));
    }
    let codes = [
        ErrorCode::Malformed,
        ErrorCode::FrameTooLarge,
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidArgs,
        ErrorCode::TooLarge,
        ErrorCode::HelloRequired,
        ErrorCode::UnsupportedVersion,
        ErrorCode::PermissionDenied,
        ErrorCode::Busy,
        ErrorCode::Timeout,
        ErrorCode::NotInitialized,
        ErrorCode::AlreadyInitialized,
        ErrorCode::Locked,
        ErrorCode::PinIncorrect,
        ErrorCode::PinBackoff,
        ErrorCode::PinLocked,
        ErrorCode::NotFound,
        ErrorCode::Ambiguous,
        ErrorCode::NotExportable,
        ErrorCode::AlreadyExists,
        ErrorCode::WrongKey,
        ErrorCode::VerifyFailed,
        ErrorCode::KeyInactive,
        ErrorCode::DecryptFailed,
        ErrorCode::TokenError,
        ErrorCode::TokenUnavailable,
        ErrorCode::KeystoreError,
        ErrorCode::KeystoreTampered,
        ErrorCode::Internal,
        ErrorCode::Cancelled,
        ErrorCode::PromptUnavailable,
        ErrorCode::PolicyDenied,
        ErrorCode::AuditUnavailable,
        ErrorCode::UsageDenied,
        ErrorCode::KeyExpired,
        ErrorCode::LimitsWidened,
        ErrorCode::KeystoreUnavailable,
        ErrorCode::Conflict,
        ErrorCode::KeystoreChecking,
    ];
    for code in codes {
        let mut body = ErrorBody::new(code, "why");
        body.attempts_left = Some(3);
        body.retry_after_ms = Some(250);
        for id in [Some(9), None] {
            let r = Response::err(id, body.clone());
            validate(&r.to_cbor().unwrap()).unwrap_or_else(|e| panic!("{code}: {e}"));
        }
    }
}

#[test]
fn messages_that_break_the_spec_are_rejected() {
    use ciborium::Value;
    let enc = |v: Value| keyward_proto::message::to_cbor(&v).unwrap();
    let t = |s: &str| Value::Text(s.into());
    // An op the spec does not define.
    let bad_op = Value::Map(vec![
        (t("id"), Value::Integer(1.into())),
        (t("op"), t("format_disk")),
        (t("args"), Value::Map(vec![])),
    ]);
    assert!(validate(&enc(bad_op)).is_err());
    // An error code the spec does not define.
    let bad_code = Value::Map(vec![
        (t("id"), Value::Integer(1.into())),
        (
            t("err"),
            Value::Map(vec![(t("code"), t("oops")), (t("message"), t("m"))]),
        ),
    ]);
    assert!(validate(&enc(bad_code)).is_err());
    // An exported key of the wrong size.
    let r = Response::ok(
        1,
        &ExportedKey {
            id: ID.into(),
            key: SecretBytes::new(vec![1; 5]),
        },
    )
    .unwrap();
    assert!(validate(&r.to_cbor().unwrap()).is_err());
    // A page limit of 0 or above MAX_PAGE.
    for limit in [0, MAX_PAGE + 1] {
        let list = ListArgs {
            limit: Some(limit),
            after: None,
        };
        assert!(validate(&req(Op::KekList, &list)).is_err(), "limit {limit}");
    }
}
