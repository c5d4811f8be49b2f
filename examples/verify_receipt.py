#!/usr/bin/env python3
"""Verify a pim receipt offline, independently of pim, with the standard library only.

    pim receipt 12 --output receipt.json        # on the pim host
    pim audit key > pim.vkey                    # once, kept somewhere you trust
    python3 examples/verify_receipt.py receipt.json pim.vkey

Checks, and exits 0 only if all hold (1 naming the first that fails, for any input):
- the checkpoint is a C2SP signed note signed by the key in pim.vkey (Ed25519, RFC 8032,
  implemented below: hashlib has SHA-512 but no Ed25519);
- every event hashes to its `hash` from its `prev_hash` and fields (pim's chain rule), and its
  leaf SHA-256(0x00 || canonical fields) is included in the checkpoint's Merkle tree by its
  RFC 9162 inclusion proof;
- the statement, a signed note by the same key, names exactly these events (none left out)
  with each one's chain hash (format 3 on; format 2 receipts of older pims name the events
  only, so their prev_hash and hash are not signed for), the request, the requests to extend
  it (format 4; those of format 2 and 3 hold the request's own events only), the policy in
  force (its SHA-256) and the checkpoint's size; the first event is the request itself, all
  are of it or of an extension of it (whose own request event says `extends` it), in order.
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


def b64(text):
    """Canonical base64 only (as pim's verifier takes it): unused low bits set, the same
    bytes in another spelling, are refused."""
    raw = base64.b64decode(text, validate=True)
    if base64.b64encode(raw).decode() != text:
        raise ValueError("not canonical base64")
    return raw


# The blanks both verifiers trim off a key (str.strip() would take more than pim's does).
BLANKS = " \t\r\n"


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def open_note(note, vkey):
    """The text of a signed note by vkey (with its final newline), and the key's name."""
    name, key_id, key = vkey.strip(BLANKS).split("+", 2)
    key = b64(key)
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
    # Lines end at a newline alone (str.splitlines() ends them at U+2028 and others too).
    for line in sigs.split("\n"):
        line = line.removesuffix("\r")
        if not line.startswith("\u2014 "):
            continue
        signer, _, sig = line[2:].rpartition(" ")
        # Other keys' signatures are not ours to read; one by this key's name must be sound.
        if signer != name:
            continue
        try:
            sig = b64(sig)
        except ValueError:
            fail(f"a signature by {name} is malformed")
        if sig[:4] != expect_id:
            continue
        if len(sig) != 68:
            fail(f"a signature by {name} is malformed")
        if not ed25519_verify(public, body.encode(), sig[4:]):
            fail("a note's signature does not match it")
        ok = True
    if not ok:
        fail(f"a note carries no signature by {name}")
    return body, name


def open_checkpoint(note, vkey):
    body, name = open_note(note, vkey)
    lines = body.splitlines()
    if len(lines) < 3 or lines[0] != name or not lines[1].isdigit():
        fail("the checkpoint is of another log")
    return int(lines[1]), b64(lines[2]), name


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
    if not isinstance(fields, list) or len(fields) != 13 or \
            not all(isinstance(f, str) for f in fields) or \
            not isinstance(e["index"], int) or fields[0] != str(e["index"] + 1):
        fail("an event is malformed")
    canonical = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    if hashlib.sha256(e["prev_hash"].encode() + canonical).hexdigest() != e["hash"]:
        fail(f"event {fields[0]} does not match its hash")
    proof = [b64(p) for p in e["proof"]]
    if not included(leaf(canonical), e["index"], size, proof, root):
        fail(f"event {fields[0]} is not in the checkpoint's tree")


def unique_keys(pairs):
    """A JSON object whose keys are each given once: readers differ on which of two values
    they show (json takes the last), and pim's own verifier refuses a key given twice."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        fail("it gives a key twice")
    return dict(pairs)


def main(receipt_path, key_path):
    with open(receipt_path, encoding="utf-8") as f:
        r = json.load(f, object_pairs_hook=unique_keys)
    with open(key_path, encoding="utf-8") as f:
        vkey = f.read()
    expected = {"format", "request", "policy_sha256", "checkpoint", "key", "statement", "events"}
    if not isinstance(r, dict) or r.get("format") not in ("pim-receipt/4", "pim-receipt/3", "pim-receipt/2"):
        fail("it is not a pim receipt")
    current = r["format"] == "pim-receipt/4"
    if current:
        expected.add("extensions")
    if set(r) != expected or not is_int(r["request"]) or \
            not all(isinstance(r[k], str) for k in ("policy_sha256", "checkpoint", "key", "statement")):
        fail("it is not a pim receipt")
    extensions = r.get("extensions", [])
    if not isinstance(extensions, list) or not all(is_int(x) for x in extensions):
        fail("it is not a pim receipt")
    if r["key"].strip(BLANKS) != vkey.strip(BLANKS):
        fail("it names another key than the one given")
    size, root, name = open_checkpoint(r["checkpoint"], vkey)
    events = r["events"]
    if not isinstance(events, list) or not events:
        fail("it holds no event")
    for e in events:
        if not isinstance(e, dict) or set(e) != {"fields", "prev_hash", "hash", "index", "proof"}:
            fail("an event is malformed")
        check_event(e, size, root)
    statement, _ = open_note(r["statement"], vkey)
    # Format 3 on signs each event's chain hash too (the tree proves its fields only); format
    # 2, of older pims, names the events only. Format 4 names the request's extensions.
    if r["format"] == "pim-receipt/2":
        named = ",".join(e["fields"][0] for e in events)
    else:
        named = ",".join(f"{e['fields'][0]}:{e['hash']}" for e in events)
    extended = f"extensions {','.join(str(x) for x in extensions)}\n" if current else ""
    expected = (f"pim receipt of {name}\nrequest {r['request']}\n{extended}"
                f"events {named}\n"
                f"policy {r['policy_sha256']}\ntree {size}\n")
    if statement != expected:
        fail("its events, request, policy or size are not those its signed statement names")
    request = str(r["request"])

    def details(e):
        try:
            d = json.loads(e["fields"][12])
        except ValueError:
            return {}
        return d if isinstance(d, dict) else {}

    def extends(e):
        """Whether the event's `extends` detail names this request."""
        x = details(e).get("extends")
        return is_int(x) and x == r["request"]

    # Of the request itself: from format 4 on, never an extension's (whose events are in the
    # receipt of the activation it extends).
    if events[0]["fields"][3] != "activation.request" or events[0]["fields"][7] != request or \
            (current and "extends" in details(events[0])):
        fail("it does not begin with the request")
    ours = {request} | {str(x) for x in extensions}
    last = -1
    for e in events:
        if e["fields"][7] not in ours or e["index"] <= last:
            fail(f"event {e['fields'][0]} is of another request, or out of order")
        last = e["index"]
        # Every extension applied in it is of this request.
        if current and e["fields"][3] == "activation.extend" and not extends(e):
            fail(f"event {e['fields'][0]} extends another request than {request}")
    # Each extension named is one: its own request event says it extends this request.
    for i, x in enumerate(extensions):
        def asks(e):
            return e["fields"][7] == str(x) and e["fields"][3] == "activation.request" and extends(e)
        if str(x) == request or x in extensions[:i] or not any(asks(e) for e in events):
            fail(f"request {x} is not shown to be an extension of request {request}")
    actions = ", ".join(e["fields"][3] for e in events)
    also = f" and its extension(s) {', '.join(str(x) for x in extensions)}" if extensions else ""
    print(f"receipt verifies: request {request}{also} ({actions}), all their events, "
          f"in the signed checkpoint of {size} events; policy sha256 {r['policy_sha256']}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        main(sys.argv[1], sys.argv[2])
    except SystemExit:
        raise
    except Exception as e:  # anything malformed fails, cleanly, and is never accepted
        fail(f"it is malformed ({type(e).__name__})")
