"""Model references: `name` (its highest version) or `name@version`."""

from __future__ import annotations

import re

from model_store.errors import ModelStoreError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VERSION_RE = re.compile(r"[1-9][0-9]{0,8}")


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None and name not in (".", "..")


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'name' -> (name, None); 'name@3' -> (name, 3). Anything else is rejected before any file is read."""
    name, sep, version = ref.partition("@")
    if not valid_name(name) or (sep and VERSION_RE.fullmatch(version) is None):
        raise ModelStoreError(
            f"bad model reference {ref!r}: expected NAME or NAME@VERSION, "
            "NAME matching [a-z0-9][a-z0-9._-]{0,63} and VERSION a positive integer"
        )
    return name, int(version) if sep else None
