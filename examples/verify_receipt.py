#!/usr/bin/env python3
"""Verify a pim receipt offline, independently of pim, with the standard library only.

    pim receipt 12 --output receipt.json        # on the pim host
    pim audit key > pim.vkey                    # once, kept somewhere you trust
    python3 examples/verify_receipt.py receipt.json pim.vkey

Checks, and exits 0 only if all hold (1 naming the first that fails):
- the checkpoint is a C2SP signed note signed by the key in pim.vkey (Ed25519, RFC 8032,
  implemented below: hashlib has SHA-512 but no Ed25519);
- every event (and the policy.apply event in force) hashes to its `hash` from its
  `prev_hash` and fields (pim's chain rule), and its leaf SHA-256(0x00 || canonical fields)
  is included in the checkpoint's Merkle tree by its RFC 9162 inclusion proof;
- every event is of the receipt's request, in order, after the policy event, whose details
  name the receipt's policy_sha256.
"""
import base64
import hashlib
import json
import sys

# ---------------------------------------------------------------- Ed25519 verification (RFC 8032)
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _recover_x(y, sign):
    if y >= P:
        return None
    xx = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(xx, (P + 3) // 8, P)
    if (x * x - xx) % P:
        x = x * SQRT_M1 % P
    if (x * x - xx) % P:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return x


def _point(x, y):
    return (x, y, 1, x * y % P)


def _add(a, b):
    e1 = (a[1] - a[0]) * (b[1] - b[0]) % P
    e2 = (a[1] + a[0]) * (b[1] + b[0]) % P
    c = 2 * a[3] * b[3] * D % P
    d = 2 * a[2] * b[2] % P
    e, f, g, h = e2 - e1, d - c, d + c, e2 + e1
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(k, pt):
    acc = (0, 1, 1, 0)
    while k:
        if k & 1:
            acc = _add(acc, pt)
        pt = _add(pt, pt)
        k >>= 1
    return acc


def _equal(a, b):
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def _decode(raw):
    if len(raw) != 32:
        return None
    n = int.from_bytes(raw, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    x = _recover_x(y, sign)
    return None if x is None else _point(x, y)


BASE = _point(_recover_x(4 * pow(5, P - 2, P) % P, 0), 4 * pow(5, P - 2, P) % P)


def ed25519_verify(public, message, signature):
    if len(signature) != 64:
        return False
    a, r = _decode(public), _decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    return _equal(_mul(s, BASE), _add(r, _mul(h, a)))


# ---------------------------------------------------------------- signed note, Merkle tree, chain
def fail(why):
    print(f"receipt does not verify: {why}")
    sys.exit(1)


def open_checkpoint(note, vkey):
    name, key_id, key = vkey.strip().split("+", 2)
    key = base64.b64decode(key)
    if len(key) != 33 or key[0] != 1:
        fail("the verifier key is not an Ed25519 note key")
    public = key[1:]
    expect_id = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
    if expect_id.hex() != key_id.lower():
        fail("the verifier key's id does not match its key")
    body, sep, sigs = note.rpartition("\n\n")
    if not sep:
        fail("the checkpoint is not a signed note")
    body += "\n"
    ok = False
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            continue
        signer, _, sig = line[2:].rpartition(" ")
        sig = base64.b64decode(sig)
        if signer != name or sig[:4] != expect_id:
            continue
        if not ed25519_verify(public, body.encode(), sig[4:]):
            fail("the checkpoint's signature does not match it")
        ok = True
    if not ok:
        fail(f"the checkpoint carries no signature by {name}")
    lines = body.splitlines()
    if len(lines) < 3 or lines[0] != name:
        fail("the checkpoint is of another log")
    return int(lines[1]), base64.b64decode(lines[2])


def leaf(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def included(leaf_hash, index, size, proof, root):
    """RFC 9162, 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def check_event(e, size, root):
    fields = e["fields"]
    if len(fields) != 13 or fields[0] != str(e["index"] + 1):
        fail("an event is malformed")
    canonical = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    if hashlib.sha256(e["prev_hash"].encode() + canonical).hexdigest() != e["hash"]:
        fail(f"event {fields[0]} does not match its hash")
    proof = [base64.b64decode(p) for p in e["proof"]]
    if not included(leaf(canonical), e["index"], size, proof, root):
        fail(f"event {fields[0]} is not in the checkpoint's tree")


def main(receipt_path, key_path):
    with open(receipt_path, encoding="utf-8") as f:
        r = json.load(f)
    with open(key_path, encoding="utf-8") as f:
        vkey = f.read()
    expected = {"format", "request", "policy_sha256", "checkpoint", "key", "policy_event", "events"}
    if set(r) != expected or r["format"] != "pim-receipt/1":
        fail("it is not a pim receipt")
    if r["key"].strip() != vkey.strip():
        fail("it names another key than the one given")
    size, root = open_checkpoint(r["checkpoint"], vkey)
    policy = r["policy_event"]
    check_event(policy, size, root)
    if policy["fields"][3] != "policy.apply" or \
            json.loads(policy["fields"][12]).get("sha256") != r["policy_sha256"]:
        fail("its policy event is not the policy it names")
    last = policy["index"]
    if not r["events"]:
        fail("it holds no event")
    for e in r["events"]:
        check_event(e, size, root)
        if e["fields"][7] != str(r["request"]) or e["index"] <= last:
            fail(f"event {e['fields'][0]} is of another request, or out of order")
        last = e["index"]
    actions = ", ".join(e["fields"][3] for e in r["events"])
    print(f"receipt verifies: request {r['request']} ({actions}), "
          f"in the signed checkpoint of {size} events; policy sha256 {r['policy_sha256']}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
