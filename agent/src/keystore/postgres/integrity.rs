//! Replacing the keystore MAC key on PostgreSQL (`root rotate --compromised`), as
//! [`crate::keystore::Keystore::rekey_integrity`]: every MAC'd row of this identity is checked
//! under the old key and re-MAC'd under the new one in ONE serializable transaction, with the
//! same bodies as SQLite. It must never re-MAC a row that does not verify under the old key
//! (that would launder tampering), and never load the new key before the commit.

use super::roots::{insert_wrap, meta, root_ids, wraps_in, write_root_set};
use super::{get_key, insert_key, pg, pool_err, put_metas, query_keys, PgStore};
use crate::keystore::{
    check_mac, item_body, record_body, revocation_body, rotation_body, version_body, KeyRecord,
    KeyVersion, KeystoreError, MacKey, MetaMac, PendingRotation, Revocation, RotationItem,
};
use crate::keystore::{
    root_set_body, root_set_text, wrap_body, KekWrap, META_ROOT_SET, META_ROOT_SET_MAC,
    ROTATION_WRAPS, WRAPS,
};
use deadpool_postgres::GenericClient;
use std::sync::Arc;
use uuid::Uuid;

fn tampered(id: impl ToString, what: &str) -> KeystoreError {
    KeystoreError::Tampered {
        id: id.to_string(),
        what: what.to_string(),
    }
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap_or(Uuid::nil())
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Check every row of `table` under `old` and set its MAC under `new`. `select` reads the
/// columns `body` needs (after `ctid::text` and `mac`); `body` answers the id named in errors and
/// the MAC body.
async fn remac<C: GenericClient>(
    c: &C,
    old: &MacKey,
    new: &MacKey,
    table: &str,
    select: &str,
    body: impl Fn(&tokio_postgres::Row) -> (String, Vec<u8>),
) -> Result<usize, KeystoreError> {
    let rows = c
        .query(
            &format!("SELECT ctid::text, mac, {select} FROM {table}"),
            &[],
        )
        .await
        .map_err(pg("rekey: read rows"))?;
    for row in &rows {
        let (id, b) = body(row);
        let mac: Option<Vec<u8>> = row.get(1);
        check_mac(old, &id, &b, mac.as_deref())?;
        let ctid: String = row.get(0);
        c.execute(
            &format!(
                "UPDATE {table} SET mac = $2, row_version = row_version + 1
                 WHERE ctid = $1::text::tid"
            ),
            &[&ctid, &new.tag(&b)],
        )
        .await
        .map_err(pg("rekey: write row"))?;
    }
    Ok(rows.len())
}

impl PgStore {
    /// Replace the keystore MAC key in one transaction (see
    /// [`crate::keystore::Keystore::rekey_integrity`] for the arguments). `new` is loaded after
    /// the commit. Returns how many rows were re-MAC'd.
    #[allow(clippy::too_many_arguments)]
    pub fn rekey_integrity(
        &self,
        new: MacKey,
        old_integrity: &[Uuid],
        records: &[KeyRecord],
        wraps: &[KekWrap],
        metas: &[MetaMac],
        clear: &[&str],
        set: &[(&str, String)],
    ) -> Result<usize, KeystoreError> {
        let old = self.key().ok_or_else(|| KeystoreError::Corrupt {
            id: "(integrity)".into(),
            what: "no MAC key loaded".into(),
        })?;
        let new = Arc::new(new);
        let new2 = new.clone();
        let (old_integrity, records, wraps, metas) = (
            old_integrity.to_vec(),
            records.to_vec(),
            wraps.to_vec(),
            metas.to_vec(),
        );
        let mut put: Vec<(String, Option<String>)> =
            clear.iter().map(|n| (n.to_string(), None)).collect();
        put.extend(set.iter().map(|(n, v)| (n.to_string(), Some(v.clone()))));
        let n = self.run_long(move |sh| async move {
            let (old, new) = (&*old, &*new2);
            let mut c = sh.pool.get().await.map_err(pool_err("integrity rekey"))?;
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::Serializable)
                .start()
                .await
                .map_err(pg("begin integrity rekey"))?;
            for id in &old_integrity {
                get_key(&tx, Some(old), id).await?;
            }
            for id in &old_integrity {
                tx.execute("DELETE FROM kek_wraps WHERE kek = $1", &[&id.to_string()])
                    .await
                    .map_err(pg("rekey: drop integrity wraps"))?;
            }
            for id in &old_integrity {
                tx.execute("DELETE FROM keys WHERE id = $1", &[&id.to_string()])
                    .await
                    .map_err(pg("rekey: drop integrity key"))?;
            }
            let mut n = 0;
            for (r, _) in query_keys(&tx, Some(old), "rekey: read keys", "true", &[]).await? {
                tx.execute(
                    "UPDATE keys SET mac = $2, row_version = row_version + 1 WHERE id = $1",
                    &[&r.id.to_string(), &new.tag(&record_body(&r))],
                )
                .await
                .map_err(pg("rekey: key"))?;
                n += 1;
            }
            n += remac(
                &tx,
                old,
                new,
                "revocations",
                "id, revoked, issuer, statement, created",
                |r| {
                    let id: String = r.get(2);
                    let b = Revocation {
                        id: uuid(&id),
                        revoked: uuid(&r.get::<_, String>(3)),
                        issuer: uuid(&r.get::<_, String>(4)),
                        statement: r.get(5),
                        created: unsigned(r.get(6)),
                    };
                    (id, revocation_body(&b))
                },
            )
            .await?;
            n += remac(
                &tx,
                old,
                new,
                "key_versions",
                "key, version, wrapped, created",
                |r| {
                    let id: String = r.get(2);
                    let v = KeyVersion {
                        key: uuid(&id),
                        version: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
                        wrapped: r.get(4),
                        created: unsigned(r.get(5)),
                    };
                    (format!("{id} v{}", v.version), version_body(&v))
                },
            )
            .await?;
            n += remac(
                &tx,
                old,
                new,
                "kek_rotations",
                "kek, wrapped, scheme, started",
                |r| {
                    let id: String = r.get(2);
                    let p = PendingRotation {
                        kek: uuid(&id),
                        wrapped: r.get(3),
                        scheme: r.get(4),
                        started: unsigned(r.get(5)),
                    };
                    (format!("{id} (rotation)"), rotation_body(&p))
                },
            )
            .await?;
            n += remac(
                &tx,
                old,
                new,
                "kek_rotation_items",
                "kek, key, version, wrapped",
                |r| {
                    let key: String = r.get(3);
                    let i = RotationItem {
                        kek: uuid(&r.get::<_, String>(2)),
                        key: uuid(&key),
                        version: u32::try_from(r.get::<_, i64>(4)).unwrap_or(u32::MAX),
                        wrapped: r.get(5),
                    };
                    (format!("{key} (rotation item)"), item_body(&i))
                },
            )
            .await?;
            for (table, domain) in [("kek_wraps", WRAPS), ("kek_rotation_wraps", ROTATION_WRAPS)] {
                for w in wraps_in(&tx, Some(old), table, "true", &[]).await? {
                    tx.execute(
                        &format!(
                            "UPDATE {table} SET mac = $3, row_version = row_version + 1
                             WHERE kek = $1 AND root = $2"
                        ),
                        &[
                            &w.kek.to_string(),
                            &w.root.to_string(),
                            &new.tag(&wrap_body(domain, &w)),
                        ],
                    )
                    .await
                    .map_err(pg("rekey: KEK wrap"))?;
                    n += 1;
                }
            }
            match (
                meta(&tx, META_ROOT_SET).await?,
                meta(&tx, META_ROOT_SET_MAC).await?,
            ) {
                (Some(text), Some(mac)) => {
                    let ok = hex::decode(mac.trim())
                        .ok()
                        .is_some_and(|t| old.verify(&root_set_body(&text), &t));
                    if !ok {
                        return Err(tampered(META_ROOT_SET, "its MAC does not verify"));
                    }
                    if text != root_set_text(&root_ids(&tx).await?) {
                        return Err(tampered(
                            META_ROOT_SET,
                            "the root records are not the enrolled roots",
                        ));
                    }
                }
                (None, None) => {}
                _ => {
                    return Err(tampered(
                        META_ROOT_SET,
                        "the list of enrolled roots is missing",
                    ))
                }
            }
            write_root_set(&tx, new).await?;
            n += 1;
            n += super::devices::remac_devices(&tx, old, new).await?;
            for m in &metas {
                let mut values = Vec::with_capacity(m.values.len());
                for v in m.values.iter() {
                    values.push(meta(&tx, v).await?);
                }
                let Some(tag) = meta(&tx, &m.mac).await? else {
                    continue;
                };
                let body = (m.body)(&values);
                let tag = hex::decode(tag.trim()).unwrap_or_default();
                check_mac(old, &m.mac, &body, Some(&tag))?;
                put_metas(
                    &tx,
                    &[(m.mac.to_string(), Some(hex::encode(new.tag(&body))))],
                )
                .await?;
                n += 1;
            }
            for r in &records {
                insert_key(&tx, Some(new), r).await?;
            }
            for w in &wraps {
                insert_wrap(&tx, new, w).await?;
            }
            put_metas(&tx, &put).await?;
            // The same test hook as SQLite's (debug builds): the e2e crash test runs on both.
            crate::hierarchy::crash_point("integrity-rekey-before-commit");
            tx.commit().await.map_err(pg("commit integrity rekey"))?;
            Ok(n)
        })?;
        self.shared.mac.set_shared(new);
        self.changed();
        Ok(n)
    }
}
