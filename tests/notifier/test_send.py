"""One attempt (notifier.send): the address that was checked is the one connected to, and nothing else is."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from webhooks import Answer, Listener, Receiver, settings

from helpers import require
from notifier.send import HostBusy, Sender

NOT_PUBLIC = "refused: the address is not public"
BODY = b'{"type":"job.completed"}'


def send(sender: Sender, url: str, body: bytes = BODY, host_wait_s: float = 0.0):
    async def go():
        try:
            return await sender.send(url, {"webhook-id": "msg_x_1"}, body, host_wait_s=host_wait_s)
        finally:
            await sender.close()

    return asyncio.run(go())


class Stub:
    """A resolver that answers from a list, one answer per call (the last repeats), and counts its calls."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers, self.calls = list(answers), []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def test_a_name_that_resolves_to_a_refused_address_is_never_connected_to():
    """The allow-list empty, a stub resolving the name to 127.0.0.1: the attempt fails naming the check, and a
    listener on that address sees no connection."""
    with Listener("127.0.0.1") as listener:
        stub = Stub(["127.0.0.1"])
        sender = Sender(settings("redis://127.0.0.1:1/0", webhook_allow_nets=""), resolve=stub)
        port = listener.port
        result = send(sender, f"http://hooks.test:{port}/hook")
    assert result.error.startswith(NOT_PUBLIC) and "WEBHOOK_ALLOW_NETS" in result.error
    assert result.status_code is None and not result.retried
    assert "127.0.0.1" not in result.error
    assert stub.calls == [("hooks.test", port)]
    assert listener.connections == 0


def test_dns_rebinding_connects_to_the_address_that_was_checked():
    """The stub answers an allowed address first and a refused one after: the attempt resolves once and connects to
    the address it checked; a listener on the second address (127.0.0.2, outside the allow-list) sees nothing."""
    with Receiver([200]) as receiver, Listener("127.0.0.2", receiver.port) as rebound:
        stub = Stub(["127.0.0.1"], ["127.0.0.2"])
        sender = Sender(settings("redis://127.0.0.1:1/0", webhook_allow_nets="127.0.0.1/32"), resolve=stub)
        result = send(sender, f"http://hooks.test:{receiver.port}/hook?x=1")
        [request] = receiver.wait_for(1)
    assert result.status_code == 200 and result.delivered
    assert len(stub.calls) == 1
    assert request.headers["host"] == f"hooks.test:{receiver.port}"  # the name, though the address was dialled
    assert request.path == "/hook?x=1" and request.body == BODY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("DiffuseTV-Webhook")
    assert rebound.connections == 0


def test_one_refused_address_among_several_refuses_the_host():
    with Receiver([200]) as receiver, Listener("127.0.0.2", receiver.port) as other:
        stub = Stub(["127.0.0.1", "127.0.0.2"])
        sender = Sender(settings("redis://127.0.0.1:1/0", webhook_allow_nets="127.0.0.1/32"), resolve=stub)
        result = send(sender, f"http://hooks.test:{receiver.port}/hook")
    assert result.error.startswith(NOT_PUBLIC)
    assert receiver.requests == [] and other.connections == 0


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "[::ffff:127.0.0.1]"])
def test_numeric_hosts_are_addresses_checked_without_a_lookup(host):
    with Listener("127.0.0.1") as listener:
        stub = Stub(["203.0.113.7"])
        sender = Sender(settings("redis://127.0.0.1:1/0", webhook_allow_nets=""), resolve=stub)
        result = send(sender, f"http://{host}:{listener.port}/hook")
    assert result.error.startswith(NOT_PUBLIC)
    assert stub.calls == [] and listener.connections == 0


def test_a_metadata_address_is_refused_even_when_allowed():
    stub = Stub(["169.254.169.254"])
    sender = Sender(settings("redis://127.0.0.1:1/0", webhook_allow_nets="169.254.0.0/16"), resolve=stub)
    result = send(sender, "http://metadata.test/latest")
    assert result.error == "refused: the address is a cloud metadata endpoint"


def test_plain_http_to_a_public_address_is_refused():
    stub = Stub(["93.184.215.14"])  # a public address (nothing connects: the check refuses first)
    sender = Sender(settings("redis://127.0.0.1:1/0", webhook_allow_nets=""), resolve=stub)
    assert send(sender, "http://public.test/hook").error.startswith("refused: plain http")


def test_a_name_that_does_not_resolve_is_retried():
    def fails(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    sender = Sender(settings("redis://127.0.0.1:1/0"), resolve=fails)
    result = send(sender, "http://nowhere.test/hook")
    assert result.error == "the host name did not resolve" and result.retried


def test_connection_refused_is_a_generic_retried_error():
    with Listener("127.0.0.1") as listener:
        port = listener.port
    sender = Sender(settings("redis://127.0.0.1:1/0"))
    result = send(sender, f"http://127.0.0.1:{port}/hook")
    assert result.error == "connection refused" and result.retried


def test_a_redirect_is_not_followed():
    with Receiver([200]) as target, Receiver([Answer(302, {"location": "x"})]) as receiver:
        receiver.answers = [Answer(302, {"location": target.url()})]
        result = send(Sender(settings("redis://127.0.0.1:1/0")), receiver.url())
        receiver.wait_for(1)
    assert result.status_code == 302 and not result.delivered and not result.retried
    assert target.requests == []


class Trickle(BaseHTTPRequestHandler):
    """Answers 200 at once, then its body one byte every 0.2 s for a minute."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "300")
        self.end_headers()
        try:
            for _ in range(300):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_one_deadline_bounds_a_trickling_receiver():
    """Each chunk comes well within a read timeout; the attempt's total deadline still ends it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sender = Sender(settings("redis://127.0.0.1:1/0", webhook_timeout_s=1, webhook_max_response_bytes=10_000))
        started = time.monotonic()
        result = send(sender, f"http://127.0.0.1:{server.server_address[1]}/hook")
        took = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert result.error == "timed out" and result.retried
    assert took < 30  # the body alone would take a minute


class Streamed(BaseHTTPRequestHandler):
    """Answers 200 with a 64 MB body written in 64 KB chunks, and records how many bytes it managed to write before
    the client hung up."""

    TOTAL, CHUNK = 64 * 2**20, 64 * 2**10
    written: ClassVar[list[int]] = []
    done: ClassVar[threading.Event] = threading.Event()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", str(self.TOTAL))
        self.end_headers()
        sent = 0
        try:
            while sent < self.TOTAL:
                self.wfile.write(b"y" * self.CHUNK)
                sent += self.CHUNK
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            Streamed.written.append(sent)
            Streamed.done.set()

    def log_message(self, *args):
        pass


def test_the_answer_is_read_only_up_to_the_cap():
    """The receiver could write 64 MB; the attempt reads 1 KB and hangs up, so the receiver's writes stop once the
    kernel's socket buffers (a few MB at most) are full."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Streamed)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sender = Sender(settings("redis://127.0.0.1:1/0", webhook_max_response_bytes=1024, webhook_timeout_s=60))
        result = send(sender, f"http://127.0.0.1:{server.server_address[1]}/hook")
        assert Streamed.done.wait(60)
    finally:
        server.shutdown()
        server.server_close()
    assert result.status_code == 200
    [written] = Streamed.written
    assert written < 16 * 2**20 < Streamed.TOTAL  # without the cap the whole 64 MB would have been read


def test_one_host_has_at_most_per_host_attempts_at_once():
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            release.wait(20)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    sender = Sender(settings("redis://127.0.0.1:1/0", webhook_per_host=1, webhook_timeout_s=30))

    async def go():
        first = asyncio.create_task(sender.send(url, {}, BODY))
        await asyncio.sleep(0.3)
        with pytest.raises(HostBusy):
            await sender.send(url, {}, BODY, host_wait_s=0.2)
        release.set()
        result = await first
        await sender.close()
        return result

    try:
        assert asyncio.run(go()).status_code == 200
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_busy_host_does_not_hold_a_slot_of_every_host():
    """Two slots in all, one per host: while one host's attempt runs and a second waits for that host, an attempt to
    another host goes at once (the waiting one holds no global slot)."""
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            release.wait(10)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    slow = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    slow_url = f"http://127.0.0.1:{slow.server_address[1]}/hook"
    sender = Sender(settings("redis://127.0.0.1:1/0", webhook_per_host=1, webhook_concurrency=2, webhook_timeout_s=60))

    async def go(other_url: str):
        first = asyncio.create_task(sender.send(slow_url, {}, BODY))
        while not sender.hosts:
            await asyncio.sleep(0.01)
        waiting = asyncio.create_task(sender.send(slow_url, {}, BODY, host_wait_s=60))
        await asyncio.sleep(0)
        other = await sender.send(other_url, {}, BODY)  # would wait for `waiting` if it held the second slot
        still_waiting = not first.done() and not waiting.done()
        release.set()
        results = await asyncio.gather(first, waiting)
        await sender.close()
        return other, still_waiting, results

    try:
        with Receiver([200]) as receiver:
            other_url = f"http://localhost:{receiver.port}/hook"  # another host (name), the same machine
            sender.resolve = Stub(["127.0.0.1"])
            other, still_waiting, results = asyncio.run(go(other_url))
    finally:
        release.set()
        slow.shutdown()
        slow.server_close()
    assert other.status_code == 200 and still_waiting
    assert [r.status_code for r in results] == [200, 200]


def test_a_link_local_ipv6_answer_is_refused_even_when_allowed():
    """A link-local address needs a zone to be dialled, and a URL cannot carry one: refused, allowed or not."""
    stub = Stub(["fe80::1%eth0"])
    sender = Sender(settings("redis://127.0.0.1:1/0", webhook_allow_nets="fe80::/10"), resolve=stub)
    result = send(sender, "https://hooks.test/hook")
    assert result.error.startswith("refused: a link-local IPv6 address") and not result.retried


def certificate(tmp_path, name: str) -> tuple[str, str]:
    require(subprocess.run(["which", "openssl"], capture_output=True).returncode == 0, "openssl is missing")
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.mark.parametrize("served", ["hooks.test", "other.test"])
def test_https_verifies_the_certificate_against_the_name(tmp_path, served):
    """Connected to the checked address, TLS still verifies the name: the right certificate passes, another fails."""
    cert, key = certificate(tmp_path, served)
    with Receiver([200]) as receiver:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
        trusted = ssl.create_default_context(cafile=cert)
        stub = Stub(["127.0.0.1"])
        sender = Sender(settings("redis://127.0.0.1:1/0"), resolve=stub, verify=trusted)
        result = send(sender, f"https://hooks.test:{receiver.port}/hook")
    if served == "hooks.test":
        assert result.status_code == 200
        assert receiver.requests[0].headers["host"] == f"hooks.test:{receiver.port}"
    else:
        assert result.error.startswith("TLS handshake failed") and result.retried
        assert receiver.requests == []


@pytest.mark.parametrize("url", ["http://[::1/hook", "ftp://hooks.test/x", "/relative"])
def test_an_unusable_url_fails_without_a_lookup(url):
    stub = Stub(["127.0.0.1"])
    result = send(Sender(settings("redis://127.0.0.1:1/0"), resolve=stub), url)
    assert result.error in ("not a valid URL", "not an absolute http(s) URL") and not result.retried
    assert stub.calls == []
