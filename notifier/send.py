"""One webhook attempt: resolve the host once, check every address, and connect to the address that was checked.

The host of a delivery URL is resolved at each attempt (the resolver is injectable; by default getaddrinfo). Every
address must pass app.core.addresses.delivery_refusal, else the attempt fails, naming the check, and nothing connects.
The request then goes to the first address, written into the URL, with the name in `Host` and, for https, as the TLS
server name (SNI), so the certificate is verified against the name: a second lookup (DNS rebinding) or a proxy
setting (`trust_env=False`) never decides where the bytes go. No redirect is followed, one deadline bounds the whole
attempt (resolving, connecting, sending and reading: a read timeout alone is per chunk, so a trickling receiver could
hold a sender), at most WEBHOOK_MAX_RESPONSE_BYTES of the answer are read, and one notifier holds at most
WEBHOOK_PER_HOST attempts to one host and WEBHOOK_CONCURRENCY in all. Each attempt opens its own connection.

Errors are recorded in generic words ("connection refused", "timed out"): never an address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import httpx

from app.core.addresses import Address, delivery_refusal, literal
from notifier.schedule import retried

Resolver = Callable[[str, int], list[str]]  # (host, port) -> addresses, as text


def user_agent() -> str:
    try:
        return f"DiffuseTV-Webhook/{version('diffusetv')}"
    except PackageNotFoundError:
        return "DiffuseTV-Webhook"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address getaddrinfo gives for `host`, in its order, once each."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Result:
    """What one attempt got: the receiver's status code, or an error in generic words."""

    status_code: int | None = None
    error: str | None = None
    retry_after: str | None = None
    retryable: bool = False  # an error that is tried again (connection errors, timeouts); answers: see `retried`

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code <= 299

    @property
    def gone(self) -> bool:
        return self.status_code == 410

    @property
    def retried(self) -> bool:
        return retried(self.status_code) if self.status_code is not None else self.retryable


class HostBusy(Exception):
    """WEBHOOK_PER_HOST attempts to this host are in flight, and none ended within the wait."""


class Sender:
    """Sends attempts within the notifier's bounds; one per `send` call."""

    def __init__(self, settings, resolve: Resolver = system_resolver, verify: ssl.SSLContext | bool = True) -> None:
        self.settings = settings
        self.resolve = resolve
        self.allowed = settings.webhook_nets
        self.client = httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            verify=verify,
            timeout=settings.webhook_timeout_s,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),  # one connection per attempt
        )
        self.all = asyncio.Semaphore(settings.webhook_concurrency)
        self.hosts: dict[str, tuple[asyncio.Semaphore, int]] = {}
        self.agent = user_agent()
        # the resolver's own threads: a hung getaddrinfo never takes a thread that Redis calls (claim, finish) need
        self.resolvers = ThreadPoolExecutor(settings.webhook_concurrency, thread_name_prefix="notifier-dns")

    async def close(self) -> None:
        await self.client.aclose()
        self.resolvers.shutdown(wait=False, cancel_futures=True)

    @asynccontextmanager
    async def host_slot(self, host: str, wait_s: float):
        """One of the host's WEBHOOK_PER_HOST slots (HostBusy when none comes free within `wait_s`)."""
        gate, users = self.hosts.get(host) or (asyncio.Semaphore(self.settings.webhook_per_host), 0)
        self.hosts[host] = (gate, users + 1)
        try:
            if gate.locked():
                try:
                    await asyncio.wait_for(gate.acquire(), max(wait_s, 0.001))
                except TimeoutError:
                    raise HostBusy(host) from None
            else:
                await gate.acquire()
            try:
                yield
            finally:
                gate.release()
        finally:
            gate, users = self.hosts[host]
            if users <= 1:
                del self.hosts[host]
            else:
                self.hosts[host] = (gate, users - 1)

    async def send(self, url: str, headers: dict[str, str], body: bytes, host_wait_s: float = 0.0) -> Result:
        """POST `body` to `url` once, within the attempt's deadline; HostBusy before anything is sent when the host
        has no free slot within `host_wait_s`."""
        try:
            target = httpx.URL(url)
            host = target.raw_host.decode("ascii").lower()
        except (httpx.InvalidURL, UnicodeError):
            return Result(error="not a valid URL")
        if target.scheme not in ("http", "https") or not host:
            return Result(error="not an absolute http(s) URL")
        async with self.host_slot(host, host_wait_s), self.all:  # a busy host never holds a global slot
            try:
                async with asyncio.timeout(self.settings.webhook_timeout_s):
                    return await self._attempt(target, host, headers, body)
            except TimeoutError:
                return Result(error="timed out", retryable=True)

    async def addresses(self, host: str, port: int) -> list[Address]:
        """The host's addresses: the one it writes, or the resolver's answer."""
        written = literal(host)
        if written is not None:
            return [written]
        found = await asyncio.get_running_loop().run_in_executor(self.resolvers, self.resolve, host, port)
        return [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]

    async def _attempt(self, target: httpx.URL, host: str, headers: dict[str, str], body: bytes) -> Result:
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            found = await self.addresses(host, port)
        except (OSError, UnicodeError, ValueError):
            return Result(error="the host name did not resolve", retryable=True)
        refused = delivery_refusal(target.scheme, found, self.allowed)
        if refused is None and any(a.version == 6 and a.is_link_local for a in found):
            refused = "a link-local IPv6 address (dialling it needs a zone, which a URL cannot carry)"  # even allowed
        if refused is not None:
            return Result(error=f"refused: {refused}")
        pinned = target.copy_with(host=str(found[0]))  # the address that was checked, never a second lookup's
        sent_headers = {
            **headers,
            "host": target.netloc.decode("ascii"),
            "content-type": "application/json",
            "user-agent": self.agent,
        }
        extensions = {"sni_hostname": host} if target.scheme == "https" else {}
        try:
            async with self.client.stream(
                "POST", pinned, content=body, headers=sent_headers, extensions=extensions
            ) as response:
                await self._drain(response)
                return Result(status_code=response.status_code, retry_after=response.headers.get("retry-after"))
        except httpx.TimeoutException:
            return Result(error="timed out", retryable=True)
        except httpx.ConnectError as exc:
            return Result(error=connect_error(exc), retryable=True)
        except httpx.HTTPError:
            return Result(error="the receiver broke off the exchange", retryable=True)

    async def _drain(self, response: httpx.Response) -> None:
        """Read the answer up to WEBHOOK_MAX_RESPONSE_BYTES (undecoded), and no further."""
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= self.settings.webhook_max_response_bytes:
                break


def connect_error(exc: BaseException) -> str:
    """A connection failure in generic words (the exception's own text may name an address)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return "TLS handshake failed (is the certificate valid for the host name?)"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "ssl" in text or "certificate" in text or "tls" in text:
        return "TLS handshake failed (is the certificate valid for the host name?)"
    return "could not connect"
