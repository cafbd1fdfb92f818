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
    /// 5 attempts; waits of about 20, 40, 80, 160 ms (each jittered to 50-100 % of that).
    fn default() -> Self {
        ConflictRetry {
            attempts: 5,
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
        // The fifth attempt is the last: no wait, the conflict is reported.
        assert_eq!(p.delay(5, 0), None);
        assert_eq!(p.delay(6, 0), None);
        // Every wait lies in [half, full] of its step, whatever the jitter.
        for attempt in 1..5 {
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

    #[test]
    fn conflict_retry_jitter_varies() {
        let a: Vec<u32> = (0..8).map(|_| ConflictRetry::jitter()).collect();
        assert!(a.iter().any(|x| *x != a[0]), "{a:?}");
    }
}
