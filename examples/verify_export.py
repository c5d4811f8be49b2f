#!/usr/bin/env python3
"""Recompute pim's audit hash chain from a JSONL export, independently of pim.

    pim audit export --format jsonl > audit.jsonl
    python3 examples/verify_export.py audit.jsonl

hash = hex(SHA-256(prev_hash || canonical)), where prev_hash is the previous event's hash in
hex (64 zeros for event 1) and canonical is the compact JSON array of the event's thirteen
fields as strings, absent values as "": seq, time, actor, action, principal, role, scope,
request, justification, ticket, expires, result, details. Exit 0 and the head hash, or exit 1
naming the first bad event. An export filtered with --since and the like starts mid-chain:
its first prev_hash is taken as given.
"""
import hashlib
import json
import sys

FIELDS = ["seq", "time", "actor", "action", "principal", "role", "scope", "request",
          "justification", "ticket", "expires", "result", "details"]


def text(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def main(path):
    prev = None
    count = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            event = json.loads(line)
            if prev is not None and event["prev_hash"] != prev:
                print(f"event {event['seq']}: prev_hash does not chain", file=sys.stderr)
                return 1
            canonical = json.dumps([text(event[k]) for k in FIELDS], separators=(",", ":"),
                                   ensure_ascii=False).encode("utf-8")
            digest = hashlib.sha256(event["prev_hash"].encode("ascii") + canonical).hexdigest()
            if digest != event["hash"]:
                print(f"event {event['seq']}: contents do not match its hash", file=sys.stderr)
                return 1
            prev = event["hash"]
            count += 1
    print(f"{count} events chain; head {prev}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
