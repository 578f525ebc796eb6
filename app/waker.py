"""One Redis connection per API process watches every job event stream that a request waits on.

A long poll (`GET /jobs/{id}?wait=S`) or an event stream that has nothing new to send waits here, holding no
pooled connection and no thread: one task reads all the waited-on streams with a single blocking XREAD and
wakes the waiters whose stream got an entry after the last one they saw. However many clients wait, the
process holds one connection for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import redis as redis_lib

from app.core.redis import connect_async

log = logging.getLogger("diffusetv.waker")
BLOCK_MS = 250  # a waiter that arrives during a read is included in the next one, at most this much later
RETRY_S = 0.5


def stream_id(value: str | bytes) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Waiter:
    after: tuple[int, int]
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class Waker:
    def __init__(self, url: str) -> None:
        self.redis = connect_async(url, socket_timeout=BLOCK_MS / 1000 + 5)
        self.waiters: dict[str, list[Waiter]] = {}
        self.changed = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="waker")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    async def wait(self, key: str, after: str, timeout: float) -> bool:
        """True once `key` has an entry after `after`, False after `timeout` seconds."""
        waiter = Waiter(stream_id(after))
        self.waiters.setdefault(key, []).append(waiter)
        self.changed.set()
        try:
            await asyncio.wait_for(waiter.woken.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiting = self.waiters.get(key, [])
            if waiter in waiting:
                waiting.remove(waiter)
            if not waiting:
                self.waiters.pop(key, None)

    async def run(self) -> None:
        while True:
            if not self.waiters:
                self.changed.clear()
                await self.changed.wait()
                continue
            streams = {key: "{}-{}".format(*min(w.after for w in ws)) for key, ws in self.waiters.items() if ws}
            try:
                got = await self.redis.xread(streams, count=1, block=BLOCK_MS)
            except (redis_lib.RedisError, OSError) as exc:  # Redis away: the waiters time out and look themselves
                log.warning("stream waker: %s", exc)
                await asyncio.sleep(RETRY_S)
                continue
            for key, entries in got or []:
                name = key.decode() if isinstance(key, bytes) else key
                newest = stream_id(entries[-1][0])
                for waiter in list(self.waiters.get(name, [])):
                    if newest > waiter.after:
                        waiter.woken.set()
                        self.waiters[name].remove(waiter)
