"""Webhook signatures, as the Standard Webhooks specification writes them (standardwebhooks.com, spec v1).

A secret is `whsec_` + base64 of 24 to 64 random bytes. A message is signed with HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}`, and `webhook-signature` is `v1,` + base64 of the MAC; during a rotation a
message carries one signature per secret, separated by spaces (the spec's rotation). One secret per owner (an API
key's owner id, app.auth.owner_id), from a JSON file, or one global secret when the API runs without keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
from pathlib import Path

log = logging.getLogger("diffusetv.webhooks")
PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64


def new_secret() -> str:
    """A fresh secret: `whsec_` + base64 of 32 random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_…` secret holds; ValueError for anything else."""
    if not secret.startswith(PREFIX):
        raise ValueError(f"a webhook secret starts with {PREFIX!r} (diffusetv webhook-secret makes one)")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ + standard base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"a webhook secret holds {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {len(key)}")
    return key


def parse_secrets(text: str) -> list[bytes]:
    """The keys of one or more secrets separated by spaces or commas (several during a rotation)."""
    return [secret_key(s) for s in text.replace(",", " ").split()]


def read_secrets_file(path: Path) -> dict[str, list[bytes]]:
    """WEBHOOK_SECRETS_FILE: a JSON object {owner id: secret, or a list of them during a rotation}."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path} must hold a JSON object {{owner id: secret}}")
    keys = {}
    for owner, value in table.items():
        listed = [value] if isinstance(value, str) else value
        if not isinstance(listed, list) or not listed or not all(isinstance(v, str) for v in listed):
            raise ValueError(f"{path}: the secret of {owner!r} is a string or a list of strings")
        keys[str(owner)] = [secret_key(v) for v in listed]
    return keys


class SecretsFile:
    """WEBHOOK_SECRETS_FILE, read again only when its (mtime, size) changes: cheap enough for every attempt. A file
    that no longer parses (half written during an edit) keeps the last good table and is logged once per change."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cached: dict[Path, tuple[tuple[int, int], dict[str, list[bytes]]]] = {}

    def table(self, path: Path) -> dict[str, list[bytes]]:
        path = Path(path)
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = (-1, -1)
        with self.lock:
            held = self.cached.get(path)
            if held is not None and held[0] == stamp:
                return held[1]
            try:
                table = read_secrets_file(path)
            except ValueError as exc:
                if held is None:
                    raise
                log.error("webhook secrets: %s; keeping the last good table", exc)
                table = held[1]
            self.cached[path] = (stamp, table)
            return table


SECRETS = SecretsFile()


def keys_for(settings, owner: str) -> list[bytes]:
    """The keys that sign `owner`'s webhooks. A job made with an API key (owner != '') is signed with its owner's own
    secret from WEBHOOK_SECRETS_FILE, whether or not this process has API keys (the notifier has none); it is never
    signed with the global secret. A job made without keys (owner '') is signed with WEBHOOK_SECRET. [] when it has
    none (a webhook is then refused at submit, and a delivery fails)."""
    if owner:
        if settings.webhook_secrets_file is None:
            return []
        return SECRETS.table(settings.webhook_secrets_file).get(owner, [])
    if settings.keys:
        return []
    return parse_secrets(settings.webhook_secret or "")


def signature(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: `v1,<base64 HMAC-SHA256 of id.timestamp.body>` for each key, separated by spaces."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode() for k in keys)


def headers(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt, signed at its own `timestamp` (epoch seconds)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(keys, msg_id, timestamp, body),
    }
