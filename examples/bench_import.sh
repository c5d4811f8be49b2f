#!/usr/bin/env bash
# Time `pim assignment import` with the release build: ROWS rows (default 10,000) of db-admin
# for 100 users over ROWS/100 scopes, into an empty store, then an idempotent second run.
# Prints wall time and peak memory of each; `examples/bench_import.sh 10000 100000 1000000`
# shows how the time grows with the file (it should grow linearly).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
pim="$PWD/target/release/pim"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export HOME="$dir" XDG_CONFIG_HOME="$dir/.config"
for rows in "${@:-10000}"; do
    export PIM_DB="$dir/pim-$rows.db"
    "$pim" init --admin admin --json >/dev/null 2>&1
    for i in $(seq 1 100); do "$pim" --as admin user add "user$i" >/dev/null; done
    scopes=$((rows / 100))
    {
        echo "user,role,scope,type,start,end,justification,ticket"
        for i in $(seq 1 100); do
            for s in $(seq 1 "$scopes"); do echo "user$i,db-admin,/team$s,eligible,,90d,bulk onboarding,CHG-42"; done
        done
    } > "$dir/rows.csv"
    echo "rows: $(($(wc -l < "$dir/rows.csv") - 1))"
    /usr/bin/time -f "  first import: %e s wall, %M KB max RSS" "$pim" --as admin assignment import "$dir/rows.csv" --json >/dev/null
    /usr/bin/time -f "  second import (nothing to change): %e s wall, %M KB max RSS" "$pim" --as admin assignment import "$dir/rows.csv" --json >/dev/null
    "$pim" --as admin audit verify
    rm -f "$PIM_DB" "$PIM_DB-wal" "$PIM_DB-shm"
done
