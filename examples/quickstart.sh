#!/usr/bin/env bash
# pim's main job on the default database ($XDG_DATA_HOME/pim/pim.db), start to finish:
# build, create the database with a break-glass administrator, add you as a user with an
# authenticator, make you eligible for the Database Administrator role (an administrator does
# that: nobody assigns themselves a role), and activate it just in time with a justification
# and a TOTP code. Needs cargo and python3 (which stands in for your authenticator app here).
set -euo pipefail
cd "$(dirname "$0")/.."
# PIM_BIN: a pim already built (the tests run this script with theirs).
if [ -z "${PIM_BIN:-}" ]; then
    cargo build --release --quiet
fi
pim() { "${PIM_BIN:-./target/release/pim}" "$@"; }
me=$(id -un)
admin=pim-admin
db="${PIM_DB:-${XDG_DATA_HOME:-$HOME/.local/share}/pim/pim.db}"

if [ -e "$db" ]; then
    echo "A pim database already exists at $db; here is your status."
    pim status
    exit 0
fi

# A TOTP code for a base32 secret (RFC 6238), as an authenticator app would show it (with a
# second argument: the code of that many steps of 30 seconds from now).
totp() {
    python3 -c 'import base64,hmac,hashlib,struct,sys,time
s=sys.argv[1]; k=base64.b32decode(s+"="*(-len(s)%8))
d=int(sys.argv[2])
if d<0 and time.time()%30>27: time.sleep(30.1-time.time()%30)  # a past code only while its step is near
h=hmac.new(k,struct.pack(">Q",int(time.time())//30+d),hashlib.sha1).digest(); o=h[-1]&15
print("%06d"%((struct.unpack(">I",h[o:o+4])[0]&0x7fffffff)%1000000))' "$1" "${2:-0}"
}
secret_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'; }

echo "\$ pim init --admin $admin && pim --as $admin mfa confirm --code ******"
admin_secret=$(pim init --admin "$admin" --json 2>/dev/null | secret_of)
# An authenticator takes effect with its first code (here, the previous step's: the current
# one stays free).
pim --as "$admin" mfa confirm --code "$(totp "$admin_secret" -1)" >/dev/null
echo "Created $db with $admin as break-glass administrator (its TOTP key is in your config directory)."
echo
# You own the database file, so you may act as its administrator with --as.
echo "\$ pim --as $admin user add $me && pim mfa enroll && pim mfa confirm --code ******"
pim --as "$admin" user add "$me" >/dev/null
# You enrol your own authenticator (nobody else ever sees its secret) and confirm it.
secret=$(pim mfa enroll --json 2>/dev/null | secret_of)
pim mfa confirm --code "$(totp "$secret" -1)" >/dev/null
echo "Added $me; your authenticator secret is $secret (pim mfa enroll shows it as a QR code)."
echo
echo "\$ pim --as $admin assign $me db-admin --scope /prod --duration 90d -j 'on-call rotation'"
pim --as "$admin" assign "$me" db-admin --scope /prod --duration 90d -j "on-call rotation"
echo
echo "\$ pim activate db-admin --scope /prod --duration 1h -j 'INC-1234 replica lag' --code ******"
pim activate db-admin --scope /prod --duration 1h -j "INC-1234 replica lag" --code "$(totp "$secret")"
echo
echo "\$ pim check $me db-admin --scope /prod/db"
pim check "$me" db-admin --scope /prod/db
echo
echo "\$ pim status"
pim status
echo
echo "\$ pim audit verify"
pim audit verify
