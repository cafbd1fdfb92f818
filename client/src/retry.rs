//! Retrying a request the agent answered with `conflict` ([`ConflictRetry`]).
//!
//! On a keystore that several agents share (PostgreSQL), every record has a row version; an
//! agent whose write finds the row changed by another agent since it read it answers the typed
//! `conflict` code. Retrying is safe, and that is why the CLI does it by itself: the agent only
//! answers `conflict` from a keystore transaction that was rolled back (the row-version check
//! failed, or PostgreSQL refused a serialization or deadlock), so the failed request changed
//! nothing in the keystore, and the retried request reads the record afresh and applies the
//! same change to what is there now. A request that made several transactions (a KEK rotation)
//! keeps its progress in its journal and resumes from it. The retries are few and their waits
//! short and jittered (so two agents racing on one record do not keep colliding in lock-step);
//! after the last one the `conflict` is reported, saying how many attempts were made.
//!
//! This module must never retry any other error code: only `conflict` means "nothing was
//! changed, try again".

use std::time::Duration;

/// How often and how long to wait before retrying a request answered with `conflict`.
#[derive(Debug, Clone, Copy)]
pub struct ConflictRetry {
    /// Attempts in all (the first included); at least 1.
    pub attempts: u32,
    /// The wait before the second attempt; each later wait doubles, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Called before each wait (`op`, the attempt that failed (1-based), the wait): the CLI
    /// says on stderr that it is retrying.
    pub on_retry: Option<fn(&str, u32, Duration)>,
}

impl Default for ConflictRetry {
    /// 6 attempts; waits of about 20, 40, 80, 160, 320 ms (each jittered to 50-100 % of that).
    /// Each `conflict` means another request on the record committed meanwhile, so N requests
    /// racing on one record all succeed within N attempts.
    fn default() -> Self {
        ConflictRetry {
            attempts: 6,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(500),
            on_retry: None,
        }
    }
}

impl ConflictRetry {
    /// The wait after failed attempt `attempt` (1-based), or `None` when it was the last one.
    /// `jitter` is a random value; the wait is the attempt's full delay scaled into 50-100 %.
    pub fn delay(&self, attempt: u32, jitter: u32) -> Option<Duration> {
        if attempt >= self.attempts.max(1) {
            return None;
        }
        let doubled = self
            .base_delay
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.max_delay);
        let half = doubled / 2;
        let extra = half.mul_f64(f64::from(jitter) / f64::from(u32::MAX));
        Some(half + extra)
    }

    /// A random jitter value for [`ConflictRetry::delay`].
    pub fn jitter() -> u32 {
        use rand_core::{OsRng, RngCore};
        OsRng.next_u32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_retry_waits_grow_stay_bounded_and_stop_after_the_last_attempt() {
        let p = ConflictRetry::default();
        // Full jitter: exactly the doubled delay; no jitter: half of it.
        assert_eq!(p.delay(1, u32::MAX), Some(Duration::from_millis(20)));
        assert_eq!(p.delay(1, 0), Some(Duration::from_millis(10)));
        assert_eq!(p.delay(2, u32::MAX), Some(Duration::from_millis(40)));
        assert_eq!(p.delay(4, u32::MAX), Some(Duration::from_millis(160)));
        assert_eq!(p.delay(5, u32::MAX), Some(Duration::from_millis(320)));
        // The sixth attempt is the last: no wait, the conflict is reported.
        assert_eq!(p.delay(6, 0), None);
        assert_eq!(p.delay(7, 0), None);
        // Every wait lies in [half, full] of its step, whatever the jitter.
        for attempt in 1..6 {
            let full = Duration::from_millis(20 << (attempt - 1));
            for j in [0, 1, u32::MAX / 3, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
                let d = p.delay(attempt, j).expect("a wait");
                assert!(d >= full / 2 && d <= full, "{attempt} {j} {d:?}");
            }
        }
        // The cap holds for many attempts, and nothing overflows.
        let long = ConflictRetry {
            attempts: 100,
            ..ConflictRetry::default()
        };
        assert_eq!(long.delay(60, u32::MAX), Some(Duration::from_millis(500)));
        // One attempt (or zero, taken as one): never retried.
        let once = ConflictRetry {
            attempts: 0,
            ..ConflictRetry::default()
        };
        assert_eq!(once.delay(1, 0), None);
    }

    /// A fake agent on a socket: `hello` is answered; every other request with `code`, and it
    /// counts them.
    async fn fake_agent(
        code: keyward_proto::ErrorCode,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::sync::Arc<std::sync::atomic::AtomicU32>,
    ) {
        use keyward_proto::ops::{HelloResult, RootKind};
        use keyward_proto::{frame, ErrorBody, Request, Response, MAX_FRAME};
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            while let Ok(Some(bytes)) = frame::read(&mut s, MAX_FRAME).await {
                let req = Request::from_cbor(&bytes).unwrap();
                let resp = if req.op == "hello" {
                    let hello = HelloResult {
                        protocol: keyward_proto::PROTOCOL_VERSION,
                        agent_version: "fake".into(),
                        root_kind: RootKind::Soft,
                        token: String::new(),
                        initialized: true,
                        locked: false,
                        ops: Vec::new(),
                        ssh_socket: None,
                        config: None,
                        keystore: None,
                        pin_attempts_left: None,
                        keystore_check: None,
                        audit_log: None,
                    };
                    Response::ok(req.id, &hello).unwrap()
                } else {
                    count.fetch_add(1, Ordering::SeqCst);
                    Response::err(Some(req.id), ErrorBody::new(code, "refused"))
                };
                frame::write(&mut s, &resp.to_cbor().unwrap(), MAX_FRAME)
                    .await
                    .unwrap();
            }
        });
        (dir, path, seen)
    }

    #[tokio::test]
    async fn a_client_retries_conflict_as_told_then_reports_it_and_nothing_else() {
        use keyward_proto::ErrorCode;
        use std::sync::atomic::Ordering;
        // Off by default: one attempt.
        let (_d, path, seen) = fake_agent(ErrorCode::Conflict).await;
        let c = crate::Client::connect(&path).await.unwrap();
        let e = c.kek_create(None).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Conflict));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        // On: every attempt is made, then the conflict is reported saying so.
        let (_d, path, seen) = fake_agent(ErrorCode::Conflict).await;
        let mut c = crate::Client::connect(&path).await.unwrap();
        c.retry_conflicts(Some(ConflictRetry::default()));
        let t = std::time::Instant::now();
        let e = c.kek_create(None).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Conflict));
        assert_eq!(seen.load(Ordering::SeqCst), 6);
        assert!(
            e.to_string().contains("still in conflict after 6 attempts"),
            "{e}"
        );
        // The waits were taken (at least half of 20 + 40 + 80 + 160 + 320 ms).
        assert!(
            t.elapsed() >= Duration::from_millis(310),
            "{:?}",
            t.elapsed()
        );
        // Any other error is never retried.
        let (_d, path, seen) = fake_agent(ErrorCode::KeystoreUnavailable).await;
        let mut c = crate::Client::connect(&path).await.unwrap();
        c.retry_conflicts(Some(ConflictRetry::default()));
        let e = c.kek_create(None).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::KeystoreUnavailable));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn conflict_retry_jitter_varies() {
        let a: Vec<u32> = (0..8).map(|_| ConflictRetry::jitter()).collect();
        assert!(a.iter().any(|x| *x != a[0]), "{a:?}");
    }
}
