#!/bin/sh
# Starts redis-server with an ACL file made from the secret files, so that no password is in a command
# line, an environment variable or `docker inspect`:
#
#   user default      off (no unauthenticated, all-powerful user)
#   user diffusetv    the API, the workers, the notifier: their keys (diffusetv:*, rq:*) and RQ's pub/sub channels
#                     (rq:*), every command but the dangerous ones, plus INFO and CLIENT SETNAME/LIST,
#                     which RQ calls
#   user admin        operators (redis-cli --user admin): everything
#
# The ACL file lives in a tmpfs (ACL_FILE) and is written with umask 077. A placeholder or short password
# stops the start. Arguments are passed on to redis-server.
set -eu
SECRETS_DIR="${SECRETS_DIR:-/run/secrets}"
ACL_FILE="${ACL_FILE:-/tmp/users.acl}"
REDIS_SERVER="${REDIS_SERVER:-redis-server}"

read_secret() {
    [ -r "$SECRETS_DIR/$1" ] || { echo "redis-start: no readable secret $SECRETS_DIR/$1 (docs/OPERATIONS.md: secrets)" >&2; exit 1; }
    secret="$(head -n 1 "$SECRETS_DIR/$1" | tr -d '\r\n')"
    case "$secret" in
        *change-me*|*changeme*|*replace-me*|*placeholder*)
            echo "redis-start: $1 is a placeholder; generate one: python3 -c 'import secrets; print(secrets.token_hex(24))'" >&2
            exit 1 ;;
    esac
    case "$secret" in
        *" "*|*"	"*) echo "redis-start: $1 contains whitespace" >&2; exit 1 ;;
    esac
    [ "${#secret}" -ge 16 ] || { echo "redis-start: $1 is shorter than 16 characters" >&2; exit 1; }
    printf '%s' "$secret"
}

service_password="$(read_secret redis_password)"
admin_password="$(read_secret redis_admin_password)"
umask 077
cat > "$ACL_FILE" <<ACL
user default off
user diffusetv on >$service_password ~diffusetv:* ~rq:* &rq:* &diffusetv:* +@all -@dangerous +info +client|setname +client|getname +client|list +client|id
user admin on >$admin_password ~* &* +@all
ACL
exec "$REDIS_SERVER" --aclfile "$ACL_FILE" "$@"
