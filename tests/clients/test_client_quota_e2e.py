"""The client against a live stack whose client quota is one job per 3 s: a 429 is retried after its Retry-After."""

from __future__ import annotations

import time
from itertools import pairwise

import httpx
import pytest
from diffusetv_client import Client

pytestmark = pytest.mark.slow


class Recording(httpx.BaseTransport):
    """Real HTTP; records each answer's status and Retry-After and when each request was sent."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.log: list[tuple[float, int, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.log.append((sent, response.status_code, response.headers.get("retry-after")))
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_429_is_retried_after_the_servers_retry_after(tiny_store, redis_server, tmp_path):
    from stack import running_stack

    quota = {"DIFFUSETV_CLIENT_JOBS": "1", "DIFFUSETV_QUOTA_WINDOW_S": "3"}
    with running_stack(redis_server, tiny_store.root, tmp_path, **quota) as stack:
        transport = Recording()
        with Client(stack.base, transport=transport, max_retry_wait=10) as client:
            first = client.generate(seed=21, steps=5)
            second = client.generate(seed=22, steps=5)
            assert second.id != first.id and second.wait(timeout=120).status == "succeeded"
        statuses = [status for _, status, _ in transport.log]
        assert statuses[0] == 202 and statuses[-1] == 202 and 429 in statuses, transport.log
        for (sent, status, retry_after), (next_sent, _, _) in pairwise(transport.log):
            if status == 429:
                assert retry_after is not None and next_sent - sent >= int(retry_after), transport.log
