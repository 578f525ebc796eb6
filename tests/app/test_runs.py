"""Shared runs against a real Redis: joining (the atomic submit), closing and canceling never interleave."""

import time

import pytest
import redis as redis_lib

from app.core import keys, runs
from app.core.jobs import JobStatus, new_job_id
from app.core.submit import Bounds, Entry, admit, quota_for

pytestmark = pytest.mark.each_redis


def submit(conn, engine_key: str) -> tuple[str, tuple[str, str, str]]:
    """A new job for `engine_key`, through the submit script: (its id, (outcome, run id, run status))."""
    job_id = new_job_id()
    now = time.time()
    entry = Entry(job_id, {"id": job_id, "status": JobStatus.QUEUED.value}, 1, "rq:queue:test", engine_key=engine_key)
    bounds = Bounds(
        quota_for("test", 1000, 2**30, 3600, now), ttl=600, result_ttl=600, max_queue=1000, max_followers=1000
    )
    admission = admit(conn, [entry], bounds, [[]], now)
    return job_id, (admission.outcome, admission.detail, admission.status)


def test_join_then_close_then_a_new_generation(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    a, led = submit(conn, "ek")
    assert led == ("lead", a, "queued")
    b, followed = submit(conn, "ek")
    assert followed == ("follow", a, "queued")
    assert conn.hget(keys.job(b), "run") == a.encode()
    assert runs.close(conn, a, "done") == sorted([a, b])
    c, again = submit(conn, "ek")
    assert again == ("lead", c, "queued")  # a closed run takes no one
    runs.forget(conn, a)  # forgetting the old run leaves the new one alone
    assert runs.job_ids(conn, c) == [c] and conn.get(keys.open_run("ek")) == c.encode()


def test_cancel_withdraws_a_run_only_when_nobody_else_waits(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    a, _ = submit(conn, "ek")
    b, _ = submit(conn, "ek")
    assert runs.cancel_job(conn, a, "1.0", 60) == ("queued", False)  # b still waits
    assert conn.hget(keys.run(a), "status") == b"queued"
    assert runs.cancel_job(conn, b, "1.0", 60) == ("queued", True)  # the last one: withdrawn
    assert conn.hget(keys.run(a), "status") == b"canceled" and conn.get(keys.open_run("ek")) is None
    assert runs.cancel_job(conn, b, "1.0", 60) == ("canceled", False)
    assert submit(conn, "ek")[1][0] == "lead"
    events = conn.xrange(keys.events(a))
    assert events[-1][1][b"data"] == b'{"status": "canceled"}'


def test_close_of_a_stale_generation_keeps_the_open_pointer(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    a, _ = submit(conn, "ek")
    runs.close(conn, a, "canceled")
    b, _ = submit(conn, "ek")
    runs.close(conn, a, "failed")  # a late close of the old run
    assert conn.get(keys.open_run("ek")) == b.encode()
