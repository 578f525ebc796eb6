"""When to try a request again: after a 429 or 503 (honouring Retry-After), or a dropped connection, within bounds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503})


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After in seconds (RFC 9110: delay-seconds or an HTTP date; a past date is 0), None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True)
class Retry:
    """How one call is retried: at most `attempts` more tries, no single wait over `max_wait` seconds (a longer
    Retry-After is not waited for: the error is raised at once, carrying it) and at most `total` seconds of waiting in
    all. Without Retry-After, waits grow from `backoff` seconds, doubling, with jitter."""

    attempts: int = 5
    max_wait: float = 60.0
    total: float = 300.0
    backoff: float = 0.5

    def delay(self, attempt: int, waited: float, retry_after: float | None = None) -> float | None:
        """Seconds to wait before try number `attempt` + 1, having waited `waited` seconds so far; None: give up."""
        if attempt > self.attempts:
            return None
        if retry_after is None:
            step = min(self.max_wait, self.backoff * 2 ** (attempt - 1))
            retry_after = step / 2 + random.uniform(0, step / 2)
        if retry_after > self.max_wait or waited + retry_after > self.total:
            return None
        return retry_after

    def after_response(self, response: httpx.Response, attempt: int, waited: float) -> float | None:
        """The wait before trying again after `response`, or None when it is the answer (any status but 429 and 503,
        or one of those past the bounds)."""
        if response.status_code not in RETRY_STATUSES:
            return None
        return self.delay(attempt, waited, retry_after_s(response.headers.get("retry-after")))

    def after_error(self, error: httpx.TransportError, attempt: int, waited: float, replayable: bool) -> float | None:
        """The wait before trying again after a transport error, or None to raise it. A request that never reached the
        server (no connection) is always tried again; one that may have (the answer was lost) only when `replayable`:
        a GET, or a POST with an Idempotency-Key."""
        if not replayable and not isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            return None
        return self.delay(attempt, waited)
