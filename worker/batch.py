"""Run a batch of model runs on one engine, keeping each job's own lifecycle.

A batch holds runs (app.core.runs): each is one sample, one engine key, and the jobs waiting for it.
Every job goes queued -> running (progress at most ~10 writes/s) -> succeeded with its PNG, or is
canceled between steps, or fails. A run whose jobs were all canceled leaves the batch at the next
step; the others are unaffected, since a sample's output does not depend on its batch mates.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from app.core import events, keys, runs
from app.core.jobs import JobSpec, JobStatus, expire, transition
from app.core.png import encode_png
from worker import registry
from worker.engine import Engine

log = logging.getLogger("diffusetv.worker")
PROGRESS_INTERVAL_S = 0.1
ACTIVE = (JobStatus.QUEUED.value.encode(), JobStatus.RUNNING.value.encode())


@dataclass
class Run:
    spec: JobSpec  # the leading job's spec: seed, steps, eta
    cache_key: str
    active: bool = True
    last_progress: float = field(default=0.0)

    @property
    def key(self) -> str:
        return self.spec.run_key or self.spec.job_id  # a job without a run key is a run of its own

    def job_ids(self, redis) -> list[str]:
        return runs.job_ids(redis, self.spec.run_key) if self.spec.run_key else [self.spec.job_id]


def log_line(**fields) -> None:
    log.info(json.dumps({"event": "job", **fields}, sort_keys=True))


def active_jobs(redis, batch: list[Run]) -> list[list[str]]:
    """For each run, the ids of its jobs still queued or running."""
    ids = [run.job_ids(redis) for run in batch]
    pipe = redis.pipeline(transaction=False)
    for job_ids in ids:
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "status")
    statuses = iter(pipe.execute())
    return [[j for j in job_ids if next(statuses) in ACTIVE] for job_ids in ids]


def start(redis, batch: list[Run], engine: Engine) -> list[Run]:
    """queued -> running for every job of every run; runs nobody waits for any more are dropped."""
    now = repr(time.time())
    engine_json = json.dumps({"device": engine.device, "precision": engine.precision})
    kept = []
    for run, job_ids in zip(batch, active_jobs(redis, batch), strict=True):
        if not job_ids:
            log_line(id=run.spec.job_id, status="canceled", skipped=True)
            continue
        if run.spec.run_key:
            runs.mark_running(redis, run.spec.run_key, registry.WORKER_ID, run.spec.job_id)
        for job_id in job_ids:
            fields = {
                "status": JobStatus.RUNNING,
                "started_at": now,
                "engine": engine_json,
                "progress": json.dumps({"step": 0, "steps": run.spec.steps}),
            }
            transition(redis, job_id, (JobStatus.QUEUED,), fields)
        kept.append(run)
    return kept


def report_progress(
    redis, batch: list[Run], waiting: list[list[str]], step: int, steps: int, force: bool, ttl: int
) -> None:
    """Progress on the job records and their event streams: at most every PROGRESS_INTERVAL_S, and on `force`."""
    now = time.monotonic()
    pipe = redis.pipeline(transaction=False)
    wrote = False
    progress = {"step": step, "steps": steps}
    for run, job_ids in zip(batch, waiting, strict=True):
        if run.active and (force or now - run.last_progress >= PROGRESS_INTERVAL_S or step == steps):
            for job_id in job_ids:
                pipe.hset(keys.job(job_id), "progress", json.dumps(progress))
                events.emit(pipe, job_id, events.PROGRESS, progress, ttl)
            run.last_progress, wrote = now, True
    if wrote:
        pipe.execute()


def preview_url(pixels) -> str:
    """A small PNG data URL of one x0 prediction (no metadata: it is not a result)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def send_previews(redis, engine: Engine, batch: list[Run], waiting: list[list[str]], x0, step: int, ttl: int) -> None:
    """The step's x0 of each run, to the jobs that asked for previews. Reads only: the bytes stay the same."""
    pipe = redis.pipeline(transaction=False)
    for job_ids in waiting:
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "params")
    wants = iter(pipe.execute())
    pipe = redis.pipeline(transaction=False)
    for i, job_ids in enumerate(waiting):
        asking = [j for j in job_ids if json.loads(next(wants) or b"{}").get("previews")]
        if asking:
            url = preview_url(engine.pixels(x0[i : i + 1])[0])
            for job_id in asking:
                events.emit(pipe, job_id, events.PREVIEW, {"step": step, "steps": batch[i].spec.steps, "url": url}, ttl)
    pipe.execute()


def finish(redis, run: Run, png: bytes, batch_size: int, ttl: int) -> int:
    """Close the run (no job can join it now), then give every waiting job the PNG. Returns how many got it."""
    if run.spec.run_key:
        runs.set_status(redis, run.spec.run_key, "done")
    sha256 = hashlib.sha256(png).hexdigest()
    fields = {
        "status": JobStatus.SUCCEEDED,
        "finished_at": repr(time.time()),
        "sha256": sha256,
        "batch_size": str(batch_size),
    }
    delivered = []
    for job_id in run.job_ids(redis):
        redis.set(keys.png(job_id), png, ex=ttl)
        if transition(redis, job_id, (JobStatus.QUEUED, JobStatus.RUNNING), fields) in (
            JobStatus.QUEUED.value,
            JobStatus.RUNNING.value,
        ):
            expire(redis, job_id, ttl)
            delivered.append(job_id)
        else:
            redis.delete(keys.png(job_id))  # canceled at the last moment: keep nothing
    if delivered:
        redis.set(keys.cache(run.cache_key), json.dumps({"job": delivered[0], "sha256": sha256}), ex=ttl)
    if run.spec.run_key:
        runs.close(redis, run.spec.run_key)
    return len(delivered)


def run_batch(redis, engine: Engine, specs: Sequence[JobSpec], result_ttl: int) -> dict[str, str]:
    """Run the runs led by `specs` together; returns each leading job id's outcome."""
    steps = specs[0].steps
    if any(s.steps != steps for s in specs):
        raise ValueError("a batch shares one step count")
    started = time.monotonic()
    engine_id = f"{engine.device}/{engine.precision}"
    batch = [Run(s, runs.engine_key(s.digest, s.seed, s.steps, s.eta, engine_id)) for s in specs]
    outcome = {s.job_id: "canceled" for s in specs}
    batch = start(redis, batch, engine)
    if not batch:
        return outcome
    size = len(batch)
    sampler = engine.run([r.spec.seed for r in batch], steps, [r.spec.eta for r in batch])
    live = list(batch)  # the runs still in the sampler, in its row order
    preview_at = events.preview_steps(steps)
    last = None
    for last in sampler:
        waiting = active_jobs(redis, live)
        gone = [i for i, job_ids in enumerate(waiting) if not job_ids]
        for i in gone:
            live[i].active = False
        if gone and len(gone) < len(live):
            sampler.drop(gone)  # nobody waits for these any more: they leave the batch
        live, waiting = [r for r in live if r.active], [w for w in waiting if w]
        if not live:
            break
        preview = last.step in preview_at
        report_progress(redis, live, waiting, last.step, steps, preview, result_ttl)
        if preview:
            send_previews(redis, engine, live, waiting, last.x0_pred, last.step, result_ttl)
    if last is not None and last.step == steps and live:
        pixels = engine.pixels(last.x0_pred)
        for i, run in enumerate(live):
            png = encode_png(pixels[i], engine.parameters(run.spec.seed, steps, run.spec.eta))
            outcome[run.spec.job_id] = "succeeded" if finish(redis, run, png, size, result_ttl) else "canceled"
    for run in batch:
        if not run.active and run.spec.run_key:
            runs.close(redis, run.spec.run_key, "canceled")
    count(redis, size, steps, outcome, time.monotonic() - started)
    for run in batch:
        s = run.spec
        log_line(
            id=s.job_id,
            status=outcome[s.job_id],
            seed=s.seed,
            steps=steps,
            eta=s.eta,
            model=s.model_ref,
            batch_size=size,
            seconds=round(time.monotonic() - started, 3),
        )
    return outcome


def count(redis, size: int, steps: int, outcome: dict[str, str], seconds: float) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(keys.METRICS, "batches", 1)
    pipe.hincrby(keys.METRICS, f"batch_size:{size}", 1)
    pipe.hincrby(keys.METRICS, "runs", size)
    pipe.hincrby(keys.METRICS, "image_steps", steps * size)
    pipe.hincrbyfloat(keys.METRICS, "run_seconds", seconds)
    for status in outcome.values():
        pipe.hincrby(keys.METRICS, f"runs_{status}", 1)
    pipe.execute()


def fail_jobs(redis, job_ids: Sequence[str], error: str, ttl: int) -> None:
    """Mark jobs failed with a clear error (from queued or running)."""
    for job_id in job_ids:
        fields = {"status": JobStatus.FAILED, "finished_at": repr(time.time()), "error": error}
        if transition(redis, job_id, (JobStatus.QUEUED, JobStatus.RUNNING), fields):
            expire(redis, job_id, ttl)
            redis.hincrby(keys.METRICS, "jobs_failed", 1)


def fail(redis, specs: Sequence[JobSpec], error: str, ttl: int) -> None:
    """Fail every job waiting for the runs these specs lead, and close the runs."""
    for spec in specs:
        job_ids = runs.job_ids(redis, spec.run_key) if spec.run_key else []
        fail_jobs(redis, job_ids or [spec.job_id], error, ttl)
        if spec.run_key:
            runs.close(redis, spec.run_key)
