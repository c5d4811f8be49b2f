#!/usr/bin/env python3
"""A read of the audit log during a PostgreSQL `pim sweep`: how long another command that shows
the log (`audit list --limit 1`, a durable read: it waits for the batch that runs and for one
flush, see `Db::durable_read`) took at most, against the same read of a control database
beside it that the sweep holds no lock on. By hand, after the benchmark:

    python3 examples/bench.py --sizes medium --backends postgres --runs 1 --keep
    # the kept server started again (`pg_ctl start` as in the kept directory's postgres/pg), then
    python3 examples/bench_sweep_reads.py /tmp/pim-bench-XXXX medium

It sweeps a fresh copy of the benchmark's sweep store (`SIZE-sweep-base.db`) under faketime, two
hours on, as the benchmark does, reading in turn from it and from the control until it ends."""
import os, subprocess, sys, time, statistics
B = sys.argv[1]; size = sys.argv[2]
pim = f"{B}/pim"; sock = f"{B}/postgres/pgsock"
admin = f"postgresql://pim@/postgres?host={sock}"
def url(name): return f"postgresql://pim@/bench_{name}?host={sock}"
for name in ("probe_sweep", "probe_control"):
    subprocess.run(["psql", "-X", "-q", admin, "-c", f"DROP DATABASE IF EXISTS bench_{name}"], check=True)
    subprocess.run(["psql", "-X", "-q", admin, "-c", f"CREATE DATABASE bench_{name}"], check=True)
db = f"{B}/{size}-probe.db"
subprocess.run(["sqlite3", f"{B}/{size}-sweep-base.db", f".backup '{db}'"], check=True)
subprocess.run([pim, "--as", "admin", "store", "copy", "--from", db, "--to", url("probe_sweep")], check=True, stdout=subprocess.DEVNULL)
subprocess.run([pim, "--db", url("probe_control"), "init", "--admin", "admin", "--policies", f"{B}/policy.toml", "--json"], check=True, stdout=subprocess.DEVNULL)
subprocess.run([pim, "--db", url("probe_control"), "--as", "admin", "user", "add", "someone"], check=True, stdout=subprocess.DEVNULL)
subprocess.run(["psql", "-X", "-q", url("probe_sweep"), "-c", "VACUUM (ANALYZE)"], check=True)
subprocess.run(["psql", "-X", "-q", admin, "-c", "CHECKPOINT"], check=True)
os.sync()
out = open(f"{B}/probe-sweep.json", "w")
t0 = time.perf_counter()
sweep = subprocess.Popen(["faketime", "-f", "+2h", pim, "--db", url("probe_sweep"), "--as", "admin", "sweep", "--json"], stdout=out, stderr=subprocess.PIPE)
reads, controls, n = [], [], 0
while sweep.poll() is None:
    u, into = (url("probe_sweep"), reads) if n % 2 == 0 else (url("probe_control"), controls)
    t = time.perf_counter()
    r = subprocess.run([pim, "--db", u, "--as", "admin", "audit", "list", "--limit", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t
    if r.returncode != 0:
        sweep.kill()
        sys.exit(f"read failed: {r.stderr.decode()}")
    into.append(took); n += 1
total = time.perf_counter() - t0
sweep.wait()
print(f"sweep {total:.2f} s, rc {sweep.returncode}")
for name, v in (("durable read of the swept store", reads), ("same read of the control", controls)):
    print(f"{name}: {len(v)} reads, median {statistics.median(v)*1000:.1f} ms, longest {max(v)*1000:.1f} ms, over 100 ms: {sum(x > 0.1 for x in v)}")
