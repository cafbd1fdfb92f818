//! `keyward recovery`: offline and social recovery (README "Recovery").
//!
//! The owner's side runs here, in the CLI: `create` makes the recovery secret, shows it once as
//! 24 words, splits it among trustees and seals each share to one of them; `request` makes the
//! one-time request key; `check` and `restore` read the words or combine released shares back
//! into the secret (every check of `keyward-recovery` is made here, before the agent is asked).
//! The trustee's side (`hold`, `release`, `held`) and the two steps that change the keystore
//! (`recovery.enroll`, `recovery.restore`) are agent operations.
//!
//! This module must never write the secret or the words to a file, never print them but in
//! `create`'s one showing, never put them (or a share value) in an error, and never send the
//! secret to the agent before it was checked (checksum, or tag, signatures and the combined key).

use crate::cli::{key_table, out, write_output, Failure, Out, PageOpts};
use clap::{Args, Subcommand};
use keyward_client::proto::secret::SecretBytes;
use keyward_client::Client;
use keyward_identity::PublicKey;
use keyward_recovery::shamir::MAX_SHARE_LEN;
use keyward_recovery::words::MAX_PHRASE_LEN;
use keyward_recovery::{
    combine, from_words, to_words, RecoveryKey, RecoverySecret, ReleasedShare, RequestError,
    RequestKey, ShareError, ShareSet, WordsError,
};
use rand_core::OsRng;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Subcommand)]
pub enum RecoveryCmd {
    /// Make a recovery secret: shown once as 24 words, optionally split among trustees
    /// (--trustee DID ... --threshold K -o DIR: one sealed share file per trustee). The agent
    /// enrolls its public key (every KEK is wrapped to it) before anything is shown.
    Create {
        /// A trustee's P-256 did:key (`keyward keypair show` on their agent), once per trustee.
        #[arg(long = "trustee", value_name = "DID")]
        trustees: Vec<String>,
        /// Shares needed to recover (2 to the number of trustees).
        #[arg(long, value_name = "K", requires = "trustees")]
        threshold: Option<u8>,
        /// Directory for the share files (`share-<index>.cbor`, one per trustee).
        #[arg(
            short = 'o',
            long = "out-dir",
            value_name = "DIR",
            requires = "trustees"
        )]
        out_dir: Option<PathBuf>,
        /// Do not contact the agent: make the secret and shares on this (offline) machine and
        /// enroll the printed public key later with `keyward recovery enroll DID`.
        #[arg(long)]
        offline: bool,
        /// Also draw the words as a QR code in the terminal (text mode only).
        #[arg(long)]
        qr: bool,
    },
    /// Enroll a recovery public key that `create --offline` printed.
    Enroll {
        /// The recovery public key, did:key.
        did: String,
    },
    /// Trustee: keep a share sealed to one of this agent's keypairs (wrapped under its KEK).
    /// Prints the held share's id.
    Hold {
        /// The share file the owner gave you.
        #[arg(short, long)]
        input: PathBuf,
    },
    /// Trustee: seal a held share to the owner's one-time request key, after checking the
    /// request out of band (in person, by a call you placed).
    Release {
        /// The held share's id (`keyward recovery held`).
        id: String,
        /// The owner's request key, did:key (`keyward recovery request` printed it).
        #[arg(long, value_name = "DID")]
        to: String,
        /// The released share file to give the owner.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Trustee: the recovery shares this agent holds for others.
    Held {
        #[command(flatten)]
        page: PageOpts,
    },
    /// Trustee: forget a held share (once its owner has new trustees, or no longer needs it).
    Delete {
        /// The held share's id.
        id: String,
    },
    /// Owner, on the new machine: make a one-time request key in REQ (mode 0600) and print its
    /// did:key for the trustees.
    Request {
        /// The request key file to create (never overwritten).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Read the words, or combine released shares, and print the recovery public key they
    /// give (no agent needed): check a printout, or shares, before you need them.
    Check {
        #[command(flatten)]
        source: SecretSource,
    },
    /// Restore on a fresh token from the words or from released shares: the secret is checked
    /// here, then the agent makes the new root and rewraps every KEK under it.
    Restore {
        #[command(flatten)]
        source: SecretSource,
        /// Read the new token's PIN from the first line of stdin instead of prompting.
        #[arg(long, alias = "passphrase-stdin")]
        pin_stdin: bool,
    },
}

/// Where the recovery secret comes from: the words, or a request key and released shares.
#[derive(Args)]
pub struct SecretSource {
    /// A file holding the 24 words.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["request", "shares"])]
    words_file: Option<PathBuf>,
    /// The request key file `recovery request` made.
    #[arg(long, value_name = "REQ", requires = "shares")]
    request: Option<PathBuf>,
    /// A released share file (once per share, at least the threshold).
    #[arg(long = "share", value_name = "FILE", requires = "request")]
    shares: Vec<PathBuf>,
    /// Refuse unless the secret gives this recovery public key (did:key).
    #[arg(long, value_name = "DID")]
    expect: Option<String>,
}

/// A failure with a `--json` code of the client's own.
fn typed(code: &'static str, message: String) -> Failure {
    Failure {
        message,
        body: None,
        client_code: Some(code),
        chunk: None,
    }
}

/// The `--json` code of a words error.
fn words_failure(e: WordsError) -> Failure {
    let code = match e {
        WordsError::WrongWordCount { .. } => "wrong_word_count",
        WordsError::UnknownWord { .. } => "unknown_word",
        WordsError::BadChecksum => "bad_checksum",
        WordsError::TooLong => "too_large",
        _ => "bad_words",
    };
    typed(code, format!("recovery words: {e}"))
}

/// The `--json` code of a share error (combine, parse, expect).
fn share_failure(e: ShareError) -> Failure {
    let code = match e {
        ShareError::NotEnoughShares { .. } | ShareError::NoShares => "not_enough_shares",
        ShareError::TagMismatch { .. } => "different_secrets",
        ShareError::DifferentShareSets { .. } => "different_share_sets",
        ShareError::DuplicateShare { .. } => "duplicate_share",
        ShareError::Tampered { .. } | ShareError::CombinedKeyMismatch => "tampered_share",
        ShareError::NotForThisKey { .. } => "wrong_request_key",
        ShareError::WrongRecoveryRoot { .. } => "wrong_recovery_root",
        ShareError::BadThreshold { .. }
        | ShareError::TooManyTrustees { .. }
        | ShareError::DuplicateTrustee { .. }
        | ShareError::BadDid { .. } => "invalid_args",
        _ => "malformed_share",
    };
    typed(code, format!("recovery shares: {e}"))
}

fn request_failure(e: RequestError) -> Failure {
    let code = match e {
        RequestError::Exists(_) => "already_exists",
        RequestError::InsecurePermissions { .. } => "insecure_permissions",
        RequestError::Io { .. } => "io",
        _ => "bad_request_file",
    };
    typed(code, e.to_string())
}

fn parse_did(what: &str, did: &str) -> Result<PublicKey, Failure> {
    PublicKey::from_did_key(did)
        .map_err(|e| typed("invalid_args", format!("{what}: not a P-256 did:key: {e}")))
}

/// Reads at most `max` bytes of `path` (more is `too_large`).
fn read_bounded(path: &Path, max: usize) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let f = std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut buf = Zeroizing::new(Vec::new());
    f.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if buf.len() > max {
        return Err(typed(
            "too_large",
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(buf)
}

/// The checked secret, its key, and what it came from (for the output).
struct Checked {
    secret: RecoverySecret,
    key: RecoveryKey,
    from: serde_json::Value,
}

/// Read and check the secret (words checksum; or every share check and the combined key).
fn read_secret(src: &SecretSource) -> Result<Checked, Failure> {
    let checked = if let Some(path) = &src.words_file {
        let raw = read_bounded(path, MAX_PHRASE_LEN)?;
        let text = std::str::from_utf8(&raw)
            .map_err(|_| words_failure(WordsError::Invalid("not UTF-8 text")))?;
        let secret = from_words(text).map_err(words_failure)?;
        let key = RecoveryKey::derive(&secret)
            .map_err(|e| typed("internal", format!("deriving the recovery key: {e}")))?;
        Checked {
            secret,
            key,
            from: json!({"words": true}),
        }
    } else if let Some(req) = &src.request {
        let request = RequestKey::read_from(req).map_err(request_failure)?;
        let mut released = Vec::with_capacity(src.shares.len());
        for path in &src.shares {
            let bytes = read_bounded(path, MAX_SHARE_LEN)?;
            let share = ReleasedShare::from_cbor(&bytes).map_err(|e| {
                let mut f = share_failure(e);
                f.message = format!("{}: {}", path.display(), f.message);
                f
            })?;
            released.push(share);
        }
        let threshold = released.first().map(|s| s.hint().threshold);
        let r = combine(&released, &request).map_err(share_failure)?;
        Checked {
            secret: r.secret,
            key: r.key,
            from: json!({"shares": released.len(), "threshold": threshold}),
        }
    } else {
        return Err(typed(
            "invalid_args",
            "give --words-file FILE, or --request REQ and --share FILE (once per share)".into(),
        ));
    };
    if let Some(did) = &src.expect {
        let expected = parse_did("--expect", did)?;
        if checked.key.public_key() != expected {
            return Err(share_failure(ShareError::WrongRecoveryRoot {
                expected: expected.to_did_key(),
                found: checked.key.did_key(),
            }));
        }
    }
    Ok(checked)
}

async fn connect(socket: &Option<PathBuf>) -> Result<Client, Failure> {
    let path = keyward_client::proto::paths::socket_path(socket.clone());
    Ok(Client::connect(&path).await?)
}

/// The one showing of the words (text mode: stderr, so stdout keeps only the public key).
fn show_words(words: &str, qr: bool) -> Result<(), Failure> {
    let mut block = Zeroizing::new(String::from(
        "\nYour recovery words. They are shown only this once: write them down (or print them)\n\
         and keep them offline, away from this machine and its backups.\n\n",
    ));
    for (i, w) in words.split(' ').enumerate() {
        block.push_str(&format!("{:>4}. {:<10}", i + 1, w));
        if i % 4 == 3 {
            block.push('\n');
        }
    }
    block.push('\n');
    if qr {
        block.push_str(&crate::qr::render(words)?);
        block.push('\n');
    }
    eprint!("{}", block.as_str());
    Ok(())
}

/// Write the share files (never overwriting one), returning their paths in trustee order. On
/// a failure the files already written are removed.
fn write_shares(dir: &Path, set: &ShareSet) -> Result<Vec<PathBuf>, Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for share in set.shares() {
        let path = dir.join(format!("share-{}.cbor", share.hint().index));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                paths.push(path.clone());
                f.write_all(&share.to_cbor())?;
                f.sync_all()
            });
        if let Err(e) = written {
            for p in &paths {
                let _ = std::fs::remove_file(p);
            }
            return Err(format!("writing {}: {e}", path.display()).into());
        }
    }
    Ok(paths)
}

pub async fn run(
    socket: Option<PathBuf>,
    cmd: &RecoveryCmd,
    json_mode: bool,
) -> Result<Out, Failure> {
    match cmd {
        RecoveryCmd::Create {
            trustees,
            threshold,
            out_dir,
            offline,
            qr,
        } => {
            let keys = trustees
                .iter()
                .map(|d| parse_did("--trustee", d))
                .collect::<Result<Vec<_>, _>>()?;
            let k = match (keys.is_empty(), threshold, out_dir) {
                (true, _, _) => None,
                (false, Some(k), Some(_)) => Some(*k),
                (false, _, _) => {
                    return Err(typed(
                        "invalid_args",
                        "--trustee needs --threshold K and -o DIR".into(),
                    ))
                }
            };
            if let Some(dir) = out_dir {
                for i in 1..=keys.len() {
                    let p = dir.join(format!("share-{i}.cbor"));
                    if p.exists() {
                        return Err(typed(
                            "already_exists",
                            format!("{} exists: give an empty directory", p.display()),
                        ));
                    }
                }
            }
            let secret = RecoverySecret::generate(&mut OsRng);
            let key = RecoveryKey::derive(&secret)
                .map_err(|e| typed("internal", format!("deriving the recovery key: {e}")))?;
            let set = match k {
                Some(k) => {
                    Some(ShareSet::split(&secret, &keys, k, &mut OsRng).map_err(share_failure)?)
                }
                None => None,
            };
            // The share files are written first (the step most likely to fail), then the agent
            // enrolls the key, and only then are the words shown: words for a key the agent
            // refused would protect nothing, so a refusal removes the files again.
            let files = match (&set, out_dir) {
                (Some(set), Some(dir)) => write_shares(dir, set)?,
                _ => Vec::new(),
            };
            let enrolled = if *offline {
                None
            } else {
                let answer = match connect(&socket).await {
                    Ok(c) => c
                        .recovery_enroll(&key.public_key().to_sec1_compressed())
                        .await
                        .map_err(Failure::from),
                    Err(f) => Err(f),
                };
                match answer {
                    Ok(e) => Some(e),
                    Err(f) => {
                        for p in &files {
                            let _ = std::fs::remove_file(p);
                        }
                        return Err(f);
                    }
                }
            };
            let words = to_words(&secret);
            let did = key.did_key();
            let mut j = json!({"recovery": did, "enrolled": enrolled.is_some()});
            if let Some(e) = &enrolled {
                j["id"] = json!(e.id);
                j["keks"] = json!(e.keks);
            }
            if let (Some(set), Some(k)) = (&set, k) {
                j["threshold"] = json!(k);
                j["tag"] = json!(set.tag().to_hex());
                j["shares"] = json!(set
                    .shares()
                    .iter()
                    .zip(&files)
                    .map(|(s, f)| json!({
                        "index": s.hint().index,
                        "trustee": s.hint().trustee(),
                        "file": f.display().to_string(),
                    }))
                    .collect::<Vec<_>>());
            }
            let text = format!("{did}\n");
            if json_mode {
                j["words"] = json!(words.as_str());
            } else {
                show_words(&words, *qr)?;
                for (s, f) in set.iter().flat_map(|s| s.shares()).zip(&files) {
                    eprintln!(
                        "share {} for {}: {}",
                        s.hint().index,
                        s.hint().trustee(),
                        f.display()
                    );
                }
                if enrolled.is_none() {
                    eprintln!(
                        "not enrolled (--offline): run `keyward recovery enroll {did}` on the agent"
                    );
                }
            }
            Ok(out(text, j))
        }
        RecoveryCmd::Enroll { did } => {
            let key = parse_did("DID", did)?;
            let c = connect(&socket).await?;
            let e = c.recovery_enroll(&key.to_sec1_compressed()).await?;
            Ok(out(
                format!("enrolled {} ({} KEKs wrapped)\n", e.recovery, e.keks),
                json!({"id": e.id, "recovery": e.recovery, "keks": e.keks}),
            ))
        }
        RecoveryCmd::Hold { input } => {
            let share = read_bounded(input, MAX_SHARE_LEN)?;
            let c = connect(&socket).await?;
            let h = c.recovery_hold(&share).await?;
            let text = format!(
                "{}\nholding share {} of {} ({} needed) for {}\n",
                h.id,
                h.index,
                h.trustees.len(),
                h.threshold,
                h.recovery
            );
            Ok(out(
                text,
                serde_json::to_value(&h).map_err(|e| e.to_string())?,
            ))
        }
        RecoveryCmd::Release { id, to, output } => {
            let c = connect(&socket).await?;
            let r = c.recovery_release(id, to).await?;
            write_output(&Some(output.clone()), &r.released)?;
            Ok(out(
                format!(
                    "released share {} of {} to {to}: {}\n",
                    r.index,
                    r.recovery,
                    output.display()
                ),
                json!({"id": r.id, "index": r.index, "recovery": r.recovery, "to": to,
                       "file": output.display().to_string()}),
            ))
        }
        RecoveryCmd::Held { page } => {
            let c = connect(&socket).await?;
            let r = page
                .fetch("recovery.held", |p| c.recovery_held_page(p))
                .await?;
            Ok(crate::cli::list_out(&r, key_table(&r.keys)))
        }
        RecoveryCmd::Delete { id } => {
            let c = connect(&socket).await?;
            let d = c.recovery_delete(id).await?;
            Ok(out(
                format!("deleted {}\n", d.id),
                json!({"id": d.id, "deleted": d.deleted}),
            ))
        }
        RecoveryCmd::Request { output } => {
            let key = RequestKey::generate(&mut OsRng);
            key.write_to(output).map_err(request_failure)?;
            let did = key.did_key();
            Ok(out(
                format!("{did}\n"),
                json!({"did": did, "file": output.display().to_string()}),
            ))
        }
        RecoveryCmd::Check { source } => {
            let c = read_secret(source)?;
            let did = c.key.did_key();
            let mut j = json!({"recovery": did});
            j["from"] = c.from;
            Ok(out(format!("{did}\n"), j))
        }
        RecoveryCmd::Restore { source, pin_stdin } => {
            let checked = read_secret(source)?;
            let pin = crate::read_pin(
                &crate::PinOpt {
                    pin_stdin: *pin_stdin,
                },
                "New token PIN: ",
            )?;
            let c = connect(&socket).await?;
            let secret = SecretBytes::new(checked.secret.as_bytes().to_vec());
            let r = c.recovery_restore(secret, pin).await?;
            // The request key has done its work: a released share is useless without it.
            if let Some(req) = &source.request {
                if let Err(e) = std::fs::remove_file(req) {
                    eprintln!(
                        "keyward: removing {}: {e} (delete it yourself)",
                        req.display()
                    );
                }
            }
            let mut text = format!("restored: root {} ({} KEKs rewrapped)\n", r.root, r.keks);
            for id in &r.absent_roots {
                text.push_str(&format!(
                    "enrolled root {id} is not present: `keyward root remove {id}` drops it\n"
                ));
            }
            Ok(out(
                text,
                json!({"root": r.root, "keks": r.keks, "absent_roots": r.absent_roots,
                       "recovery": checked.key.did_key()}),
            ))
        }
    }
}
