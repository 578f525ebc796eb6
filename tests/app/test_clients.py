"""Who a client is without keys: its connection's peer, X-Forwarded-For only from TRUSTED_PROXIES, and one identity
per loopback range, IPv4 address or IPv6 /64. In process for the rules, and against a real `diffusetv api` and a
`uvicorn app.main:app` started by hand, whose proxy headers would otherwise believe any local client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest
from starlette.requests import Request

from app.clients import client_network, peer_address
from app.core.settings import Settings
from helpers import REPO, claim_as_worker
from stack import Stack, cli, free_port, stack_env

SPOOFS = [f"203.0.113.{i}" for i in range(1, 7)]  # six different X-Forwarded-For values from one local client


def request(peer: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (peer, 40000)})


def proxies(value: str):
    return Settings(trusted_proxies=value).proxies


@pytest.mark.parametrize(
    ("address", "client"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.2", "loopback"),
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ],
)
def test_an_anonymous_client_is_its_loopback_range_ipv4_address_or_ipv6_64(address, client):
    assert client_network(address) == client


def test_x_forwarded_for_counts_only_from_trusted_proxies_given_as_addresses_or_networks():
    trusted = proxies("10.0.0.0/8, 127.0.0.1")
    assert peer_address(request("192.0.2.1", "198.51.100.9"), trusted) == "192.0.2.1"  # not a proxy: its own address
    assert peer_address(request("127.0.0.2", "198.51.100.9"), trusted) == "127.0.0.2"  # 127.0.0.1 is, .2 is not
    assert peer_address(request("127.0.0.1", "198.51.100.9"), trusted) == "198.51.100.9"
    assert peer_address(request("10.1.2.3", "198.51.100.9"), trusted) == "198.51.100.9"
    # a chain of trusted proxies: the last address that is not one of them; what the client wrote before it is not read
    chain = request("10.0.0.3", "1.1.1.1, 198.51.100.9", "10.0.0.2")
    assert peer_address(chain, trusted) == "198.51.100.9"
    assert peer_address(request("10.0.0.3", "junk, 10.0.0.2"), trusted) == "10.0.0.2"  # not an address: stop there
    assert peer_address(request("10.0.0.3"), trusted) == "10.0.0.3"  # no header: the proxy itself


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("10.0.0.1/8", "DIFFUSETV_TRUSTED_PROXIES: 10.0.0.1/8 has host bits set"),
        ("proxy.local", "DIFFUSETV_TRUSTED_PROXIES: 'proxy.local' does not appear to be an IPv4 or IPv6 network"),
    ],
)
def test_a_bad_trusted_proxy_is_refused_at_start(value, problem):
    env = {**os.environ, "DIFFUSETV_TRUSTED_PROXIES": value, "DIFFUSETV_PORT": str(free_port())}
    try:
        proc = subprocess.run(cli(["diffusetv", "api"]), env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the API started with DIFFUSETV_TRUSTED_PROXIES={value}")
    assert proc.returncode == 2 and problem in proc.stderr, proc.stderr


async def spoofed_submits(base: str, source: str = "127.0.0.1") -> list[int]:
    """Six POSTs from one local client (one connection each), each with its own X-Forwarded-For."""
    async with httpx.AsyncClient(base_url=base, transport=httpx.AsyncHTTPTransport(local_address=source)) as c:
        answers = [
            await c.post("/generate", json={"seed": 100 + i}, headers={"X-Forwarded-For": spoof, "Connection": "close"})
            for i, spoof in enumerate(SPOOFS)
        ]
    return [r.status_code for r in answers]


async def spoofed_long_polls(base: str, job_id: str) -> list[int]:
    """Three long polls of one queued job at once, each with its own X-Forwarded-For."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        polls = [
            c.get(f"/jobs/{job_id}", params={"wait": 3}, headers={"X-Forwarded-For": spoof}) for spoof in SPOOFS[:3]
        ]
        return sorted(r.status_code for r in await asyncio.gather(*polls))


@pytest.fixture
def api(tiny_store, redis_server, tmp_path):
    """Starts the API (`diffusetv api`, or uvicorn by hand) as a real process without a worker: a stand-in claim of
    tiny@1 lets jobs be accepted, and they stay queued."""
    stacks = []
    claim_as_worker(redis_server.url)

    def start(command: str, **env: str) -> Stack:
        s = Stack(stack_env(redis_server.url, tiny_store.root, **env), free_port(), tmp_path)
        stacks.append(s)
        if command == "diffusetv api":
            s.start_api()
        else:
            uvicorn = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(s.port)]
            log = (tmp_path / "api.log").open("ab")
            s.procs["api"] = subprocess.Popen(
                uvicorn, env=s.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        s.wait_healthy()
        return s

    yield start
    for s in stacks:
        s.stop_all()


@pytest.mark.parametrize("command", ["diffusetv api", "uvicorn by hand"])
def test_x_forwarded_for_from_a_local_client_is_no_new_identity(api, command):
    # uvicorn started by hand believes X-Forwarded-For from every address when told so; the app still does not
    s = api(command, DIFFUSETV_CLIENT_JOBS="3", DIFFUSETV_CLIENT_STREAMS="2", FORWARDED_ALLOW_IPS="*")
    statuses = asyncio.run(spoofed_submits(s.base))
    assert statuses == [202, 202, 202, 429, 429, 429], statuses
    # another loopback address is the same client: its quota is spent too
    assert asyncio.run(spoofed_submits(s.base, source="127.0.0.2")) == [429] * 6
    assert "Traceback" not in s.log("api")


def test_long_polls_with_spoofed_addresses_share_one_stream_cap(api):
    s = api("uvicorn by hand", DIFFUSETV_CLIENT_STREAMS="2", FORWARDED_ALLOW_IPS="*")
    job_id = httpx.post(f"{s.base}/generate", json={"seed": 7}).json()["id"]  # no worker: it stays queued
    assert asyncio.run(spoofed_long_polls(s.base, job_id)) == [200, 200, 429]


def test_a_trusted_local_proxy_names_its_clients(api):
    s = api("diffusetv api", DIFFUSETV_CLIENT_JOBS="1", DIFFUSETV_TRUSTED_PROXIES="127.0.0.1")
    assert asyncio.run(spoofed_submits(s.base)) == [202] * 6  # six clients behind the proxy, one job each
    with httpx.Client(base_url=s.base) as c:
        again = c.post("/generate", json={"seed": 9}, headers={"X-Forwarded-For": SPOOFS[0]})
        assert again.status_code == 429, again.text  # the first of them has spent its quota
    # a local client at another loopback address is not the proxy: its own header is not read
    assert asyncio.run(spoofed_submits(s.base, source="127.0.0.2")) == [202, 429, 429, 429, 429, 429]
