"""The notifier's loop (notifier.main.Notifier) against a real Redis and a receiver on 127.0.0.1: signatures, retries,
their schedule, a moved clock, 410, final answers, progress, and what it records."""

from __future__ import annotations

import datetime as real_datetime
import itertools
import json
import signal
import time

import pytest
import redis as redis_lib
import standardwebhooks
import standardwebhooks.webhooks
from standardwebhooks.webhooks import WebhookVerificationError
from webhooks import (
    SECRET,
    Answer,
    Receiver,
    Running,
    attempts,
    delivery,
    enqueue,
    report_progress,
    settings,
    wait_until,
)

from app.auth import owner_id
from app.core import deliveries, keys
from app.core.redis import connect_sync
from app.core.signing import new_secret
from notifier.main import Notifier
from notifier.schedule import cap
from stack import RedisServer

JOB = "b" * 32


def final_state(redis, did: str) -> str | None:
    state = delivery(redis, did).get("state")
    return state if state in ("delivered", "failed") else None


MARKER = "9" * 32
BARRIER_S = 1.0  # a marker is due this long after a delivery ends: after any retry the backoff below could draw
NO_RETRY_SOON = {"webhook_base_delay_s": 0.01, "webhook_max_delay_s": 0.1, "webhook_concurrency": 1}


def after_marker(redis, url: str) -> str:
    """A barrier instead of a sleep: a marker delivery to the same receiver, due BARRIER_S from now. With one slot
    (webhook_concurrency=1) deliveries are claimed in due order, so any retry (due within WEBHOOK_MAX_DELAY_S) would
    reach the receiver before the marker. Returns the marker's id once it has been delivered."""
    marker = enqueue(redis, MARKER, url)
    seconds, micros = redis.time()
    redis.zadd(keys.DELIVERIES_DUE, {marker: seconds + micros / 1e6 + BARRIER_S}, xx=True)
    wait_until(lambda: final_state(redis, marker), what="the marker's end")
    return marker


def test_a_delivery_arrives_signed_and_verifies(redis, redis_server):
    with Receiver([200]) as receiver:
        did = enqueue(redis, JOB, receiver.url())
        with Running(Notifier(settings(redis_server.url), redis)):
            [request] = receiver.wait_for(1)
            wait_until(lambda: final_state(redis, did), what="the delivery's end")
    envelope = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    assert envelope["type"] == "job.completed" and envelope["data"]["id"] == JOB
    assert envelope["data"]["status"] == "succeeded"
    assert request.headers["webhook-id"] == did
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert request.body == delivery(redis, did)["body"].encode()
    assert delivery(redis, did)["state"] == "delivered"
    [attempt] = attempts(redis, did)
    assert attempt["status_code"] == 200 and attempt["error"] is None
    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(request.body, request.headers)


def test_a_rotation_signs_with_every_secret(redis, redis_server):
    old, new = SECRET, new_secret()
    with Receiver([200]) as receiver:
        enqueue(redis, JOB, receiver.url())
        with Running(Notifier(settings(redis_server.url, webhook_secret=f"{new} {old}"), redis)):
            [request] = receiver.wait_for(1)
    assert len(request.headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)


def test_503_twice_then_200_sends_one_webhook_id_three_times_within_the_schedule(redis, redis_server):
    s = settings(redis_server.url, webhook_base_delay_s=0.3)
    with Receiver([503, 503, 200]) as receiver:
        did = enqueue(redis, JOB, receiver.url())
        with Running(Notifier(s, redis)):
            requests = receiver.wait_for(3)
            wait_until(lambda: final_state(redis, did), what="the delivery's end")
    assert [r.headers["webhook-id"] for r in requests] == [did] * 3
    assert len({r.body for r in requests}) == 1
    recorded = attempts(redis, did)
    assert [a["status_code"] for a in recorded] == [503, 503, 200]
    assert delivery(redis, did)["state"] == "delivered"
    for n, (before, after) in enumerate(itertools.pairwise(requests)):
        wait = recorded[n]["next_at"] - recorded[n]["at"]
        assert 0 <= wait <= cap(s, n + 1) + s.webhook_timeout_s  # drawn from [0, cap], counted from the attempt's start
        assert after.at - before.at <= cap(s, n + 1) + 10  # and it went then (a poll later, on a slow machine)
    assert recorded[-1]["next_at"] is None


def test_a_retry_is_signed_at_its_own_time(redis, redis_server, monkeypatch):
    """The clock moves an hour forward between two attempts: the retry's webhook-timestamp is the new time, it
    verifies at that time, and a verifier at the old time rejects it (more than five minutes' skew)."""
    offset = {"s": 0.0}
    with Receiver([Answer(503, {"retry-after": "2"}), 200]) as receiver:  # the clock moves within those 2 s
        did = enqueue(redis, JOB, receiver.url())
        notifier = Notifier(settings(redis_server.url), redis, clock=lambda: time.time() + offset["s"])
        with Running(notifier):
            first = receiver.wait_for(1)[0]
            offset["s"] = 3600.0
            second = receiver.wait_for(2)[1]
            wait_until(lambda: final_state(redis, did), what="the delivery's end")
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == did
    assert abs(int(first.headers["webhook-timestamp"]) - first.at) < 5
    assert abs(int(second.headers["webhook-timestamp"]) - (second.at + 3600)) < 5
    assert second.headers["webhook-signature"] != first.headers["webhook-signature"]
    standardwebhooks.Webhook(SECRET).verify(first.body, first.headers)
    with pytest.raises(WebhookVerificationError, match="too new"):
        standardwebhooks.Webhook(SECRET).verify(second.body, second.headers)

    class Later(real_datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return real_datetime.datetime.fromtimestamp(second.at + 3600, tz=tz)

    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", Later)
    standardwebhooks.Webhook(SECRET).verify(second.body, second.headers)


def test_retry_after_is_honoured(redis, redis_server):
    with Receiver([Answer(429, {"retry-after": "2"}), 200]) as receiver:
        did = enqueue(redis, JOB, receiver.url())
        with Running(Notifier(settings(redis_server.url, webhook_base_delay_s=0.01), redis)):
            first, second = receiver.wait_for(2)
            wait_until(lambda: final_state(redis, did), what="the delivery's end")
    retry = attempts(redis, did)[0]
    assert retry["status_code"] == 429
    assert 2 <= retry["next_at"] - retry["at"] <= 2 + 5
    assert second.at - first.at >= 1.9  # not the 10 ms the backoff would have drawn


@pytest.mark.parametrize("status", [400, 404, 301])
def test_other_4xx_and_3xx_fail_at_once(redis, redis_server, status):
    with Receiver([status, 200]) as receiver:
        did = enqueue(redis, JOB, receiver.url())
        with Running(Notifier(settings(redis_server.url, **NO_RETRY_SOON), redis)):
            wait_until(lambda: final_state(redis, did), what="the delivery's end")
            marker = after_marker(redis, receiver.url())
    assert [r.headers["webhook-id"] for r in receiver.requests] == [did, marker]  # nothing between them
    assert delivery(redis, did)["state"] == "failed"
    assert [(a["status_code"], a["next_at"]) for a in attempts(redis, did)] == [(status, None)]
    assert redis.zscore(keys.DELIVERIES_DUE, did) is None


def test_after_the_last_attempt_the_delivery_fails(redis, redis_server):
    with Receiver([500]) as receiver:
        did = enqueue(redis, JOB, receiver.url())
        with Running(Notifier(settings(redis_server.url, webhook_attempts=3, webhook_base_delay_s=0.05), redis)):
            wait_until(lambda: final_state(redis, did), what="the delivery's end")
    assert len(receiver.requests) == 3
    assert [a["status_code"] for a in attempts(redis, did)] == [500, 500, 500]
    assert delivery(redis, did)["state"] == "failed"
    assert redis.hget(keys.METRICS, "webhook_failed") == b"1" and redis.hget(keys.METRICS, "webhook_attempts") == b"3"


def test_410_stops_and_is_remembered(redis, redis_server, tmp_path):
    owner = "c" * 32
    table = tmp_path / "secrets.json"
    table.write_text(json.dumps({owner: SECRET}))
    with Receiver([410, 200]) as receiver:
        did = enqueue(redis, JOB, receiver.url(), owner=owner)
        s = settings(redis_server.url, webhook_secrets_file=str(table))
        with Running(Notifier(s, redis)):
            wait_until(lambda: final_state(redis, did), what="the first delivery's end")
            assert deliveries.is_gone(redis, owner, receiver.url())
            later = enqueue(redis, "d" * 32, receiver.url(), owner=owner)
            wait_until(lambda: final_state(redis, later), what="the second delivery's end")
    assert len(receiver.requests) == 1  # nothing more went there
    assert delivery(redis, later)["state"] == "failed"
    assert attempts(redis, later)[0]["error"] == "the receiver answered 410 Gone before"


def test_a_refused_address_fails_the_delivery_naming_the_check(redis, redis_server):
    with Receiver([200]) as receiver:
        did = enqueue(redis, JOB, receiver.url())
        with Running(Notifier(settings(redis_server.url, webhook_allow_nets=""), redis)):
            wait_until(lambda: final_state(redis, did), what="the delivery's end")
    assert receiver.requests == []
    [attempt] = attempts(redis, did)
    assert attempt["status_code"] is None and attempt["error"].startswith("refused: the address is not public")
    assert "127.0.0.1" not in attempt["error"]


def test_progress_is_sent_latest_wins_and_never_retried(redis, redis_server):
    with Receiver([503, 200]) as receiver:
        enqueue(redis, JOB, receiver.url(), status="running", events="progress")
        for step in (1, 2, 3):
            report_progress(redis, JOB, step, 5)  # before the notifier runs: one slot, the latest report
        slot = f"progress_{JOB}"
        with Running(Notifier(settings(redis_server.url, **NO_RETRY_SOON), redis)):
            [request] = receiver.wait_for(1)
            wait_until(lambda: final_state(redis, slot), what="the progress delivery's end")
            marker = after_marker(redis, receiver.url())
    assert [r.headers["webhook-id"] for r in receiver.requests] == [request.headers["webhook-id"], marker]
    envelope = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    assert envelope["type"] == "job.progress" and envelope["data"]["progress"] == {"step": 3, "steps": 5}
    assert redis.hget(keys.METRICS, "webhook_progress_failed") == b"1"


def test_an_unexpected_error_is_a_failed_attempt_retried_on_the_schedule(redis, redis_server):
    """A delivery whose body cannot be rendered (a bug, or bad data): each attempt is recorded with a generic error
    and retried on the schedule, and the delivery ends failed after its attempts, never a silent loop."""
    with Receiver([200]) as receiver:
        did = enqueue(redis, JOB, receiver.url())
        redis.hset(keys.delivery(did), "record", "{not json")
        s = settings(redis_server.url, webhook_attempts=3, **NO_RETRY_SOON)
        with Running(Notifier(s, redis)):
            wait_until(lambda: final_state(redis, did), what="the delivery's end")
            marker = after_marker(redis, receiver.url())
    recorded = attempts(redis, did)
    assert [(a["status_code"], a["error"]) for a in recorded] == [(None, "internal error")] * 3
    assert [a["next_at"] is None for a in recorded] == [False, False, True]
    assert delivery(redis, did)["state"] == "failed" and delivery(redis, did)["claims"] == "3"
    assert [r.headers["webhook-id"] for r in receiver.requests] == [marker]
    assert redis.hget(keys.METRICS, "webhook_failed") == b"1"


def test_a_job_without_a_subscription_enqueues_nothing(redis):
    assert enqueue(redis, JOB, "https://hooks.example/x", status="running") is None  # subscribed to completed only
    assert redis.zcard(keys.DELIVERIES_DUE) == 0


def test_the_body_is_the_snapshot_at_enqueue_time(redis, redis_server):
    with Receiver([200]) as receiver:
        did = enqueue(redis, JOB, receiver.url())
        redis.hset(keys.job(JOB), "status", "canceled")  # later changes are not in the delivery
        with Running(Notifier(settings(redis_server.url), redis)):
            [request] = receiver.wait_for(1)
    assert json.loads(request.body)["data"]["status"] == "succeeded"
    assert json.loads(request.body)["data"] == json.loads(delivery(redis, did)["body"])["data"]


def test_a_waiting_retry_survives_a_restart_of_redis():
    """Redis (append-only file, appendfsync always, as compose runs it) is killed (SIGKILL: no clean shutdown) and
    starts again while a retry waits: the notifier rides it out, and the delivery, whose state is all in Redis,
    arrives."""
    server = RedisServer(appendonly=True).start()
    try:
        redis = redis_lib.Redis.from_url(server.url)
        with Receiver([Answer(503, {"retry-after": "2"}), 200]) as receiver:
            did = enqueue(redis, JOB, receiver.url())
            with Running(Notifier(settings(server.url), connect_sync(server.url))):
                receiver.wait_for(1)
                wait_until(lambda: attempts(redis, did), what="the first attempt's record")
                server.stop(signal.SIGKILL)
                time.sleep(1.5)  # the notifier finds Redis away
                server.start()
                second = receiver.wait_for(2)[1]
                wait_until(lambda: final_state(redis, did), what="the delivery's end")
        assert second.headers["webhook-id"] == did
        assert [a["status_code"] for a in attempts(redis, did)] == [503, 200]
        assert delivery(redis, did)["state"] == "delivered"
    finally:
        server.cleanup()


def test_each_owner_signs_with_its_own_secret_in_a_notifier_without_api_keys(redis, redis_server, tmp_path):
    """The notifier as compose and k8s run it: no API keys, the secrets file and the global secret mounted. A key's
    job is signed with its owner's secret only, never the global one; a job made without keys with the global one."""
    mine, theirs = "k" * 24, "q" * 24
    own_secret = new_secret()
    table = tmp_path / "secrets.json"
    table.write_text(json.dumps({owner_id(mine): own_secret}))
    s = settings(redis_server.url, webhook_secrets_file=str(table))
    assert s.keys == [] and s.webhook_secret == SECRET
    with Receiver([200, 200]) as receiver:
        signed = enqueue(redis, JOB, receiver.url(), owner=owner_id(mine))
        unsigned = enqueue(redis, "f" * 32, receiver.url(), owner=owner_id(theirs))  # its secret since removed
        open_job = enqueue(redis, "e" * 32, receiver.url(), owner="")
        with Running(Notifier(s, redis)):
            requests = receiver.wait_for(2)
            ends = (signed, unsigned, open_job)
            wait_until(lambda: all(final_state(redis, d) for d in ends), what="the three ends")
    [request] = [r for r in requests if r.headers["webhook-id"] == signed]
    standardwebhooks.Webhook(own_secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    [other] = [r for r in requests if r.headers["webhook-id"] == open_job]
    standardwebhooks.Webhook(SECRET).verify(other.body, other.headers)
    assert len(receiver.requests) == 2
    assert delivery(redis, unsigned)["state"] == "failed"
    assert attempts(redis, unsigned)[0]["error"] == "no webhook secret for its owner"
