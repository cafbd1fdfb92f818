//! Test helper: a stand-in for `keywardd`, or a bare client, run as another user by the e2e
//! tests (a process is the only way to hold another uid while the test itself stays root).
//!
//! - `keyward-fake-agent serve <socket> <record>`: bind `<socket>`, print `ready`, and answer
//!   every request on every connection with success, as a malicious agent of another user would
//!   (`hello` gets a plausible result; anything else `{locked: false}`). Every byte received is
//!   appended to `<record>`, so a test can check that no PIN ever reached it.
//! - `keyward-fake-agent hello <socket>`: connect, send `hello`, print the answer's error code
//!   (or `ok`), with no client-side checks at all.
#![forbid(unsafe_code)]

use keyward_proto::ops::{HelloArgs, HelloResult, LockState, RootKind};
use keyward_proto::{frame, Request, Response, MAX_FRAME};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

fn serve(socket: &str, record: &str) -> Result<(), String> {
    let listener = UnixListener::bind(socket).map_err(|e| format!("bind {socket}: {e}"))?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for conn in listener.incoming() {
        let mut conn = conn.map_err(|e| e.to_string())?;
        let record = record.to_string();
        std::thread::spawn(move || {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
            while let Ok(Some(body)) = frame::read_blocking(&mut conn, MAX_FRAME) {
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&record)
                {
                    let _ = f.write_all(&body);
                }
                let Ok(req) = Request::from_cbor(&body) else {
                    break;
                };
                let resp = if req.op == "hello" {
                    Response::ok(
                        req.id,
                        &HelloResult {
                            protocol: keyward_proto::PROTOCOL_VERSION,
                            agent_version: "0.1.0".into(),
                            root_kind: RootKind::Pkcs11,
                            token: "keyward".into(),
                            initialized: true,
                            locked: true,
                            ops: vec!["hello".into(), "unlock".into()],
                            ssh_socket: None,
                            config: None,
                            keystore: None,
                            pin_attempts_left: None,
                            keystore_check: None,
                            audit_log: None,
                        },
                    )
                } else {
                    Response::ok(req.id, &LockState { locked: false })
                };
                let Ok(bytes) = resp.and_then(|r| r.to_cbor()) else {
                    break;
                };
                if frame::write_blocking(&mut conn, &bytes, MAX_FRAME).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

fn hello(socket: &str) -> Result<(), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect {socket}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let req = Request::new(1, "hello", &HelloArgs::current()).map_err(|e| e.to_string())?;
    let bytes = req.to_cbor().map_err(|e| e.to_string())?;
    // The agent may refuse before reading: a failed write is not the answer, the frame is.
    let _ = frame::write_blocking(&mut s, &bytes, MAX_FRAME);
    match frame::read_blocking(&mut s, MAX_FRAME) {
        Ok(Some(b)) => {
            let r = Response::from_cbor(&b).map_err(|e| e.to_string())?;
            match r.err {
                Some(e) => println!("{}", e.code),
                None => println!("ok"),
            }
            Ok(())
        }
        Ok(None) => Err("closed without an answer".into()),
        Err(e) => Err(format!("reading the answer: {e}")),
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", socket, record] => serve(socket, record),
        ["hello", socket] => hello(socket),
        _ => Err("usage: keyward-fake-agent serve <socket> <record> | hello <socket>".into()),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward-fake-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
