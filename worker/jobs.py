"""The only functions a DiffuseTV worker runs. RQ calls them by name (`worker.jobs.<name>`).

A job that fails is failed in our records before RQ records the exception; that never raises, even when Redis is
full or away (worker.batch.fail), so that it cannot take the worker down with it.
"""

from __future__ import annotations

import logging

from rq import Queue, get_current_job
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

from app.core.redis import while_full
from app.core.settings import get_settings
from app.core.spec import GenerateSpec, InterpolateSpec, InvertSpec, Spec, SpecError
from worker import registry
from worker.batch import FAIL_PATIENCE_S, fail, run_batch, take
from worker.collect import batch_room, gather, settle

log = logging.getLogger("diffusetv.worker")


def check_identity(engine, spec: Spec) -> None:
    """The job was keyed for the model this worker has loaded: the same weights and output-relevant fields."""
    if engine.manifest.identity != spec.identity:
        raise RuntimeError(f"model {spec.model_ref} changed on this worker (identity mismatch)")


def error_of(exc: Exception) -> str:
    """A failed job's error: the exception's type and message. A MemoryError (memory exhausted under an address-space
    limit, `ulimit -v`), which most often has no message, says so."""
    text = str(exc) or ("out of memory" if isinstance(exc, MemoryError) else "")
    return f"{type(exc).__name__}: {text}"


def decode(cls: type[Spec], redis, kwargs: dict) -> Spec:
    """The job's spec (app.core.spec.Spec.from_kwargs); a job this worker cannot run as asked fails at once, with
    the reason, before RQ records the exception."""
    try:
        return cls.from_kwargs(kwargs)
    except SpecError as exc:
        job_id = kwargs.get("job_id")
        if isinstance(job_id, str):
            fail(redis, [job_id], error_of(exc), get_settings().result_ttl)
        raise


def timeout_of(job: Job) -> int:
    """The job's RQ timeout in seconds, which the API set (app.core.timeouts); JOB_TIMEOUT where RQ holds none."""
    return job.timeout if job.timeout and job.timeout > 0 else get_settings().job_timeout


def timed_out(timeout: int) -> str:
    """The error of a job that ran past its `timeout`, saying where that time came from."""
    settings = get_settings()
    if timeout <= settings.job_timeout:
        return f"timed out after {timeout} s (DIFFUSETV_JOB_TIMEOUT)"
    return f"timed out after {timeout} s (its model's work at DIFFUSETV_MIN_GFLOPS={settings.min_gflops:g} GFLOP/s)"


def generate(**kwargs) -> dict:
    """Run a queued generation job, batched with compatible queued jobs (RQ job function). The batch runs within
    this job's RQ timeout."""
    return batched(GenerateSpec, run_batch, kwargs)


def invert(**kwargs) -> dict:
    """Run a queued inversion job, batched with compatible queued inversions (RQ job function)."""
    from worker.inversion import run_inversions

    return batched(InvertSpec, run_inversions, kwargs)


def batched(cls: type[Spec], runner, kwargs: dict) -> dict:
    """Take the job of `kwargs`, gather queued jobs of its batch key, and run them together with `runner` (worker.batch.
    run_batch, worker.inversion.run_inversions) within this job's RQ timeout."""
    job = get_current_job()
    redis = job.connection
    spec = decode(cls, redis, kwargs)
    settings = get_settings()
    timeout = timeout_of(job)
    queue = Queue(job.origin, connection=redis, serializer=JSONSerializer)
    take(redis, spec.job_id, queue.key, timeout, spec.inputs())
    claimed: list = []
    specs = [spec]
    try:
        engine = registry.get(spec.model_ref)
        check_identity(engine, spec)
        room = batch_room(settings, engine, spec, timeout)
        key = engine.batch_key(spec)  # the spec's, and the grid its sampler calls the network on

        def joins(other: Spec) -> bool:
            return engine.batch_key(other) == key

        gather(redis, queue, joins, room, settings.max_batch_wait_ms, claimed, timeout)
        specs = [spec] + [s for _, s in claimed]
        outcome = runner(redis, engine, specs, settings.result_ttl)
    except JobTimeoutException:
        give_up(redis, spec, claimed, timed_out(timeout))
        raise
    except Exception as exc:
        give_up(redis, spec, claimed, error_of(exc))
        raise
    jobs = [j for j, _ in claimed]
    while_full(log, "settling the claimed RQ jobs", settle, redis, jobs, True, "", settings.result_ttl)
    return {"status": outcome[spec.job_id], "batch": len(specs)}


def give_up(redis, spec: Spec, claimed: list[tuple[Job, Spec]], error: str) -> None:
    """Fail the batch's runs, and end the RQ jobs claimed with the taken one as failed. It never raises: whatever Redis
    does not take is logged, and the runs are left to the reaper (worker.batch.fail)."""
    ttl = get_settings().result_ttl
    fail(redis, [spec.job_id] + [s.job_id for _, s in claimed], error, ttl)
    jobs = [j for j, _ in claimed]
    try:
        what = "settling the claimed RQ jobs"
        while_full(log, what, settle, redis, jobs, False, error, ttl, patience_s=FAIL_PATIENCE_S)
    except Exception as exc:
        log.error("could not record the failure of RQ jobs %s (%s: %s)", [j.id for j in jobs], type(exc).__name__, exc)


def interpolate(**kwargs) -> dict:
    """Render an interpolation job: every frame in one batch, then an animated PNG and a strip (RQ job function)."""
    from worker.interpolation import run_interpolation

    job = get_current_job()
    spec = decode(InterpolateSpec, job.connection, kwargs)
    settings = get_settings()
    timeout = timeout_of(job)
    take(job.connection, spec.job_id, Queue(job.origin, connection=job.connection).key, timeout, spec.inputs())
    try:
        engine = registry.get(spec.model_ref)
        check_identity(engine, spec)
        status = run_interpolation(job.connection, engine, spec, settings.result_ttl)
    except JobTimeoutException:
        fail(job.connection, [spec.job_id], timed_out(timeout), settings.result_ttl)
        raise
    except Exception as exc:
        fail(job.connection, [spec.job_id], error_of(exc), settings.result_ttl)
        raise
    return {"status": status}


ALLOWED = {f"{__name__}.{name}" for name in ("generate", "interpolate", "invert")}
