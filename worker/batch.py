"""Run a batch of generation jobs on one engine, keeping each job's own lifecycle.

Each job: queued -> running (progress at most ~10 writes/s) -> succeeded with its PNG, or canceled
between steps, or failed. A canceled job leaves the batch; the others are not affected, since a
sample's output does not depend on its batch mates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.core import keys
from app.core.jobs import JobSpec, JobStatus, transition
from app.core.png import encode_png
from worker.engine import Engine

log = logging.getLogger("diffusetv.worker")
PROGRESS_INTERVAL_S = 0.1


@dataclass
class Slot:
    spec: JobSpec
    active: bool = True
    last_progress: float = field(default=0.0)


def log_line(**fields) -> None:
    log.info(json.dumps({"event": "job", **fields}, sort_keys=True))


def start(redis, slots: list[Slot], engine: Engine) -> list[Slot]:
    """queued -> running for each job; those canceled meanwhile are dropped."""
    now = repr(time.time())
    engine_json = json.dumps({"device": engine.device, "precision": engine.precision})
    running = []
    for slot in slots:
        fields = {
            "status": JobStatus.RUNNING,
            "started_at": now,
            "engine": engine_json,
            "batch_size": str(len(slots)),
            "progress": json.dumps({"step": 0, "steps": slot.spec.steps}),
        }
        old = transition(redis, slot.spec.job_id, (JobStatus.QUEUED, JobStatus.RUNNING), fields)
        if old in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
            running.append(slot)
        else:
            log_line(id=slot.spec.job_id, status=old or "missing", skipped=True)
    return running


def still_running(redis, slots: list[Slot]) -> list[bool]:
    pipe = redis.pipeline(transaction=False)
    for slot in slots:
        pipe.hget(keys.job(slot.spec.job_id), "status")
    return [s == JobStatus.RUNNING.value.encode() for s in pipe.execute()]


def report_progress(redis, slots: list[Slot], step: int, steps: int) -> None:
    now = time.monotonic()
    pipe = redis.pipeline(transaction=False)
    wrote = False
    for slot in slots:
        if slot.active and (now - slot.last_progress >= PROGRESS_INTERVAL_S or step == steps):
            pipe.hset(keys.job(slot.spec.job_id), "progress", json.dumps({"step": step, "steps": steps}))
            slot.last_progress, wrote = now, True
    if wrote:
        pipe.execute()


def finish(redis, slot: Slot, png: bytes, ttl: int) -> None:
    job_id = slot.spec.job_id
    redis.set(keys.png(job_id), png, ex=ttl)
    fields = {
        "status": JobStatus.SUCCEEDED,
        "finished_at": repr(time.time()),
        "sha256": hashlib.sha256(png).hexdigest(),
    }
    if transition(redis, job_id, (JobStatus.RUNNING,), fields) != JobStatus.RUNNING.value:
        redis.delete(keys.png(job_id))  # canceled at the last moment: keep nothing
        slot.active = False
        return
    redis.expire(keys.job(job_id), ttl)


def run_batch(redis, engine: Engine, specs: Sequence[JobSpec], result_ttl: int) -> dict[str, str]:
    """Run the jobs together; returns each job id's final status."""
    steps = specs[0].steps
    if any(s.steps != steps for s in specs):
        raise ValueError("a batch shares one step count")
    started = time.monotonic()
    slots = start(redis, [Slot(s) for s in specs], engine)
    outcome = {s.job_id: "skipped" for s in specs}
    if not slots:
        return outcome
    last = None
    for last in engine.run([s.spec.seed for s in slots], steps, [s.spec.eta for s in slots]):
        flags = still_running(redis, slots)
        for slot, alive in zip(slots, flags, strict=True):
            if slot.active and not alive:
                slot.active = False  # canceled: its row finishes with the batch but nothing is kept
                outcome[slot.spec.job_id] = JobStatus.CANCELED.value
        if not any(s.active for s in slots):
            break
        report_progress(redis, slots, last.step, steps)
    if last is not None and last.step == steps:
        pixels = engine.pixels(last.x0_pred)
        for i, slot in enumerate(slots):
            if slot.active:
                params = engine.parameters(slot.spec.seed, steps, slot.spec.eta)
                finish(redis, slot, encode_png(pixels[i], params), result_ttl)
                outcome[slot.spec.job_id] = JobStatus.SUCCEEDED.value if slot.active else JobStatus.CANCELED.value
    elapsed = time.monotonic() - started
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(keys.METRICS, "model_runs", 1)
    pipe.hincrby(keys.METRICS, "image_steps", steps * len(slots))
    pipe.hincrbyfloat(keys.METRICS, "run_seconds", elapsed)
    for status in outcome.values():
        pipe.hincrby(keys.METRICS, f"jobs_{status}", 1)
    pipe.execute()
    for slot in slots:
        s = slot.spec
        log_line(
            id=s.job_id,
            status=outcome[s.job_id],
            seed=s.seed,
            steps=steps,
            eta=s.eta,
            model=s.model_ref,
            batch_size=len(slots),
            seconds=round(elapsed, 3),
        )
    return outcome


def fail(redis, job_ids: Sequence[str], error: str, ttl: int) -> None:
    """Mark jobs failed with a clear error (from queued or running)."""
    for job_id in job_ids:
        fields = {"status": JobStatus.FAILED, "finished_at": repr(time.time()), "error": error}
        if transition(redis, job_id, (JobStatus.QUEUED, JobStatus.RUNNING), fields):
            redis.expire(keys.job(job_id), ttl)
    redis.hincrby(keys.METRICS, "jobs_failed", len(job_ids))
