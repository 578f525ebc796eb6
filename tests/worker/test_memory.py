"""A model's memory: measured at load, reported in the heartbeat, and the budget's caps on the batch and the probe."""

from __future__ import annotations

import json

import pytest
import redis as redis_lib
import torch

from app.core import keys
from model_store import ModelStoreError
from worker.engine import load_engine
from worker.heartbeat import Heartbeat
from worker.memory import MB, budget_bytes, max_batch, parameter_bytes, peak_bytes, reference_cap


def test_the_budget_caps_the_batch_and_the_reference_call():
    assert max_batch(budget=100 * MB, parameters=40 * MB, activations=20 * MB, per_sample=10 * MB, cap=16) == 4
    assert max_batch(budget=100 * MB, parameters=40 * MB, activations=20 * MB, per_sample=MB, cap=16) == 16
    assert max_batch(budget=50 * MB, parameters=40 * MB, activations=20 * MB, per_sample=MB, cap=16) == 1
    assert reference_cap(budget=100 * MB, parameters=36 * MB, one_row=2 * MB, reference=128) == 32
    assert reference_cap(budget=100 * MB, parameters=36 * MB, one_row=None, reference=128) == 128
    assert budget_bytes(300, "cpu") == 300 * MB
    assert budget_bytes(None, "cpu") > 100 * MB  # 80% of the machine's


def test_parameters_are_counted_once_and_a_cpu_peak_is_seen():
    shared = torch.nn.Linear(100, 100)
    assert parameter_bytes([shared, torch.nn.Sequential(shared)]) == (100 * 100 + 100) * 4
    freed = torch.ones(256 * MB // 4)
    del freed  # memory the allocator may keep, freed but resident, as a loaded worker's heap does
    grown = peak_bytes(lambda: torch.ones(64 * MB // 4).sum(), "cpu")  # 64 MB live for a moment
    assert grown is None or grown >= 60 * MB


def test_a_loaded_model_reports_its_memory_and_a_small_budget_refuses_it(tiny_store, redis_server):
    engine = load_engine("tiny", tiny_store, device="cpu")
    memory = engine.memory
    assert memory.parameters == parameter_bytes([engine.denoiser.net])
    assert memory.rows == engine.probe.shapes.largest and memory.max_batch >= 16
    conn = redis_lib.Redis.from_url(redis_server.url)
    beat = Heartbeat(conn, "w1", {"tiny@1": engine.id}, period_s=1, memory={"tiny@1": memory.to_json()})
    beat.beat()
    assert json.loads(conn.get(keys.worker("w1")))["memory"]["tiny@1"]["parameters"] == memory.parameters
    beat.stop()
    small = load_engine("tiny", tiny_store, device="cpu", memory_budget_mb=64)
    assert small.memory.budget == 64 * MB
    with pytest.raises(ModelStoreError, match="over the memory budget"):
        load_engine("tiny", tiny_store, device="cpu", memory_budget_mb=0)


def test_a_memory_error_in_a_batch_fails_its_jobs_saying_so_and_the_worker_serves_on(service, monkeypatch):
    """Memory exhausted under an address-space limit (`ulimit -v`) is an exception, not a kill: a MemoryError (most
    often without a message) fails the batch's jobs with an error that says what happened, and the next job runs."""
    from worker import jobs

    real, failures = jobs.run_batch, [MemoryError()]

    def out_of_memory_once(*args):
        if failures:
            raise failures.pop()
        return real(*args)

    monkeypatch.setattr(jobs, "run_batch", out_of_memory_once)
    first = service.post("/generate", json={"seed": 1, "steps": 4}).json()["id"]
    second = service.post("/generate", json={"seed": 2, "steps": 5}).json()["id"]  # other steps: another batch
    service.work()
    failed = service.get(f"/jobs/{first}").json()
    assert failed["status"] == "failed" and failed["error"] == "MemoryError: out of memory", failed
    assert service.get(f"/jobs/{second}").json()["status"] == "succeeded"
