"""The retry schedule (notifier.schedule): full jitter within its caps, Retry-After honoured and clamped."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

from app.core.settings import Settings
from notifier.schedule import Schedule, cap, retried, retry_after_s, window_s


def test_the_caps_double_from_the_base_up_to_the_max():
    s = Settings(webhook_base_delay_s=30, webhook_max_delay_s=3600)
    assert [cap(s, k) for k in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_the_default_schedule_is_eight_attempts_over_about_an_hour():
    s = Settings()
    assert s.webhook_attempts == 8
    longest, expected = window_s(s)
    assert longest == 30 + 60 + 120 + 240 + 480 + 960 + 1920 == 3810
    assert expected == 1905


def test_each_wait_is_a_uniform_draw_below_its_cap():
    s = Settings(webhook_base_delay_s=1, webhook_max_delay_s=10)
    schedule = Schedule(s, random.Random(3))
    for retry in range(1, 7):
        draws = [schedule.delay(retry) for _ in range(400)]
        assert all(0 <= d <= cap(s, retry) for d in draws)
        assert max(draws) > 0.9 * cap(s, retry) and min(draws) < 0.1 * cap(s, retry)  # the whole range: full jitter


def test_a_seed_repeats_the_draws():
    s = Settings(webhook_base_delay_s=1, webhook_jitter_seed=42)
    first, second = Schedule(s), Schedule(s)
    assert [first.delay(k) for k in range(1, 6)] == [second.delay(k) for k in range(1, 6)]
    other = Schedule(Settings(webhook_base_delay_s=1, webhook_jitter_seed=43))
    assert [first.delay(k) for k in range(1, 6)] != [other.delay(k) for k in range(1, 6)]


def test_retry_after_seconds_or_a_date_replaces_the_draw_clamped():
    s = Settings(webhook_base_delay_s=1, webhook_max_delay_s=600)
    schedule = Schedule(s, random.Random(0))
    now = 1_800_000_000.0
    assert schedule.delay(1, "7", now) == 7.0
    assert schedule.delay(5, "0", now) == 0.0
    assert schedule.delay(1, "86400", now) == 600.0  # clamped to WEBHOOK_MAX_DELAY_S
    date = format_datetime(datetime.fromtimestamp(now + 90, tz=UTC), usegmt=True)
    assert retry_after_s(date, now) == 90.0
    assert schedule.delay(1, date, now) == 90.0
    past = format_datetime(datetime.fromtimestamp(now - 90, tz=UTC), usegmt=True)
    assert schedule.delay(1, past, now) == 0.0
    for unreadable in ("soon", "-5", "1.5", ""):
        assert retry_after_s(unreadable, now) is None
        assert 0 <= schedule.delay(1, unreadable, now) <= 1.0  # the draw


def test_which_answers_are_retried():
    assert [c for c in (200, 204, 301, 302, 400, 401, 404, 408, 409, 410, 429, 500, 502, 503, 599) if retried(c)] == [
        408,
        429,
        500,
        502,
        503,
        599,
    ]


def test_the_last_attempt():
    schedule = Schedule(Settings(webhook_attempts=3))
    assert [schedule.last(n) for n in (1, 2, 3)] == [False, False, True]
