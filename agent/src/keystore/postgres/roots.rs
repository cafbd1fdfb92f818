//! Several roots per KEK on PostgreSQL (`keystore_roots.rs`'s tables, v9): the enrolled roots,
//! each KEK's wraps under the roots that are not its parent (`kek_wraps`), and the MAC'd root set
//! in `meta`. Wraps and the root set are MAC'd with the SQLite module's own bodies and domains,
//! so the bytes are the same in both backends.
//!
//! The checks that span rows ("every KEK has a wrap under every root") run in SERIALIZABLE
//! transactions: a concurrent enrolment or KEK by another agent makes one of them fail with
//! `Conflict` (retry) instead of committing a KEK without a wrap. It must never write a wrap or
//! the root set without MACing it.
//!

use super::{insert_key, pg, pool_err, query_keys, PgStore};
use crate::keystore::{check_mac, KeyRecord, KeystoreError, MacKey};
use crate::keystore::{
    root_set_body, root_set_text, wrap_body, KekWrap, META_ROOT_SET, META_ROOT_SET_MAC,
    ROTATION_WRAPS, WRAPS,
};
use deadpool_postgres::GenericClient;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;
use uuid::Uuid;

fn tampered(id: &str, what: &str) -> KeystoreError {
    KeystoreError::Tampered {
        id: id.to_string(),
        what: what.to_string(),
    }
}

fn need_key(key: Option<Arc<MacKey>>) -> Result<Arc<MacKey>, KeystoreError> {
    key.ok_or_else(|| KeystoreError::Corrupt {
        id: "(roots)".into(),
        what: "no MAC key loaded".into(),
    })
}

/// `kek_wraps` rows matching `where_`, each checked when `key` is given.
async fn wraps<C: GenericClient>(
    c: &C,
    key: Option<&MacKey>,
    where_: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<KekWrap>, KeystoreError> {
    wraps_in(c, key, "kek_wraps", where_, args).await
}

/// Wrap rows of `table` (`kek_wraps`, or the journal's `kek_rotation_wraps`, whose `created`
/// reads as 0, as in SQLite) matching `where_`, each checked when `key` is given.
pub(super) async fn wraps_in<C: GenericClient>(
    c: &C,
    key: Option<&MacKey>,
    table: &str,
    where_: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<KekWrap>, KeystoreError> {
    const OP: &str = "read KEK wraps";
    let (domain, created) = if table == "kek_wraps" {
        (WRAPS, "created")
    } else {
        (ROTATION_WRAPS, "0::bigint")
    };
    let rows = c
        .query(
            &format!(
                "SELECT kek, root, scheme, wrapped, {created}, mac FROM {table} WHERE {where_}
                 ORDER BY kek, root"
            ),
            args,
        )
        .await
        .map_err(pg(OP))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let kek: String = row.try_get(0).map_err(pg(OP))?;
        let root: String = row.try_get(1).map_err(pg(OP))?;
        let created: i64 = row.try_get(4).map_err(pg(OP))?;
        let uuid = |s: &str| Uuid::parse_str(s).map_err(|_| tampered(s, "KEK wrap: not a UUID"));
        let w = KekWrap {
            kek: uuid(&kek)?,
            root: uuid(&root)?,
            scheme: row.try_get(2).map_err(pg(OP))?,
            wrapped: row.try_get(3).map_err(pg(OP))?,
            created: u64::try_from(created)
                .map_err(|_| tampered(&kek, "KEK wrap: created out of range"))?,
        };
        if let Some(k) = key {
            let mac: Option<Vec<u8>> = row.try_get(5).map_err(pg(OP))?;
            check_mac(
                k,
                &format!("wrap of {kek} under root {root}"),
                &wrap_body(domain, &w),
                mac.as_deref(),
            )?;
        }
        out.push(w);
    }
    Ok(out)
}

pub(super) async fn insert_wrap<C: GenericClient>(
    c: &C,
    key: &MacKey,
    w: &KekWrap,
) -> Result<(), KeystoreError> {
    const OP: &str = "store KEK wrap";
    let created = i64::try_from(w.created).map_err(|_| KeystoreError::Database {
        op: OP,
        what: "created does not fit a BIGINT".into(),
    })?;
    c.execute(
        "INSERT INTO kek_wraps (kek, root, scheme, wrapped, created, mac)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (identity, kek, root) DO UPDATE SET scheme = excluded.scheme,
            wrapped = excluded.wrapped, created = excluded.created, mac = excluded.mac,
            row_version = kek_wraps.row_version + 1",
        &[
            &w.kek.to_string(),
            &w.root.to_string(),
            &w.scheme,
            &w.wrapped,
            &created,
            &key.tag(&wrap_body(WRAPS, w)),
        ],
    )
    .await
    .map_err(pg(OP))?;
    Ok(())
}

/// The KEKs every enrolled root must wrap: every `kek` row and the integrity KEK.
async fn wrapped_keks<C: GenericClient>(
    c: &C,
    key: Option<&MacKey>,
) -> Result<Vec<KeyRecord>, KeystoreError> {
    Ok(query_keys(
        c,
        key,
        "list KEKs",
        "kind = 'kek' OR (kind = 'integrity' AND parent IN (SELECT id FROM keys WHERE kind = 'root'))",
        &[],
    )
    .await?
    .into_iter()
    .map(|(r, _)| r)
    .collect())
}

pub(super) async fn root_ids<C: GenericClient>(c: &C) -> Result<BTreeSet<String>, KeystoreError> {
    let rows = c
        .query("SELECT id FROM keys WHERE kind = 'root'", &[])
        .await
        .map_err(pg("list roots"))?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(pg("list roots")))
        .collect()
}

pub(super) async fn meta<C: GenericClient>(
    c: &C,
    name: &str,
) -> Result<Option<String>, KeystoreError> {
    Ok(
        c.query_opt("SELECT value FROM meta WHERE name = $1", &[&name])
            .await
            .map_err(pg("read meta"))?
            .map(|r| r.get::<_, String>(0)),
    )
}

/// Write the root set (the ids of every root row now) with its MAC.
pub(super) async fn write_root_set<C: GenericClient>(
    c: &C,
    key: &MacKey,
) -> Result<(), KeystoreError> {
    let text = root_set_text(&root_ids(c).await?);
    let mac = hex::encode(key.tag(&root_set_body(&text)));
    super::put_metas(
        c,
        &[
            (META_ROOT_SET.to_string(), Some(text)),
            (META_ROOT_SET_MAC.to_string(), Some(mac)),
        ],
    )
    .await
}

impl PgStore {
    /// Every root record (checked while unlocked).
    pub fn roots(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        self.list(crate::keystore::KeyKind::Root, None)
    }

    /// Every root record, checked, and their ids checked against the MAC'd root set (written
    /// now for a keystore with one root and no set yet). Needs the MAC key.
    pub fn roots_checked(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        let key = need_key(self.key())?;
        self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("read roots"))?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .await
                .map_err(pg("begin read roots"))?;
            let roots: Vec<KeyRecord> =
                query_keys(&tx, Some(&key), "list roots", "kind = 'root'", &[])
                    .await?
                    .into_iter()
                    .map(|(r, _)| r)
                    .collect();
            let ids: BTreeSet<String> = roots.iter().map(|r| r.id.to_string()).collect();
            match (
                meta(&tx, META_ROOT_SET).await?,
                meta(&tx, META_ROOT_SET_MAC).await?,
            ) {
                (Some(text), Some(mac)) => {
                    let ok = hex::decode(mac.trim())
                        .ok()
                        .is_some_and(|t| key.verify(&root_set_body(&text), &t));
                    if !ok {
                        return Err(tampered(META_ROOT_SET, "its MAC does not verify"));
                    }
                    if text != root_set_text(&ids) {
                        return Err(tampered(
                            META_ROOT_SET,
                            "the root records are not the enrolled roots",
                        ));
                    }
                }
                (None, None) if roots.len() == 1 => {
                    write_root_set(&tx, &key).await?;
                    tx.commit().await.map_err(pg("commit root set"))?;
                }
                _ => {
                    return Err(tampered(
                        META_ROOT_SET,
                        "the list of enrolled roots is missing",
                    ))
                }
            }
            Ok(roots)
        })
    }

    /// The wrap of `kek` under `root`, checked while unlocked.
    pub fn kek_wrap_unchecked(
        &self,
        kek: &Uuid,
        root: &Uuid,
    ) -> Result<Option<KekWrap>, KeystoreError> {
        let (kek, root) = (kek.to_string(), root.to_string());
        Ok(self
            .run(move |sh| async move {
                let c = sh.pool.get().await.map_err(pool_err("read KEK wraps"))?;
                wraps(&c, None, "kek = $1 AND root = $2", &[&kek, &root]).await
            })?
            .into_iter()
            .next())
    }

    pub fn kek_wrap(&self, kek: &Uuid, root: &Uuid) -> Result<Option<KekWrap>, KeystoreError> {
        let key = self.key();
        let (kek, root) = (kek.to_string(), root.to_string());
        Ok(self
            .run(move |sh| async move {
                let c = sh.pool.get().await.map_err(pool_err("read KEK wraps"))?;
                wraps(&c, key.as_deref(), "kek = $1 AND root = $2", &[&kek, &root]).await
            })?
            .into_iter()
            .next())
    }

    /// Every wrap of one KEK, checked while unlocked.
    pub fn kek_wraps_of(&self, kek: &Uuid) -> Result<Vec<KekWrap>, KeystoreError> {
        let key = self.key();
        let kek = kek.to_string();
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err("read KEK wraps"))?;
            wraps(&c, key.as_deref(), "kek = $1", &[&kek]).await
        })
    }

    /// Every record the enrolled roots must wrap (KEKs and the integrity KEK), checked.
    pub fn wrapped_keks(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        let key = self.key();
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err("list KEKs"))?;
            wrapped_keks(&c, key.as_deref()).await
        })
    }

    /// Enroll a root: its record, its wrap of every KEK and the root set, in one (serializable)
    /// transaction. `Ok(false)`, nothing written, when a KEK has no wrap in `wraps`.
    pub fn add_root(&self, root: &KeyRecord, wraps: &[KekWrap]) -> Result<bool, KeystoreError> {
        let key = need_key(self.key())?;
        let (root, wraps) = (root.clone(), wraps.to_vec());
        let added = self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("add root"))?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .await
                .map_err(pg("begin add root"))?;
            let have: BTreeSet<Uuid> = wraps.iter().map(|w| w.kek).collect();
            if wrapped_keks(&tx, Some(&key))
                .await?
                .iter()
                .any(|k| !have.contains(&k.id))
            {
                return Ok(false);
            }
            insert_key(&tx, Some(&key), &root).await?;
            for w in &wraps {
                insert_wrap(&tx, &key, w).await?;
            }
            write_root_set(&tx, &key).await?;
            tx.commit().await.map_err(pg("commit add root"))?;
            Ok(true)
        })?;
        self.changed();
        Ok(added)
    }

    /// A new KEK and its wraps under the other enrolled roots, in one (serializable)
    /// transaction. `Ok(false)`, nothing written, when an enrolled root other than the KEK's
    /// parent has no wrap in `wraps`.
    pub fn insert_kek(&self, kek: &KeyRecord, wraps: &[KekWrap]) -> Result<bool, KeystoreError> {
        let key = self.key();
        let (kek, wraps) = (kek.clone(), wraps.to_vec());
        let inserted = self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("insert KEK"))?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .await
                .map_err(pg("begin insert KEK"))?;
            let have: BTreeSet<String> = wraps.iter().map(|w| w.root.to_string()).collect();
            let parent = kek.parent.map(|p| p.to_string()).unwrap_or_default();
            if root_ids(&tx)
                .await?
                .iter()
                .any(|r| *r != parent && !have.contains(r))
            {
                return Ok(false);
            }
            insert_key(&tx, key.as_deref(), &kek).await?;
            if !wraps.is_empty() {
                let key = need_key(key)?;
                for w in &wraps {
                    insert_wrap(&tx, &key, w).await?;
                }
            }
            tx.commit().await.map_err(pg("commit insert KEK"))?;
            Ok(true)
        })?;
        self.changed();
        Ok(inserted)
    }

    /// Remove an enrolled root in one serializable transaction, as
    /// [`crate::keystore::Keystore::remove_root`]: each KEK whose parent it is moves to another
    /// root's wrap (`prefer`'s when it has one), its wraps and record go, the root set is
    /// rewritten. `Corrupt` for a KEK with no other wrap.
    pub fn remove_root(&self, id: &Uuid, prefer: &Uuid) -> Result<(), KeystoreError> {
        let key = need_key(self.key())?;
        let (id, prefer) = (*id, *prefer);
        self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("remove root"))?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .await
                .map_err(pg("begin remove root"))?;
            let id_s = id.to_string();
            for (mut kek, rv) in wrapped_kek_rows(&tx, &key).await? {
                if kek.parent != Some(id) {
                    continue;
                }
                let ws = wraps(
                    &tx,
                    Some(&key),
                    "kek = $1 AND root <> $2",
                    &[&kek.id.to_string(), &id_s],
                )
                .await?;
                let Some(w) = ws
                    .iter()
                    .find(|w| w.root == prefer)
                    .or_else(|| ws.first())
                    .cloned()
                else {
                    return Err(KeystoreError::Corrupt {
                        id: kek.id.to_string(),
                        what: "no wrap under another root".into(),
                    });
                };
                kek.parent = Some(w.root);
                kek.scheme = w.scheme.clone();
                kek.wrapped = Some(w.wrapped.clone());
                super::update_key(&tx, Some(&key), &kek, rv, "move KEK to another root").await?;
                tx.execute(
                    "DELETE FROM kek_wraps WHERE kek = $1 AND root = $2",
                    &[&kek.id.to_string(), &w.root.to_string()],
                )
                .await
                .map_err(pg("move KEK to another root"))?;
            }
            drop_root(&tx, &id_s).await?;
            write_root_set(&tx, &key).await?;
            tx.commit().await.map_err(pg("commit remove root"))
        })?;
        self.changed();
        Ok(())
    }

    /// `root.rotate`'s commit in one serializable transaction, as
    /// [`crate::keystore::Keystore::rotate_root`]: `new` becomes every KEK's parent (its wrap
    /// moves into the KEK row, the previous parent's wrap moves to `kek_wraps` unless that
    /// parent is `old`), `old`'s wraps and record go, the root set and `meta` are written.
    /// Returns the KEKs whose parent changed.
    pub fn rotate_root(
        &self,
        old: &Uuid,
        new: &Uuid,
        meta: &[(&str, &str)],
    ) -> Result<usize, KeystoreError> {
        let key = need_key(self.key())?;
        let (old, new) = (*old, *new);
        let meta: Vec<(String, Option<String>)> = meta
            .iter()
            .map(|(n, v)| (n.to_string(), Some(v.to_string())))
            .collect();
        let moved = self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err("rotate root"))?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .await
                .map_err(pg("begin rotate root"))?;
            let ids = root_ids(&tx).await?;
            let (old_s, new_s) = (old.to_string(), new.to_string());
            if old == new || !ids.contains(&old_s) || !ids.contains(&new_s) {
                return Err(KeystoreError::Corrupt {
                    id: new_s,
                    what: "root rotate: the old and new roots must both be enrolled".into(),
                });
            }
            let mut moved = 0;
            for (mut kek, rv) in wrapped_kek_rows(&tx, &key).await? {
                if kek.parent == Some(new) {
                    continue;
                }
                let Some(w) = wraps(
                    &tx,
                    Some(&key),
                    "kek = $1 AND root = $2",
                    &[&kek.id.to_string(), &new_s],
                )
                .await?
                .into_iter()
                .next() else {
                    return Err(KeystoreError::Corrupt {
                        id: kek.id.to_string(),
                        what: "root rotate: no wrap under the new root".into(),
                    });
                };
                let previous = kek
                    .parent
                    .zip(kek.wrapped.clone())
                    .map(|(root, wrapped)| KekWrap {
                        kek: kek.id,
                        root,
                        scheme: kek.scheme.clone(),
                        wrapped,
                        created: crate::keystore::now(),
                    });
                kek.parent = Some(new);
                kek.scheme = w.scheme.clone();
                kek.wrapped = Some(w.wrapped.clone());
                super::update_key(&tx, Some(&key), &kek, rv, "move KEK to the new root").await?;
                tx.execute(
                    "DELETE FROM kek_wraps WHERE kek = $1 AND root = $2",
                    &[&kek.id.to_string(), &new_s],
                )
                .await
                .map_err(pg("move KEK to the new root"))?;
                if let Some(p) =
                    previous.filter(|p| p.root != old && ids.contains(&p.root.to_string()))
                {
                    insert_wrap(&tx, &key, &p).await?;
                }
                moved += 1;
            }
            drop_root(&tx, &old_s).await?;
            write_root_set(&tx, &key).await?;
            super::put_metas(&tx, &meta).await?;
            tx.commit().await.map_err(pg("commit rotate root"))?;
            Ok(moved)
        })?;
        self.changed();
        Ok(moved)
    }

    /// Record a KEK rotation as begun with its journaled wraps under the other roots, in one
    /// transaction (each MAC'd).
    pub fn rotation_begin_wraps(
        &self,
        r: &crate::keystore::PendingRotation,
        wraps: &[KekWrap],
    ) -> Result<(), KeystoreError> {
        const OP: &str = "begin KEK rotation";
        let key = need_key(self.key())?;
        let (r, wraps) = (r.clone(), wraps.to_vec());
        self.run(move |sh| async move {
            let mut c = sh.pool.get().await.map_err(pool_err(OP))?;
            let tx = c.transaction().await.map_err(pg(OP))?;
            let started = i64::try_from(r.started).map_err(|_| KeystoreError::Database {
                op: OP,
                what: "started does not fit a BIGINT".into(),
            })?;
            tx.execute(
                "INSERT INTO kek_rotations (kek, wrapped, scheme, started, mac)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &r.kek.to_string(),
                    &r.wrapped,
                    &r.scheme,
                    &started,
                    &key.tag(&crate::keystore::rotation_body(&r)),
                ],
            )
            .await
            .map_err(pg(OP))?;
            for w in wraps {
                let w = KekWrap { created: 0, ..w };
                tx.execute(
                    "INSERT INTO kek_rotation_wraps (kek, root, scheme, wrapped, mac)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &w.kek.to_string(),
                        &w.root.to_string(),
                        &w.scheme,
                        &w.wrapped,
                        &key.tag(&wrap_body(ROTATION_WRAPS, &w)),
                    ],
                )
                .await
                .map_err(pg("journal KEK wrap"))?;
            }
            tx.commit().await.map_err(pg("commit begin KEK rotation"))
        })?;
        self.changed();
        Ok(())
    }

    /// The journaled wraps of a rotation of `kek`, checked while unlocked.
    pub fn rotation_wraps(&self, kek: &Uuid) -> Result<Vec<KekWrap>, KeystoreError> {
        let key = self.key();
        let kek = kek.to_string();
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err("read KEK wraps"))?;
            wraps_in(
                &c,
                key.as_deref(),
                "kek_rotation_wraps",
                "kek = $1",
                &[&kek],
            )
            .await
        })
    }
}

/// The KEKs every root must wrap, checked, with their row versions.
async fn wrapped_kek_rows<C: GenericClient>(
    c: &C,
    key: &MacKey,
) -> Result<Vec<(KeyRecord, i64)>, KeystoreError> {
    query_keys(
        c,
        Some(key),
        "list KEKs",
        "kind = 'kek' OR (kind = 'integrity' AND parent IN (SELECT id FROM keys WHERE kind = 'root'))",
        &[],
    )
    .await
}

/// A root's wraps (current and journaled) and its record.
async fn drop_root<C: GenericClient>(c: &C, id: &String) -> Result<(), KeystoreError> {
    for table in ["kek_wraps", "kek_rotation_wraps"] {
        c.execute(&format!("DELETE FROM {table} WHERE root = $1"), &[id])
            .await
            .map_err(pg("drop a root's wraps"))?;
    }
    c.execute("DELETE FROM keys WHERE id = $1 AND kind = 'root'", &[id])
        .await
        .map_err(pg("delete root"))?;
    Ok(())
}

/// Inside the rotation swap's transaction, as `keystore_roots.rs`'s `swap_wraps`: with journaled
/// wraps, the KEK takes its parent's new wrap (or the first root's), every other root's wrap
/// replaces its `kek_wraps` row, and the journal's wraps go. `Corrupt` when an enrolled root has
/// no journaled wrap; `None` for a rotation without journaled wraps.
pub(super) async fn swap_wraps<C: GenericClient>(
    tx: &C,
    key: Option<&MacKey>,
    kek: &KeyRecord,
) -> Result<Option<(Uuid, String, Vec<u8>)>, KeystoreError> {
    let corrupt = |what: String| KeystoreError::Corrupt {
        id: kek.id.to_string(),
        what,
    };
    let id = kek.id.to_string();
    let journal = wraps_in(tx, key, "kek_rotation_wraps", "kek = $1", &[&id]).await?;
    if journal.is_empty() {
        return Ok(None);
    }
    let key = key.ok_or_else(|| corrupt("no MAC key loaded".into()))?;
    let by_root: std::collections::HashMap<String, &KekWrap> =
        journal.iter().map(|w| (w.root.to_string(), w)).collect();
    let roots = root_ids(tx).await?;
    if let Some(r) = roots.iter().find(|r| !by_root.contains_key(*r)) {
        return Err(corrupt(format!(
            "the rotation has no wrap for enrolled root {r}"
        )));
    }
    let parent = kek
        .parent
        .map(|p| p.to_string())
        .filter(|p| by_root.contains_key(p))
        .or_else(|| roots.iter().next().cloned())
        .ok_or_else(|| corrupt("no enrolled root".into()))?;
    tx.execute("DELETE FROM kek_wraps WHERE kek = $1", &[&id])
        .await
        .map_err(pg("swap KEK wraps"))?;
    let created = crate::keystore::now();
    let mut new_parent = None;
    for w in &journal {
        if !roots.contains(&w.root.to_string()) {
            continue;
        }
        if w.root.to_string() == parent {
            new_parent = Some((w.root, w.scheme.clone(), w.wrapped.clone()));
            continue;
        }
        insert_wrap(
            tx,
            key,
            &KekWrap {
                created,
                ..w.clone()
            },
        )
        .await?;
    }
    tx.execute("DELETE FROM kek_rotation_wraps WHERE kek = $1", &[&id])
        .await
        .map_err(pg("drop journaled wraps"))?;
    Ok(new_parent)
}
