"""A job's time on the worker: the timeout message and the health promise, from the job's own RQ timeout
(app.core.timeouts)."""

import time

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from app.core import keys
from app.core.settings import get_settings
from worker import health, jobs


@pytest.fixture
def settings_from_env():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_timeout_message_says_the_jobs_own_time_and_where_it_came_from(settings_from_env):
    assert jobs.timed_out(600) == "timed out after 600 s (DIFFUSETV_JOB_TIMEOUT)"
    assert jobs.timed_out(4143) == "timed out after 4143 s (its model's work at DIFFUSETV_MIN_GFLOPS=20 GFLOP/s)"


def set_rq_timeout(conn, job_id: str, seconds: int) -> None:
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    job.timeout = seconds
    job.save()


def test_a_job_past_its_own_timeout_fails_saying_it(service, monkeypatch):
    """RQ ends the job at its own timeout (here 2 s, not JOB_TIMEOUT's 600), and the error says that time."""
    job_id = service.post("/generate", json={"seed": 1, "steps": 4}).json()["id"]
    set_rq_timeout(service.redis, job_id, 2)
    monkeypatch.setattr(jobs, "run_batch", lambda *args: time.sleep(30))
    service.work()
    job = service.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"] == "timed out after 2 s (DIFFUSETV_JOB_TIMEOUT)", job


def test_a_busy_worker_promises_its_jobs_own_timeout(service, monkeypatch):
    promised = []
    real = health.promise
    monkeypatch.setattr(health, "promise", lambda path, s, state: promised.append((s, state)) or real(path, s, state))
    job_id = service.post("/generate", json={"seed": 1, "steps": 4}).json()["id"]
    set_rq_timeout(service.redis, job_id, 5000)
    service.work()
    assert service.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
    busy = [s for s, state in promised if state == "busy"]
    # JOB_TIMEOUT until RQ has started the job, then the job's own time before it runs
    assert busy and busy[-1] == 5000 + health.MARGIN_S and set(busy) <= {600 + health.MARGIN_S, 5000 + health.MARGIN_S}
    assert promised[-1][1] == "idle"
    assert service.redis.exists(keys.job(job_id))
