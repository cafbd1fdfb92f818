//! CLI commands for keypairs, signatures, sharing, node keys and sealed messages.
//!
//! `verify` and `node verify` run offline (no agent): they need only public keys and chains.

use crate::cli::{key_table, out, read_input, write_output, Failure, Out};
use base64::Engine;
use clap::{Args, Subcommand};
use keyward_client::proto::ops::{
    KeyInfo, KeypairCreateArgs, KeypairImportArgs, NodeDeriveArgs, NodeRekeyArgs, NodeRevokeArgs,
    NodeRootRotateArgs, ShareOpenArgs, ShareSealArgs,
};
use keyward_client::Client;
use keyward_identity::ed25519::Ed25519Public;
use keyward_identity::{ecdsa, Chain, PublicKey};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KeypairCmd {
    /// Create a P-256 keypair; its private half is wrapped under a KEK. Prints its id.
    Create {
        #[arg(long)]
        kek: Option<String>,
        #[arg(long)]
        label: Option<String>,
        /// Keep the private key in the root's token, non-extractable (PKCS#11 roots). It signs
        /// (also delegations), but cannot open shares or sealed messages.
        #[arg(long, conflicts_with = "kek")]
        on_token: bool,
        /// `p256` (default: signing, key agreement, sharing, node keys) or `ed25519` (signing).
        #[arg(long, value_parser = ["p256", "ed25519"])]
        alg: Option<String>,
        /// Offer it on the SSH-agent socket (`keyward ssh env`); see `keypair ssh`.
        #[arg(long)]
        ssh: bool,
        #[command(flatten)]
        limits: crate::limits_cmds::LimitOpts,
    },
    /// Import an RSA private key (PKCS#1 or PKCS#8 PEM) for Cryppo Rsa4096 shares.
    Import {
        /// The PEM file.
        #[arg(long)]
        pem: PathBuf,
        #[arg(long)]
        kek: Option<String>,
        #[arg(long)]
        label: Option<String>,
    },
    /// List keypairs, node keys included (every page, or one with --limit).
    List {
        #[command(flatten)]
        page: crate::cli::PageOpts,
    },
    /// Show a keypair's public key as did:key, JWK and SPKI PEM.
    Show { id: String },
    /// Delete a keypair (refused while it vouches for node keys).
    Delete { id: String },
    /// Revoke a keypair: final; it signs nothing more and leaves the SSH and PKCS#11 doors.
    Revoke { id: String },
    /// Offer a keypair to SSH clients (--on), ask before each use (--confirm), or stop (--off).
    Ssh(crate::ssh_cmds::KeypairSshCmd),
    /// A keypair's X.509 certificate (shown by the PKCS#11 module as a certificate object).
    #[command(subcommand)]
    Cert(CertCmd),
    /// Narrow a keypair's usage limits (--usage subset, --confirm, an earlier --not-after).
    Limit(crate::limits_cmds::LimitCmd),
}

#[derive(Subcommand)]
pub enum CertCmd {
    /// Set the certificate (PEM or DER; its public key must be the keypair's).
    Set {
        id: String,
        #[arg(short = 'i', long = "in")]
        input: PathBuf,
    },
    /// Remove the certificate.
    Remove { id: String },
}

const CERT_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const CERT_END: &str = "-----END CERTIFICATE-----";

/// A certificate file's DER: the first PEM `CERTIFICATE` block, or the file as it is.
pub fn cert_der(file: &[u8]) -> Result<Vec<u8>, Failure> {
    let Ok(text) = std::str::from_utf8(file) else {
        return Ok(file.to_vec());
    };
    let Some(start) = text.find(CERT_BEGIN) else {
        return Ok(file.to_vec());
    };
    let body = &text[start + CERT_BEGIN.len()..];
    let end = body
        .find(CERT_END)
        .ok_or_else(|| format!("certificate: no {CERT_END} line"))?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    Ok(base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("certificate: bad base64: {e}"))?)
}

/// DER as a PEM `CERTIFICATE` block.
pub fn cert_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("{CERT_BEGIN}\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(CERT_END);
    out.push('\n');
    out
}

#[derive(Args)]
pub struct SignCmd {
    /// The keypair.
    #[arg(long, allow_hyphen_values = true)]
    key: String,
    /// Raw r‖s (64 bytes) instead of DER.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    io: crate::Io,
}

#[derive(Args)]
pub struct VerifyCmd {
    /// The public key: did:key, or a file (or text) holding a PEM or JWK.
    #[arg(long, allow_hyphen_values = true)]
    key: String,
    /// The signature file (DER or raw r‖s).
    #[arg(long)]
    signature: PathBuf,
    /// The signed data (default: stdin).
    #[arg(short = 'i', long = "in")]
    input: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ShareCmd {
    /// Seal a sharing DEK to a recipient (HPKE auth mode); prints base64url.
    Seal {
        #[arg(long)]
        dek: String,
        /// The recipient: did:key, or a file (or text) holding a PEM or JWK.
        #[arg(long, allow_hyphen_values = true)]
        to: String,
        /// Our keypair that authenticates the share (default: the only one).
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
    },
    /// Open a share (from -i FILE or stdin) into the keystore; prints the DEK's id.
    Open {
        #[arg(long)]
        kek: Option<String>,
        /// The DEK's id, for Cryppo Rsa4096 shares (which carry none; default: a new id).
        #[arg(long)]
        id: Option<String>,
        /// Refuse shares from anyone but this sender (did:key, PEM or JWK).
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        #[arg(short = 'i', long = "in")]
        input: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Derive node key NAME from the root's derivation secret, vouched for by its parent.
    Derive {
        name: String,
        /// The parent keypair (default: the cluster root, made on first use).
        #[arg(long)]
        parent: Option<String>,
        #[arg(long)]
        kek: Option<String>,
        /// Validity of the delegation: `365d` (default), `12h`, `30m`, `90s`.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
    },
    /// Give NAME a fresh random key vouched for by the same parent.
    Rekey {
        name: String,
        /// Validity of the new delegation (as for `derive`).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
    },
    /// Revoke NAME with a revocation signed by an ancestor (default: its parent).
    Revoke {
        name: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// List node keys (every page, or one with --limit).
    List {
        #[command(flatten)]
        page: crate::cli::PageOpts,
    },
    /// Chain files.
    #[command(subcommand)]
    Chain(ChainCmd),
    /// Is this key vouched for by a non-revoked key of the cluster? (offline)
    Verify {
        #[arg(long)]
        chain: PathBuf,
        /// did:key, or a file (or text) holding a PEM or JWK.
        #[arg(long, allow_hyphen_values = true)]
        key: String,
        /// Judge as of this time (unix seconds) instead of now: was it vouched for then?
        #[arg(long)]
        at: Option<u64>,
        /// The root key this verifier trusts (did:key, PEM or JWK), when it is not the chain's
        /// own root: an earlier cluster root that vouched for the current one (`node root
        /// rotate`). Refused when that root revoked itself (`--compromised`).
        #[arg(long, allow_hyphen_values = true)]
        anchor: Option<String>,
    },
    /// The cluster root `/`.
    #[command(subcommand)]
    Root(NodeRootCmd),
}

#[derive(Subcommand)]
pub enum NodeRootCmd {
    /// Replace the cluster root by a fresh key: the old root vouches for it and is retired;
    /// its direct children are re-delegated by the new root. Export the chain afterwards.
    Rotate {
        /// The old root is compromised: it revokes itself instead of vouching, and peers must
        /// import the new root (or the new chain) to trust it.
        #[arg(long)]
        compromised: bool,
    },
}

#[derive(Subcommand)]
pub enum ChainCmd {
    /// Write the cluster's public chain (root key, delegations, revocations) as one CBOR file.
    Export {
        /// Root the chain at this keypair (default: the cluster root `/`).
        #[arg(long)]
        root: Option<String>,
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct SealCmd {
    /// The recipient node's public key: did:key, or a file (or text) holding a PEM or JWK.
    #[arg(long, allow_hyphen_values = true)]
    to: String,
    /// Our keypair that authenticates the message.
    #[arg(long)]
    sign_with: String,
    #[command(flatten)]
    io: crate::Io,
}

#[derive(Args)]
pub struct OpenCmd {
    /// A chain file: refuse senders it does not vouch for.
    #[arg(long)]
    from: Option<PathBuf>,
    /// A peer's agent policy file (`keyward agents policy export`): refuse senders it revoked.
    #[arg(long)]
    agents: Option<PathBuf>,
    #[command(flatten)]
    io: crate::Io,
}

/// A duration: a number with `s`, `m`, `h` or `d` (seconds when bare).
fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 365d, 12h, 30m or 90s"))?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// A public key argument: did:key or PEM/JWK text as given, else the contents of that file.
fn key_text(arg: &str) -> Result<String, Failure> {
    let t = arg.trim();
    if t.starts_with("did:") || t.starts_with("-----BEGIN") || t.starts_with('{') {
        return Ok(t.to_string());
    }
    match std::fs::read_to_string(t) {
        Ok(s) => Ok(s),
        Err(e) => {
            Err(format!("`{t}` is not a did:key, PEM or JWK, nor a readable file ({e})").into())
        }
    }
}

fn public_key(arg: &str) -> Result<PublicKey, Failure> {
    PublicKey::parse(&key_text(arg)?).map_err(|e| format!("public key: {e}").into())
}

fn created(id: String) -> Out {
    out(format!("{id}\n"), json!({ "id": id }))
}

fn keypair_json(k: &KeyInfo) -> Result<(serde_json::Value, String), Failure> {
    if k.scheme == "rsa-pem-gcm" {
        let pem = String::from_utf8_lossy(
            k.public_key
                .as_ref()
                .map(|b| b.as_slice())
                .unwrap_or_default(),
        )
        .into_owned();
        let mut j = serde_json::to_value(k).map_err(|e| e.to_string())?;
        j["public_key"] = json!(null);
        j["pem"] = json!(pem);
        let text = format!(
            "id:      {}\nlabel:   {}\ntype:    RSA (Cryppo Rsa4096 shares)\n{pem}",
            k.id,
            k.label.as_deref().unwrap_or("")
        );
        return Ok((j, text));
    }
    let bytes = k
        .public_key
        .as_deref()
        .ok_or_else(|| format!("keypair {} has no public key", k.id))?;
    let (pem, did, jwk_text) = if k.algorithm.as_deref() == Some("ed25519") {
        let pk = Ed25519Public::from_bytes(bytes).map_err(|e| format!("public key: {e}"))?;
        let pem = pk.to_spki_pem().map_err(|e| format!("PEM: {e}"))?;
        (pem, pk.to_did_key(), pk.to_jwk_string())
    } else {
        let pk = PublicKey::from_sec1_bytes(bytes).map_err(|e| format!("public key: {e}"))?;
        let pem = pk.to_spki_pem().map_err(|e| format!("PEM: {e}"))?;
        (pem, pk.to_did_key(), pk.to_jwk_string())
    };
    let jwk: serde_json::Value =
        serde_json::from_str(&jwk_text).map_err(|e| format!("JWK: {e}"))?;
    let mut j = serde_json::to_value(k).map_err(|e| e.to_string())?;
    if let Some(c) = &k.certificate {
        j["certificate"] = json!(cert_pem(c));
    }
    j["public_key"] = json!(hex::encode(bytes));
    j["did"] = json!(did);
    j["jwk"] = jwk.clone();
    j["pem"] = json!(pem);
    let mut text = format!(
        "id:      {}\nlabel:   {}\nname:    {}\nstate:   {}\ndid:     {did}\njwk:     {jwk}\n{pem}",
        k.id,
        k.label.as_deref().unwrap_or(""),
        k.name.as_deref().unwrap_or(""),
        k.state,
    );
    text.push_str(&crate::ssh_cmds::show_lines(k));
    text.push_str(&crate::limits_cmds::limits_text(k));
    Ok((j, text))
}

pub async fn keypair(c: &Client, cmd: &KeypairCmd) -> Result<Out, Failure> {
    Ok(match cmd {
        KeypairCmd::Create {
            kek,
            label,
            on_token,
            alg,
            ssh,
            limits,
        } => {
            let args = KeypairCreateArgs {
                kek: kek.clone(),
                label: label.clone(),
                on_token: *on_token,
                alg: alg.clone(),
                ssh: ssh.then_some(keyward_client::proto::ops::SshMode::On),
                limits: limits.spec(),
            };
            created(c.keypair_create(&args).await?.id)
        }
        KeypairCmd::Import { pem, kek, label } => {
            let bytes =
                std::fs::read(pem).map_err(|e| format!("reading {}: {e}", pem.display()))?;
            let args = KeypairImportArgs {
                pem: keyward_client::proto::secret::SecretBytes::new(bytes),
                kek: kek.clone(),
                label: label.clone(),
            };
            created(c.keypair_import(&args).await?.id)
        }
        KeypairCmd::List { page } => {
            let r = page
                .fetch("keypair.list", |p| c.keypair_list_page(p))
                .await?;
            crate::cli::list_out(&r, key_table(&r.keys))
        }
        KeypairCmd::Show { id } => {
            let (j, text) = keypair_json(&c.keypair_show(id).await?)?;
            out(text, j)
        }
        KeypairCmd::Ssh(cmd) => crate::ssh_cmds::keypair_ssh(c, cmd).await?,
        KeypairCmd::Limit(cmd) => crate::limits_cmds::limit(c, cmd).await?,
        KeypairCmd::Revoke { id } => crate::revoked_out(c.keypair_revoke(id).await?),
        KeypairCmd::Delete { id } => {
            let r = c.keypair_delete(id).await?;
            out(
                format!("deleted {}\n", r.id),
                json!({ "id": r.id, "deleted": true }),
            )
        }
        KeypairCmd::Cert(CertCmd::Set { id, input }) => {
            let file = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
            let r = c.keypair_cert_set(id, Some(cert_der(&file)?)).await?;
            out(
                format!("certificate set for {}\n", r.id),
                json!({ "id": r.id, "certificate": true }),
            )
        }
        KeypairCmd::Cert(CertCmd::Remove { id }) => {
            let r = c.keypair_cert_set(id, None).await?;
            out(
                format!("certificate removed from {}\n", r.id),
                json!({ "id": r.id, "certificate": false }),
            )
        }
    })
}

pub async fn sign(c: &Client, cmd: &SignCmd, json_out: bool) -> Result<Option<Out>, Failure> {
    let data = read_input(&cmd.io.input)?;
    let sig = c.sign(&cmd.key, &data, cmd.raw).await?;
    if json_out && cmd.io.output.is_none() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sig);
        return Ok(Some(out("", json!({ "signature": b64, "raw": cmd.raw }))));
    }
    write_output(&cmd.io.output, &sig)?;
    Ok(json_out.then(|| out("", json!({ "written": true }))))
}

/// Offline: exit 0 with "valid" or fail with why.
pub fn verify(cmd: &VerifyCmd) -> Result<Out, Failure> {
    let key_text = key_text(&cmd.key)?;
    let sig = std::fs::read(&cmd.signature)
        .map_err(|e| format!("reading {}: {e}", cmd.signature.display()))?;
    let data = read_input(&cmd.input)?;
    // An Ed25519 key (did:key z6Mk..., OKP JWK, Ed25519 PEM), else P-256 ECDSA.
    if let Ok(ed) = Ed25519Public::parse(&key_text) {
        ed.verify(&data, &sig).map_err(|e| format!("verify: {e}"))?;
        return Ok(out(
            "valid\n",
            json!({ "valid": true, "key": ed.to_did_key(), "algorithm": "ed25519" }),
        ));
    }
    let pk =
        ecdsa::verify_with_key_text(&key_text, &data, &sig).map_err(|e| format!("verify: {e}"))?;
    Ok(out(
        "valid\n",
        json!({ "valid": true, "key": pk.to_did_key(), "algorithm": "p256" }),
    ))
}

pub async fn share(c: &Client, cmd: &ShareCmd) -> Result<Out, Failure> {
    Ok(match cmd {
        ShareCmd::Seal {
            dek,
            to,
            from,
            output,
        } => {
            let args = ShareSealArgs {
                dek: dek.clone(),
                to: key_text(to)?,
                from: from.clone(),
            };
            let sealed = c.share_seal(&args).await?;
            if output.is_some() {
                write_output(output, format!("{sealed}\n").as_bytes())?;
                out("", json!({ "dek": dek, "written": true }))
            } else {
                out(
                    format!("{sealed}\n"),
                    json!({ "dek": dek, "sealed": sealed }),
                )
            }
        }
        ShareCmd::Open {
            kek,
            id,
            from,
            input,
        } => {
            let sealed = String::from_utf8(read_input(input)?)
                .map_err(|_| "the share is not base64url text".to_string())?;
            let args = ShareOpenArgs {
                sealed: sealed.trim().to_string(),
                kek: kek.clone(),
                from: from.as_deref().map(key_text).transpose()?,
                id: id.clone(),
            };
            let r = c.share_open(&args).await?;
            out(
                format!("{}\n", r.id),
                json!({ "id": r.id, "sender": r.sender }),
            )
        }
    })
}

pub async fn node(c: &Client, cmd: &NodeCmd) -> Result<Out, Failure> {
    Ok(match cmd {
        NodeCmd::Derive {
            name,
            parent,
            kek,
            ttl,
        } => {
            let args = NodeDeriveArgs {
                name: name.clone(),
                parent: parent.clone(),
                kek: kek.clone(),
                ttl_seconds: *ttl,
            };
            created(c.node_derive(&args).await?.id)
        }
        NodeCmd::Rekey { name, ttl } => {
            let args = NodeRekeyArgs {
                name: name.clone(),
                ttl_seconds: *ttl,
            };
            created(c.node_rekey(&args).await?.id)
        }
        NodeCmd::Revoke { name, by } => {
            let args = NodeRevokeArgs {
                name: name.clone(),
                by: by.clone(),
            };
            let r = c.node_revoke(&args).await?;
            out(
                format!("revoked {}\n", r.id),
                json!({ "id": r.id, "revoked": true }),
            )
        }
        NodeCmd::List { page } => {
            let r = page.fetch("node.list", |p| c.node_list_page(p)).await?;
            let mut text = String::new();
            for k in &r.keys {
                text.push_str(&format!(
                    "{:<24}  {:<8}  {}\n",
                    k.name.as_deref().unwrap_or(""),
                    k.state,
                    k.id
                ));
            }
            crate::cli::list_out(&r, text)
        }
        NodeCmd::Chain(ChainCmd::Export { root, output }) => {
            let chain = c.node_chain(root.clone()).await?;
            write_output(output, &chain)?;
            out("", json!({ "written": true, "bytes": chain.len() }))
        }
        NodeCmd::Root(NodeRootCmd::Rotate { compromised }) => {
            let args = NodeRootRotateArgs {
                compromised: *compromised,
            };
            let r = c.node_root_rotate(&args).await?;
            let how = if r.compromised {
                "old root revoked itself; peers must import the new root"
            } else {
                "old root vouches for it and is retired"
            };
            out(
                format!(
                    "new cluster root {} (was {}; {how}); {} child(ren) re-delegated: export the chain with `keyward node chain export`\n",
                    r.id, r.old, r.redelegated
                ),
                json!({ "id": r.id, "old": r.old, "compromised": r.compromised, "redelegated": r.redelegated }),
            )
        }
        NodeCmd::Verify { .. } => {
            return Err("internal: offline command reached the agent"
                .to_string()
                .into())
        }
    })
}

/// Offline: is `key` vouched for by the chain?
pub fn node_verify(
    chain: &PathBuf,
    key: &str,
    at: Option<u64>,
    anchor: Option<&str>,
) -> Result<Out, Failure> {
    let bytes = std::fs::read(chain).map_err(|e| format!("reading {}: {e}", chain.display()))?;
    let chain = Chain::from_cbor(&bytes).map_err(|e| format!("chain: {e}"))?;
    let pk = public_key(key)?;
    let now = at.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let v = match anchor {
        Some(a) => chain.verify_key_from(&public_key(a)?, &pk, now),
        None => chain.verify_key(&pk, now),
    }
    .map_err(|e| format!("not vouched for: {e}"))?;
    let name = v.name.clone().unwrap_or_else(|| "(cluster root)".into());
    Ok(out(
        format!(
            "vouched for: {name} ({} links to the root)\n",
            v.path.len().saturating_sub(1)
        ),
        json!({ "vouched": true, "name": v.name, "expires_at": v.expires_at, "depth": v.path.len().saturating_sub(1) }),
    ))
}

pub async fn seal(c: &Client, cmd: &SealCmd, json_out: bool) -> Result<Option<Out>, Failure> {
    let data = zeroize::Zeroizing::new(read_input(&cmd.io.input)?);
    let sealed = c.seal(&key_text(&cmd.to)?, &cmd.sign_with, &data).await?;
    if json_out && cmd.io.output.is_none() {
        return Ok(Some(out("", json!({ "sealed": sealed }))));
    }
    write_output(&cmd.io.output, format!("{sealed}\n").as_bytes())?;
    Ok(json_out.then(|| out("", json!({ "written": true }))))
}

pub async fn open(c: &Client, cmd: &OpenCmd, json_out: bool) -> Result<Option<Out>, Failure> {
    let sealed = String::from_utf8(read_input(&cmd.io.input)?)
        .map_err(|_| "the sealed message is not base64url text".to_string())?;
    let chain = match &cmd.from {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?),
        None => None,
    };
    let agents = match &cmd.agents {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?),
        None => None,
    };
    let r = c.open_checked(sealed.trim(), chain, agents).await?;
    if json_out && cmd.io.output.is_none() {
        let b64 = base64::engine::general_purpose::URL_SAFE.encode(r.plaintext.expose());
        return Ok(Some(out(
            "",
            json!({ "plaintext": b64, "sender": r.sender, "sender_name": r.sender_name }),
        )));
    }
    eprintln!(
        "keyward: from {}{}",
        r.sender_name
            .as_deref()
            .map(|n| format!("node `{n}`, "))
            .unwrap_or_default(),
        r.sender
    );
    write_output(&cmd.io.output, r.plaintext.expose())?;
    Ok(json_out.then(|| out("", json!({ "written": true, "sender": r.sender }))))
}
