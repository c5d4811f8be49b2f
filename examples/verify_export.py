#!/usr/bin/env python3
"""Recompute pim's audit hash chain from an export (JSONL or CSV), independently of pim.

    pim audit export --format jsonl > audit.jsonl
    pim audit verify --json                      # the head, from the live log (or a checkpoint's host)
    python3 examples/verify_export.py audit.jsonl --head HEAD
    pim audit export --output audit.csv          # the auditor's spreadsheet-safe CSV
    python3 examples/verify_export.py audit.csv --head HEAD

A file whose first byte is `{` is read as JSONL, any other as the CSV export: RFC 4180 quoting, the
header `seq,...,details,prev_hash,hash`, and one leading `'` dropped from each cell that has one
(the export puts it before any cell a spreadsheet would take for a formula, and before any that
starts with `'` itself), which gives every value back as it was hashed.

hash = hex(SHA-256(prev_hash || canonical)), where prev_hash is the previous event's hash in
hex (64 zeros for event 1) and canonical is the compact JSON array of the event's thirteen
fields as strings, absent values as "": seq, time, actor, action, principal, role, scope,
request, justification, ticket, expires, result, details. Exit 0 and the head hash, or exit 1
naming the first bad event.

A chain proves only that its events follow each other: an export rewritten from some event on,
every hash after it computed again, chains too, and so does one with its first or last events
cut off. So, with --head HEAD (the head `pim audit verify` gives on the pim host, or one you
wrote down earlier), the export must end at that head and start at the log's first event
(seq 1, prev_hash all zeros); without it, the script says what it cannot prove. An export
filtered with --since and the like starts mid-chain: its first prev_hash is taken as given,
and --head then needs --mid-chain.
"""
import csv
import hashlib
import json
import sys
import unicodedata

FIELDS = ["seq", "time", "actor", "action", "principal", "role", "scope", "request",
          "justification", "ticket", "expires", "result", "details"]
GENESIS = "0" * 64


def text(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def unique_keys(pairs):
    """A JSON object whose keys are each given once: with a key twice, readers differ on which
    value they show (this script would hash the last)."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key given twice in {keys}")
    return dict(pairs)


# The characters pim never shows as they are (`unsafe_char` in src/text.rs), beyond the
# controls: format characters, fillers and blanks that show nothing, variation selectors.
INVISIBLE = [
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD),
    (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFFB),
    (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
]


def invisible(c):
    """Whether the export looks past `c` for a formula's first character: a blank, a control,
    or one of INVISIBLE (box drawing, U+2500-257F, never)."""
    if c.isspace() or unicodedata.category(c) == "Cc":
        return True
    o = ord(c)
    return any(lo <= o <= hi for lo, hi in INVISIBLE)


def formula_led(cell):
    """Whether the export would have put a ' before `cell`: it starts with = + - @ (or their
    fullwidth and small forms) after blanks and invisible characters, or with a tab or CR. (A cell that
    starts with ' itself is prefixed too; the caller drops that one first.)"""
    for c in cell:
        if c in "\t\r":
            return True
        if invisible(c):
            continue
        return c in "=+-@\uff1d\uff0b\uff0d\uff20\ufe66\ufe62\ufe63\ufe6b"
    return False


def events(f):
    """The export's events as dicts of their fields: JSONL lines, or CSV rows (the header
    names the fields; each cell's one leading `'` of the spreadsheet-safe form dropped)."""
    wanted = FIELDS + ["prev_hash", "hash"]
    if f.read(1) == "{":
        f.seek(0)
        for n, line in enumerate(f, 1):
            event = json.loads(line, object_pairs_hook=unique_keys)
            if not isinstance(event, dict) or sorted(event) != sorted(wanted):
                raise ValueError(f"line {n}: not an event of the export (its keys are not {','.join(wanted)})")
            yield event
        return
    f.seek(0)
    rows = csv.reader(f)
    header = next(rows, None)
    if header != wanted:
        raise ValueError(f"not a pim export: the CSV header is not {','.join(wanted)}")
    for row in rows:
        if len(row) != len(wanted):
            raise ValueError(f"line {rows.line_num}: {len(row)} cells, not {len(wanted)}")
        event = {}
        for k, v in zip(wanted, row):
            if v.startswith("'"):
                v = v[1:]
            elif formula_led(v):
                raise ValueError(f"line {rows.line_num}: the {k} cell {v[:40]!r} is not defused with "
                                 "a leading ', as the export writes such a cell: a spreadsheet "
                                 "could run it")
            event[k] = v
        yield event


def main(argv):
    args = argv[1:]
    mid_chain = "--mid-chain" in args
    args = [a for a in args if a != "--mid-chain"]
    head = None
    if "--head" in args:
        i = args.index("--head")
        if i + 1 >= len(args):
            sys.exit(__doc__)
        head = args[i + 1].strip().lower()
        del args[i:i + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    prev = None
    first = None
    last = None
    count = 0
    try:
        with open(args[0], encoding="utf-8", newline="") as f:
            for event in events(f):
                # Only digits, one more each time: the numbers are printed below, and a
                # keyless chain lets whoever hands over an export write anything in them.
                seq = text(event["seq"])
                if not (seq.isascii() and seq.isdigit()):
                    raise ValueError(f"event {count + 1} of the export: its seq {seq[:40]!r} is not a number")
                if first is not None and int(seq) != int(text(last["seq"])) + 1:
                    raise ValueError(f"event {seq} follows event {text(last['seq'])}: the numbers skip")
                last = event
                if first is None:
                    first = event
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
    except (ValueError, KeyError, TypeError, csv.Error) as e:
        # (a JSON or UTF-8 error is a ValueError)
        print(f"unreadable export, after {count} events that chain: {e}", file=sys.stderr)
        return 1
    if first is None:
        print("the export holds no event", file=sys.stderr)
        return 1
    from_start = str(first["seq"]) == "1" and first["prev_hash"] == GENESIS
    if head is not None:
        if not from_start and not mid_chain:
            print(f"the export starts at event {first['seq']}, not at the log's first", file=sys.stderr)
            return 1
        if prev != head:
            print(f"the export ends at head {prev}, not at the head given ({head}): events were "
                  "cut off, added or rewritten", file=sys.stderr)
            return 1
    print(f"{count} events chain; head {prev}")
    if head is None:
        print("not proven: that no event was cut off or rewritten with its hashes computed again; "
              "give --head HEAD from `pim audit verify` on the pim host", file=sys.stderr)
        if not from_start:
            print(f"note: the export starts at event {first['seq']}, not at the log's first",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
