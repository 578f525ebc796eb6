"""Shared runs against a real Redis: joining, closing and canceling never interleave."""

import redis as redis_lib

from app.core import keys, runs
from app.core.jobs import JobStatus, new_job_id


def new_job(conn) -> str:
    job_id = new_job_id()
    conn.hset(keys.job(job_id), mapping={"id": job_id, "status": JobStatus.QUEUED.value})
    return job_id


def test_join_then_close_then_a_new_generation(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    a, b, c = new_job(conn), new_job(conn), new_job(conn)
    assert runs.subscribe(conn, "ek", a) == ("lead", a, "queued")
    assert runs.subscribe(conn, "ek", b) == ("follow", a, "queued")
    assert conn.hget(keys.job(b), "run") == a.encode()
    assert runs.close(conn, a, "done") == sorted([a, b])
    assert runs.subscribe(conn, "ek", c) == ("lead", c, "queued")  # a closed run takes no one
    runs.forget(conn, a)  # forgetting the old run leaves the new one alone
    assert runs.job_ids(conn, c) == [c] and conn.get(keys.open_run("ek")) == c.encode()


def test_cancel_withdraws_a_run_only_when_nobody_else_waits(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    a, b = new_job(conn), new_job(conn)
    runs.subscribe(conn, "ek", a)
    runs.subscribe(conn, "ek", b)
    assert runs.cancel_job(conn, a, "1.0", 60) == ("queued", False)  # b still waits
    assert conn.hget(keys.run(a), "status") == b"queued"
    assert runs.cancel_job(conn, b, "1.0", 60) == ("queued", True)  # the last one: withdrawn
    assert conn.hget(keys.run(a), "status") == b"canceled" and conn.get(keys.open_run("ek")) is None
    assert runs.cancel_job(conn, b, "1.0", 60) == ("canceled", False)
    c = new_job(conn)
    assert runs.subscribe(conn, "ek", c)[0] == "lead"
    events = conn.xrange(keys.events(a))
    assert events[-1][1][b"data"] == b'{"status": "canceled"}'


def test_close_of_a_stale_generation_keeps_the_open_pointer(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    a = new_job(conn)
    runs.subscribe(conn, "ek", a)
    runs.close(conn, a, "canceled")
    b = new_job(conn)
    runs.subscribe(conn, "ek", b)
    runs.close(conn, a, "failed")  # a late close of the old run
    assert conn.get(keys.open_run("ek")) == b.encode()
