//! Writes the seed corpora `fuzz/seeds/<target>/` from the project's test vectors and from
//! messages built with the real APIs. Run from `fuzz/`: `cargo run --example make_seeds`.
//! The output is committed; re-run it when a format changes (it replaces the directories).

use keyward_identity::delegation::Statement;
use keyward_identity::ed25519::Ed25519Key;
use keyward_identity::rand_core::OsRng;
use keyward_identity::{
    issue_delegation, issue_rekey, issue_revocation, Chain, Dek, LocalKey, SealedMessage,
    SealedShare,
};
use keyward_proto::ops::*;
use keyward_proto::secret::{Pin, SecretBytes};
use keyward_proto::{frame, ErrorBody, ErrorCode, Request, Response, MAX_FRAME};
use std::path::{Path, PathBuf};

const ID: &str = "6f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e";

struct Seeds {
    dir: PathBuf,
    n: usize,
}

impl Seeds {
    fn new(root: &Path, target: &str) -> Self {
        let dir = root.join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Seeds { dir, n: 0 }
    }
    fn add(&mut self, name: &str, bytes: impl AsRef<[u8]>) {
        self.n += 1;
        let file = self.dir.join(format!("{:03}-{name}", self.n));
        std::fs::write(file, bytes.as_ref()).unwrap();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join(path)).unwrap()).unwrap()
}

fn requests() -> Vec<(&'static str, Vec<u8>)> {
    fn req<A: serde::Serialize>(op: Op, args: &A) -> (&'static str, Vec<u8>) {
        (
            op.name(),
            Request::new(7, op.name(), args).unwrap().to_cbor().unwrap(),
        )
    }
    let pin = PinArgs {
        pin: Pin::new("SECRET-123456"),
    };
    let mut v = vec![
        req(Op::Hello, &HelloArgs::current()),
        req(
            Op::Hello,
            &HelloArgs {
                version: 1,
                client: Some("keyward-cli".into()),
            },
        ),
        req(Op::Init, &pin),
        req(Op::Unlock, &pin),
        req(Op::Lock, &Empty {}),
        req(
            Op::KekCreate,
            &KekCreateArgs {
                label: Some("SECRET-label".into()),
            },
        ),
        req(Op::KekList, &Empty {}),
        req(
            Op::DekCreate,
            &DekCreateArgs {
                kek: Some(ID.into()),
                purpose: Purpose::Sharing,
                exportable: true,
                label: Some("x".into()),
                limits: None,
            },
        ),
        req(Op::DekList, &DekListArgs::default()),
        req(Op::DekExport, &IdArgs { id: ID.into() }),
        req(
            Op::Encrypt,
            &EncryptArgs {
                dek: ID.into(),
                plaintext: SecretBytes::new(b"SECRET plaintext".to_vec()),
            },
        ),
        req(
            Op::Decrypt,
            &DecryptArgs {
                ciphertext: "Aes256Gcm.x.y".into(),
                dek: Some(ID.into()),
            },
        ),
        req(
            Op::KeypairCreate,
            &KeypairCreateArgs {
                kek: Some(ID.into()),
                label: Some("me".into()),
                on_token: true,
                alg: Some("ed25519".into()),
                ssh: None,
                limits: None,
            },
        ),
        req(Op::KeypairList, &Empty {}),
        req(
            Op::KeypairImport,
            &KeypairImportArgs {
                pem: SecretBytes::new(b"-----BEGIN PRIVATE KEY-----".to_vec()),
                kek: None,
                label: Some("rsa".into()),
            },
        ),
        req(Op::KeypairShow, &IdArgs { id: ID.into() }),
        req(Op::KeypairDelete, &IdArgs { id: ID.into() }),
        req(
            Op::Sign,
            &SignArgs {
                key: ID.into(),
                data: serde_bytes::ByteBuf::from(b"m".to_vec()),
                raw: true,
            },
        ),
        req(
            Op::ShareSeal,
            &ShareSealArgs {
                dek: ID.into(),
                to: "did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169".into(),
                from: None,
            },
        ),
        req(
            Op::ShareOpen,
            &ShareOpenArgs {
                sealed: "b64".into(),
                kek: None,
                from: Some("did:key:z".into()),
                id: Some(ID.into()),
            },
        ),
        req(
            Op::NodeDerive,
            &NodeDeriveArgs {
                name: "web1".into(),
                parent: Some(ID.into()),
                kek: None,
                ttl_seconds: Some(30),
            },
        ),
        req(
            Op::NodeRekey,
            &NodeRekeyArgs {
                name: "web1".into(),
                ttl_seconds: None,
            },
        ),
        req(
            Op::NodeRevoke,
            &NodeRevokeArgs {
                name: "web1".into(),
                by: Some(ID.into()),
            },
        ),
        req(Op::NodeList, &Empty {}),
        req(
            Op::NodeChain,
            &NodeChainArgs {
                root: Some(ID.into()),
            },
        ),
        req(
            Op::Seal,
            &SealArgs {
                to: "did:key:z".into(),
                sign_with: ID.into(),
                plaintext: SecretBytes::new(b"x".to_vec()),
            },
        ),
        req(
            Op::Open,
            &OpenArgs {
                sealed: "b64".into(),
                chain: Some(serde_bytes::ByteBuf::from(vec![0xa0])),
                agents: None,
            },
        ),
    ];
    // Wrong shapes the agent must answer: values of the wrong type (a PIN as a number, a
    // SECRET-marked text where an enum or bytes go), unknown fields, no args, bad ids.
    use ciborium::Value as V;
    let t = |s: &str| V::Text(s.into());
    let m = |e: Vec<(V, V)>| V::Map(e);
    let raw = |id: V, op: &str, args: V| {
        keyward_proto::message::to_cbor(&m(vec![
            (t("id"), id),
            (t("op"), t(op)),
            (t("args"), args),
        ]))
        .unwrap()
    };
    let one = V::Integer(1.into());
    v.push((
        "pin-as-int",
        raw(
            one.clone(),
            "unlock",
            m(vec![(t("pin"), V::Integer(1234567.into()))]),
        ),
    ));
    v.push((
        "pin-misspelt",
        raw(one.clone(), "unlock", m(vec![(t("pinn"), t("SECRET-pin"))])),
    ));
    v.push((
        "purpose-secret",
        raw(
            one.clone(),
            "dek.create",
            m(vec![(t("purpose"), t("SECRET-purpose"))]),
        ),
    ));
    v.push((
        "plaintext-text",
        raw(
            one.clone(),
            "encrypt",
            m(vec![(t("dek"), t(ID)), (t("plaintext"), t("SECRET-text"))]),
        ),
    ));
    v.push((
        "version-text",
        raw(one.clone(), "hello", m(vec![(t("version"), t("SECRET-1"))])),
    ));
    v.push((
        "unknown-op",
        raw(
            one.clone(),
            "frobnicate",
            m(vec![(t("id"), t("SECRET-id"))]),
        ),
    ));
    v.push(("neg-id", raw(V::Integer((-1).into()), "hello", m(vec![]))));
    v.push((
        "args-array",
        raw(one.clone(), "lock", V::Array(vec![one.clone()])),
    ));
    v.push((
        "no-args",
        keyward_proto::message::to_cbor(&m(vec![(t("id"), one.clone()), (t("op"), t("lock"))]))
            .unwrap(),
    ));
    v
}

fn responses() -> Vec<Vec<u8>> {
    let mut v = vec![
        Response::ok(7, &LockState { locked: false })
            .unwrap()
            .to_cbor()
            .unwrap(),
        Response::ok(7, &Created { id: ID.into() })
            .unwrap()
            .to_cbor()
            .unwrap(),
        Response::err(None, ErrorBody::new(ErrorCode::FrameTooLarge, "big"))
            .to_cbor()
            .unwrap(),
    ];
    let mut e = ErrorBody::new(ErrorCode::PinIncorrect, "wrong PIN");
    e.attempts_left = Some(2);
    e.retry_after_ms = Some(1500);
    v.push(Response::err(Some(3), e).to_cbor().unwrap());
    v
}

fn framed(bodies: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bodies {
        frame::write_blocking(&mut out, b, MAX_FRAME).unwrap();
    }
    out
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let reqs = requests();

    // request: one frame body each.
    let mut s = Seeds::new(&root, "request");
    for (name, body) in &reqs {
        s.add(name, body);
    }

    // frame: control byte + stream.
    let mut s = Seeds::new(&root, "frame");
    let resps = responses();
    for (i, (name, body)) in reqs.iter().enumerate().step_by(3) {
        let ctl = [0x00u8, 0x01, 0x13, 0x07][i % 4];
        let mut data = vec![ctl];
        data.extend(framed(&[body]));
        s.add(name, data);
    }
    for (i, r) in resps.iter().enumerate() {
        let mut data = vec![0x40 ^ (i as u8)];
        data.extend(framed(&[r]));
        s.add("response", data);
    }
    let mut pipelined = vec![0x05u8];
    pipelined.extend(framed(&[&reqs[0].1, &reqs[2].1, &reqs[4].1]));
    s.add("pipelined", pipelined);
    let mut big = vec![0x20u8];
    big.extend(framed(&[&reqs[0].1, &[0u8; 80][..]]));
    s.add("too-large-for-small-limit", big);
    s.add("oversized-header", [0x00u8, 0x00, 0x20, 0x00, 0x00, 0xa0]);
    s.add("truncated", [0x02u8, 0x00, 0x00, 0x00, 0x09, 0xa0]);
    s.add("empty-frame", [0x00u8, 0x00, 0x00, 0x00, 0x00]);

    // cryppo: a sample of the compat vectors of every strategy and format, and hand-made ones.
    let mut s = Seeds::new(&root, "cryppo");
    let compat = json("envelope/tests/vectors/cryppo/compat.json");
    let mut seen = std::collections::HashMap::new();
    for (group, cases) in compat.as_object().unwrap() {
        for c in cases.as_array().unwrap() {
            let text = c["serialized"].as_str().or(c["signature"].as_str());
            let Some(text) = text else { continue };
            let kind = format!(
                "{group}-{}-{}",
                c["encryption_strategy"].as_str().unwrap_or("sign"),
                c["format"].as_str().unwrap_or("latest")
            );
            let n = seen.entry(kind.clone()).or_insert(0);
            *n += 1;
            // Keep the short ones: RSA strings are kilobytes of uniform base64.
            if *n <= 3 && text.len() < 4096 {
                s.add(&kind, text);
            }
        }
    }
    for text in [
        "Rsa4096.AAAA.QQUAAAAA",
        "Pbkdf2Hmac.SzAAAAAQaQA-TgAABWl2ABQAAAAAfpc0yPy0psETSKUSYE8pw53TTyMQbAAgAAAAAA==",
        "Sign.Rsa4096.AAAA.AAAA",
        "Aes256Gcm.a.b.c",
    ] {
        s.add("hand", text);
    }

    // key_formats: did:key vectors and their JWKs, PEM/DER/JWK of test keys, Ed25519 forms.
    let mut s = Seeds::new(&root, "key_formats");
    let dk = json("identity/tests/vectors/did-key-p256.json");
    for e in dk["p256"].as_array().unwrap() {
        s.add("did", e["did"].as_str().unwrap());
        s.add("jwk", e["publicKeyJwk"].to_string());
    }
    if let Some(p384) = dk["p384_did"].as_str() {
        s.add("did-p384", p384);
    }
    let cose = json("identity/tests/vectors/cose-es256.json");
    s.add("jwk-cose", cose["key"].to_string());
    let k = LocalKey::from_bytes(&[0x22; 32]).unwrap().public_key();
    s.add("pem", k.to_spki_pem().unwrap());
    s.add("der", k.to_spki_der().unwrap());
    s.add("sec1", k.to_sec1_compressed());
    s.add("jwk-with-d", r#"{"kty":"EC","crv":"P-256","x":"igrFmi0whuihKnj9R3Om1SoMph72wUGeFaBbzG2vzns","y":"efsX5b10x8yjyrj4ny3pGfLcY7Xby1KzgqOdqnsrJIM","d":"AAAA"}"#);
    let ed = Ed25519Key::from_bytes(&[0x33; 32]).public_key();
    s.add("ed25519-did", ed.to_did_key());
    s.add("ed25519-jwk", ed.to_jwk_string());
    s.add("ed25519-pem", ed.to_spki_pem().unwrap());

    // hpke_share: shares and a message from key 0x11 to key 0x22 (the target's recipient).
    let mut s = Seeds::new(&root, "hpke_share");
    let sender = LocalKey::from_bytes(&[0x11; 32]).unwrap();
    let me = LocalKey::from_bytes(&[0x22; 32]).unwrap();
    let other = LocalKey::from_bytes(&[0x44; 32]).unwrap();
    let dek = Dek::from_bytes([9; 32]);
    let id = uuid::Uuid::parse_str(ID).unwrap();
    let share =
        SealedShare::seal(&sender, &me.public_key(), &dek, id, "photos", &mut OsRng).unwrap();
    s.add("share-cbor", share.to_cbor());
    s.add("share-b64", share.to_base64url());
    let share2 = SealedShare::seal(&sender, &other.public_key(), &dek, id, "", &mut OsRng).unwrap();
    s.add("share-other-recipient", share2.to_cbor());
    let msg = SealedMessage::seal(&sender, &me.public_key(), b"hello", &mut OsRng).unwrap();
    s.add("message-b64", msg.to_base64url());

    // recovery_share: a 2-of-3 split whose first trustee is key 0x33 (the target's trustee), a
    // share for another trustee, the stored form, a share released to request key 0x44 (the
    // target's request key), a request key file and two phrases.
    let mut s = Seeds::new(&root, "recovery_share");
    let secret = keyward_recovery::RecoverySecret::from_bytes([0x5a; 32]);
    let trustee = LocalKey::from_bytes(&[0x33; 32]).unwrap();
    let trustees = [
        trustee.public_key(),
        LocalKey::from_bytes(&[0x34; 32]).unwrap().public_key(),
        LocalKey::from_bytes(&[0x35; 32]).unwrap().public_key(),
    ];
    let set = keyward_recovery::ShareSet::split(&secret, &trustees, 2, &mut OsRng).unwrap();
    s.add("trustee-share", set.shares()[0].to_cbor());
    s.add("other-trustee-share", set.shares()[1].to_cbor());
    let held = set.shares()[0].open(&trustee).unwrap();
    s.add("held-share", &*held.to_bytes());
    let req =
        keyward_recovery::RequestKey::from_local_key(LocalKey::from_bytes(&[0x44; 32]).unwrap());
    let released = held.release(&trustee, &req.did_key(), &mut OsRng).unwrap();
    s.add("released-share", released.to_cbor());
    s.add("request-key", &*req.to_bytes());
    s.add("words", &*keyward_recovery::to_words(&secret));
    s.add("words-bad-checksum", "zoo ".repeat(24));

    // cose_chain: raw mode (0x00 + chain / statement / payload) and structured mode (0x01 + ...).
    let mut s = Seeds::new(&root, "cose_chain");
    let key = |n: u8| LocalKey::from_bytes(&[n; 32]).unwrap();
    let (r, a, b, c) = (key(1), key(2), key(3), key(4));
    let t0 = 1_000_000;
    let d_ra = issue_delegation(
        &r,
        &r.public_key().key_id(),
        &a.public_key(),
        "a",
        t0,
        t0 + 1000,
    )
    .unwrap();
    let d_ab = issue_delegation(
        &a,
        &a.public_key().key_id(),
        &b.public_key(),
        "b",
        t0,
        t0 + 1000,
    )
    .unwrap();
    let rk = issue_rekey(&b, &c.public_key(), "c", t0, t0 + 500).unwrap();
    let rv = issue_revocation(
        &a,
        &a.public_key().key_id(),
        &c.public_key().key_id(),
        t0 + 1,
    )
    .unwrap();
    let mut chain = Chain::new(r.public_key());
    for st in [&d_ra, &d_ab, &rk, &rv] {
        chain.push(st.clone()).unwrap();
    }
    let with = |m: u8, b: &[u8]| [&[m][..], b].concat();
    s.add("chain", with(0, &chain.to_cbor()));
    s.add(
        "empty-chain",
        with(0, &Chain::new(r.public_key()).to_cbor()),
    );
    s.add("delegation", with(0, &d_ra));
    s.add("revocation", with(0, &rv));
    s.add(
        "payload",
        with(
            0,
            &keyward_identity::delegation::inspect_statement(&rk)
                .map(|st: Statement| st.to_payload())
                .unwrap(),
        ),
    );
    for case in cose["cases"].as_array().unwrap() {
        if let Some(h) = case["cbor"].as_str() {
            let bytes: Vec<u8> = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect();
            s.add("cose-vector", with(0, &bytes));
        }
    }
    // Structured: [mode, time index, key index, statement picks...].
    s.add("walk-b", [1u8, 3, 2, 0, 1]);
    s.add("walk-c-revoked", [1u8, 3, 3, 0, 1, 2, 7]);
    s.add("walk-d-rekey", [1u8, 5, 4, 0, 6, 13, 15, 11]);
    s.add("walk-deep", [1u8, 3, 22, 0xff]);
    s.add("walk-loop", [1u8, 3, 1, 4, 5, 2, 1, 0, 8, 17, 16]);

    // agent_policy: signed authorization policies (a root, agents with capabilities, an expiry
    // and a revocation), an empty one, and a tampered one.
    let mut s = Seeds::new(&root, "agent_policy");
    {
        use keyward_identity::authz::{AgentPolicy, Capability};
        let root_key = LocalKey::from_bytes(&[0x31; 32]).unwrap();
        let agent = |b: u8| LocalKey::from_bytes(&[b; 32]).unwrap().public_key();
        let mut p = AgentPolicy::new(root_key.public_key());
        s.add("empty", p.sign(&root_key, 1_000).unwrap());
        p.add(agent(0x41), &[Capability::Sign], None, 1_000).unwrap();
        p.add(
            agent(0x42),
            &[Capability::Decrypt, Capability::Recover, Capability::Admin],
            Some(5_000),
            1_000,
        )
        .unwrap();
        let signed = p.sign(&root_key, 1_100).unwrap();
        s.add("two-agents", &signed);
        p.revoke(agent(0x41), 2_000).unwrap();
        s.add("one-revoked", p.sign(&root_key, 2_000).unwrap());
        let mut tampered = signed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        s.add("tampered", tampered);
    }
    println!("seeds written under {}", root.display());
}
