"""Run a batch of model runs on one engine, keeping each job's own lifecycle.

A batch holds runs (app.core.runs): each is one sample, led by one queued job and shared by every job
that asked for the same engine key meanwhile. Every job goes queued -> running (progress at most ~10
writes/s) -> succeeded with its PNG, or is canceled between steps, or fails. A run whose jobs were all
canceled leaves the batch at the next step; the others are unaffected, since a sample's output does not
depend on its batch mates.

A full Redis (`maxmemory`, `noeviction`) refuses writes for a while: progress, previews and counters are then
skipped, every other write is tried again until Redis takes it or the job's time is up (its RQ timeout, JOB_TIMEOUT or
more: app.core.timeouts; RQ's timeout interrupts the wait), and failing a run never raises (`fail`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis as redis_lib

from app.core import events, hooks, keys, objects, runs
from app.core.jobs import DELIVERED, UNSTORED, JobStatus, deliver, transition
from app.core.png import encode_png
from app.core.redis import is_oom, skip_when_full, while_full
from app.core.results import ResultStore, StoreUnavailable, open_store
from app.core.settings import get_settings
from app.core.spec import GenerateSpec, Spec
from worker import inputs, registry
from worker.engine import Engine

log = logging.getLogger("diffusetv.worker")
PROGRESS_INTERVAL_S = 0.1
FULL_PAUSE_S = 1.0  # after a full Redis refused a progress write, the next one waits this long
FAIL_PATIENCE_S = 10.0  # how long failing a run waits for a full Redis before it leaves the run to the reaper
ACTIVE = (JobStatus.QUEUED.value.encode(), JobStatus.RUNNING.value.encode())


@dataclass
class Run:
    spec: Spec  # the leading job's spec; its job id is the run's id
    cache_key: str
    active: bool = True
    last_progress: float = field(default=0.0)
    previews: bool = True  # False once the result store did not take a preview: no more for its batch (a stall each)
    previewed: list[str] = field(default_factory=list)  # its stored previews' objects, kept as long as its jobs

    @property
    def id(self) -> str:
        return self.spec.job_id

    @property
    def steps(self) -> int:
        """The steps its progress counts: those its row runs (an image-to-image row runs the last ones), an
        inversion's and its reconstruction's."""
        return getattr(self.spec, "steps_run", self.spec.steps)

    def ran(self, step: int) -> int:
        """The steps its row has run when its batch has run `step`: an image-to-image row enters at its start step
        (app.core.spec.GenerateSpec.start); every other run counts the batch's steps."""
        return step - getattr(self.spec, "start", 0)


def log_line(**fields) -> None:
    log.info(json.dumps({"event": "job", **fields}, sort_keys=True))


def take(redis, run_id: str, queue_key: str, timeout: int, inputs: Sequence[str] = ()) -> None:
    """Record that this worker holds the run RQ handed it from `queue_key`, before anything else: if it dies, the
    reaper re-queues it; and the queue keeps no copy of it. Its record, and the `inputs` it reads (app.core.objects:
    INPUT), get a fresh TTL for the time it may take, `timeout` seconds (Settings.pending_ttl), so that a re-run after
    a reap still finds its inputs.

    A run's id is its leading job's id, which is also its RQ job's id."""
    ttl = get_settings().pending_ttl(timeout)
    what = f"taking run {run_id}"
    while_full(log, what, runs.mark_running, redis, run_id, registry.WORKER_ID, run_id, [run_id], ttl, queue_key)
    keep_inputs(redis, inputs, timeout)


def claim_run(redis, queue_key: str, spec: Spec, timeout: int) -> bool:
    """Take a queued run to join this worker's batch: off its queue and recorded as this worker's in one step
    (app.core.runs.claim), so that a worker killed in between leaves nothing that neither the queue nor the reaper
    holds. False when another worker had it, or Redis is full (the batch goes without it)."""
    ttl = get_settings().pending_ttl(timeout)
    try:
        return runs.claim(redis, queue_key, spec.job_id, registry.WORKER_ID, ttl)
    except redis_lib.RedisError as exc:
        if not is_oom(exc):
            raise
        log.warning("Redis is full (maxmemory): run %s not claimed for the batch", spec.job_id)
        return False


def keep_inputs(redis, digests: Sequence[str], timeout: int) -> None:
    """The stored inputs a run reads (app.core.objects: INPUT) kept for the time the run may take."""
    ttl = get_settings().pending_ttl(timeout)
    for digest in digests:
        keep_input(redis, digest, ttl)


def keep_input(redis, digest: str, ttl: int) -> None:
    """A stored input kept `ttl` more seconds (never fewer: another job may need it longer)."""
    objects.keep(redis, objects.name(objects.INPUT, digest), ttl)


def active_jobs(redis, batch: list[Run]) -> list[list[str]]:
    """For each run, the ids of its jobs still queued or running."""
    ids = [runs.job_ids(redis, run.id) for run in batch]
    pipe = redis.pipeline(transaction=False)
    for job_ids in ids:
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "status")
    statuses = iter(pipe.execute())
    return [[j for j in job_ids if next(statuses) in ACTIVE] for job_ids in ids]


def start(redis, batch: list[Run], engine: Engine) -> list[Run]:
    """queued -> running for every job of every run; runs nobody waits for any more are closed and dropped."""
    now = repr(time.time())
    kept = []
    for run, job_ids in zip(batch, active_jobs(redis, batch), strict=True):
        if not job_ids:
            while_full(log, f"closing run {run.id}", runs.close, redis, run.id, "canceled")
            runs.forget(redis, run.id)
            log_line(id=run.id, status="canceled", skipped=True)
            continue
        for job_id in job_ids:
            fields = {
                "status": JobStatus.RUNNING,
                "started_at": now,
                "engine": json.dumps(engine.record()),
                "progress": json.dumps({"step": 0, "steps": run.steps}),
            }
            while_full(log, f"starting job {job_id}", transition, redis, job_id, (JobStatus.QUEUED,), fields)
        kept.append(run)
    return kept


def report_progress(redis, batch: list[Run], waiting: list[list[str]], step: int, force: bool, ttl: int) -> None:
    """Progress on the job records, their event streams and their `progress` webhooks (app.core.hooks: latest-wins,
    throttled per job): at most every PROGRESS_INTERVAL_S, and on `force`. A full Redis skips it, and the next one
    waits FULL_PAUSE_S. `step` is the batch's; each run counts the steps its row has run (Run.ran: a row that enters
    late reports nothing before it enters)."""
    now = time.monotonic()
    pipe = redis.pipeline(transaction=False)
    wrote = False
    for run, job_ids in zip(batch, waiting, strict=True):
        ran = run.ran(step)
        if ran <= 0:
            continue
        progress = {"step": ran, "steps": run.steps}
        if run.active and (force or now - run.last_progress >= PROGRESS_INTERVAL_S or ran == run.steps):
            for job_id in job_ids:
                pipe.hset(keys.job(job_id), "progress", json.dumps(progress))
                events.emit(pipe, job_id, events.PROGRESS, progress, ttl)
                hooks.progress(pipe, job_id)
            run.last_progress, wrote = now, True
    if wrote and not skip_when_full(log, f"progress at step {step}", pipe.execute):
        for run in batch:
            run.last_progress = now + FULL_PAUSE_S


PREVIEW_WINDOW_S = 1.0  # a preview that the result store does not take at once is skipped, as a full Redis skips it


def preview_urls(redis, store: ResultStore, png: bytes, job_ids: list[str], ttl: int, run: Run) -> dict | None:
    """Each job's URL of one of `run`'s previews: a data URL where the store keeps previews inline (redis), else the
    API's route to the stored object (app.core.objects), kept `ttl` seconds and again when the run finishes (as long as
    the jobs' event streams: Run.previewed); None when the store does not take it."""
    if store.inline_previews:
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        return dict.fromkeys(job_ids, url)
    sha256 = hashlib.sha256(png).hexdigest()
    name = objects.name(objects.PNG, sha256)
    try:
        gen = objects.put(redis, store, name, png, ttl, PREVIEW_WINDOW_S)
    except StoreUnavailable as exc:
        log.warning("preview skipped: %s", exc)
        return None
    if not objects.publish(redis, name, len(png), ttl, gen):
        return None
    run.previewed.append(name)
    return {job_id: f"/jobs/{job_id}/previews/{sha256}.png" for job_id in job_ids}


def send_previews(redis, engine: Engine, batch: list[Run], waiting: list[list[str]], x0, step: int, ttl: int) -> None:
    """The step's x0 of each run, to the jobs that asked for previews (a full Redis skips them; a result store that
    does not take one stops them for the rest of the batch). Reads only: the bytes stay the same."""
    pipe = redis.pipeline(transaction=False)
    for job_ids in waiting:
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "params")
    wants = iter(pipe.execute())
    pipe = redis.pipeline(transaction=False)
    store = open_store(get_settings(), redis)
    for i, job_ids in enumerate(waiting):
        asking = [j for j in job_ids if json.loads(next(wants) or b"{}").get("previews") and batch[i].previews]
        png = encode_png(engine.pixels(x0[i : i + 1])[0]) if asking else b""
        urls = asking and preview_urls(redis, store, png, asking, ttl, batch[i])
        if asking and urls is None:  # the store stalled once: the batch's previews stop, its result is what matters
            for run in batch:
                run.previews = False
        if urls:
            progress = {"step": batch[i].ran(step), "steps": batch[i].steps}
            for job_id in asking:
                events.emit(pipe, job_id, events.PREVIEW, {**progress, "url": urls[job_id]}, ttl)
    skip_when_full(log, f"previews at step {step}", pipe.execute)


EXTRAS = {"strip": objects.PNG, "latent": objects.LATENT}  # a result's other objects: interpolation's, inversion's
STORE_TRIES = 3  # deliveries that find an object swept (app.core.jobs.UNSTORED) before the run fails


def store_results(redis, blobs: dict[str, bytes], ttl: int) -> dict[str, str]:
    """The result's objects into the result store (app.core.objects.put: reserved first, retried with backoff for
    RESULTS_RETRY_S); returns name -> the reservation it was uploaded under, which the deliver script checks. Raises
    StoreUnavailable("result store unavailable: ...")."""
    settings = get_settings()
    store, window = open_store(settings, redis), settings.results_retry_window_s
    # held long enough to reach the deliver script, which keeps it as long as its jobs (deliver_stored stores it again
    # if the hold ran out first); never longer, or it would outlive them
    return {
        name: while_full(log, f"storing {name}", objects.put, redis, store, name, data, 2 * window, window)
        for name, data in blobs.items()
    }


def finish(
    redis, run: Run, png: bytes, batch_size: int, engine: Engine, ttl: int, extras: dict[str, bytes] | None = None
) -> str:
    """Store the result (the PNG and the `extras`, EXTRAS: an interpolation's strip, an inversion's latent), close the
    run (no job can join it now), then give every job still waiting the stored objects. Returns the run's outcome:
    succeeded (some job got it), canceled (none waited), or failed (the result store did not take it: the run's jobs
    fail with that error; a job is never succeeded without its objects). A full Redis delays it: each write is tried
    again until Redis takes it (or the job's time is up)."""
    extras = extras or {}
    sha256 = hashlib.sha256(png).hexdigest()
    blobs = {objects.name(objects.PNG, sha256): png}
    blobs.update({objects.name(EXTRAS[n], hashlib.sha256(data).hexdigest()): data for n, data in extras.items()})
    try:
        gens = store_results(redis, blobs, ttl)
    except StoreUnavailable as exc:
        fail(redis, [run.id], str(exc), ttl)
        return JobStatus.FAILED.value
    now = repr(time.time())
    fields = {
        "finished_at": now,
        "sha256": sha256,
        "batch_size": str(batch_size),
        "engine": json.dumps(engine.record()),
        "progress": json.dumps({"step": run.steps, "steps": run.steps}),
        **{f"{name}_sha256": hashlib.sha256(data).hexdigest() for name, data in extras.items()},
    }
    delivered = []
    for job_id in while_full(log, f"closing run {run.id}", runs.close, redis, run.id, "done"):
        # the first job to get the PNG also becomes the cache entry, in the same atomic step
        entry = None if delivered else (keys.cache(run.cache_key), json.dumps({"job": job_id, "sha256": sha256}))
        try:
            outcome = deliver_stored(redis, job_id, ttl, fields, blobs, gens, entry)
        except StoreUnavailable as exc:
            while_full(log, f"failing job {job_id}", runs.fail_jobs, redis, [job_id], str(exc), ttl)
            continue
        if outcome == DELIVERED:
            delivered.append(job_id)
            # a job that joined in the last moment
            while_full(log, f"finishing job {job_id}", redis.hsetnx, keys.job(job_id), "started_at", now)
    runs.forget(redis, run.id)
    for name in run.previewed:  # its previews, as long as the event streams that show them
        skip_when_full(log, f"keeping {name}", objects.keep, redis, name, ttl)
    return JobStatus.SUCCEEDED.value if delivered else JobStatus.CANCELED.value


def deliver_stored(redis, job_id: str, ttl: int, fields, blobs: dict[str, bytes], gens: dict[str, str], entry) -> int:
    """Deliver one job its stored objects; an object swept between its upload and the delivery (its hold passed) is
    stored again, at most STORE_TRIES times. Returns app.core.jobs' DELIVERED or ENDED."""
    sizes = {name: len(data) for name, data in blobs.items()}
    for _ in range(STORE_TRIES):
        what = f"delivering job {job_id}"
        outcome = while_full(log, what, deliver, redis, job_id, ttl, fields, sizes, entry, gens)
        if outcome != UNSTORED:
            return outcome
        gens = store_results(redis, blobs, ttl)
    raise StoreUnavailable(f"result store unavailable: the objects of job {job_id} were swept {STORE_TRIES} times")


def withdraw(redis, run: Run, ttl: int) -> None:
    """Close a run that every job of it left (canceled): whatever joined since fails, and gets a fresh run when
    asked again."""
    for job_id in while_full(log, f"closing run {run.id}", runs.close, redis, run.id, "canceled"):
        error = "canceled with the run it waited for"
        while_full(log, f"failing job {job_id}", runs.fail_jobs, redis, [job_id], error, ttl)
    runs.forget(redis, run.id)


def read_inputs(redis, batch: list[Run], outcome: dict[str, str], ttl: int) -> tuple[list[Run], list, list]:
    """Each run's picture (image-to-image and inpainting rows) and latent, read from the result store. A run whose
    input is gone, or that the store does not give, fails alone (its outcome `failed`) and leaves the batch: the
    others run. Returns the runs kept, their pictures and their latents."""
    kept, pictures, latents = [], [], []
    for run in batch:
        try:
            picture = inputs.picture_in(redis, run.spec)
            latent = inputs.latent(redis, run.spec.latent) if run.spec.latent else None
        except (inputs.InputGone, StoreUnavailable) as exc:
            fail(redis, [run.id], str(exc), ttl)
            outcome[run.id] = JobStatus.FAILED.value
            continue
        kept.append(run)
        pictures.append(picture)
        latents.append(latent)
    return kept, pictures, latents


def run_batch(redis, engine: Engine, specs: Sequence[GenerateSpec], result_ttl: int) -> dict[str, str]:
    """Run the runs led by `specs` together (already taken, see `take`); returns each run's outcome."""
    if len({engine.batch_key(s) for s in specs}) > 1:
        raise ValueError("a batch shares one batch key (Engine.batch_key): one model, step count, size and grid")
    steps = specs[0].steps
    started = time.monotonic()
    batch = [Run(s, runs.engine_key(s, engine.id)) for s in specs]
    outcome = {s.job_id: "canceled" for s in specs}
    batch, pictures, latents = read_inputs(redis, start(redis, batch, engine), outcome, result_ttl)
    if not batch:
        return outcome
    size = len(batch)
    # text models: each run's own condition; else prompt-free
    conditions = [engine.condition(r.spec.prompt, r.spec.guidance, r.spec.negative_prompt) for r in batch]
    seeds, etas = [0 if r.spec.seed is None else r.spec.seed for r in batch], [r.spec.eta for r in batch]
    starts = [p if p is not None else x for p, x in zip(pictures, latents, strict=True)]  # a job has one or neither
    samplers = [r.spec.sampler for r in batch]  # each row's own (model_store.samplers), on the batch's one grid
    sampler = engine.run(seeds, steps, etas, starts, conditions=conditions, size=specs[0].size, samplers=samplers)
    live = list(batch)  # the runs still in the sampler, in its row order
    preview_at = events.preview_steps(steps, get_settings().preview_every_steps)
    last, rows, step_pictures = None, [], pictures
    for last in sampler:
        # `last` holds a row for each run of `live`; `rows`: those rows still waited for, which stay in `live`
        waiting = active_jobs(redis, live)
        rows = [i for i, job_ids in enumerate(waiting) if job_ids]
        for i, job_ids in enumerate(waiting):
            live[i].active = bool(job_ids)
        if not rows:
            live = []
            break
        if len(rows) < len(live):
            sampler.drop([i for i in range(len(live)) if not waiting[i]])  # nobody waits: they leave the batch
        step_pictures = pictures  # `last`'s rows' pictures
        live, waiting, pictures = [live[i] for i in rows], [waiting[i] for i in rows], [pictures[i] for i in rows]
        preview = last.step in preview_at
        report_progress(redis, live, waiting, last.step, preview, result_ttl)
        if preview:
            shown = [j for j, i in enumerate(rows) if last.active[i]]  # the runs whose rows ran this step
            runs_, waits = [live[j] for j in shown], [waiting[j] for j in shown]
            x0 = last.x0_pred[[rows[j] for j in shown]]
            send_previews(redis, engine, runs_, waits, x0, last.step, result_ttl)
    if last is not None and last.step == steps and live:
        pixels = engine.images(last, step_pictures)[rows]  # the rows of `last` that `live` holds, in its order
        for i, run in enumerate(live):
            png = encode_png(pixels[i], engine.parameters(run.spec))
            outcome[run.id] = finish(redis, run, png, size, engine, result_ttl)
    for run in batch:
        if not run.active:  # every job of it was canceled
            withdraw(redis, run, result_ttl)
    count(redis, size, steps, outcome, time.monotonic() - started)
    for run in batch:
        s = run.spec
        log_line(
            id=s.job_id,
            status=outcome[s.job_id],
            **s.output(),
            model=s.model_ref,
            batch_size=size,
            seconds=round(time.monotonic() - started, 3),
        )
    return outcome


def count(redis, size: int, steps: int, outcome: dict[str, str], seconds: float) -> None:
    """The batch in the workers' counters (/metrics); a full Redis skips them."""
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(keys.METRICS, "batches", 1)
    pipe.hincrby(keys.METRICS, f"batch_size:{size}", 1)
    pipe.hincrby(keys.METRICS, "runs", size)
    pipe.hincrby(keys.METRICS, "image_steps", steps * size)
    pipe.hincrbyfloat(keys.METRICS, "run_seconds", seconds)
    for status in outcome.values():
        pipe.hincrby(keys.METRICS, f"runs_{status}", 1)
    skip_when_full(log, "the batch's counters", pipe.execute)


def fail(redis, run_ids: Sequence[str], error: str, ttl: int) -> None:
    """Close these runs as failed, and fail every job waiting for them. It never raises: a run that Redis does not let
    it fail (full for FAIL_PATIENCE_S in all, or away) is logged and left to the reaper (app.core.runs.abandon)."""
    deadline = time.monotonic() + FAIL_PATIENCE_S
    for run_id in run_ids:
        try:
            patience = max(0.0, deadline - time.monotonic())
            while_full(log, f"failing run {run_id}", runs.fail_run, redis, run_id, error, ttl, patience_s=patience)
        except Exception as exc:
            log.error("could not fail run %s (%s: %s); left to the reaper", run_id, type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                runs.abandon(redis, run_id)
