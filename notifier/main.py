"""`diffusetv notifier`: take due webhook deliveries from Redis and send them, signed at each attempt.

The loop claims as many due deliveries as it has free slots (app.core.deliveries.claim), sends each in a task of its
own, and records each attempt and what follows it (delivered, retried after a backoff, failed). Everything a delivery
needs is in Redis, so any number of notifiers may run, and a notifier that stops (SIGTERM: it stops claiming and lets
in-flight attempts end within their deadline; SIGKILL) loses nothing: what it had claimed is taken again once the
claim's lease has run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis as redis_lib

from app.core import deliveries, signing
from app.core.deliveries import DELIVERED, DROPPED, FAILED, GONE, RELEASE, RETRY, Attempt, Claim
from app.core.logs import configure_logging
from app.core.redis import connect_sync, wait_for_redis
from notifier.schedule import Schedule
from notifier.send import HostBusy, Result, Sender

log = logging.getLogger("diffusetv.notifier")
POLL_S = 0.25  # the longest pause between two looks for due deliveries
HOST_WAIT_S = 2.5  # how long an attempt waits for a slot of its host before it is put back
RELEASE_DELAY_S = 1.0  # a delivery put back (its host busy) is due again after this


class Notifier:
    """One notifier: its claims, its sender and its clock (`clock` signs each attempt; tests move it)."""

    def __init__(
        self,
        settings,
        redis,
        sender: Sender | None = None,
        clock: Callable[[], float] = time.time,
        schedule: Schedule | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sender = sender or Sender(settings)
        self.clock = clock
        self.schedule = schedule or Schedule(settings)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = deliveries.lease_s(settings, HOST_WAIT_S)
        self.tasks: set[asyncio.Task] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and send until `stop` is set; then let the attempts in flight end (each within its deadline)."""
        try:
            while not stop.is_set():
                pause = await self.tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
            if self.tasks:
                log.info("stopping: %d attempts in flight", len(self.tasks))
                await asyncio.wait(self.tasks, timeout=self.settings.webhook_timeout_s + 1)
        finally:
            for task in self.tasks:
                task.cancel()  # left to another notifier once its lease runs out
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.sender.close()

    async def tick(self) -> float:
        """Claim what is due (as many as there are free slots) and start sending it; the pause before the next look."""
        free = self.settings.webhook_concurrency - len(self.tasks)
        if free <= 0:
            return POLL_S
        try:
            claims, next_in = await asyncio.to_thread(
                deliveries.claim, self.redis, free, self.lease_s, self.name, self.settings.result_ttl
            )
        except redis_lib.RedisError as exc:  # away, restarting, loading its data, full: look again in a moment
            log.warning("could not claim deliveries (%s); trying again", exc)
            return 1.0
        for claim in claims:
            task = asyncio.create_task(self.deliver(claim))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if claims and len(claims) == free:
            return 0.0
        return POLL_S if next_in is None else min(POLL_S, next_in)

    async def deliver(self, claim: Claim) -> None:
        at, attempt = time.time(), claim.attempts + 1
        try:
            await self._deliver(claim, at, attempt)
        except redis_lib.RedisError as exc:  # the delivery is taken again once its lease has run out
            log.warning("%s: Redis refused or was away (%s); left for a later claim", claim.message_id, exc)
        except Exception:  # a bug or bad data: an attempt that failed, retried on the schedule, never a silent loop
            log.exception("%s: unexpected error; recorded as a failed attempt", claim.message_id)
            outcome = FAILED if claim.progress or self.schedule.last(attempt) else RETRY
            try:
                await self.record(claim, attempt, outcome, at, Result(error="internal error"))
            except Exception:
                log.exception("%s: could not record the failed attempt; left for a later claim", claim.message_id)

    async def _deliver(self, claim: Claim, at: float, attempt: int) -> None:
        owner, url = claim.fields.get("owner", ""), claim.fields["url"]
        if await asyncio.to_thread(deliveries.is_gone, self.redis, owner, url):
            return await self.record(claim, attempt, FAILED, at, Result(error="the receiver answered 410 Gone before"))
        keys = signing.keys_for(self.settings, owner)
        if not keys:
            return await self.record(claim, attempt, FAILED, at, Result(error="no webhook secret for its owner"))
        body = await asyncio.to_thread(deliveries.body, self.redis, claim)
        headers = signing.headers(keys, claim.message_id, int(self.clock()), body)
        try:
            result = await self.sender.send(url, headers, body, host_wait_s=HOST_WAIT_S)
        except HostBusy:  # a regular delivery is put back; a progress report is dropped (a newer one will come)
            outcome = DROPPED if claim.progress else RELEASE
            await asyncio.to_thread(deliveries.finish, self.redis, claim, outcome, Attempt(at), RELEASE_DELAY_S)
            log.info("%s: its host is busy; put back", claim.message_id)
            return
        if result.delivered:
            outcome = DELIVERED
        elif result.gone:
            outcome = GONE
        elif result.retried and not claim.progress and not self.schedule.last(attempt):
            outcome = RETRY
        else:
            outcome = FAILED
        await self.record(claim, attempt, outcome, at, result)

    async def record(self, claim: Claim, attempt: int, outcome: str, at: float, result: Result) -> None:
        delay = self.schedule.delay(attempt, result.retry_after, time.time()) if outcome == RETRY else 0.0
        done = Attempt(at, result.status_code, result.error)
        written = await asyncio.to_thread(
            deliveries.finish, self.redis, claim, outcome, done, delay, self.settings.result_ttl
        )
        answer = result.status_code if result.status_code is not None else result.error
        then = f", again in {delay:.1f} s" if outcome == RETRY else ""
        stale = "" if written else " (its claim had passed to another notifier: not recorded)"
        log.info(
            "%s %s attempt %d/%d: %s -> %s%s%s",
            claim.message_id, claim.fields.get("type"), attempt, self.settings.webhook_attempts, answer, outcome,
            then, stale,
        )  # fmt: skip


def run(settings) -> int:
    """The notifier's process: until SIGTERM or SIGINT."""
    configure_logging(settings.log_format)
    if not settings.redis_url:
        raise SystemExit("diffusetv notifier: set DIFFUSETV_REDIS_URL (or run `diffusetv up` for a local stack)")
    conn = connect_sync(settings.redis_url, pool_size=settings.webhook_concurrency + 4)
    wait_for_redis(conn, log)
    log.info(
        "notifier: up to %d deliveries at once (%d per host), %d attempts each",
        settings.webhook_concurrency, settings.webhook_per_host, settings.webhook_attempts,
    )  # fmt: skip
    asyncio.run(_main(settings, conn))
    log.info("notifier stopped")
    return 0


async def _main(settings, conn) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(settings.webhook_concurrency + 4, thread_name_prefix="notifier"))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Notifier(settings, conn).run(stop)
