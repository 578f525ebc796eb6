"""The claim and finish scripts (app.core.deliveries) against real Redis servers, on deliveries that the status hook's
own Lua enqueued."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis as redis_lib
from webhooks import attempts, delivery, enqueue, report_progress

from app.core import deliveries, keys
from app.core.deliveries import DELIVERED, DROPPED, FAILED, GONE, RELEASE, RETRY, Attempt
from app.views import job_view

pytestmark = pytest.mark.each_redis

JOB = "a" * 32
URL = "https://hooks.example/done"


def due_score(redis, delivery_id: str) -> float | None:
    return redis.zscore(keys.DELIVERIES_DUE, delivery_id)


def redis_now(redis) -> float:
    seconds, micros = redis.time()
    return seconds + micros / 1e6


def test_a_claim_leases_a_due_delivery_and_a_second_claim_gets_nothing(redis_server):
    redis = redis_lib.Redis.from_url(redis_server.url)
    did = enqueue(redis, JOB, URL)
    assert did == f"msg_{JOB}_1"
    assert delivery(redis, did)["state"] == "pending"
    assert redis.zscore(keys.DELIVERIES_PENDING, did) is not None

    before = redis_now(redis)
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    assert (claim.id, claim.message_id, claim.token, claim.attempts) == (did, did, "n1/1", 0)
    assert claim.fields["url"] == URL and claim.fields["type"] == "job.completed"
    assert before + 30 <= due_score(redis, did) <= redis_now(redis) + 30  # the lease, on Redis's clock
    assert delivery(redis, did)["claim"] == "n1/1"
    assert deliveries.claim(redis, 10, 30.0, "n2")[0] == []


def test_the_body_is_rendered_once_from_the_snapshot(redis):
    did = enqueue(redis, JOB, URL)
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    body = deliveries.body(redis, claim)
    envelope = json.loads(body)
    assert envelope["type"] == "job.completed"
    assert envelope["timestamp"].endswith("Z")
    record = json.loads(delivery(redis, did)["record"])
    assert envelope["data"] == job_view(record).model_dump(mode="json")
    assert envelope["data"]["status"] == "succeeded" and envelope["data"]["id"] == JOB
    assert body == json.dumps(envelope, separators=(",", ":")).encode()  # compact
    assert "webhook" not in envelope["data"] and "owner" not in envelope["data"]

    # The job changes and the lease runs out: the next claim (any notifier) sends the same bytes.
    redis.hset(keys.job(JOB), "error", "changed later")
    redis.zadd(keys.DELIVERIES_DUE, {did: 0})
    [again], _ = deliveries.claim(redis, 10, 30.0, "n2")
    assert again.token == "n2/2"
    assert deliveries.body(redis, again) == body


def test_two_notifiers_claim_disjoint_deliveries(redis, redis_server):
    ids = {enqueue(redis, f"{n:032x}", URL) for n in range(60)}
    got: dict[str, list[str]] = {"n1": [], "n2": []}
    conns = {name: redis_lib.Redis.from_url(redis_server.url) for name in got}
    start = threading.Barrier(2)

    def take(name: str) -> None:
        start.wait()
        while True:
            claims, _ = deliveries.claim(conns[name], 7, 30, name)
            if not claims:
                return
            got[name] += [c.id for c in claims]

    threads = [threading.Thread(target=take, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not set(got["n1"]) & set(got["n2"])
    assert set(got["n1"]) | set(got["n2"]) == ids
    assert len(got["n1"]) + len(got["n2"]) == 60


def test_finish_delivered_records_the_attempt_and_ends_the_delivery(redis_server):
    redis = redis_lib.Redis.from_url(redis_server.url)
    did = enqueue(redis, JOB, URL)
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    at = time.time()
    assert deliveries.finish(redis, claim, DELIVERED, Attempt(at, 204))
    assert due_score(redis, did) is None and redis.zscore(keys.DELIVERIES_PENDING, did) is None
    stored = delivery(redis, did)
    assert stored["state"] == "delivered" and "claim" not in stored and "next_at" not in stored
    assert stored["attempts"] == "1"
    [attempt] = attempts(redis, did)
    assert attempt["status_code"] == 204 and attempt["error"] is None and attempt["next_at"] is None
    assert abs(attempt["at"] - at) < 0.01
    assert 0 < redis.ttl(keys.delivery_attempts(did)) <= redis.ttl(keys.delivery(did))
    metrics = redis.hgetall(keys.METRICS)
    assert metrics[b"webhook_delivered"] == b"1" and metrics[b"webhook_attempts"] == b"1"


def test_a_retry_is_due_after_its_delay_then_fails_for_good(redis_server):
    redis = redis_lib.Redis.from_url(redis_server.url)
    did = enqueue(redis, JOB, URL)
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    before = redis_now(redis)
    assert deliveries.finish(redis, claim, RETRY, Attempt(time.time(), 503), 120.0)
    after = redis_now(redis)
    assert before + 120 <= due_score(redis, did) <= after + 120
    stored = delivery(redis, did)
    assert stored["state"] == "pending" and "claim" not in stored
    assert float(stored["next_at"]) == due_score(redis, did)
    [attempt] = attempts(redis, did)
    assert attempt["status_code"] == 503 and before + 120 <= attempt["next_at"] <= after + 120
    assert redis.zscore(keys.DELIVERIES_PENDING, did) is not None

    redis.zadd(keys.DELIVERIES_DUE, {did: 0})  # its time has come
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    assert claim.attempts == 1
    assert deliveries.finish(redis, claim, FAILED, Attempt(time.time(), None, "connection refused"))
    assert delivery(redis, did)["state"] == "failed"
    assert [a["error"] for a in attempts(redis, did)] == [None, "connection refused"]
    assert due_score(redis, did) is None and redis.zscore(keys.DELIVERIES_PENDING, did) is None
    assert redis.hget(keys.METRICS, "webhook_failed") == b"1"


def test_a_stale_claim_writes_nothing(redis):
    """A notifier that outlived its lease: another has claimed the delivery since, and only the newer claim counts."""
    did = enqueue(redis, JOB, URL)
    [old], _ = deliveries.claim(redis, 10, 0.05, "n1")
    time.sleep(0.1)  # the lease runs out
    [new], _ = deliveries.claim(redis, 10, 30.0, "n2")
    assert new.id == did and new.token != old.token
    assert not deliveries.finish(redis, old, DELIVERED, Attempt(time.time(), 200))
    assert attempts(redis, did) == [] and delivery(redis, did)["state"] == "pending"
    assert deliveries.finish(redis, new, DELIVERED, Attempt(time.time(), 200))
    assert delivery(redis, did)["state"] == "delivered"
    assert not deliveries.finish(redis, new, DELIVERED, Attempt(time.time(), 200))  # and only once
    assert len(attempts(redis, did)) == 1


def test_a_410_is_remembered_for_the_owner_and_url(redis):
    did = enqueue(redis, JOB, URL, owner="o" * 32)
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    assert not deliveries.is_gone(redis, "o" * 32, URL)
    assert deliveries.finish(redis, claim, GONE, Attempt(time.time(), 410))
    assert delivery(redis, did)["state"] == "failed"
    assert deliveries.is_gone(redis, "o" * 32, URL)
    assert not deliveries.is_gone(redis, "", URL) and not deliveries.is_gone(redis, "o" * 32, URL + "x")
    assert 29 * 86_400 < redis.ttl(deliveries.gone_key("o" * 32, URL)) <= 30 * 86_400
    assert redis.hget(keys.METRICS, "webhook_gone") == b"1"


def test_release_puts_a_delivery_back_without_an_attempt(redis):
    did = enqueue(redis, JOB, URL)
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    before = redis_now(redis)
    assert deliveries.finish(redis, claim, RELEASE, Attempt(time.time()), 2.0)
    assert before + 2 <= due_score(redis, did) <= redis_now(redis) + 2
    assert attempts(redis, did) == [] and "claim" not in delivery(redis, did)


def test_a_progress_slot_is_claimed_once_and_never_retried(redis):
    enqueue(redis, JOB, URL, status="running", events="progress,completed")
    report_progress(redis, JOB, 1, 5)
    slot = f"progress_{JOB}"
    assert due_score(redis, slot) is not None
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    assert claim.progress and claim.token == claim.message_id == f"msg_{JOB}_1"
    assert due_score(redis, slot) is None  # out of DUE: no lease, no retry
    assert json.loads(deliveries.body(redis, claim))["data"]["progress"] == {"step": 1, "steps": 5}
    assert deliveries.finish(redis, claim, FAILED, Attempt(time.time(), 503))
    assert delivery(redis, slot)["state"] == "failed" and due_score(redis, slot) is None
    assert redis.zscore(keys.DELIVERIES_PENDING, slot) is None

    # A 410 to a progress report is remembered as any other.
    report_progress(redis, JOB, 2, 5)
    redis.zadd(keys.DELIVERIES_DUE, {slot: 0})
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    assert deliveries.finish(redis, claim, GONE, Attempt(time.time(), 410))
    assert deliveries.is_gone(redis, "", URL)

    # The next report is due no sooner than PROGRESS_EVERY_S after the one sent.
    report_progress(redis, JOB, 3, 5)
    sent_at = float(delivery(redis, slot)["sent_at"])
    assert due_score(redis, slot) >= sent_at + 0.5 - 1e-6
    assert delivery(redis, slot)["id"] == f"msg_{JOB}_3"


def test_an_expired_delivery_leaves_the_due_and_pending_sets(redis):
    did = enqueue(redis, JOB, URL)
    redis.delete(keys.delivery(did))
    assert deliveries.claim(redis, 10, 30.0, "n1")[0] == []
    assert due_score(redis, did) is None and redis.zscore(keys.DELIVERIES_PENDING, did) is None
    assert redis.hget(keys.METRICS, "webhook_expired") == b"1"  # counted, never silent


def test_a_claim_and_a_retry_keep_the_delivery_past_its_schedule(redis):
    """The submit's TTL comes from the API's settings; the notifier's own schedule may be longer. Each claim keeps the
    delivery past its lease, and each retry past its next attempt, by `keep_s` (RESULT_TTL) at least."""
    did = enqueue(redis, JOB, URL)
    redis.expire(keys.delivery(did), 10)  # as if the API had computed a short window
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1", keep_s=100)
    assert 129 <= redis.ttl(keys.delivery(did)) <= 130
    assert deliveries.finish(redis, claim, RETRY, Attempt(time.time(), 503), 500.0, 100)
    assert 599 <= redis.ttl(keys.delivery(did)) <= 600
    assert 599 <= redis.ttl(keys.delivery_attempts(did)) <= 600
    redis.zadd(keys.DELIVERIES_DUE, {did: 0})
    deliveries.claim(redis, 10, 30.0, "n1", keep_s=100)
    assert 599 <= redis.ttl(keys.delivery(did)) <= 600  # never shortened


def test_the_body_of_an_expired_delivery_is_not_stored(redis):
    """An expired hash is never brought back as a hash with only a body and no TTL."""
    did = enqueue(redis, JOB, URL)
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    redis.delete(keys.delivery(did))
    assert json.loads(deliveries.body(redis, claim))["data"]["id"] == JOB  # still sent by this attempt
    assert redis.exists(keys.delivery(did)) == 0


def test_a_progress_slot_not_sent_is_marked_dropped(redis):
    """A report dropped on a busy host, or still waiting when its job ends, is no longer `pending`."""
    enqueue(redis, JOB, URL, status="running", events="progress,completed")
    report_progress(redis, JOB, 1, 5)
    slot = f"progress_{JOB}"
    [claim], _ = deliveries.claim(redis, 10, 30.0, "n1")
    assert deliveries.finish(redis, claim, DROPPED, Attempt(time.time()))
    assert delivery(redis, slot)["state"] == "dropped" and attempts(redis, slot) == []

    report_progress(redis, JOB, 2, 5)
    assert delivery(redis, slot)["state"] == "pending" and due_score(redis, slot) is not None
    redis.hset(keys.job(JOB), "status", "succeeded")
    enqueue(redis, JOB, URL, status="succeeded", events="progress,completed")  # its end: job.completed
    assert delivery(redis, slot)["state"] == "dropped" and due_score(redis, slot) is None


def test_claim_says_when_the_next_delivery_is_due(redis):
    assert deliveries.claim(redis, 10, 30.0, "n1") == ([], None)
    did = enqueue(redis, JOB, URL)
    redis.zadd(keys.DELIVERIES_DUE, {did: redis_now(redis) + 100})
    claims, next_in = deliveries.claim(redis, 10, 30.0, "n1")
    assert claims == [] and 99 < next_in <= 100
    assert deliveries.pending(redis)[0] == 1
