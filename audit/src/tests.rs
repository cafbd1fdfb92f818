//! The chain and its verification: every kind of tampering the README promises to catch.
use super::*;
use keyward_identity::rand_core::OsRng;
use keyward_identity::LocalKey;

/// A chain of `n` entries with a checkpoint every `every` (signed by `key`): the lines, and the
/// head (seq, hash) a keystore would hold.
fn chain(n: u64, every: u64, key: &LocalKey) -> (Vec<Line>, (u64, [u8; 32])) {
    chain_keyed(n, every, |_| key)
}

/// As [`chain`], each checkpoint signed by `key_at(seq)`.
fn chain_keyed<'k>(
    n: u64,
    every: u64,
    key_at: impl Fn(u64) -> &'k LocalKey,
) -> (Vec<Line>, (u64, [u8; 32])) {
    let mut prev = GENESIS;
    let mut lines = Vec::new();
    for seq in 1..=n {
        let mut e = Entry {
            seq,
            time: 1_700_000_000_000 + seq,
            op: "sign".into(),
            door: "socket".into(),
            key: Some(format!("key-{seq}")),
            uid: Some(1000),
            pid: Some(42),
            exe: Some("/usr/bin/keyward".into()),
            result: "ok".into(),
            prev: hex::encode(prev),
            ..Entry::default()
        };
        if seq % every == 0 {
            e.op = CHECKPOINT_OP.into();
            e.door = "agent".into();
            e.key = None;
            e.detail = Some("every".into());
            e.sig = Some(sign_checkpoint(key_at(seq), seq - 1, &prev).unwrap());
        }
        let (text, h) = encode(&e).unwrap();
        lines.push(Line {
            file: "audit.log".into(),
            number: seq as usize,
            text,
        });
        prev = h;
    }
    (lines, (n, prev))
}

fn trust(key: &LocalKey, head: (u64, [u8; 32])) -> Trust {
    Trust {
        key: Some(key.public_key()),
        previous: Vec::new(),
        head: Some(head),
    }
}

#[test]
fn an_intact_chain_verifies_and_counts_unsigned_entries() {
    let k = LocalKey::generate(&mut OsRng);
    let (lines, head) = chain(23, 10, &k);
    let r = verify(&lines, &trust(&k, head));
    assert_eq!(r.problem, None);
    assert_eq!(r.entries, 23);
    assert_eq!(r.signed_through, Some(20));
    assert_eq!(r.unsigned, 3);
    assert!(r.head_matched);
}

#[test]
fn an_edited_byte_is_named() {
    let k = LocalKey::generate(&mut OsRng);
    let (mut lines, head) = chain(12, 5, &k);
    // Every byte of entry 7, edited one at a time: always caught, and always at entry 7.
    let orig = lines[6].text.clone();
    for i in 0..orig.len() {
        let mut b = orig.clone().into_bytes();
        b[i] = if b[i] == b'1' { b'2' } else { b'1' };
        lines[6].text = String::from_utf8(b).unwrap();
        let r = verify(&lines, &trust(&k, head));
        match r.problem {
            Some(Problem::Changed { seq: 7, .. }) | Some(Problem::NotAnEntry { line: 7, .. }) => {}
            other => panic!("byte {i}: {other:?}"),
        }
        assert_eq!(r.last_seq, 6);
    }
}

#[test]
fn a_removed_line_is_named() {
    let k = LocalKey::generate(&mut OsRng);
    let (mut lines, head) = chain(12, 5, &k);
    lines.remove(3); // entry 4
    let r = verify(&lines, &trust(&k, head));
    assert!(
        matches!(r.problem, Some(Problem::Removed { from: 4, to: 4, .. })),
        "{:?}",
        r.problem
    );
    assert!(r
        .problem
        .unwrap()
        .to_string()
        .contains("entries 4 to 4 were removed"));
}

#[test]
fn a_swapped_pair_is_named() {
    let k = LocalKey::generate(&mut OsRng);
    let (mut lines, head) = chain(12, 5, &k);
    lines.swap(7, 8); // entries 8 and 9
    let r = verify(&lines, &trust(&k, head));
    assert!(
        matches!(
            r.problem,
            Some(Problem::Reordered {
                seq: 9,
                expected: 8,
                ..
            })
        ),
        "{:?}",
        r.problem
    );
}

#[test]
fn a_cut_tail_is_caught_by_the_keystore_head() {
    let k = LocalKey::generate(&mut OsRng);
    let (mut lines, head) = chain(12, 5, &k);
    lines.truncate(9);
    let r = verify(&lines, &trust(&k, head));
    assert_eq!(r.problem, Some(Problem::TailCut { last: 9, head: 12 }));
    // Without the head, nothing in the log itself shows the cut: why the keystore keeps it.
    let r = verify(
        &lines,
        &Trust {
            key: Some(k.public_key()),
            previous: Vec::new(),
            head: None,
        },
    );
    assert_eq!(r.problem, None);
}

#[test]
fn a_rewritten_tail_is_caught_by_the_head_or_a_checkpoint() {
    let k = LocalKey::generate(&mut OsRng);
    let (lines, head) = chain(12, 5, &k);
    // Rebuild entries 11 and 12 with another op, re-hashed: a consistent chain, but not the
    // head the keystore holds.
    let mut forged = lines[..10].to_vec();
    let mut prev = parse_line(&lines[9].text).unwrap().stored;
    for l in &lines[10..] {
        let mut e = parse_line(&l.text).unwrap().entry;
        e.op = "keypair.list".into();
        e.prev = hex::encode(prev);
        let (text, h) = encode(&e).unwrap();
        forged.push(Line { text, ..l.clone() });
        prev = h;
    }
    let r = verify(&forged, &trust(&k, head));
    assert_eq!(r.problem, Some(Problem::HeadMismatch { seq: 12 }));
    // A checkpoint signed by another key does not verify.
    let other = LocalKey::generate(&mut OsRng);
    let (lines, head) = chain(12, 5, &other);
    let r = verify(&lines, &trust(&k, head));
    assert!(
        matches!(r.problem, Some(Problem::BadCheckpoint { seq: 5, .. })),
        "{:?}",
        r.problem
    );
}

#[test]
fn rotated_files_are_read_oldest_first() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    for (name, body) in [
        ("audit.log.2", "b\n"),
        ("audit.log", "c\n"),
        ("audit.log.1", "a\n"),
        ("audit.log.x", "no\n"),
    ] {
        std::fs::write(d.path().join(name), body).unwrap();
    }
    let texts: Vec<String> = read_lines(&p)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(texts, ["a", "b", "c"]);
}

#[test]
fn lines_with_unknown_or_duplicate_fields_are_not_entries() {
    let k = LocalKey::generate(&mut OsRng);
    let (lines, _) = chain(1, 5, &k);
    assert!(parse_line(&lines[0].text).unwrap().intact());
    let e = Entry {
        seq: 1,
        op: "x".into(),
        ..Entry::default()
    };
    let (line, _) = encode(&e).unwrap();
    let dup = line.replacen("{\"seq\":1,", "{\"seq\":1,\"seq\":2,", 1);
    assert!(parse_line(&dup).is_none());
    let extra = line.replacen("{\"seq\":1,", "{\"data\":\"secret\",\"seq\":1,", 1);
    assert!(parse_line(&extra).is_none());
    assert!(parse_line("").is_none());
    assert!(parse_line("{}").is_none());
}

/// After the audit key was replaced (`root rotate --compromised`), checkpoints signed before the
/// switch verify with the previous key, and only forward: an old key's signature after a newer
/// key's is refused.
#[test]
fn previous_keys_verify_the_checkpoints_of_their_time_and_only_forward() {
    let old = LocalKey::generate(&mut OsRng);
    let new = LocalKey::generate(&mut OsRng);
    let (lines, head) = chain_keyed(40, 5, |seq| if seq <= 20 { &old } else { &new });
    let mut t = trust(&new, head);
    // With the current key only, the first checkpoint (signed by the old key) fails.
    let r = verify(&lines, &t);
    assert!(
        matches!(r.problem, Some(Problem::BadCheckpoint { seq: 5, .. })),
        "{:?}",
        r.problem
    );
    t.previous = vec![old.public_key()];
    let r = verify(&lines, &t);
    assert_eq!(r.problem, None);
    assert_eq!(r.signed_through, Some(40));
    assert!(r.head_matched);
    // A checkpoint signed by the old key after one signed by the new key is refused.
    let (lines, head) = chain_keyed(
        40,
        5,
        |seq| if (11..=20).contains(&seq) { &new } else { &old },
    );
    let mut t = trust(&new, head);
    t.previous = vec![old.public_key()];
    let r = verify(&lines, &t);
    assert!(
        matches!(r.problem, Some(Problem::BadCheckpoint { seq: 25, .. })),
        "{:?}",
        r.problem
    );
    assert_eq!(r.signed_through, Some(20));
}

#[test]
fn to_hex_is_what_hex_encode_gives() {
    let bytes: Vec<u8> = (0..=255u8).collect();
    assert_eq!(to_hex(&bytes), hex::encode(&bytes));
    assert_eq!(to_hex(&[]), "");
    let mut s = String::from("x");
    push_hex(&mut s, &[0x0f, 0xa0]);
    assert_eq!(s, "x0fa0");
}

/// A chain of `n` plain entries, then a checkpoint at `n + 1` signing entry `signs` (and its
/// hash), then `after` more entries.
fn chain_with_snapshot(n: u64, signs: u64, after: u64, key: &LocalKey) -> Vec<Line> {
    let (mut lines, (_, mut prev)) = chain(n, u64::MAX, key);
    let hash_of =
        |seq: u64, lines: &[Line]| parse_line(&lines[seq as usize - 1].text).unwrap().stored;
    let signed = hash_of(signs, &lines);
    let push = |e: Entry, lines: &mut Vec<Line>, prev: &mut [u8; 32]| {
        let (text, h) = encode(&e).unwrap();
        lines.push(Line {
            file: "audit.log".into(),
            number: e.seq as usize,
            text,
        });
        *prev = h;
    };
    let cp = Entry {
        seq: n + 1,
        time: 1_700_000_001_000,
        op: CHECKPOINT_OP.into(),
        door: "agent".into(),
        result: "ok".into(),
        detail: Some("every".into()),
        prev: hex::encode(prev),
        sig: Some(sign_checkpoint(key, signs, &signed).unwrap()),
        ..Entry::default()
    };
    push(cp, &mut lines, &mut prev);
    for seq in n + 2..n + 2 + after {
        let e = Entry {
            seq,
            time: 1_700_000_002_000 + seq,
            op: "kek.list".into(),
            door: "socket".into(),
            result: "ok".into(),
            prev: hex::encode(prev),
            ..Entry::default()
        };
        push(e, &mut lines, &mut prev);
    }
    lines
}

#[test]
fn a_checkpoint_signing_a_snapshot_covers_up_to_it_and_counts_the_rest_unsigned() {
    let k = LocalKey::generate(&mut OsRng);
    // Entries 8 and 9 were written while the signature over entry 7 was made.
    let lines = chain_with_snapshot(9, 7, 2, &k);
    let r = verify(
        &lines,
        &Trust {
            key: Some(k.public_key()),
            previous: Vec::new(),
            head: None,
        },
    );
    assert_eq!(r.problem, None);
    assert_eq!(r.entries, 12);
    assert_eq!(r.signed_through, Some(10));
    // 8 and 9 (not covered by the signature) and 11, 12 (after the checkpoint).
    assert_eq!(r.unsigned, 4);
    // Signing the entry just before is the same as before snapshots: nothing unsigned.
    let lines = chain_with_snapshot(9, 9, 0, &k);
    let r = verify(
        &lines,
        &trust(&k, (10, parse_line(&lines[9].text).unwrap().stored)),
    );
    assert_eq!(
        (r.problem, r.unsigned, r.signed_through),
        (None, 0, Some(10))
    );
}

#[test]
fn a_checkpoint_naming_an_entry_outside_its_stretch_of_the_chain_is_bad() {
    let k = LocalKey::generate(&mut OsRng);
    let t = Trust {
        key: Some(k.public_key()),
        previous: Vec::new(),
        head: None,
    };
    // An entry before the previous checkpoint (entry 5 is a checkpoint; the second one, at
    // 11, signs entry 3): a replayed signature.
    let (mut lines, _) = chain(5, 5, &k);
    let e3 = parse_line(&lines[2].text).unwrap().stored;
    let mut prev = parse_line(&lines[4].text).unwrap().stored;
    for seq in 6..=11 {
        let mut e = Entry {
            seq,
            op: "sign".into(),
            door: "socket".into(),
            result: "ok".into(),
            prev: hex::encode(prev),
            ..Entry::default()
        };
        if seq == 11 {
            e.op = CHECKPOINT_OP.into();
            e.sig = Some(sign_checkpoint(&k, 3, &e3).unwrap());
        }
        let (text, h) = encode(&e).unwrap();
        lines.push(Line {
            file: "audit.log".into(),
            number: seq as usize,
            text,
        });
        prev = h;
    }
    let r = verify(&lines, &t);
    assert!(
        matches!(r.problem, Some(Problem::BadCheckpoint { seq: 11, .. })),
        "{:?}",
        r.problem
    );
    assert_eq!(r.signed_through, Some(5));
    // The right sequence number with another hash, and a later entry than the checkpoint.
    let lines = chain_with_snapshot(9, 7, 0, &k);
    let bad = lines[..9].to_vec();
    let prev = parse_line(&bad[8].text).unwrap().stored;
    for (seq, hash) in [(7, [7u8; 32]), (10, prev), (11, prev)] {
        let mut b = bad.clone();
        let e = Entry {
            seq: 10,
            op: CHECKPOINT_OP.into(),
            door: "agent".into(),
            result: "ok".into(),
            prev: hex::encode(prev),
            sig: Some(sign_checkpoint(&k, seq, &hash).unwrap()),
            ..Entry::default()
        };
        b.push(Line {
            file: "audit.log".into(),
            number: 10,
            text: encode(&e).unwrap().0,
        });
        let r = verify(&b, &t);
        assert!(
            matches!(r.problem, Some(Problem::BadCheckpoint { seq: 10, .. })),
            "signing ({seq}, …): {:?}",
            r.problem
        );
    }
}

/// The hand-written encoder writes what `serde_json` writes, byte for byte (the hash is over
/// those bytes, and `parse_line` reads them back with `serde_json`), for every member present or
/// absent and strings with every kind of escape.
#[test]
fn encode_into_writes_serde_jsons_bytes() {
    let tricky = [
        "",
        "plain",
        "quote\" back\\slash /slash",
        "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f} \u{7f}",
        "é ü 日本 🦀 \u{2028}\u{2029}",
        "/usr/bin/git\n--evil",
    ];
    let mut n = 0u64;
    for (i, s) in tricky.iter().enumerate() {
        for mask in 0u8..64 {
            let some = |bit: u8| mask & (1 << bit) != 0;
            let e = Entry {
                seq: n * 7919,
                time: u64::MAX - n,
                op: s.to_string(),
                door: tricky[(i + 1) % tricky.len()].to_string(),
                key: some(0).then(|| s.to_string()),
                label: some(1).then(|| format!("l{s}")),
                uid: some(2).then_some(n as u32),
                pid: some(3).then_some(-(n as i32)),
                exe: some(4).then(|| format!("{s}/exe")),
                result: "ok".into(),
                detail: some(5).then(|| s.to_string()),
                prev: to_hex(&[n as u8; 32]),
                sig: (mask % 3 == 0).then(|| "c2ln".to_string()),
            };
            n += 1;
            let body = serde_json::to_string(&e).unwrap();
            let mut line = String::from("prefix kept: ");
            let hash = encode_into(&e, &mut line);
            let line = line.strip_prefix("prefix kept: ").unwrap();
            assert_eq!(&line[..body.len() - 1], &body[..body.len() - 1], "{e:?}");
            let p = parse_line(line).expect("parses");
            assert!(p.intact());
            assert_eq!((p.entry, p.stored), (e, hash));
        }
    }
}
