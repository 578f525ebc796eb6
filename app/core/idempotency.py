"""The Idempotency-Key header (IETF draft "The Idempotency-Key HTTP Header Field"): its value and a request's
fingerprint. The submit script (app.core.submit) keeps, per client and key, the fingerprint and the jobs of the
submission the key admitted: the same request again gets those jobs, another request with the key is refused."""

from __future__ import annotations

import hashlib
import json
import re

MAX_KEY_CHARS = 255
_BARE = re.compile(r"[\x21\x23-\x7e]+")  # visible ASCII but a double quote
_QUOTED = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')  # a structured-field string (RFC 8941)


def parse_key(value: str) -> str | None:
    """The key a header value holds, quoted (`"abc"`, the draft's sf-string, with `\\"` and `\\\\` escapes) or bare
    (`abc`, no `"` in it): 1 to MAX_KEY_CHARS visible ASCII characters (a quoted key may hold spaces). None when it
    is not one."""
    value = value.strip(" \t")
    if quoted := _QUOTED.fullmatch(value):
        key = re.sub(r"\\(.)", r"\1", quoted.group(1))
    elif _BARE.fullmatch(value):
        key = value
    else:
        return None
    return key if 0 < len(key) <= MAX_KEY_CHARS else None


def fingerprint(route: str, body: dict) -> str:
    """sha256 of the route and the canonical JSON of the validated body (defaults filled in, keys sorted), before any
    server-drawn seed: the same request sent twice has one fingerprint, whatever its JSON's spacing or order."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{route}\n{canonical}".encode()).hexdigest()
