#!/usr/bin/env bash
# pim's main job on the default database ($XDG_DATA_HOME/pim/pim.db), start to finish:
# build, create the database with you as break-glass administrator, make you eligible for the
# Database Administrator role, and activate it just in time with a justification and a TOTP
# code. Needs cargo and python3 (which stands in for your authenticator app here).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
pim() { ./target/release/pim "$@"; }
me=$(id -un)
db="${PIM_DB:-${XDG_DATA_HOME:-$HOME/.local/share}/pim/pim.db}"

if [ -e "$db" ]; then
    echo "A pim database already exists at $db; here is your status."
    pim status
    exit 0
fi

# A TOTP code for a base32 secret (RFC 6238), as an authenticator app would show it.
totp() {
    python3 -c 'import base64,hmac,hashlib,struct,sys,time
s=sys.argv[1]; k=base64.b32decode(s+"="*(-len(s)%8))
h=hmac.new(k,struct.pack(">Q",int(time.time())//30),hashlib.sha1).digest(); o=h[-1]&15
print("%06d"%((struct.unpack(">I",h[o:o+4])[0]&0x7fffffff)%1000000))' "$1"
}

echo "\$ pim init --admin $me"
secret=$(pim init --admin "$me" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
echo "Created $db; your authenticator secret is $secret (pim mfa enroll shows it as a QR code)."
echo
echo "\$ pim assign $me db-admin --scope /prod --duration 90d -j 'on-call rotation'"
pim assign "$me" db-admin --scope /prod --duration 90d -j "on-call rotation"
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
