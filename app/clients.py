"""Who a client is, for its quotas and stream cap: its API key when keys are set, else where it connects from.

The address is the TCP peer's (app/peers.py puts it back if the server in front rewrote it), unless that peer is
one of TRUSTED_PROXIES: then X-Forwarded-For is read from its end, past every trusted proxy, and the first address
that is not one is the client's. A client that connects directly is its peer address, whatever its headers say.

Without keys, an address is counted by its network: the whole loopback range (127.0.0.0/8 and ::1) is one client,
an IPv4 address is one, and an IPv6 address counts as its /64 (what one host is usually given). A client can pick
its source address within what it holds; none of those choices is a new identity.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import Depends, Request

from app.auth import OwnerDep
from app.deps import SettingsDep

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPV6_CLIENT_PREFIX = 64


def parse_address(text: str) -> Address | None:
    """The IP address in `text` (an IPv4-mapped IPv6 address as its IPv4 one), or None when it is not one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Address | None, proxies: list[Network]) -> bool:
    return address is not None and any(address in network for network in proxies)


def peer_address(request: Request, proxies: list[Network]) -> str:
    """The client's address: the peer's, or, behind trusted proxies, the last X-Forwarded-For entry not one of them."""
    peer = request.client.host if request.client else ""
    forwarded = [a.strip() for line in request.headers.getlist("x-forwarded-for") for a in line.split(",")]
    hops = [a for a in forwarded if a]
    while is_trusted(parse_address(peer), proxies) and hops:
        hop = hops.pop()
        if parse_address(hop) is None:  # not an address: the last trusted proxy is all that is known
            break
        peer = hop
    return peer


def client_network(address: str) -> str:
    """The identity of an address without keys: `loopback`, the IPv4 address, or the IPv6 address's /64."""
    parsed = parse_address(address)
    if parsed is None:
        return address  # not an IP address (a Unix socket's peer, a test client): as it is
    if parsed.is_loopback:
        return "loopback"
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network((parsed, IPV6_CLIENT_PREFIX), strict=False))
    return str(parsed)


def client_id(request: Request, owner: OwnerDep, settings: SettingsDep) -> str:
    """`key:<owner hash>` with API keys, else `addr:<network>`."""
    if owner:
        return f"key:{owner}"
    return f"addr:{client_network(peer_address(request, settings.proxies))}"


ClientDep = Annotated[str, Depends(client_id)]
