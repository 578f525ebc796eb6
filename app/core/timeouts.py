"""A job's time: the RQ timeout it runs under, from its model's cost where the model records one.

A job of a model whose kind estimates its work in FLOPs (model_store.kinds.Kind.flops: a `diffusers-sd` model that
records its `flops`) is given the time that work takes at MIN_GFLOPS, the slowest sustained rate a worker is assumed to
reach, and never less than JOB_TIMEOUT; every other job is given JOB_TIMEOUT. The API enqueues the job with it
(app.queueing), its records live as long as it may wait and run (Settings.pending_ttl), the worker's health promise and
its timeout message follow it (worker/main.py, worker/jobs.py), and a batch takes no more jobs than its leader's time
covers (worker/collect.py). A job whose time would pass MAX_JOB_TIMEOUT is refused (app.models.check_time).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

from app.core.settings import Settings
from app.core.spec import Spec
from model_store import Manifest, kinds
from model_store.kinds import Work


def flops(manifest: Manifest, work: Work) -> int | None:
    """The model work of `work` in FLOPs, as the model's kind estimates it; None where the model records no cost."""
    estimate = kinds.of(manifest).flops
    return None if estimate is None else estimate(manifest, work)


def seconds(settings: Settings, work: int) -> int:
    """Seconds that `work` FLOPs take at MIN_GFLOPS, rounded up (exactly: no float rounding at a whole second)."""
    return math.ceil(Fraction(work) / (Fraction(settings.min_gflops) * 10**9))


def job_timeout(settings: Settings, manifest: Manifest, spec: Spec) -> int:
    """The job's RQ timeout in seconds: max(JOB_TIMEOUT, its work at MIN_GFLOPS) for a model that records its cost,
    else JOB_TIMEOUT. It may pass MAX_JOB_TIMEOUT: the API refuses such a job."""
    work = flops(manifest, spec.work())
    return settings.job_timeout if work is None else max(settings.job_timeout, seconds(settings, work))


def most(settings: Settings, manifest: Manifest, spec: Spec, field: str, low: int, high: int) -> int:
    """The largest value of the spec's `field` in low..high (a field the work grows with: steps, frames) at which the
    job's timeout fits MAX_JOB_TIMEOUT, the spec's other fields as they are; low - 1 when none does."""
    while low <= high:
        middle = (low + high) // 2
        at = dataclasses.replace(spec, **{field: middle})
        if job_timeout(settings, manifest, at) <= settings.max_job_timeout:
            low = middle + 1
        else:
            high = middle - 1
    return high
