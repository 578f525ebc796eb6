"""Where a webhook may go: public addresses only, unless an operator allows a network (SSRF protection).

An address is judged after unmapping the IPv4 address an IPv6 one may carry (::ffff:a.b.c.d, NAT64 64:ff9b::/96,
6to4 2002::/16, Teredo, IPv4-compatible ::a.b.c.d), so that no wrapping reaches a private host. It is allowed when it
lies in one of WEBHOOK_ALLOW_NETS, or when it is global (`ipaddress`'s is_global: no loopback, private, link-local,
shared or reserved range) and not one of the cloud metadata addresses. A host is refused when any of its addresses
is: the notifier then connects to an address it checked (notifier.send), never to a second lookup's answer.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_CHARS = 2048
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
METADATA = frozenset(  # cloud metadata endpoints, refused even where an allow-list would admit them
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "168.63.129.16", "192.0.0.192", "fd00:ec2::254")
)


def unmapped(address: Address) -> Address:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo's client, IPv4-compatible), else it."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return address


def refusal(address: Address, allowed: list[Network]) -> str | None:
    """Why a webhook may not connect to `address` (None: it may)."""
    inner = unmapped(address)
    if address in METADATA or inner in METADATA:
        return "the address is a cloud metadata endpoint"
    if allowed_net(address, allowed):
        return None
    if not inner.is_global or (inner is address and not address.is_global):
        return "the address is not public (loopback, private, link-local or reserved), and not in WEBHOOK_ALLOW_NETS"
    return None


def literal(host: str) -> Address | None:
    """The address `host` writes, in any form getaddrinfo takes as numeric (`127.1`, `0x7f000001`, `2130706433`,
    `[::1]`), or None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(infos[0][4][0]) if infos else None


def url_refusal(url: str, allowed: list[Network]) -> str | None:
    """Why a webhook URL is refused at submit (None: accepted): not an absolute http(s) URL, credentials in it, a
    literal address that `refusal` refuses, or plain http to a literal address outside WEBHOOK_ALLOW_NETS. A name is
    checked when each delivery resolves it (`delivery_refusal`)."""
    if len(url) > MAX_URL_CHARS:
        return f"at most {MAX_URL_CHARS} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "an absolute https:// URL"
    if parts.username is not None or parts.password is not None:
        return "no user name or password in the URL (the signature authenticates the sender)"
    if parts.fragment:
        return "no #fragment"
    del port
    address = literal(parts.hostname)
    if address is not None and (why := refusal(address, allowed)):
        return why
    if parts.scheme == "http" and address is not None and not allowed_net(address, allowed):
        return PLAIN_HTTP
    return None


PLAIN_HTTP = "plain http only to an address of WEBHOOK_ALLOW_NETS; use https"


def allowed_net(address: Address, allowed: list[Network]) -> bool:
    return any(unmapped(address) in net or address in net for net in allowed)


def delivery_refusal(scheme: str, addresses: list[Address], allowed: list[Network]) -> str | None:
    """Why a delivery may not connect to a host that resolved to `addresses` (None: it may, to any of them): one
    refused address refuses the host, and plain http needs every address in WEBHOOK_ALLOW_NETS."""
    if not addresses:
        return "the host has no address"
    for address in addresses:
        if why := refusal(address, allowed):
            return why
        if scheme == "http" and not allowed_net(address, allowed):
            return PLAIN_HTTP
    return None
