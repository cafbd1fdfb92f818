//! The keystore's unit tests (the SQLite backend through `Keystore`).

use super::sqlite::*;
use super::*;
use rusqlite::{params, Connection};
use zeroize::Zeroizing;

#[test]
fn ssh_flags_round_trip() {
    let (_d, ks) = temp();
    let k = KeyRecord::new(KeyKind::Keypair, "aes-kwp");
    ks.insert(&k).unwrap();
    assert!(ks.ssh_flags().unwrap().is_empty());
    assert!(ks
        .set_ssh_flags(&k.id, SshFlags(SshFlags::OFFERED | SshFlags::CONFIRM))
        .unwrap());
    assert_eq!(ks.ssh_flags().unwrap(), vec![(k.id, SshFlags(3))]);
    let k2 = KeyRecord::new(KeyKind::Keypair, "aes-kwp");
    ks.insert_with_ssh_flags(&k2, SshFlags(SshFlags::OFFERED | SshFlags::ADDED))
        .unwrap();
    assert_eq!(ks.ssh_flags().unwrap().len(), 2);
    assert!(!ks.set_ssh_flags(&Uuid::new_v4(), SshFlags(1)).unwrap());
}

/// Found cost: the audit log writes its chain head (a meta row) after every batch, which
/// moved the generation and so made the SSH door rebuild its identity index on the next
/// signature. Metadata writes leave the generation alone; record writes still move it.
#[test]
fn metadata_writes_leave_the_generation_and_record_writes_move_it() {
    let (_d, ks) = temp();
    let g0 = ks.generation();
    ks.set_metas(&[("audit_head", Some("1:ab")), ("audit_head_mac", Some("cd"))])
        .unwrap();
    ks.set_metas(&[("audit_head", Some("2:ef"))]).unwrap();
    assert_eq!(ks.generation(), g0);
    assert_eq!(ks.try_generation(), Some(g0));
    ks.insert(&KeyRecord::new(KeyKind::Keypair, "aes-kwp"))
        .unwrap();
    assert_ne!(ks.generation(), g0);
}

/// Found cost: the audit chain head's write (every `sync_ms` while requests flow) held the
/// keystore's connection through the WAL's `fsync`, and every request that needed the keystore
/// meanwhile waited for the disk (SSH signatures that met it: 3–4 ms each). The flushed write
/// commits without the `fsync` under the connection and flushes the WAL after: the rows are
/// committed and visible to another connection on return, the generation does not move, and
/// the connection is back to `synchronous = FULL` for every other write.
#[test]
fn flushed_meta_writes_commit_keep_the_generation_and_restore_full_sync() {
    let (d, ks) = temp();
    let g0 = ks.generation();
    ks.set_metas_flushed_unlocked(&[("audit_head", Some("1:ab")), ("audit_head_mac", Some("cd"))])
        .unwrap();
    assert_eq!(ks.meta("audit_head").unwrap().as_deref(), Some("1:ab"));
    assert_eq!(ks.generation(), g0);
    let other = Connection::open(d.path().join("sub/keystore.db")).unwrap();
    let seen: String = other
        .query_row(
            "SELECT value FROM meta WHERE name = 'audit_head_mac'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seen, "cd");
    let sync: i64 = ks
        .lock()
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "FULL again after the flushed write");
    ks.set_metas_flushed_unlocked(&[("audit_head", None)])
        .unwrap();
    assert_eq!(ks.meta("audit_head").unwrap(), None);
}

/// Inside one request the file's `data_version` is read once: another process's commit is seen
/// from the next request on, while the agent's own record writes move the generation at once.
#[test]
fn one_request_reads_the_data_version_once_and_still_sees_its_own_writes() {
    let (d, ks) = temp();
    let other = Connection::open(d.path().join("sub/keystore.db")).unwrap();
    let touch = |n: i64| {
        other
            .execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('h4-test', ?1)",
                params![n.to_string()],
            )
            .unwrap();
    };
    let g0 = ks.generation();
    touch(1);
    let g1 = ks.generation();
    assert_ne!(
        g1, g0,
        "outside a request, another process's commit moves it"
    );
    Keystore::one_request(|| {
        let g = ks.generation();
        touch(2);
        assert_eq!(ks.generation(), g, "read once per request");
        ks.insert(&KeyRecord::new(KeyKind::Keypair, "aes-kwp"))
            .unwrap();
        assert_ne!(ks.generation(), g, "the agent's own write moves it at once");
        // Nested (a request inside a request never happens, but it must not leak).
        Keystore::one_request(|| ks.generation());
    });
    let g2 = ks.generation();
    touch(3);
    assert_ne!(
        ks.generation(),
        g2,
        "after the request, reads are fresh again"
    );
}

fn temp() -> (tempfile::TempDir, Keystore) {
    let dir = tempfile::tempdir().unwrap();
    let ks = Keystore::open(&dir.path().join("sub/keystore.db")).unwrap();
    (dir, ks)
}

#[test]
fn records_round_trip_and_list_by_parent() {
    let (_d, ks) = temp();
    let root = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
    ks.insert(&root).unwrap();
    let mut kek = KeyRecord::new(KeyKind::Kek, "aes-kwp");
    kek.parent = Some(root.id);
    kek.wrapped = Some(vec![1; 40]);
    ks.insert(&kek).unwrap();
    let mut dek = KeyRecord::new(KeyKind::Dek, "aes-kwp");
    dek.parent = Some(kek.id);
    dek.purpose = Some(Purpose::Sharing);
    dek.exportable = true;
    dek.label = Some("photos".into());
    ks.insert(&dek).unwrap();
    assert_eq!(ks.get(&dek.id).unwrap().unwrap(), dek);
    assert_eq!(ks.root().unwrap().unwrap(), root);
    assert_eq!(ks.list(KeyKind::Dek, Some(&kek.id)).unwrap(), vec![dek]);
    assert!(ks.list(KeyKind::Dek, Some(&root.id)).unwrap().is_empty());
    assert!(ks.get(&Uuid::new_v4()).unwrap().is_none());
}

/// A root, a KEK, and `n` DEKs under it with `created` from 1 000 (a few share a second, so
/// the id breaks ties); returns the KEK id and the DEKs in list order.
fn with_deks(ks: &Keystore, n: usize) -> (Uuid, Vec<KeyRecord>) {
    let root = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
    ks.insert(&root).unwrap();
    let mut kek = KeyRecord::new(KeyKind::Kek, "aes-kwp");
    kek.parent = Some(root.id);
    ks.insert(&kek).unwrap();
    let mut deks: Vec<KeyRecord> = (0..n)
        .map(|i| {
            let mut d = KeyRecord::new(KeyKind::Dek, "aes-kwp");
            d.parent = Some(kek.id);
            d.created = 1_000 + (i as u64 / 3);
            ks.insert(&d).unwrap();
            d
        })
        .collect();
    deks.sort_by_key(|d| (d.created, d.id.to_string()));
    (kek.id, deks)
}

fn by_count(limit: usize) -> PageSize<'static> {
    PageSize {
        limit,
        bytes: usize::MAX,
        size: None,
    }
}

/// Every page of `filter` with pages of `limit`, calling `between` after each page.
fn walk(
    ks: &Keystore,
    filter: &ListFilter,
    limit: usize,
    mut between: impl FnMut(usize, &Cursor),
) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut after = None;
    for n in 0.. {
        let page = ks.page(filter, after.as_ref(), &by_count(limit)).unwrap();
        assert!(page.records.len() <= limit);
        out.extend(page.records.iter().map(|r| r.id));
        match page.next {
            Some(c) => after = Some(c),
            None => break,
        }
        between(n, &page.next.unwrap());
    }
    out
}

#[test]
fn pages_walk_the_list_in_order_without_gaps_or_repeats() {
    let (_d, ks) = temp();
    let (kek, deks) = with_deks(&ks, 23);
    let want: Vec<Uuid> = deks.iter().map(|d| d.id).collect();
    for limit in [1, 2, 5, 22, 23, 24, 1000] {
        assert_eq!(
            walk(&ks, &ListFilter::Kind(KeyKind::Dek), limit, |_, _| ()),
            want
        );
        assert_eq!(
            walk(
                &ks,
                &ListFilter::Children(KeyKind::Dek, kek),
                limit,
                |_, _| ()
            ),
            want
        );
    }
    // The full list reads the same order.
    let listed: Vec<Uuid> = ks
        .list(KeyKind::Dek, None)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, want);
    // A page that ends exactly at the last key has no `next`.
    let page = ks
        .page(&ListFilter::Kind(KeyKind::Dek), None, &by_count(23))
        .unwrap();
    assert_eq!(page.records.len(), 23);
    assert!(page.next.is_none());
    // Another KEK's children, and an empty list.
    assert!(ks
        .page(
            &ListFilter::Children(KeyKind::Dek, Uuid::new_v4()),
            None,
            &by_count(5)
        )
        .unwrap()
        .records
        .is_empty());
    let nodes = ks.page(&ListFilter::Nodes, None, &by_count(5)).unwrap();
    assert!(nodes.records.is_empty() && nodes.next.is_none());
}

#[test]
fn pages_survive_keys_added_and_deleted_between_them() {
    let (_d, ks) = temp();
    let (kek, deks) = with_deks(&ks, 40);
    let mut deleted = Vec::new();
    let mut added = Vec::new();
    let got = walk(&ks, &ListFilter::Kind(KeyKind::Dek), 4, |n, cursor| {
        // Delete a key not yet listed (two past the cursor) and one already listed (the
        // cursor's own key), add a key that sorts last and one that sorts before the cursor.
        let live: Vec<Uuid> = ks
            .list(KeyKind::Dek, None)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        let at = live.iter().position(|id| *id == cursor.id).unwrap();
        if let Some(ahead) = live
            .get(at + 2)
            .filter(|id| deks.iter().any(|d| d.id == **id))
        {
            assert!(ks.delete(ahead).unwrap());
            deleted.push(*ahead);
        }
        assert!(ks.delete(&cursor.id).unwrap());
        for created in [5_000, 10] {
            let mut d = KeyRecord::new(KeyKind::Dek, "aes-kwp");
            d.parent = Some(kek);
            d.created = created + n as u64;
            ks.insert(&d).unwrap();
            if created == 5_000 {
                added.push(d.id);
            }
        }
    });
    assert!(deleted.len() >= 5);
    let mut seen = std::collections::HashSet::new();
    for id in &got {
        assert!(seen.insert(*id), "{id} listed twice");
    }
    // Every key present from start to end was listed, no deleted-before-reached key was.
    for d in &deks {
        if !deleted.contains(&d.id) {
            assert!(seen.contains(&d.id), "{} missing", d.id);
        } else {
            assert!(!seen.contains(&d.id), "{} listed after its deletion", d.id);
        }
    }
    // Keys added after the cursor (created later) are listed too.
    for id in &added {
        assert!(seen.contains(id));
    }
}

#[test]
fn a_byte_budget_ends_a_page_early_but_never_empty() {
    let (_d, ks) = temp();
    let (_kek, deks) = with_deks(&ks, 10);
    let size = |_: &KeyRecord| 100;
    let page = ks
        .page(
            &ListFilter::Kind(KeyKind::Dek),
            None,
            &PageSize {
                limit: 1000,
                bytes: 350,
                size: Some(&size),
            },
        )
        .unwrap();
    assert_eq!(page.records.len(), 3);
    assert_eq!(page.next, Some(Cursor::of(&deks[2])));
    // A record bigger than the whole budget still makes a page of one.
    let page = ks
        .page(
            &ListFilter::Kind(KeyKind::Dek),
            None,
            &PageSize {
                limit: 1000,
                bytes: 10,
                size: Some(&size),
            },
        )
        .unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.next, Some(Cursor::of(&deks[0])));
}

#[test]
fn cursors_round_trip_and_bad_ones_are_refused() {
    let c = Cursor {
        created: 1_764_000_000,
        id: Uuid::new_v4(),
    };
    let t = c.to_text();
    assert_eq!(t.len(), 49);
    assert_eq!(Cursor::parse(&t), Ok(c));
    let mut too_big = [0u8; 24];
    too_big[0] = 0x80;
    for bad in [
        String::new(),
        "1".into(),
        t[1..].to_string(),
        format!("2{}", &t[1..]),
        format!("{t}0"),
        t[..48].to_string(),
        format!("1{}", "zz".repeat(24)),
        format!("1{}", hex::encode(too_big)),
        "1é".repeat(10),
    ] {
        assert_eq!(Cursor::parse(&bad), Err(BadCursor), "{bad:?}");
    }
}

#[test]
fn a_page_is_an_index_range_scan() {
    let (_d, ks) = temp();
    with_deks(&ks, 3);
    let conn = ks.lock();
    for (filter, index) in [
        (ListFilter::Kind(KeyKind::Dek), "keys_page_by_kind"),
        (
            ListFilter::Children(KeyKind::Dek, Uuid::new_v4()),
            "keys_page_by_parent",
        ),
        (ListFilter::Nodes, "keys_page_nodes"),
    ] {
        for after in [false, true] {
            let sql = format!("EXPLAIN QUERY PLAN {}", page_sql(&filter, after, 11));
            let n = filter.clause().1.len() + if after { 2 } else { 0 };
            let args: Vec<rusqlite::types::Value> =
                (0..n).map(|_| rusqlite::types::Value::Integer(1)).collect();
            let mut stmt = conn.prepare(&sql).unwrap();
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let plan = plan.join(" | ");
            assert!(plan.contains(index), "{filter:?} after={after}: {plan}");
            // No sort of the matching rows: the index is already in list order.
            assert!(!plan.contains("TEMP B-TREE"), "{filter:?}: {plan}");
            if after {
                assert!(plan.contains("(created,id)>(?,?)"), "{filter:?}: {plan}");
            }
        }
    }
}

#[test]
fn insert_many_is_all_or_nothing() {
    let (_d, ks) = temp();
    let a = KeyRecord::new(KeyKind::Kek, "aes-kwp");
    let b = KeyRecord::new(KeyKind::Kek, "aes-kwp");
    ks.insert_many(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(ks.list(KeyKind::Kek, None).unwrap().len(), 2);
    // A duplicate id fails the whole batch: the new record before it is not kept either.
    let c = KeyRecord::new(KeyKind::Kek, "aes-kwp");
    assert!(ks.insert_many(&[c.clone(), a]).is_err());
    assert!(ks.get(&c.id).unwrap().is_none());
    assert_eq!(ks.list(KeyKind::Kek, None).unwrap().len(), 2);
}

/// Regression: with the page size bound as a parameter (`LIMIT ?`), SQLite re-prepared the
/// cached statement on every execution (it plans with a bound LIMIT's value); pages must
/// reuse it.
#[test]
fn a_cached_page_statement_is_not_reprepared() {
    let (_d, ks) = temp();
    with_deks(&ks, 3);
    let size = PageSize {
        limit: 2,
        bytes: usize::MAX,
        size: None,
    };
    let filter = ListFilter::Kind(KeyKind::Dek);
    for _ in 0..5 {
        let page = ks.page(&filter, None, &size).unwrap();
        assert_eq!(page.records.len(), 2);
        ks.page(&filter, page.next.as_ref(), &size).unwrap();
    }
    // No count limit (old clients): the literal is clamped to SQLite's largest integer.
    let all = PageSize {
        limit: usize::MAX,
        bytes: usize::MAX,
        size: None,
    };
    assert_eq!(ks.page(&filter, None, &all).unwrap().records.len(), 3);
    let conn = ks.lock();
    for after in [false, true] {
        let stmt = conn.prepare_cached(&page_sql(&filter, after, 3)).unwrap();
        assert_eq!(
            stmt.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "after={after}: re-prepared"
        );
    }
}

#[test]
fn a_parent_must_exist() {
    let (_d, ks) = temp();
    let mut orphan = KeyRecord::new(KeyKind::Kek, "aes-kwp");
    orphan.parent = Some(Uuid::new_v4());
    assert!(matches!(ks.insert(&orphan), Err(KeystoreError::Sql { .. })));
}

#[test]
fn reopen_keeps_data_and_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.db");
    let r = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
    {
        let ks = Keystore::open(&p).unwrap();
        ks.insert(&r).unwrap();
        ks.set_meta("pin_failures", "2").unwrap();
    }
    let ks = Keystore::open(&p).unwrap();
    assert_eq!(ks.root().unwrap().unwrap(), r);
    assert_eq!(ks.meta("pin_failures").unwrap().as_deref(), Some("2"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_v1_keystore_migrates_to_v2_keeping_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.db");
    {
        let conn = Connection::open(&p).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
                "INSERT INTO keys (id, kind, scheme, created) VALUES ('6f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e', 'root', 'pkcs11-aes', 1);
                 INSERT INTO keys (id, kind, parent, scheme, wrapped, created) VALUES ('7f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e', 'kek', '6f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e', 'aes-kwp', x'0102', 2);",
            )
            .unwrap();
    }
    let ks = Keystore::open(&p).unwrap();
    let kek = ks
        .get(&Uuid::parse_str("7f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(kek.wrapped.as_deref(), Some(&[1u8, 2][..]));
    assert_eq!(kek.parent, ks.root().unwrap().map(|r| r.id));
    let mut secret = KeyRecord::new(KeyKind::Secret, "aes-kwp");
    secret.parent = Some(kek.id);
    ks.insert(&secret).unwrap();
    let version: i64 = ks
        .lock()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, Keystore::SCHEMA_VERSION);
    // Foreign keys are back on after the migration.
    let mut orphan = KeyRecord::new(KeyKind::Dek, "aes-kwp");
    orphan.parent = Some(Uuid::new_v4());
    assert!(ks.insert(&orphan).is_err());
}

#[test]
fn revoke_marks_the_key_and_keeps_the_statement() {
    let (_d, ks) = temp();
    let k = KeyRecord::new(KeyKind::Keypair, "aes-kwp");
    ks.insert(&k).unwrap();
    let r = Revocation {
        id: Uuid::new_v4(),
        revoked: k.id,
        issuer: k.id,
        statement: vec![9, 9],
        created: 5,
    };
    ks.revoke(&r).unwrap();
    assert_eq!(ks.get(&k.id).unwrap().unwrap().state, KeyState::Revoked);
    assert_eq!(ks.revocations().unwrap(), vec![r]);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.db");
    Connection::open(&p)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        Keystore::open(&p),
        Err(KeystoreError::TooNew { found: 99, .. })
    ));
}

pub(crate) fn test_key(b: u8) -> MacKey {
    MacKey::new(Zeroizing::new([b; 32]))
}

fn full_record(parent: Option<Uuid>) -> KeyRecord {
    let mut r = KeyRecord::new(KeyKind::Keypair, "aes-kwp");
    r.label = Some("l".into());
    r.parent = parent;
    r.wrapped = Some(vec![1, 2, 3]);
    r.public_key = Some(vec![4]);
    r.locator = Some("pkcs11:x".into());
    r.purpose = Some(Purpose::Personal);
    r.rotated = Some(9);
    r.name = Some("n".into());
    r.issuer = parent;
    r.statement = Some(vec![5]);
    r.algorithm = Some(Algorithm::P256);
    r.certificate = Some(vec![7]);
    r.usage = Some(0b101);
    r.not_after = Some(2_000_000_000);
    r
}

#[test]
fn with_the_key_loaded_every_column_is_checked() {
    let (_d, ks) = temp();
    ks.set_mac_key(Some(test_key(7)));
    let root = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
    ks.insert(&root).unwrap();
    let r = full_record(Some(root.id));
    ks.insert(&r).unwrap();
    let other = KeyRecord::new(KeyKind::Root, "x");
    ks.insert(&other).unwrap();
    assert_eq!(ks.get(&r.id).unwrap().unwrap(), r);
    let id = r.id.to_string();
    let edits = [
        ("kind", "'dek'".to_string()),
        ("label", "'m'".into()),
        ("label", "NULL".into()),
        ("parent", format!("'{}'", other.id)),
        ("scheme", "'aes-kw'".into()),
        ("wrapped", "x'010204'".into()),
        ("public_key", "NULL".into()),
        ("locator", "'pkcs11:y'".into()),
        ("purpose", "'sharing'".into()),
        ("exportable", "1".into()),
        ("version", "2".into()),
        ("created", "created + 1".into()),
        ("rotated", "NULL".into()),
        ("state", "'revoked'".into()),
        ("name", "'o'".into()),
        ("issuer", format!("'{}'", other.id)),
        ("statement", "x'06'".into()),
        ("algorithm", "'ed25519'".into()),
        ("certificate", "NULL".into()),
        ("certificate", "x'08'".into()),
        ("min_version", "2".into()),
        ("usage", "NULL".into()),
        ("usage", "4".into()),
        ("not_after", "NULL".into()),
        ("not_after", "not_after + 1".into()),
        ("mac", "NULL".into()),
        ("mac", "x'00'".into()),
    ];
    for (column, value) in edits {
        let conn = Connection::open(ks.path().unwrap()).unwrap();
        let old: String = conn
            .query_row(
                &format!("SELECT quote({column}) FROM keys WHERE id = ?1"),
                [&id],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(
            &format!("UPDATE keys SET {column} = {value} WHERE id = ?1"),
            [&id],
        )
        .unwrap();
        match ks.get(&r.id) {
            Err(KeystoreError::Tampered { id: t, .. }) => assert_eq!(t, id, "{column}"),
            other => panic!("{column} = {value}: {other:?}"),
        }
        // Without the key (locked) the row is read as it is.
        ks.set_mac_key(None);
        assert!(ks.get(&r.id).is_ok(), "{column}");
        ks.set_mac_key(Some(test_key(7)));
        conn.execute(
            &format!("UPDATE keys SET {column} = {old} WHERE id = ?1"),
            [&id],
        )
        .unwrap();
        assert_eq!(ks.get(&r.id).unwrap().unwrap(), r, "{column} restored");
    }
    // Another key does not verify.
    ks.set_mac_key(Some(test_key(8)));
    assert!(matches!(ks.get(&r.id), Err(KeystoreError::Tampered { .. })));
}

/// `record_body` as it was before v10 (no usage limits).
fn record_body_v7(r: &KeyRecord) -> Vec<u8> {
    let mut e = Encoder::new("keyward/keystore/keys/v4");
    e.text(Some(&r.id.to_string()))
        .text(Some(r.kind.as_str()))
        .text(r.label.as_deref())
        .text(r.parent.map(|p| p.to_string()).as_deref())
        .text(Some(&r.scheme))
        .field(r.wrapped.as_deref())
        .field(r.public_key.as_deref())
        .text(r.locator.as_deref())
        .text(r.purpose.map(Purpose::as_str))
        .num(Some(r.exportable as u64))
        .num(Some(u64::from(r.version)))
        .num(Some(r.created))
        .num(r.rotated)
        .text(Some(r.state.as_str()))
        .text(r.name.as_deref())
        .text(r.issuer.map(|p| p.to_string()).as_deref())
        .field(r.statement.as_deref())
        .text(r.algorithm.map(Algorithm::as_str))
        .num(Some(u64::from(r.ssh.0)));
    match (r.min_version, &r.certificate) {
        (None, None) => {}
        (None, Some(cert)) => {
            e.field(Some(cert));
        }
        (Some(min), cert) => {
            e.field(cert.as_deref()).num(Some(u64::from(min)));
        }
    }
    e.finish()
}

#[test]
fn usage_limits_are_maced_and_old_rows_still_verify() {
    // Rows without limits keep the body (so the MAC) they were written with before v10.
    let mut bodies = std::collections::HashSet::new();
    for (cert, min) in [
        (None, None),
        (Some(vec![1u8]), None),
        (None, Some(2)),
        (Some(vec![1]), Some(2)),
    ] {
        let mut r = full_record(None);
        r.usage = None;
        r.not_after = None;
        r.certificate = cert;
        r.min_version = min;
        assert_eq!(record_body(&r), record_body_v7(&r));
        assert!(bodies.insert(record_body(&r)));
        // Any limit changes the body, and no two combinations share one.
        for (usage, not_after) in [(Some(0), None), (None, Some(0)), (Some(3), Some(9))] {
            r.usage = usage;
            r.not_after = not_after;
            assert!(bodies.insert(record_body(&r)), "{usage:?} {not_after:?}");
        }
    }
    // Through the keystore: set, MAC-checked, read back; cleared behind its back: tampering.
    let (_d, ks) = temp();
    ks.set_mac_key(Some(test_key(5)));
    let r = KeyRecord::new(KeyKind::Dek, "aes-kwp");
    ks.insert(&r).unwrap();
    let after = ks
        .update_limits::<KeystoreError>(&r.id, |old| {
            assert_eq!((old.usage, old.not_after), (None, None));
            Ok((Some(0b11), Some(1_900_000_000), false))
        })
        .unwrap()
        .unwrap();
    assert_eq!(ks.get(&r.id).unwrap().unwrap(), after);
    assert_eq!(
        (after.usage, after.not_after),
        (Some(0b11), Some(1_900_000_000))
    );
    let conn = Connection::open(ks.path().unwrap()).unwrap();
    conn.execute(
        "UPDATE keys SET usage = NULL WHERE id = ?1",
        [r.id.to_string()],
    )
    .unwrap();
    assert!(matches!(ks.get(&r.id), Err(KeystoreError::Tampered { .. })));
    // A refusal changes nothing; an unknown id is `None`.
    conn.execute(
        "UPDATE keys SET usage = 3 WHERE id = ?1",
        [r.id.to_string()],
    )
    .unwrap();
    let refused = ks.update_limits(&r.id, |_| {
        Err(KeystoreError::Corrupt {
            id: "x".into(),
            what: "no".into(),
        })
    });
    assert!(refused.is_err());
    assert_eq!(ks.get(&r.id).unwrap().unwrap(), after);
    assert!(ks
        .update_limits::<KeystoreError>(&Uuid::new_v4(), |_| Ok((None, None, false)))
        .unwrap()
        .is_none());
}

#[test]
fn certificates_are_maced_and_old_rows_still_verify() {
    let (_d, ks) = temp();
    ks.set_mac_key(Some(test_key(4)));
    let r = KeyRecord::new(KeyKind::Keypair, "aes-kwp");
    ks.insert(&r).unwrap();
    // No certificate: the v4 body, as written before v5.
    assert_eq!(ks.get(&r.id).unwrap().unwrap().certificate, None);
    assert!(ks.set_certificate(&r.id, Some(vec![0x30, 1, 2])).unwrap());
    assert_eq!(
        ks.get(&r.id).unwrap().unwrap().certificate,
        Some(vec![0x30, 1, 2])
    );
    // Removing it behind the agent's back is tampering; through the keystore it is not.
    let conn = Connection::open(ks.path().unwrap()).unwrap();
    conn.execute(
        "UPDATE keys SET certificate = NULL WHERE id = ?1",
        [r.id.to_string()],
    )
    .unwrap();
    assert!(matches!(ks.get(&r.id), Err(KeystoreError::Tampered { .. })));
    conn.execute(
        "UPDATE keys SET certificate = x'300102' WHERE id = ?1",
        [r.id.to_string()],
    )
    .unwrap();
    assert!(ks.set_certificate(&r.id, None).unwrap());
    assert_eq!(ks.get(&r.id).unwrap().unwrap().certificate, None);
    assert!(!ks.set_certificate(&Uuid::new_v4(), None).unwrap());
}

#[test]
fn dek_versions_and_min_version_are_maced_and_old_rows_still_verify() {
    let (_d, ks) = temp();
    ks.set_mac_key(Some(test_key(5)));
    let mut dek = KeyRecord::new(KeyKind::Dek, "aes-kwp");
    dek.wrapped = Some(vec![1; 40]);
    let other = KeyRecord::new(KeyKind::Dek, "aes-kwp");
    ks.insert(&dek).unwrap();
    ks.insert(&other).unwrap();
    assert_eq!(ks.add_version(&dek.id, vec![2; 40]).unwrap(), Some(2));
    assert_eq!(ks.add_version(&dek.id, vec![3; 40]).unwrap(), Some(3));
    assert_eq!(ks.add_version(&Uuid::new_v4(), vec![3; 40]).unwrap(), None);
    let now = ks.get(&dek.id).unwrap().unwrap();
    assert_eq!(
        (now.version, now.wrapped.as_deref()),
        (3, Some(&[1u8; 40][..]))
    );
    assert_eq!(
        ks.version(&dek.id, 2).unwrap().unwrap().wrapped,
        vec![2; 40]
    );
    assert_eq!(ks.version(&dek.id, 4).unwrap(), None);
    // A version row moved to another key, or to another version, or edited: tampering.
    let conn = Connection::open(ks.path().unwrap()).unwrap();
    for (edit, undo) in [
        (
            format!(
                "UPDATE key_versions SET key = '{}' WHERE key = '{}' AND version = 2",
                other.id, dek.id
            ),
            format!(
                "UPDATE key_versions SET key = '{}' WHERE key = '{}' AND version = 2",
                dek.id, other.id
            ),
        ),
        (
            format!(
                "UPDATE key_versions SET wrapped = x'00' WHERE key = '{}' AND version = 2",
                dek.id
            ),
            format!(
                "UPDATE key_versions SET wrapped = zeroblob(40) WHERE key = '{}' AND version = 2",
                dek.id
            ),
        ),
    ] {
        conn.execute(&edit, []).unwrap();
        let (who, v) = if edit.contains("SET key") {
            (other.id, 2)
        } else {
            (dek.id, 2)
        };
        assert!(
            matches!(ks.version(&who, v), Err(KeystoreError::Tampered { .. })),
            "{edit}"
        );
        conn.execute(&undo, []).unwrap();
    }
    // The version column of the key row is MAC'd (rolling it back is tampering).
    conn.execute(
        "UPDATE keys SET version = 2 WHERE id = ?1",
        [dek.id.to_string()],
    )
    .unwrap();
    assert!(matches!(
        ks.get(&dek.id),
        Err(KeystoreError::Tampered { .. })
    ));
    conn.execute(
        "UPDATE keys SET version = 3 WHERE id = ?1",
        [dek.id.to_string()],
    )
    .unwrap();
    // min_version: set through the keystore verifies; cleared or changed outside does not.
    let before = ks.set_min_version(&dek.id, 2).unwrap().unwrap();
    assert_eq!(before.min_version, None);
    assert_eq!(ks.get(&dek.id).unwrap().unwrap().min_version, Some(2));
    conn.execute(
        "UPDATE keys SET min_version = NULL WHERE id = ?1",
        [dek.id.to_string()],
    )
    .unwrap();
    assert!(matches!(
        ks.get(&dek.id),
        Err(KeystoreError::Tampered { .. })
    ));
    // A row without min_version keeps the body it had before v7.
    assert!(ks.get(&other.id).unwrap().is_some());
}

#[test]
fn state_changes_and_revocations_are_maced() {
    let (_d, ks) = temp();
    ks.set_mac_key(Some(test_key(1)));
    let k = KeyRecord::new(KeyKind::Keypair, "aes-kwp");
    ks.insert(&k).unwrap();
    let r = Revocation {
        id: Uuid::new_v4(),
        revoked: k.id,
        issuer: k.id,
        statement: vec![9],
        created: 5,
    };
    ks.revoke(&r).unwrap();
    assert_eq!(ks.get(&k.id).unwrap().unwrap().state, KeyState::Revoked);
    assert_eq!(ks.revocations().unwrap(), vec![r.clone()]);
    let conn = Connection::open(ks.path().unwrap()).unwrap();
    conn.execute("UPDATE revocations SET created = 6", [])
        .unwrap();
    assert!(
        matches!(ks.revocations(), Err(KeystoreError::Tampered { id, .. }) if id == r.id.to_string())
    );
}

/// A keystore from before the paging indexes (v6) gains them at open, and its MAC'd records
/// page as they listed (the indexes change no row, so no MAC).
#[test]
fn a_v7_keystore_gains_the_paging_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.db");
    let mac = || test_key(7);
    let want: Vec<Uuid> = {
        let conn = Connection::open(&p).unwrap();
        // Up to v7 (DEK versions), the step before the paging indexes.
        for m in &MIGRATIONS[..7] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        drop(conn);
        // Written by the v7 code path: its insert (v7's columns), before the indexes exist.
        let conn = Connection::open(&p).unwrap();
        let key = mac();
        let insert_v7 = |r: &KeyRecord| {
            conn.execute(
                "INSERT INTO keys (id, kind, label, parent, scheme, wrapped, public_key,
                        locator, purpose, exportable, version, created, rotated, state, name,
                        issuer, statement, algorithm, ssh, mac, certificate, min_version)
                     VALUES (?1, ?2, NULL, ?3, ?4, NULL, NULL, NULL, NULL, 0, 1, ?5, NULL,
                        'active', NULL, NULL, NULL, NULL, 0, ?6, NULL, NULL)",
                params![
                    r.id.to_string(),
                    r.kind.as_str(),
                    r.parent.map(|p| p.to_string()),
                    r.scheme,
                    r.created,
                    key.tag(&record_body(r)),
                ],
            )
            .unwrap();
        };
        let root = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
        insert_v7(&root);
        (0..7)
            .map(|i| {
                let mut d = KeyRecord::new(KeyKind::Dek, "aes-kwp");
                d.parent = Some(root.id);
                d.created = 100 + i;
                insert_v7(&d);
                d.id
            })
            .collect()
    };
    let ks = Keystore::open(&p).unwrap();
    ks.set_mac_key(Some(mac()));
    let indexes: Vec<String> = ks
        .lock()
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'keys_page_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(indexes.len(), 3, "{indexes:?}");
    let got: Vec<Uuid> = walk(&ks, &ListFilter::Kind(KeyKind::Dek), 3, |_, _| ())
        .into_iter()
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_v3_keystore_migrates_to_v4_and_is_adopted_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.db");
    let root = "6f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e";
    let kek = "7f1c1f5e-1c36-4f7e-9d0b-0f3a3c1b2d4e";
    {
        let conn = Connection::open(&p).unwrap();
        for m in &MIGRATIONS[..3] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(&format!(
                "INSERT INTO keys (id, kind, scheme, created) VALUES ('{root}', 'root', 'pkcs11-aes', 1);
                 INSERT INTO keys (id, kind, parent, scheme, wrapped, created) VALUES ('{kek}', 'kek', '{root}', 'aes-kwp', x'0102', 2);
                 INSERT INTO revocations (id, revoked, issuer, statement, created) VALUES ('{kek}', '{kek}', '{root}', x'01', 3);
                 INSERT INTO meta (name, value) VALUES ('pin_failures', '2');"
            ))
            .unwrap();
    }
    let ks = Keystore::open(&p).unwrap();
    let version: i64 = ks
        .lock()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, Keystore::SCHEMA_VERSION);
    assert_eq!(ks.meta(META_UPGRADE).unwrap().as_deref(), Some("pending"));
    assert_eq!(ks.meta("pin_failures").unwrap().as_deref(), Some("2"));
    let kek_id = Uuid::parse_str(kek).unwrap();
    // Locked: readable as before.
    assert_eq!(ks.get(&kek_id).unwrap().unwrap().wrapped, Some(vec![1, 2]));
    // Unlocked, before the trust-on-upgrade step: no MAC is no MAC.
    ks.set_mac_key(Some(test_key(3)));
    assert!(matches!(
        ks.get(&kek_id),
        Err(KeystoreError::Tampered { .. })
    ));
    let integrity = KeyRecord::new(KeyKind::Integrity, "aes-kwp");
    assert_eq!(
        ks.install_integrity(std::slice::from_ref(&integrity), true, &[META_UPGRADE])
            .unwrap(),
        3
    );
    assert!(ks.meta(META_UPGRADE).unwrap().is_none());
    assert_eq!(ks.get(&kek_id).unwrap().unwrap().wrapped, Some(vec![1, 2]));
    assert_eq!(ks.revocations().unwrap().len(), 1);
    assert_eq!(ks.integrity_records().unwrap(), vec![integrity]);
    // Integrity records are their own kind: no KEK listing sees them.
    assert_eq!(ks.list(KeyKind::Kek, None).unwrap().len(), 1);
    drop(ks);
    // A fresh keystore is not marked.
    let fresh = dir.path().join("fresh.db");
    assert!(Keystore::open(&fresh)
        .unwrap()
        .meta(META_UPGRADE)
        .unwrap()
        .is_none());
}

#[test]
fn a_damaged_file_is_refused_naming_it_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.db");
    {
        let ks = Keystore::open(&p).unwrap();
        for _ in 0..200 {
            let mut r = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
            r.wrapped = Some(vec![7; 64]);
            ks.insert(&r).unwrap();
        }
    }
    let mut bytes = std::fs::read(&p).unwrap();
    // A whole page in the middle of the file.
    let mid = bytes.len() / 2 / 4096 * 4096;
    for b in &mut bytes[mid..mid + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&p, &bytes).unwrap();
    match Keystore::open(&p) {
        Err(e @ KeystoreError::Damaged { .. }) => {
            assert!(e.to_string().contains(&p.display().to_string()), "{e}")
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("opened a damaged keystore"),
    }
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
}

/// `keywardd`'s open defers SQLite's full check unless a migration is due, and
/// `check_file` runs it on its own connection while the agent's stays open.
#[test]
fn the_full_check_is_deferred_unless_a_migration_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ks.db");
    let (ks, pending) = Keystore::open_deferring_check(&p).unwrap();
    assert!(!pending, "a new file is migrated, so checked first");
    ks.insert(&KeyRecord::new(KeyKind::Kek, "aes-kwp")).unwrap();
    drop(ks);
    let (ks, pending) = Keystore::open_deferring_check(&p).unwrap();
    assert!(pending, "a current schema defers the check");
    Keystore::check_file(&p).expect("a sound file passes, beside the open connection");
    assert_eq!(ks.list(KeyKind::Kek, None).unwrap().len(), 1);
    let missing = dir.path().join("nope.db");
    assert!(Keystore::check_file(&missing).is_err(), "no file: no pass");
}

/// `cargo test -p keyward-agent --release -- --ignored integrity_check_time --nocapture`
#[test]
#[ignore]
fn integrity_check_time_on_100k_records() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.db");
    {
        let ks = Keystore::open(&p).unwrap();
        ks.set_mac_key(Some(test_key(1)));
        let root = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
        ks.insert(&root).unwrap();
        let mut conn = ks.lock();
        let tx = conn.transaction().unwrap();
        for _ in 0..100_000 {
            let mut r = KeyRecord::new(KeyKind::Dek, "aes-kwp");
            r.parent = Some(root.id);
            r.wrapped = Some(vec![7; 40]);
            r.purpose = Some(Purpose::Personal);
            insert_with(&tx, Some(&test_key(1)), &r).unwrap();
        }
        tx.commit().unwrap();
    }
    let size = std::fs::metadata(&p).unwrap().len();
    let t = std::time::Instant::now();
    let ks = Keystore::open(&p).unwrap();
    let open = t.elapsed();
    let conn = ks.lock();
    let t = std::time::Instant::now();
    SqliteStore::check_integrity(&conn, &p).unwrap();
    eprintln!(
        "100k records, {size} bytes: open {open:?}, integrity_check {:?}",
        t.elapsed()
    );
}

// ---- keystore migrate -------------------------------------------------------------------------

/// A keystore with a row in every table, MAC'd under `test_key(7)` (left loaded).
pub(crate) fn populated() -> (tempfile::TempDir, Keystore) {
    let (d, ks) = temp();
    ks.set_mac_key(Some(test_key(7)));
    let root = KeyRecord::new(KeyKind::Root, "pkcs11-aes");
    let mut other_root = KeyRecord::new(KeyKind::Root, "soft");
    other_root.created = root.created + 1;
    assert!(ks.add_root(&root, &[]).unwrap());
    let mut kek = KeyRecord::new(KeyKind::Kek, "aes-kwp");
    kek.parent = Some(root.id);
    kek.wrapped = Some(vec![9; 40]);
    assert!(ks.insert_kek(&kek, &[]).unwrap());
    let wrap = KekWrap {
        kek: kek.id,
        root: other_root.id,
        scheme: "pbkdf2".into(),
        wrapped: vec![8; 40],
        created: 5,
    };
    assert!(ks.add_root(&other_root, &[wrap]).unwrap());
    let mut dek = KeyRecord::new(KeyKind::Dek, "aes-kwp");
    dek.parent = Some(kek.id);
    dek.wrapped = Some(vec![1; 40]);
    dek.exportable = true;
    ks.insert(&dek).unwrap();
    ks.add_version(&dek.id, vec![2; 40]).unwrap().unwrap();
    // A node keypair vouched for by another (issuer before it), and its revocation.
    let mut issuer = full_record(Some(kek.id));
    issuer.name = Some("cluster".into());
    issuer.issuer = None;
    ks.insert(&issuer).unwrap();
    let mut node = full_record(Some(kek.id));
    node.issuer = Some(issuer.id);
    node.created = 1;
    ks.insert(&node).unwrap();
    ks.revoke(&Revocation {
        id: Uuid::new_v4(),
        revoked: node.id,
        issuer: issuer.id,
        statement: vec![3; 10],
        created: 11,
    })
    .unwrap();
    // A KEK rotation in progress, with a journaled wrap and an item.
    let pending = PendingRotation {
        kek: kek.id,
        wrapped: vec![4; 40],
        scheme: "aes-kwp".into(),
        started: 12,
    };
    let jw = KekWrap {
        kek: kek.id,
        root: other_root.id,
        scheme: "pbkdf2".into(),
        wrapped: vec![6; 40],
        created: 0,
    };
    ks.rotation_begin_wraps(&pending, &[jw]).unwrap();
    ks.rotation_put(&[RotationItem {
        kek: kek.id,
        key: dek.id,
        version: 1,
        wrapped: vec![5; 40],
    }])
    .unwrap();
    ks.set_metas(&[("pin_attempts", Some("0")), ("audit_head", Some("3:ab"))])
        .unwrap();
    // The first device (enrolled, MAC'd) and a request filed by a new one.
    let first = DeviceRow {
        id: Uuid::new_v4(),
        state: "enrolled".into(),
        public_key: vec![4; 65],
        token_serial: Some("serial".into()),
        label: Some("first".into()),
        body: b"{}".to_vec(),
        enrolled_by: None,
        signature: Some(vec![6; 70]),
        created: 13,
    };
    ks.device_put(&first).unwrap();
    ks.device_put(&DeviceRow {
        id: Uuid::new_v4(),
        state: "request".into(),
        enrolled_by: None,
        signature: None,
        created: 14,
        ..first.clone()
    })
    .unwrap();
    (d, ks)
}

#[test]
fn migrate_copies_every_table_and_the_copy_verifies_under_the_same_key() {
    let (d, ks) = populated();
    let before = ks.snapshot().unwrap();
    let c = before.counts();
    assert!(
        c.tables().iter().all(|(_, n)| *n > 0),
        "every table has a row: {c:?}"
    );
    let to = d.path().join("copy/ks.db");
    let report = ks.migrate_to(to.to_str().unwrap()).unwrap();
    assert_eq!(report.counts, c);
    // The source is unchanged.
    assert_eq!(ks.snapshot().unwrap(), before);
    // The copy opens, and every row verifies under the same key and equals the source's.
    let copy = Keystore::open(&to).unwrap();
    copy.set_mac_key(Some(test_key(7)));
    assert_eq!(copy.snapshot().unwrap(), before);
    // The device rows too (the first device's, MAC'd, and the request).
    assert_eq!(copy.devices().unwrap().len(), 2);
    assert_eq!(copy.devices().unwrap(), ks.devices().unwrap());
    assert_eq!(copy.roots_checked().unwrap().len(), 2);
    // Under another key nothing verifies.
    copy.set_mac_key(Some(test_key(8)));
    assert!(matches!(
        copy.snapshot(),
        Err(KeystoreError::Tampered { .. })
    ));
}

#[test]
fn migrate_catches_a_tampered_destination_row_naming_it() {
    let (d, ks) = populated();
    let snap = ks.snapshot().unwrap();
    let to = d.path().join("copy.db");
    let copy = Keystore::open(&to).unwrap();
    copy.set_mac_key(Some(test_key(7)));
    copy.load_snapshot(&snap).unwrap();
    let to_s = to.to_str().unwrap();
    assert_eq!(
        super::migrate::verify(&snap, &copy, to_s).unwrap(),
        snap.counts()
    );
    // A changed column: the row's MAC no longer verifies, and the record is named.
    let dek = snap.keys.iter().find(|r| r.kind == KeyKind::Dek).unwrap();
    copy.lock()
        .execute(
            "UPDATE keys SET exportable = 0 WHERE id = ?1",
            [dek.id.to_string()],
        )
        .unwrap();
    match super::migrate::verify(&snap, &copy, to_s) {
        Err(e @ MigrateError::Verify { .. }) => {
            assert!(e.to_string().contains(&dek.id.to_string()), "{e}");
            assert_eq!(e.code(), keyward_proto::ErrorCode::KeystoreTampered);
        }
        other => panic!("expected Verify, got {other:?}"),
    }
    copy.lock()
        .execute(
            "UPDATE keys SET exportable = 1 WHERE id = ?1",
            [dek.id.to_string()],
        )
        .unwrap();
    // A row whose MAC verifies but is not the source's (a meta value): named too.
    copy.set_meta("pin_attempts", "5").unwrap();
    match super::migrate::verify(&snap, &copy, to_s) {
        Err(e @ MigrateError::Verify { .. }) => assert!(e.to_string().contains("pin_attempts")),
        other => panic!("expected Verify, got {other:?}"),
    }
    // A missing row: the count says which table.
    copy.set_meta("pin_attempts", "0").unwrap();
    copy.lock().execute("DELETE FROM key_versions", []).unwrap();
    match super::migrate::verify(&snap, &copy, to_s) {
        Err(MigrateError::CountMismatch { table, .. }) => assert_eq!(table, "key_versions"),
        other => panic!("expected CountMismatch, got {other:?}"),
    }
}

#[test]
fn migrate_refuses_bad_destinations_and_leaves_them_alone() {
    let (d, ks) = populated();
    let before = ks.snapshot().unwrap();
    // A non-empty destination: untouched (not even opened).
    let busy = d.path().join("busy.db");
    std::fs::write(&busy, b"something").unwrap();
    let e = ks.migrate_to(busy.to_str().unwrap()).unwrap_err();
    assert!(matches!(e, MigrateError::NotEmpty { .. }), "{e}");
    assert_eq!(e.code(), keyward_proto::ErrorCode::AlreadyExists);
    assert_eq!(std::fs::read(&busy).unwrap(), b"something");
    // Itself, a relative path, a URL of no backend: invalid arguments.
    for to in [
        ks.path().unwrap().to_str().unwrap(),
        "relative/ks.db",
        "mysql://db/keyward",
    ] {
        let e = ks.migrate_to(to).unwrap_err();
        assert!(
            matches!(e, MigrateError::BadDestination { .. }),
            "{to}: {e}"
        );
        assert_eq!(e.code(), keyward_proto::ErrorCode::InvalidArgs);
    }
    // An unwritable place: a keystore error, and nothing left behind.
    let e = ks.migrate_to("/proc/keyward-migrate/ks.db").unwrap_err();
    assert!(matches!(e, MigrateError::Destination { .. }), "{e}");
    // Locked: refused.
    ks.set_mac_key(None);
    let e = ks
        .migrate_to(d.path().join("new.db").to_str().unwrap())
        .unwrap_err();
    assert!(matches!(e, MigrateError::Locked), "{e}");
    assert!(!d.path().join("new.db").exists());
    ks.set_mac_key(Some(test_key(7)));
    assert_eq!(ks.snapshot().unwrap(), before);
}

#[test]
fn a_failed_migration_removes_the_copy_it_made() {
    let (d, ks) = populated();
    // A source row that does not verify: the copy fails reading it, and the new file goes.
    let kek = ks.list(KeyKind::Kek, None).unwrap().remove(0);
    ks.lock()
        .execute(
            "UPDATE keys SET label = 'forged' WHERE id = ?1",
            [kek.id.to_string()],
        )
        .unwrap();
    let to = d.path().join("copy.db");
    let e = ks.migrate_to(to.to_str().unwrap()).unwrap_err();
    assert!(
        matches!(e, MigrateError::Source(KeystoreError::Tampered { .. })),
        "{e}"
    );
    assert_eq!(e.code(), keyward_proto::ErrorCode::KeystoreTampered);
    assert!(!to.exists());
}

#[test]
fn a_failed_migration_into_an_existing_empty_file_leaves_it_empty() {
    let (d, ks) = populated();
    let kek = ks.list(KeyKind::Kek, None).unwrap().remove(0);
    ks.lock()
        .execute(
            "UPDATE keys SET label = 'forged' WHERE id = ?1",
            [kek.id.to_string()],
        )
        .unwrap();
    // The user made the (empty) destination file; the copy fails after opening it.
    let to = d.path().join("made-by-the-user.db");
    std::fs::write(&to, b"").unwrap();
    let e = ks.migrate_to(to.to_str().unwrap()).unwrap_err();
    assert!(
        matches!(e, MigrateError::Source(KeystoreError::Tampered { .. })),
        "{e}"
    );
    // As it was: there, empty, no WAL beside it; so the next attempt is not "not empty".
    assert_eq!(std::fs::metadata(&to).unwrap().len(), 0);
    assert!(!d.path().join("made-by-the-user.db-wal").exists());
    ks.lock()
        .execute(
            "UPDATE keys SET label = ?2 WHERE id = ?1",
            rusqlite::params![kek.id.to_string(), kek.label],
        )
        .unwrap();
    let report = ks.migrate_to(to.to_str().unwrap()).unwrap();
    assert!(report.counts.keys > 0);
}
