#!/usr/bin/env python3
"""pim's performance benchmark: each command against its floor, at three scales.

    python3 examples/bench.py                      # small and medium, SQLite and PostgreSQL
    python3 examples/bench.py --sizes small,medium,large --backends sqlite --runs 21

For each size it builds a database with pim's own commands and library (USERS users, each
eligible for db-admin at 99 scopes and for ops at /, imported with `pim assignment import`;
the audit log topped up to EVENTS events by `examples/bench_fill.rs`), then times every
operation against the query that answers it in the `sqlite3` shell (or `psql`, on
PostgreSQL, after `pim store copy`, a `VACUUM (ANALYZE)` and a `CHECKPOINT`), run
alternately, and prints the medians, the median of the per-pair ratios, and peak memory
(max RSS). `audit verify` is measured against
`sha256sum` over the bytes it hashes (the events' canonical encodings, dumped once). It is a
benchmark, not a test: nothing here runs in CI.

Sizes: small = 100 users, 10,000 assignments, 100,000 events; medium = 1,000, 100,000,
1,000,000 (the issue's figures); large = 10,000, 1,000,000, 10,000,000.
It also runs `pim sweep` (under faketime, two hours on) over USERS x 99 assignments and
USERS x 10 activations that ended, while another process keeps writing, and reports the
longest that writer waited (and, beside it, the longest write to a store the sweep holds no
lock on: the disk's or the server's own stalls). On PostgreSQL the server logs every wait
for a lock over 50 ms (log_lock_waits, deadlock_timeout), and the longest wait of another
command's session decides the goal: how long a writer was blocked by the sweep (the sweep's
session is named, and its own waits for a writer's lock are shown apart). Such a wait holds
the sweep's commit, whose flush a checkpoint's sync phase can stall as it stalls a write to
the control store (checkpoints are logged too).
Needs: cargo, sqlite3, faketime, and for PostgreSQL initdb/pg_ctl/psql (run as root, the
cluster runs as `postgres` or `nobody`).
"""

import argparse
import json
import os
import re
import socket
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

# The server logs every wait for a lock longer than this (milliseconds).
LOCK_WAIT_LOGGED = 50
# The application_name of the sweep's session on PostgreSQL (in the server's log lines).
SWEEP_APP = "bench_sweep"

SIZES = {
    "small": (100, 100, 100_000),
    "medium": (1_000, 100, 1_000_000),
    "large": (10_000, 100, 10_000_000),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY = """
[defaults]
max_activation = "8h"
require_justification = true

[roles.global-admin]
name = "Global Administrator"
permissions = ["*"]
protected = true

[roles.db-admin]
name = "Database Administrator"
require_mfa = true

[roles.ops]
name = "Operations"
require_mfa = false
"""


def run_timed(argv, env=None, ok=(0,)):
    """Run argv, its output dropped; (seconds, max RSS in KB, exit code). An exit code not in
    `ok` ends the run."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    took = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in ok:
        sys.exit(f"{' '.join(argv)}: exit {p.returncode}: {err}")
    return took, usage.ru_maxrss, p.returncode


def peak_memory(argv, env):
    """argv's max RSS in KB, measured by GNU time (0 when it is not installed)."""
    if not os.path.exists("/usr/bin/time"):
        return 0
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    try:
        return int(r.stderr.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


class Store:
    """One database under test and how to run pim and the floor's query against it."""

    def __init__(self, bench, db, query_argv):
        self.bench, self.db, self.query_argv = bench, db, query_argv

    def pim(self, *args):
        return [self.bench.pim, "--db", self.db, *args]

    def query(self, sql, csv=False):
        return self.query_argv(sql, csv)


class Bench:
    def __init__(self, a):
        self.a = a
        self.dir = tempfile.mkdtemp(prefix="pim-bench-")
        self.env = dict(os.environ, HOME=self.dir, XDG_CONFIG_HOME=os.path.join(self.dir, ".config"))
        self.env.pop("PIM_DB", None)
        self.env.pop("PIM_USER", None)
        self.env["NO_COLOR"] = "1"
        target = os.path.join(ROOT, "target", "release")
        self.pim = os.path.join(target, "pim")
        self.fill = os.path.join(target, "examples", "bench_fill")
        self.rows = []
        self.secrets = {}
        self.steps = {}
        self.imports = []

    def sh(self, *argv):
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr}")
        return r

    # ---------------------------------------------------------------- building a database
    def build(self, size):
        users, per_user, events = SIZES[size]
        db = os.path.join(self.dir, f"{size}.db")
        policy = os.path.join(self.dir, "policy.toml")
        with open(policy, "w") as f:
            f.write(POLICY)
        self.sh(self.pim, "--db", db, "init", "--admin", "admin", "--policies", policy, "--json")
        t = time.perf_counter()
        self.sh(self.fill, db, str(users), "0")
        print(f"  {users} users added in {time.perf_counter() - t:.1f} s", flush=True)
        # Every user eligible for db-admin at /team1../team99 and for ops at /: one file.
        rows = os.path.join(self.dir, f"{size}.csv")
        with open(rows, "w") as f:
            f.write("user,role,scope,type,start,end,justification,ticket\n")
            for u in range(users):
                for s in range(1, per_user):
                    f.write(f"u{u:05},db-admin,/team{s},eligible,,,bench,\n")
                f.write(f"u{u:05},ops,/,eligible,,,bench,\n")
        n = users * per_user
        took, rss, _ = run_timed([self.pim, "--db", db, "--as", "admin", "assignment", "import", rows], self.env)
        self.imports.append((size, n, took, rss))
        print(f"  {n} assignments imported in one file: {took:.2f} s, {rss / 1024:.0f} MB", flush=True)
        t = time.perf_counter()
        self.sh(self.fill, db, str(users), str(events))
        print(f"  log topped up to {events} events in {time.perf_counter() - t:.1f} s", flush=True)
        return db

    def import_growth(self, size, db):
        """10,000 new rows into the full store, against 10,000 into an empty one: three of
        each, alternating, each run new rows (other scopes), so the 'empty' store holds at
        most 20,000 assignments when its last import starts (a single pair of runs once
        measured 1.18 x where five alternating pairs gave 2.03 x)."""
        def rows_file(name, users, run):
            path = os.path.join(self.dir, name)
            with open(path, "w") as f:
                f.write("user,role,scope,type,start,end,justification,ticket\n")
                for i in range(10_000):
                    f.write(f"u{i % users:05},db-admin,/new{run}-{i // users},eligible,,,bench,\n")
            return path
        users = SIZES[size][0]
        empty = os.path.join(self.dir, f"{size}-empty.db")
        self.sh(self.pim, "--db", empty, "init", "--admin", "admin", "--policies",
                os.path.join(self.dir, "policy.toml"), "--json")
        self.sh(self.fill, empty, str(users), "0")
        files = [rows_file(f"{size}-10k-{run}.csv", users, run) for run in range(3)]
        # SQLite's own cost of the same rows: one INSERT ... SELECT into copies of both
        # stores (the same indexes, one transaction, synchronous=FULL as pim writes).
        raw = (f"PRAGMA synchronous = FULL; BEGIN; WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9999) "
               f"INSERT INTO assignments (user_id, role, scope, kind, start_at, end_at, justification, ticket, created_by, created_at) "
               f"SELECT u.id, 'db-admin', '/raw' || (n.i / {users}), 'eligible', 0, NULL, 'bench', NULL, 'admin', 0 "
               f"FROM n JOIN users u ON u.name = printf('u%05d', n.i % {users}); COMMIT;")
        sqlite_took = {}
        for name, src in [("empty", empty), ("full", db)]:
            copy = os.path.join(self.dir, f"{size}-raw-{name}.db")
            self.sh("sqlite3", src, f".backup '{copy}'")
            sqlite_took[name], _, _ = run_timed(["sqlite3", copy, raw], self.env)
            os.remove(copy)
        fulls, empties = [], []
        for run, rows in enumerate(files):
            for store, took in ([(empty, empties), (db, fulls)] if run % 2 == 0 else [(db, fulls), (empty, empties)]):
                took.append(run_timed([self.pim, "--db", store, "--as", "admin", "assignment", "import", rows],
                                      self.env)[0])
        into_full, into_empty = statistics.median(fulls), statistics.median(empties)
        print(f"  import runs, into the store: {', '.join(fmt(t) for t in fulls)}; "
              f"into the empty one: {', '.join(fmt(t) for t in empties)}", flush=True)
        present = SIZES[size][0] * SIZES[size][1]
        self.report(size, "import 10,000 rows: into the store vs into an empty one",
                    into_full, into_empty, f"{present:,} present", goal=1.5, peak="")
        self.report(size, "sqlite3: the same 10,000 rows INSERTed, into the store vs an empty one",
                    sqlite_took["full"], sqlite_took["empty"], f"{present:,} present", goal=None, peak="")
        print(f"| {size} | import: pim's time over SQLite's own, into the store / into an empty one | "
              f"+{fmt(into_full - sqlite_took['full'])} | +{fmt(into_empty - sqlite_took['empty'])} | | | |", flush=True)

    # ---------------------------------------------------------------- measuring
    def pairs(self, size, name, pim_argv, floor_argv, goal, floor_name, ok=(0,)):
        ours, theirs, ratios, peak = [], [], [], 0
        for i in range(self.a.runs):
            def floor():
                theirs.append(run_timed(floor_argv, self.env)[0])
            if i % 2:
                floor()
            took, _, _ = run_timed(pim_argv, self.env, ok=ok)
            ours.append(took)
            if not i % 2:
                floor()
            ratios.append(ours[-1] / theirs[-1])
        # The peak once more, under time(1): a child forked from this (large) Python process
        # reports Python's high-water mark as its own.
        peak = peak_memory(pim_argv, self.env)
        self.rows.append((size, name, statistics.median(ours), statistics.median(theirs),
                          floor_name, statistics.median(ratios), goal, peak))
        self.print_row(self.rows[-1])

    def report(self, size, name, ours, theirs, floor_name, goal, peak):
        row = (size, name, ours, theirs, floor_name, ours / theirs, goal, peak)
        self.rows.append(row)
        self.print_row(row)

    @staticmethod
    def print_row(row):
        size, name, ours, theirs, floor_name, ratio, goal, peak = row
        met = "" if goal is None else ("met" if ratio <= goal else "MISSED")
        peak = f"{peak / 1024:.1f} MB" if isinstance(peak, int) and peak else str(peak)
        print(f"| {size} | {name} | {fmt(ours)} | {fmt(theirs)} {floor_name} | {ratio:.2f} | "
              f"{'' if goal is None else f'≤ {goal}'} {met} | {peak} |", flush=True)

    def operations(self, size, store, backend, server=None):
        users = SIZES[size][0]
        u = f"u{users // 2:05}"
        floor = "psql" if backend == "postgres" else "sqlite3"
        uid = f"(SELECT id FROM users WHERE name = '{u}')"
        self.pairs(size, "check USER ROLE --scope S", store.pim("check", u, "db-admin", "--scope", "/team7"),
                   store.query(f"SELECT 1 FROM users u JOIN assignments a ON a.user_id = u.id WHERE u.name = '{u}' "
                               "AND u.disabled = 0 AND a.role = 'db-admin' AND a.scope IN ('/team7', '/') "
                               "AND a.removed_at IS NULL LIMIT 1"), 1.5, floor, ok=(0, 1))
        self.pairs(size, "status (100 assignments)", store.pim("--as", u, "status"),
                   store.query(f"SELECT a.role, a.scope, a.kind, a.start_at, a.end_at FROM assignments a WHERE "
                               f"a.user_id = {uid} AND a.removed_at IS NULL ORDER BY a.role, a.scope; "
                               f"SELECT r.role, r.scope, r.status, r.end_at FROM requests r WHERE r.user_id = {uid} "
                               "AND r.status IN ('pending', 'scheduled', 'active')"), 1.5, floor)
        self.pairs(size, "assignment list --user U --json",
                   store.pim("--as", "admin", "assignment", "list", "--user", u, "--json"),
                   store.query(f"SELECT a.id, '{u}', a.role, a.scope, a.kind, a.start_at, a.end_at, a.justification, "
                               f"a.ticket, a.created_by FROM assignments a WHERE a.user_id = {uid} AND "
                               "a.removed_at IS NULL ORDER BY a.role, a.scope"), 1.5, floor)
        self.pairs(size, "request list", store.pim("--as", "admin", "request", "list"),
                   store.query("SELECT r.id, u.name, r.role, r.scope, r.status, r.start_at, r.end_at, r.justification "
                               "FROM requests r JOIN users u ON u.id = r.user_id WHERE r.status IN "
                               "('pending', 'scheduled', 'active') ORDER BY r.id"), 1.5, floor)
        self.pairs(size, "role list", store.pim("--as", "admin", "role", "list"),
                   store.query("SELECT role, kind, count(*) FROM assignments WHERE removed_at IS NULL "
                               "GROUP BY role, kind"), 1.5, floor)
        self.pairs(size, "audit export (CSV)",
                   store.pim("--as", "admin", "audit", "export"),
                   store.query("SELECT seq, time, actor, action, principal, role, scope, request, justification, "
                               "ticket, expires, result, details, prev_hash, hash FROM audit_events ORDER BY seq",
                               csv=True), 1.2, floor)
        # verify against sha256sum over the bytes it hashes (dumped once)
        canonical = os.path.join(self.dir, f"{size}.canonical")
        if not os.path.exists(canonical):
            with open(canonical, "wb") as f:
                subprocess.run([self.fill.replace("bench_fill", "bench_canonical"), store.db], stdout=f,
                               env=self.env, check=True)
        self.pairs(size, "audit verify", store.pim("--as", "admin", "audit", "verify"),
                   ["sha256sum", canonical], 1.3, "sha256sum")
        if backend == "postgres":
            # What any client of the server waits for before it has hashed a byte: the
            # server sending the events in their cheapest form (binary COPY of the bytes
            # hashed, as the rows lie: what verify asks for), to /dev/null.
            self.pairs(size, "psql: the events in binary COPY, to /dev/null (the server's own floor for verify)",
                       store.query("\\copy (SELECT seq, canonical, prev_hash, hash FROM audit_events) "
                                   "TO /dev/null WITH (FORMAT binary)"),
                       ["sha256sum", canonical], None, "sha256sum")
            self.verify_cpu(size, store, server)

    def verify_cpu(self, size, store, server):
        """The CPU one `audit verify` on PostgreSQL takes, pim's and its server session's
        (the server's own account of it, log_statement_stats), against the machine's cores:
        on this machine both run on the same cores, so the verify can take no less than their
        sum over the cores, whatever pim does with its share."""
        db = urllib.parse.urlparse(store.db).path.lstrip("/")
        admin = ["psql", "-X", "-q", store.db, "-c"]
        self.sh(*admin, f"ALTER DATABASE {db} SET log_statement_stats = on")
        since = server.log_size()
        p = subprocess.Popen(store.pim("--as", "admin", "audit", "verify"), env=self.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        self.sh(*admin, f"ALTER DATABASE {db} RESET log_statement_stats")
        ours = usage.ru_utime + usage.ru_stime
        theirs = server.session_cpu(since)
        sha = next(r[3] for r in reversed(self.rows) if r[0] == size and r[1] == "audit verify")
        cores = os.cpu_count()
        bound = (ours + theirs) / cores
        print(f"| {size} | audit verify's CPU (postgres): pim {fmt(ours)} + its server session {fmt(theirs)}, "
              f"over {cores} cores shared with the server: no quicker than | {fmt(bound)} | {fmt(sha)} sha256sum | "
              f"{bound / sha:.2f} | (the machine's bound) | |", flush=True)

    def sweep_at_scale(self, size, backend, server):
        """`pim sweep` over USERS x PER_USER expiring assignments and USERS x 10 ending
        activations, while another process keeps writing (`user add`): the sweep's time, and
        how long the writer waited at most."""
        users, per_user, _ = SIZES[size]
        base = os.path.join(self.dir, f"{size}-sweep-base.db")
        if not os.path.exists(base):
            self.sh(self.pim, "--db", base, "init", "--admin", "admin", "--policies",
                    os.path.join(self.dir, "policy.toml"), "--json")
            self.sh(self.fill, base, str(users), "0")
            rows = os.path.join(self.dir, f"{size}-sweep.csv")
            with open(rows, "w") as f:
                f.write("user,role,scope,type,start,end,justification,ticket\n")
                # One file within the import's limit (1,000,000 rows) at every size.
                for u in range(users):
                    for s in range(per_user - 1):
                        f.write(f"u{u:05},db-admin,/x{s},eligible,,1h,bench,\n")
                    f.write(f"u{u:05},ops,/,eligible,,,bench,\n")
            self.sh(self.pim, "--db", base, "--as", "admin", "assignment", "import", rows)
            self.sh(self.fill, base, "activate", str(users), "10")
        # Each backend sweeps its own copy of the same database.
        db = os.path.join(self.dir, f"{size}-sweep-{backend}.db")
        self.sh("sqlite3", base, f".backup '{db}'")
        target = db
        if backend == "postgres":
            target = server.fresh(f"{size}_sweep")
            self.sh(self.pim, "--as", "admin", "store", "copy", "--from", db, "--to", target)
        # The control: a store of its own on the same disk or server, which the sweep holds
        # no lock on. A write to it that takes as long is the machine's or the server's stall
        # (a checkpoint, the other process on the same two cores), not the sweep's lock.
        control = os.path.join(self.dir, f"{size}-control-{backend}.db")
        if backend == "postgres":
            control = server.fresh(f"{size}_control")
        elif os.path.exists(control):
            os.remove(control)
        self.sh(self.pim, "--db", control, "init", "--admin", "admin", "--policies",
                os.path.join(self.dir, "policy.toml"), "--json")
        expiring, ending = users * (per_user - 1), users * 10
        waits, controls = [], []
        # The report goes to a file: a pipe nobody reads until the end would stop the sweep.
        report_file = open(os.path.join(self.dir, f"{size}-{backend}-sweep.json"), "w+")
        log_from = server.log_size() if backend == "postgres" else None
        # The disk quiet before the sweep starts: what the benchmark wrote before it (a copy of
        # the store, the server's tables) is flushed now, not by a commit of the sweep, which
        # holds the lock while its flush waits. A server's checkpoint flushing 380 MB during a
        # SQLite sweep made a write to the control store take 135.9 ms (stop 35); runs of the
        # full benchmark measured a longest write of 124.1 and 107.3 ms where the sweep-only runs
        # stayed under 14 ms.
        if server is not None:
            server.checkpoint()
        os.sync()
        # On PostgreSQL the sweep's session is named, so that the server's log tells a wait of
        # another command for the sweep's lock from the sweep's own wait for theirs.
        joint = "&" if "?" in target else "?"
        swept = f"{target}{joint}application_name={SWEEP_APP}" if backend == "postgres" else target
        sweep = subprocess.Popen(["faketime", "-f", "+2h", self.pim, "--db", swept, "--as", "admin", "sweep",
                                  "--json"], env=self.env, stdout=report_file, stderr=subprocess.PIPE)
        t0 = time.perf_counter()
        n = 0
        # When the longest write to the swept store began, into the sweep.
        worst_at = 0.0
        while sweep.poll() is None:
            # The store and the control in turn, under the same conditions.
            into, into_waits = (target, waits) if n % 2 == 0 else (control, controls)
            began = time.perf_counter() - t0
            took, _, _ = run_timed([self.pim, "--db", into, "--as", "admin", "user", "add", f"probe{n:05}"],
                                   self.env)
            if into_waits is waits and took > max(waits, default=0):
                worst_at = began
            into_waits.append(took)
            n += 1
        took = time.perf_counter() - t0
        _, err = sweep.communicate()
        if sweep.returncode != 0:
            sys.exit(f"sweep: exit {sweep.returncode}: {err.decode()}")
        report_file.seek(0)
        report = json.load(report_file)
        report_file.close()
        assert len(report["expired_assignments"]) == expiring, (len(report["expired_assignments"]), expiring)
        assert len(report["expired_activations"]) == ending, (len(report["expired_activations"]), ending)
        self.sh(self.pim, "--db", target, "--as", "admin", "audit", "verify")
        worst = max(waits) if waits else 0
        # On SQLite a write's own time is what there is to measure (its waits for the lock
        # happen inside SQLite); on PostgreSQL the server logs each wait for a lock, and a
        # write's own time also holds the server's stalls (checkpoints), which the control
        # shows as well. There the lock waits decide the goal.
        write_goal = f"≤ 100 ms {'met' if worst <= 0.1 else 'MISSED'}" if backend == "sqlite" \
            else "(the lock waits below decide)"
        print(f"| {size} | sweep: {expiring:,} assignments and {ending:,} activations ended ({backend}) | "
              f"{fmt(took)} | | | | |", flush=True)
        print(f"| {size} | a write during that sweep: longest of {len(waits)} ({backend}; it began "
              f"{worst_at:.2f} s in) | {fmt(worst)} | "
              f"median {fmt(statistics.median(waits) if waits else 0)} | | {write_goal} | |", flush=True)
        print(f"| {size} | the same write to another store beside it (no lock shared): longest of {len(controls)} "
              f"({backend}) | {fmt(max(controls) if controls else 0)} | "
              f"median {fmt(statistics.median(controls) if controls else 0)} | | | |", flush=True)
        if log_from is not None:
            waits = server.lock_waits(log_from)
            # A probe's wait is for the sweep's lock (the probes write one at a time); the
            # sweep's own waits are for a probe's, which block no other command.
            locked = [took for app, took in waits if app != SWEEP_APP]
            own = [took for app, took in waits if app == SWEEP_APP]
            longest = max(locked) if locked else 0
            shown = fmt(longest) if locked else f"none over {LOCK_WAIT_LOGGED} ms"
            print(f"| {size} | a write's wait for the sweep's lock, as the server logged it (every wait "
                  f"over {LOCK_WAIT_LOGGED} ms): longest ({backend}) | {shown} | {len(locked)} over "
                  f"{LOCK_WAIT_LOGGED} ms | | ≤ 100 ms {'met' if longest <= 0.1 else 'MISSED'} | |", flush=True)
            print(f"| {size} | the sweep's own wait for a write's lock, as the server logged it: longest "
                  f"({backend}) | {fmt(max(own)) if own else f'none over {LOCK_WAIT_LOGGED} ms'} | "
                  f"{len(own)} over {LOCK_WAIT_LOGGED} ms | | | |", flush=True)

    def activations(self, size, store, backend):
        """One activation (TOTP, audit, fsync) per enrolled user; and activate+deactivate pairs
        without MFA."""
        n = self.a.activations
        who = [f"u{i:05}" for i in range(n)]
        # Enrolled once per size (a copy to PostgreSQL carries the enrolments along).
        secrets = self.secrets.setdefault(size, {})
        for u in who:
            if u in secrets:
                continue
            r = self.sh(*store.pim("--as", u, "mfa", "enroll", "--json"))
            secrets[u] = json.loads(r.stdout)["secret"]
            self.sh(*store.pim("--as", u, "mfa", "confirm", "--code", previous_code(secrets[u])))
        # A code is taken once: the other backend's copy carries the step each user last used,
        # so it waits for a step of its own.
        used = self.steps.get(size)
        if used is not None and int(time.time()) // 30 <= used:
            time.sleep(30.05 - time.time() % 30)
        times = []
        for u in who:
            code = totp(secrets[u])
            took, _, _ = run_timed(store.pim("--as", u, "activate", "db-admin", "--scope", "/team1", "-j",
                                             "INC-1 bench", "--code", code, "--duration", "1h"), self.env)
            times.append(took)
        self.steps[size] = int(time.time()) // 30
        pairs = []
        for u in who:
            t = time.perf_counter()
            self.sh(*store.pim("--as", u, "activate", "ops", "-j", "INC-2 bench", "--duration", "1h"))
            self.sh(*store.pim("--as", u, "deactivate", "ops"))
            pairs.append(time.perf_counter() - t)
        self.rows.append((size, "activate with TOTP (median)", statistics.median(times), None, "", None, 0.010, ""))
        # The issue sets 10 ms for SQLite; a server adds its round trips.
        goal = (f"≤ 10 ms {'met' if statistics.median(times) <= 0.010 else 'MISSED'}"
                if backend == "sqlite" else "(10 ms is SQLite's)")
        print(f"| {size} | activate with TOTP, audit, fsync ({backend}) | {fmt(statistics.median(times))} | | | "
              f"{goal} | |", flush=True)
        print(f"| {size} | activate + deactivate, no MFA, a pair ({backend}) | {fmt(statistics.median(pairs))} | | | | |",
              flush=True)
        for u in who:
            self.sh(*store.pim("--as", u, "deactivate", "db-admin"))


def fmt(seconds):
    return "" if seconds is None else (f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s")


def totp(secret, step_offset=0):
    import base64, hashlib, hmac, struct
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    h = hmac.new(key, struct.pack(">Q", int(time.time()) // 30 + step_offset), hashlib.sha1).digest()
    o = h[-1] & 15
    return "%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1_000_000)


def previous_code(secret):
    if time.time() % 30 > 27:
        time.sleep(30.1 - time.time() % 30)
    return totp(secret, -1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="small,medium")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--activations", type=int, default=30)
    p.add_argument("--keep", action="store_true", help="keep the databases (printed)")
    p.add_argument("--transport", choices=["unix", "tcp"], default="unix",
                   help="how pim and psql reach the server: its Unix socket, or TCP on 127.0.0.1 "
                        "(as a server on another host is reached)")
    a = p.parse_args()
    # The binary a user builds (`cargo build --release`, as examples/quickstart.sh does), on
    # its own: built in one command with the examples, cargo unifies the features the
    # examples' dev-dependencies ask of shared crates into pim's build, and links another
    # binary (11.8 MB against 11.3 MB; `status` 1.36-1.37 x `sqlite3` against 1.26-1.27).
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "pim"], cwd=ROOT, check=True)
    b = Bench(a)
    # pim as installed: a copy of that build, as `cargo install` or a package leaves it. The
    # linker's own output stays in the page cache as the linker wrote it, and every start
    # from there cost more of the kernel's time on this machine (`status`: 2.51 against 1.67
    # ms of system time, 356 against 332 page faults, the same bytes; equal once the page
    # cache was dropped), which moved `status`'s ratio from 1.25 to 1.5.
    installed = os.path.join(b.dir, "pim")
    shutil.copy(b.pim, installed)
    b.pim = installed
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "--example", "bench_fill",
                    "--example", "bench_canonical"], cwd=ROOT, check=True)
    print(f"machine: {os.cpu_count()} cores, {machine()}; runs per operation: {a.runs}")
    print("| size | operation | pim | floor | ratio (median of pairs) | goal | pim peak memory |")
    print("|---|---|---|---|---|---|---|")
    server = None
    try:
        for size in a.sizes.split(","):
            print(f"building {size} {SIZES[size]}", flush=True)
            db = b.build(size)
            for backend in a.backends.split(","):
                if backend == "sqlite":
                    store = Store(b, db, lambda sql, csv=False: ["sqlite3", *(["-csv"] if csv else []), db, sql])
                else:
                    if server is None:
                        server = Postgres(b.dir, tcp=a.transport == "tcp")
                    url = server.fresh(size)
                    b.sh(b.pim, "--as", "admin", "store", "copy", "--from", db, "--to", url)
                    server.settle(url)
                    store = Store(b, url, lambda sql, csv=False, url=url:
                                  ["psql", "-X", "-q", *(["--csv"] if csv else []), url, "-c", sql])
                b.operations(size, store, backend, server)
                b.activations(size, store, backend)
                b.sweep_at_scale(size, backend, server)
            b.import_growth(size, db)
        print("\nimport in one file (linear in N):")
        for size, n, took, rss in b.imports:
            print(f"  {size}: {n:,} rows in {took:.2f} s ({took / n * 1e6:.1f} µs a row), {rss / 1024:.0f} MB")
    finally:
        if server:
            server.stop()
        if a.keep:
            print(f"databases kept in {b.dir}")
        else:
            shutil.rmtree(b.dir, ignore_errors=True)


def machine():
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except Exception:
        model = "unknown CPU"
    return model


class Postgres:
    """A throwaway PostgreSQL cluster on a Unix socket (as `postgres` or `nobody` when root)."""

    def __init__(self, base, tcp=False):
        bindir = next((d for d in ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"]
                       if os.path.exists(d)), os.path.dirname(shutil.which("initdb") or "/usr/bin/initdb"))
        self.bin = bindir
        # A directory of its own: the account the server runs as never owns the one that
        # holds pim's database files (pim refuses a database in a directory another account
        # can write in).
        base = os.path.join(base, "postgres")
        os.makedirs(base)
        self.data = os.path.join(base, "pg")
        self.sock = os.path.join(base, "pgsock")
        os.makedirs(self.sock)
        self.user = []
        if os.geteuid() == 0:
            account = "postgres" if subprocess.run(["id", "postgres"], capture_output=True).returncode == 0 \
                else "nobody"
            os.chmod(os.path.dirname(base), 0o755)   # root's: passed through, not written
            shutil.chown(base, account)
            os.chmod(base, 0o755)
            shutil.chown(self.sock, account)
            self.user = ["runuser", "-u", account, "--"]
        subprocess.run([*self.user, f"{bindir}/initdb", "-D", self.data, "-A", "trust", "-U", "pim"],
                       check=True, capture_output=True)
        # Every wait for a lock longer than LOCK_WAIT_LOGGED is written to the server's log,
        # with how long it took: how long a writer was blocked by the sweep, measured by the
        # server itself (a write's own time also holds the server's stalls, which a write to
        # a store the sweep holds no lock on shows as well).
        self.log = os.path.join(self.data, "log")
        # Over TCP the stores' URLs name 127.0.0.1 and a free port (the administration
        # below still goes through the socket).
        self.port = None
        listen = "''"
        if tcp:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            listen = f"127.0.0.1 -p {self.port}"
        self.admin = f"postgresql://pim@/postgres?host={self.sock}" + (f"&port={self.port}" if tcp else "")
        subprocess.run([*self.user, f"{bindir}/pg_ctl", "-D", self.data, "-w", "-l", self.log,
                        "-o", f"-k {self.sock} -c listen_addresses={listen} -c fsync=on -c log_lock_waits=on "
                              f"-c deadlock_timeout={LOCK_WAIT_LOGGED}ms", "start"],
                       check=True, capture_output=True)
        # Each log line names its session's application (whose wait it is), and checkpoints
        # are logged (a commit's flush waits for a checkpoint's sync phase: a stall of the
        # server, not of pim).
        admin = ["psql", "-X", "-q", self.admin]
        for setting in ["log_line_prefix = '%m [%p] %a: '", "log_checkpoints = on"]:
            subprocess.run([*admin, "-c", f"ALTER SYSTEM SET {setting}"], check=True, capture_output=True)
        subprocess.run([*admin, "-c", "SELECT pg_reload_conf()"], check=True, capture_output=True)

    def log_size(self):
        return os.path.getsize(self.log)

    def session_cpu(self, since):
        """The CPU time (user and system, seconds) of the busiest session whose statement
        statistics the server logged after byte `since` of its log: each statement's entry ends
        with the session's running total."""
        with open(self.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        totals = [float(u) + float(s) for u, s in
                  re.findall(r"\[([0-9.]+) s user, ([0-9.]+) s system total\]", text)]
        return max(totals, default=0.0)

    def lock_waits(self, since):
        """The lock waits the server logged after byte `since` of its log: (the waiting
        session's application_name, seconds) for each wait longer than LOCK_WAIT_LOGGED, as
        long as it took (a wait still going on at the end counts as long as it had gone on)."""
        with open(self.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        ended, going_on = [], {}
        for m in re.finditer(r"\] ([^:\n]*): LOG:  process (\d+) (still waiting|acquired) .*? after ([0-9.]+) ms",
                             text):
            app, pid, took = m.group(1), m.group(2), float(m.group(4)) / 1000
            if m.group(3) == "acquired":
                ended.append((app, took))
                going_on.pop(pid, None)
            else:
                going_on[pid] = (app, took)
        return ended + list(going_on.values())

    def checkpoint(self):
        subprocess.run(["psql", "-X", "-q", self.admin, "-c", "CHECKPOINT"],
                       check=True, capture_output=True)

    def settle(self, url):
        """The store at rest before anything is timed, as a user's store is: a bulk copy
        leaves the server work to do (autovacuum's vacuum and analyze of the new tables; the
        first scan of each page setting its rows' hint bits, and so writing it), which
        otherwise lands on whichever runs are timed first (stop 38: `audit verify` 133 ms
        at the small size in the run after the copy, 107 ms by hand once it had settled)."""
        subprocess.run(["psql", "-X", "-q", url, "-c", "VACUUM (ANALYZE)"], check=True, capture_output=True)
        self.checkpoint()

    def fresh(self, name):
        subprocess.run(["psql", "-X", "-q", self.admin, "-c",
                        f"CREATE DATABASE bench_{name}"], check=True, capture_output=True)
        if self.port:
            return f"postgresql://pim@127.0.0.1:{self.port}/bench_{name}"
        return f"postgresql://pim@/bench_{name}?host={self.sock}"

    def stop(self):
        subprocess.run([*self.user, f"{self.bin}/pg_ctl", "-D", self.data, "-m", "fast", "stop"],
                       capture_output=True)


if __name__ == "__main__":
    main()
