//! The socket with hand-made frames: malformed, oversized, truncated and misshapen requests,
//! and pipelining. After every abuse a new client is served and the keystore is intact.

use keyward_tests::keyward_proto::{ErrorCode, MAX_FRAME};
use keyward_tests::{cbor, err_code, int, map, request, text, Keys, RawRead, TestEnv, Value};
use std::collections::HashMap;
use std::net::Shutdown;

keyward_tests::keyward_e2e_tests!(
    every_op_refuses_unknown_fields_and_non_map_args,
    malformed_cbor_keeps_the_connection,
    non_map_and_misshapen_requests_keep_the_connection,
    oversized_frame_is_refused_from_its_length_alone,
    frame_of_exactly_the_limit_is_read,
    truncated_frames_close_the_connection,
    unknown_op_and_unknown_args,
    operations_before_hello_are_refused,
    failed_hello_does_not_open_the_connection,
    pipelined_raw_requests_are_answered_by_id,
);

fn setup(env: &mut TestEnv) -> Keys {
    env.init_with_keys(false, b"must survive abuse")
}

fn malformed_cbor_keeps_the_connection(env: &mut TestEnv) {
    let keys = setup(env);
    let mut r = env.raw();
    // Before hello, then after: both answered `malformed` with a null id, connection kept.
    for (i, body) in [
        &[0xffu8][..],
        &[0x1c],                   // reserved additional info
        &[0x5f, 0x41],             // unterminated indefinite byte string
        &[0xa1, 0x61, 0x61],       // map missing its value
        &[0x18],                   // truncated integer
        &[0xbf, 0x61, 0x61, 0x01], // unterminated indefinite map
        &[0x82, 0x01, 0x02, 0x03], // trailing bytes after one item
        &[],                       // empty frame
    ]
    .iter()
    .enumerate()
    {
        r.send_body(body);
        let resp = r.recv();
        assert_eq!(err_code(&resp), ErrorCode::Malformed, "body #{i} {body:?}");
        assert_eq!(resp.id, None, "malformed frames have no id");
        if i == 3 {
            r.hello(1);
        }
    }
    // Still usable on the same connection.
    let resp = r.call(&request(2, "kek.list", map(&[])));
    assert_eq!(resp.id, Some(2));
    assert!(resp.ok.is_some(), "{resp:?}");
    drop(r);
    env.assert_intact(&keys);
}

fn non_map_and_misshapen_requests_keep_the_connection(env: &mut TestEnv) {
    let keys = setup(env);
    let mut r = env.raw();
    r.hello(1);
    let non_maps = [
        int(3),
        text("hello"),
        Value::Array(vec![int(1), text("hello"), map(&[])]),
        Value::Null,
        Value::Bytes(vec![1, 2, 3]),
        Value::Tag(24, Box::new(Value::Bytes(vec![0xa0]))),
    ];
    for v in &non_maps {
        let resp = r.call(v);
        assert_eq!(err_code(&resp), ErrorCode::Malformed, "{v:?}");
        assert_eq!(resp.id, None);
    }
    // Maps that are not requests: invalid_request, with the id when one could be read.
    let cases: Vec<(Value, Option<u64>)> = vec![
        (map(&[("op", text("kek.list"))]), None),
        (map(&[("id", int(9)), ("args", map(&[]))]), Some(9)),
        (map(&[("id", int(10)), ("op", int(5))]), Some(10)),
        (
            map(&[("id", int(11)), ("op", text("kek.list")), ("args", int(1))]),
            Some(11),
        ),
        (map(&[("id", text("12")), ("op", text("kek.list"))]), None),
        (
            map(&[
                ("id", Value::Integer((-1).into())),
                ("op", text("kek.list")),
            ]),
            None,
        ),
        (
            map(&[
                ("id", int(13)),
                ("op", text("kek.list")),
                ("args", map(&[])),
                ("evil", int(1)),
            ]),
            Some(13),
        ),
        (
            Value::Map(vec![
                (int(1), int(2)),
                (text("id"), int(14)),
                (text("op"), text("kek.list")),
            ]),
            Some(14),
        ),
    ];
    for (v, id) in &cases {
        let resp = r.call(v);
        assert_eq!(err_code(&resp), ErrorCode::InvalidRequest, "{v:?}");
        assert_eq!(resp.id, *id, "{v:?}");
    }
    // `args` may be left out for operations without arguments.
    let resp = r.call(&map(&[("id", int(15)), ("op", text("kek.list"))]));
    assert!(resp.ok.is_some(), "{resp:?}");
    drop(r);
    env.assert_intact(&keys);
}

fn oversized_frame_is_refused_from_its_length_alone(env: &mut TestEnv) {
    let keys = setup(env);
    for (greet, len) in [
        (false, 2u32 << 20),
        (true, 2 << 20),
        (true, MAX_FRAME as u32 + 1),
        (true, u32::MAX),
    ] {
        let mut r = env.raw();
        if greet {
            r.hello(1);
        }
        // Only the 4-byte length: the agent must answer without waiting for the body (the read
        // timeout would fail the test).
        r.write_raw(&len.to_be_bytes());
        let resp = r.recv();
        assert_eq!(err_code(&resp), ErrorCode::FrameTooLarge, "len {len}");
        assert_eq!(resp.id, None);
        r.expect_closed();
        // The next connection is served.
        let mut r2 = env.raw();
        r2.hello(1);
    }
    env.assert_intact(&keys);
}

fn frame_of_exactly_the_limit_is_read(env: &mut TestEnv) {
    let keys = setup(env);
    let mut r = env.raw();
    r.hello(1);
    // A legal 1 MiB frame that is not a request: read whole, answered `malformed`.
    r.send_body(&vec![0u8; MAX_FRAME]);
    let resp = r.recv();
    assert_eq!(err_code(&resp), ErrorCode::Malformed);
    // A valid request right at the limit: an encrypt whose plaintext fills the frame. Its reply
    // (base64, so bigger than the request) cannot fit a frame; it must fail cleanly: no hang, no
    // crash, nothing lost.
    let resp = r.call(&request(2, "kek.list", map(&[])));
    assert!(
        resp.ok.is_some(),
        "the connection survived a full-size frame: {resp:?}"
    );
    let overhead = cbor(&request(
        3,
        "encrypt",
        map(&[
            ("dek", text(&keys.dek)),
            ("plaintext", Value::Bytes(vec![])),
        ]),
    ))
    .len();
    let filler = MAX_FRAME - overhead - 4; // minus the longer byte-string header
    let big = request(
        3,
        "encrypt",
        map(&[
            ("dek", text(&keys.dek)),
            ("plaintext", Value::Bytes(vec![0x42; filler])),
        ]),
    );
    let body = cbor(&big);
    assert!(body.len() <= MAX_FRAME, "{} > {MAX_FRAME}", body.len());
    r.send_body(&body);
    match r.read() {
        RawRead::Frame(resp) => {
            // Either a ciphertext that fit, or a typed error for this id.
            assert!(resp.id == Some(3) || resp.id.is_none(), "{resp:?}");
        }
        // Today the agent closes the connection when a reply is over the frame limit (see the
        // report); a typed error would be better. Either way the agent itself must survive.
        RawRead::Closed => {}
    }
    drop(r);
    env.assert_intact(&keys);
}

fn truncated_frames_close_the_connection(env: &mut TestEnv) {
    let keys = setup(env);
    // A body shorter than its length prefix, then the write side closed.
    for greet in [false, true] {
        let mut r = env.raw();
        if greet {
            r.hello(1);
        }
        r.write_raw(&100u32.to_be_bytes());
        r.write_raw(&cbor(&request(2, "kek.list", map(&[])))[..5]);
        r.stream.shutdown(Shutdown::Write).unwrap();
        match r.read() {
            RawRead::Frame(resp) => {
                assert_eq!(err_code(&resp), ErrorCode::Malformed, "{resp:?}");
                r.expect_closed();
            }
            RawRead::Closed => {}
        }
    }
    // Half a length prefix, then close.
    let mut r = env.raw();
    r.hello(1);
    r.write_raw(&[0, 0]);
    r.stream.shutdown(Shutdown::Write).unwrap();
    match r.read() {
        RawRead::Frame(resp) => {
            assert_eq!(err_code(&resp), ErrorCode::Malformed);
            r.expect_closed();
        }
        RawRead::Closed => {}
    }
    // A body cut off and the whole socket dropped (no half-close).
    let mut r = env.raw();
    r.write_raw(&[0, 0, 1, 0, 0xa3]);
    drop(r);
    env.assert_intact(&keys);
}

fn unknown_op_and_unknown_args(env: &mut TestEnv) {
    let keys = setup(env);
    let mut r = env.raw();
    r.hello(1);
    for (id, op) in [
        (2, "frobnicate"),
        (3, "KEK.LIST"),
        (4, ""),
        (5, "kek.list "),
        (6, "dek.delete"),
    ] {
        let resp = r.call(&request(id, op, map(&[])));
        assert_eq!(err_code(&resp), ErrorCode::UnknownOp, "{op:?}");
        assert_eq!(resp.id, Some(id));
    }
    let bad_args: Vec<(u64, &str, Value)> = vec![
        (10, "kek.list", map(&[("bogus", Value::Bool(true))])),
        (
            11,
            "kek.create",
            map(&[("label", text("l")), ("colour", text("red"))]),
        ),
        (
            12,
            "encrypt",
            map(&[
                ("dek", text(&keys.dek)),
                ("plaintext", Value::Bytes(vec![1])),
                ("extra", int(1)),
            ]),
        ),
        (13, "encrypt", map(&[("dek", text(&keys.dek))])),
        (
            14,
            "encrypt",
            map(&[("dek", text(&keys.dek)), ("plaintext", int(5))]),
        ),
        (15, "decrypt", map(&[("ciphertext", Value::Bytes(vec![1]))])),
        (16, "unlock", map(&[("pin", int(987_654_321))])),
        (17, "unlock", map(&[("pinn", text("secret-ish-value"))])),
        (
            18,
            "dek.create",
            map(&[("purpose", text("world-domination"))]),
        ),
        (19, "dek.create", map(&[("exportable", text("yes"))])),
        (20, "dek.export", map(&[])),
        (
            21,
            "hello",
            map(&[("version", int(1)), ("flavour", text("x"))]),
        ),
        (22, "lock", map(&[("now", Value::Bool(true))])),
    ];
    for (id, op, args) in &bad_args {
        let resp = r.call(&request(*id, op, args.clone()));
        assert_eq!(
            err_code(&resp),
            ErrorCode::InvalidArgs,
            "{op} {args:?}: {resp:?}"
        );
        assert_eq!(resp.id, Some(*id));
        let msg = &resp.err.as_ref().unwrap().message;
        assert!(
            !msg.contains("987654321") && !msg.contains("secret-ish-value"),
            "value echoed: {msg}"
        );
    }
    // Still usable, and nothing happened: still unlocked, nothing created.
    let resp = r.call(&request(30, "dek.list", map(&[])));
    let ok = resp.ok.expect("dek.list");
    let n = ok
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_text() == Some("keys"))
        .unwrap()
        .1
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 1);
    drop(r);
    env.assert_intact(&keys);
}

fn operations_before_hello_are_refused(env: &mut TestEnv) {
    let keys = setup(env);
    let mut r = env.raw();
    let ops: Vec<(u64, &str, Value)> = vec![
        (1, "kek.list", map(&[])),
        (
            2,
            "encrypt",
            map(&[
                ("dek", text(&keys.dek)),
                ("plaintext", Value::Bytes(vec![1])),
            ]),
        ),
        (3, "decrypt", map(&[("ciphertext", text(&keys.ciphertext))])),
        (4, "unlock", map(&[("pin", text("whatever"))])),
        (5, "lock", map(&[])),
        (6, "frobnicate", map(&[])),
    ];
    for (id, op, args) in &ops {
        let resp = r.call(&request(*id, op, args.clone()));
        assert_eq!(err_code(&resp), ErrorCode::HelloRequired, "{op}");
        assert_eq!(resp.id, Some(*id));
    }
    r.hello(7);
    let resp = r.call(&request(
        8,
        "decrypt",
        map(&[("ciphertext", text(&keys.ciphertext))]),
    ));
    assert!(
        resp.ok.is_some(),
        "the pre-hello `lock` must not have run: {resp:?}"
    );
    drop(r);
    env.assert_intact(&keys);
}

/// A `hello` the agent refuses (wrong protocol version, bad arguments) must not count as the
/// connection's hello: the spec says the agent refuses a client whose version it does not speak.
fn failed_hello_does_not_open_the_connection(env: &mut TestEnv) {
    let keys = setup(env);
    let mut r = env.raw();
    let resp = r.call(&request(1, "hello", map(&[("version", int(99))])));
    assert_eq!(err_code(&resp), ErrorCode::UnsupportedVersion);
    assert_eq!(resp.id, Some(1));
    let resp = r.call(&request(2, "kek.list", map(&[])));
    assert_eq!(
        err_code(&resp),
        ErrorCode::HelloRequired,
        "served after a refused hello: {resp:?}"
    );
    let resp = r.call(&request(3, "hello", map(&[("version", text("1"))])));
    assert_eq!(err_code(&resp), ErrorCode::InvalidArgs);
    let resp = r.call(&request(4, "kek.list", map(&[])));
    assert_eq!(
        err_code(&resp),
        ErrorCode::HelloRequired,
        "served after an invalid hello: {resp:?}"
    );
    // A good hello then opens it.
    r.hello(5);
    let resp = r.call(&request(6, "kek.list", map(&[])));
    assert!(resp.ok.is_some());
    drop(r);
    env.assert_intact(&keys);
}

fn pipelined_raw_requests_are_answered_by_id(env: &mut TestEnv) {
    let keys = setup(env);
    let mut r = env.raw();
    r.hello(1);
    // 200 requests in one write (more than the agent's 64 in flight per connection), then read.
    let n = 200u64;
    let mut ghosts = HashMap::new();
    let mut all = Vec::new();
    for id in 100..100 + n {
        let v = if id % 2 == 0 {
            let g = uuid::Uuid::new_v4().to_string();
            ghosts.insert(id, g.clone());
            request(id, "dek.export", map(&[("id", text(&g))]))
        } else {
            let pt = format!("pipelined #{id}");
            request(
                id,
                "encrypt",
                map(&[
                    ("dek", text(&keys.dek)),
                    ("plaintext", Value::Bytes(pt.into_bytes())),
                ]),
            )
        };
        let body = cbor(&v);
        all.extend_from_slice(&(body.len() as u32).to_be_bytes());
        all.extend_from_slice(&body);
    }
    r.write_raw(&all);
    let mut answers = HashMap::new();
    for _ in 0..n {
        let resp = r.recv();
        let id = resp.id.expect("every response names its request");
        assert!(
            answers.insert(id, resp).is_none(),
            "two answers for id {id}"
        );
    }
    let c = env.client();
    for id in 100..100 + n {
        let resp = answers
            .remove(&id)
            .unwrap_or_else(|| panic!("no answer for id {id}"));
        if let Some(g) = ghosts.get(&id) {
            let e = resp.err.expect("not_found");
            assert_eq!(e.code, ErrorCode::NotFound);
            assert!(
                e.message.contains(g.as_str()),
                "answer for {id} names another id: {}",
                e.message
            );
        } else {
            let ok = resp
                .ok
                .unwrap_or_else(|| panic!("encrypt #{id} failed: {:?}", resp.err));
            let ct = ok
                .as_map()
                .unwrap()
                .iter()
                .find(|(k, _)| k.as_text() == Some("ciphertext"))
                .unwrap()
                .1
                .as_text()
                .unwrap()
                .to_string();
            let pt = c.run(|c| c.decrypt(&ct, None)).unwrap();
            assert_eq!(
                pt.expose(),
                format!("pipelined #{id}").as_bytes(),
                "answer for {id} is another request's"
            );
        }
    }
    drop(r);
    drop(c);
    env.assert_intact(&keys);
}

/// Every operation the agent serves refuses an unknown argument field (naming it), arguments
/// that are not a map, and mistyped arguments, with typed errors; the agent goes on serving and
/// the keystore is intact.
fn every_op_refuses_unknown_fields_and_non_map_args(env: &mut TestEnv) {
    use keyward_tests::keyward_proto::ops::Op;
    let keys = setup(env);
    let mut r = env.raw();
    r.hello(1);
    let mut id = 100;
    for op in Op::ALL {
        id += 1;
        let resp = r.call(&request(
            id,
            op.name(),
            map(&[("zz_unknown", Value::Bool(true))]),
        ));
        assert_eq!(
            err_code(&resp),
            ErrorCode::InvalidArgs,
            "{}: {resp:?}",
            op.name()
        );
        let msg = &resp.err.as_ref().unwrap().message;
        if *op != Op::Hello {
            // Ops whose required fields are missing may say so first; the rest name the field.
            assert!(
                msg.contains("zz_unknown") || msg.contains("missing field"),
                "{}: {msg}",
                op.name()
            );
        }
        id += 1;
        let resp = r.call(&request(id, op.name(), Value::Array(vec![int(1)])));
        assert_eq!(
            err_code(&resp),
            ErrorCode::InvalidRequest,
            "{}: {resp:?}",
            op.name()
        );
        assert_eq!(resp.id, Some(id));
        // Every known field name with a value of the wrong type (a map where scalars go).
        id += 1;
        let wrong = map(&[
            ("id", map(&[])),
            ("dek", map(&[])),
            ("kek", map(&[])),
            ("key", map(&[])),
            ("name", map(&[])),
            ("pin", map(&[])),
            ("version", map(&[])),
        ]);
        let resp = r.call(&request(id, op.name(), wrong));
        assert_eq!(
            err_code(&resp),
            ErrorCode::InvalidArgs,
            "{}: {resp:?}",
            op.name()
        );
    }
    drop(r);
    env.assert_intact(&keys);
}
