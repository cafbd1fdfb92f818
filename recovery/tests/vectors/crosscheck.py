#!/usr/bin/python3
"""Independent checks of keyward-recovery, run by recovery/tests/python_check.rs with Debian's
/usr/bin/python3 (packages python3-mnemonic and python3-cryptography, which softhsm-setup.sh
--install-only installs).

  crosscheck.py words    < [{"entropy": hex, "words": "..."}]   python-mnemonic checks each phrase
  crosscheck.py vectors  < derive.json                          recomputes every published vector
  crosscheck.py dids     < [{"words": "...", "did_key": ...}]     words -> entropy -> did:key, independently
                                                                 (tests/tests/e2e/recovery.rs: `keyward recovery create`)

Prints "ok N" and exits 0, or prints what differs and exits 1.
"""
import json
import sys

from mnemonic import Mnemonic

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58(data):
    x = int.from_bytes(data, "big")
    out = ""
    while x:
        x, r = divmod(x, 58)
        out = B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def check_words(items):
    m = Mnemonic("english")
    for it in items:
        words, entropy = it["words"], bytes.fromhex(it["entropy"])
        if not m.check(words):
            sys.exit(f"python-mnemonic rejects the phrase for entropy {it['entropy']}")
        if bytes(m.to_entropy(words)) != entropy:
            sys.exit(f"python-mnemonic reads another entropy for {it['entropy']}")
        if m.to_mnemonic(entropy) != words:
            sys.exit(f"python-mnemonic encodes {it['entropy']} differently")
    return len(items)


def check_vectors(doc):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    salt, prefix = doc["salt"].encode(), doc["info_prefix"].encode()
    assert salt == b"keyward/recovery/v1" and prefix == b"keyward/recovery/v1/p256-scalar"
    check_words(doc["vectors"])
    for v in doc["vectors"]:
        entropy = bytes.fromhex(v["entropy"])
        counter = 0
        while True:
            okm = HKDF(hashes.SHA256(), 32, salt, prefix + bytes([counter])).derive(entropy)
            d = int.from_bytes(okm, "big")
            if 0 < d < N:
                break
            counter += 1
        pub = ec.derive_private_key(d, ec.SECP256R1()).public_key()
        enc = serialization.Encoding.X962
        comp = pub.public_bytes(enc, serialization.PublicFormat.CompressedPoint)
        unc = pub.public_bytes(enc, serialization.PublicFormat.UncompressedPoint)
        got = {
            "counter": counter,
            "scalar": okm.hex(),
            "public_key_sec1_compressed": comp.hex(),
            "public_key_sec1_uncompressed": unc.hex(),
            "did_key": "did:key:z" + b58(bytes([0x80, 0x24]) + comp),
        }
        for k, val in got.items():
            if v[k] != val:
                sys.exit(f"vector {v['entropy']}: {k} is {v[k]}, independently {val}")
    return len(doc["vectors"])


def check_dids(items):
    """Each phrase's did:key recomputed from the words alone (python-mnemonic for the entropy,
    python-cryptography for the frozen v1 derivation)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    m = Mnemonic("english")
    for it in items:
        if not m.check(it["words"]):
            sys.exit("python-mnemonic rejects a phrase")
        entropy = bytes(m.to_entropy(it["words"]))
        counter = 0
        while True:
            okm = HKDF(
                hashes.SHA256(), 32, b"keyward/recovery/v1",
                b"keyward/recovery/v1/p256-scalar" + bytes([counter]),
            ).derive(entropy)
            d = int.from_bytes(okm, "big")
            if 0 < d < N:
                break
            counter += 1
        pub = ec.derive_private_key(d, ec.SECP256R1()).public_key()
        comp = pub.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
        did = "did:key:z" + b58(bytes([0x80, 0x24]) + comp)
        if did != it["did_key"]:
            sys.exit(f"the words give {did}, not {it['did_key']}")
    return len(items)


if __name__ == "__main__":
    data = json.load(sys.stdin)
    modes = {"words": check_words, "vectors": check_vectors, "dids": check_dids}
    print(f"ok {modes[sys.argv[1]](data)}")
