//! keywardd: start-up. Harden the process, read the config, open the keystore and the root,
//! then serve the socket until SIGTERM or SIGINT.
#![forbid(unsafe_code)]
// No panics outside tests (request paths and start-up return typed errors).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use clap::{Parser, Subcommand};
use keyward_agent::activation::{self, State};
use keyward_agent::config::{Config, ConfigError};
use keyward_agent::error::AgentError;
use keyward_agent::hardening::{self, HardeningError};
use keyward_agent::hierarchy::Hierarchy;
use keyward_agent::keystore::{Keystore, KeystoreError};
use keyward_agent::root::RootError;
use keyward_agent::server::{self, ServerError};
use keyward_agent::service::Service;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use thiserror::Error;

/// Why keywardd did not start (or stopped). Each variant says which step failed; the cause is
/// its `source`, printed after it by `main`.
#[derive(Debug, Error)]
enum StartError {
    #[error("disabling core dumps")]
    CoreDumps(#[source] HardeningError),
    #[error("log filter `{filter}`")]
    LogFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("configuration")]
    Config(#[source] ConfigError),
    #[error("opening the keystore")]
    Keystore(#[source] KeystoreError),
    #[error("starting the keystore check")]
    KeystoreCheck(#[source] std::io::Error),
    #[error("opening the root")]
    Root(#[source] RootError),
    #[error("resetting the wrong-PIN counter")]
    ResetPinAttempts(#[source] AgentError),
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    #[error("installing the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the audit log")]
    Audit(#[source] keyward_agent::audit::AuditError),
    #[error("loading the policy file")]
    Policy(#[source] keyward_agent::policy::PolicyError),
    #[error("binding the socket")]
    Bind(#[source] ServerError),
    #[error("taking the sockets passed by systemd")]
    Activation(#[source] keyward_agent::activation::ActivationError),
    #[error("serving the socket passed by systemd")]
    Inherited(#[source] std::io::Error),
}

/// `e: cause: cause…`, skipping a cause whose text its parent's message already includes (most
/// of the agent's errors print their source inline as well).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        cur = c.source();
    }
    out
}

#[derive(Parser)]
#[command(name = "keywardd", version, about = "Keyward key agent")]
struct Cli {
    /// Agent configuration (TOML). Default: $KEYWARD_CONFIG, else
    /// $XDG_CONFIG_HOME/keyward/keyward.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Socket path (overrides the config; KEYWARD_SOCK overrides both).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Log filter (tracing syntax), e.g. `info` or `keyward_agent=debug`. Default: $KEYWARD_LOG or info.
    #[arg(long)]
    log: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the socket (the default).
    Run,
    /// Reset the wrong-PIN counter after a lockout (run with the agent stopped).
    ResetPinAttempts,
    /// Check the configuration and print what it names as JSON (for `keyward doctor`); opens
    /// neither the keystore nor the root.
    CheckConfig,
}

fn config_path(cli: &Cli) -> PathBuf {
    if let Some(p) = &cli.config {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("KEYWARD_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("keyward").join("keyward.toml")
}

fn start(cli: Cli) -> Result<(), StartError> {
    hardening::disable_core_dumps().map_err(StartError::CoreDumps)?;
    // Before any thread: systemd's sockets (close-on-exec from here on).
    let inherited = activation::take_sockets().map_err(StartError::Activation)?;
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("KEYWARD_LOG").ok())
        .unwrap_or_else(|| "info".into());
    activation::init_logging(
        tracing_subscriber::EnvFilter::try_new(&filter)
            .map_err(|source| StartError::LogFilter { filter, source })?,
    );

    let path = config_path(&cli);
    let config = Config::load(&path).map_err(StartError::Config)?;
    if let Some(Command::CheckConfig) = cli.command {
        // The policy file too: a config whose policy does not load would not start.
        keyward_agent::policy::PolicyState::load(config.policy.as_deref())
            .map_err(StartError::Policy)?;
        println!("{}", config.summary(&path));
        return Ok(());
    }
    // Still before any thread: the environment every root's module reads ([root.env] of `[root]`
    // and each `[[extra_root]]`), set once, never later (root/env.rs).
    keyward_agent::root::env::apply_at_startup(&config.root_env().map_err(StartError::Root)?);
    // SQLite's full check of the keystore runs just after the socket is up (integrity.rs);
    // `reset-pin-attempts` writes, so it checks first, as before.
    let opening = std::time::Instant::now();
    let (ks, check_pending) = if let Some(pg) = &config.postgres {
        // A PostgreSQL keystore: the server checks its own storage; SQLite's file check does
        // not apply. A database that is down stops the start within its connect timeout.
        (Keystore::open_postgres(pg), false)
    } else if let Some(Command::ResetPinAttempts) = cli.command {
        (Keystore::open(&config.keystore), false)
    } else {
        match Keystore::open_deferring_check(&config.keystore) {
            Ok((ks, pending)) => (Ok(ks), pending),
            Err(e) => (Err(e), false),
        }
    };
    let ks = Arc::new(ks.map_err(StartError::Keystore)?);
    let opened_in = opening.elapsed();
    let root = keyward_agent::root::from_config(&config.root).map_err(StartError::Root)?;
    let h = Arc::new(Hierarchy::new(ks.clone(), root, config.unlock));
    if let Some(Command::ResetPinAttempts) = cli.command {
        h.reset_pin_attempts()
            .map_err(StartError::ResetPinAttempts)?;
        eprintln!("keywardd: wrong-PIN counter reset in {}", ks.location());
        return Ok(());
    }

    // The audit log before the socket: a second agent on the same log stops here.
    let audit = match &config.audit {
        Some(a) => {
            let path = a
                .path
                .clone()
                // Resolved by config.rs (beside the keystore file, or beside the config
                // file for a database keystore); this default is for a config built otherwise.
                .unwrap_or_else(|| ks.path().unwrap_or(&path).with_file_name("audit.log"));
            Some(
                keyward_agent::audit::Audit::open(a, &path, h.clone())
                    .map_err(StartError::Audit)?,
            )
        }
        None => None,
    };
    let socket = keyward_proto::paths::socket_path(cli.socket.clone().or(config.socket.clone()));
    let limits = server::Limits::from_config(&config.limits, &config.server);
    // Before the sockets: ECDSA nonces made ahead on idle CPU (nonces.rs); filled once a key
    // is cached.
    let nonces = config.server.ecdsa_nonces;
    match keyward_agent::nonces::NoncePool::global().start(nonces) {
        Ok(locked) if nonces > 0 => {
            tracing::debug!(nonces, mlocked = locked, "ECDSA nonce pool started")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            error = %e,
            "ECDSA nonce pool not started (its thread could not be spawned); P-256 signatures use aws-lc's own nonces"
        ),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    rt.block_on(async move {
        // Handlers first, socket second: a SIGTERM that arrives the moment the socket exists
        // must still shut down cleanly (remove the socket, lock), not kill the process.
        use tokio::signal::unix::{signal, SignalKind};
        let installing = |name| {
            move |source| StartError::Signal {
                signal: name,
                source,
            }
        };
        let mut term = signal(SignalKind::terminate()).map_err(installing("SIGTERM"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(installing("SIGINT"))?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        };
        let prompt = keyward_agent::prompt::Prompter::new(&config.prompt).map(Arc::new);
        // Keys whose usage limits ask for confirmation are confirmed through the same pinentry.
        if let Some(p) = &prompt {
            h.set_prompter(p.clone());
        }
        // A policy file that does not load stops the start (never run unguarded by mistake);
        // on SIGHUP a bad file keeps the policy in force.
        let policy = Arc::new(
            keyward_agent::policy::PolicyState::load(config.policy.as_deref())
                .map_err(StartError::Policy)?,
        );
        let _hup = keyward_agent::policy::reload_on_sighup(policy.clone())
            .map_err(installing("SIGHUP"))?;
        let mut service = Service::new(h.clone())
            .with_prompt(prompt.clone())
            .with_policy(policy.clone())
            .with_audit(audit.clone())
            .with_config_path(&std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone()));
        // The SSH door: a second socket, stopped by the same signal as the first.
        let (stop_ssh, ssh_stopped) = tokio::sync::watch::channel(());
        let activated = inherited.activated();
        let ssh_task = if config.ssh.enabled || inherited.ssh.is_some() {
            let ssh_bound = match inherited.ssh {
                Some(l) => server::Bound::inherited(l).map_err(StartError::Inherited)?,
                None => server::bind(&keyward_proto::paths::ssh_socket_path(
                    config.ssh.socket.clone(),
                    &socket,
                ))
                .map_err(StartError::Bind)?,
            };
            let path = ssh_bound.path().to_path_buf();
            let settings = keyward_agent::ssh::SshSettings {
                askpass: config.ssh.askpass.clone(),
                pinentry: prompt.clone(),
                policy: policy.clone(),
                audit: audit.clone(),
            };
            let agent = Arc::new(keyward_agent::ssh::requests::SshAgent::new(
                h.clone(),
                settings,
            ));
            service = service.with_ssh(&path, agent.clone());
            tracing::info!(socket = %path.display(), "keywardd SSH agent listening");
            let mut stopped = ssh_stopped.clone();
            let stop = async move {
                let _ = stopped.changed().await;
            };
            // The same limits (and so the same connection cap) as the CBOR socket.
            Some(tokio::spawn(keyward_agent::ssh::server::serve(
                ssh_bound,
                agent,
                limits.clone(),
                stop,
            )))
        } else {
            None
        };
        // The CBOR socket last: once it exists (what clients and tests wait for), the SSH
        // socket does too.
        let _usr1 =
            keyward_agent::idle::lock_on_sigusr1(service.clone()).map_err(installing("SIGUSR1"))?;
        let deadlines = keyward_agent::idle::lock_on_deadlines(
            service.clone(),
            h.clone(),
            config.unlock.deadlines(),
        );
        let bound = match inherited.cbor {
            Some(l) => server::Bound::inherited(l).map_err(StartError::Inherited)?,
            None => server::bind(&socket).map_err(StartError::Bind)?,
        };
        // The socket is up: now the keystore's full check, on a thread of its own; key
        // operations wait for it (hello and lock answer at once).
        let check = if let (true, Some(file)) = (check_pending, ks.path()) {
            keyward_agent::integrity::KeystoreCheck::start(file.to_path_buf())
                .map_err(StartError::KeystoreCheck)?
        } else {
            // Checked at open, before a migration (its time is at most the whole open's).
            keyward_agent::integrity::KeystoreCheck::passed(opened_in)
        };
        h.set_keystore_check(check.clone());
        activation::notify(State::Ready);
        let watchdog = activation::watchdog();
        tracing::info!(
            socket = %bound.path().display(),
            activated,
            keystore = %ks.location(),
            root = %h.describe(),
            "keywardd listening"
        );
        server::serve(bound, service, limits, shutdown).await;
        activation::notify(State::Stopping);
        if let Some(w) = watchdog {
            w.abort();
        }
        if let Some(d) = deadlines {
            d.abort();
        }
        let _ = stop_ssh.send(());
        if let Some(t) = ssh_task {
            let _ = t.await;
        }
        drop(ssh_stopped);
        // The last entries and a signed checkpoint, while the key is still there.
        if let Some(a) = &audit {
            let a = a.clone();
            let _ = tokio::task::spawn_blocking(move || a.shutdown()).await;
        }
        // Destroy unwrapped keys in the token before exit.
        let _ = h.lock();
        // A start-up check still running ends now: its connection closes before the agent's,
        // which is then the last one and removes the WAL.
        check.stop();
        Ok::<(), StartError>(())
    })
}

fn main() -> ExitCode {
    match start(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keywardd: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}
