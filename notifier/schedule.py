"""When a failed attempt is tried again: exponential backoff with full jitter, or the receiver's Retry-After.

Retry k (counted from 1: retry 1 follows the first attempt) waits a uniform draw from [0, min(WEBHOOK_MAX_DELAY_S,
WEBHOOK_BASE_DELAY_S x 2^(k-1))] ("full jitter", as AWS's architecture blog names it). A Retry-After (delay-seconds
or an HTTP date) replaces the draw, clamped to [0, WEBHOOK_MAX_DELAY_S]. WEBHOOK_JITTER_SEED makes the draws repeatable.
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

from app.core.hooks import backoff_cap, backoff_window_s

RETRIED_STATUSES = frozenset({408, 429})  # and every 5xx


def retried(status_code: int) -> bool:
    """Is an answer with this status tried again? 408, 429 and 5xx are; 2xx is success, the rest final."""
    return status_code in RETRIED_STATUSES or 500 <= status_code <= 599


cap = backoff_cap  # the longest wait before retry k (counted from 1), app.core.hooks' formula


def retry_after_s(value: str | None, now: float) -> float | None:
    """A Retry-After header's wait in seconds (RFC 9110: delay-seconds or an HTTP date), or None when unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return when.timestamp() - now


class Schedule:
    """The waits between one delivery's attempts."""

    def __init__(self, settings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.rng = rng or random.Random(settings.webhook_jitter_seed)

    def delay(self, retry: int, retry_after: str | None = None, now: float | None = None) -> float:
        """The wait before retry `retry` (counted from 1): Retry-After when the receiver gave one (a date is read
        against `now`, default the time now), else the jittered draw."""
        asked = retry_after_s(retry_after, time.time() if now is None else now)
        if asked is not None:
            return min(max(asked, 0.0), self.settings.webhook_max_delay_s)
        return self.rng.uniform(0.0, cap(self.settings, retry))

    def last(self, attempt: int) -> bool:
        """Is attempt `attempt` (1-based) the last one a delivery gets?"""
        return attempt >= self.settings.webhook_attempts


def window_s(settings) -> tuple[float, float]:
    """The longest time all of a delivery's waits may take together, and their expected sum (half of it)."""
    longest = backoff_window_s(settings)
    return longest, longest / 2
