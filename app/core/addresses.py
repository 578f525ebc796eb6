"""Where a webhook may go: public addresses only, unless an operator allows a network (SSRF protection).

An address is judged after unmapping the IPv4 address an IPv6 one may carry (::ffff:a.b.c.d, NAT64 64:ff9b::/96 and
the local-use 64:ff9b:1::/48, 6to4 2002::/16, Teredo, IPv4-compatible ::a.b.c.d), so that no wrapping reaches a private
host. It is allowed when it lies in one of WEBHOOK_ALLOW_NETS, or when it is public: in none of NOT_GLOBAL (IANA's
special-purpose ranges that are not globally reachable, RFC 6890 and its updates: loopback, private, link-local,
shared, documentation, benchmarking, multicast, reserved, local-use NAT64, IPv4-translated ::ffff:0:a.b.c.d), global
by `ipaddress` too, and not one of the cloud metadata addresses. The table is explicit because `is_global` changed
across patch releases of Python (gh-113171). A host is refused when any of its addresses is: the notifier then
connects to an address it checked (notifier.send), never to a second lookup's answer.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_CHARS = 2048
NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: the IPv4 address in the low 32 bits
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765's ::ffff:0:a.b.c.d
NOT_GLOBAL: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::/128",
        "::1/128",
        "::ffff:0:0/96",  # IPv4-mapped: judged by the address it carries, never as itself
        str(IPV4_TRANSLATED),
        str(LOCAL_NAT64),
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo's 2001::/32 among them)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # segment routing SIDs (RFC 9602)
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
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
    if address in NAT64 or address in LOCAL_NAT64 or address in IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in IPV4_COMPATIBLE and int(address) > 1:
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
    if not public(address):
        return "the address is not public (loopback, private, link-local or reserved), and not in WEBHOOK_ALLOW_NETS"
    return None


def public(address: Address) -> bool:
    """Whether `address` is globally reachable: neither it nor the IPv4 address it carries lies in NOT_GLOBAL (a
    wrapper only as local as the local-use NAT64 or IPv4-translated prefixes is refused whatever it carries), and
    `ipaddress` finds both global."""
    inner = unmapped(address)
    wrapped = address if inner is address or address in LOCAL_NAT64 or address in IPV4_TRANSLATED else None
    if any(inner in net or (wrapped is not None and wrapped in net) for net in NOT_GLOBAL):
        return False
    return inner.is_global and (wrapped is None or wrapped.is_global)


def literal(host: str) -> Address | None:
    """The address `host` writes, in any form getaddrinfo takes as numeric (`127.1`, `0x7f000001`, `2130706433`,
    `[::1]`, and each with one trailing dot, `127.0.0.1.`, which the resolver maps to the address), or None for a
    name."""
    host = host.strip("[]")
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
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
