"""Each request head has a deadline (HEADER_TIMEOUT_S, app/connections.py): against a real `diffusetv api`, a
connection that sends nothing, one that trickles its headers and one that trickles its second request's headers
are closed by the server, while an honest request at the same time is answered."""

from __future__ import annotations

import select
import socket
import time

import httpx
import pytest
from pydantic import ValidationError

from app.core.settings import Settings
from stack import Stack, free_port, stack_env

DEADLINE_S = 2.0
MARGIN_S = 2.5
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\nAccept: */*\r\n\r\n"


def complete(answer: bytes) -> bool:
    """The whole response is in: its Content-Length bytes follow the head."""
    head, found, body = answer.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return bool(found and lines) and len(body) >= int(lines[0].split(b":")[1])


class Slow:
    """A connection that sends its request head one byte a second (or nothing), and notes when the server closes it."""

    def __init__(self, port: int, trickle: bool, after_a_request: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if after_a_request:  # a first request answered in full; then the next head trickles
            self.sock.sendall(HEAD)
            answer = b""
            while not complete(answer):
                chunk = self.sock.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer
        self.sock.setblocking(False)
        self.trickle, self.sent = trickle, 0
        self.started = time.monotonic()
        self.closed_after: float | None = None

    def step(self) -> None:
        """Sends its next byte when one is due."""
        due = int(time.monotonic() - self.started) + 1
        if self.trickle and self.closed_after is None and self.sent < min(due, len(HEAD) - 1):
            try:
                self.sock.send(HEAD[self.sent : self.sent + 1])
                self.sent += 1
            except OSError:
                self.close_seen()

    def close_seen(self) -> None:
        if self.closed_after is None:
            self.closed_after = time.monotonic() - self.started

    def read(self) -> None:
        try:
            if self.sock.recv(4096) == b"":
                self.close_seen()
        except BlockingIOError:
            pass
        except OSError:
            self.close_seen()


def watch(slow: list[Slow], base: str, for_s: float) -> list[int]:
    """Trickles and watches the slow connections for `for_s` seconds; meanwhile, honest requests every second."""
    answered, next_honest = [], time.monotonic()
    end = time.monotonic() + for_s
    while time.monotonic() < end and any(s.closed_after is None for s in slow):
        for s in slow:
            s.step()
        readable, _, _ = select.select([s.sock for s in slow if s.closed_after is None], [], [], 0.1)
        for s in slow:
            if s.sock in readable:
                s.read()
        if time.monotonic() >= next_honest:
            answered.append(httpx.get(f"{base}/healthz", timeout=5).status_code)
            next_honest += 1.0
    return answered


def test_connections_whose_request_head_does_not_arrive_are_closed_and_others_are_served(
    tiny_store, redis_server, tmp_path
):
    env = stack_env(redis_server.url, tiny_store.root, DIFFUSETV_HEADER_TIMEOUT_S=str(DEADLINE_S))
    s = Stack(env, free_port(), tmp_path)
    s.start_api()
    try:
        s.wait_healthy()
        slow = [
            Slow(s.port, trickle=False),
            Slow(s.port, trickle=True),
            Slow(s.port, trickle=True, after_a_request=True),
        ]
        try:
            answered = watch(slow, s.base, for_s=DEADLINE_S + 8)
        finally:
            for c in slow:
                c.sock.close()
        closed = [c.closed_after for c in slow]
        assert all(c is not None and DEADLINE_S - 0.5 < c < DEADLINE_S + MARGIN_S for c in closed), closed
        assert answered and set(answered) == {200}, answered
        assert slow[1].sent >= 1 and slow[2].sent >= 1  # they did trickle
        assert "Traceback" not in s.log("api")
    finally:
        s.stop_all()


@pytest.mark.parametrize("value", [0, -1, 601])
def test_the_header_timeout_is_validated(value):
    with pytest.raises(ValidationError, match="header_timeout_s"):
        Settings(header_timeout_s=value)
