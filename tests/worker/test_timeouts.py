"""A job's time on the worker: the batch its leader's time covers, the timeout message and the health promise, all
from the job's own RQ timeout (app.core.timeouts)."""

import time
from types import SimpleNamespace

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from app.core import keys
from app.core.settings import Settings, get_settings
from app.core.spec import GenerateSpec
from helpers import SD15_FLOPS, save_sd_manifest
from worker import health, jobs
from worker.collect import batch_room
from worker.memory import Memory

SD15_DEFAULT_JOB = 50 * 2 * SD15_FLOPS["unet_row"] + SD15_FLOPS["vae_decode"] + SD15_FLOPS["text_encoder"]
EACH = SD15_DEFAULT_JOB + SD15_FLOPS["text_encoder"]  # a job that joins: guided, with a negative prompt


def sd_spec(manifest, steps=50, guidance=7.5) -> GenerateSpec:
    return GenerateSpec(
        "0" * 32, manifest.ref, manifest.identity, 1, steps, 0.0, guidance=guidance, width=512, height=512
    )


def test_the_room_is_max_batch_size_and_the_memory_budgets_batch_less_the_leader(tiny_store):
    tiny = tiny_store.resolve("tiny")
    spec = GenerateSpec("0" * 32, tiny.ref, tiny.identity, 1, 1000, 0.0)
    engine = SimpleNamespace(manifest=tiny, max_batch=None)  # no FLOPs recorded: no bound from the time
    assert batch_room(Settings(max_batch_size=16), engine, spec, 600) == 15
    assert batch_room(Settings(max_batch_size=16), SimpleNamespace(manifest=tiny, max_batch=4), spec, 600) == 3
    assert batch_room(Settings(max_batch_size=2), SimpleNamespace(manifest=tiny, max_batch=4), spec, 600) == 1
    assert batch_room(Settings(max_batch_size=16), SimpleNamespace(manifest=tiny, max_batch=1), spec, 600) == 0


def test_the_room_holds_the_jobs_whose_work_the_leaders_time_covers(tiny_store):
    sd = save_sd_manifest(tiny_store)
    engine = SimpleNamespace(manifest=sd, max_batch=None)
    cpu = Settings(max_batch_size=16)  # MIN_GFLOPS 20: a default job's time (4143 s) covers that job alone
    assert batch_room(cpu, engine, sd_spec(sd), 4143) == 0
    gpu = Settings(max_batch_size=16, min_gflops=1000)  # 1 TFLOP/s: its time is JOB_TIMEOUT, 600 TFLOP of work
    covered = 600 * 1000 * 10**9
    fit = (covered - SD15_DEFAULT_JOB) // EACH  # the jobs that may join, each counted at its costliest
    assert fit == 6 and batch_room(gpu, engine, sd_spec(sd), 600) == 6
    assert SD15_DEFAULT_JOB + 6 * EACH <= covered < SD15_DEFAULT_JOB + 7 * EACH
    assert batch_room(gpu, SimpleNamespace(manifest=sd, max_batch=4), sd_spec(sd), 600) == 3  # memory's is less
    assert batch_room(Settings(max_batch_size=5, min_gflops=1000), engine, sd_spec(sd), 600) == 4
    unguided = sd_spec(sd, guidance=1.0)  # a lighter leader leaves more room, the joiners still counted guided
    assert batch_room(gpu, engine, unguided, 600) == (covered - SD15_DEFAULT_JOB + 50 * SD15_FLOPS["unet_row"]) // EACH
    assert batch_room(cpu, engine, sd_spec(sd, steps=2), 600) == 1  # JOB_TIMEOUT's floor covers more than the leader


def test_a_batch_holds_no_more_than_the_memory_budget_allows(service):
    service.engine.memory = Memory(parameters=1, activations=1, rows=1, per_sample=1, budget=1, max_batch=3)
    ids = [service.post("/generate", json={"seed": i, "steps": 4}).json()["id"] for i in range(7)]
    service.work()
    assert sorted(service.get(f"/jobs/{i}").json()["batch_size"] for i in ids) == [1, 3, 3, 3, 3, 3, 3]


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
