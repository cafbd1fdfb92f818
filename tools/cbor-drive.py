#!/usr/bin/env python3
"""cbor-drive.py SOCKET OP N KEY: send N sequential requests of one op over the agent socket.

A deliberately small client for tools/instructions-per-request.sh: a hand-written CBOR encoder
for the few request shapes it sends (hello, encrypt of 64 B, dek.export, kek.list, and
sign.digest of a 32-byte digest, which is what the PKCS#11 module sends for one C_Sign). KEY is
the DEK's id, or for sign.digest the keypair's. It checks
the first answer, then waits for a line on stdin before the measured
loop, so the measurement starts after connection set-up. Not a client library: replies are read
by their frame length and not decoded.
"""
import socket
import struct
import sys


def enc(v):
    def head(mt, n):
        if n < 24:
            return bytes([mt << 5 | n])
        if n < 256:
            return bytes([mt << 5 | 24, n])
        if n < 65536:
            return bytes([mt << 5 | 25]) + struct.pack(">H", n)
        return bytes([mt << 5 | 26]) + struct.pack(">I", n)

    if isinstance(v, bool):
        return b"\xf5" if v else b"\xf4"
    if isinstance(v, int):
        return head(0, v)
    if isinstance(v, bytes):
        return head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        return head(3, len(b)) + b
    if isinstance(v, dict):
        return head(5, len(v)) + b"".join(enc(k) + enc(x) for k, x in v.items())
    raise TypeError(type(v))


def frame(i, op, args):
    body = enc({"id": i, "op": op, "args": args})
    return struct.pack(">I", len(body)) + body


def op_args(op, dek):
    return {
        "encrypt": {"dek": dek, "plaintext": b"x" * 64},
        "dek.export": {"id": dek},
        "sign.digest": {"key": dek, "digest": bytes(range(32))},
    }.get(op, {})


def main():
    path, op, n, dek = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if len(sys.argv) > 5:
        # `cbor-drive.py SOCKET OP N KEY DIR`: only write the hello and the request, framed, to
        # DIR/hello.bin and DIR/req.bin, for a faster client (tools/cpu-per-request.sh DRIVER=c).
        open(f"{sys.argv[5]}/hello.bin", "wb").write(frame(1, "hello", {"version": 1}))
        open(f"{sys.argv[5]}/req.bin", "wb").write(frame(2, op, op_args(op, dek)))
        return
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)

    def recvn(k):
        b = b""
        while len(b) < k:
            c = s.recv(k - len(b))
            if not c:
                sys.exit("cbor-drive: the agent closed the connection")
            b += c
        return b

    def call(i, op, args):
        body = enc({"id": i, "op": op, "args": args})
        s.sendall(struct.pack(">I", len(body)) + body)
        return recvn(struct.unpack(">I", recvn(4))[0])

    call(1, "hello", {"version": 1})
    args = op_args(op, dek)
    first = call(2, op, args)
    if b"err" in first[:12]:
        sys.exit(f"cbor-drive: {op} failed: {first[:200]!r}")
    sys.stdin.readline()
    for i in range(n):
        call(3 + i, op, args)


if __name__ == "__main__":
    main()
