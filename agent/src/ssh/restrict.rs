//! Session binding (`session-bind@openssh.com`) and destination constraints
//! (`restrict-destination-v00@openssh.com`), enforced as OpenSSH's `ssh-agent` does
//! (`identity_permitted`, `permitted_by_dest_constraints`, `parse_userauth_request`).
//!
//! A connection records the host keys (and session ids) that `ssh` bound it to. A key with
//! destination constraints is offered and signs only when every hop of those bindings is allowed
//! by one of its constraints, the request is a user-authentication request for the most recently
//! bound session, and (when it names one) for that session's host key. This module must never
//! accept a binding whose signature does not verify, nor a second binding for authentication.

use super::SshError;
use ssh_agent_lib::proto::extension::{DestinationConstraint, HostTuple, SessionBind};
use ssh_encoding::Decode;
use ssh_key::public::KeyData;

/// OpenSSH's limit on bindings per connection.
pub const MAX_BINDINGS: usize = 16;

/// One hop `ssh` bound this connection to.
#[derive(Clone, Debug)]
pub struct Binding {
    pub host_key: KeyData,
    pub session_id: Vec<u8>,
    pub forwarded: bool,
}

/// The per-connection binding state.
#[derive(Default, Debug)]
pub struct Bindings {
    pub hops: Vec<Binding>,
    /// A bind was attempted (even one that failed): constrained keys then need a good binding.
    pub attempted: bool,
}

impl Bindings {
    /// Record a verified binding (OpenSSH's `process_ext_session_bind`).
    pub fn bind(&mut self, b: &SessionBind) -> Result<(), SshError> {
        self.attempted = true;
        b.verify_signature().map_err(|e| {
            SshError::Refused(format!("session-bind signature does not verify: {e}"))
        })?;
        for hop in &self.hops {
            if !hop.forwarded {
                return Err(SshError::Refused(
                    "a second session binding on a connection bound for authentication".into(),
                ));
            }
            let sid = hop.session_id == b.session_id;
            if sid && hop.host_key == b.host_key {
                return Ok(()); // already recorded
            }
            if sid {
                return Err(SshError::Refused(
                    "session id already bound to a different host key".into(),
                ));
            }
        }
        if self.hops.len() >= MAX_BINDINGS {
            return Err(SshError::Refused("too many session bindings".into()));
        }
        self.hops.push(Binding {
            host_key: b.host_key.clone(),
            session_id: b.session_id.clone(),
            forwarded: b.is_forwarding,
        });
        Ok(())
    }

    /// The most recent binding.
    pub fn last(&self) -> Option<&Binding> {
        self.hops.last()
    }

    /// Whether a key with these constraints may be used (listed when `user` is `None`, or used
    /// to sign for `user`); `Ok(hostname)` names the destination it matched, if any.
    pub fn permitted(
        &self,
        constraints: &[DestinationConstraint],
        user: Option<&str>,
    ) -> Result<Option<String>, SshError> {
        if constraints.is_empty() {
            return Ok(None);
        }
        if self.attempted && self.hops.is_empty() {
            return Err(SshError::Refused(
                "an earlier session bind failed on this connection".into(),
            ));
        }
        if self.hops.is_empty() {
            return Ok(None); // local use
        }
        let mut from: Option<&KeyData> = None;
        let mut host = None;
        let n = self.hops.len();
        for (i, hop) in self.hops.iter().enumerate() {
            let test_user = if i == n - 1 { user } else { None };
            match permitted_by(constraints, from, Some(&hop.host_key), test_user) {
                Some(h) => host = h,
                None => {
                    return Err(SshError::Refused(format!(
                        "destination constraints do not allow hop {} (host key {})",
                        i + 1,
                        hop.host_key.fingerprint(ssh_key::HashAlg::Sha256)
                    )))
                }
            }
            from = Some(&hop.host_key);
        }
        let last = &self.hops[n - 1];
        if last.forwarded
            && user.is_none()
            && permitted_by(constraints, Some(&last.host_key), None, None).is_none()
        {
            return Err(SshError::Refused(
                "key permitted at the host but not beyond it".into(),
            ));
        }
        Ok(host)
    }
}

fn hop_matches(key: Option<&KeyData>, hop: &HostTuple) -> bool {
    // Certificate authorities (`is_ca`) would need the host's certificate: plain keys only.
    key.is_some_and(|k| hop.keys.iter().any(|s| !s.is_ca && &s.keyblob == k))
}

/// OpenSSH's `permitted_by_dest_constraints`: `Some(hostname)` of the first matching constraint.
fn permitted_by(
    constraints: &[DestinationConstraint],
    from: Option<&KeyData>,
    to: Option<&KeyData>,
    user: Option<&str>,
) -> Option<Option<String>> {
    for d in constraints {
        match from {
            None => {
                if !d.from.hostname.is_empty() || !d.from.keys.is_empty() {
                    continue;
                }
            }
            Some(_) => {
                if !hop_matches(from, &d.from) {
                    continue;
                }
            }
        }
        if to.is_some() && !hop_matches(to, &d.to) {
            continue;
        }
        if let Some(u) = user {
            if !d.to.username.is_empty() && !glob(&d.to.username, u) {
                continue;
            }
        }
        return Some(Some(d.to.hostname.clone()).filter(|h| !h.is_empty()));
    }
    None
}

/// OpenSSH's `match_pattern`: `*` and `?` wildcards.
fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// What a user-authentication request being signed says (OpenSSH's `parse_userauth_request`).
#[derive(Debug)]
pub struct Userauth {
    pub user: String,
    pub session_id: Vec<u8>,
    pub host_key: Option<KeyData>,
}

/// Parse the data of a sign request as an SSH2_MSG_USERAUTH_REQUEST for `key`.
pub fn parse_userauth(data: &[u8], key: &KeyData) -> Result<Userauth, SshError> {
    let bad = |what: &str| SshError::Refused(format!("not a user-authentication request: {what}"));
    let mut r = data;
    let session_id = Vec::<u8>::decode(&mut r)?;
    if session_id.is_empty() || session_id.len() > 64 {
        return Err(bad("session id length"));
    }
    let msg = u8::decode(&mut r)?;
    if msg != 50 {
        return Err(bad("message type"));
    }
    let user = String::decode(&mut r)?;
    let service = String::decode(&mut r)?;
    if service != "ssh-connection" {
        return Err(bad("service"));
    }
    let method = String::decode(&mut r)?;
    let hostbound = match method.as_str() {
        "publickey" => false,
        "publickey-hostbound-v00@openssh.com" => true,
        _ => return Err(bad("method")),
    };
    if u8::decode(&mut r)? == 0 {
        return Err(bad("no signature flag"));
    }
    let _alg = String::decode(&mut r)?;
    let blob = Vec::<u8>::decode(&mut r)?;
    if &KeyData::decode(&mut blob.as_slice())? != key {
        return Err(bad("it is for another key"));
    }
    let host_key = if hostbound {
        let blob = Vec::<u8>::decode(&mut r)?;
        Some(KeyData::decode(&mut blob.as_slice())?)
    } else {
        None
    };
    if !r.is_empty() {
        return Err(bad("trailing data"));
    }
    Ok(Userauth {
        user,
        session_id,
        host_key,
    })
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_as_openssh() {
        assert!(glob("*", "alice"));
        assert!(glob("al?ce", "alice"));
        assert!(glob("a*e", "alice"));
        assert!(!glob("bob", "alice"));
        assert!(!glob("a*x", "alice"));
    }
}
