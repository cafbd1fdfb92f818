//! `keystore migrate` on the SQLite backend: every row of every table read in one go, each
//! checked against its MAC ([`SqliteStore::snapshot`]); a snapshot written into an empty
//! keystore in one transaction, each row MAC'd under the same key
//! ([`SqliteStore::load_snapshot`]); and the rows each table holds ([`SqliteStore::row_counts`]).
//!
//! This module must never read a row without checking its MAC (a snapshot needs the MAC key),
//! never write into a keystore that holds anything, and never change the keystore it reads.

use super::super::records::*;
use super::super::KeystoreError;
use super::{insert_revocation_with, insert_with, put_metas, query_with, roots, sql, SqliteStore};
use rusqlite::{params, Connection};
use uuid::Uuid;

fn need_key(key: Option<std::sync::Arc<MacKey>>) -> Result<std::sync::Arc<MacKey>, KeystoreError> {
    key.ok_or_else(|| KeystoreError::Corrupt {
        id: "(migrate)".into(),
        what: "no MAC key loaded".into(),
    })
}

fn uuid(s: &str, what: &str) -> Result<Uuid, KeystoreError> {
    Uuid::parse_str(s).map_err(|_| KeystoreError::Tampered {
        id: s.to_string(),
        what: what.to_string(),
    })
}

impl SqliteStore {
    /// The rows each table holds.
    pub fn row_counts(&self) -> Result<RowCounts, KeystoreError> {
        let conn = self.lock();
        let count = |table: &str| -> Result<u64, KeystoreError> {
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(sql("count rows"))
        };
        Ok(RowCounts {
            keys: count("keys")?,
            versions: count("key_versions")?,
            revocations: count("revocations")?,
            wraps: count("kek_wraps")?,
            rotations: count("kek_rotations")?,
            rotation_items: count("kek_rotation_items")?,
            rotation_wraps: count("kek_rotation_wraps")?,
            meta: count("meta")?,
            devices: count("devices")?,
        })
    }

    /// Every row of every table, each checked against its MAC (needs the MAC key), read with
    /// the connection held (the agent is the keystore's only writer: nothing changes meanwhile).
    pub fn snapshot(&self) -> Result<Snapshot, KeystoreError> {
        let key = need_key(self.key())?;
        let conn = self.lock();
        let keys = query_with(&conn, Some(&key), "migrate: read keys", "1 = 1", &[])?;
        Ok(Snapshot {
            keys,
            versions: versions(&conn, &key)?,
            revocations: revocations(&conn, &key)?,
            wraps: roots::wraps_with(&conn, Some(&key), "kek_wraps", "1 = 1", &[])?,
            rotations: rotations(&conn, &key)?,
            rotation_items: items(&conn, &key)?,
            rotation_wraps: roots::wraps_with(
                &conn,
                Some(&key),
                "kek_rotation_wraps",
                "1 = 1",
                &[],
            )?,
            meta: meta(&conn)?,
            devices: super::devices::read_devices(&conn, &key)?,
        })
    }

    /// Write `s` into this keystore, which must be empty, in one transaction, every row MAC'd
    /// under the loaded key (the same key as the source's: the MACs come out as they were).
    pub fn load_snapshot(&self, s: &Snapshot) -> Result<(), KeystoreError> {
        let key = need_key(self.key())?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("migrate: begin"))?;
        for r in parents_first(&s.keys) {
            insert_with(&tx, Some(&key), r)?;
        }
        for v in &s.versions {
            tx.execute(
                "INSERT INTO key_versions (key, version, wrapped, created, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![v.key.to_string(), v.version, v.wrapped, v.created, key.tag(&version_body(v))],
            )
            .map_err(sql("migrate: write key version"))?;
        }
        for r in &s.revocations {
            insert_revocation_with(&tx, Some(&key), r)?;
        }
        roots::insert_wraps(&tx, &key, &s.wraps)?;
        for r in &s.rotations {
            tx.execute(
                "INSERT INTO kek_rotations (kek, wrapped, scheme, started, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.kek.to_string(), r.wrapped, r.scheme, r.started, key.tag(&rotation_body(r))],
            )
            .map_err(sql("migrate: write rotation"))?;
        }
        for w in &s.rotation_wraps {
            tx.execute(
                "INSERT INTO kek_rotation_wraps (kek, root, scheme, wrapped, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    w.kek.to_string(),
                    w.root.to_string(),
                    w.scheme,
                    w.wrapped,
                    key.tag(&wrap_body(ROTATION_WRAPS, w))
                ],
            )
            .map_err(sql("migrate: write rotation wrap"))?;
        }
        for i in &s.rotation_items {
            tx.execute(
                "INSERT INTO kek_rotation_items (kek, key, version, wrapped, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![i.kek.to_string(), i.key.to_string(), i.version, i.wrapped, key.tag(&item_body(i))],
            )
            .map_err(sql("migrate: write rotation item"))?;
        }
        let rows: Vec<(&str, Option<&str>)> = s
            .meta
            .iter()
            .map(|(n, v)| (n.as_str(), Some(v.as_str())))
            .collect();
        put_metas(&tx, &rows, "migrate: write meta")?;
        for d in &s.devices {
            super::devices::insert_device(&tx, &key, d)?;
        }
        tx.commit().map_err(sql("migrate: commit"))
    }
}

fn versions(conn: &Connection, key: &MacKey) -> Result<Vec<KeyVersion>, KeystoreError> {
    const OP: &str = "migrate: read key versions";
    let mut stmt = conn
        .prepare(
            "SELECT key, version, wrapped, created, mac FROM key_versions ORDER BY key, version",
        )
        .map_err(sql(OP))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, u64>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
            ))
        })
        .map_err(sql(OP))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, version, wrapped, created, mac) = row.map_err(sql(OP))?;
        let v = KeyVersion {
            key: uuid(&id, "key version: not a UUID")?,
            version,
            wrapped,
            created,
        };
        check_mac(
            key,
            &format!("{id} version {version}"),
            &version_body(&v),
            mac.as_deref(),
        )?;
        out.push(v);
    }
    Ok(out)
}

fn revocations(conn: &Connection, key: &MacKey) -> Result<Vec<Revocation>, KeystoreError> {
    const OP: &str = "migrate: read revocations";
    let mut stmt = conn
        .prepare("SELECT id, revoked, issuer, statement, created, mac FROM revocations ORDER BY created, id")
        .map_err(sql(OP))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, u64>(4)?,
                r.get::<_, Option<Vec<u8>>>(5)?,
            ))
        })
        .map_err(sql(OP))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, revoked, issuer, statement, created, mac) = row.map_err(sql(OP))?;
        let r = Revocation {
            id: uuid(&id, "revocation id is not a UUID")?,
            revoked: uuid(&revoked, "revocation id is not a UUID")?,
            issuer: uuid(&issuer, "revocation id is not a UUID")?,
            statement,
            created,
        };
        check_mac(key, &id, &revocation_body(&r), mac.as_deref())?;
        out.push(r);
    }
    Ok(out)
}

fn rotations(conn: &Connection, key: &MacKey) -> Result<Vec<PendingRotation>, KeystoreError> {
    const OP: &str = "migrate: read KEK rotations";
    let mut stmt = conn
        .prepare("SELECT kek, wrapped, scheme, started, mac FROM kek_rotations ORDER BY kek")
        .map_err(sql(OP))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u64>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
            ))
        })
        .map_err(sql(OP))?;
    let mut out = Vec::new();
    for row in rows {
        let (kek, wrapped, scheme, started, mac) = row.map_err(sql(OP))?;
        let r = PendingRotation {
            kek: uuid(&kek, "rotation journal: not a UUID")?,
            wrapped,
            scheme,
            started,
        };
        check_mac(
            key,
            &format!("rotation of {kek}"),
            &rotation_body(&r),
            mac.as_deref(),
        )?;
        out.push(r);
    }
    Ok(out)
}

fn items(conn: &Connection, key: &MacKey) -> Result<Vec<RotationItem>, KeystoreError> {
    const OP: &str = "migrate: read rotation items";
    let mut stmt = conn
        .prepare("SELECT kek, key, version, wrapped, mac FROM kek_rotation_items ORDER BY kek, key, version")
        .map_err(sql(OP))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
            ))
        })
        .map_err(sql(OP))?;
    let mut out = Vec::new();
    for row in rows {
        let (kek, k, version, wrapped, mac) = row.map_err(sql(OP))?;
        let i = RotationItem {
            kek: uuid(&kek, "rotation item: not a UUID")?,
            key: uuid(&k, "rotation item: not a UUID")?,
            version,
            wrapped,
        };
        check_mac(
            key,
            &format!("rotation item {k} v{version}"),
            &item_body(&i),
            mac.as_deref(),
        )?;
        out.push(i);
    }
    Ok(out)
}

fn meta(conn: &Connection) -> Result<Vec<(String, String)>, KeystoreError> {
    const OP: &str = "migrate: read meta";
    let mut stmt = conn
        .prepare("SELECT name, value FROM meta ORDER BY name")
        .map_err(sql(OP))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(sql(OP))?;
    rows.collect::<Result<_, _>>().map_err(sql(OP))
}
