//! Several roots per KEK (schema v9): the enrolled roots' records, each KEK's wraps under the
//! roots that are not its parent (`kek_wraps`), and the journal of those wraps during a KEK
//! rotation (`kek_rotation_wraps`).
//!
//! A KEK row's own `wrapped` is its wrap under the root its `parent` names; every other enrolled
//! root's wrap of it is a `kek_wraps (kek, root, scheme, wrapped, created, mac)` row, MAC'd like
//! key rows (`wrap_body`), so a wrap cannot be edited or moved to another KEK or root. The
//! integrity KEK gets wraps like any other KEK. The set of root ids is kept in `meta` under the
//! integrity MAC (`root_set`, `root_set_mac`): a forged root row (no MAC), a removed root's old
//! row put back (its MAC still verifies), and a deleted row are each `keystore_tampered` at the
//! next unlock and at every use of the root list ([`Keystore::roots_checked`]).
//!
//! This module must never write a root record, a wrap or the root set without MACing it, and
//! never leave a KEK without a wrap for an enrolled root when it commits.

use super::super::records::*;
use super::super::KeystoreError;
use super::{insert_with, query_with, sql, SqliteStore};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

/// The schema step that adds the tables (appended to `MIGRATIONS` as v9). `IF NOT EXISTS`, so
/// the step is the same whatever number it ends up with.
pub(super) const MIGRATION_V9: &str = "CREATE TABLE IF NOT EXISTS kek_wraps (
        kek         TEXT NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
        root        TEXT NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
        scheme      TEXT NOT NULL,
        wrapped     BLOB NOT NULL,
        created     INTEGER NOT NULL,
        mac         BLOB,
        PRIMARY KEY (kek, root)
     );
     CREATE INDEX IF NOT EXISTS kek_wraps_by_root ON kek_wraps(root);
     CREATE TABLE IF NOT EXISTS kek_rotation_wraps (
        kek         TEXT NOT NULL REFERENCES kek_rotations(kek) ON DELETE CASCADE,
        root        TEXT NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
        scheme      TEXT NOT NULL,
        wrapped     BLOB NOT NULL,
        mac         BLOB,
        PRIMARY KEY (kek, root)
     );";

fn tampered(id: &str, what: &str) -> KeystoreError {
    KeystoreError::Tampered {
        id: id.to_string(),
        what: what.to_string(),
    }
}

fn corrupt(id: impl ToString, what: &str) -> KeystoreError {
    KeystoreError::Corrupt {
        id: id.to_string(),
        what: what.to_string(),
    }
}

fn parse_uuid(s: &str, what: &str) -> Result<Uuid, KeystoreError> {
    Uuid::parse_str(s).map_err(|_| tampered(s, what))
}

/// Every wrap row of `table` matching `where_`, each checked when `key` is given.
pub(super) fn wraps_with(
    conn: &Connection,
    key: Option<&MacKey>,
    table: &str,
    where_: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<KekWrap>, KeystoreError> {
    const OP: &str = "read KEK wraps";
    let (domain, created) = if table == "kek_wraps" {
        (WRAPS, "created")
    } else {
        (ROTATION_WRAPS, "0")
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT kek, root, scheme, wrapped, {created}, mac FROM {table} WHERE {where_} ORDER BY kek, root"
        ))
        .map_err(sql(OP))?;
    let rows = stmt
        .query_map(args, |r| {
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
        let (kek, root, scheme, wrapped, created, mac) = row.map_err(sql(OP))?;
        let w = KekWrap {
            kek: parse_uuid(&kek, "KEK wrap: not a UUID")?,
            root: parse_uuid(&root, "KEK wrap: not a UUID")?,
            scheme,
            wrapped,
            created,
        };
        if let Some(k) = key {
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

fn insert_wrap(conn: &Connection, key: &MacKey, w: &KekWrap) -> Result<(), KeystoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO kek_wraps (kek, root, scheme, wrapped, created, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            w.kek.to_string(),
            w.root.to_string(),
            w.scheme,
            w.wrapped,
            w.created,
            key.tag(&wrap_body(WRAPS, w))
        ],
    )
    .map_err(sql("store KEK wrap"))?;
    Ok(())
}

/// The KEKs every enrolled root must have a wrap of: every `kek` row, and the integrity KEK
/// (the `integrity` row whose parent is a root).
fn wrapped_keks(conn: &Connection, key: Option<&MacKey>) -> Result<Vec<KeyRecord>, KeystoreError> {
    query_with(
        conn,
        key,
        "list KEKs",
        "kind = 'kek' OR (kind = 'integrity' AND parent IN (SELECT id FROM keys WHERE kind = 'root'))",
        &[],
    )
}

/// Write the root set (the ids of every `root` row now) with its MAC.
fn write_root_set(conn: &Connection, key: &MacKey) -> Result<(), KeystoreError> {
    let ids = root_ids(conn)?;
    let text = root_set_text(&ids);
    let mac = hex::encode(key.tag(&root_set_body(&text)));
    super::put_metas(
        conn,
        &[
            (META_ROOT_SET, Some(&text)),
            (META_ROOT_SET_MAC, Some(&mac)),
        ],
        "write root set",
    )?;
    Ok(())
}

fn root_ids(conn: &Connection) -> Result<BTreeSet<String>, KeystoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT id FROM keys WHERE kind = 'root'")
        .map_err(sql("list roots"))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sql("list roots"))?;
    rows.collect::<Result<_, _>>().map_err(sql("list roots"))
}

fn meta_with(conn: &Connection, name: &str) -> Result<Option<String>, KeystoreError> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
    .map_err(sql("read meta"))
}

fn need_key(key: Option<std::sync::Arc<MacKey>>) -> Result<std::sync::Arc<MacKey>, KeystoreError> {
    key.ok_or_else(|| corrupt("(roots)", "no MAC key loaded"))
}

/// `Keystore::rekey_integrity`: every `kek_wraps` and `kek_rotation_wraps` row checked under
/// `old` and re-MAC'd under `new`.
pub(super) fn remac_wraps(
    conn: &Connection,
    old: &MacKey,
    new: &MacKey,
) -> Result<usize, KeystoreError> {
    let mut n = 0;
    for (table, domain) in [("kek_wraps", WRAPS), ("kek_rotation_wraps", ROTATION_WRAPS)] {
        for w in wraps_with(conn, Some(old), table, "1 = 1", &[])? {
            conn.execute(
                &format!("UPDATE {table} SET mac = ?3 WHERE kek = ?1 AND root = ?2"),
                params![
                    w.kek.to_string(),
                    w.root.to_string(),
                    new.tag(&wrap_body(domain, &w))
                ],
            )
            .map_err(sql("rekey: KEK wrap"))?;
            n += 1;
        }
    }
    Ok(n)
}

/// `Keystore::rekey_integrity`: the root set checked under `old` (and against the root rows)
/// and re-MAC'd under `new`. A keystore from before v9 with no set yet gets one.
pub(super) fn remac_root_set(
    conn: &Connection,
    old: &MacKey,
    new: &MacKey,
) -> Result<usize, KeystoreError> {
    match (
        meta_with(conn, META_ROOT_SET)?,
        meta_with(conn, META_ROOT_SET_MAC)?,
    ) {
        (Some(text), Some(mac)) => {
            let ok = hex::decode(mac.trim())
                .ok()
                .is_some_and(|t| old.verify(&root_set_body(&text), &t));
            if !ok {
                return Err(tampered(META_ROOT_SET, "its MAC does not verify"));
            }
            if text != root_set_text(&root_ids(conn)?) {
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
    write_root_set(conn, new)?;
    Ok(1)
}

/// `Keystore::rekey_integrity`: the new integrity KEK's wraps, MAC'd under `new`.
pub(super) fn insert_wraps(
    conn: &Connection,
    new: &MacKey,
    wraps: &[KekWrap],
) -> Result<(), KeystoreError> {
    for w in wraps {
        insert_wrap(conn, new, w)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Every root record, in (created, id) order: unchecked while locked (unlock reads them to
    /// find its root before the MAC key exists), checked while unlocked.
    pub fn roots(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        self.list(KeyKind::Root, None)
    }

    /// Every root record, each checked, and their ids checked against the MAC'd root set. A
    /// keystore from before v9 (one root, no set yet) gets its set written now. Needs the MAC
    /// key.
    pub fn roots_checked(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        let key = need_key(self.key())?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin read roots"))?;
        let roots = query_with(&tx, Some(&key), "list roots", "kind = 'root'", &[])?;
        let ids: BTreeSet<String> = roots.iter().map(|r| r.id.to_string()).collect();
        match (
            meta_with(&tx, META_ROOT_SET)?,
            meta_with(&tx, META_ROOT_SET_MAC)?,
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
                // Trust-on-upgrade from before v9: one root, which the integrity key (checked
                // at this unlock) was made under.
                write_root_set(&tx, &key)?;
                tx.commit().map_err(sql("commit root set"))?;
            }
            _ => {
                return Err(tampered(
                    META_ROOT_SET,
                    "the list of enrolled roots is missing",
                ))
            }
        }
        Ok(roots)
    }

    /// The wrap of `kek` under `root` (a `kek_wraps` row), checked while unlocked.
    pub fn kek_wrap_unchecked(
        &self,
        kek: &Uuid,
        root: &Uuid,
    ) -> Result<Option<KekWrap>, KeystoreError> {
        Ok(wraps_with(
            &self.lock(),
            None,
            "kek_wraps",
            "kek = ?1 AND root = ?2",
            &[&kek.to_string(), &root.to_string()],
        )?
        .into_iter()
        .next())
    }

    pub fn kek_wrap(&self, kek: &Uuid, root: &Uuid) -> Result<Option<KekWrap>, KeystoreError> {
        let key = self.key();
        Ok(wraps_with(
            &self.lock(),
            key.as_deref(),
            "kek_wraps",
            "kek = ?1 AND root = ?2",
            &[&kek.to_string(), &root.to_string()],
        )?
        .into_iter()
        .next())
    }

    /// Every `kek_wraps` row of one KEK, checked while unlocked.
    pub fn kek_wraps_of(&self, kek: &Uuid) -> Result<Vec<KekWrap>, KeystoreError> {
        let key = self.key();
        wraps_with(
            &self.lock(),
            key.as_deref(),
            "kek_wraps",
            "kek = ?1",
            &[&kek.to_string()],
        )
    }

    /// Every record the enrolled roots must wrap (KEKs and the integrity KEK), checked.
    pub fn wrapped_keks(&self) -> Result<Vec<KeyRecord>, KeystoreError> {
        let key = self.key();
        wrapped_keks(&self.lock(), key.as_deref())
    }

    /// Enroll a root: its record and its wrap of every KEK, with the root set, in one
    /// transaction. `Ok(false)` (nothing written) when a KEK has no wrap in `wraps` (one was made
    /// meanwhile: the caller wraps it too and tries again).
    pub fn add_root(&self, root: &KeyRecord, wraps: &[KekWrap]) -> Result<bool, KeystoreError> {
        let key = need_key(self.key())?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin add root"))?;
        let have: BTreeSet<Uuid> = wraps.iter().map(|w| w.kek).collect();
        if wrapped_keks(&tx, Some(&key))?
            .iter()
            .any(|k| !have.contains(&k.id))
        {
            return Ok(false);
        }
        insert_with(&tx, Some(&key), root)?;
        for w in wraps {
            insert_wrap(&tx, &key, w)?;
        }
        write_root_set(&tx, &key)?;
        tx.commit().map_err(sql("commit add root"))?;
        Ok(true)
    }

    /// A new KEK and its wraps under the other enrolled roots, in one transaction. Refused
    /// (`Ok(false)`, nothing written) when an enrolled root other than the KEK's parent has no
    /// wrap in `wraps` (a root was enrolled meanwhile).
    pub fn insert_kek(&self, kek: &KeyRecord, wraps: &[KekWrap]) -> Result<bool, KeystoreError> {
        let key = self.key();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin insert KEK"))?;
        let have: BTreeSet<String> = wraps.iter().map(|w| w.root.to_string()).collect();
        let parent = kek.parent.map(|p| p.to_string()).unwrap_or_default();
        if root_ids(&tx)?
            .iter()
            .any(|r| *r != parent && !have.contains(r))
        {
            return Ok(false);
        }
        insert_with(&tx, key.as_deref(), kek)?;
        if !wraps.is_empty() {
            let key = need_key(key)?;
            for w in wraps {
                insert_wrap(&tx, &key, w)?;
            }
        }
        tx.commit().map_err(sql("commit insert KEK"))?;
        Ok(true)
    }

    /// Remove an enrolled root, in one transaction: every KEK whose parent it is moves to
    /// another root's wrap (`prefer`'s when it has one), its wraps and its record go, and the
    /// root set is rewritten. Refused (`Corrupt`) for a KEK with no other wrap.
    pub fn remove_root(&self, id: &Uuid, prefer: &Uuid) -> Result<(), KeystoreError> {
        let key = need_key(self.key())?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin remove root"))?;
        let id_s = id.to_string();
        for mut kek in wrapped_keks(&tx, Some(&key))? {
            if kek.parent != Some(*id) {
                continue;
            }
            let wraps = wraps_with(
                &tx,
                Some(&key),
                "kek_wraps",
                "kek = ?1 AND root <> ?2",
                &[&kek.id.to_string(), &id_s],
            )?;
            let Some(w) = wraps
                .iter()
                .find(|w| w.root == *prefer)
                .or_else(|| wraps.first())
                .cloned()
            else {
                return Err(corrupt(kek.id, "no wrap under another root"));
            };
            kek.parent = Some(w.root);
            kek.scheme = w.scheme.clone();
            kek.wrapped = Some(w.wrapped.clone());
            tx.execute(
                "UPDATE keys SET parent = ?2, scheme = ?3, wrapped = ?4, mac = ?5 WHERE id = ?1",
                params![
                    kek.id.to_string(),
                    kek.parent.map(|p| p.to_string()),
                    kek.scheme,
                    kek.wrapped,
                    key.tag(&record_body(&kek))
                ],
            )
            .map_err(sql("move KEK to another root"))?;
            tx.execute(
                "DELETE FROM kek_wraps WHERE kek = ?1 AND root = ?2",
                params![kek.id.to_string(), w.root.to_string()],
            )
            .map_err(sql("move KEK to another root"))?;
        }
        for table in ["kek_wraps", "kek_rotation_wraps"] {
            tx.execute(&format!("DELETE FROM {table} WHERE root = ?1"), [&id_s])
                .map_err(sql("drop a root's wraps"))?;
        }
        tx.execute("DELETE FROM keys WHERE id = ?1 AND kind = 'root'", [&id_s])
            .map_err(sql("delete root"))?;
        write_root_set(&tx, &key)?;
        tx.commit().map_err(sql("commit remove root"))
    }

    /// `root.rotate`'s commit, in one transaction: `new` becomes the parent of every KEK (the
    /// integrity KEK included): its `kek_wraps` row moves into the KEK row, and the previous
    /// parent's wrap moves to `kek_wraps` (or goes, when that parent is `old`); then every wrap
    /// under `old` goes, `old`'s record goes and the root set is rewritten. Refused (`Corrupt`,
    /// nothing written) when a KEK has no wrap under `new`, or `old`/`new` is not enrolled.
    /// `meta` (names and values) is written in the same transaction (`--compromised`: the KEKs
    /// to rotate at the next unlock, and its MAC). Returns the KEKs whose parent changed.
    pub fn rotate_root(
        &self,
        old: &Uuid,
        new: &Uuid,
        meta: &[(&str, &str)],
    ) -> Result<usize, KeystoreError> {
        let key = need_key(self.key())?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin rotate root"))?;
        let ids = root_ids(&tx)?;
        let (old_s, new_s) = (old.to_string(), new.to_string());
        if old == new || !ids.contains(&old_s) || !ids.contains(&new_s) {
            return Err(corrupt(
                new,
                "root rotate: the old and new roots must both be enrolled",
            ));
        }
        let mut moved = 0;
        for mut kek in wrapped_keks(&tx, Some(&key))? {
            if kek.parent == Some(*new) {
                continue;
            }
            let Some(w) = wraps_with(
                &tx,
                Some(&key),
                "kek_wraps",
                "kek = ?1 AND root = ?2",
                &[&kek.id.to_string(), &new_s],
            )?
            .into_iter()
            .next() else {
                return Err(corrupt(kek.id, "root rotate: no wrap under the new root"));
            };
            let previous = kek
                .parent
                .zip(kek.wrapped.clone())
                .map(|(root, wrapped)| KekWrap {
                    kek: kek.id,
                    root,
                    scheme: kek.scheme.clone(),
                    wrapped,
                    created: now(),
                });
            kek.parent = Some(*new);
            kek.scheme = w.scheme.clone();
            kek.wrapped = Some(w.wrapped.clone());
            tx.execute(
                "UPDATE keys SET parent = ?2, scheme = ?3, wrapped = ?4, mac = ?5 WHERE id = ?1",
                params![
                    kek.id.to_string(),
                    kek.parent.map(|p| p.to_string()),
                    kek.scheme,
                    kek.wrapped,
                    key.tag(&record_body(&kek))
                ],
            )
            .map_err(sql("move KEK to the new root"))?;
            tx.execute(
                "DELETE FROM kek_wraps WHERE kek = ?1 AND root = ?2",
                params![kek.id.to_string(), new_s],
            )
            .map_err(sql("move KEK to the new root"))?;
            if let Some(p) =
                previous.filter(|p| p.root != *old && ids.contains(&p.root.to_string()))
            {
                insert_wrap(&tx, &key, &p)?;
            }
            moved += 1;
        }
        for table in ["kek_wraps", "kek_rotation_wraps"] {
            tx.execute(&format!("DELETE FROM {table} WHERE root = ?1"), [&old_s])
                .map_err(sql("drop the old root's wraps"))?;
        }
        tx.execute("DELETE FROM keys WHERE id = ?1 AND kind = 'root'", [&old_s])
            .map_err(sql("delete the old root"))?;
        write_root_set(&tx, &key)?;
        let meta: Vec<(&str, Option<&str>)> = meta.iter().map(|(n, v)| (*n, Some(*v))).collect();
        super::put_metas(&tx, &meta, "write meta")?;
        tx.commit().map_err(sql("commit rotate root"))?;
        Ok(moved)
    }

    /// Record a KEK rotation as begun (as [`Keystore::rotation_begin`]) with the new KEK's wrap
    /// under every enrolled root (the running root's included), in one transaction.
    pub fn rotation_begin_wraps(
        &self,
        r: &PendingRotation,
        wraps: &[KekWrap],
    ) -> Result<(), KeystoreError> {
        let key = need_key(self.key())?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql("begin KEK rotation"))?;
        tx.execute(
            "INSERT INTO kek_rotations (kek, wrapped, scheme, started, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                r.kek.to_string(),
                r.wrapped,
                r.scheme,
                r.started,
                key.tag(&rotation_body(r))
            ],
        )
        .map_err(sql("begin KEK rotation"))?;
        for w in wraps {
            let w = KekWrap {
                created: 0,
                ..w.clone()
            };
            tx.execute(
                "INSERT INTO kek_rotation_wraps (kek, root, scheme, wrapped, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    w.kek.to_string(),
                    w.root.to_string(),
                    w.scheme,
                    w.wrapped,
                    key.tag(&wrap_body(ROTATION_WRAPS, &w))
                ],
            )
            .map_err(sql("journal KEK wrap"))?;
        }
        tx.commit().map_err(sql("commit begin KEK rotation"))
    }

    /// The journaled wraps of a rotation of `kek`, checked while unlocked.
    pub fn rotation_wraps(&self, kek: &Uuid) -> Result<Vec<KekWrap>, KeystoreError> {
        let key = self.key();
        wraps_with(
            &self.lock(),
            key.as_deref(),
            "kek_rotation_wraps",
            "kek = ?1",
            &[&kek.to_string()],
        )
    }
}

/// Inside the rotation swap's transaction: when the rotation journaled wraps, the KEK row takes
/// its parent's new wrap (or, if the parent has none, the first root's), every other root's
/// wrap replaces its `kek_wraps` row, and the journal's wraps go. Refused (`Corrupt`) when an
/// enrolled root has no journaled wrap. Returns the KEK's new (parent, scheme, wrapped), or
/// `None` for a rotation with no journaled wraps (one root: the pending wrap is the parent's).
pub(super) fn swap_wraps(
    tx: &Connection,
    key: Option<&MacKey>,
    kek: &KeyRecord,
) -> Result<Option<(Uuid, String, Vec<u8>)>, KeystoreError> {
    let journal = wraps_with(
        tx,
        key,
        "kek_rotation_wraps",
        "kek = ?1",
        &[&kek.id.to_string()],
    )?;
    if journal.is_empty() {
        return Ok(None);
    }
    let key = key.ok_or_else(|| corrupt(kek.id, "no MAC key loaded"))?;
    let by_root: HashMap<String, &KekWrap> =
        journal.iter().map(|w| (w.root.to_string(), w)).collect();
    let roots = root_ids(tx)?;
    if let Some(r) = roots.iter().find(|r| !by_root.contains_key(*r)) {
        return Err(corrupt(
            kek.id,
            &format!("the rotation has no wrap for enrolled root {r}"),
        ));
    }
    let parent = kek
        .parent
        .map(|p| p.to_string())
        .filter(|p| by_root.contains_key(p))
        .or_else(|| roots.iter().next().cloned())
        .ok_or_else(|| corrupt(kek.id, "no enrolled root"))?;
    tx.execute("DELETE FROM kek_wraps WHERE kek = ?1", [kek.id.to_string()])
        .map_err(sql("swap KEK wraps"))?;
    let created = now();
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
        )?;
    }
    tx.execute(
        "DELETE FROM kek_rotation_wraps WHERE kek = ?1",
        [kek.id.to_string()],
    )
    .map_err(sql("drop journaled wraps"))?;
    Ok(new_parent)
}
