//! `keystore migrate` on PostgreSQL, as `sqlite_copy.rs` is on SQLite: every row of every table
//! of this identity read in one REPEATABLE READ, read-only transaction (one consistent
//! snapshot while other agents keep writing), each checked against its MAC
//! ([`PgStore::snapshot`]); a snapshot written into an empty keystore in one transaction, each
//! row MAC'd under the same key ([`PgStore::load_snapshot`]); and the rows each table holds
//! ([`PgStore::row_counts`]). Row-level security scopes all of it to this role's identity.
//!
//! This module must never read a row without checking its MAC (a snapshot needs the MAC key),
//! never write into a keystore that holds anything, and never change the keystore it reads.

use super::roots::{insert_wrap, wraps_in};
use super::{insert_key, insert_revocation, pg, pool_err, put_metas, query_keys, to_i64, PgStore};
use crate::keystore::{
    check_mac, item_body, parents_first, rotation_body, version_body, wrap_body, KeyVersion,
    KeystoreError, MacKey, PendingRotation, Revocation, RotationItem, RowCounts, Snapshot,
    ROTATION_WRAPS,
};
use deadpool_postgres::GenericClient;
use std::sync::Arc;
use tokio_postgres::IsolationLevel;
use uuid::Uuid;

fn need_key(key: Option<Arc<MacKey>>) -> Result<Arc<MacKey>, KeystoreError> {
    key.ok_or_else(|| KeystoreError::Corrupt {
        id: "(migrate)".into(),
        what: "no MAC key loaded".into(),
    })
}

fn tampered(id: &str, what: &str) -> KeystoreError {
    KeystoreError::Tampered {
        id: id.to_string(),
        what: what.to_string(),
    }
}

fn uuid(s: &str, what: &str) -> Result<Uuid, KeystoreError> {
    Uuid::parse_str(s).map_err(|_| tampered(s, what))
}

fn unsigned<T: TryFrom<i64>>(id: &str, v: i64, what: &str) -> Result<T, KeystoreError> {
    T::try_from(v).map_err(|_| tampered(id, what))
}

/// The tables `row_counts` counts, in [`RowCounts`]' order.
const TABLES: [&str; 9] = [
    "keys",
    "key_versions",
    "revocations",
    "kek_wraps",
    "kek_rotations",
    "kek_rotation_items",
    "kek_rotation_wraps",
    "meta",
    "devices",
];

impl PgStore {
    /// The rows each table holds (this identity's).
    pub fn row_counts(&self) -> Result<RowCounts, KeystoreError> {
        const OP: &str = "count rows";
        self.run_long(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err(OP))?;
            let mut n = [0u64; 9];
            for (i, table) in TABLES.iter().enumerate() {
                let v: i64 = c
                    .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
                    .await
                    .map_err(pg(OP))?
                    .get(0);
                n[i] = v.max(0) as u64;
            }
            Ok(RowCounts {
                keys: n[0],
                versions: n[1],
                revocations: n[2],
                wraps: n[3],
                rotations: n[4],
                rotation_items: n[5],
                rotation_wraps: n[6],
                meta: n[7],
                devices: n[8],
            })
        })
    }

    /// Every row of every table, each checked against its MAC (needs the MAC key), read in one
    /// REPEATABLE READ, read-only transaction (other agents' commits meanwhile are not seen).
    pub fn snapshot(&self) -> Result<Snapshot, KeystoreError> {
        let key = need_key(self.key())?;
        self.run_long(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("migrate: read"))?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg("migrate: begin read"))?;
            let k = Some(&*key);
            let keys = query_keys(&tx, k, "migrate: read keys", "true", &[])
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .collect();
            let s = Snapshot {
                keys,
                versions: versions(&tx, &key).await?,
                revocations: revocations(&tx, &key).await?,
                wraps: wraps_in(&tx, k, "kek_wraps", "true", &[]).await?,
                rotations: rotations(&tx, &key).await?,
                rotation_items: items(&tx, &key).await?,
                rotation_wraps: wraps_in(&tx, k, "kek_rotation_wraps", "true", &[]).await?,
                meta: meta(&tx).await?,
                devices: super::devices::read_devices(&tx, &key).await?,
            };
            tx.commit().await.map_err(pg("migrate: end read"))?;
            Ok(s)
        })
    }

    /// Write `s` into this keystore, which must be empty, in one transaction, every row MAC'd
    /// under the loaded key (the same key as the source's: the MACs come out as they were).
    pub fn load_snapshot(&self, s: &Snapshot) -> Result<(), KeystoreError> {
        let key = need_key(self.key())?;
        let s = s.clone();
        self.run_long(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("migrate: write"))?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .await
                .map_err(pg("migrate: begin"))?;
            for r in parents_first(&s.keys) {
                insert_key(&tx, Some(&key), r).await?;
            }
            for v in &s.versions {
                tx.execute(
                    "INSERT INTO key_versions (key, version, wrapped, created, mac)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &v.key.to_string(),
                        &i64::from(v.version),
                        &v.wrapped,
                        &to_i64("migrate: write key version", v.created)?,
                        &key.tag(&version_body(v)),
                    ],
                )
                .await
                .map_err(pg("migrate: write key version"))?;
            }
            for r in &s.revocations {
                insert_revocation(&tx, Some(&key), r).await?;
            }
            for w in &s.wraps {
                insert_wrap(&tx, &key, w).await?;
            }
            for r in &s.rotations {
                tx.execute(
                    "INSERT INTO kek_rotations (kek, wrapped, scheme, started, mac)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &r.kek.to_string(),
                        &r.wrapped,
                        &r.scheme,
                        &to_i64("migrate: write rotation", r.started)?,
                        &key.tag(&rotation_body(r)),
                    ],
                )
                .await
                .map_err(pg("migrate: write rotation"))?;
            }
            for w in &s.rotation_wraps {
                tx.execute(
                    "INSERT INTO kek_rotation_wraps (kek, root, scheme, wrapped, mac)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &w.kek.to_string(),
                        &w.root.to_string(),
                        &w.scheme,
                        &w.wrapped,
                        &key.tag(&wrap_body(ROTATION_WRAPS, w)),
                    ],
                )
                .await
                .map_err(pg("migrate: write rotation wrap"))?;
            }
            for i in &s.rotation_items {
                tx.execute(
                    "INSERT INTO kek_rotation_items (kek, key, version, wrapped, mac)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &i.kek.to_string(),
                        &i.key.to_string(),
                        &i64::from(i.version),
                        &i.wrapped,
                        &key.tag(&item_body(i)),
                    ],
                )
                .await
                .map_err(pg("migrate: write rotation item"))?;
            }
            let rows: Vec<(String, Option<String>)> = s
                .meta
                .iter()
                .map(|(n, v)| (n.clone(), Some(v.clone())))
                .collect();
            put_metas(&tx, &rows).await?;
            for d in &s.devices {
                super::devices::insert_device(&tx, &key, d).await?;
            }
            tx.commit().await.map_err(pg("migrate: commit"))
        })?;
        self.changed();
        Ok(())
    }

    /// Undo a [`PgStore::load_snapshot`] whose copy failed its check: delete every row of every
    /// table of this identity (row-level security scopes each `DELETE`), in one transaction,
    /// children first. Only for a destination that was empty before the copy (`migrate_to`
    /// checked it), so what goes is exactly what the copy wrote. Returns the rows deleted.
    pub fn discard_copy(&self) -> Result<u64, KeystoreError> {
        const OP: &str = "migrate: remove the failed copy";
        let n = self.run_long(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err(OP))?;
            let tx = c.transaction().await.map_err(pg(OP))?;
            let mut n = 0;
            // Children before parents; `keys` in one statement (its references to itself are
            // checked at the statement's end).
            for table in [
                "kek_rotation_items",
                "kek_rotation_wraps",
                "kek_rotations",
                "kek_wraps",
                "key_versions",
                "revocations",
                "keys",
                "meta",
                "devices",
            ] {
                n += tx
                    .execute(&format!("DELETE FROM {table}"), &[])
                    .await
                    .map_err(pg(OP))?;
            }
            tx.commit().await.map_err(pg(OP))?;
            Ok(n)
        })?;
        self.changed();
        Ok(n)
    }
}

async fn versions<C: GenericClient>(c: &C, key: &MacKey) -> Result<Vec<KeyVersion>, KeystoreError> {
    const OP: &str = "migrate: read key versions";
    let rows = c
        .query(
            "SELECT key, version, wrapped, created, mac FROM key_versions ORDER BY key, version",
            &[],
        )
        .await
        .map_err(pg(OP))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.try_get(0).map_err(pg(OP))?;
        let version: u32 = unsigned(&id, row.try_get(1).map_err(pg(OP))?, "version out of range")?;
        let v = KeyVersion {
            key: uuid(&id, "key version: not a UUID")?,
            version,
            wrapped: row.try_get(2).map_err(pg(OP))?,
            created: unsigned(&id, row.try_get(3).map_err(pg(OP))?, "created out of range")?,
        };
        let mac: Option<Vec<u8>> = row.try_get(4).map_err(pg(OP))?;
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

async fn revocations<C: GenericClient>(
    c: &C,
    key: &MacKey,
) -> Result<Vec<Revocation>, KeystoreError> {
    const OP: &str = "migrate: read revocations";
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
        let revoked: String = row.try_get(1).map_err(pg(OP))?;
        let issuer: String = row.try_get(2).map_err(pg(OP))?;
        let r = Revocation {
            id: uuid(&id, "revocation id is not a UUID")?,
            revoked: uuid(&revoked, "revocation id is not a UUID")?,
            issuer: uuid(&issuer, "revocation id is not a UUID")?,
            statement: row.try_get(3).map_err(pg(OP))?,
            created: unsigned(&id, row.try_get(4).map_err(pg(OP))?, "created out of range")?,
        };
        let mac: Option<Vec<u8>> = row.try_get(5).map_err(pg(OP))?;
        check_mac(
            key,
            &id,
            &crate::keystore::revocation_body(&r),
            mac.as_deref(),
        )?;
        out.push(r);
    }
    Ok(out)
}

async fn rotations<C: GenericClient>(
    c: &C,
    key: &MacKey,
) -> Result<Vec<PendingRotation>, KeystoreError> {
    const OP: &str = "migrate: read KEK rotations";
    let rows = c
        .query(
            "SELECT kek, wrapped, scheme, started, mac FROM kek_rotations ORDER BY kek",
            &[],
        )
        .await
        .map_err(pg(OP))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let kek: String = row.try_get(0).map_err(pg(OP))?;
        let r = PendingRotation {
            kek: uuid(&kek, "rotation journal: not a UUID")?,
            wrapped: row.try_get(1).map_err(pg(OP))?,
            scheme: row.try_get(2).map_err(pg(OP))?,
            started: unsigned(&kek, row.try_get(3).map_err(pg(OP))?, "bad start")?,
        };
        let mac: Option<Vec<u8>> = row.try_get(4).map_err(pg(OP))?;
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

async fn items<C: GenericClient>(c: &C, key: &MacKey) -> Result<Vec<RotationItem>, KeystoreError> {
    const OP: &str = "migrate: read rotation items";
    let rows = c
        .query(
            "SELECT kek, key, version, wrapped, mac FROM kek_rotation_items
             ORDER BY kek, key, version",
            &[],
        )
        .await
        .map_err(pg(OP))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let kek: String = row.try_get(0).map_err(pg(OP))?;
        let k: String = row.try_get(1).map_err(pg(OP))?;
        let version: u32 = unsigned(&k, row.try_get(2).map_err(pg(OP))?, "version out of range")?;
        let i = RotationItem {
            kek: uuid(&kek, "rotation item: not a UUID")?,
            key: uuid(&k, "rotation item: not a UUID")?,
            version,
            wrapped: row.try_get(3).map_err(pg(OP))?,
        };
        let mac: Option<Vec<u8>> = row.try_get(4).map_err(pg(OP))?;
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

async fn meta<C: GenericClient>(c: &C) -> Result<Vec<(String, String)>, KeystoreError> {
    const OP: &str = "migrate: read meta";
    let rows = c
        .query("SELECT name, value FROM meta ORDER BY name", &[])
        .await
        .map_err(pg(OP))?;
    rows.iter()
        .map(|r| Ok((r.try_get(0).map_err(pg(OP))?, r.try_get(1).map_err(pg(OP))?)))
        .collect()
}
