#!/bin/sh
# Starts SeaweedFS (`weed server -s3`) with an S3 identities file made from the secret file, so that the key
# is in no command line, environment variable or `docker inspect`:
#
#   identity diffusetv   access key S3_ACCESS_KEY_ID, secret key from s3_secret_access_key: the API, the
#                        workers and s3-init. Admin, so that it may make its bucket; the server holds nothing else.
#
# No anonymous identity: every request is signed. The file lives in a tmpfs (S3_CONFIG_FILE) and is written with
# umask 077. A placeholder or short key stops the start. Arguments are passed on to weed.
set -eu
SECRETS_DIR="${SECRETS_DIR:-/run/secrets}"
S3_CONFIG_FILE="${S3_CONFIG_FILE:-/tmp/s3.json}"
WEED="${WEED:-/usr/bin/weed}"

access_key="${S3_ACCESS_KEY_ID:-}"
case "$access_key" in
    ""|*[!A-Za-z0-9_.-]*)
        echo "s3-start: S3_ACCESS_KEY_ID must be letters, digits, '_', '.' or '-' (got '$access_key')" >&2
        exit 1 ;;
esac

[ -r "$SECRETS_DIR/s3_secret_access_key" ] || {
    echo "s3-start: no readable secret $SECRETS_DIR/s3_secret_access_key (deploy/compose/make-secrets.sh)" >&2
    exit 1
}
secret="$(head -n 1 "$SECRETS_DIR/s3_secret_access_key" | tr -d '\r\n')"
case "$secret" in
    *change-me*|*changeme*|*replace-me*|*placeholder*)
        echo "s3-start: s3_secret_access_key is a placeholder; generate one: python3 -c 'import secrets; print(secrets.token_hex(24))'" >&2
        exit 1 ;;
    *[!A-Za-z0-9+/=_.-]*)
        echo "s3-start: s3_secret_access_key must be letters, digits and + / = _ . - (a hex string will do)" >&2
        exit 1 ;;
esac
[ "${#secret}" -ge 16 ] || { echo "s3-start: s3_secret_access_key is shorter than 16 characters" >&2; exit 1; }

umask 077
cat > "$S3_CONFIG_FILE" <<JSON
{
  "identities": [
    {
      "name": "diffusetv",
      "credentials": [{"accessKey": "$access_key", "secretKey": "$secret"}],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
JSON
exec "$WEED" -logtostderr=true "$@" -s3.config="$S3_CONFIG_FILE"
