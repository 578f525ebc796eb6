"""The API's HTTP connections: a deadline for each request head (HEADER_TIMEOUT_S).

Neither uvicorn nor h11 bounds the time a request line and its headers may take: uvicorn's keep-alive timeout
starts only after a response, and stops at the first byte of the next request. So a client that connects and
sends nothing, or a header byte now and then, would hold its connection (and a file descriptor) for as long as
it likes. `HeadDeadline` is uvicorn's h11 protocol with one more timer: it runs while the connection waits for a
request head (from the connection's start, and again after each response) and closes a connection whose head
has not fully arrived when it fires. Once the head is in, BODY_TIMEOUT_S bounds the body (app/limits.py).
`diffusetv api` runs uvicorn with it (`uvicorn.run(..., http=...)`); uvicorn's own limit_concurrency is no
substitute, since it counts idle connections too and would turn honest requests away instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head takes longer than `timeout_s`."""

    def __init__(self, *args: Any, timeout_s: float = HEADER_TIMEOUT_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_s = timeout_s
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.wait_for_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self.wait_for_head()  # a head still arriving keeps the deadline it has
        else:
            self.stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.wait_for_head()  # the next request's head: the keep-alive timeout stops at its first byte

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_waiting()
        super().connection_lost(exc)

    def wait_for_head(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.timeout_s, self.head_timed_out)

    def stop_waiting(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timed_out(self) -> None:
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
