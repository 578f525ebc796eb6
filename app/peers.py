"""A request's client address is its connection's peer, whatever the server in front made of X-Forwarded-For.

uvicorn, by default, rewrites the ASGI scope's `client` from X-Forwarded-For for requests from its
`forwarded_allow_ips` (127.0.0.1 and ::1 unless told otherwise), before the app sees them. `diffusetv api` turns
that off, but `uvicorn app.main:app` started by hand has it on, and then any local process could name itself.
Which proxies to believe is the app's decision (TRUSTED_PROXIES, app/clients.py), so the outermost middleware
puts the connection's own peer back. uvicorn's `receive` is a method of the request's cycle, which holds the
connection's transport; under a server that has no such thing (or a test client) the scope is left as it is.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


def transport_peer(receive: Receive) -> tuple[str, int] | None:
    """The (host, port) of the connection that `receive` reads from, when the server lets it be known."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple | list) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return None


class TransportPeer:
    """Sets the scope's `client` to the connection's peer (in place: uvicorn's access log reads the same scope)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = transport_peer(receive)
            if peer is not None:
                scope["client"] = peer
        await self.app(scope, receive, send)
