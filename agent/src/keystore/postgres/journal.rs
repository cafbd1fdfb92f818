//! The KEK rotation journal on PostgreSQL (`kek_rotations`, `kek_rotation_items`, v7) and the
//! integrity key's installation, mirroring `Keystore`'s methods with the same MAC bodies
//! (`rotation_body`, `item_body`, `version_body`).
//!
//! Not here yet: `rekey_integrity`. It must never write a journal row without MACing it while the key is
//! loaded.

use super::{insert_key, pg, pool_err, query_keys, PgStore};
use crate::keystore::{
    check_mac, item_body, now, record_body, revocation_body, rotation_body, version_body,
    KeyRecord, KeyVersion, KeystoreError, MacKey, PendingRotation, Revocation, RotationItem,
};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

fn big(op: &'static str, v: u64) -> Result<i64, KeystoreError> {
    i64::try_from(v).map_err(|_| KeystoreError::Database {
        op,
        what: format!("{v} does not fit a BIGINT"),
    })
}

fn tampered(id: impl ToString, what: &str) -> KeystoreError {
    KeystoreError::Tampered {
        id: id.to_string(),
        what: what.to_string(),
    }
}

/// Every wrapped secret under `kek`: (child, version, wrapped), versions checked.
async fn wrapped_under<C: GenericClient>(
    c: &C,
    key: Option<&MacKey>,
    kek: &Uuid,
) -> Result<Vec<(KeyRecord, u32, Vec<u8>)>, KeystoreError> {
    const OP: &str = "list key versions";
    let mut out = Vec::new();
    for (r, _) in query_keys(c, key, "list children", "parent = $1", &[&kek.to_string()]).await? {
        let Some(w) = r.wrapped.clone() else { continue };
        out.push((r.clone(), 1, w));
        let rows = c
            .query(
                "SELECT version, wrapped, created, mac FROM key_versions WHERE key = $1
                 ORDER BY version",
                &[&r.id.to_string()],
            )
            .await
            .map_err(pg(OP))?;
        for row in &rows {
            let version: i64 = row.try_get(0).map_err(pg(OP))?;
            let created: i64 = row.try_get(2).map_err(pg(OP))?;
            let v = KeyVersion {
                key: r.id,
                version: u32::try_from(version)
                    .map_err(|_| tampered(r.id, "version out of range"))?,
                wrapped: row.try_get(1).map_err(pg(OP))?,
                created: u64::try_from(created)
                    .map_err(|_| tampered(r.id, "created out of range"))?,
            };
            if let Some(k) = key {
                let mac: Option<Vec<u8>> = row.try_get(3).map_err(pg(OP))?;
                check_mac(
                    k,
                    &format!("{} version {}", r.id, v.version),
                    &version_body(&v),
                    mac.as_deref(),
                )?;
            }
            out.push((r.clone(), v.version, v.wrapped));
        }
    }
    Ok(out)
}

impl PgStore {
    /// Record a KEK rotation as begun (MAC'd).
    pub fn rotation_begin(&self, r: &PendingRotation) -> Result<(), KeystoreError> {
        const OP: &str = "begin KEK rotation";
        let key = self.key();
        let r = r.clone();
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err(OP))?;
            c.execute(
                "INSERT INTO kek_rotations (kek, wrapped, scheme, started, mac)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &r.kek.to_string(),
                    &r.wrapped,
                    &r.scheme,
                    &big(OP, r.started)?,
                    &key.as_deref().map(|k| k.tag(&rotation_body(&r))),
                ],
            )
            .await
            .map_err(pg(OP))?;
            Ok(())
        })?;
        self.changed();
        Ok(())
    }

    /// Every KEK rotation begun and not finished, each checked.
    pub fn rotations_pending(&self) -> Result<Vec<PendingRotation>, KeystoreError> {
        const OP: &str = "read KEK rotations";
        let key = self.key();
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err(OP))?;
            let rows = c
                .query(
                    "SELECT kek, wrapped, scheme, started, mac FROM kek_rotations
                     ORDER BY started",
                    &[],
                )
                .await
                .map_err(pg(OP))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let kek: String = row.try_get(0).map_err(pg(OP))?;
                let started: i64 = row.try_get(3).map_err(pg(OP))?;
                let r = PendingRotation {
                    kek: Uuid::parse_str(&kek)
                        .map_err(|_| tampered(&kek, "rotation journal: not a UUID"))?,
                    wrapped: row.try_get(1).map_err(pg(OP))?,
                    scheme: row.try_get(2).map_err(pg(OP))?,
                    started: u64::try_from(started)
                        .map_err(|_| tampered(&kek, "rotation journal: bad start"))?,
                };
                if let Some(k) = key.as_deref() {
                    let mac: Option<Vec<u8>> = row.try_get(4).map_err(pg(OP))?;
                    check_mac(
                        k,
                        &format!("rotation of {kek}"),
                        &rotation_body(&r),
                        mac.as_deref(),
                    )?;
                }
                out.push(r);
            }
            Ok(out)
        })
    }

    /// Drop a rotation's journal.
    pub fn rotation_abandon(&self, kek: &Uuid) -> Result<(), KeystoreError> {
        let kek = kek.to_string();
        self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("abandon rotation"))?;
            let tx = c
                .transaction()
                .await
                .map_err(pg("begin abandon rotation"))?;
            for (table, op) in [
                ("kek_rotation_wraps", "drop rotation wraps"),
                ("kek_rotation_items", "drop rotation items"),
                ("kek_rotations", "drop rotation journal"),
            ] {
                tx.execute(&format!("DELETE FROM {table} WHERE kek = $1"), &[&kek])
                    .await
                    .map_err(pg(op))?;
            }
            tx.commit().await.map_err(pg("commit abandon rotation"))
        })?;
        self.changed();
        Ok(())
    }

    /// The wrapped secrets under `kek` that have no item yet: (record, version, wrapped).
    pub fn rotation_todo(
        &self,
        kek: &Uuid,
    ) -> Result<Vec<(KeyRecord, u32, Vec<u8>)>, KeystoreError> {
        let key = self.key();
        let kek = *kek;
        self.run(move |sh| async move {
            let mut c = sh
                .pool
                .get()
                .await
                .map_err(pool_err("read rotation items"))?;
            // One snapshot for both reads.
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg("read rotation items"))?;
            let done: std::collections::HashSet<(String, i64)> = tx
                .query(
                    "SELECT key, version FROM kek_rotation_items WHERE kek = $1",
                    &[&kek.to_string()],
                )
                .await
                .map_err(pg("read rotation items"))?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                .collect();
            Ok(wrapped_under(&tx, key.as_deref(), &kek)
                .await?
                .into_iter()
                .filter(|(r, v, _)| !done.contains(&(r.id.to_string(), i64::from(*v))))
                .collect())
        })
    }

    /// Progress of the pending rotation of `kek`: `None` when none is pending, else (items
    /// rewrapped, wrapped secrets under the KEK).
    pub fn rotation_progress(&self, kek: &Uuid) -> Result<Option<(u64, u64)>, KeystoreError> {
        let id = kek.to_string();
        self.run(move |sh| async move {
            let c = sh
                .pool
                .get()
                .await
                .map_err(pool_err("read rotation journal"))?;
            let row = c
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM kek_rotations WHERE kek = $1),
                            (SELECT COUNT(*) FROM kek_rotation_items WHERE kek = $1),
                            (SELECT COUNT(*) FROM keys WHERE parent = $1 AND wrapped IS NOT NULL),
                            (SELECT COUNT(*) FROM key_versions v JOIN keys k
                                ON v.identity = k.identity AND v.key = k.id
                             WHERE k.parent = $1 AND k.wrapped IS NOT NULL)",
                    &[&id],
                )
                .await
                .map_err(pg("read rotation journal"))?;
            let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
            if n(0) == 0 {
                return Ok(None);
            }
            Ok(Some((n(1), n(2) + n(3))))
        })
    }

    /// Store a batch of rewrapped children in one transaction (each MAC'd).
    pub fn rotation_put(&self, items: &[RotationItem]) -> Result<(), KeystoreError> {
        const OP: &str = "store rotation item";
        let key = self.key();
        let items = items.to_vec();
        self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err(OP))?;
            let tx = c.transaction().await.map_err(pg("begin rotation batch"))?;
            for i in &items {
                tx.execute(
                    "INSERT INTO kek_rotation_items (kek, key, version, wrapped, mac)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (identity, key, version) DO UPDATE SET kek = excluded.kek,
                        wrapped = excluded.wrapped, mac = excluded.mac,
                        row_version = kek_rotation_items.row_version + 1",
                    &[
                        &i.kek.to_string(),
                        &i.key.to_string(),
                        &i64::from(i.version),
                        &i.wrapped,
                        &key.as_deref().map(|k| k.tag(&item_body(i))),
                    ],
                )
                .await
                .map_err(pg(OP))?;
            }
            tx.commit().await.map_err(pg("commit rotation batch"))
        })
    }

    /// Store the integrity-key records (and at `init` the root before them) MAC'd under the key
    /// now loaded, in one transaction with the meta clean-up; with `adopt`, every row without a
    /// MAC gets one (trust-on-upgrade). Returns how many rows were adopted.
    pub fn install_integrity(
        &self,
        records: &[KeyRecord],
        adopt: bool,
        clear_meta: &[&str],
    ) -> Result<usize, KeystoreError> {
        let key = self.key().ok_or_else(|| KeystoreError::Corrupt {
            id: "(integrity)".into(),
            what: "no MAC key loaded".into(),
        })?;
        let records = records.to_vec();
        let clear: Vec<(String, Option<String>)> =
            clear_meta.iter().map(|n| (n.to_string(), None)).collect();
        let adopted = self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("integrity set-up"))?;
            let tx = c
                .transaction()
                .await
                .map_err(pg("begin integrity set-up"))?;
            for r in &records {
                insert_key(&tx, Some(&key), r).await?;
            }
            let mut adopted = 0;
            if adopt {
                for (r, rv) in query_keys(&tx, None, "adopt keys", "mac IS NULL", &[]).await? {
                    super::update_key(&tx, Some(&key), &r, rv, "adopt key").await?;
                    adopted += 1;
                }
                let rows = tx
                    .query(
                        "SELECT id, revoked, issuer, statement, created FROM revocations
                         WHERE mac IS NULL",
                        &[],
                    )
                    .await
                    .map_err(pg("adopt revocations"))?;
                for row in &rows {
                    let id: String = row.get(0);
                    let uuid = |s: &str| {
                        Uuid::parse_str(s).map_err(|_| KeystoreError::Corrupt {
                            id: id.clone(),
                            what: "revocation id is not a UUID".into(),
                        })
                    };
                    let r = Revocation {
                        id: uuid(&id)?,
                        revoked: uuid(&row.get::<_, String>(1))?,
                        issuer: uuid(&row.get::<_, String>(2))?,
                        statement: row.get(3),
                        created: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
                    };
                    tx.execute(
                        "UPDATE revocations SET mac = $2, row_version = row_version + 1
                         WHERE id = $1",
                        &[&id, &key.tag(&revocation_body(&r))],
                    )
                    .await
                    .map_err(pg("adopt revocation"))?;
                    adopted += 1;
                }
            }
            super::put_metas(&tx, &clear).await?;
            tx.commit().await.map_err(pg("commit integrity set-up"))?;
            Ok(adopted)
        })?;
        self.changed();
        Ok(adopted)
    }

    /// The swap, in one serializable transaction, as [`crate::keystore::Keystore::rotation_swap`]:
    /// when every wrapped secret under the KEK has an item, each child's wrap is replaced by its
    /// item (re-MAC'd), the KEK row gets the new wrap and its version plus one, and the journal
    /// is dropped. `Ok(None)` when some child has no item yet; else the KEK's new version. A
    /// concurrent change by another agent is `Conflict` (retry).
    pub fn rotation_swap(&self, pending: &PendingRotation) -> Result<Option<u32>, KeystoreError> {
        const OP: &str = "rotation swap";
        let key = self.key();
        let pending = pending.clone();
        let swapped = self.run(move |sh| async move {
            let key = key.as_deref();
            let mut c = sh.pool.get().await.map_err(pool_err(OP))?;
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::Serializable)
                .start()
                .await
                .map_err(pg("begin rotation swap"))?;
            let kek_s = pending.kek.to_string();
            let rows = tx
                .query(
                    "SELECT key, version, wrapped, mac FROM kek_rotation_items WHERE kek = $1",
                    &[&kek_s],
                )
                .await
                .map_err(pg("read rotation items"))?;
            let mut items = Vec::with_capacity(rows.len());
            for row in &rows {
                let k: String = row.get(0);
                let version: i64 = row.get(1);
                let item = RotationItem {
                    kek: pending.kek,
                    key: Uuid::parse_str(&k)
                        .map_err(|_| tampered(&k, "rotation item: not a UUID"))?,
                    version: u32::try_from(version)
                        .map_err(|_| tampered(&k, "rotation item: bad version"))?,
                    wrapped: row.get(2),
                };
                items.push((item, row.get::<_, Option<Vec<u8>>>(3)));
            }
            let done: std::collections::HashSet<(Uuid, u32)> =
                items.iter().map(|(i, _)| (i.key, i.version)).collect();
            let all = wrapped_under(&tx, key, &pending.kek).await?;
            if all.iter().any(|(r, v, _)| !done.contains(&(r.id, *v))) {
                return Ok(None);
            }
            let records: std::collections::HashMap<Uuid, KeyRecord> =
                all.into_iter().map(|(r, _, _)| (r.id, r)).collect();
            for (i, mac) in &items {
                if let Some(k) = key {
                    check_mac(
                        k,
                        &format!("rotation item {} v{}", i.key, i.version),
                        &item_body(i),
                        mac.as_deref(),
                    )?;
                }
                if i.version == 1 {
                    let Some(r) = records.get(&i.key) else {
                        continue;
                    };
                    let mut r = r.clone();
                    r.wrapped = Some(i.wrapped.clone());
                    tx.execute(
                        "UPDATE keys SET wrapped = $2, mac = $3, row_version = row_version + 1
                         WHERE id = $1",
                        &[
                            &r.id.to_string(),
                            &r.wrapped,
                            &key.map(|k| k.tag(&record_body(&r))),
                        ],
                    )
                    .await
                    .map_err(pg("swap key wrap"))?;
                } else {
                    let created: i64 = tx
                        .query_one(
                            "SELECT created FROM key_versions WHERE key = $1 AND version = $2",
                            &[&i.key.to_string(), &i64::from(i.version)],
                        )
                        .await
                        .map_err(pg("read key version"))?
                        .get(0);
                    let v = KeyVersion {
                        key: i.key,
                        version: i.version,
                        wrapped: i.wrapped.clone(),
                        created: u64::try_from(created)
                            .map_err(|_| tampered(i.key, "created out of range"))?,
                    };
                    tx.execute(
                        "UPDATE key_versions SET wrapped = $3, mac = $4,
                            row_version = row_version + 1
                         WHERE key = $1 AND version = $2",
                        &[
                            &i.key.to_string(),
                            &i64::from(i.version),
                            &v.wrapped,
                            &key.map(|k| k.tag(&version_body(&v))),
                        ],
                    )
                    .await
                    .map_err(pg("swap key version wrap"))?;
                }
            }
            let Some((mut kek, rv)) = super::get_key(&tx, key, &pending.kek).await? else {
                return Err(KeystoreError::Corrupt {
                    id: kek_s,
                    what: "the KEK of a rotation is gone".into(),
                });
            };
            match super::roots::swap_wraps(&tx, key, &kek).await? {
                Some((parent, scheme, wrapped)) => {
                    kek.parent = Some(parent);
                    kek.scheme = scheme;
                    kek.wrapped = Some(wrapped);
                }
                None => {
                    kek.wrapped = Some(pending.wrapped.clone());
                    kek.scheme = pending.scheme.clone();
                }
            }
            kek.version = kek.version.saturating_add(1);
            kek.rotated = Some(now());
            super::update_key(&tx, key, &kek, rv, "swap KEK wrap").await?;
            for (table, op) in [
                ("kek_rotation_items", "drop rotation items"),
                ("kek_rotations", "drop rotation journal"),
            ] {
                tx.execute(&format!("DELETE FROM {table} WHERE kek = $1"), &[&kek_s])
                    .await
                    .map_err(pg(op))?;
            }
            tx.commit().await.map_err(pg("commit rotation swap"))?;
            Ok(Some(kek.version))
        })?;
        self.changed();
        Ok(swapped)
    }
}
