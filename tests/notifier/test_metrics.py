"""The notifier's metrics (app/metrics.py), read from Redis as /metrics serves them."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families
from webhooks import enqueue

from app.core import deliveries, keys
from app.core.deliveries import DELIVERED, GONE, RETRY, Attempt
from app.metrics import render_metrics


def samples(redis, store) -> dict[tuple[str, tuple], float]:
    text, _ = render_metrics(redis, store, [])
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name.startswith("diffusetv_webhook")
    }


def test_deliveries_by_outcome_attempts_and_the_oldest_pending(redis, tiny_store):
    empty = samples(redis, tiny_store)
    assert empty[("diffusetv_webhook_oldest_pending_seconds", ())] == 0
    assert empty[("diffusetv_webhook_deliveries_total", (("outcome", "delivered"),))] == 0

    first = enqueue(redis, "1" * 32, "https://hooks.example/a")
    redis.zadd(keys.DELIVERIES_PENDING, {first: time.time() - 120})  # enqueued two minutes ago
    enqueue(redis, "2" * 32, "https://hooks.example/b")
    enqueue(redis, "3" * 32, "https://hooks.example/c")
    claims, _ = deliveries.claim(redis, 10, 30, "n1")
    by_job = {c.fields["job"]: c for c in claims}
    deliveries.finish(redis, by_job["2" * 32], DELIVERED, Attempt(time.time(), 200))
    deliveries.finish(redis, by_job["3" * 32], GONE, Attempt(time.time(), 410))
    deliveries.finish(redis, by_job["1" * 32], RETRY, Attempt(time.time(), 503), 60)

    got = samples(redis, tiny_store)
    assert got[("diffusetv_webhook_deliveries_total", (("outcome", "delivered"),))] == 1
    assert got[("diffusetv_webhook_deliveries_total", (("outcome", "gone"),))] == 1
    assert got[("diffusetv_webhook_deliveries_total", (("outcome", "failed"),))] == 0
    assert got[("diffusetv_webhook_deliveries_total", (("outcome", "expired"),))] == 0
    assert got[("diffusetv_webhook_attempts_total", ())] == 3
    assert got[("diffusetv_webhook_pending", ())] == 1
    assert 119 <= got[("diffusetv_webhook_oldest_pending_seconds", ())] < 180
