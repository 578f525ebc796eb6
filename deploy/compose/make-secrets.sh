#!/bin/sh
# Generates the compose stack's secrets into secrets/ (which git and the build context ignore); an existing file is
# kept, so that running it again changes nothing. To rotate one, delete its file, run this again, and restart what
# reads it (docs/OPERATIONS.md: "Rotating secrets").
#
#   redis_password, redis_admin_password, api_keys, s3_secret_access_key   a random hex string each (the last
#                     is the key of the `s3` profile's server: docs/OPERATIONS.md, "Choosing a result store")
#   webhook_secret    a Standard Webhooks secret (whsec_ + base64 of 32 random bytes): signs every webhook when
#                     the API runs without keys
#   webhook_secrets   JSON {owner id: secret}: one secret per key of api_keys, by its owner id (the first 32 hex
#                     characters of the key's sha256, what `diffusetv owner` prints), made with api_keys' keys
set -eu
cd "$(dirname "$0")/../.."
mkdir -p secrets
chmod 0700 secrets
for name in redis_password redis_admin_password api_keys s3_secret_access_key; do
    if [ ! -s "secrets/$name" ]; then
        python3 -c "import secrets; print(secrets.token_hex(24))" > "secrets/$name"
        echo "wrote secrets/$name"
    fi
done
if [ ! -s secrets/webhook_secret ]; then
    python3 -c "import base64, secrets; print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())" \
        > secrets/webhook_secret
    echo "wrote secrets/webhook_secret"
fi
if [ ! -s secrets/webhook_secrets ]; then
    python3 - secrets/api_keys > secrets/webhook_secrets <<'PY'
import base64, hashlib, json, secrets, sys

lines = open(sys.argv[1]).read().splitlines()
keys = sorted({k.strip() for line in lines if not line.lstrip().startswith("#") for k in line.split(",") if k.strip()})
table = {
    hashlib.sha256(k.encode()).hexdigest()[:32]: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    for k in keys
}
print(json.dumps(table, indent=2))
PY
    echo "wrote secrets/webhook_secrets"
fi
for name in redis_password redis_admin_password api_keys webhook_secret webhook_secrets s3_secret_access_key; do
    # Readable by the containers' users (uid 10001, 999 for Redis, 1000 for SeaweedFS); the folder keeps others out.
    chmod 0644 "secrets/$name"
done
