#!/bin/sh
# Generates the compose stack's secrets into secrets/ (which git and the build context ignore), one random
# hex string each; an existing file is kept, so that running it again changes nothing. To rotate one,
# delete its file, run this again, and restart what reads it (docs/OPERATIONS.md: "Rotating secrets").
set -eu
cd "$(dirname "$0")/../.."
mkdir -p secrets
chmod 0700 secrets
for name in redis_password redis_admin_password api_keys; do
    if [ ! -s "secrets/$name" ]; then
        python3 -c "import secrets; print(secrets.token_hex(24))" > "secrets/$name"
        echo "wrote secrets/$name"
    fi
    # Readable by the containers' users (uid 10001, and 999 for Redis); the folder keeps others out.
    chmod 0644 "secrets/$name"
done
