#!/usr/bin/env bash
# Time `pim assignment import` of 10,000 rows with the release build (the issue asks < 1 s).
# 100 users x 100 scopes of db-admin; prints the wall time and peak memory of the import,
# then of a second, idempotent run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
pim="$PWD/target/release/pim"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export PIM_DB="$dir/pim.db"
"$pim" init --admin admin --json >/dev/null 2>&1
for i in $(seq 1 100); do "$pim" --as admin user add "user$i" >/dev/null; done
{
    echo "user,role,scope,type,start,end,justification,ticket"
    for i in $(seq 1 100); do
        for s in $(seq 1 100); do echo "user$i,db-admin,/team$s,eligible,,90d,bulk onboarding,CHG-42"; done
    done
} > "$dir/rows.csv"
echo "rows: $(($(wc -l < "$dir/rows.csv") - 1))"
/usr/bin/time -f "first import: %e s wall, %M KB max RSS" "$pim" --as admin assignment import "$dir/rows.csv" --json
/usr/bin/time -f "second import (nothing to change): %e s wall, %M KB max RSS" "$pim" --as admin assignment import "$dir/rows.csv" --json
"$pim" audit verify
