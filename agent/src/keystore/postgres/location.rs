//! Where a PostgreSQL keystore lives: `keystore = "postgres://..."` or a libpq keyword string
//! (`host=... dbname=...`) parsed into a [`PgLocation`], and the password looked up in a libpq
//! password file.
//!
//! It must never accept a password in the configuration (it would sit in a file that is read by
//! people and copied into tickets), and never take a string it does not understand as anything
//! else: an unknown option, a malformed URL or a password is an error naming the problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// libpq's `sslmode`, as far as a client can honour it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked (libpq's
    /// default: protects against passive listeners only).
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked (as libpq without a root file).
    Require,
    /// TLS with a certificate chained to a trusted root (`sslrootcert`, else the system's), any
    /// host name.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A parsed PostgreSQL keystore location. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLocation {
    /// Host names, addresses, or (starting with `/`) Unix socket directories; empty: libpq's
    /// default, the local socket directory `/var/run/postgresql`.
    pub hosts: Vec<String>,
    pub port: u16,
    /// `None`: the operating-system user's name.
    pub user: Option<String>,
    /// `None`: the user's name.
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// How long one keystore call may wait for the database's answer (`call_timeout`, not a
    /// libpq keyword): a server that stops answering in the middle of a call (frozen, a lock
    /// held by a stuck transaction) gives `keystore_unavailable` after this, not a hang.
    pub call_timeout: Duration,
    /// `None`: `PGPASSFILE`, else `~/.pgpass`.
    pub passfile: Option<PathBuf>,
}

/// The connect timeout when none is given.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The call timeout when none is given: well above any single-key call (milliseconds), well
/// below a hang. Bulk copies (`keystore migrate`, the integrity rekey) are not bounded by it.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for PgLocation {
    fn default() -> Self {
        PgLocation {
            hosts: Vec::new(),
            port: 5432,
            user: None,
            dbname: None,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            passfile: None,
        }
    }
}

/// Whether `text` is meant as a PostgreSQL location (a `postgres://`/`postgresql://` URL, or a
/// libpq string whose first word is a libpq keyword), rather than a file path.
pub fn looks_like_postgres(text: &str) -> bool {
    let t = text.trim_start();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        return true;
    }
    t.split_whitespace()
        .next()
        .and_then(|w| w.split_once('='))
        .is_some_and(|(k, _)| LIBPQ_KEYS.contains(&k) || k == "password")
}

/// The keywords a location may use (URL query parameters and libpq words alike).
const LIBPQ_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "dbname",
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "call_timeout",
    "passfile",
];

impl PgLocation {
    /// Parse a URL or libpq keyword string. Errors say what is wrong, never echo a password.
    pub fn parse(text: &str) -> Result<PgLocation, String> {
        let t = text.trim();
        if let Some(rest) = t
            .strip_prefix("postgresql://")
            .or_else(|| t.strip_prefix("postgres://"))
        {
            Self::parse_url(rest)
        } else {
            Self::parse_keywords(t)
        }
    }

    fn parse_url(rest: &str) -> Result<PgLocation, String> {
        let mut loc = PgLocation::default();
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        if main.contains('#') {
            return Err("a fragment (#...) is not understood".into());
        }
        let (authority, path) = match main.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (main, None),
        };
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hp)) => {
                if userinfo.contains(':') {
                    return Err(password_refused());
                }
                if !userinfo.is_empty() {
                    loc.user = Some(decode(userinfo)?);
                }
                hp
            }
            None => authority,
        };
        for hp in hostport.split(',').filter(|s| !s.is_empty()) {
            let (host, port) = if let Some(inner) = hp.strip_prefix('[') {
                let (h, after) = inner
                    .split_once(']')
                    .ok_or("an IPv6 address without its closing ']'")?;
                (h.to_string(), after.strip_prefix(':'))
            } else {
                match hp.rsplit_once(':') {
                    Some((h, p)) => (decode(h)?, Some(p)),
                    None => (decode(hp)?, None),
                }
            };
            if let Some(p) = port {
                loc.port = parse_port(p)?;
            }
            if !host.is_empty() {
                loc.hosts.push(host);
            }
        }
        if let Some(p) = path.filter(|p| !p.is_empty()) {
            if p.contains('/') {
                return Err(format!("database name {p:?} has a '/'"));
            }
            loc.dbname = Some(decode(p)?);
        }
        for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("query parameter {pair:?} has no value"))?;
            loc.set(&decode(k)?, &decode(v)?)?;
        }
        Ok(loc)
    }

    fn parse_keywords(text: &str) -> Result<PgLocation, String> {
        let mut loc = PgLocation::default();
        let mut chars = text.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next() != Some('=') {
                return Err(format!("{key:?} is not a keyword=value pair"));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'\'') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(format!("the value of {key} has no closing quote")),
                        Some('\'') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => value.push(c),
                            None => return Err(format!("the value of {key} ends in '\\'")),
                        },
                        Some(c) => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    if c == '\\' {
                        chars.next();
                        match chars.next() {
                            Some(c) => value.push(c),
                            None => return Err(format!("the value of {key} ends in '\\'")),
                        }
                        continue;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            loc.set(&key, &value)?;
        }
        Ok(loc)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "password" => return Err(password_refused()),
            "host" | "hostaddr" => {
                self.hosts = value
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            "port" => self.port = parse_port(value)?,
            "user" => self.user = Some(value.to_string()).filter(|v| !v.is_empty()),
            "dbname" => self.dbname = Some(value.to_string()).filter(|v| !v.is_empty()),
            "sslmode" => {
                self.sslmode = SslMode::parse(value).ok_or_else(|| {
                    format!(
                        "sslmode {value:?} is not one of disable, prefer, require, verify-ca, \
                         verify-full"
                    )
                })?
            }
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(value)),
            "connect_timeout" => self.connect_timeout = seconds(key, value)?,
            "call_timeout" => self.call_timeout = seconds(key, value)?,
            "passfile" => self.passfile = Some(PathBuf::from(value)),
            other => {
                return Err(format!(
                    "{other:?} is not understood (known: {})",
                    LIBPQ_KEYS.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// The user name to connect as: the configured one, else the operating-system user's.
    pub fn user_name(&self) -> String {
        self.user.clone().unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "keyward".into())
        })
    }

    /// The database name: the configured one, else the user name.
    pub fn dbname_or_user(&self) -> String {
        self.dbname.clone().unwrap_or_else(|| self.user_name())
    }

    /// The password file to read: `passfile`, else `PGPASSFILE`, else `~/.pgpass`.
    pub fn passfile_path(&self) -> Option<PathBuf> {
        self.passfile
            .clone()
            .or_else(|| std::env::var_os("PGPASSFILE").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))
    }

    /// Text for logs and errors: where, without anything secret (there is nothing secret).
    pub fn display(&self) -> String {
        let hosts = if self.hosts.is_empty() {
            "(local socket)".to_string()
        } else {
            self.hosts.join(",")
        };
        format!(
            "postgres://{}@{}:{}/{} (sslmode {})",
            self.user_name(),
            hosts,
            self.port,
            self.dbname_or_user(),
            self.sslmode.as_str()
        )
    }
}

fn password_refused() -> String {
    "a password in the keystore setting is refused: put it in a password file (passfile=..., \
     PGPASSFILE or ~/.pgpass, mode 0600)"
        .into()
}

/// A timeout option's value: whole seconds, 1..3600.
fn seconds(key: &str, value: &str) -> Result<Duration, String> {
    value
        .parse()
        .ok()
        .filter(|s| (1..=3600).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{key} {value:?} is not a number of seconds (1..3600)"))
}

fn parse_port(p: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {p:?} is not a port number"))
}

/// Percent-decoding of a URL component.
fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// The password for (`host`, `port`, `db`, `user`) in a libpq password file: the first line
/// whose fields match (`*` matches anything; `\:` and `\\` are escapes). A file readable by
/// group or others is ignored, as libpq does. `None` when nothing matches or there is no file.
pub fn lookup_password(
    file: &Path,
    host: &str,
    port: u16,
    db: &str,
    user: &str,
) -> Result<Option<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("password file {}: {e}", file.display())),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            "the password file is readable by group or others: ignored (chmod 0600 it)"
        );
        return Ok(None);
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("password file {}: {e}", file.display()))?;
    let port = port.to_string();
    let want = [host, port.as_str(), db, user];
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() != 5 {
            continue;
        }
        let matches = fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w);
        if matches {
            return Ok(Some(fields[4].clone()));
        }
    }
    Ok(None)
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if let Some(last) = out.last_mut() {
                        last.push(n);
                    }
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults() {
        let l = PgLocation::parse("postgres://kw@db.example/keyward").unwrap();
        assert_eq!(l.hosts, vec!["db.example"]);
        assert_eq!(l.port, 5432);
        assert_eq!(l.user.as_deref(), Some("kw"));
        assert_eq!(l.dbname.as_deref(), Some("keyward"));
        assert_eq!(l.sslmode, SslMode::Prefer);
        assert_eq!(l.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(l.passfile, None);

        let l = PgLocation::parse(
            "postgresql://db1:6543,[::1]:7000/ks?sslmode=verify-full&connect_timeout=2\
             &passfile=/etc/kw/pgpass&sslrootcert=/etc/kw/ca.pem",
        )
        .unwrap();
        assert_eq!(l.hosts, vec!["db1", "::1"]);
        assert_eq!(l.port, 7000);
        assert_eq!(l.sslmode, SslMode::VerifyFull);
        assert_eq!(l.connect_timeout, Duration::from_secs(2));
        assert_eq!(l.passfile.as_deref(), Some(Path::new("/etc/kw/pgpass")));
        assert_eq!(l.sslrootcert.as_deref(), Some(Path::new("/etc/kw/ca.pem")));

        // A Unix socket directory, percent-encoded.
        let l = PgLocation::parse("postgres://%2Fvar%2Frun%2Fpostgresql/ks").unwrap();
        assert_eq!(l.hosts, vec!["/var/run/postgresql"]);
    }

    #[test]
    fn keyword_strings_parse() {
        let l = PgLocation::parse(
            "host=db.example port=5433 dbname=keyward user=kw sslmode=require \
             passfile='/etc/kw/my pgpass' connect_timeout=10",
        )
        .unwrap();
        assert_eq!(l.hosts, vec!["db.example"]);
        assert_eq!(l.port, 5433);
        assert_eq!(l.dbname.as_deref(), Some("keyward"));
        assert_eq!(l.user.as_deref(), Some("kw"));
        assert_eq!(l.sslmode, SslMode::Require);
        assert_eq!(l.passfile.as_deref(), Some(Path::new("/etc/kw/my pgpass")));
        assert_eq!(l.connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn passwords_and_unknown_options_are_refused() {
        for bad in [
            "postgres://kw:secret@db/keyward",
            "postgres://db/keyward?password=secret",
            "host=db password=secret",
        ] {
            let e = PgLocation::parse(bad).expect_err(bad);
            assert!(
                e.contains("password") && !e.contains("secret"),
                "{bad}: {e}"
            );
        }
        for bad in [
            "postgres://db/keyward?sslmode=sometimes",
            "postgres://db/keyward?application_name=x",
            "postgres://db:notaport/keyward",
            "postgres://db/a/b",
            "postgres://db/keyward?connect_timeout=0",
            "postgres://db/keyward?connect_timeout=soon",
            "host=db bogus=1",
            "host=db dbname",
            "host='db",
            "postgres://db/k%zz",
        ] {
            assert!(PgLocation::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_looks_like_postgres() {
        assert!(looks_like_postgres("postgres://x"));
        assert!(looks_like_postgres("postgresql://x"));
        assert!(looks_like_postgres("host=x dbname=y"));
        assert!(looks_like_postgres("dbname=y"));
        assert!(looks_like_postgres("password=y"));
        assert!(!looks_like_postgres("ks.db"));
        assert!(!looks_like_postgres("dir/a=b.db"));
        assert!(!looks_like_postgres("sqlite://ks.db"));
    }

    #[test]
    fn password_files_are_read_like_libpq() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pgpass");
        std::fs::write(
            &f,
            "# comment\nother:5432:*:kw:no\ndb:5432:ks:kw:p\\:w\\\\d\n*:*:*:admin:a\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup_password(&f, "db", 5432, "ks", "kw")
                .unwrap()
                .as_deref(),
            Some("p:w\\d")
        );
        assert_eq!(
            lookup_password(&f, "x", 1, "y", "admin")
                .unwrap()
                .as_deref(),
            Some("a")
        );
        assert_eq!(lookup_password(&f, "db", 5433, "ks", "kw").unwrap(), None);
        // Readable by others: ignored, as libpq does.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup_password(&f, "db", 5432, "ks", "kw").unwrap(), None);
        assert_eq!(
            lookup_password(&dir.path().join("none"), "db", 1, "a", "b").unwrap(),
            None
        );
    }
}
