//! A raw-socket client written in Python: a program other than the CLI and the test binary, so
//! tests can check that the agent tells clients apart by executable (policy, audit).

use crate::env::TestEnv;
use keyward_proto::Response;
use std::process::Command;

/// Says hello, sends `op` with `{"id": key}` and prints the response frame in hex.
const PY_CLIENT: &str = r#"
import socket, struct, sys
def enc(v):
    def head(mt, n):
        if n < 24: return bytes([mt << 5 | n])
        if n < 256: return bytes([mt << 5 | 24, n])
        return bytes([mt << 5 | 25]) + struct.pack(">H", n)
    if isinstance(v, int): return head(0, v)
    if isinstance(v, str):
        b = v.encode(); return head(3, len(b)) + b
    if isinstance(v, dict):
        return head(5, len(v)) + b"".join(enc(k) + enc(x) for k, x in v.items())
    raise TypeError(type(v))
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
def recvn(k):
    b = b""
    while len(b) < k:
        c = s.recv(k - len(b))
        if not c: sys.exit("closed")
        b += c
    return b
def call(i, op, args):
    body = enc({"id": i, "op": op, "args": args})
    s.sendall(struct.pack(">I", len(body)) + body)
    return recvn(struct.unpack(">I", recvn(4))[0])
call(1, "hello", {"version": 1})
print(call(2, sys.argv[2], {"id": sys.argv[3]}).hex())
"#;

/// Run `op` with `{"id": key}` from a Python process; its response.
pub fn python_call(env: &TestEnv, op: &str, key: &str) -> Response {
    let script = env.dir().join("client.py");
    std::fs::write(&script, PY_CLIENT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(env.socket_path())
        .args([op, key])
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8(out.stdout).unwrap();
    let hex = hex.trim();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    Response::from_cbor(&bytes).expect("a response")
}
