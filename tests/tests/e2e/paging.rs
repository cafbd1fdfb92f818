//! Lists that page (`kek.list`, `dek.list`, `keypair.list`, `node.list`): `limit` and `after`
//! through the real socket, pages that stay right while keys come and go, typed refusals of bad
//! limits and cursors, old clients that send `{}`, a keystore whose list no longer fits one
//! frame, and the CLI's `--limit`/`--after`/`--json`.

use keyward_tests::keyward_client::Client;
use keyward_tests::keyward_proto::ops::{
    DekCreateArgs, DekListArgs, KeyInfo, KeyList, KeypairCreateArgs, ListArgs, NodeDeriveArgs,
    MAX_PAGE,
};
use keyward_tests::keyward_proto::{ErrorCode, MAX_FRAME};
use keyward_tests::{expect_code, map, request, text, RawConn, TestEnv};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

keyward_tests::keyward_e2e_tests!(
    every_list_pages_with_small_limits,
    pages_stay_right_while_keys_come_and_go,
    bad_limits_and_cursors_are_invalid_args,
    old_clients_without_limit_get_the_whole_list,
    six_thousand_deks_list_through_the_socket,
    cli_limit_after_and_json,
);

fn ids(keys: &[KeyInfo]) -> Vec<String> {
    keys.iter().map(|k| k.id.clone()).collect()
}

/// Every page of a list, `limit` at a time, through `page`; checks each page's size.
fn walk(
    limit: u32,
    mut page: impl FnMut(ListArgs) -> KeyList,
    mut between: impl FnMut(usize),
) -> (Vec<String>, usize) {
    let mut all = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let p = page(ListArgs {
            limit: Some(limit),
            after: after.take(),
        });
        pages += 1;
        assert!(p.keys.len() <= limit as usize, "a page of {}", p.keys.len());
        all.extend(ids(&p.keys));
        match p.next {
            Some(n) => after = Some(n),
            None => return (all, pages),
        }
        between(pages);
    }
}

fn no_repeats(ids: &[String]) {
    let mut seen = HashSet::new();
    for id in ids {
        assert!(seen.insert(id), "{id} listed twice");
    }
}

fn every_list_pages_with_small_limits(env: &mut TestEnv) {
    env.init();
    let c = env.client();
    let mut keks = Vec::new();
    for i in 0..3 {
        keks.push(c.run(|c| c.kek_create(Some(format!("k{i}")))).unwrap().id);
    }
    for i in 0..13 {
        let a = DekCreateArgs {
            kek: Some(keks[i % 3].clone()),
            ..Default::default()
        };
        c.run(|c| c.dek_create(&a)).unwrap();
    }
    for i in 0..5 {
        let a = KeypairCreateArgs {
            kek: Some(keks[0].clone()),
            label: Some(format!("kp{i}")),
            ..Default::default()
        };
        c.run(|c| c.keypair_create(&a)).unwrap();
    }
    for i in 0..3 {
        let a = NodeDeriveArgs {
            name: format!("web{i}"),
            parent: None,
            kek: Some(keks[0].clone()),
            ttl_seconds: None,
        };
        c.run(|c| c.node_derive(&a)).unwrap();
    }
    // The all-pages helpers give the full lists; pages of 1, 2 and 4 give the same keys in the
    // same order.
    let all_keks = ids(&c.run(|c| c.kek_list()).unwrap().keys);
    let all_deks = ids(&c.run(|c| c.dek_list(None)).unwrap().keys);
    let all_kps = ids(&c.run(|c| c.keypair_list()).unwrap().keys);
    let all_nodes = c.run(|c| c.node_list()).unwrap().keys;
    assert_eq!(all_keks.len(), 3);
    assert_eq!(all_deks.len(), 13);
    assert_eq!(
        all_kps.len(),
        5 + 4,
        "5 keypairs, 3 node keys and the cluster root"
    );
    assert_eq!(all_nodes.len(), 4);
    assert!(all_nodes.iter().all(|k| k.name.is_some()));
    for limit in [1, 2, 4] {
        let (got, pages) = walk(limit, |p| c.run(|c| c.kek_list_page(p)).unwrap(), |_| ());
        assert_eq!(got, all_keks);
        assert_eq!(pages, 3usize.div_ceil(limit as usize).max(1));
        let (got, _) = walk(
            limit,
            |p| {
                c.run(|c| {
                    c.dek_list_page(DekListArgs {
                        kek: None,
                        limit: p.limit,
                        after: p.after,
                    })
                })
                .unwrap()
            },
            |_| (),
        );
        assert_eq!(got, all_deks);
        let (got, _) = walk(
            limit,
            |p| c.run(|c| c.keypair_list_page(p)).unwrap(),
            |_| (),
        );
        assert_eq!(got, all_kps);
        let (got, _) = walk(limit, |p| c.run(|c| c.node_list_page(p)).unwrap(), |_| ());
        assert_eq!(got, ids(&all_nodes));
        // One KEK's DEKs, paged.
        let under = ids(&c.run(|c| c.dek_list(Some(keks[1].clone()))).unwrap().keys);
        assert_eq!(under.len(), 4);
        let (got, _) = walk(
            limit,
            |p| {
                c.run(|c| {
                    c.dek_list_page(DekListArgs {
                        kek: Some(keks[1].clone()),
                        limit: p.limit,
                        after: p.after,
                    })
                })
                .unwrap()
            },
            |_| (),
        );
        assert_eq!(got, under);
    }
    // The list's order is (created, id): never out of order.
    let deks = c.run(|c| c.dek_list(None)).unwrap().keys;
    for w in deks.windows(2) {
        assert!((w[0].created, &w[0].id) < (w[1].created, &w[1].id));
    }
    // A page exactly as long as the list has no `next`; MAX_PAGE is allowed.
    let p = c
        .run(|c| {
            c.kek_list_page(ListArgs {
                limit: Some(3),
                after: None,
            })
        })
        .unwrap();
    assert_eq!((p.keys.len(), p.next), (3, None));
    let p = c
        .run(|c| {
            c.dek_list_page(DekListArgs {
                kek: None,
                limit: Some(MAX_PAGE),
                after: None,
            })
        })
        .unwrap();
    assert_eq!((p.keys.len(), p.next), (13, None));
}

fn pages_stay_right_while_keys_come_and_go(env: &mut TestEnv) {
    env.init();
    let c = env.client();
    let kek = c.run(|c| c.kek_create(None)).unwrap().id;
    let kp = |label: String| KeypairCreateArgs {
        kek: Some(kek.clone()),
        label: Some(label),
        ..Default::default()
    };
    let mut before = Vec::new();
    for i in 0..20 {
        let a = kp(format!("a{i}"));
        before.push(c.run(|c| c.keypair_create(&a)).unwrap().id);
    }
    // Between pages: delete one key already listed and one not yet listed, add two.
    let mut deleted_ahead = Vec::new();
    let mut added = Vec::new();
    let mut listed_so_far: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = c
            .run(|c| {
                c.keypair_list_page(ListArgs {
                    limit: Some(3),
                    after: after.take(),
                })
            })
            .unwrap();
        listed_so_far.extend(ids(&p.keys));
        let Some(next) = p.next else { break };
        after = Some(next);
        if let Some(ahead) = before
            .iter()
            .find(|id| !listed_so_far.contains(*id) && !deleted_ahead.contains(*id))
            .cloned()
        {
            c.run(|c| c.keypair_delete(&ahead)).unwrap();
            deleted_ahead.push(ahead);
        }
        // Delete the cursor's own key: a cursor is a position, not a key that must exist.
        let behind = listed_so_far.last().cloned().unwrap();
        c.run(|c| c.keypair_delete(&behind)).unwrap();
        if added.len() < 6 {
            for _ in 0..2 {
                let a = kp("new".into());
                added.push(c.run(|c| c.keypair_create(&a)).unwrap().id);
            }
        }
    }
    no_repeats(&listed_so_far);
    assert!(deleted_ahead.len() >= 3);
    for id in &before {
        assert_eq!(
            listed_so_far.contains(id),
            !deleted_ahead.contains(id),
            "{id}: listed iff it was never deleted before its page"
        );
    }
    // Keys created during the walk are listed at most once (above); whether a page reaches one
    // depends on where it sorts: `created` has one-second steps and the id breaks ties.
    for id in &listed_so_far {
        assert!(
            before.contains(id) || added.contains(id),
            "{id} came from nowhere"
        );
    }
    // DEKs (no delete op): inserts between pages are listed once each, nothing repeats.
    let mk = || {
        let a = DekCreateArgs {
            kek: Some(kek.clone()),
            ..Default::default()
        };
        c.run(|c| c.dek_create(&a)).unwrap().id
    };
    let first: Vec<String> = (0..10).map(|_| mk()).collect();
    let mut added = Vec::new();
    let (got, pages) = walk(
        4,
        |p| {
            c.run(|c| {
                c.dek_list_page(DekListArgs {
                    kek: Some(kek.clone()),
                    limit: p.limit,
                    after: p.after,
                })
            })
            .unwrap()
        },
        |n| {
            if n < 4 {
                added.push(mk());
            }
        },
    );
    no_repeats(&got);
    assert!(pages >= 3);
    for id in &first {
        assert!(got.contains(id), "{id} missing");
    }
    for id in &got {
        assert!(
            first.contains(id) || added.contains(id),
            "{id} came from nowhere"
        );
    }
}

fn bad_limits_and_cursors_are_invalid_args(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"paging");
    let c = env.client();
    let bad = ErrorCode::InvalidArgs;
    let page = |limit, after: Option<&str>| ListArgs {
        limit,
        after: after.map(String::from),
    };
    for limit in [0, MAX_PAGE + 1, u32::MAX] {
        let e = expect_code(c.run(|c| c.kek_list_page(page(Some(limit), None))), bad);
        assert!(e.to_string().contains("`limit`"), "{e}");
        expect_code(c.run(|c| c.keypair_list_page(page(Some(limit), None))), bad);
        expect_code(c.run(|c| c.node_list_page(page(Some(limit), None))), bad);
        let a = DekListArgs {
            kek: None,
            limit: Some(limit),
            after: None,
        };
        expect_code(c.run(|c| c.dek_list_page(a)), bad);
    }
    // Cursors: empty, garbage, truncated, another version, hex that is not hex, too long, a
    // `created` no key can have, and a UUID where a cursor goes.
    let good = c
        .run(|c| {
            c.kek_list_page(ListArgs {
                limit: Some(1),
                after: None,
            })
        })
        .unwrap();
    assert!(good.next.is_none(), "one KEK: one page");
    let real = {
        let a = DekCreateArgs::default();
        c.run(|c| c.dek_create(&a)).unwrap();
        c.run(|c| {
            c.dek_list_page(DekListArgs {
                kek: None,
                limit: Some(1),
                after: None,
            })
        })
        .unwrap()
        .next
        .expect("two DEKs: a next cursor")
    };
    let cursors = [
        String::new(),
        "garbage".into(),
        real[..real.len() - 1].to_string(),
        format!("2{}", &real[1..]),
        format!("1{}", "g".repeat(48)),
        format!("{real}00"),
        format!("1ff{}", &real[3..]),
        keys.dek.clone(),
        "x".repeat(10_000),
    ];
    for after in &cursors {
        let e = expect_code(c.run(|c| c.kek_list_page(page(Some(5), Some(after)))), bad);
        assert!(e.to_string().contains("`after`"), "{e}");
        assert!(
            !e.to_string().contains(after.as_str()) || after.is_empty(),
            "{e}"
        );
        let a = DekListArgs {
            kek: None,
            limit: None,
            after: Some(after.clone()),
        };
        expect_code(c.run(|c| c.dek_list_page(a)), bad);
        expect_code(c.run(|c| c.keypair_list_page(page(None, Some(after)))), bad);
        expect_code(c.run(|c| c.node_list_page(page(None, Some(after)))), bad);
    }
    // Mistyped paging fields on the raw wire: typed refusals, the connection keeps serving.
    let mut raw = RawConn::connect(env.socket_path());
    raw.hello(1);
    for (i, args) in [
        map(&[("limit", text("ten"))]),
        map(&[("limit", keyward_tests::int(0))]),
        map(&[("after", keyward_tests::int(7))]),
        map(&[
            ("limit", keyward_tests::int(5)),
            ("page", keyward_tests::int(2)),
        ]),
    ]
    .into_iter()
    .enumerate()
    {
        for op in ["kek.list", "dek.list", "keypair.list", "node.list"] {
            let r = raw.call(&request(10 + i as u64, op, args.clone()));
            assert_eq!(r.err.expect("refused").code, bad, "{op} {i}");
        }
    }
    let r = raw.call(&request(99, "kek.list", map(&[])));
    assert!(r.ok.is_some());
    // A cursor from another list is only a position: it answers, never fails.
    let p = c
        .run(|c| c.kek_list_page(page(Some(5), Some(&real))))
        .unwrap();
    assert!(p.next.is_none());
    env.assert_intact(&keys);
}

fn old_clients_without_limit_get_the_whole_list(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"old");
    let c = env.client();
    for _ in 0..30 {
        let a = DekCreateArgs::default();
        c.run(|c| c.dek_create(&a)).unwrap();
    }
    // A client from before paging sends `{}` and reads `keys`: it gets every key (the list fits
    // one page) and no `next`.
    let mut raw = RawConn::connect(env.socket_path());
    raw.hello(1);
    for (op, want) in [
        ("dek.list", 31),
        ("kek.list", 1),
        ("keypair.list", 0),
        ("node.list", 0),
    ] {
        let r = raw.call(&request(5, op, map(&[])));
        let ok = r.ok.unwrap_or_else(|| panic!("{op}: {:?}", r.err));
        let list: KeyList = ok.deserialized().unwrap();
        assert_eq!(list.keys.len(), want, "{op}");
        assert!(list.next.is_none(), "{op}");
        // Exactly the fields an old client knows: `keys` alone.
        let map = ok.as_map().unwrap();
        assert_eq!(map.len(), 1, "{op}: {map:?}");
    }
    let r = raw.call(&request(6, "dek.list", map(&[("kek", text(&keys.kek))])));
    let list: KeyList = r.ok.unwrap().deserialized().unwrap();
    assert_eq!(list.keys.len(), 31);
}

/// More DEKs than one frame could list (each `KeyInfo` is ~190 bytes: ~5,500 fill 1 MiB).
/// Created through the socket by 8 pipelined async connections; the time is printed.
fn six_thousand_deks_list_through_the_socket(env: &mut TestEnv) {
    const N: usize = 6_000;
    env.init();
    let c = env.client();
    let kek = c.run(|c| c.kek_create(None)).unwrap().id;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut created: Vec<String> = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(Arc::new(env.async_client().await));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (n, c) in clients.into_iter().enumerate() {
            let kek = kek.clone();
            tasks.spawn(async move { make_deks(c, kek, N / 8, n).await });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r.unwrap());
        }
        all
    });
    eprintln!(
        "created {N} DEKs through the socket in {:.1} s ({:?} root)",
        started.elapsed().as_secs_f64(),
        env.kind()
    );
    assert_eq!(created.len(), N);
    // The whole list is over one frame: before paging, `dek.list` answered `too_large`.
    let started = Instant::now();
    let listed = c
        .run(|c| c.dek_list(None))
        .expect("dek.list, all pages")
        .keys;
    eprintln!(
        "listed {N} DEKs (every page, no limit) in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let one_frame: usize = listed
        .iter()
        .map(|k| {
            let mut b = Vec::new();
            ciborium::into_writer(k, &mut b).unwrap();
            b.len()
        })
        .sum();
    assert!(
        one_frame > MAX_FRAME,
        "{one_frame} bytes would fit one frame"
    );
    let mut got = ids(&listed);
    no_repeats(&got);
    got.sort();
    created.sort();
    assert_eq!(got, created);
    // An old-style request gets the first page, cut to fit, with a `next` (ignored by old
    // clients, which then see a prefix instead of an error).
    let mut raw = RawConn::connect(env.socket_path());
    raw.hello(1);
    let r = raw.call(&request(2, "dek.list", map(&[])));
    let first: KeyList = r.ok.expect("a page, not too_large").deserialized().unwrap();
    assert!(
        first.keys.len() > 3_000 && first.keys.len() < N,
        "{}",
        first.keys.len()
    );
    assert!(first.next.is_some());
    // Pages of MAX_PAGE: ceil(6000 / 1000) of them.
    let (paged, pages) = walk(
        MAX_PAGE,
        |p| {
            c.run(|c| {
                c.dek_list_page(DekListArgs {
                    kek: Some(kek.clone()),
                    limit: p.limit,
                    after: p.after,
                })
            })
            .unwrap()
        },
        |_| (),
    );
    assert_eq!(pages, N / MAX_PAGE as usize);
    assert_eq!(paged.len(), N);
    // And through the CLI, every page in one `--json` object.
    let v = env.cli_json(&["dek", "list"], None);
    assert_eq!(v["keys"].as_array().unwrap().len(), N);
    assert!(v.get("next").is_none());
}

async fn make_deks(c: Arc<Client>, kek: String, n: usize, who: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        if tasks.len() >= 32 {
            out.push(tasks.join_next().await.unwrap().unwrap());
        }
        let (c, kek) = (c.clone(), kek.clone());
        tasks.spawn(async move {
            let a = DekCreateArgs {
                kek: Some(kek),
                ..Default::default()
            };
            c.dek_create(&a)
                .await
                .unwrap_or_else(|e| panic!("client {who} dek {i}: {e}"))
                .id
        });
    }
    while let Some(r) = tasks.join_next().await {
        out.push(r.unwrap());
    }
    out
}

fn cli_limit_after_and_json(env: &mut TestEnv) {
    env.init();
    let kek = env.cli_json(&["kek", "create"], None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut made = Vec::new();
    for _ in 0..7 {
        made.push(
            env.cli_json(&["dek", "create"], None)["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Without --limit: every key, one object, no `next`.
    let all = env.cli_json(&["dek", "list"], None);
    let all_ids: Vec<String> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all_ids.len(), 7);
    assert!(all.get("next").is_none());
    let mut sorted = all_ids.clone();
    sorted.sort();
    made.sort();
    assert_eq!(sorted, made);
    // --limit 3: pages of at most 3 with a `next`, followed by --after to the end.
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["dek", "list", "--kek", &kek, "--limit", "3"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let v = env.cli_json(&args, None);
        pages += 1;
        let keys = v["keys"].as_array().unwrap();
        assert!(keys.len() <= 3);
        walked.extend(keys.iter().map(|k| k["id"].as_str().unwrap().to_string()));
        match v.get("next").and_then(|n| n.as_str()) {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(walked, all_ids);
    // --after without --limit: every key after the cursor.
    let first = env.cli_json(&["dek", "list", "--limit", "2"], None);
    let cur = first["next"].as_str().unwrap().to_string();
    let rest = env.cli_json(&["dek", "list", "--after", &cur], None);
    assert_eq!(rest["keys"].as_array().unwrap().len(), 5);
    assert!(rest.get("next").is_none());
    // Text mode: the table on stdout, the cursor on stderr.
    let out = env.cli(&["dek", "list", "--limit", "2"], None);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains(&all_ids[0]) && table.contains(&all_ids[1]));
    assert!(!table.contains(&all_ids[2]));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(&format!("--after {cur}")), "{stderr}");
    // The other lists take the flags too.
    for list in [["kek", "list"], ["keypair", "list"], ["node", "list"]] {
        let v = env.cli_json(&[list[0], list[1], "--limit", "1"], None);
        assert!(v["keys"].as_array().unwrap().len() <= 1, "{list:?}");
        let v = env.cli_json(&[list[0], list[1]], None);
        assert!(v.get("next").is_none(), "{list:?}");
    }
    // Refusals are typed: a limit of 0 or over the maximum, a cursor that is not one.
    assert_eq!(
        env.cli_json_err(&["dek", "list", "--limit", "0"], None),
        "invalid_args"
    );
    assert_eq!(
        env.cli_json_err(&["kek", "list", "--limit", "1001"], None),
        "invalid_args"
    );
    assert_eq!(
        env.cli_json_err(&["keypair", "list", "--after", "nope"], None),
        "invalid_args"
    );
    assert_eq!(
        env.cli_json_err(&["node", "list", "--limit", "5", "--after", "nope"], None),
        "invalid_args"
    );
}
