//! The keystore's start-up check (SQLite's full `integrity_check`), run on a thread of its own
//! just after the socket is bound, and the gate that holds key operations until it passes.
//!
//! `keywardd` opens the keystore without the check ([`Keystore::open_deferring_check`]; a
//! keystore that needs a migration is still checked before it is migrated), binds its sockets,
//! and then starts [`KeystoreCheck::start`]. While the check runs, `hello` (status, ping) and
//! `lock` answer at once; every other request waits up to [`GATE_WAIT`] for the check and is
//! then refused with `keystore_checking`. If the check fails, it is logged at error, `hello`
//! reports it (`keystore_check: {state: failed, ...}`), and every key operation is refused with
//! `keystore_error` naming the file and the damage, for as long as the process runs.
//!
//! This module must never let a key operation through before the check passed, and never
//! change the keystore (it reads it through its own read-only connection).

use crate::error::AgentError;
use crate::keystore::{CheckStop, Keystore, KeystoreError};
use keyward_proto::ops::{KeystoreCheck as WireCheck, KeystoreCheckState};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a request that arrives during the check waits for it before `keystore_checking`.
/// Small keystores check in milliseconds, so clients that connect the moment the socket exists
/// (scripts, tests, the PKCS#11 module) are not refused for nothing.
pub const GATE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
enum State {
    Checking,
    Passed {
        ms: u64,
    },
    Failed {
        ms: u64,
        path: PathBuf,
        detail: String,
    },
}

/// The check's state, shared by the thread running it and every request.
#[derive(Debug)]
pub struct KeystoreCheck {
    started: Instant,
    state: Mutex<State>,
    done: Condvar,
    /// Ends the check's connection early at the agent's stop ([`KeystoreCheck::stop`]).
    stop: CheckStop,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl KeystoreCheck {
    /// A check that already passed, in `took` (the keystore was checked when it was opened,
    /// before a migration).
    pub fn passed(took: Duration) -> Arc<KeystoreCheck> {
        Self::in_state(State::Passed { ms: ms(took) })
    }

    /// A check in `state`, started now, with no thread yet.
    fn in_state(state: State) -> Arc<KeystoreCheck> {
        Arc::new(KeystoreCheck {
            started: Instant::now(),
            state: Mutex::new(state),
            done: Condvar::new(),
            stop: CheckStop::default(),
            thread: Mutex::new(None),
        })
    }

    /// Run the check of the keystore at `path` on a thread of its own.
    pub fn start(path: PathBuf) -> std::io::Result<Arc<KeystoreCheck>> {
        let check = Self::in_state(State::Checking);
        let c = check.clone();
        let t = std::thread::Builder::new()
            .name("keystore-check".into())
            .spawn(move || {
                let result = Keystore::check_file_with(&path, &c.stop);
                if c.stop.stopped() {
                    // Ended by the agent's stop: no verdict (and none logged as damage).
                    tracing::debug!("keystore check stopped: the agent is stopping");
                    return;
                }
                c.finish(&path, result);
            })?;
        *check.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        Ok(check)
    }

    /// At the agent's stop: end a check still running (its statement interrupted) and wait for
    /// its thread, so its connection is closed before the agent's own. The agent's connection
    /// is then the last one, and closing it checkpoints and removes the WAL; a check left
    /// running at exit kept the WAL (`keystore_check::a_stop_during_the_check_*`).
    pub fn stop(&self) {
        self.stop.stop();
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self, checked: &std::path::Path, result: Result<(), KeystoreError>) {
        let took = ms(self.started.elapsed());
        let state = match result {
            Ok(()) => {
                tracing::info!(ms = took, "keystore check passed");
                State::Passed { ms: took }
            }
            Err(e) => {
                let (path, detail) = match e {
                    KeystoreError::Damaged { path, detail } => (path, detail),
                    other => (checked.to_path_buf(), other.to_string()),
                };
                tracing::error!(
                    ms = took,
                    path = %path.display(),
                    detail = %detail,
                    "keystore check FAILED: every key operation is refused; restore the keystore from a backup"
                );
                State::Failed {
                    ms: took,
                    path,
                    detail,
                }
            }
        };
        *self.lock() = state;
        self.done.notify_all();
    }

    /// Ok once the check passed; waits up to `wait` while it runs, then `keystore_checking`;
    /// after a failure, the keystore error (wire `keystore_error`).
    pub fn gate(&self, wait: Duration) -> Result<(), AgentError> {
        let guard = self.lock();
        let (guard, _) = self
            .done
            .wait_timeout_while(guard, wait, |s| matches!(s, State::Checking))
            .unwrap_or_else(|p| p.into_inner());
        match &*guard {
            State::Passed { .. } => Ok(()),
            State::Checking => Err(AgentError::KeystoreChecking {
                ms: ms(self.started.elapsed()),
            }),
            State::Failed { path, detail, .. } => {
                Err(AgentError::Keystore(KeystoreError::Damaged {
                    path: path.clone(),
                    detail: detail.clone(),
                }))
            }
        }
    }

    /// What `hello` reports.
    pub fn report(&self) -> WireCheck {
        match &*self.lock() {
            State::Checking => WireCheck {
                state: KeystoreCheckState::Checking,
                ms: ms(self.started.elapsed()),
                detail: None,
            },
            State::Passed { ms } => WireCheck {
                state: KeystoreCheckState::Ok,
                ms: *ms,
                detail: None,
            },
            State::Failed { ms, detail, .. } => WireCheck {
                state: KeystoreCheckState::Failed,
                ms: *ms,
                detail: Some(detail.clone()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_proto::ErrorCode;

    fn checking() -> Arc<KeystoreCheck> {
        KeystoreCheck::in_state(State::Checking)
    }

    #[test]
    fn requests_during_the_check_are_refused_with_keystore_checking() {
        let c = checking();
        let e = c.gate(Duration::from_millis(10)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::KeystoreChecking);
        assert_eq!(c.report().state, KeystoreCheckState::Checking);
    }

    #[test]
    fn a_waiting_request_goes_through_when_the_check_passes() {
        let c = checking();
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.gate(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        c.finish(std::path::Path::new("/k.db"), Ok(()));
        t.join().unwrap().unwrap();
        assert_eq!(c.report().state, KeystoreCheckState::Ok);
    }

    #[test]
    fn a_failed_check_refuses_every_request_with_the_damage() {
        let c = checking();
        c.finish(
            std::path::Path::new("/k.db"),
            Err(KeystoreError::Damaged {
                path: "/k.db".into(),
                detail: "integrity_check: broken".into(),
            }),
        );
        for _ in 0..3 {
            let e = c.gate(Duration::ZERO).unwrap_err();
            assert_eq!(e.code(), ErrorCode::KeystoreError);
            assert!(e.to_string().contains("/k.db") && e.to_string().contains("damaged"));
        }
        let r = c.report();
        assert_eq!(r.state, KeystoreCheckState::Failed);
        assert_eq!(r.detail.as_deref(), Some("integrity_check: broken"));
    }
}
