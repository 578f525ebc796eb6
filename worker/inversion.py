"""Inversion jobs: DDIM run backwards from each picture to its x_T (diffusion.inversion, refined), then forwards from
that x_T, in one batch of inversions of the same steps and size.

A job's result is the reconstruction (its image.png: DDIM at eta 0 from the latent, with the condition it was
inverted with) and the latent (safetensors: one float32 tensor `latent`, (C, H, W), with the model's identity and
ref, the steps, the prompt and guidance, and a size of a model of several in its metadata). Progress counts the
inversion's steps, then the reconstruction's (2 × steps); previews show the noise rising, then the picture coming back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import torch

from app.core import events, pictures, runs
from app.core.png import encode_png
from app.core.settings import get_settings
from app.core.spec import InvertSpec
from worker import inputs
from worker.batch import Run, active_jobs, count, finish, log_line, report_progress, send_previews, start, withdraw
from worker.engine import Engine


def latent_blob(engine: Engine, spec: InvertSpec, latent: torch.Tensor) -> bytes:
    """The latent as safetensors, with what it was inverted by in its metadata (strings, as safetensors keeps them)."""
    meta = {
        **pictures.latent_key(engine.manifest.identity, spec.steps, spec.width, spec.height, spec.sampler),
        "model": engine.manifest.ref,
        "prompt": json.dumps(spec.prompt),
        "guidance": json.dumps(spec.guidance),
        "engine": engine.id,
    }
    return pictures.latent_file(latent.detach().to("cpu", torch.float32).numpy(), meta)


def run_inversions(redis, engine: Engine, specs: Sequence[InvertSpec], result_ttl: int) -> dict[str, str]:
    """Invert and reconstruct the runs led by `specs` together (already taken); returns each run's outcome. A run
    every job of which was canceled stops being reported and is withdrawn; the batch stops once none is left."""
    if len({engine.batch_key(s) for s in specs}) > 1:
        raise ValueError("a batch shares one batch key (Engine.batch_key): one model, step count, size and sampler")
    steps, size, how = specs[0].steps, specs[0].size, specs[0].sampler
    started = time.monotonic()
    outcome = {s.job_id: "canceled" for s in specs}
    batch = start(redis, [Run(s, runs.engine_key(s, engine.id)) for s in specs], engine)
    if not batch:
        return outcome
    rows = len(batch)
    conditions = [engine.condition(r.spec.prompt, r.spec.guidance, r.spec.negative_prompt) for r in batch]
    pixels = [inputs.pixels(redis, r.spec.image) for r in batch]
    preview_at = events.preview_steps(2 * steps, get_settings().preview_every_steps)

    def tick(step: int, x: torch.Tensor) -> bool:
        """Progress (and previews) at `step` of 2 × steps; False once nobody waits for any run."""
        waiting = active_jobs(redis, batch)
        for run, job_ids in zip(batch, waiting, strict=True):
            run.active = run.active and bool(job_ids)
        live = [i for i, run in enumerate(batch) if run.active]
        if not live:
            return False
        runs_, waits = [batch[i] for i in live], [waiting[i] for i in live]
        report_progress(redis, runs_, waits, step, step in preview_at, result_ttl)
        if step in preview_at:  # the inversion's x (noise rising), then the reconstruction's x̂0
            send_previews(redis, engine, runs_, waits, x[live], step, result_ttl)
        return True

    latent = None
    for inverse in engine.invert(pixels, steps, conditions=conditions, size=size, sampler=how):
        latent = inverse.x
        if not tick(inverse.step, latent):
            break
    last = None
    if latent is not None and any(r.active for r in batch):
        sampler = engine.reconstruct(list(latent), steps, conditions=conditions, size=size, sampler=how)
        for last in sampler:
            if not tick(steps + last.step, last.x0_pred):
                break
    if last is not None and last.step == steps and any(r.active for r in batch):
        images = engine.images(last)
        for i, run in enumerate(batch):
            if not run.active:
                continue
            png = encode_png(images[i], engine.parameters(run.spec))
            blob = latent_blob(engine, run.spec, latent[i])
            outcome[run.id] = finish(redis, run, png, rows, engine, result_ttl, {"latent": blob})
    for run in batch:
        if not run.active:  # every job of it was canceled
            withdraw(redis, run, result_ttl)
    count(redis, rows, 2 * steps, outcome, time.monotonic() - started)
    for run in batch:
        s, seconds = run.spec, round(time.monotonic() - started, 3)
        fields = {**s.output(), "model": s.model_ref, "batch_size": rows, "seconds": seconds}
        log_line(id=s.job_id, status=outcome[s.job_id], **fields)
    return outcome
