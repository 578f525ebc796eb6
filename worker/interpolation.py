"""Interpolation jobs: frames from the spherical walk between two seeds' noises, rendered in one batch.

The result is an animated PNG (one frame per interpolation point) and a horizontal strip. The ends
are the images of `/generate` with seed_a and seed_b at eta = 0, pixel for pixel: the walk is exact at
its ends, and a sample's output does not depend on its batch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time

import numpy as np
import torch
from PIL import PngImagePlugin

from app.core import events, keys
from app.core.jobs import JobStatus, deliver, transition
from app.core.png import PARAMETERS_KEY, encode_png, image, parameters_json
from app.core.redis import skip_when_full, while_full
from app.core.spec import InterpolateSpec
from diffusion.grid import make_grid
from diffusion.guidance import Condition
from diffusion.interpolate import interpolated_noises
from worker.batch import FULL_PAUSE_S, count
from worker.engine import Engine

log = logging.getLogger("diffusetv.worker")
FRAME_MS = 150
PROGRESS_INTERVAL_S = 0.1


def animated_png(frames: np.ndarray, parameters: dict) -> bytes:
    """An APNG that loops, one frame per image, with the `parameters` tEXt chunk."""
    images = [image(f) for f in frames]
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters_json(parameters))
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="PNG", save_all=True, append_images=images[1:], duration=FRAME_MS, loop=0, pnginfo=info
    )
    return buffer.getvalue()


def frame_conditions(engine: Engine, spec: InterpolateSpec) -> list[Condition] | None:
    """Each frame's text condition: the prompt's, or with prompt_b the embedding moving linearly from the prompt's
    to prompt_b's (exact at both ends, so the ends are /generate's images with those prompts)."""
    if not engine.model.conditioned or spec.prompt is None:
        return None
    if spec.prompt_b is None:
        return [engine.condition(spec.prompt, spec.guidance)] * spec.frames
    a, b = engine.model.embed(spec.prompt), engine.model.embed(spec.prompt_b)
    weights = [i / (spec.frames - 1) for i in range(spec.frames)]
    return [Condition(lerp(a, b, w), spec.guidance) for w in weights]


def lerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """(1 - w)·a + w·b, exactly a at w = 0 and exactly b at w = 1."""
    if w == 0:
        return a
    if w == 1:
        return b
    return (1 - w) * a + w * b


def run_interpolation(redis, engine: Engine, spec: InterpolateSpec, ttl: int) -> str:
    now = repr(time.time())
    engine_json = json.dumps(engine.record())
    started = while_full(log, f"starting job {spec.job_id}", transition, redis, spec.job_id, (JobStatus.QUEUED,), {
        "status": JobStatus.RUNNING, "started_at": now, "engine": engine_json, "batch_size": "1",
        "progress": json.dumps({"step": 0, "steps": spec.steps})})  # fmt: skip
    if started != JobStatus.QUEUED.value:
        return started or "missing"
    # batch_size is jobs sharing a model run, as for /generate: an interpolation runs alone (its frames are rows).
    run_started = time.monotonic()
    x_T = interpolated_noises(engine.initial_noise(spec.seed_a), engine.initial_noise(spec.seed_b), spec.frames)
    conditions = frame_conditions(engine, spec)
    sampler = engine.run([spec.seed_a] * spec.frames, spec.steps, [0.0] * spec.frames, x_T=x_T, conditions=conditions)
    last_write, last = 0.0, None
    for last in sampler:
        if redis.hget(keys.job(spec.job_id), "status") != JobStatus.RUNNING.value.encode():
            return JobStatus.CANCELED.value
        if time.monotonic() - last_write >= PROGRESS_INTERVAL_S or last.step == spec.steps:
            progress = {"step": last.step, "steps": spec.steps}
            pipe = redis.pipeline(transaction=False)
            pipe.hset(keys.job(spec.job_id), "progress", json.dumps(progress))
            events.emit(pipe, spec.job_id, events.PROGRESS, progress, ttl)
            wrote = skip_when_full(log, f"progress at step {last.step}", pipe.execute)
            last_write = time.monotonic() + (0 if wrote else FULL_PAUSE_S)  # skipped when full: wait longer
    frames = engine.pixels(engine.model.final(last))
    params = engine.parameters(spec)
    apng = animated_png(frames, params)
    strip = encode_png(make_grid(frames, cols=spec.frames), params)
    # first: a succeeded job always has its strip; a full Redis delays it until the job's time is up
    while_full(log, f"storing the strip of job {spec.job_id}", redis.set, keys.strip(spec.job_id), strip, ttl)
    fields = {
        "finished_at": repr(time.time()),
        "sha256": hashlib.sha256(apng).hexdigest(),
        "strip_sha256": hashlib.sha256(strip).hexdigest(),
    }
    if not while_full(log, f"delivering job {spec.job_id}", deliver, redis, spec.job_id, apng, ttl, fields):
        redis.delete(keys.strip(spec.job_id))
        return JobStatus.CANCELED.value
    # /metrics: a batch of one run, whose image steps are its frames' steps
    count(redis, 1, spec.steps * spec.frames, {spec.job_id: "succeeded"}, time.monotonic() - run_started)
    return JobStatus.SUCCEEDED.value
