"""Interpolation jobs: frames from the spherical walk between two ends' noises, rendered in one batch.

Each end is a seed's noise, a picture's inversion (both pictures inverted in one batch, with the end's condition) or
an inversion's latent. The result is an animated PNG (one frame per interpolation point) and a horizontal strip. The
ends are the images of `/generate` with seed_a and seed_b at eta = 0 (or the pictures' reconstructions), pixel for
pixel: the walk is exact at its ends, and a sample's output does not depend on its batch. Identical interpolations
share one run and its cache entry, as generations do (app.core.runs).
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch
from PIL import PngImagePlugin

from app.core import runs
from app.core.jobs import JobStatus
from app.core.png import PARAMETERS_KEY, encode_png, image, parameters_json
from app.core.spec import InterpolateSpec
from diffusion.grid import make_grid
from diffusion.guidance import Condition
from diffusion.interpolate import interpolated_noises
from worker import inputs
from worker.batch import Run, active_jobs, count, finish, report_progress, start, withdraw
from worker.engine import Engine

FRAME_MS = 150


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
    if not engine.model.conditioned or (spec.prompt is None and spec.guidance is None):
        return None
    start = engine.condition(spec.prompt, spec.guidance, spec.negative_prompt)
    if spec.prompt_b is None:
        return [start] * spec.frames
    a, b = start.embedding, engine.model.embed(spec.prompt_b)
    weights = [i / (spec.frames - 1) for i in range(spec.frames)]
    return [Condition(lerp(a, b, w), start.scale, start.negative) for w in weights]


def end_noises(redis, engine: Engine, spec: InterpolateSpec, conditions, run: Run, ttl: int):
    """The noises at the walk's two ends: a seed's x_T, an inversion's latent, or a picture's inversion (both pictures
    in one batch, each with its end's condition). None when every job left the run during the inversion."""
    size = spec.size
    ends: list[torch.Tensor | None] = []
    for seed, latent in ((spec.seed_a, spec.latent_a), (spec.seed_b, spec.latent_b)):
        if latent is not None:
            ends.append(inputs.latent(redis, latent))
        elif seed is not None:
            ends.append(engine.initial_noise(seed, size))
        else:
            ends.append(None)
    which = [i for i, image in enumerate((spec.image_a, spec.image_b)) if image is not None]
    if not which:
        return ends
    pixels = [inputs.pixels(redis, (spec.image_a, spec.image_b)[i]) for i in which]
    at_ends = None if conditions is None else [conditions[0], conditions[-1]]
    chosen = None if at_ends is None else [at_ends[i] for i in which]
    latent = None
    for inverse in engine.invert(pixels, spec.steps, conditions=chosen, size=size, sampler=spec.sampler):
        latent = inverse.x
        waiting = active_jobs(redis, [run])
        if not waiting[0]:
            withdraw(redis, run, ttl)
            return None
        report_progress(redis, [run], waiting, inverse.step, False, ttl)
    for row, i in enumerate(which):
        ends[i] = latent[row]
    return ends


def lerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """(1 - w)·a + w·b, exactly a at w = 0 and exactly b at w = 1."""
    if w == 0:
        return a
    if w == 1:
        return b
    return (1 - w) * a + w * b


def run_interpolation(redis, engine: Engine, spec: InterpolateSpec, ttl: int) -> str:
    """Render the run led by `spec` (already taken, worker.batch.take): every job that joined it gets the
    animation and the strip, and the first one's become the cache entry of its engine key. The run stops at the
    next step once no job waits for it."""
    run = Run(spec, runs.engine_key(spec, engine.id))
    if not start(redis, [run], engine):
        return JobStatus.CANCELED.value
    # batch_size is jobs sharing a model run, as for /generate: an interpolation runs alone (its frames are rows).
    run_started = time.monotonic()
    size = spec.size
    conditions = frame_conditions(engine, spec)
    ends = end_noises(redis, engine, spec, conditions, run, ttl)
    if ends is None:
        return JobStatus.CANCELED.value
    x_T = interpolated_noises(*ends, spec.frames)
    frames = spec.frames
    seed = spec.seed_a or 0  # eta 0: nothing is drawn after x_T, which the walk gives
    etas, samplers = [0.0] * frames, [spec.sampler] * frames
    sampler = engine.run([seed] * frames, spec.steps, etas, x_T, conditions=conditions, size=size, samplers=samplers)
    last = None
    done = spec.steps_run - spec.steps  # the steps of the ends' inversion
    for last in sampler:
        waiting = active_jobs(redis, [run])
        if not waiting[0]:
            withdraw(redis, run, ttl)
            return JobStatus.CANCELED.value
        report_progress(redis, [run], waiting, done + last.step, False, ttl)
    frames = engine.pixels(engine.model.final(last))
    params = engine.parameters(spec)
    apng = animated_png(frames, params)
    strip = encode_png(make_grid(frames, cols=spec.frames), params)
    outcome = finish(redis, run, apng, 1, engine, ttl, {"strip": strip})
    if outcome != JobStatus.SUCCEEDED.value:
        return outcome
    # /metrics: a batch of one run, whose image steps are its frames' steps
    count(redis, 1, spec.steps * spec.frames, {spec.job_id: "succeeded"}, time.monotonic() - run_started)
    return JobStatus.SUCCEEDED.value
