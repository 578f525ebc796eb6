"""Fixtures of the notifier tests: a real Redis (the helpers are in tests/webhooks.py)."""

from __future__ import annotations

import pytest
import redis as redis_lib


@pytest.fixture
def redis(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    yield conn
    conn.close()
