//! Request and argument decoding: `Request::from_cbor`, then the arguments as each operation's
//! typed struct, as the agent's dispatcher does.
//!
//! The input is one frame body (CBOR). The op name decides which argument struct is tried, as in
//! the agent; an unknown op tries every struct, so each struct's decoder is reached from any
//! seed. The structs come from the protocol's op table itself (`Op::visit_args`), so a new
//! operation is fuzzed without a change here.
//!
//! Invariants checked (a violation is a crash):
//! - a parsed request re-encodes and parses back to the same id, op and number of args;
//! - arguments that decode re-encode (`Request::new`) and decode again to a struct that encodes
//!   the same;
//! - an `invalid_args` message never quotes a value that was sent (PINs could be in it); see
//!   `no_values_quoted` for which values are checked.
#![no_main]

use ciborium::Value;
use keyward_proto::ops::{ArgsVisitor, Op};
use keyward_proto::{ErrorCode, Request};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// Decode the request's args as `T`; if they decode, check the round trip.
fn args<T>(req: &Request)
where
    T: DeserializeOwned + Serialize + Debug,
{
    match req.args::<T>() {
        Ok(a) => {
            let again = Request::new(req.id, &req.op, &a).expect("decoded args re-encode");
            let bytes = again.to_cbor().expect("a request re-encodes");
            let back = Request::from_cbor(&bytes).expect("a re-encoded request parses");
            let b: T = back.args().expect("re-encoded args decode");
            let twice = Request::new(req.id, &req.op, &b).expect("decoded args re-encode");
            assert_eq!(again.args, twice.args, "args round trip: {a:?} / {b:?}");
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::InvalidArgs);
            // A parsed request's args are one well-formed map; the generic decoder reads them
            // unless they hold a bignum it cannot represent (over 128 bits in 16 bytes), which
            // the typed decoders refuse as well.
            let Ok(args) = req.args.to_value() else {
                return;
            };
            let mut echoed = vec![req.op.as_str()];
            if let Value::Map(m) = &args {
                echoed.extend(m.iter().filter_map(|(k, _)| k.as_text()));
            }
            no_values_quoted(&args, &echoed, &e.message);
        }
    }
}

/// Values sent in the args must not be echoed in the error message. Only values that cannot be
/// part of a message's fixed text are checked: text containing `SECRET` (the seeds put it in
/// PINs, labels and ids, in right and wrong places) and integers of 7+ digits (PINs sent as
/// numbers). Map keys are skipped: an unknown field's name is echoed on purpose.
fn no_values_quoted(v: &Value, echoed: &[&str], message: &str) {
    match v {
        // `echoed`: the op and the top-level keys, which the message may name.
        Value::Text(t)
            if t.contains("SECRET") && !echoed.iter().any(|e| e.contains(t.as_str())) =>
        {
            assert!(
                !message.contains(t.as_str()),
                "message {message:?} quotes a value"
            );
        }
        Value::Integer(i) => {
            let n = i128::from(*i);
            let digits = n.unsigned_abs().to_string();
            if digits.len() >= 7 && !echoed.iter().any(|e| e.contains(&digits)) {
                assert!(!message.contains(&digits), "message {message:?} quotes {n}");
            }
        }
        Value::Map(m) => m
            .iter()
            .for_each(|(_, v)| no_values_quoted(v, echoed, message)),
        Value::Array(a) => a.iter().for_each(|v| no_values_quoted(v, echoed, message)),
        Value::Tag(_, v) => no_values_quoted(v, echoed, message),
        _ => {}
    }
}

/// Runs [`args`] with an operation's argument type.
struct Check<'a>(&'a Request);

impl ArgsVisitor for Check<'_> {
    type Out = ();
    fn visit<A>(self, _op: Op)
    where
        A: DeserializeOwned + Serialize + Debug,
    {
        args::<A>(self.0)
    }
}

fuzz_target!(|data: &[u8]| {
    let req = match Request::from_cbor(data) {
        Ok(r) => r,
        Err((_, e)) => {
            assert!(matches!(
                e.code,
                ErrorCode::Malformed | ErrorCode::InvalidRequest
            ));
            return;
        }
    };
    // The args stay bytes in the agent (decoded once, by the op's typed struct below).
    assert_eq!(
        req.args.bytes().first().map(|b| b >> 5),
        Some(5),
        "args are always a map"
    );
    // Re-encoding keeps id, op and the args' bytes as sent (`Request::to_cbor` copies them).
    let bytes = req.to_cbor().expect("a parsed request re-encodes");
    let back = Request::from_cbor(&bytes).expect("a re-encoded request parses");
    assert_eq!((back.id, &back.op), (req.id, &req.op));
    assert_eq!(back.args, req.args, "args keep their bytes");

    match Op::from_name(&req.op) {
        Some(op) => op.visit_args(Check(&req)),
        None => Op::ALL.iter().for_each(|op| op.visit_args(Check(&req))),
    }
});
