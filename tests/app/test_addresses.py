"""app.core.addresses: which addresses a webhook may reach, in every form an address can be written or wrapped in."""

from __future__ import annotations

import ipaddress

import pytest

from app.core.addresses import literal, refusal, url_refusal

NOT_PUBLIC = "the address is not public"
METADATA = "the address is a cloud metadata endpoint"


def ip(text: str):
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("93.184.215.14", None),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", None),
        ("64:ff9b::5db8:d70e", None),  # NAT64 of a public address
        ("127.0.0.1", NOT_PUBLIC),
        ("10.1.2.3", NOT_PUBLIC),
        ("100.64.0.1", NOT_PUBLIC),
        ("192.0.2.7", NOT_PUBLIC),
        ("198.18.0.1", NOT_PUBLIC),
        ("224.0.0.1", NOT_PUBLIC),
        ("255.255.255.255", NOT_PUBLIC),
        ("::1", NOT_PUBLIC),
        ("::", NOT_PUBLIC),
        ("fe80::1", NOT_PUBLIC),
        ("fd00::1", NOT_PUBLIC),
        ("2001:db8::1", NOT_PUBLIC),
        ("3fff::1", NOT_PUBLIC),
        ("5f00::1", NOT_PUBLIC),
        ("100::1", NOT_PUBLIC),
        ("ff02::1", NOT_PUBLIC),
        ("::ffff:127.0.0.1", NOT_PUBLIC),  # IPv4-mapped
        ("::127.0.0.1", NOT_PUBLIC),  # IPv4-compatible
        ("64:ff9b::a00:1", NOT_PUBLIC),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", NOT_PUBLIC),  # 6to4 of 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", NOT_PUBLIC),  # Teredo, its client 127.0.0.1
        ("64:ff9b:1::a00:1", NOT_PUBLIC),  # local-use NAT64 of 10.0.0.1
        ("64:ff9b:1::5db8:d70e", NOT_PUBLIC),  # local-use NAT64 is local, whatever it carries
        ("::ffff:0:a00:1", NOT_PUBLIC),  # IPv4-translated 10.0.0.1
        ("::ffff:0:5db8:d70e", NOT_PUBLIC),  # IPv4-translated is never routed on the internet
        ("169.254.169.254", METADATA),
        ("64:ff9b:1::a9fe:a9fe", METADATA),  # the metadata endpoint through a local NAT64
        ("::ffff:0:a9fe:a9fe", METADATA),
        ("64:ff9b::a9fe:a9fe", METADATA),
        ("fd00:ec2::254", METADATA),
    ],
)
def test_an_address_is_judged_by_what_it_carries(address, why):
    refused = refusal(ip(address), [])
    if why is None:
        assert refused is None
    else:
        assert refused is not None and refused.startswith(why), refused


def test_an_allowed_network_admits_a_local_nat64_address_but_never_metadata():
    allowed = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("169.254.0.0/16")]
    assert refusal(ip("64:ff9b:1::a00:1"), allowed) is None
    assert refusal(ip("64:ff9b:1::a9fe:a9fe"), allowed) == METADATA


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),  # a trailing dot: the resolver maps it to the address
        ("127.1.", "127.0.0.1"),
        ("0x7f000001.", "127.0.0.1"),
        ("2130706433.", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:0:a00:1", "::ffff:0:a00:1"),
        ("example.com", None),
        ("example.com.", None),
        ("127.0.0.1..", None),
    ],
)
def test_a_literal_is_read_in_every_numeric_form(host, address):
    assert literal(host) == (ip(address) if address else None)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1./x",
        "https://127.1./x",
        "https://[64:ff9b:1::a00:1]/x",
        "https://[::ffff:0:a00:1]/x",
    ],
)
def test_a_url_to_a_refused_literal_is_refused_at_submit(url):
    assert url_refusal(url, []).startswith(NOT_PUBLIC)
