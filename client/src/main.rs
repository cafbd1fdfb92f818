//! `keyward`: the command line for the Keyward agent.
//!
//! Every command that creates something prints the new id; with `--json` every command prints
//! one JSON object (created things carry an `id` field). Commands that take or give data read
//! stdin or `-i FILE` and write stdout or `-o FILE`. PINs come from a prompt or `--pin-stdin`,
//! never from arguments (they would show in `ps` and shell history).
#![forbid(unsafe_code)]
// No panics outside tests (request paths and start-up return typed errors).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use base64::Engine;
use clap::{Args, Parser, Subcommand, ValueEnum};
use keyward_client::proto::ops::{DekCreateArgs, DekListArgs, ListArgs, Purpose, RootKind};
use keyward_client::proto::secret::Pin;
use keyward_client::Client;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

mod agents_cmds;
mod audit_cmds;
mod backup;
mod cli;
mod cryppo;
mod device_cmds;
mod doctor;
mod identity_cmds;
mod limits_cmds;
mod policy_cmds;
mod qr;
mod recovery_cmds;
mod rotation_progress;
mod ssh_cmds;
mod stream_cmds;

use cli::{key_table, out, write_output, Failure, Out};

#[derive(Parser)]
#[command(name = "keyward", version, about = "Drive the Keyward key agent")]
struct Cli {
    /// Agent socket (default: $KEYWARD_SOCK, else $XDG_RUNTIME_DIR/keyward/agent.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print one JSON object per command.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the agent's root, token and lock state.
    Status,
    /// Check the set-up (agent, socket, config, token, pcscd, SSH_AUTH_SOCK, units, keystore)
    /// and say how to fix each problem; exits non-zero when there is one.
    Doctor {
        /// The agent's config (default: what the agent reports, else $KEYWARD_CONFIG, else
        /// $XDG_CONFIG_HOME/keyward/keyward.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The keystore to check (default: what the agent or the config names).
        #[arg(long)]
        keystore: Option<PathBuf>,
    },
    /// Create the root (once): on the token, or with `--soft` from a passphrase.
    Init {
        #[command(flatten)]
        pin: PinOpt,
        /// The agent has a passphrase (soft) root: generate a passphrase unless one is given
        /// on stdin, and show it once.
        #[arg(long)]
        soft: bool,
    },
    /// Unlock the agent with the token PIN.
    Unlock(PinOpt),
    /// Lock the agent: forget the PIN, destroy unwrapped keys.
    Lock,
    /// Key-encryption keys.
    #[command(subcommand)]
    Kek(KekCmd),
    /// The roots every KEK is wrapped under (a backup token, a card, the recovery root).
    #[command(subcommand)]
    Root(RootCmd),
    /// Devices sharing this identity's keystore: enroll a new one (`request` on it, `approve`
    /// on an enrolled one), list, revoke.
    #[command(subcommand)]
    Device(device_cmds::DeviceCmd),
    /// Data-encryption keys.
    #[command(subcommand)]
    Dek(DekCmd),
    /// Encrypt data of any size under a DEK: up to 64 KiB a Cryppo Aes256Gcm string, larger
    /// inputs the Keyward streaming format (constant memory).
    Encrypt {
        #[arg(long)]
        dek: String,
        /// Always write the streaming format.
        #[arg(long, conflicts_with = "cryppo")]
        stream: bool,
        /// Always write a Cryppo string (at most one agent request of data).
        #[arg(long)]
        cryppo: bool,
        #[command(flatten)]
        io: Io,
    },
    /// Decrypt what `encrypt` made: a stream or a Cryppo string (its DEK is named inside).
    Decrypt {
        /// Needed only for Cryppo strings that do not name a Keyward DEK.
        #[arg(long)]
        dek: Option<String>,
        #[command(flatten)]
        io: Io,
    },
    /// Re-encrypt a Cryppo ciphertext under the newest version of its DEK, inside the agent
    /// (the plaintext never leaves it). Reads stdin or -i, writes stdout or -o.
    Rewrap {
        /// Needed only for Cryppo strings that do not name a Keyward DEK.
        #[arg(long)]
        dek: Option<String>,
        #[command(flatten)]
        io: Io,
    },
    /// Offline Cryppo helpers (no agent needed).
    #[command(subcommand)]
    Cryppo(CryppoCmd),
    /// P-256 keypairs: signing, key agreement, identity (did:key).
    #[command(subcommand)]
    Keypair(identity_cmds::KeypairCmd),
    /// Sign data with a keypair (ECDSA P-256 / SHA-256; DER, or --raw r‖s).
    Sign(identity_cmds::SignCmd),
    /// Verify a signature (offline: no agent needed).
    Verify(identity_cmds::VerifyCmd),
    /// Share DEKs with other users (HPKE to their public key).
    #[command(subcommand)]
    Share(identity_cmds::ShareCmd),
    /// Node keys: derive, rekey, revoke, chains.
    #[command(subcommand)]
    Node(identity_cmds::NodeCmd),
    /// Seal a message to a node's public key, authenticated by one of our keypairs.
    Seal(identity_cmds::SealCmd),
    /// Open a sealed message addressed to one of our keypairs.
    Open(identity_cmds::OpenCmd),
    /// The SSH agent: `eval "$(keyward ssh env)"`.
    #[command(subcommand)]
    Ssh(ssh_cmds::SshCmd),
    /// Copy the keystore to a file, or put such a copy back (it holds only wrapped keys).
    #[command(subcommand)]
    Backup(BackupCmd),
    /// The keystore itself: `keystore migrate --to DEST` copies it into a new one, checked.
    #[command(subcommand)]
    Keystore(KeystoreCmd),
    /// The agent's policy file: `policy check` validates one and explains a decision (offline).
    #[command(subcommand)]
    Policy(policy_cmds::PolicyCmd),
    /// Agent authorization (DKMS): which agent keys act for this identity, signed by its root.
    #[command(subcommand)]
    Agents(agents_cmds::AgentsCmd),
    /// The agent's audit log: `audit show` prints it, `audit verify` checks its chain.
    #[command(subcommand)]
    Audit(audit_cmds::AuditCmd),
    /// Offline and social recovery: the recovery words, trustees' shares, restore.
    #[command(subcommand)]
    Recovery(recovery_cmds::RecoveryCmd),
}

#[derive(Subcommand)]
enum KeystoreCmd {
    /// Copy the whole keystore into a new, empty keystore at DEST (a file path), then read every
    /// copied record back and check it with the keystore MAC key. Needs the agent unlocked;
    /// the agent keeps using its keystore (switch with: stop, set `keystore = DEST`, start).
    Migrate {
        /// The new keystore (must not exist, or be empty).
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Write a consistent snapshot of the keystore (SQLite online backup), also while the agent
    /// runs.
    Export {
        /// The backup file to write (mode 0600).
        #[arg(short, long)]
        output: PathBuf,
        /// The keystore (default: the one the agent on the socket serves).
        #[arg(long)]
        keystore: Option<PathBuf>,
        /// Replace OUTPUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Put a backup in place as the keystore. The agent must not be serving that keystore.
    Import {
        /// The backup file.
        #[arg(short, long)]
        input: PathBuf,
        /// The keystore to write (the `keystore` of the agent's config).
        #[arg(long)]
        keystore: PathBuf,
        /// Replace an existing keystore (it is kept as KEYSTORE.before-import-<time>).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct CryppoKey {
    /// AES-256 key, base64url (the Cryppo key format; `keyward dek export` prints one).
    #[arg(long, allow_hyphen_values = true, conflicts_with_all = ["key_file", "passphrase_stdin"])]
    key: Option<String>,
    /// File holding the base64url key (keeps it out of `ps`).
    #[arg(long, conflicts_with = "passphrase_stdin")]
    key_file: Option<PathBuf>,
    /// Passphrase on the first line of stdin (PBKDF2-derived key, 5-part strings).
    #[arg(long)]
    passphrase_stdin: bool,
    /// PBKDF2 iterations when encrypting with a passphrase.
    #[arg(long, default_value_t = 600_000)]
    iterations: u32,
}

#[derive(Subcommand)]
enum CryppoCmd {
    /// Encrypt to a Cryppo Aes256Gcm string (3 parts with a key, 5 with a passphrase).
    Encrypt {
        #[command(flatten)]
        key: CryppoKey,
        #[command(flatten)]
        io: Io,
    },
    /// Decrypt a Cryppo Aes256Gcm string.
    Decrypt {
        #[command(flatten)]
        key: CryppoKey,
        #[command(flatten)]
        io: Io,
    },
}

fn key_source(k: &CryppoKey) -> Result<cryppo::KeySource, Failure> {
    match (&k.key, &k.key_file, k.passphrase_stdin) {
        (Some(key), None, false) => {
            Ok(cryppo::KeySource::Key(zeroize::Zeroizing::new(key.clone())))
        }
        (None, Some(f), false) => Ok(cryppo::KeySource::KeyFile(f.clone())),
        (None, None, true) => Ok(cryppo::KeySource::PassphraseStdin {
            iterations: k.iterations,
        }),
        _ => Err("give one of --key, --key-file or --passphrase-stdin"
            .to_string()
            .into()),
    }
}

/// The offline commands: no agent connection.
fn run_offline(cmd: &CryppoCmd, json: bool) -> Result<Option<Out>, Failure> {
    let b64 = base64::engine::general_purpose::URL_SAFE;
    match cmd {
        CryppoCmd::Encrypt { key, io } => {
            let s = cryppo::encrypt(&key_source(key)?, &io.input)?;
            if json && io.output.is_none() {
                let text = String::from_utf8_lossy(&s).trim().to_string();
                return Ok(Some(out("", json!({ "ciphertext": text }))));
            }
            write_output(&io.output, &s)?;
            Ok(json.then(|| out("", json!({"written": true}))))
        }
        CryppoCmd::Decrypt { key, io } => {
            let pt = cryppo::decrypt(&key_source(key)?, &io.input)?;
            if json && io.output.is_none() {
                return Ok(Some(out("", json!({ "plaintext": b64.encode(&pt) }))));
            }
            write_output(&io.output, &pt)?;
            Ok(json.then(|| out("", json!({"written": true}))))
        }
    }
}

#[derive(Args)]
struct PinOpt {
    /// Read the PIN (or passphrase) from the first line of stdin instead of prompting.
    #[arg(long, alias = "passphrase-stdin")]
    pin_stdin: bool,
}

#[derive(Args)]
pub struct Io {
    /// Input file (default: stdin).
    #[arg(short = 'i', long = "in")]
    pub input: Option<PathBuf>,
    /// Output file (default: stdout).
    #[arg(short = 'o', long = "out")]
    pub output: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KekCmd {
    /// Create a KEK under the root; prints its id.
    Create {
        #[arg(long)]
        label: Option<String>,
    },
    /// List KEKs (every page, or one with --limit).
    List {
        #[command(flatten)]
        page: cli::PageOpts,
    },
    /// Revoke a KEK and every key under it: final; every use afterwards is refused.
    Revoke { id: String },
    /// Make a new version of a KEK and rewrap every key under it; prints the new version.
    /// The new version is wrapped under every enrolled root.
    Rotate {
        id: String,
        /// Remove this enrolled root first (an absent AES or soft root that would otherwise
        /// refuse the rotation); repeatable.
        #[arg(long = "drop-root", value_name = "ROOT_ID")]
        drop_root: Vec<String>,
        /// Show progress on stderr while the children are rewrapped (a bar on a terminal, else
        /// a line a second), polled over a second connection.
        #[arg(long)]
        progress: bool,
    },
}

#[derive(Subcommand)]
enum RootCmd {
    /// Enroll the root FILE's `[root]` describes (a keywardd configuration): make the root on
    /// that token if it has none, and wrap every KEK under it. Asks for that token's PIN.
    Add {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        pin: PinOpt,
        /// A label for `root list` (default: the token's description).
        #[arg(long)]
        label: Option<String>,
    },
    /// List the enrolled roots (every page, or one with --limit); `*` marks the agent's own.
    List {
        #[command(flatten)]
        page: cli::PageOpts,
    },
    /// Remove an enrolled root and every KEK wrap under it (not the agent's own, not the last).
    Remove { id: String },
    /// Replace the agent's root by the one FILE's `[root]` describes: enroll it, move every KEK
    /// under it and forget the old root, in one keystore transaction. The agent locks: restart
    /// it with FILE's configuration. Asks for the new root's PIN.
    Rotate {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        pin: PinOpt,
        /// A label for `root list` (default: the token's description).
        #[arg(long)]
        label: Option<String>,
        /// After the rotation committed, destroy the old root object on its token.
        #[arg(long)]
        destroy_old: bool,
        /// The old root is compromised: print every DEK whose data must be re-encrypted; every
        /// KEK is rotated when the agent unlocks on the new root.
        #[arg(long)]
        compromised: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PurposeArg {
    Personal,
    Sharing,
}

#[derive(Subcommand)]
enum DekCmd {
    /// Create a DEK under a KEK; prints its id.
    Create {
        /// The KEK; may be left out when there is exactly one.
        #[arg(long)]
        kek: Option<String>,
        #[arg(long, value_enum, default_value = "personal")]
        purpose: PurposeArg,
        /// Allow `dek export` of this key (fixed at creation; shorthand for `--usage` export).
        #[arg(long)]
        exportable: bool,
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        limits: limits_cmds::LimitOpts,
    },
    /// List DEKs, optionally under one KEK (every page, or one with --limit).
    List {
        #[arg(long)]
        kek: Option<String>,
        #[command(flatten)]
        page: cli::PageOpts,
    },
    /// Print an exportable DEK as base64url (the Cryppo key format), for client-side encryption.
    /// Exports the newest version.
    Export {
        id: String,
        /// Write the key to this file (mode 0600) instead of stdout.
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
    },
    /// Show one DEK: state, newest version, minimum version.
    Show { id: String },
    /// Add a version to a DEK; new encryptions use it. Prints the new version.
    Rotate { id: String },
    /// Refuse decryption below version N (1 to the newest); warns when that retires versions.
    MinVersion { id: String, n: u32 },
    /// Revoke a DEK: final; every use afterwards is refused.
    Revoke { id: String },
    /// Narrow a DEK's usage limits (--usage subset, --confirm, an earlier --not-after).
    Limit(limits_cmds::LimitCmd),
}

fn read_pin(opt: &PinOpt, prompt: &str) -> Result<Pin, Failure> {
    if opt.pin_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("reading the PIN from stdin: {e}"))?;
        let pin = Pin::new(line.trim_end_matches(['\r', '\n']));
        zeroize::Zeroize::zeroize(&mut line);
        if pin.expose().is_empty() {
            return Err("no PIN on stdin".to_string().into());
        }
        return Ok(pin);
    }
    rpassword::prompt_password(prompt)
        .map(Pin::new)
        .map_err(|e| format!("cannot prompt for the PIN ({e}); use --pin-stdin").into())
}

fn prompt(c: &Client) -> &'static str {
    if c.hello_info().root_kind == RootKind::Soft {
        "Passphrase: "
    } else {
        "Token PIN: "
    }
}

async fn run(cli: &Cli) -> Result<Option<Out>, Failure> {
    match &cli.command {
        Command::Cryppo(cmd) => return run_offline(cmd, cli.json),
        Command::Verify(cmd) => return identity_cmds::verify(cmd).map(Some),
        Command::Node(identity_cmds::NodeCmd::Verify {
            chain,
            key,
            at,
            anchor,
        }) => return identity_cmds::node_verify(chain, key, *at, anchor.as_deref()).map(Some),
        Command::Ssh(cmd) => return ssh_cmds::ssh(cli.socket.clone(), cmd).await,
        Command::Backup(cmd) => return backup_cmd(cli, cmd).await.map(Some),
        Command::Policy(cmd) => return policy_cmds::policy(cmd).map(Some),
        Command::Recovery(cmd) => {
            return recovery_cmds::run(cli.socket.clone(), cmd, cli.json)
                .await
                .map(Some)
        }
        _ => {}
    }
    let path = keyward_client::proto::paths::socket_path(cli.socket.clone());
    let mut c = Client::connect(&path).await?;
    // A request answered `conflict` (another agent changed the record; nothing was changed) is
    // retried a few times with short jittered waits, then reported (client/src/retry.rs).
    c.retry_conflicts(Some(keyward_client::ConflictRetry {
        on_retry: Some(say_conflict_retry),
        ..keyward_client::ConflictRetry::default()
    }));
    let c = c;
    let b64 = base64::engine::general_purpose::URL_SAFE;
    Ok(Some(match &cli.command {
        Command::Status => {
            let h = c.status().await?;
            let mut text = format!(
                "agent:       keywardd {} (protocol {})\nroot:        {}\ntoken:       {}\ninitialized: {}\nlocked:      {}\n",
                h.agent_version, h.protocol, h.root_kind, h.token,
                if h.initialized { "yes" } else { "no" },
                if h.locked { "yes" } else { "no" },
            );
            if let Some(s) = &h.ssh_socket {
                text.push_str(&format!("ssh socket:  {s}\n"));
            }
            if let Some(s) = &h.config {
                text.push_str(&format!("config:      {s}\n"));
            }
            if let Some(s) = &h.keystore {
                text.push_str(&format!("keystore:    {s}\n"));
            }
            if let Some(n) = h.pin_attempts_left {
                text.push_str(&format!("PIN attempts left: {n}\n"));
            }
            if let Some(k) = &h.keystore_check {
                use keyward_client::proto::ops::KeystoreCheckState as S;
                let state = match k.state {
                    S::Checking => "running",
                    S::Ok => "ok",
                    S::Failed => "FAILED: key operations are refused",
                };
                text.push_str(&format!("keystore check: {state} ({} ms)\n", k.ms));
                if let Some(d) = &k.detail {
                    text.push_str(&format!("  {d}\n"));
                }
            }
            if let Some(s) = &h.audit_log {
                text.push_str(&format!("audit log:   {s}\n"));
            }
            out(text, serde_json::to_value(&h).map_err(|e| e.to_string())?)
        }
        Command::Init { pin: opt, soft } => {
            let is_soft = c.hello_info().root_kind == RootKind::Soft;
            if *soft != is_soft {
                return Err(if is_soft {
                    "this agent's root is a passphrase (soft) root: run `keyward init --soft`"
                } else {
                    "--soft is for agents configured with a passphrase root ([root] kind = \"soft\")"
                }
                .to_string()
                .into());
            }
            let (pin, generated) = if *soft && !opt.pin_stdin {
                let p = keyward_client::passphrase::generate();
                (Pin::new(p.as_str()), Some(p))
            } else {
                (read_pin(opt, prompt(&c))?, None)
            };
            let r = c.init(pin).await?;
            let mut j = json!({"id": r.id, "token": r.token});
            if r.joined {
                j["joined"] = json!(true);
                eprintln!(
                    "keyward: this keystore already holds the identity: this device's root and \
                     device key were made, and filed as enrollment request {}.\n\
                     next: run `keyward device request` here, then `keyward device approve` on \
                     an enrolled device",
                    r.id
                );
            }
            if let Some(p) = &generated {
                // Shown once: on stderr in text mode, so `ID=$(keyward init --soft)` keeps the id
                // clean and the passphrase still reaches the person at the terminal.
                if cli.json {
                    j["passphrase"] = json!(p.as_str());
                } else {
                    eprintln!(
                        "\nYour passphrase ({} bits). It is shown only this once: write it down.\n\n    {}\n",
                        keyward_client::passphrase::BITS,
                        p.as_str()
                    );
                }
            }
            out(format!("{}\n", r.id), j)
        }
        Command::Unlock(opt) => {
            let pin = read_pin(opt, prompt(&c))?;
            c.unlock(pin).await?;
            out("unlocked\n", json!({"locked": false}))
        }
        Command::Lock => {
            c.lock().await?;
            out("locked\n", json!({"locked": true}))
        }
        Command::Kek(KekCmd::Create { label }) => {
            let r = c.kek_create(label.clone()).await?;
            out(format!("{}\n", r.id), json!({"id": r.id}))
        }
        Command::Kek(KekCmd::List { page }) => {
            let r = page.fetch("kek.list", |p| c.kek_list_page(p)).await?;
            cli::list_out(&r, key_table(&r.keys))
        }
        Command::Kek(KekCmd::Revoke { id }) => revoked_out(c.kek_revoke(id).await?),
        Command::Root(cmd) => root_cmd(&c, cmd).await?,
        Command::Device(cmd) => device_cmds::run(&c, cmd).await?,
        Command::Keystore(KeystoreCmd::Migrate { to }) => {
            // The agent resolves nothing against its own working directory: send an absolute
            // path.
            let text = to
                .to_str()
                .ok_or_else(|| format!("{}: not UTF-8", to.display()))?;
            // A URL goes as it is (the agent says whether it has that backend).
            let to = if text.contains("://") {
                text.to_string()
            } else {
                std::path::absolute(to)
                    .map_err(|e| format!("{}: {e}", to.display()))?
                    .to_str()
                    .ok_or_else(|| format!("{}: not UTF-8", to.display()))?
                    .to_string()
            };
            let r = c.keystore_migrate(&to).await?;
            let mut text = format!(
                "copied the keystore to {} and checked it ({} ms)\n",
                r.to, r.ms
            );
            for t in &r.tables {
                text.push_str(&format!("  {:<20} {}\n", t.table, t.rows));
            }
            text.push_str("the agent still uses its keystore: to switch, stop it, set `keystore` to the copy in its config, and start it\n");
            let tables: serde_json::Map<String, serde_json::Value> = r
                .tables
                .iter()
                .map(|t| (t.table.clone(), json!(t.rows)))
                .collect();
            out(text, json!({"to": r.to, "ms": r.ms, "tables": tables}))
        }
        Command::Kek(KekCmd::Rotate {
            id,
            drop_root,
            progress,
        }) => {
            let watcher = progress.then(|| rotation_progress::watch(path.clone(), id.clone()));
            let r = c.kek_rotate_dropping(id, drop_root).await;
            if let Some(w) = watcher {
                w.stop().await;
            }
            let r = r?;
            eprintln!(
                "keyward: KEK {}: {} wrapped keys moved to version {}",
                r.id, r.rewrapped, r.version
            );
            out(
                format!("{}\n", r.version),
                serde_json::to_value(&r).map_err(|e| e.to_string())?,
            )
        }
        Command::Dek(DekCmd::Show { id }) => {
            let k = c.dek_show(id).await?;
            let v = serde_json::to_value(&k).map_err(|e| e.to_string())?;
            let text = cli::dek_table(std::slice::from_ref(&k)) + &limits_cmds::limits_text(&k);
            out(text, v)
        }
        Command::Dek(DekCmd::Limit(cmd)) => limits_cmds::limit(&c, cmd).await?,
        Command::Dek(DekCmd::Rotate { id }) => {
            let r = c.dek_rotate(id).await?;
            out(
                format!("{}\n", r.version),
                json!({"id": r.id, "version": r.version}),
            )
        }
        Command::Dek(DekCmd::MinVersion { id, n }) => {
            let r = c.dek_min_version(id, *n).await?;
            if let Some(w) = &r.warning {
                eprintln!("keyward: warning: {w}");
            }
            out(
                format!(
                    "DEK {}: minimum version {} (newest {})\n",
                    r.id, r.min_version, r.version
                ),
                serde_json::to_value(&r).map_err(|e| e.to_string())?,
            )
        }
        Command::Dek(DekCmd::Revoke { id }) => revoked_out(c.dek_revoke(id).await?),
        Command::Rewrap { dek, io } => {
            let input = cli::read_input(&io.input)?;
            let text = String::from_utf8(input)
                .map_err(|_| "the input is not a Cryppo string (not UTF-8)".to_string())?;
            let ct = c.rewrap(text.trim(), dek.as_deref()).await?;
            if io.output.is_some() || !cli.json {
                write_output(&io.output, format!("{ct}\n").as_bytes())?;
                return Ok(cli.json.then(|| out("", json!({"written": true}))));
            }
            out("", json!({"ciphertext": ct}))
        }
        Command::Dek(DekCmd::Create {
            kek,
            purpose,
            exportable,
            label,
            limits,
        }) => {
            let args = DekCreateArgs {
                kek: kek.clone(),
                purpose: match purpose {
                    PurposeArg::Personal => Purpose::Personal,
                    PurposeArg::Sharing => Purpose::Sharing,
                },
                exportable: *exportable,
                label: label.clone(),
                limits: limits.spec(),
            };
            let r = c.dek_create(&args).await?;
            out(format!("{}\n", r.id), json!({"id": r.id}))
        }
        Command::Dek(DekCmd::List { kek, page }) => {
            let r = page
                .fetch("dek.list", |p| {
                    c.dek_list_page(DekListArgs {
                        kek: kek.clone(),
                        limit: p.limit,
                        after: p.after,
                    })
                })
                .await?;
            cli::list_out(&r, cli::dek_table(&r.keys))
        }
        Command::Dek(DekCmd::Export { id, output }) => {
            let r = c.dek_export(id).await?;
            let key = zeroize::Zeroizing::new(b64.encode(r.key.expose()));
            if output.is_some() {
                write_output(output, format!("{}\n", key.as_str()).as_bytes())?;
                out("", json!({"id": r.id, "written": true}))
            } else if cli.json {
                out("", json!({"id": r.id, "key": key.as_str()}))
            } else {
                out(format!("{}\n", key.as_str()), Value::Null)
            }
        }
        Command::Encrypt {
            dek,
            stream,
            cryppo,
            io,
        } => {
            let format = match (stream, cryppo) {
                (true, _) => stream_cmds::Format::Stream,
                (_, true) => stream_cmds::Format::Cryppo,
                _ => stream_cmds::Format::Auto,
            };
            return stream_cmds::encrypt(&c, dek, io, format, cli.json).await;
        }
        Command::Decrypt { dek, io } => {
            return stream_cmds::decrypt(&c, dek.as_deref(), io, cli.json).await;
        }
        Command::Keypair(cmd) => identity_cmds::keypair(&c, cmd).await?,
        Command::Sign(cmd) => return identity_cmds::sign(&c, cmd, cli.json).await,
        Command::Share(cmd) => identity_cmds::share(&c, cmd).await?,
        Command::Node(cmd) => identity_cmds::node(&c, cmd).await?,
        Command::Seal(cmd) => return identity_cmds::seal(&c, cmd, cli.json).await,
        Command::Open(cmd) => return identity_cmds::open(&c, cmd, cli.json).await,
        Command::Agents(cmd) => return agents_cmds::agents(&c, cmd, cli.json).await,
        Command::Cryppo(_)
        | Command::Verify(_)
        | Command::Ssh(_)
        | Command::Doctor { .. }
        | Command::Policy(_)
        | Command::Audit(_)
        | Command::Recovery(_)
        | Command::Backup(_) => {
            return Err("internal: offline command reached the agent path"
                .to_string()
                .into())
        }
    }))
}

/// What `kek/dek/keypair revoke` print: every key revoked, one a line.
pub(crate) fn revoked_out(r: keyward_client::proto::ops::Revoked) -> Out {
    let mut text = String::new();
    for id in &r.revoked {
        text.push_str(&format!("revoked {id}\n"));
    }
    out(text, json!({"id": r.id, "revoked": r.revoked}))
}

/// `keyward root add|list|remove`.
async fn root_cmd(c: &Client, cmd: &RootCmd) -> Result<Out, Failure> {
    match cmd {
        RootCmd::Add { config, pin, label } => {
            let text = std::fs::read_to_string(config)
                .map_err(|e| format!("reading {}: {e}", config.display()))?;
            let path = std::fs::canonicalize(config)
                .ok()
                .map(|p| p.display().to_string());
            let pin = read_pin(
                pin,
                "PIN of the root to enroll (its token's PIN, or passphrase): ",
            )?;
            let r = c.root_add(text, path, pin, label.clone()).await?;
            eprintln!(
                "keyward: root {} enrolled ({}); {} KEKs wrapped under it",
                r.id,
                if r.created {
                    "made on its token now"
                } else {
                    "found on its token"
                },
                r.wrapped
            );
            Ok(out(
                format!("{}\n", r.id),
                serde_json::to_value(&r).map_err(|e| e.to_string())?,
            ))
        }
        RootCmd::List { page } => {
            let r = match page.limit {
                Some(limit) => {
                    c.root_list_page(ListArgs {
                        limit: Some(limit),
                        after: page.after.clone(),
                    })
                    .await?
                }
                None => c.root_list(page.after.clone()).await?,
            };
            let mut text = String::new();
            for e in &r.roots {
                text.push_str(&format!(
                    "{} {}  {:<15} {}  {}\n",
                    if e.current { "*" } else { " " },
                    e.id,
                    e.scheme,
                    e.label.as_deref().unwrap_or("-"),
                    e.locator.as_deref().unwrap_or("-"),
                ));
            }
            if let Some(next) = &r.next {
                eprintln!("more roots: --after {next}");
            }
            Ok(out(
                text,
                serde_json::to_value(&r).map_err(|e| e.to_string())?,
            ))
        }
        RootCmd::Rotate {
            config,
            pin,
            label,
            destroy_old,
            compromised,
        } => {
            let text = std::fs::read_to_string(config)
                .map_err(|e| format!("reading {}: {e}", config.display()))?;
            let path = std::fs::canonicalize(config)
                .ok()
                .map(|p| p.display().to_string());
            let pin = read_pin(
                pin,
                "PIN of the new root (its token's PIN, or passphrase): ",
            )?;
            let r = c
                .root_rotate(&keyward_client::proto::ops::RootRotateArgs {
                    config: text,
                    path,
                    pin,
                    label: label.clone(),
                    destroy_old: *destroy_old,
                    compromised: *compromised,
                })
                .await?;
            eprintln!(
                "keyward: rotated from root {} to root {} ({}); {} KEKs moved under it",
                r.old,
                r.id,
                if r.enrolled {
                    "enrolled now"
                } else {
                    "already enrolled"
                },
                r.moved
            );
            if let Some(d) = &r.destroyed {
                eprintln!("keyward: destroyed the old root: {d}");
            }
            if let Some(d) = &r.not_destroyed {
                eprintln!("keyward: the old root was not destroyed: {d}");
            }
            if !r.keks.is_empty() {
                eprintln!(
                    "keyward: {} KEKs will be rotated when the agent unlocks on the new root",
                    r.keks.len()
                );
            }
            if !r.deks.is_empty() {
                eprintln!(
                    "keyward: re-encrypt the data of these {} DEKs (`keyward dek rotate ID`, then `keyward rewrap`):",
                    r.deks.len()
                );
            }
            eprintln!(
                "keyward: the agent is locked: restart it with {} (the old root no longer opens anything)",
                config.display()
            );
            let mut text = format!("{}\n", r.id);
            for d in &r.deks {
                text.push_str(&format!("dek {d}\n"));
            }
            Ok(out(
                text,
                serde_json::to_value(&r).map_err(|e| e.to_string())?,
            ))
        }
        RootCmd::Remove { id } => {
            let r = c.root_remove(id).await?;
            Ok(out(
                format!("removed {}\n", r.id),
                json!({"id": r.id, "deleted": r.deleted}),
            ))
        }
    }
}

/// The keystore the agent on the socket serves, if an agent answers.
async fn served_keystore(cli: &Cli) -> Option<PathBuf> {
    let path = keyward_client::proto::paths::socket_path(cli.socket.clone());
    let c = Client::connect(&path).await.ok()?;
    c.status().await.ok()?.keystore.map(PathBuf::from)
}

async fn backup_cmd(cli: &Cli, cmd: &BackupCmd) -> Result<Out, Failure> {
    match cmd {
        BackupCmd::Export {
            output,
            keystore,
            force,
        } => {
            let keystore = match keystore {
                Some(k) => k.clone(),
                None => served_keystore(cli).await.ok_or_else(|| {
                    "no agent answers on the socket to name its keystore: give --keystore FILE"
                        .to_string()
                })?,
            };
            // The agent names a database keystore by its location (`postgres://...`), never
            // a file: this command copies SQLite files only.
            if keystore.to_string_lossy().starts_with("postgres://") {
                return Err(format!(
                    "the agent serves a PostgreSQL keystore ({}): `backup export` copies a \
                     SQLite keystore file; back the database up with the database's own tools \
                     (pg_dump), or copy the keystore into a file with `keyward keystore migrate \
                     --to /absolute/path.db`",
                    keystore.display()
                )
                .into());
            }
            let s = backup::export(&keystore, output, *force)?;
            Ok(out(s.to_text("wrote", output), s.to_json(output)))
        }
        BackupCmd::Import {
            input,
            keystore,
            force,
        } => {
            let serving = served_keystore(cli).await;
            let (s, kept) = backup::import(input, keystore, *force, serving.as_deref())?;
            let mut text = s.to_text("restored", keystore);
            let mut json = s.to_json(keystore);
            if let Some(k) = &kept {
                text.push_str(&format!(
                    "the previous keystore is kept as {}\n",
                    k.display()
                ));
                json["previous"] = json!(k.display().to_string());
            }
            text.push_str("start the agent and unlock it: every record's MAC is checked then\n");
            Ok(out(text, json))
        }
    }
}

/// The note on stderr before a retry after `conflict` (stdout keeps only the result).
fn say_conflict_retry(op: &str, attempt: u32, wait: std::time::Duration) {
    eprintln!(
        "keyward: {op}: another agent changed the record meanwhile (conflict, attempt {attempt}); \
         nothing was changed, retrying in {} ms",
        wait.as_millis()
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyward: starting a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Doctor { config, keystore } = &cli.command {
        let opts = doctor::Options {
            socket: keyward_client::proto::paths::socket_path(cli.socket.clone()),
            config: config.clone(),
            keystore: keystore.clone(),
        };
        let checks = rt.block_on(doctor::run(&opts));
        let (text, json) = doctor::render(&checks);
        if cli.json {
            println!("{json}");
        } else {
            print!("{text}");
        }
        return if json["ok"] == json!(true) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Command::Agents(cmd @ agents_cmds::AgentsCmd::Verify { .. }) = &cli.command {
        let (code, text, json) = agents_cmds::verify(cmd);
        if cli.json {
            println!("{json}");
        }
        if code == 0 {
            if !cli.json {
                print!("{text}");
            }
        } else {
            eprintln!("keyward: {text}");
        }
        return ExitCode::from(code);
    }
    if let Command::Audit(cmd) = &cli.command {
        let socket = keyward_client::proto::paths::socket_path(cli.socket.clone());
        match rt.block_on(audit_cmds::audit(&socket, cmd)) {
            Ok((o, ok)) => {
                if cli.json {
                    println!("{}", o.json);
                } else {
                    print!("{}", o.text);
                }
                return if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
            Err(f) => {
                if cli.json {
                    println!(
                        "{}",
                        json!({ "error": {"code": f.body.as_ref().map_or("client", |b| b.code.as_str()), "message": f.message} })
                    );
                }
                eprintln!("keyward: {}", f.message);
                return ExitCode::FAILURE;
            }
        }
    }
    match rt.block_on(run(&cli)) {
        Ok(Some(o)) => {
            if cli.json {
                println!("{}", o.json);
            } else {
                print!("{}", o.text);
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(f) => {
            if cli.json {
                let err = match &f.body {
                    Some(b) => serde_json::to_value(b).unwrap_or(Value::Null),
                    None => {
                        let mut e = json!({
                            "code": f.client_code.unwrap_or("client"),
                            "message": f.message,
                        });
                        if let Some(chunk) = f.chunk {
                            e["chunk"] = json!(chunk);
                        }
                        e
                    }
                };
                println!("{}", json!({ "error": err }));
            }
            eprintln!("keyward: {}", f.message);
            ExitCode::FAILURE
        }
    }
}
