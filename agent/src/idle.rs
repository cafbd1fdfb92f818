//! Locking the agent without a client: `SIGUSR1` locks it (as `keyward lock` does: keys wiped in
//! the token, the SSH door's cache emptied, the PIN forgotten), and so do the deadlines of
//! `[unlock] idle_lock` (no request used the root for that long) and `max_unlocked` (unlocked
//! for that long, however busy).
//!
//! The deadlines are kept by one tokio task ([`lock_on_deadlines`]) that sleeps until the next
//! one, at most [`MAX_NAP`] at a time, and locks through the [`Service`] when it has passed.
//! Activity is recorded by the hierarchy (`Hierarchy::activity`): every request that needs the
//! root unlocked (CBOR ops with `Unlocked` access, SSH signing) counts; `hello`, lists and
//! status do not. Times come from `CLOCK_BOOTTIME`, which keeps counting while the machine
//! sleeps, so a laptop that resumes after the deadline locks within [`MAX_NAP`] (tokio's timer
//! does not count suspended time, hence the cap on each sleep).
//!
//! Durations are written humantime-style: `15m`, `8h`, `1h30m`, `90s`, `500ms`, `2d`
//! ([`parse_duration`]). This module must never unlock anything.

use crate::hierarchy::Hierarchy;
use crate::service::Service;
use keyward_proto::ops::{Empty, Handler};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The longest the deadline task sleeps at once (bounds the lateness after a suspend).
pub const MAX_NAP: Duration = Duration::from_secs(5);

/// Lock through `service` on every `SIGUSR1`, until the runtime stops. Fails only when the
/// handler cannot be installed.
pub fn lock_on_sigusr1(service: Service) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    Ok(tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            lock_now(&service, "SIGUSR1").await;
        }
    }))
}

/// Lock through the service off the async workers (the token calls block); log the reason.
async fn lock_now(service: &Service, reason: &'static str) {
    let s = service.clone();
    let locked = tokio::task::spawn_blocking(move || s.lock(Empty {})).await;
    match locked {
        Ok(Ok(_)) => tracing::info!(reason, "locked on {reason}"),
        Ok(Err(e)) => tracing::warn!(error = %e, reason, "{reason}: lock failed"),
        Err(e) => tracing::warn!(error = %e, reason, "{reason}: lock task failed"),
    }
}

/// The `[unlock]` deadlines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadlines {
    /// Lock when no request has used the root for this long.
    pub idle_lock: Option<Duration>,
    /// Lock this long after unlocking, whatever the activity.
    pub max_unlocked: Option<Duration>,
}

/// When an unlocked agent must lock (boot-clock times), and why.
fn next_deadline(d: Deadlines, a: Activity) -> Option<(Duration, &'static str)> {
    let idle = d
        .idle_lock
        .map(|t| (a.last_used.saturating_add(t), "idle_lock"));
    let max = d
        .max_unlocked
        .map(|t| (a.unlocked_at.saturating_add(t), "max_unlocked"));
    match (idle, max) {
        (Some(i), Some(m)) => Some(if m.0 <= i.0 { m } else { i }),
        (i, m) => i.or(m),
    }
}

/// While `h` is unlocked: when it was unlocked and last used (boot-clock times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    pub unlocked_at: Duration,
    pub last_used: Duration,
}

/// The time since boot, suspended time included (`CLOCK_BOOTTIME`; `CLOCK_MONOTONIC` where that
/// is missing).
pub fn boot_now() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
        .map(Duration::from)
        .unwrap_or_else(|_| {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed()
        })
}

/// Lock through `service` when a deadline of `d` passes. `None` (no task) when neither is set.
pub fn lock_on_deadlines(
    service: Service,
    h: Arc<Hierarchy>,
    d: Deadlines,
) -> Option<tokio::task::JoinHandle<()>> {
    if d.idle_lock.is_none() && d.max_unlocked.is_none() {
        return None;
    }
    tracing::info!(idle_lock = ?d.idle_lock, max_unlocked = ?d.max_unlocked, "lock deadlines set");
    Some(tokio::spawn(async move {
        loop {
            let Some(activity) = h.activity() else {
                // Locked: wait for the next unlock (a permit is kept if it came meanwhile).
                h.unlocked().await;
                continue;
            };
            let Some((deadline, reason)) = next_deadline(d, activity) else {
                return;
            };
            let now = boot_now();
            if now >= deadline {
                lock_now(&service, reason).await;
                continue;
            }
            tokio::time::sleep((deadline - now).min(MAX_NAP)).await;
        }
    }))
}

/// Why a duration in the config is not one.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum BadDuration {
    #[error("empty duration")]
    Empty,
    #[error("a number must come before each unit (e.g. `15m`)")]
    MissingNumber,
    #[error("a unit must follow each number: ms, s, m, h or d (e.g. `15m`)")]
    MissingUnit,
    #[error("unknown unit (ms, s, m, h or d)")]
    UnknownUnit,
    #[error("the duration is too long")]
    Overflow,
    #[error("the duration must be over 0")]
    Zero,
}

/// Parse `15m`, `8h`, `1h30m`, `90s`, `500ms`, `2d` (spaces allowed between parts).
pub fn parse_duration(s: &str) -> Result<Duration, BadDuration> {
    let s = s.trim();
    if s.is_empty() {
        return Err(BadDuration::Empty);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(BadDuration::MissingNumber);
        }
        let n: u64 = rest[..digits].parse().map_err(|_| BadDuration::Overflow)?;
        rest = rest[digits..].trim_start();
        let letters = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        if letters == 0 {
            return Err(BadDuration::MissingUnit);
        }
        let part = match &rest[..letters] {
            "ms" => Duration::from_millis(n),
            "s" | "sec" | "secs" => Duration::from_secs(n),
            "m" | "min" | "mins" => {
                Duration::from_secs(n.checked_mul(60).ok_or(BadDuration::Overflow)?)
            }
            "h" | "hr" | "hrs" => {
                Duration::from_secs(n.checked_mul(3600).ok_or(BadDuration::Overflow)?)
            }
            "d" | "days" | "day" => {
                Duration::from_secs(n.checked_mul(86_400).ok_or(BadDuration::Overflow)?)
            }
            _ => return Err(BadDuration::UnknownUnit),
        };
        total = total.checked_add(part).ok_or(BadDuration::Overflow)?;
        rest = rest[letters..].trim_start();
    }
    if total.is_zero() {
        return Err(BadDuration::Zero);
    }
    Ok(total)
}

/// serde: an optional humantime-style duration (`idle_lock = "15m"`).
pub fn deserialize_opt_duration<'de, D>(d: D) -> Result<Option<Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let s = Duration::from_secs;
        assert_eq!(parse_duration("15m"), Ok(s(900)));
        assert_eq!(parse_duration("8h"), Ok(s(8 * 3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(s(5400)));
        assert_eq!(parse_duration("2s"), Ok(s(2)));
        assert_eq!(parse_duration("1d"), Ok(s(86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(""), Err(BadDuration::Empty));
        assert_eq!(parse_duration("15"), Err(BadDuration::MissingUnit));
        assert_eq!(parse_duration("m"), Err(BadDuration::MissingNumber));
        assert_eq!(parse_duration("3 weeks"), Err(BadDuration::UnknownUnit));
        assert_eq!(parse_duration("0s"), Err(BadDuration::Zero));
        assert_eq!(
            parse_duration("99999999999999999999s"),
            Err(BadDuration::Overflow)
        );
    }

    #[test]
    fn the_nearer_deadline_wins() {
        let s = Duration::from_secs;
        let a = Activity {
            unlocked_at: s(100),
            last_used: s(150),
        };
        let both = Deadlines {
            idle_lock: Some(s(60)),
            max_unlocked: Some(s(200)),
        };
        assert_eq!(next_deadline(both, a), Some((s(210), "idle_lock")));
        let late = Activity {
            last_used: s(290),
            ..a
        };
        assert_eq!(next_deadline(both, late), Some((s(300), "max_unlocked")));
        assert_eq!(next_deadline(Deadlines::default(), a), None);
    }
}
