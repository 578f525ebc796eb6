"""Webhooks end to end on real processes: Redis, `diffusetv api`, `diffusetv worker`, `diffusetv notifier`, and a
receiver on 127.0.0.1 that DIFFUSETV_WEBHOOK_ALLOW_NETS allows.

Every `completed` delivery verifies with an independent Standard Webhooks implementation (the `standardwebhooks`
package); a receiver that answers 503 twice, then 200, gets one webhook-id three times within the schedule's bounds;
a notifier killed (SIGKILL) mid-retry and started again loses no delivery. (What a refused address and DNS rebinding
do, and a retry with the clock moved forward, are tested with a stub resolver and clock in tests/notifier.)
"""

from __future__ import annotations

import itertools
import signal
import time

import pytest
import standardwebhooks
from webhooks import Answer, Receiver, wait_until

from app.core.signing import new_secret
from stack import Stack, free_port, stack_env

SECRET = new_secret()
BASE_DELAY_S = 0.2
TIMEOUT_S = 3


@pytest.fixture
def hooked_stack(tiny_store, redis_server, tmp_path):
    """Redis, a worker, the API and a notifier as real processes; webhooks to 127.0.0.1 allowed, signed with SECRET,
    retried after BASE_DELAY_S x 2^n at most."""
    env = stack_env(
        redis_server.url,
        tiny_store.root,
        DIFFUSETV_WEBHOOK_SECRET=SECRET,
        DIFFUSETV_WEBHOOK_ALLOW_NETS="127.0.0.1/32",
        DIFFUSETV_WEBHOOK_BASE_DELAY_S=str(BASE_DELAY_S),
        DIFFUSETV_WEBHOOK_TIMEOUT_S=str(TIMEOUT_S),
    )
    s = Stack(env, free_port(), tmp_path)
    s.redis = redis_server
    s.start_worker()
    s.start_api()
    s.start("notifier", ["diffusetv", "notifier"])
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop_all()


def submit(client, receiver: Receiver, **fields) -> str:
    body = {"steps": 5, "webhook": receiver.url(), **fields}
    r = client.post("/generate", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def deliveries(client, job_id: str) -> list[dict]:
    r = client.get(f"/jobs/{job_id}/deliveries")
    assert r.status_code == 200, r.text
    return r.json()["deliveries"]


def settled(client, job_id: str, count: int) -> list[dict] | None:
    """The job's deliveries once `count` of them have ended (delivered or failed)."""
    found = deliveries(client, job_id)
    ended = [d for d in found if d["state"] in ("delivered", "failed")]
    return found if len(ended) >= count else None


def completed(client, job_id: str) -> list[dict] | None:
    """The job's deliveries once its job.completed delivery has ended."""
    found = deliveries(client, job_id)
    ended = [d for d in found if d["type"] == "job.completed" and d["state"] in ("delivered", "failed")]
    return found if ended else None


@pytest.mark.slow
def test_every_completed_delivery_verifies(hooked_stack):
    """A run, a job that follows it, a cache hit and a canceled job: each job.completed delivery arrives signed, and
    verifies with the standardwebhooks package; start events come for the jobs that asked."""
    with Receiver([204]) as receiver, hooked_stack.client() as c:
        led = submit(c, receiver, seed=11, webhook_events=["start", "completed"])
        followed = submit(c, receiver, seed=11)
        wait_until(lambda: settled(c, led, 2) and settled(c, followed, 1), what="the first deliveries")
        cached = submit(c, receiver, seed=11)  # answered from the cache: completed at once
        assert c.get(f"/jobs/{cached}").json()["status"] == "succeeded"
        canceled = submit(c, receiver, seed=12, steps=1000)
        cancel = c.delete(f"/jobs/{canceled}").status_code  # 409 only if a very fast worker finished it first
        assert cancel in (202, 409)
        wait_until(lambda: settled(c, cached, 1) and settled(c, canceled, 1), what="the later deliveries")
        requests = receiver.wait_for(5)
        ended = {job_id: deliveries(c, job_id) for job_id in (led, followed, cached, canceled)}
    verified = [
        {**standardwebhooks.Webhook(SECRET).verify(r.body, r.headers), "webhook_id": r.headers["webhook-id"]}
        for r in requests
    ]
    completed = {e["data"]["id"]: e for e in verified if e["type"] == "job.completed"}
    assert set(completed) == {led, followed, cached, canceled}
    for job_id in (led, followed, cached):
        data = completed[job_id]["data"]
        assert data["status"] == "succeeded" and data["image_url"] == f"/jobs/{job_id}/image.png"
        assert data["params"]["seed"] == 11
    assert completed[canceled]["data"]["status"] == ("canceled" if cancel == 202 else "succeeded")
    assert [e["data"]["id"] for e in verified if e["type"] == "job.started"] == [led]
    ids = [r.headers["webhook-id"] for r in requests]
    assert len(set(ids)) == len(ids) == 5  # one message each, none sent twice
    for job_id, listed in ended.items():
        [last] = [d for d in listed if d["type"] == "job.completed"]
        assert last["state"] == "delivered" and last["attempts"][-1]["status_code"] == 204
        assert last["id"] == completed[job_id]["webhook_id"]


@pytest.mark.slow
def test_503_twice_then_200_arrives_three_times_with_one_webhook_id(hooked_stack):
    with Receiver([503, 503, 200]) as receiver, hooked_stack.client() as c:
        job = submit(c, receiver, seed=21)
        requests = receiver.wait_for(3)
        [delivery] = wait_until(lambda: settled(c, job, 1), what="the delivery's end")
    assert [r.headers["webhook-id"] for r in requests] == [delivery["id"]] * 3
    assert len({r.body for r in requests}) == 1
    for r in requests:
        standardwebhooks.Webhook(SECRET).verify(r.body, r.headers)
    assert delivery["state"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 503, 200]
    for n, (before, after) in enumerate(itertools.pairwise(requests)):
        # retry k = n + 1 waits a draw from [0, BASE_DELAY_S x 2^(k-1)] after its attempt; a poll and an attempt may
        # add a little
        assert 0 <= after.at - before.at <= BASE_DELAY_S * 2**n + TIMEOUT_S + 5


@pytest.mark.slow
def test_a_notifier_killed_mid_retry_loses_no_delivery(hooked_stack):
    with Receiver([Answer(503, {"retry-after": "3"}), 200]) as receiver, hooked_stack.client() as c:
        job = submit(c, receiver, seed=31)
        [first] = receiver.wait_for(1)
        wait_until(lambda: (d := deliveries(c, job)) and d[0]["attempts"], what="the first attempt's record")
        notifier = hooked_stack.procs["notifier"]
        notifier.send_signal(signal.SIGKILL)  # while the retry waits out its Retry-After
        notifier.wait(10)
        time.sleep(4)  # the retry is due now, and no notifier runs
        assert len(receiver.requests) == 1
        [pending] = deliveries(c, job)
        assert pending["state"] == "pending" and pending["next_attempt_at"] is not None
        hooked_stack.start("notifier", ["diffusetv", "notifier"])
        second = receiver.wait_for(2)[1]
        [delivery] = wait_until(lambda: settled(c, job, 1), what="the delivery after the restart")
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == delivery["id"]
    standardwebhooks.Webhook(SECRET).verify(second.body, second.headers)
    assert delivery["state"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 200]


@pytest.mark.slow
def test_progress_is_throttled_latest_wins_and_verifies(hooked_stack):
    """A job that reports progress many times a second: its job.progress deliveries come at most one per 0.5 s, each
    the latest report then, each signed."""
    with Receiver([204]) as receiver, hooked_stack.client() as c:
        job = submit(c, receiver, seed=41, steps=400, webhook_events=["progress", "completed"])
        listed = wait_until(lambda: completed(c, job), what="the job.completed delivery")
    progress = [r for r in receiver.requests if b'"job.progress"' in r.body]
    assert progress, "no progress delivery arrived"
    steps = [standardwebhooks.Webhook(SECRET).verify(r.body, r.headers)["data"]["progress"]["step"] for r in progress]
    assert steps == sorted(set(steps))  # each a later report than the one before
    # PROGRESS_EVERY_S (0.5 s) apart when sent, against dozens of reports a second (one for a late first send)
    assert len(progress) <= 2 + (progress[-1].at - progress[0].at) / 0.5
    assert {d["type"] for d in listed} == {"job.progress", "job.completed"}
    assert len({r.headers["webhook-id"] for r in progress}) == len(progress)
