//! Per-key usage limits: what a DEK or keypair may be used for (`encrypt`, `decrypt`, `sign`,
//! `derive`, `export`, `share`), whether each use is confirmed by the user, and a date after
//! which the key is refused.
//!
//! Limits are stored with the key (keystore v10: `keys.usage`, `keys.not_after`, covered by the
//! row's MAC) and enforced here, in the hierarchy, by [`Hierarchy::permit`], which every
//! operation that uses a DEK or a keypair calls before touching key material; the SSH door
//! calls [`Hierarchy::check_limits`] and asks for confirmation through its own prompt. A key
//! made before v10, or without limits, has its kind's default usages ([`default_usage`]), which
//! are everything it could do before, so nothing that worked stops working.
//!
//! Limits only narrow after creation ([`Hierarchy::key_limits`]): a usage removed, confirmation
//! added, an earlier `not_after`. Widening is `limits_widened`, and adding `export` follows the
//! rule that exportability is fixed at creation (`not_exportable`). This module must never
//! widen a key's limits, and never let a use through that the stored limits refuse.

use crate::error::{AgentError, Problem};
use crate::hierarchy::Hierarchy;
use crate::keystore::{KeyKind, KeyRecord};
use crate::prompt::PromptError;
use std::cell::RefCell;
use std::sync::Arc;
use thiserror::Error;
use uuid::Uuid;

/// One use of a key: the wire's type (`keyward_proto::ops::Usage`), so the agent and its clients
/// cannot disagree on the set. Which operations need which usage:
/// - `encrypt` (DEKs): `encrypt`, `gcm.seal`, `datakey.create`, the new half of `rewrap`;
/// - `decrypt` (DEKs): `decrypt`, `gcm.open`, `datakey.open`, the old half of `rewrap`;
///   (keypairs): `open`, `share.open` (the recipient's key);
/// - `sign` (keypairs): `sign`, `sign.digest`, SSH signatures, `seal --sign-with`, vouching for
///   a node key (`node.derive`);
/// - `derive` (keypairs): `keypair.ecdh` (PKCS#11 `C_DeriveKey`); no DEK operation uses it yet;
/// - `export` (DEKs): `dek.export` (the same as `exportable`);
/// - `share` (DEKs): `share.seal`; (keypairs): authenticating a share (`share.seal --from`).
pub use keyward_proto::ops::Usage;

/// The usage's bit in `keys.usage` (stored: never renumber).
const fn bit(u: Usage) -> u32 {
    match u {
        Usage::Encrypt => 1,
        Usage::Decrypt => 1 << 1,
        Usage::Sign => 1 << 2,
        Usage::Derive => 1 << 3,
        Usage::Export => 1 << 4,
        Usage::Share => 1 << 5,
    }
}

/// The confirm flag's bit in `keys.usage` (stored: never renumber).
pub const CONFIRM_BIT: u32 = 1 << 16;
const USAGE_BITS: u32 = 0x3f;

/// A set of usages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageSet(u32);

impl UsageSet {
    pub const fn empty() -> UsageSet {
        UsageSet(0)
    }

    pub fn of(usages: &[Usage]) -> UsageSet {
        UsageSet(usages.iter().fold(0, |b, u| b | bit(*u)))
    }

    pub fn contains(self, u: Usage) -> bool {
        self.0 & bit(u) != 0
    }

    pub fn with(self, u: Usage) -> UsageSet {
        UsageSet(self.0 | bit(u))
    }

    pub fn without(self, u: Usage) -> UsageSet {
        UsageSet(self.0 & !bit(u))
    }

    pub fn is_subset(self, of: UsageSet) -> bool {
        self.0 & !of.0 == 0
    }

    /// The usages in the set, in [`Usage::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Usage> {
        Usage::ALL.into_iter().filter(move |u| self.contains(*u))
    }
}

/// The usages a kind of key can have at all (`None`: limits do not apply to the kind).
pub fn possible_usage(kind: KeyKind) -> Option<UsageSet> {
    use Usage::*;
    match kind {
        KeyKind::Dek => Some(UsageSet::of(&[Encrypt, Decrypt, Derive, Export, Share])),
        KeyKind::Keypair => Some(UsageSet::of(&[Sign, Decrypt, Derive, Share])),
        _ => None,
    }
}

/// What a key without stored limits may do: everything it could do before limits existed.
/// DEKs: encrypt, decrypt, derive, share, and export when created exportable. Keypairs: sign,
/// decrypt, derive, share.
pub fn default_usage(kind: KeyKind, exportable: bool) -> UsageSet {
    let all = possible_usage(kind).unwrap_or_default();
    if exportable {
        all
    } else {
        all.without(Usage::Export)
    }
}

/// A key's limits, as stored or by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub usage: UsageSet,
    pub confirm: bool,
    /// Unix seconds.
    pub not_after: Option<u64>,
}

impl Limits {
    /// The limits of a record: its stored ones, else its kind's defaults. A DEK's `export`
    /// always follows `exportable` (the two are written together).
    pub fn of(r: &KeyRecord) -> Limits {
        let (usage, confirm) = match r.usage {
            Some(bits) => (UsageSet(bits & USAGE_BITS), bits & CONFIRM_BIT != 0),
            None => (default_usage(r.kind, r.exportable), false),
        };
        let usage = if r.exportable {
            usage
        } else {
            usage.without(Usage::Export)
        };
        Limits {
            usage,
            confirm,
            not_after: r.not_after,
        }
    }

    /// The `keys.usage` value.
    pub fn bits(&self) -> u32 {
        self.usage.0 | if self.confirm { CONFIRM_BIT } else { 0 }
    }

    /// Whether the key has passed its `not_after` at `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> bool {
        self.not_after.is_some_and(|t| now > t)
    }
}

/// Limits asked for at creation or by `key.limits`, in the hierarchy's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsRequest {
    pub usage: Option<Vec<Usage>>,
    /// Creation: `Some(true)` asks for confirmation. `key.limits`: `None` leaves it.
    pub confirm: Option<bool>,
    pub not_after: Option<u64>,
}

impl LimitsRequest {
    pub fn is_empty(&self) -> bool {
        self.usage.is_none() && self.confirm.is_none() && self.not_after.is_none()
    }
}

/// Why a use was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("its usage limits do not include it")]
    NotAllowed,
    #[error("the use must be confirmed and the user refused")]
    Refused,
    #[error("the use must be confirmed and nobody could be asked: {0}")]
    NotConfirmed(#[source] PromptError),
}

/// What a `key.limits` request tried to widen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Widening {
    #[error("adding usage `{0}`")]
    Usage(Usage),
    #[error("dropping confirmation")]
    Confirm,
    #[error("a later not-after date")]
    NotAfter,
}

thread_local! {
    /// Who sent the request this thread is answering (set by the service), named in prompts.
    static REQUESTER: RefCell<Option<Arc<crate::peer::Peer>>> = const { RefCell::new(None) };
}

/// Run `f` with `peer` as the requester named by confirmation prompts on this thread.
pub fn with_requester<T>(peer: Arc<crate::peer::Peer>, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Arc<crate::peer::Peer>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let old = self.0.take();
            REQUESTER.with(|r| *r.borrow_mut() = old);
        }
    }
    let old = REQUESTER.with(|r| r.borrow_mut().replace(peer));
    let _reset = Reset(old);
    f()
}

fn requester() -> String {
    REQUESTER.with(|r| {
        r.borrow()
            .as_ref()
            .map_or_else(|| "an unknown process".to_string(), |p| p.describe())
    })
}

fn now() -> u64 {
    crate::keystore::now()
}

impl Hierarchy {
    /// Usage and expiry of `r` for `usage`, without asking anyone. `Ok(true)`: the use is
    /// allowed once the user confirms it (the caller asks); `Ok(false)`: allowed.
    pub fn check_limits(&self, r: &KeyRecord, usage: Usage) -> Result<bool, AgentError> {
        if possible_usage(r.kind).is_none() {
            return Ok(false);
        }
        let l = Limits::of(r);
        if !l.usage.contains(usage) {
            return Err(AgentError::UsageDenied {
                kind: r.kind,
                id: r.id,
                usage,
                why: Refusal::NotAllowed,
            });
        }
        if let Some(t) = l.not_after.filter(|_| l.expired(now())) {
            return Err(AgentError::KeyExpired {
                kind: r.kind,
                id: r.id,
                not_after: t,
            });
        }
        Ok(l.confirm)
    }

    /// The one check before a DEK or keypair is used for `usage`: its usage set, its
    /// `not_after`, and, when it asks for confirmation, the user's answer through pinentry
    /// (no pinentry, a failure or "no" is `usage_denied`).
    pub fn permit(&self, r: &KeyRecord, usage: Usage) -> Result<(), AgentError> {
        if !self.check_limits(r, usage)? {
            return Ok(());
        }
        let denied = |why| AgentError::UsageDenied {
            kind: r.kind,
            id: r.id,
            usage,
            why,
        };
        let who = requester();
        let Some(p) = self.prompter() else {
            tracing::warn!(id = %r.id, %usage, requester = %who, "key use needs confirmation and no pinentry is configured");
            return Err(denied(Refusal::NotConfirmed(PromptError::Unavailable(
                crate::prompt::Unavailable::NotConfigured,
            ))));
        };
        let label = r
            .label
            .as_deref()
            .map(|l| format!(" \"{}\"", crate::prompt::truncate(l, 64)))
            .unwrap_or_default();
        let q = format!(
            "Allow `{usage}` with {} {}{label}?\nRequested by {who}.",
            r.kind.as_str(),
            r.id
        );
        match p.confirm(&q) {
            Ok(true) => {
                tracing::info!(id = %r.id, %usage, requester = %who, "key use confirmed");
                Ok(())
            }
            Ok(false) => {
                tracing::warn!(id = %r.id, %usage, requester = %who, "key use refused by the user");
                Err(denied(Refusal::Refused))
            }
            Err(e) => {
                tracing::warn!(id = %r.id, %usage, requester = %who, error = %e, "key use not confirmed");
                Err(denied(Refusal::NotConfirmed(e)))
            }
        }
    }

    /// The limits a new DEK or keypair gets from a request (`None`: none stored, the kind's
    /// defaults), and whether it is exportable. `exportable` is shorthand for `export`.
    pub fn limits_for_new(
        kind: KeyKind,
        exportable: bool,
        req: &LimitsRequest,
    ) -> Result<(Option<Limits>, bool), AgentError> {
        let possible = possible_usage(kind).unwrap_or_default();
        let usage = match &req.usage {
            None => None,
            Some(list) => {
                for u in list {
                    if !possible.contains(*u) {
                        return Err(AgentError::invalid(
                            "usage",
                            Problem::UsageForKind { usage: *u, kind },
                        ));
                    }
                }
                Some(UsageSet::of(list))
            }
        };
        if exportable && !possible.contains(Usage::Export) {
            return Err(AgentError::invalid(
                "exportable",
                Problem::UsageForKind {
                    usage: Usage::Export,
                    kind,
                },
            ));
        }
        let exportable = exportable || usage.is_some_and(|u| u.contains(Usage::Export));
        if usage.is_none() && req.confirm != Some(true) && req.not_after.is_none() {
            return Ok((None, exportable));
        }
        let mut usage = usage.unwrap_or_else(|| default_usage(kind, exportable));
        if exportable {
            usage = usage.with(Usage::Export);
        }
        Ok((
            Some(Limits {
                usage,
                confirm: req.confirm == Some(true),
                not_after: req.not_after,
            }),
            exportable,
        ))
    }

    /// Narrow a DEK's or keypair's limits (`key.limits`): the new usage set must be a subset of
    /// the current one (adding `export` is `not_exportable`, any other addition
    /// `limits_widened`), confirmation can be added but not dropped, and `not_after` can be set
    /// or moved earlier, never later. Checked and written in one keystore transaction.
    pub fn key_limits(&self, id: &str, req: &LimitsRequest) -> Result<KeyRecord, AgentError> {
        self.root_record("key.limits")?;
        let uuid = Uuid::parse_str(id).map_err(|_| AgentError::invalid("id", Problem::NotUuid))?;
        let missing = || AgentError::NotFound(crate::error::Missing::DekOrKeypair { id: uuid });
        let updated = self.ks.update_limits(&uuid, |r| {
            let Some(possible) = possible_usage(r.kind) else {
                return Err(missing());
            };
            // A retired DEK still decrypts, so narrowing it still means something.
            if r.state == crate::keystore::KeyState::Revoked {
                return Err(AgentError::KeyInactive {
                    kind: r.kind,
                    id: r.id,
                    state: r.state,
                });
            }
            let old = Limits::of(r);
            let widened = |w| AgentError::LimitsWidened { id: r.id, what: w };
            let usage = match &req.usage {
                None => old.usage,
                Some(list) => {
                    for u in list {
                        if !possible.contains(*u) {
                            return Err(AgentError::invalid(
                                "usage",
                                Problem::UsageForKind {
                                    usage: *u,
                                    kind: r.kind,
                                },
                            ));
                        }
                        if !old.usage.contains(*u) {
                            return Err(if *u == Usage::Export {
                                AgentError::NotExportable { id: r.id }
                            } else {
                                widened(Widening::Usage(*u))
                            });
                        }
                    }
                    UsageSet::of(list)
                }
            };
            let confirm = match req.confirm {
                None => old.confirm,
                Some(false) if old.confirm => return Err(widened(Widening::Confirm)),
                Some(c) => c,
            };
            let not_after = match (old.not_after, req.not_after) {
                (Some(o), Some(n)) if n > o => return Err(widened(Widening::NotAfter)),
                (o, n) => n.or(o),
            };
            let new = Limits {
                usage,
                confirm,
                not_after,
            };
            // A key left at its defaults keeps no stored limits (its body stays as it was).
            let stored = if r.usage.is_none() && new == old {
                None
            } else {
                Some(new.bits())
            };
            Ok((stored, not_after, usage.contains(Usage::Export)))
        })?;
        let r = updated.ok_or_else(missing)?;
        tracing::info!(id = %r.id, usage = r.usage, not_after = r.not_after, "key limits changed");
        Ok(r)
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
