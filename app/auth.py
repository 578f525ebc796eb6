"""Bearer-key authentication: on when DIFFUSETV_API_KEYS is set. A job belongs to the key that made it.

Keys are compared in constant time (hmac.compare_digest, against every configured key, without
stopping at a match), never logged, and stored nowhere: a job records only a hash of its key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.deps import SettingsDep

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def owner_id(key: str) -> str:
    """The stored owner of a job: a hash of the key, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def constant_time_match(token: str, keys: list[str]) -> bool:
    matched = False
    for key in keys:  # every key is compared, so the time does not tell which one (or whether one) matched
        matched |= hmac.compare_digest(token.encode(), key.encode())
    return matched


BEARER = HTTPBearer(auto_error=False, description="one of DIFFUSETV_API_KEYS, when keys are configured")


def require_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
) -> str:
    """The caller's owner id ('' when auth is off); 401 for a missing or wrong key."""
    keys = settings.keys
    if not keys:
        return ""
    if credentials is None or not credentials.credentials:
        raise HTTPException(401, "missing bearer key: send 'Authorization: Bearer <key>'", headers=CHALLENGE)
    token = credentials.credentials.strip()
    if not constant_time_match(token, keys):
        raise HTTPException(401, "wrong key", headers=CHALLENGE)
    return owner_id(token)


OwnerDep = Annotated[str, Depends(require_key)]
