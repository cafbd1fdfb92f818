//! `keyward agents`: the identity's signed agent authorization policy (DKMS).
//!
//! `policy export`, `add` and `revoke` ask the agent (which signs with the identity root);
//! `verify` runs offline on a policy file, with `keyward_identity::authz`, and says through its
//! exit code and message why a key may not act. It must never report a key as authorized
//! without having verified the policy's signature.

use crate::cli::{out, write_output, Failure, Out};
use clap::Subcommand;
use keyward_client::proto::ops::AgentPolicyResult;
use keyward_client::Client;
use keyward_identity::authz::{verify_policy, AgentPolicy, AuthzError, Capability};
use keyward_identity::PublicKey;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AgentsCmd {
    /// The signed policy (COSE_Sign1 by the identity root).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Authorize an agent key (did:key) for capabilities; the agent re-signs the policy.
    Add {
        /// The agent's public key: did:key (P-256), PEM or JWK, or a file holding one.
        key: String,
        /// sign, decrypt, recover or admin; repeat for several.
        #[arg(long = "cap", required = true, value_parser = parse_cap)]
        caps: Vec<Capability>,
        /// When the authorization ends: unix seconds, YYYY-MM-DD[THH:MM:SSZ] (UTC), or +N
        /// followed by s, m, h or d (from now).
        #[arg(long, value_parser = parse_time)]
        expires: Option<u64>,
    },
    /// Revoke an agent key: final. `open` then refuses messages it signed.
    Revoke {
        /// The agent's public key (did:key, PEM, JWK, or a file).
        key: String,
    },
    /// Offline: may KEY use CAPABILITY under the policy in FILE? Exit 0 if so; else 2 bad
    /// signature, 3 wrong signer, 4 not listed, 5 revoked, 6 expired, 7 missing capability,
    /// 1 anything else (unreadable or malformed file, bad arguments).
    Verify {
        /// The policy file (`keyward agents policy export -o FILE`).
        #[arg(long)]
        policy: PathBuf,
        /// The agent key asked about (did:key, PEM, JWK, or a file).
        #[arg(long)]
        key: String,
        #[arg(long, value_parser = parse_cap)]
        capability: Capability,
        /// The identity root that must have signed it (did:key). Without it, the policy is
        /// checked against the root it names (its own word for whose it is).
        #[arg(long)]
        signer: Option<String>,
        /// Check at this time instead of now (same forms as --expires).
        #[arg(long, value_parser = parse_time)]
        at: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Write the signed policy to FILE (binary CBOR), or print it as hex on stdout.
    Export {
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
    },
}

fn parse_cap(s: &str) -> Result<Capability, String> {
    s.parse::<Capability>().map_err(|e| e.to_string())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds, `+N[smhd]`, or `YYYY-MM-DD[THH:MM:SS[Z]]` (UTC).
pub fn parse_time(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("`{s}`: expected unix seconds, YYYY-MM-DD[THH:MM:SSZ] or +N[smhd]");
    if let Some(rel) = s.strip_prefix('+') {
        let (n, unit) = rel.split_at(rel.len().saturating_sub(1));
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = n.parse().map_err(|_| bad())?;
        return n
            .checked_mul(mult)
            .and_then(|d| d.checked_add(now()))
            .ok_or_else(bad);
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00"));
    let num = |t: &str| t.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.trim_end_matches('Z').split(':').collect();
    if d.len() != 3 || t.len() != 3 {
        return Err(bad());
    }
    let (y, mo, da) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (h, mi, se) = (num(t[0])?, num(t[1])?, num(t[2])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs).map_err(|_| bad())
}

fn key_text(arg: &str) -> Result<String, Failure> {
    let t = arg.trim();
    if t.starts_with("did:") || t.starts_with("-----BEGIN") || t.starts_with('{') {
        return Ok(t.to_string());
    }
    std::fs::read_to_string(t).map_err(|e| {
        format!("`{t}` is not a did:key, PEM or JWK, nor a readable file ({e})").into()
    })
}

fn public_key(arg: &str) -> Result<PublicKey, Failure> {
    PublicKey::parse(&key_text(arg)?).map_err(|e| format!("public key: {e}").into())
}

fn policy_json(p: &AgentPolicy) -> Value {
    let agents: Vec<Value> = p
        .agents
        .iter()
        .map(|a| {
            json!({
                "key": a.key.to_did_key(),
                "caps": a.caps.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "added": a.added,
                "expires": a.expires,
                "revoked": a.revoked,
            })
        })
        .collect();
    json!({ "root": p.root.to_did_key(), "seq": p.seq, "issued_at": p.issued_at, "agents": agents })
}

fn changed(r: AgentPolicyResult, what: &str, key: &PublicKey) -> Out {
    out(
        format!(
            "{what} {}; policy version {} signed by {}\n",
            key.to_did_key(),
            r.seq,
            r.root
        ),
        json!({ "key": key.to_did_key(), "seq": r.seq, "root": r.root }),
    )
}

/// The commands that need the agent.
pub async fn agents(c: &Client, cmd: &AgentsCmd, json_out: bool) -> Result<Option<Out>, Failure> {
    Ok(Some(match cmd {
        AgentsCmd::Policy(PolicyCmd::Export { output }) => {
            let r = c.agents_policy().await?;
            let bytes = r.policy.into_vec();
            match output {
                Some(_) => {
                    write_output(output, &bytes)?;
                    out(
                        format!("agent policy version {} signed by {}\n", r.seq, r.root),
                        json!({ "written": true, "seq": r.seq, "root": r.root }),
                    )
                }
                None if json_out => out(
                    "",
                    json!({ "policy": hex::encode(&bytes), "seq": r.seq, "root": r.root }),
                ),
                None => out(format!("{}\n", hex::encode(&bytes)), Value::Null),
            }
        }
        AgentsCmd::Add { key, caps, expires } => {
            let pk = public_key(key)?;
            let caps = caps.iter().map(|c| c.as_str().to_string()).collect();
            let r = c.agents_add(&pk.to_did_key(), caps, *expires).await?;
            changed(r, "authorized", &pk)
        }
        AgentsCmd::Revoke { key } => {
            let pk = public_key(key)?;
            let r = c.agents_revoke(&pk.to_did_key()).await?;
            changed(r, "revoked", &pk)
        }
        AgentsCmd::Verify { .. } => {
            return Err("internal: offline command reached the agent path"
                .to_string()
                .into())
        }
    }))
}

/// Why `verify` says no: (exit code, `--json` code).
fn refusal(e: &AuthzError) -> (u8, &'static str) {
    match e {
        AuthzError::BadSignature { .. } => (2, "bad_signature"),
        AuthzError::WrongSigner { .. } => (3, "wrong_signer"),
        AuthzError::NotListed(_) => (4, "not_listed"),
        AuthzError::Revoked { .. } => (5, "revoked"),
        AuthzError::Expired { .. } => (6, "expired"),
        AuthzError::MissingCapability { .. } => (7, "missing_capability"),
        _ => (1, "malformed"),
    }
}

/// `agents verify`, offline: (exit code, text, JSON).
pub fn verify(cmd: &AgentsCmd) -> (u8, String, Value) {
    let AgentsCmd::Verify {
        policy,
        key,
        capability,
        signer,
        at,
    } = cmd
    else {
        return (1, "internal: not `agents verify`".into(), Value::Null);
    };
    let fail = |code: u8, json_code: &str, msg: String| {
        (
            code,
            msg.clone(),
            json!({ "authorized": false, "error": { "code": json_code, "message": msg } }),
        )
    };
    let bytes = match std::fs::read(policy) {
        Ok(b) => b,
        Err(e) => return fail(1, "client", format!("reading {}: {e}", policy.display())),
    };
    // A file of hex (what `policy export` prints on stdout) is accepted too.
    let bytes = match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| hex::decode(t.trim()).ok())
    {
        Some(b) => b,
        None => bytes,
    };
    let pk = match public_key(key) {
        Ok(k) => k,
        Err(f) => return fail(1, "client", f.message),
    };
    let expected = match signer.as_deref().map(public_key).transpose() {
        Ok(s) => s,
        Err(f) => return fail(1, "client", format!("--signer: {}", f.message)),
    };
    let p = match verify_policy(&bytes, expected.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            let (code, j) = refusal(&e);
            return fail(code, j, format!("not authorized: {e}"));
        }
    };
    let now = at.unwrap_or_else(now);
    match p.check(&pk, *capability, now) {
        Ok(a) => {
            let text = format!(
                "authorized: {} may {} for {} (policy version {}{})\n",
                pk.to_did_key(),
                capability,
                p.root.to_did_key(),
                p.seq,
                a.expires
                    .map(|e| format!(", until {e}"))
                    .unwrap_or_default()
            );
            let mut j = policy_json(&p);
            j["authorized"] = json!(true);
            j["key"] = json!(pk.to_did_key());
            j["capability"] = json!(capability.as_str());
            (0, text, j)
        }
        Err(e) => {
            let (code, j) = refusal(&e);
            fail(code, j, format!("not authorized: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_form() {
        assert_eq!(parse_time("1800000000"), Ok(1_800_000_000));
        assert_eq!(parse_time("1970-01-01"), Ok(0));
        assert_eq!(parse_time("2027-01-01T00:00:00Z"), Ok(1_798_761_600));
        assert_eq!(parse_time("2000-03-01T12:30:15"), Ok(951_913_815));
        let t = parse_time("+2d").unwrap();
        assert!(t >= now() + 2 * 86_400 - 5 && t <= now() + 2 * 86_400 + 5);
        for bad in [
            "",
            "+",
            "+5y",
            "2027-13-01",
            "yesterday",
            "2027-01-01T25:00:00",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
