#!/usr/bin/env python3
"""Many pim processes at once, on a SQLite file or a PostgreSQL database: N users activate a
role at the same instant, then P pairs of approvers race to approve and deny the same
requests. Prints the wall time, how many processes failed, and whether `audit verify` holds.

    python3 examples/race.py --bin target/release/pim --db /tmp/race.db
    python3 examples/race.py --bin target/release/pim --db postgres://pim@127.0.0.1/race

The database must not exist yet (a file) or be empty (a server database). Needs oathtool.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/pim")
    ap.add_argument("--db", required=True)
    ap.add_argument("--activations", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=20)
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="pim-race-")
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"), PIM_DB=a.db)
    env.pop("PIM_USER", None)

    def pim(*args, check=True):
        r = subprocess.run([a.bin, *args], env=env, capture_output=True, text=True)
        if check and r.returncode != 0:
            sys.exit(f"pim {' '.join(args)}: exit {r.returncode}: {r.stderr}")
        return r

    def code(secret, offset=0):
        # A past step's code is accepted only while the clock stays in the next step: near
        # its end, wait for the following one.
        if offset < 0 and time.time() % 30 > 27:
            time.sleep(30.1 - time.time() % 30)
        return subprocess.run(["oathtool", "--totp", "-b", secret, "-N", f"now {offset:+} seconds"],
                              capture_output=True, text=True, check=True).stdout.strip()

    users = [f"u{i:03}" for i in range(a.activations)]
    requesters = [f"r{i:03}" for i in range(a.pairs)]
    approvers = [f"a{i:03}" for i in range(2 * a.pairs)]
    policy = os.path.join(home, "policy.toml")
    with open(policy, "w") as f:
        f.write('[roles.global-admin]\nname = "Global Administrator"\npermissions = ["*"]\n'
                'protected = true\nmax_eligible = "permanent"\nmax_active = "permanent"\n\n'
                '[roles.ops]\nname = "Operations"\nmax_activation = "1h"\n\n'
                '[roles.db-admin]\nname = "Database Administrator"\nmax_activation = "1h"\n'
                'require_approval = true\napprovers = [%s]\n'
                % ", ".join(f'"{x}"' for x in approvers))
    pim("init", "--admin", "admin", "--policies", policy)
    secrets = {}
    for u in users + requesters + approvers:
        pim("--as", "admin", "user", "add", u)
        # Each enrols their own authenticator and confirms it with the previous step's code.
        secrets[u] = json.loads(pim("--as", u, "mfa", "enroll", "--json").stdout)["secret"]
        pim("--as", u, "mfa", "confirm", "--code", code(secrets[u], -30))
    rows = [f"{u},ops,/,eligible,,,bench,\n" for u in users]
    rows += [f"{u},db-admin,/,eligible,,,bench,\n" for u in requesters]
    csv = os.path.join(home, "eligible.csv")
    with open(csv, "w") as f:
        f.write("user,role,scope,type,start,end,justification,ticket\n" + "".join(rows))
    pim("--as", "admin", "assignment", "import", csv)

    def all_at_once(commands):
        started = time.monotonic()
        kids = [subprocess.Popen([a.bin, *c], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for c in commands]
        results = [(k.wait(), k.stderr.read()) for k in kids]
        return time.monotonic() - started, results

    codes = {u: code(secrets[u]) for u in users}
    took, results = all_at_once(
        [["--as", u, "activate", "ops", "-j", "bench", "--code", codes[u]] for u in users])
    failed = [e for rc, e in results if rc != 0]
    print(f"{len(users)} activations at once: {took * 1000:.0f} ms, {len(failed)} failed")
    for e in failed[:3]:
        print("  ", e.strip())

    ids = []
    for u in requesters:
        r = json.loads(pim("--as", u, "activate", "db-admin", "-j", "bench", "--code",
                           code(secrets[u]), "--json").stdout)
        ids.append(r["id"])
    commands = []
    for i, rid in enumerate(ids):
        for k, verb in enumerate(["approve", "deny"]):
            ap_ = approvers[2 * i + k]
            commands.append(["--as", ap_, verb, str(rid), "-j", "race", "--code", code(secrets[ap_])])
    took, results = all_at_once(commands)
    outcomes = [sorted(rc for rc, _ in results[2 * i:2 * i + 2]) for i in range(len(ids))]
    single = sum(1 for o in outcomes if o == [0, 5])
    other = [e for rc, e in results if rc not in (0, 5)]
    print(f"{len(ids)} approve/deny pairs racing: {took * 1000:.0f} ms, "
          f"{single}/{len(ids)} with exactly one outcome, {len(other)} other errors")
    v = json.loads(pim("--as", "admin", "audit", "verify", "--json", check=False).stdout)
    print(f"audit verify: {'holds' if v['ok'] else 'BROKEN'}, {v['events']} events, head {v.get('head')}")
    sys.exit(0 if not failed and not other and single == len(ids) and v["ok"] else 1)


if __name__ == "__main__":
    main()
