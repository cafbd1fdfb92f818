//! Running under systemd: socket activation, readiness, the watchdog and journald logging.
//!
//! - [`take_sockets`]: the listening sockets systemd passed (`LISTEN_FDS`, `LISTEN_PID`,
//!   `LISTEN_FDNAMES`), read through the `sd-notify` crate (names, `LISTEN_PID` check,
//!   close-on-exec) and taken over through `listenfd` (checked to be Unix stream sockets, owned
//!   safely). Names: `keyward` is the CBOR socket, `ssh` the SSH door; without names, the first
//!   is `keyward` and the second `ssh`. An inherited socket's file is never removed by the agent
//!   (systemd made it and keeps it).
//! - [`notify`]: `READY=1`, `STOPPING=1`, `STATUS=`; nothing happens without `NOTIFY_SOCKET`.
//! - [`watchdog`]: `WATCHDOG=1` every half `WATCHDOG_USEC`, when the unit sets `WatchdogSec=`.
//! - [`init_logging`]: to the journal when `JOURNAL_STREAM` is set (systemd connected stderr to
//!   journald), else to stderr.
//!
//! Inherited descriptors are close-on-exec, so a pinentry or askpass child never holds them.
//! [`take_sockets`] must run before any thread starts (it removes `LISTEN_PID`/`LISTEN_FDS` from
//! the environment). This module must never hand-parse the activation variables or touch a
//! descriptor it was not passed.

use std::os::unix::net::UnixListener;
use thiserror::Error;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `FileDescriptorName=` of the CBOR socket in `keywardd.socket`.
pub const CBOR_NAME: &str = "keyward";
/// `FileDescriptorName=` of the SSH-agent socket.
pub const SSH_NAME: &str = "ssh";

/// Why the inherited sockets could not be used.
#[derive(Debug, Error)]
pub enum ActivationError {
    #[error("reading LISTEN_FDS/LISTEN_FDNAMES")]
    Env(#[source] std::io::Error),
    #[error("inherited socket `{name}` (descriptor {index} of LISTEN_FDS) is not a listening Unix stream socket")]
    NotUnixStream {
        name: String,
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// The sockets systemd passed, by role. Both `None`: not socket-activated.
#[derive(Debug, Default)]
pub struct Sockets {
    pub cbor: Option<UnixListener>,
    pub ssh: Option<UnixListener>,
}

impl Sockets {
    pub fn activated(&self) -> bool {
        self.cbor.is_some() || self.ssh.is_some()
    }
}

/// Take the listening sockets passed by systemd (see the module docs). Call before threads.
pub fn take_sockets() -> Result<Sockets, ActivationError> {
    // Names first: `listenfd` removes LISTEN_PID/LISTEN_FDS when it reads them.
    let names: Vec<String> = sd_notify::listen_fds_with_names()
        .map_err(ActivationError::Env)?
        .map(|(_, name)| name)
        .collect();
    let mut out = Sockets::default();
    if names.is_empty() {
        return Ok(out);
    }
    let mut fds = listenfd::ListenFd::from_env();
    let unnamed = names.iter().all(|n| n == "unknown" || n.is_empty());
    for (index, name) in names.iter().enumerate() {
        let role = match (unnamed, index, name.as_str()) {
            (true, 0, _) | (false, _, CBOR_NAME) => &mut out.cbor,
            (true, 1, _) | (false, _, SSH_NAME) => &mut out.ssh,
            _ => {
                tracing::warn!(
                    name,
                    index,
                    "ignoring an inherited socket with an unknown name"
                );
                continue;
            }
        };
        let listener =
            fds.take_unix_listener(index)
                .map_err(|source| ActivationError::NotUnixStream {
                    name: name.clone(),
                    index,
                    source,
                })?;
        if let Some(l) = listener {
            *role = Some(l);
        }
    }
    Ok(out)
}

/// What to tell the service manager.
#[derive(Debug, Clone, Copy)]
pub enum State {
    Ready,
    Stopping,
}

/// Tell systemd `READY=1` or `STOPPING=1` (a no-op without `NOTIFY_SOCKET`); failures are logged.
pub fn notify(state: State) {
    let s = match state {
        State::Ready => sd_notify::NotifyState::Ready,
        State::Stopping => sd_notify::NotifyState::Stopping,
    };
    if let Err(e) = sd_notify::notify(&[s]) {
        tracing::warn!(error = %e, ?state, "could not notify the service manager");
    }
}

/// When the unit sets `WatchdogSec=`, a task sending `WATCHDOG=1` every half period (it runs on
/// the async runtime, so a stuck runtime stops the pings and systemd restarts the agent).
pub fn watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    let every = (period / 2).max(std::time::Duration::from_millis(100));
    tracing::info!(?period, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                tracing::warn!(error = %e, "watchdog notification failed");
            }
        }
    }))
}

/// Install the global logger: journald when `JOURNAL_STREAM` is set and the journal answers,
/// else stderr (colours only on a terminal).
pub fn init_logging(filter: tracing_subscriber::EnvFilter) {
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|l| l.with_syslog_identifier("keywardd".into()));
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .init();
}
