"""Who a client is, for its quotas and stream cap: its API key when keys are set, else its address.

The peer address is the TCP peer's, unless that peer is one of TRUSTED_PROXIES: only then is the last
address in X-Forwarded-For believed (the one that proxy added). A client cannot pick its own identity.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import OwnerDep
from app.deps import SettingsDep


def peer_address(request: Request, trusted: frozenset[str]) -> str:
    peer = request.client.host if request.client else ""
    if peer in trusted:
        forwarded = [a.strip() for a in request.headers.get("x-forwarded-for", "").split(",") if a.strip()]
        if forwarded:
            return forwarded[-1]
    return peer


def client_id(request: Request, owner: OwnerDep, settings: SettingsDep) -> str:
    """`key:<owner hash>` with API keys, else `addr:<address>`."""
    if owner:
        return f"key:{owner}"
    return f"addr:{peer_address(request, settings.proxies)}"


ClientDep = Annotated[str, Depends(client_id)]
