//! Keyward's policy file: which client may do what with which key, through which door.
//!
//! A policy is a list of `[[rule]]` tables and an optional `[default]`. Each rule matches
//! clients (`exe` glob, `uid`, `unit` glob), keys (`key` id, `label` glob, `kind`, `purpose`),
//! operations (`ops`, protocol op names) and optionally a `door` (`socket`, `ssh`, `pkcs11`), and
//! has an `effect`: `allow`, `confirm` or `deny`. The first rule whose every stated criterion
//! matches decides; when none does, the default does (`allow` when there is no `[default]`).
//!
//! ```toml
//! [[rule]]
//! name = "only git and ssh sign with the SSH key"
//! label = "ssh-*"
//! ops = ["sign"]
//! exe = ["/usr/bin/git", "/usr/bin/ssh"]
//! effect = "allow"
//!
//! [[rule]]
//! label = "ssh-*"
//! ops = ["sign"]
//! effect = "deny"
//! ```
//!
//! A criterion about something the request does not carry (a key rule for an op that names no
//! key, an `exe` rule when the peer's executable could not be read) does not match. This crate
//! is shared by the agent (which enforces) and the CLI (`keyward policy check`, which explains);
//! it must never do I/O beyond reading the file it is given, and never decide anything from
//! what a client says about itself other than the facts the caller hands it.
#![forbid(unsafe_code)]
// No panics outside tests (request paths and start-up return typed errors).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    /// Ask the user (pinentry); refused when nobody can be asked.
    Confirm,
    Deny,
}

impl Effect {
    pub fn name(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Confirm => "confirm",
            Effect::Deny => "deny",
        }
    }
}

/// The front door a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Door {
    /// The CBOR socket (the `keyward` CLI and other protocol clients).
    Socket,
    /// The SSH-agent socket.
    Ssh,
    /// The PKCS#11 module (CBOR on the agent's socket; it names itself in `hello`).
    Pkcs11,
}

impl Door {
    pub const ALL: [Door; 3] = [Door::Socket, Door::Ssh, Door::Pkcs11];

    /// The name used in policy files and logs.
    pub fn name(self) -> &'static str {
        match self {
            Door::Socket => "socket",
            Door::Ssh => "ssh",
            Door::Pkcs11 => "pkcs11",
        }
    }

    pub fn from_name(s: &str) -> Option<Door> {
        Door::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// The key kinds a rule's `kind` may name (the keystore's record kinds).
pub const KINDS: &[&str] = &["root", "kek", "dek", "keypair", "secret", "integrity"];
/// The purposes a rule's `purpose` may name.
pub const PURPOSES: &[&str] = &["personal", "sharing"];

/// What is known about the key a request names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyFacts<'a> {
    /// The id as the request gave it.
    pub id: &'a str,
    /// From the keystore record, when there is one.
    pub label: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub purpose: Option<&'a str>,
}

/// One request, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    /// The peer's executable (`/proc/PID/exe`), when it could be read.
    pub exe: Option<&'a str>,
    pub uid: Option<u32>,
    /// The peer's systemd unit, when it runs in one.
    pub unit: Option<&'a str>,
    /// The protocol op name (the SSH door: `sign`, `keypair.list`).
    pub op: &'a str,
    pub door: Door,
    /// The key the request names, if any.
    pub key: Option<KeyFacts<'a>>,
}

/// Which rule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    /// 1-based index of the deciding `[[rule]]`; `None` for the default.
    pub rule: Option<usize>,
    /// The rule's `name`, if it has one.
    pub name: Option<String>,
}

impl Decision {
    /// How error messages and logs name the rule: `rule 2 ("no export")` or `the default rule`.
    pub fn rule_text(&self) -> String {
        match (self.rule, &self.name) {
            (Some(i), Some(n)) => format!("rule {i} ({n:?})"),
            (Some(i), None) => format!("rule {i}"),
            (None, Some(n)) => format!("the default rule ({n:?})"),
            (None, None) => "the default rule".into(),
        }
    }
}

/// A policy file that could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("reading the policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the policy file is not valid TOML for a policy: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("rule {rule}: {reason}")]
    Invalid { rule: usize, reason: String },
    #[error("[default]: {0}")]
    InvalidDefault(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    exe: Option<OneOrMany>,
    uid: Option<u32>,
    unit: Option<OneOrMany>,
    key: Option<OneOrMany>,
    label: Option<OneOrMany>,
    kind: Option<OneOrMany>,
    purpose: Option<OneOrMany>,
    ops: Option<Vec<String>>,
    door: Option<Door>,
    effect: Effect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefault {
    name: Option<String>,
    effect: Effect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    rule: Vec<RawRule>,
    default: Option<RawDefault>,
}

/// A list of glob patterns, any of which may match.
#[derive(Debug, Clone)]
struct Globs {
    patterns: Vec<String>,
    matchers: Vec<GlobMatcher>,
}

impl Globs {
    fn new(
        patterns: Vec<String>,
        path_like: bool,
        rule: usize,
        what: &str,
    ) -> Result<Globs, PolicyError> {
        if patterns.is_empty() {
            return Err(PolicyError::Invalid {
                rule,
                reason: format!("`{what}` is an empty list"),
            });
        }
        let matchers = patterns
            .iter()
            .map(|p| {
                let g = if path_like {
                    // `*` stays within one path component: `/usr/bin/*` is not `/usr/bin/a/b`.
                    GlobBuilder::new(p).literal_separator(true).build()
                } else {
                    Glob::new(p)
                };
                g.map(|g| g.compile_matcher())
                    .map_err(|e| PolicyError::Invalid {
                        rule,
                        reason: format!("`{what}` pattern {p:?}: {e}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Globs { patterns, matchers })
    }

    fn is_match(&self, s: &str) -> bool {
        self.matchers.iter().any(|m| m.is_match(s))
    }
}

/// One `[[rule]]`, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    name: Option<String>,
    exe: Option<Globs>,
    uid: Option<u32>,
    unit: Option<Globs>,
    key: Option<Vec<String>>,
    label: Option<Globs>,
    kind: Option<Vec<String>>,
    purpose: Option<Vec<String>>,
    ops: Option<Vec<String>>,
    door: Option<Door>,
    effect: Effect,
}

fn one_of(
    values: Option<OneOrMany>,
    allowed: &[&str],
    rule: usize,
    what: &str,
) -> Result<Option<Vec<String>>, PolicyError> {
    let Some(values) = values.map(OneOrMany::into_vec) else {
        return Ok(None);
    };
    if values.is_empty() {
        return Err(PolicyError::Invalid {
            rule,
            reason: format!("`{what}` is an empty list"),
        });
    }
    if let Some(bad) = values.iter().find(|v| !allowed.contains(&v.as_str())) {
        return Err(PolicyError::Invalid {
            rule,
            reason: format!("unknown {what} {bad:?} (one of: {})", allowed.join(", ")),
        });
    }
    Ok(Some(values))
}

impl Rule {
    fn from_raw(r: RawRule, index: usize) -> Result<Rule, PolicyError> {
        let glob = |v: Option<OneOrMany>, path_like, what| {
            v.map(|v| Globs::new(v.into_vec(), path_like, index, what))
                .transpose()
        };
        let ops = match r.ops {
            Some(ops) if ops.is_empty() => {
                return Err(PolicyError::Invalid {
                    rule: index,
                    reason: "`ops` is an empty list (leave it out to match every op)".into(),
                })
            }
            Some(ops) => {
                if let Some(bad) = ops
                    .iter()
                    .find(|o| keyward_proto::ops::Op::from_name(o).is_none())
                {
                    return Err(PolicyError::Invalid {
                        rule: index,
                        reason: format!(
                            "unknown op {bad:?} (see `keyward status` for the op list)"
                        ),
                    });
                }
                Some(ops)
            }
            None => None,
        };
        let key = r.key.map(OneOrMany::into_vec);
        if key.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(PolicyError::Invalid {
                rule: index,
                reason: "`key` is an empty list".into(),
            });
        }
        Ok(Rule {
            name: r.name,
            exe: glob(r.exe, true, "exe")?,
            uid: r.uid,
            unit: glob(r.unit, false, "unit")?,
            key,
            label: glob(r.label, false, "label")?,
            kind: one_of(r.kind, KINDS, index, "kind")?,
            purpose: one_of(r.purpose, PURPOSES, index, "purpose")?,
            ops,
            door: r.door,
            effect: r.effect,
        })
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// Whether this rule looks at the key's record (`label`, `kind` or `purpose`), beyond its id.
    pub fn names_key_attributes(&self) -> bool {
        self.label.is_some() || self.kind.is_some() || self.purpose.is_some()
    }

    /// The first criterion of this rule that `q` does not meet, or `None` when it matches.
    pub fn mismatch(&self, q: &Query<'_>) -> Option<&'static str> {
        if let Some(d) = self.door {
            if d != q.door {
                return Some("door");
            }
        }
        if let Some(ops) = &self.ops {
            if !ops.iter().any(|o| o == q.op) {
                return Some("ops");
            }
        }
        if let Some(g) = &self.exe {
            if !q.exe.is_some_and(|e| g.is_match(e)) {
                return Some("exe");
            }
        }
        if let Some(u) = self.uid {
            if q.uid != Some(u) {
                return Some("uid");
            }
        }
        if let Some(g) = &self.unit {
            if !q.unit.is_some_and(|u| g.is_match(u)) {
                return Some("unit");
            }
        }
        if let Some(ids) = &self.key {
            if !q
                .key
                .is_some_and(|k| ids.iter().any(|i| i.eq_ignore_ascii_case(k.id)))
            {
                return Some("key");
            }
        }
        if let Some(g) = &self.label {
            if !q.key.and_then(|k| k.label).is_some_and(|l| g.is_match(l)) {
                return Some("label");
            }
        }
        if let Some(kinds) = &self.kind {
            if !q
                .key
                .and_then(|k| k.kind)
                .is_some_and(|k| kinds.iter().any(|x| x == k))
            {
                return Some("kind");
            }
        }
        if let Some(ps) = &self.purpose {
            if !q
                .key
                .and_then(|k| k.purpose)
                .is_some_and(|p| ps.iter().any(|x| x == p))
            {
                return Some("purpose");
            }
        }
        None
    }
}

impl fmt::Display for Rule {
    /// The rule's criteria as one line (`ops=[sign] exe=[/usr/bin/git] -> allow`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(d) = self.door {
            parts.push(format!("door={}", d.name()));
        }
        if let Some(o) = &self.ops {
            parts.push(format!("ops=[{}]", o.join(", ")));
        }
        if let Some(g) = &self.exe {
            parts.push(format!("exe=[{}]", g.patterns.join(", ")));
        }
        if let Some(u) = self.uid {
            parts.push(format!("uid={u}"));
        }
        if let Some(g) = &self.unit {
            parts.push(format!("unit=[{}]", g.patterns.join(", ")));
        }
        if let Some(k) = &self.key {
            parts.push(format!("key=[{}]", k.join(", ")));
        }
        if let Some(g) = &self.label {
            parts.push(format!("label=[{}]", g.patterns.join(", ")));
        }
        if let Some(k) = &self.kind {
            parts.push(format!("kind=[{}]", k.join(", ")));
        }
        if let Some(p) = &self.purpose {
            parts.push(format!("purpose=[{}]", p.join(", ")));
        }
        if parts.is_empty() {
            parts.push("(everything)".into());
        }
        write!(f, "{} -> {}", parts.join(" "), self.effect.name())
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    default: Effect,
    default_name: Option<String>,
}

impl Default for Policy {
    /// No rules, default allow: what the agent does without a policy file.
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            default: Effect::Allow,
            default_name: None,
        }
    }
}

impl Policy {
    /// Parse and validate policy text: unknown fields, ops, kinds, purposes, doors and bad
    /// globs are errors naming the rule.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text)?;
        let rules = raw
            .rule
            .into_iter()
            .enumerate()
            .map(|(i, r)| Rule::from_raw(r, i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        let (default, default_name) = match raw.default {
            Some(d) => (d.effect, d.name),
            None => (Effect::Allow, None),
        };
        Ok(Policy {
            rules,
            default,
            default_name,
        })
    }

    /// Read and parse a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(&text)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_effect(&self) -> Effect {
        self.default
    }

    /// Whether any rule looks at a key's `label`, `kind` or `purpose`: when none does, the
    /// decision is the same whatever [`KeyFacts`] carries beyond the id, so a caller may leave
    /// them `None` without reading the key's record.
    pub fn names_key_attributes(&self) -> bool {
        self.rules.iter().any(Rule::names_key_attributes)
    }

    /// The first matching rule's effect, else the default.
    pub fn decide(&self, q: &Query<'_>) -> Decision {
        for (i, r) in self.rules.iter().enumerate() {
            if r.mismatch(q).is_none() {
                return Decision {
                    effect: r.effect,
                    rule: Some(i + 1),
                    name: r.name.clone(),
                };
            }
        }
        Decision {
            effect: self.default,
            rule: None,
            name: self.default_name.clone(),
        }
    }

    /// Why each rule before the deciding one did not match (1-based index, criterion), and the
    /// decision: what `keyward policy check` prints.
    pub fn explain(&self, q: &Query<'_>) -> (Vec<(usize, &'static str)>, Decision) {
        let mut skipped = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            match r.mismatch(q) {
                Some(why) => skipped.push((i + 1, why)),
                None => break,
            }
        }
        (skipped, self.decide(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q<'a>(op: &'a str, exe: Option<&'a str>) -> Query<'a> {
        Query {
            exe,
            uid: Some(1000),
            unit: None,
            op,
            door: Door::Socket,
            key: None,
        }
    }

    const SSH_KEY: KeyFacts<'static> = KeyFacts {
        id: "0b7c4c8e-4a44-4d0a-9d39-1d5d1f0f3a10",
        label: Some("ssh-laptop"),
        kind: Some("keypair"),
        purpose: None,
    };

    #[test]
    fn no_rules_allows_everything() {
        let p = Policy::parse("").unwrap();
        let d = p.decide(&q("dek.export", None));
        assert_eq!(d.effect, Effect::Allow);
        assert_eq!(d.rule, None);
        assert_eq!(d.rule_text(), "the default rule");
        assert_eq!(
            Policy::default().decide(&q("sign", None)).effect,
            Effect::Allow
        );
    }

    #[test]
    fn names_key_attributes_only_for_label_kind_or_purpose() {
        let with = |rule: &str| {
            Policy::parse(&format!("[[rule]]\n{rule}\neffect = \"deny\"\n"))
                .unwrap()
                .names_key_attributes()
        };
        assert!(!Policy::parse("").unwrap().names_key_attributes());
        assert!(!with(
            "ops = [\"sign\"]\nuid = 3\nexe = \"/x\"\nunit = \"u*\""
        ));
        assert!(!with("key = \"0b7c4c8e-4a44-4d0a-9d39-1d5d1f0f3a10\""));
        assert!(with("label = \"ssh-*\""));
        assert!(with("kind = \"dek\""));
        assert!(with("purpose = \"sharing\""));
        // Any one rule naming them is enough.
        let p = Policy::parse(
            "[[rule]]\nops = [\"sign\"]\neffect = \"allow\"\n[[rule]]\nkind = \"dek\"\neffect = \"deny\"\n",
        )
        .unwrap();
        assert!(p.names_key_attributes());
    }

    #[test]
    fn first_match_wins() {
        let p = Policy::parse(
            r#"
            [[rule]]
            name = "cli exports"
            ops = ["dek.export"]
            exe = "/usr/bin/keyward"
            effect = "allow"
            [[rule]]
            name = "nobody else"
            ops = ["dek.export"]
            effect = "deny"
            [[rule]]
            ops = ["dek.export", "encrypt"]
            effect = "confirm"
            "#,
        )
        .unwrap();
        let d = p.decide(&q("dek.export", Some("/usr/bin/keyward")));
        assert_eq!((d.effect, d.rule), (Effect::Allow, Some(1)));
        let d = p.decide(&q("dek.export", Some("/usr/bin/python3")));
        assert_eq!((d.effect, d.rule), (Effect::Deny, Some(2)));
        assert_eq!(d.rule_text(), "rule 2 (\"nobody else\")");
        // An unknown executable does not match an exe rule.
        let d = p.decide(&q("dek.export", None));
        assert_eq!(d.rule, Some(2));
        let d = p.decide(&q("encrypt", Some("/usr/bin/keyward")));
        assert_eq!((d.effect, d.rule), (Effect::Confirm, Some(3)));
        assert_eq!(d.rule_text(), "rule 3");
        let d = p.decide(&q("decrypt", None));
        assert_eq!((d.effect, d.rule), (Effect::Allow, None));
    }

    #[test]
    fn default_rule_applies_when_nothing_matches() {
        let p = Policy::parse(
            r#"
            [[rule]]
            ops = ["hello", "kek.list"]
            effect = "allow"
            [default]
            name = "closed"
            effect = "deny"
            "#,
        )
        .unwrap();
        assert_eq!(p.decide(&q("kek.list", None)).effect, Effect::Allow);
        let d = p.decide(&q("encrypt", None));
        assert_eq!((d.effect, d.rule), (Effect::Deny, None));
        assert_eq!(d.rule_text(), "the default rule (\"closed\")");
    }

    #[test]
    fn globs_on_exe_label_and_unit() {
        let p = Policy::parse(
            r#"
            [[rule]]
            label = "ssh-*"
            ops = ["sign"]
            exe = ["/usr/bin/git", "/usr/bin/ssh*"]
            effect = "allow"
            [[rule]]
            label = "ssh-*"
            effect = "deny"
            [[rule]]
            unit = "*.service"
            exe = "/opt/*/bin/app"
            effect = "confirm"
            "#,
        )
        .unwrap();
        let mut sign = q("sign", Some("/usr/bin/ssh-keygen"));
        sign.key = Some(SSH_KEY);
        assert_eq!(p.decide(&sign).rule, Some(1));
        sign.exe = Some("/usr/bin/git");
        assert_eq!(p.decide(&sign).rule, Some(1));
        sign.exe = Some("/home/me/evil/git");
        assert_eq!(p.decide(&sign).rule, Some(2));
        // `*` does not cross `/` in exe patterns.
        let mut app = q("encrypt", Some("/opt/a/b/bin/app"));
        app.unit = Some("foo.service");
        assert_eq!(p.decide(&app).rule, None);
        app.exe = Some("/opt/a/bin/app");
        assert_eq!(p.decide(&app).rule, Some(3));
        app.unit = Some("session-1.scope");
        assert_eq!(p.decide(&app).rule, None);
        app.unit = None;
        assert_eq!(p.decide(&app).rule, None);
    }

    #[test]
    fn key_criteria_need_a_key() {
        let p = Policy::parse(&format!(
            r#"
            [[rule]]
            key = "{}"
            effect = "deny"
            [[rule]]
            kind = "dek"
            purpose = "sharing"
            effect = "confirm"
            "#,
            SSH_KEY.id.to_uppercase()
        ))
        .unwrap();
        let mut r = q("sign", None);
        assert_eq!(
            p.decide(&r).rule,
            None,
            "no key named: key rules do not match"
        );
        r.key = Some(SSH_KEY);
        assert_eq!(p.decide(&r).rule, Some(1), "ids compare case-insensitively");
        r.key = Some(KeyFacts {
            id: "x",
            kind: Some("dek"),
            purpose: Some("sharing"),
            label: None,
        });
        assert_eq!(p.decide(&r).rule, Some(2));
        r.key = Some(KeyFacts {
            id: "x",
            kind: Some("dek"),
            purpose: Some("personal"),
            label: None,
        });
        assert_eq!(p.decide(&r).rule, None);
    }

    #[test]
    fn uid_and_door() {
        let p = Policy::parse(
            r#"
            [[rule]]
            door = "ssh"
            ops = ["sign"]
            effect = "deny"
            [[rule]]
            uid = 0
            effect = "deny"
            "#,
        )
        .unwrap();
        let mut r = q("sign", None);
        assert_eq!(p.decide(&r).rule, None);
        r.door = Door::Ssh;
        assert_eq!(p.decide(&r).rule, Some(1));
        r.door = Door::Pkcs11;
        r.uid = Some(0);
        assert_eq!(p.decide(&r).rule, Some(2));
    }

    #[test]
    fn explain_names_why_earlier_rules_missed() {
        let p = Policy::parse(
            r#"
            [[rule]]
            ops = ["sign"]
            effect = "deny"
            [[rule]]
            exe = "/usr/bin/keyward"
            effect = "allow"
            [[rule]]
            effect = "deny"
            "#,
        )
        .unwrap();
        let (skipped, d) = p.explain(&q("encrypt", Some("/usr/bin/python3")));
        assert_eq!(skipped, vec![(1, "ops"), (2, "exe")]);
        assert_eq!(d.rule, Some(3));
        assert_eq!(p.rules()[0].to_string(), "ops=[sign] -> deny");
        assert_eq!(p.rules()[2].to_string(), "(everything) -> deny");
    }

    #[test]
    fn bad_files_are_errors_naming_the_rule() {
        let bad = [
            ("[[rule]]\neffect = \"maybe\"\n", "maybe"),
            (
                "[[rule]]\nops = [\"dek.exprot\"]\neffect = \"deny\"\n",
                "rule 1: unknown op",
            ),
            (
                "[[rule]]\neffect = \"deny\"\n[[rule]]\nexe = \"[\"\neffect = \"deny\"\n",
                "rule 2: `exe` pattern",
            ),
            (
                "[[rule]]\nkind = \"dke\"\neffect = \"deny\"\n",
                "unknown kind",
            ),
            (
                "[[rule]]\npurpose = \"x\"\neffect = \"deny\"\n",
                "unknown purpose",
            ),
            ("[[rule]]\ndoor = \"usb\"\neffect = \"deny\"\n", "usb"),
            (
                "[[rule]]\nexe = \"/x\"\neffect = \"deny\"\ncolour = 1\n",
                "colour",
            ),
            ("[[rule]]\nops = []\neffect = \"deny\"\n", "empty"),
            ("[[rule]]\nexe = \"/x\"\n", "effect"),
            ("[default]\neffect = \"allow\"\nwhy = 1\n", "why"),
            ("[[rules]]\neffect = \"allow\"\n", "rules"),
            ("not toml", ""),
        ];
        for (text, want) in bad {
            let e = Policy::parse(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    /// The README's "worth copying" policy parses and means what its comments say.
    #[test]
    fn the_readme_example_policy() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("# Only git and ssh may sign with my SSH keys")
            .expect("the example in the README");
        let text = &readme[start..];
        let p = Policy::parse(&text[..text.find("```").unwrap()]).expect("the README example");
        let key = KeyFacts {
            id: "k",
            label: Some("ssh-laptop"),
            kind: Some("keypair"),
            purpose: None,
        };
        let mut sign = q("sign", Some("/usr/bin/ssh-keygen"));
        sign.key = Some(key);
        assert_eq!(p.decide(&sign).effect, Effect::Allow);
        sign.exe = Some("/usr/bin/python3");
        assert_eq!(p.decide(&sign).effect, Effect::Deny);
        let mut export = q("dek.export", Some("/usr/local/bin/keyward"));
        assert_eq!(p.decide(&export).effect, Effect::Confirm);
        export.exe = Some("/usr/bin/python3");
        assert_eq!(p.decide(&export).effect, Effect::Deny);
        let mut backup = q("decrypt", Some("/usr/bin/backup"));
        backup.unit = Some("backup.service");
        assert_eq!(p.decide(&backup).effect, Effect::Deny);
    }

    #[test]
    fn every_door_round_trips() {
        for d in Door::ALL {
            assert_eq!(Door::from_name(d.name()), Some(d));
        }
        assert_eq!(Door::from_name("usb"), None);
    }
}
