//! The PostgreSQL keystore backend (issue #17): [`PgStore`], the same records, MACs and
//! migrations as the SQLite keystore, in a database that many agents (devices, users) share.
//!
//! - **Same bytes, same MACs.** Rows are encoded and MAC'd by the SQLite keystore's own functions
//!   (`record_body`, `version_body`, `revocation_body`, `check_mac`, `verified`), so a record
//!   copied between backends verifies in both.
//! - **Its own runtime.** The keystore API is synchronous and is called from blocking threads
//!   and from runtime workers. `tokio-postgres` is async, and `block_on` on a runtime worker
//!   panics; so a `PgStore` owns a small current-thread tokio runtime on a thread of its own
//!   (`keyward-pg`), every call sends its work there as a future and waits on a channel for the
//!   answer. A caller on a runtime worker blocks that worker for the call (as a SQLite call does),
//!   never nests a runtime.
//! - **Database down.** Connections come from a `deadpool-postgres` pool whose waits, connects
//!   and recycles are bounded by the location's `connect_timeout`: a database that is down or
//!   unreachable answers [`KeystoreError::Unavailable`] within that time, and the next call tries
//!   again, so work resumes by itself when the database returns. A pooled connection answers an
//!   empty query before each use (`Verified` recycling), so a server that stopped answering on
//!   open connections is `Unavailable` too (within about twice the timeout), not a hang; one
//!   that stops answering during a call, after `call_timeout` ([`PgStore::run`]).
//! - **Several agents.** Every row has `row_version`; read-modify-write updates say
//!   `AND row_version = $n`, and a row changed meanwhile by another agent is
//!   [`KeystoreError::Conflict`] (the caller retries).
//! - **Many users.** Rows are scoped by `identity` with row-level security on `current_user`
//!   (`schema.rs`); this code never names an identity in a query and cannot widen its scope.
//! - **Caches.** A listening connection (`LISTEN keyward`) bumps [`PgStore::generation`] on every
//!   notification and after every reconnect (changes may have been missed meanwhile).
//!
//! It must never hold a key in the clear, never put a password anywhere but the connection
//! (read from the password file), and never `block_on` a runtime from inside one.

mod copy;
mod devices;
mod integrity;
mod journal;
mod location;
mod records;
mod roots;
mod schema;
mod tls;

pub use location::{looks_like_postgres, lookup_password, PgLocation, SslMode};

use super::{
    check_mac, now, record_body, revocation_body, verified, version_body, Algorithm, Cursor,
    KeyKind, KeyRecord, KeyState, KeyVersion, KeystoreError, ListFilter, MacKey, MacState, Page,
    PageBuilder, PageSize, Purpose, Revocation, SshFlags, KEY_COLUMNS,
};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;
type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// The advisory lock every migration step takes (`pg_advisory_xact_lock`): "keyward" in ASCII.
const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"\0keyward");

/// What the runtime thread's work shares.
struct Shared {
    pool: Pool,
    location: PgLocation,
    mac: MacState,
    /// Record writes by this store, plus notifications and listener reconnects.
    changes: AtomicU64,
}

/// A keystore in PostgreSQL. Its methods mirror [`super::Keystore`]'s (same names, arguments and
/// results).
pub struct PgStore {
    shared: Arc<Shared>,
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    identity: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.shared.location.display())
            .field("identity", &self.identity)
            .finish()
    }
}

fn unavailable(op: &'static str, what: impl ToString) -> KeystoreError {
    KeystoreError::Unavailable {
        op,
        what: what.to_string(),
    }
}

/// A `tokio-postgres` error as a keystore error: the server's refusals keep their text (a
/// database error); a closed connection, an I/O error or a server shutting down is
/// `Unavailable`; a serialization failure is a `Conflict`.
fn pg(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> KeystoreError {
    move |e| {
        use tokio_postgres::error::SqlState;
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
            {
                return KeystoreError::Conflict {
                    op,
                    id: "(transaction)".into(),
                };
            }
            // Class 08 (connection), 57P0x (shutdown, cannot connect now), 53 (resources).
            let c = code.code();
            if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") {
                return unavailable(op, db);
            }
            return KeystoreError::Database {
                op,
                what: db.to_string(),
            };
        }
        let text = e.to_string();
        if text.starts_with("error deserializing") || text.starts_with("error serializing") {
            return KeystoreError::Database { op, what: text };
        }
        unavailable(op, format!("{e}{}", source_text(&e)))
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut s = e.source();
    while let Some(inner) = s {
        out.push_str(": ");
        out.push_str(&inner.to_string());
        s = inner.source();
    }
    out
}

fn pool_err(op: &'static str) -> impl FnOnce(deadpool_postgres::PoolError) -> KeystoreError {
    move |e| match e {
        deadpool_postgres::PoolError::Backend(e) => {
            // Authentication and authorisation (class 28) and a missing database (3D000) are
            // configuration, not an outage: say what the server said.
            if let Some(db) = e.as_db_error() {
                let c = db.code().code();
                if c.starts_with("28") || c == "3D000" {
                    return KeystoreError::Database {
                        op,
                        what: db.to_string(),
                    };
                }
            }
            // tokio-postgres says so before connecting (no password found, bad host list).
            if e.to_string().starts_with("invalid configuration") {
                return KeystoreError::Database {
                    op,
                    what: format!(
                        "{e} (a password comes from the password file: passfile=..., \
                         PGPASSFILE or ~/.pgpass)"
                    ),
                };
            }
            pg(op)(e)
        }
        deadpool_postgres::PoolError::Timeout(_) => {
            unavailable(op, "the database did not answer within the connect timeout")
        }
        other => unavailable(op, other),
    }
}

fn corrupt(id: &str, what: impl ToString) -> KeystoreError {
    KeystoreError::Corrupt {
        id: id.to_string(),
        what: what.to_string(),
    }
}

fn to_i64(op: &'static str, v: u64) -> Result<i64, KeystoreError> {
    i64::try_from(v).map_err(|_| KeystoreError::Database {
        op,
        what: format!("{v} does not fit a BIGINT"),
    })
}

/// The parameters of a key row, in `INSERT_KEY`'s order.
fn key_params(r: &KeyRecord, mac: Option<Vec<u8>>) -> Result<Params, KeystoreError> {
    const OP: &str = "insert key";
    Ok(vec![
        Box::new(r.id.to_string()),
        Box::new(r.kind.as_str()),
        Box::new(r.label.clone()),
        Box::new(r.parent.map(|p| p.to_string())),
        Box::new(r.scheme.clone()),
        Box::new(r.wrapped.clone()),
        Box::new(r.public_key.clone()),
        Box::new(r.locator.clone()),
        Box::new(r.purpose.map(Purpose::as_str)),
        Box::new(r.exportable),
        Box::new(i64::from(r.version)),
        Box::new(to_i64(OP, r.created)?),
        Box::new(r.rotated.map(|t| to_i64(OP, t)).transpose()?),
        Box::new(r.state.as_str()),
        Box::new(r.name.clone()),
        Box::new(r.issuer.map(|p| p.to_string())),
        Box::new(r.statement.clone()),
        Box::new(r.algorithm.map(Algorithm::as_str)),
        Box::new(i64::from(r.ssh.0)),
        Box::new(mac),
        Box::new(r.certificate.clone()),
        Box::new(r.min_version.map(i64::from)),
        Box::new(r.usage.map(i64::from)),
        Box::new(r.not_after.map(|t| to_i64(OP, t)).transpose()?),
    ])
}

const INSERT_KEY: &str = "INSERT INTO keys (id, kind, label, parent, scheme, wrapped, public_key,
    locator, purpose, exportable, version, created, rotated, state, name, issuer, statement,
    algorithm, ssh, mac, certificate, min_version, usage, not_after)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
            $20, $21, $22, $23, $24)";

fn refs(p: &Params) -> Vec<&(dyn ToSql + Sync)> {
    p.iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// A key row read: its id (for errors), the record as parsed (unchecked), its MAC, its row
/// version.
type KeyRow = (
    String,
    Result<KeyRecord, KeystoreError>,
    Option<Vec<u8>>,
    i64,
);

/// A key row (`KEY_COLUMNS`, then `row_version`) as a record, unchecked, with its MAC and
/// row version.
fn from_pg_row(row: &tokio_postgres::Row) -> Result<KeyRow, KeystoreError> {
    const OP: &str = "read key";
    let db = |e: tokio_postgres::Error| pg(OP)(e);
    let id: String = row.try_get(0).map_err(db)?;
    let mac: Option<Vec<u8>> = row.try_get(23).map_err(db)?;
    let row_version: i64 = row.try_get(24).map_err(db)?;
    let c = |what: String| corrupt(&id, what);
    let uuid = |s: Option<String>, what: &str| -> Result<Option<Uuid>, KeystoreError> {
        s.as_deref()
            .map(Uuid::parse_str)
            .transpose()
            .map_err(|_| c(format!("{what} is not a UUID")))
    };
    let u32_of = |v: Option<i64>, what: &str| -> Result<Option<u32>, KeystoreError> {
        v.map(|n| u32::try_from(n).map_err(|_| c(format!("{what} {n} out of range"))))
            .transpose()
    };
    let u64_of = |v: Option<i64>, what: &str| -> Result<Option<u64>, KeystoreError> {
        v.map(|n| u64::try_from(n).map_err(|_| c(format!("{what} {n} out of range"))))
            .transpose()
    };
    let build = || -> Result<KeyRecord, KeystoreError> {
        let kind: String = row.try_get(1).map_err(db)?;
        let purpose: Option<String> = row.try_get(8).map_err(db)?;
        let state: String = row.try_get(13).map_err(db)?;
        let algorithm: Option<String> = row.try_get(17).map_err(db)?;
        Ok(KeyRecord {
            id: Uuid::parse_str(&id).map_err(|_| c("id is not a UUID".into()))?,
            kind: KeyKind::parse(&kind).ok_or_else(|| c(format!("kind {kind}")))?,
            label: row.try_get(2).map_err(db)?,
            parent: uuid(row.try_get(3).map_err(db)?, "parent")?,
            scheme: row.try_get(4).map_err(db)?,
            wrapped: row.try_get(5).map_err(db)?,
            public_key: row.try_get(6).map_err(db)?,
            locator: row.try_get(7).map_err(db)?,
            purpose: match purpose.as_deref() {
                None => None,
                Some(p) => Some(Purpose::parse(p).ok_or_else(|| c(format!("purpose {p}")))?),
            },
            exportable: row.try_get(9).map_err(db)?,
            version: u32_of(Some(row.try_get(10).map_err(db)?), "version")?.unwrap_or(1),
            created: u64_of(Some(row.try_get(11).map_err(db)?), "created")?.unwrap_or(0),
            rotated: u64_of(row.try_get(12).map_err(db)?, "rotated")?,
            state: KeyState::parse(&state).ok_or_else(|| c(format!("state {state}")))?,
            name: row.try_get(14).map_err(db)?,
            issuer: uuid(row.try_get(15).map_err(db)?, "issuer")?,
            statement: row.try_get(16).map_err(db)?,
            algorithm: match algorithm.as_deref() {
                None => None,
                Some(a) => Some(Algorithm::parse(a).ok_or_else(|| c(format!("algorithm {a}")))?),
            },
            ssh: SshFlags(u32_of(Some(row.try_get(18).map_err(db)?), "ssh")?.unwrap_or(0)),
            certificate: row.try_get(19).map_err(db)?,
            min_version: u32_of(row.try_get(20).map_err(db)?, "min_version")?,
            usage: u32_of(row.try_get(21).map_err(db)?, "usage")?,
            not_after: u64_of(row.try_get(22).map_err(db)?, "not_after")?,
        })
    };
    let parsed = build();
    Ok((id, parsed, mac, row_version))
}

/// Key rows matching `where_` (in (created, id) order), each checked when `key` is given, with
/// their row versions.
async fn query_keys<C: GenericClient>(
    c: &C,
    key: Option<&MacKey>,
    op: &'static str,
    where_: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<(KeyRecord, i64)>, KeystoreError> {
    let sql =
        format!("SELECT {KEY_COLUMNS}, row_version FROM keys WHERE {where_} ORDER BY created, id");
    let rows = c.query(&sql, args).await.map_err(pg(op))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let (id, parsed, mac, rv) = from_pg_row(row)?;
        out.push((verified(key, &id, parsed, mac)?, rv));
    }
    Ok(out)
}

async fn get_key<C: GenericClient>(
    c: &C,
    key: Option<&MacKey>,
    id: &Uuid,
) -> Result<Option<(KeyRecord, i64)>, KeystoreError> {
    Ok(
        query_keys(c, key, "read key", "id = $1", &[&id.to_string()])
            .await?
            .into_iter()
            .next(),
    )
}

async fn insert_key<C: GenericClient>(
    c: &C,
    key: Option<&MacKey>,
    r: &KeyRecord,
) -> Result<(), KeystoreError> {
    let p = key_params(r, key.map(|k| k.tag(&record_body(r))))?;
    c.execute(INSERT_KEY, &refs(&p))
        .await
        .map_err(pg("insert key"))?;
    Ok(())
}

async fn insert_revocation<C: GenericClient>(
    c: &C,
    key: Option<&MacKey>,
    r: &Revocation,
) -> Result<(), KeystoreError> {
    let mac = key.map(|k| k.tag(&revocation_body(r)));
    c.execute(
        "INSERT INTO revocations (id, revoked, issuer, statement, created, mac)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &r.id.to_string(),
            &r.revoked.to_string(),
            &r.issuer.to_string(),
            &r.statement,
            &to_i64("store revocation", r.created)?,
            &mac,
        ],
    )
    .await
    .map_err(pg("store revocation"))?;
    Ok(())
}

/// Write back a changed key row (every column, re-MAC'd) if its row version is still `rv`:
/// otherwise another agent changed it meanwhile, a [`KeystoreError::Conflict`].
async fn update_key<C: GenericClient>(
    c: &C,
    key: Option<&MacKey>,
    r: &KeyRecord,
    rv: i64,
    op: &'static str,
) -> Result<(), KeystoreError> {
    let mut p = key_params(r, key.map(|k| k.tag(&record_body(r))))?;
    p.push(Box::new(rv));
    let n = c
        .execute(
            "UPDATE keys SET kind = $2, label = $3, parent = $4, scheme = $5, wrapped = $6,
                public_key = $7, locator = $8, purpose = $9, exportable = $10, version = $11,
                created = $12, rotated = $13, state = $14, name = $15, issuer = $16,
                statement = $17, algorithm = $18, ssh = $19, mac = $20, certificate = $21,
                min_version = $22, usage = $23, not_after = $24, row_version = row_version + 1
             WHERE id = $1 AND row_version = $25",
            &refs(&p),
        )
        .await
        .map_err(pg(op))?;
    if n == 0 {
        return Err(KeystoreError::Conflict {
            op,
            id: r.id.to_string(),
        });
    }
    Ok(())
}

async fn set_state<C: GenericClient>(
    c: &C,
    key: Option<&MacKey>,
    id: &Uuid,
    state: KeyState,
) -> Result<(), KeystoreError> {
    let Some((mut r, rv)) = get_key(c, key, id).await? else {
        return Ok(());
    };
    r.state = state;
    r.rotated = Some(now());
    update_key(c, key, &r, rv, "update key state").await
}

/// The WHERE clause of a paged list and its arguments (`$1`...).
fn page_clause(filter: &ListFilter) -> (&'static str, Vec<String>) {
    match filter {
        ListFilter::Kind(k) => ("kind = $1", vec![k.as_str().to_string()]),
        ListFilter::Children(k, p) => (
            "parent = $1 AND kind = $2",
            vec![p.to_string(), k.as_str().to_string()],
        ),
        ListFilter::Nodes => ("kind = 'keypair' AND name IS NOT NULL", vec![]),
        ListFilter::HeldShares => ("kind = 'secret' AND public_key IS NOT NULL", vec![]),
    }
}

async fn put_metas<C: GenericClient>(
    c: &C,
    rows: &[(String, Option<String>)],
) -> Result<(), KeystoreError> {
    for (name, value) in rows {
        match value {
            Some(v) => c
                .execute(
                    "INSERT INTO meta (name, value) VALUES ($1, $2)
                     ON CONFLICT (identity, name) DO UPDATE
                        SET value = excluded.value, row_version = meta.row_version + 1",
                    &[name, v],
                )
                .await
                .map_err(pg("write meta"))?,
            None => c
                .execute("DELETE FROM meta WHERE name = $1", &[name])
                .await
                .map_err(pg("write meta"))?,
        };
    }
    Ok(())
}

/// Bring the schema to [`super::Keystore::SCHEMA_VERSION`], one step per transaction, each under
/// `pg_advisory_xact_lock` (two agents starting at once: the second waits, then finds the step
/// done). A schema already current is only read (a role that may not migrate opens it).
async fn migrate(c: &mut deadpool_postgres::Object) -> Result<(), KeystoreError> {
    let steps = schema::migrations();
    let target = steps.len() as i64;
    let exists: Option<String> = c
        .query_one("SELECT to_regclass('keyward_schema')::text", &[])
        .await
        .map_err(pg("read schema version"))?
        .get(0);
    let found: i64 = if exists.is_none() {
        0
    } else {
        c.query_one("SELECT coalesce(max(version), 0) FROM keyward_schema", &[])
            .await
            .map_err(pg("read schema version"))?
            .get(0)
    };
    if found > target {
        return Err(KeystoreError::TooNew {
            found,
            supported: target,
        });
    }
    if found == target {
        return Ok(());
    }
    loop {
        let tx = c.transaction().await.map_err(pg("begin migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg("lock for migration"))?;
        // A scan of the catalog with this statement's snapshot: `to_regclass` here can miss a
        // table that the agent we waited for just created (a stale catalog cache; found by
        // `concurrent_migrations_run_once`).
        let exists: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relname = 'keyward_schema' AND n.nspname = current_schema())",
                &[],
            )
            .await
            .map_err(pg("read schema version"))?
            .get(0);
        if !exists {
            tx.batch_execute(
                "CREATE TABLE keyward_schema (
                    version     BIGINT PRIMARY KEY,
                    applied     BIGINT NOT NULL,
                    backend     INTEGER NOT NULL
                 );
                 GRANT SELECT ON keyward_schema TO PUBLIC;",
            )
            .await
            .map_err(pg("create schema table"))?;
        }
        let found: i64 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM keyward_schema", &[])
            .await
            .map_err(pg("read schema version"))?
            .get(0);
        if found > target {
            return Err(KeystoreError::TooNew {
                found,
                supported: target,
            });
        }
        if found == target {
            tx.commit().await.map_err(pg("commit migration"))?;
            return Ok(());
        }
        let step = usize::try_from(found).unwrap_or(usize::MAX);
        let Some(sql) = steps.get(step) else {
            return Err(corrupt("(schema)", format!("no migration from {found}")));
        };
        tx.batch_execute(sql).await.map_err(pg("migrate schema"))?;
        tx.execute(
            "INSERT INTO keyward_schema (version, applied, backend)
             VALUES ($1, extract(epoch from now())::bigint, pg_backend_pid())",
            &[&(found + 1)],
        )
        .await
        .map_err(pg("set schema version"))?;
        tx.commit().await.map_err(pg("commit migration"))?;
    }
}

/// The `tokio_postgres` configuration for a location, with the password from the password file.
fn pg_config(loc: &PgLocation) -> Result<tokio_postgres::Config, KeystoreError> {
    let mut cfg = tokio_postgres::Config::new();
    let user = loc.user_name();
    let db = loc.dbname_or_user();
    cfg.user(&user).dbname(&db).port(loc.port);
    let hosts = if loc.hosts.is_empty() {
        vec!["/var/run/postgresql".to_string()]
    } else {
        loc.hosts.clone()
    };
    for h in &hosts {
        if h.starts_with('/') {
            cfg.host_path(h);
        } else {
            cfg.host(h);
        }
    }
    cfg.connect_timeout(loc.connect_timeout)
        // A host that stops acknowledging what we sent (down, partitioned) closes the
        // connection after this, rather than after the kernel's ~15 minutes of retransmits.
        .tcp_user_timeout(loc.call_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .application_name("keywardd")
        .ssl_mode(match loc.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
    if let Some(file) = loc.passfile_path() {
        // libpq names a socket-directory host `localhost` in the password file.
        let first = hosts
            .first()
            .map(|h| {
                if h.starts_with('/') {
                    "localhost".to_string()
                } else {
                    h.clone()
                }
            })
            .unwrap_or_default();
        let found = lookup_password(&file, &first, loc.port, &db, &user).map_err(|what| {
            KeystoreError::Database {
                op: "read the password file",
                what,
            }
        })?;
        if let Some(p) = found {
            cfg.password(p);
        }
    }
    Ok(cfg)
}

/// A connection for the listener (outside the pool), TLS as the pool's.
enum Tls {
    Plain,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl PgStore {
    /// Connect to `loc`, migrate its schema, and find this role's identity (a role that owns
    /// the database and has none yet gets one: the single-user set-up). Fails with
    /// [`KeystoreError::Unavailable`] within the connect timeout when the database is down.
    pub fn open(loc: &PgLocation) -> Result<PgStore, KeystoreError> {
        let cfg = pg_config(loc)?;
        let tls = tls::client_config(loc).map_err(|what| KeystoreError::Database {
            op: "configure TLS",
            what,
        })?;
        // Verified: a pooled connection answers one empty query (bounded by the recycle
        // timeout, the connect timeout) before a call uses it. With `Fast` (is the socket still
        // open?) a server that stopped answering on an open connection (a hung host, a
        // partition) left the call waiting until TCP gave up, not `Unavailable` within the
        // connect timeout; a write never starts on a connection that does not answer. The cost
        // is one round trip per keystore call (the hot paths answer from the record copies).
        let mgr_cfg = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let (mgr, listen_tls) = match tls {
            None => (
                Manager::from_config(cfg.clone(), tokio_postgres::NoTls, mgr_cfg),
                Tls::Plain,
            ),
            Some(c) => {
                let make = tokio_postgres_rustls::MakeRustlsConnect::new(c);
                (
                    Manager::from_config(cfg.clone(), make.clone(), mgr_cfg),
                    Tls::Rustls(make),
                )
            }
        };
        let t = loc.connect_timeout;
        let pool = Pool::builder(mgr)
            .max_size(8)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(t))
            .create_timeout(Some(t))
            .recycle_timeout(Some(t))
            .build()
            .map_err(|e| unavailable("create the connection pool", e))?;
        let shared = Arc::new(Shared {
            pool,
            location: loc.clone(),
            mac: MacState::default(),
            changes: AtomicU64::new(0),
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unavailable("start the keystore runtime", e))?;
        let thread = std::thread::Builder::new()
            .name("keyward-pg".into())
            .spawn(move || {
                rt.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        tokio::spawn(job);
                    }
                })
            })
            .map_err(|e| unavailable("start the keystore runtime", e))?;
        let mut store = PgStore {
            shared,
            jobs: Some(tx),
            thread: Some(thread),
            identity: String::new(),
        };
        store.identity = store.run_long(|sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("connect"))?;
            migrate(&mut c).await?;
            let found: Option<String> = c
                .query_one("SELECT keyward_identity()", &[])
                .await
                .map_err(pg("read identity"))?
                .get(0);
            if let Some(id) = found {
                return Ok(id);
            }
            // Only the mapping table's owner (who ran the migrations) may add a mapping.
            let id = Uuid::new_v4().to_string();
            c.execute(
                "INSERT INTO keyward_roles (role, identity) VALUES (current_user, $1)
                 ON CONFLICT (role) DO NOTHING",
                &[&id],
            )
            .await
            .map_err(|e| KeystoreError::Database {
                op: "map this role to an identity",
                what: format!(
                    "this role has no identity in keyward_roles and cannot add one ({}): the \
                     keystore's owner maps it (README \"PostgreSQL keystore\")",
                    e.as_db_error()
                        .map(|d| d.to_string())
                        .unwrap_or(e.to_string())
                ),
            })?;
            let id: Option<String> = c
                .query_one("SELECT keyward_identity()", &[])
                .await
                .map_err(pg("read identity"))?
                .get(0);
            id.ok_or_else(|| corrupt("(identity)", "no identity after mapping this role"))
        })?;
        store.start_listener(cfg, listen_tls);
        Ok(store)
    }

    /// Run `f` on the store's runtime and wait for its answer, at most the location's
    /// `call_timeout`. Never nests a runtime: the calling thread (a blocking thread or a runtime
    /// worker) only waits on a channel.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, KeystoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T, KeystoreError>> + Send + 'static,
    {
        self.run_within(Some(self.shared.location.call_timeout), f)
    }

    /// [`PgStore::run`] without the call timeout, for bulk work whose length grows with the
    /// keystore (the migration copy, the integrity rekey): a long copy is not a hang.
    fn run_long<T, F, Fut>(&self, f: F) -> Result<T, KeystoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T, KeystoreError>> + Send + 'static,
    {
        self.run_within(None, f)
    }

    /// A call past its deadline is dropped on the runtime: its transaction rolls back when the
    /// server answers again, and its pooled connection fails the next `Verified` check (bounded
    /// by the connect timeout) and is discarded. A lone statement the server had already
    /// received may still take effect when it resumes, so the generation moves and every cache
    /// re-reads.
    fn run_within<T, F, Fut>(&self, limit: Option<Duration>, f: F) -> Result<T, KeystoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T, KeystoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let shared = self.shared.clone();
        let fut = f(self.shared.clone());
        let job: Job = Box::pin(async move {
            let answer = match limit {
                None => fut.await,
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        shared.changes.fetch_add(1, Ordering::SeqCst);
                        Err(unavailable(
                            "keystore call",
                            format!(
                                "the database did not answer within the call timeout ({} s, \
                                 call_timeout)",
                                t.as_secs()
                            ),
                        ))
                    }
                },
            };
            let _ = tx.send(answer);
        });
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| unavailable("keystore", "the keystore's runtime has stopped"))?;
        rx.recv()
            .map_err(|_| unavailable("keystore", "the keystore's runtime dropped the request"))?
    }

    /// Keep a connection that `LISTEN`s on `keyward`: every notification (a commit that changed
    /// records, by any agent) and every reconnect bumps the generation.
    fn start_listener(&self, cfg: tokio_postgres::Config, tls: Tls) {
        let shared = self.shared.clone();
        let job: Job = Box::pin(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let done = match &tls {
                    Tls::Plain => listen_once(&cfg, tokio_postgres::NoTls, &shared).await,
                    Tls::Rustls(m) => listen_once(&cfg, m.clone(), &shared).await,
                };
                if done {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        if let Some(j) = &self.jobs {
            let _ = j.send(job);
        }
    }

    /// The identity this role's rows belong to (`keyward_roles`).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn location(&self) -> &PgLocation {
        &self.shared.location
    }

    fn key(&self) -> Option<Arc<MacKey>> {
        self.shared.mac.key()
    }

    /// The MAC key loaded now (`migrate_to` loads a copy into the destination).
    pub(crate) fn mac_key(&self) -> Option<Arc<MacKey>> {
        self.key()
    }

    fn changed(&self) {
        self.shared.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Load (at unlock) or drop (at lock) the MAC key. While loaded every read is checked.
    pub fn set_mac_key(&self, key: Option<MacKey>) {
        self.shared.mac.set(key);
    }

    /// Changes whenever this store writes records, another agent's commit is notified, the
    /// listening connection reconnects, or the MAC key is loaded or dropped.
    pub fn generation(&self) -> (u64, u64) {
        (
            self.shared.changes.load(Ordering::SeqCst),
            self.shared.mac.epoch(),
        )
    }

    /// [`PgStore::generation`]; never waits (atomics only).
    pub fn try_generation(&self) -> Option<(u64, u64)> {
        Some(self.generation())
    }

    pub fn has_mac_key(&self) -> bool {
        self.key().is_some()
    }

    pub fn mac_tag(&self, body: &[u8]) -> Option<Vec<u8>> {
        self.key().map(|k| k.tag(body))
    }

    pub fn mac_verify(&self, body: &[u8], tag: &[u8]) -> Option<bool> {
        self.key().map(|k| k.verify(body, tag))
    }

    /// The schema version this agent writes (SQLite's).
    pub const SCHEMA_VERSION: i64 = super::Keystore::SCHEMA_VERSION;

    /// Insert a new record (MAC'd when the key is loaded).
    pub fn insert(&self, r: &KeyRecord) -> Result<(), KeystoreError> {
        self.insert_many(std::slice::from_ref(r))
    }

    /// Insert many records in one transaction: all or none.
    pub fn insert_many(&self, records: &[KeyRecord]) -> Result<(), KeystoreError> {
        let key = self.key();
        let records = records.to_vec();
        self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("insert key"))?;
            let tx = c.transaction().await.map_err(pg("begin bulk insert"))?;
            for r in &records {
                insert_key(&tx, key.as_deref(), r).await?;
            }
            tx.commit().await.map_err(pg("commit bulk insert"))
        })?;
        self.changed();
        Ok(())
    }

    fn query(
        &self,
        op: &'static str,
        where_: &'static str,
        args: Vec<String>,
        checked: bool,
    ) -> Result<Vec<KeyRecord>, KeystoreError> {
        let key = if checked { self.key() } else { None };
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err(op))?;
            let a: Vec<&(dyn ToSql + Sync)> =
                args.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
            let rows = query_keys(&c, key.as_deref(), op, where_, &a).await?;
            Ok(rows.into_iter().map(|(r, _)| r).collect())
        })
    }

    /// The record with this id, of any kind.
    pub fn get(&self, id: &Uuid) -> Result<Option<KeyRecord>, KeystoreError> {
        Ok(self
            .query("get key", "id = $1", vec![id.to_string()], true)?
            .into_iter()
            .next())
    }

    /// All records of `kind`, optionally only the children of `parent`.
    pub fn list(
        &self,
        kind: KeyKind,
        parent: Option<&Uuid>,
    ) -> Result<Vec<KeyRecord>, KeystoreError> {
        match parent {
            None => self.query("list keys", "kind = $1", vec![kind.as_str().into()], true),
            Some(p) => self.query(
                "list keys",
                "kind = $1 AND parent = $2",
                vec![kind.as_str().into(), p.to_string()],
                true,
            ),
        }
    }

    /// One page of a list (keyset pagination after `after`, in (created, id) order), as
    /// [`super::Keystore::page`].
    pub fn page(
        &self,
        filter: &ListFilter,
        after: Option<&Cursor>,
        size: &PageSize<'_>,
    ) -> Result<Page, KeystoreError> {
        const OP: &str = "list keys";
        let key = self.key();
        let (where_, args) = page_clause(filter);
        let n = args.len();
        let cursor = after.map(|c| (i64::try_from(c.created).unwrap_or(i64::MAX), c.id));
        let fetch = i64::try_from(size.limit.saturating_add(1)).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {KEY_COLUMNS}, row_version FROM keys WHERE {where_}{} ORDER BY created, id \
             LIMIT {fetch}",
            if cursor.is_some() {
                format!(" AND (created, id) > (${}, ${})", n + 1, n + 2)
            } else {
                String::new()
            }
        );
        // Rows come back unchecked; the page is built (and each row checked) here, so the size
        // callback (not `Send`) stays on the caller's thread.
        let rows = self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err(OP))?;
            let mut p: Params = args.into_iter().map(|a| Box::new(a) as _).collect();
            if let Some((created, id)) = cursor {
                p.push(Box::new(created));
                p.push(Box::new(id.to_string()));
            }
            let rows = c.query(&sql, &refs(&p)).await.map_err(pg(OP))?;
            rows.iter()
                .map(|r| from_pg_row(r).map(|(id, parsed, mac, _)| (id, parsed, mac)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let mut page = PageBuilder::new(size);
        for (id, parsed, mac) in rows {
            if !page.wants_more() {
                break;
            }
            let r = verified(key.as_deref(), &id, parsed, mac)?;
            if !page.push(r) {
                break;
            }
        }
        Ok(page.finish())
    }

    /// The integrity-key records, unchecked (read to load the MAC key).
    pub fn integrity_records(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        self.query("read integrity key", "kind = 'integrity'", vec![], false)
    }

    /// The root record, if `init` has run.
    pub fn root(&self) -> Result<Option<KeyRecord>, KeystoreError> {
        Ok(self.list(KeyKind::Root, None)?.into_iter().next())
    }

    /// The active key with this node name.
    pub fn by_name(&self, name: &str) -> Result<Option<KeyRecord>, KeystoreError> {
        Ok(self
            .query(
                "find node",
                "name = $1 AND state = 'active'",
                vec![name.to_string()],
                true,
            )?
            .into_iter()
            .next())
    }

    /// Remove a key. Refused (a database error) while other keys name it as parent or issuer.
    pub fn delete(&self, id: &Uuid) -> Result<bool, KeystoreError> {
        let id = id.to_string();
        let n = self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err("delete key"))?;
            c.execute("DELETE FROM keys WHERE id = $1", &[&id])
                .await
                .map_err(pg("delete key"))
        })?;
        self.changed();
        Ok(n > 0)
    }

    /// Replace a key with its successor in one transaction (old → `state`, new inserted,
    /// revocation kept). The old row changed by another agent meanwhile: `Conflict`.
    pub fn replace(
        &self,
        old: &Uuid,
        state: KeyState,
        new: &KeyRecord,
        revocation: Option<&Revocation>,
    ) -> Result<(), KeystoreError> {
        let key = self.key();
        let (old, new, revocation) = (*old, new.clone(), revocation.cloned());
        self.run(move |sh| async move {
            let key = key.as_deref();
            let mut c = sh.pool.get().await.map_err(pool_err("replace"))?;
            let tx = c.transaction().await.map_err(pg("begin replace"))?;
            set_state(&tx, key, &old, state).await?;
            insert_key(&tx, key, &new).await?;
            if let Some(r) = &revocation {
                insert_revocation(&tx, key, r).await?;
            }
            tx.commit().await.map_err(pg("commit replace"))
        })?;
        self.changed();
        Ok(())
    }

    /// Set (or remove) a key's certificate, re-MACing the row. `Ok(false)`: no such key.
    pub fn set_certificate(&self, id: &Uuid, cert: Option<Vec<u8>>) -> Result<bool, KeystoreError> {
        let key = self.key();
        let id = *id;
        let found = self.run(move |sh| async move {
            let key = key.as_deref();
            let c = sh.pool.get().await.map_err(pool_err("set certificate"))?;
            let Some((mut r, rv)) = get_key(&c, key, &id).await? else {
                return Ok(false);
            };
            r.certificate = cert;
            update_key(&c, key, &r, rv, "set certificate").await?;
            Ok(true)
        })?;
        self.changed();
        Ok(found)
    }

    /// Mark a key revoked and keep the signed revocation, in one transaction.
    pub fn revoke(&self, r: &Revocation) -> Result<(), KeystoreError> {
        let key = self.key();
        let r = r.clone();
        self.run(move |sh| async move {
            let key = key.as_deref();
            let mut c = sh.pool.get().await.map_err(pool_err("revoke"))?;
            let tx = c.transaction().await.map_err(pg("begin revoke"))?;
            set_state(&tx, key, &r.revoked, KeyState::Revoked).await?;
            insert_revocation(&tx, key, &r).await?;
            tx.commit().await.map_err(pg("commit revoke"))
        })?;
        self.changed();
        Ok(())
    }

    /// Every stored revocation, oldest first (each checked while the MAC key is loaded).
    pub fn revocations(&self) -> Result<Vec<Revocation>, KeystoreError> {
        const OP: &str = "list revocations";
        let key = self.key();
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err(OP))?;
            let rows = c
                .query(
                    "SELECT id, revoked, issuer, statement, created, mac FROM revocations
                     ORDER BY created, id",
                    &[],
                )
                .await
                .map_err(pg(OP))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.try_get(0).map_err(pg(OP))?;
                let bad = |what: &str| {
                    if key.is_some() {
                        KeystoreError::Tampered {
                            id: id.clone(),
                            what: what.into(),
                        }
                    } else {
                        corrupt(&id, what)
                    }
                };
                let uuid =
                    |s: &str| Uuid::parse_str(s).map_err(|_| bad("revocation id is not a UUID"));
                let created: i64 = row.try_get(4).map_err(pg(OP))?;
                let r = Revocation {
                    id: uuid(&id)?,
                    revoked: uuid(&row.try_get::<_, String>(1).map_err(pg(OP))?)?,
                    issuer: uuid(&row.try_get::<_, String>(2).map_err(pg(OP))?)?,
                    statement: row.try_get(3).map_err(pg(OP))?,
                    created: u64::try_from(created).map_err(|_| bad("created out of range"))?,
                };
                let mac: Option<Vec<u8>> = row.try_get(5).map_err(pg(OP))?;
                if let Some(k) = key.as_deref() {
                    check_mac(k, &id, &revocation_body(&r), mac.as_deref())?;
                }
                out.push(r);
            }
            Ok(out)
        })
    }

    pub fn meta(&self, name: &str) -> Result<Option<String>, KeystoreError> {
        let name = name.to_string();
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err("read meta"))?;
            Ok(
                c.query_opt("SELECT value FROM meta WHERE name = $1", &[&name])
                    .await
                    .map_err(pg("read meta"))?
                    .map(|r| r.get::<_, String>(0)),
            )
        })
    }

    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), KeystoreError> {
        self.set_metas(&[(name, Some(value))])
    }

    pub fn delete_meta(&self, name: &str) -> Result<(), KeystoreError> {
        self.set_metas(&[(name, None)])
    }

    /// Set (`Some`) or delete (`None`) several meta rows in one transaction.
    pub fn set_metas(&self, rows: &[(&str, Option<&str>)]) -> Result<(), KeystoreError> {
        let rows: Vec<(String, Option<String>)> = rows
            .iter()
            .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
            .collect();
        self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("write meta"))?;
            let tx = c.transaction().await.map_err(pg("begin write meta"))?;
            put_metas(&tx, &rows).await?;
            tx.commit().await.map_err(pg("commit write meta"))
        })
    }

    /// Add version `r.version + 1` of DEK `id`, and make it the newest, in one transaction.
    /// `None`: no such key. The key row changed meanwhile by another agent: `Conflict`.
    pub fn add_version(&self, id: &Uuid, wrapped: Vec<u8>) -> Result<Option<u32>, KeystoreError> {
        let key = self.key();
        let id = *id;
        let v = self.run(move |sh| async move {
            let key = key.as_deref();
            let mut c = sh.pool.get().await.map_err(pool_err("add version"))?;
            let tx = c.transaction().await.map_err(pg("begin add version"))?;
            let Some((mut r, rv)) = get_key(&tx, key, &id).await? else {
                return Ok(None);
            };
            let v = KeyVersion {
                key: r.id,
                version: r.version.saturating_add(1),
                wrapped,
                created: now(),
            };
            r.version = v.version;
            r.rotated = Some(v.created);
            // The key row first: of two agents adding the same version at once, the second
            // waits on the first's row lock and then finds the row version moved (`Conflict`,
            // nothing written), rather than failing on `key_versions`' primary key.
            update_key(&tx, key, &r, rv, "update key version").await?;
            tx.execute(
                "INSERT INTO key_versions (key, version, wrapped, created, mac)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &v.key.to_string(),
                    &i64::from(v.version),
                    &v.wrapped,
                    &to_i64("insert key version", v.created)?,
                    &key.map(|k| k.tag(&version_body(&v))),
                ],
            )
            .await
            .map_err(pg("insert key version"))?;
            tx.commit().await.map_err(pg("commit add version"))?;
            Ok(Some(v.version))
        })?;
        self.changed();
        Ok(v)
    }

    /// Version `version` (≥ 2) of key `id`, its MAC checked while the MAC key is loaded.
    pub fn version(&self, id: &Uuid, version: u32) -> Result<Option<KeyVersion>, KeystoreError> {
        const OP: &str = "read key version";
        let key = self.key();
        let id = *id;
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err(OP))?;
            let Some(row) = c
                .query_opt(
                    "SELECT wrapped, created, mac FROM key_versions WHERE key = $1 AND version = $2",
                    &[&id.to_string(), &i64::from(version)],
                )
                .await
                .map_err(pg(OP))?
            else {
                return Ok(None);
            };
            let created: i64 = row.try_get(1).map_err(pg(OP))?;
            let v = KeyVersion {
                key: id,
                version,
                wrapped: row.try_get(0).map_err(pg(OP))?,
                created: u64::try_from(created)
                    .map_err(|_| corrupt(&id.to_string(), "created out of range"))?,
            };
            let mac: Option<Vec<u8>> = row.try_get(2).map_err(pg(OP))?;
            if let Some(k) = key.as_deref() {
                check_mac(
                    k,
                    &format!("{id} version {version}"),
                    &version_body(&v),
                    mac.as_deref(),
                )?;
            }
            Ok(Some(v))
        })
    }
}

/// One life of the listening connection: connect, `LISTEN keyward`, bump the generation (a
/// reconnect may have missed notifications), then bump it on every notification until the
/// connection ends. `true` when the store is gone (stop listening).
async fn listen_once<T>(cfg: &tokio_postgres::Config, tls: T, shared: &Arc<Shared>) -> bool
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let weak = Arc::downgrade(shared);
    let Ok((client, mut conn)) = cfg.connect(tls).await else {
        return Arc::strong_count(shared) <= 1;
    };
    let listening = async { client.batch_execute("LISTEN keyward").await.is_ok() };
    // The connection must be polled for the LISTEN to complete.
    let mut listening = std::pin::pin!(listening);
    let ok = loop {
        tokio::select! {
            ok = &mut listening => break ok,
            m = std::future::poll_fn(|cx| conn.poll_message(cx)) => {
                if !matches!(m, Some(Ok(_))) { break false; }
            }
        }
    };
    if !ok {
        return Arc::strong_count(shared) <= 1;
    }
    shared.changes.fetch_add(1, Ordering::SeqCst);
    loop {
        let m = tokio::select! {
            m = std::future::poll_fn(|cx| conn.poll_message(cx)) => m,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if weak.strong_count() <= 1 { return true; }
                continue;
            }
        };
        match m {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                shared.changes.fetch_add(1, Ordering::SeqCst);
            }
            Some(Ok(_)) => {}
            _ => return weak.strong_count() <= 1,
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing the job channel ends the runtime's loop; the listener notices the store is
        // gone within a second.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
