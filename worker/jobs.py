"""The only functions a DiffuseTV worker runs. RQ calls them by name (`worker.jobs.<name>`)."""

from __future__ import annotations

from rq import get_current_job

from app.core.jobs import JobSpec
from app.core.settings import get_settings
from worker import registry
from worker.batch import fail, run_batch


def generate(**kwargs) -> dict:
    """Run one queued generation job (RQ job function). The PNG goes to Redis; RQ keeps the outcome."""
    spec = JobSpec(**kwargs)
    job = get_current_job()
    redis = job.connection
    ttl = get_settings().result_ttl
    engine = registry.get(spec.model_ref)
    if engine.manifest.digest != spec.digest:
        fail(redis, [spec.job_id], f"model {spec.model_ref} changed on this worker (digest mismatch)", ttl)
        raise RuntimeError("model digest mismatch")
    try:
        outcome = run_batch(redis, engine, [spec], ttl)
    except Exception as exc:
        fail(redis, [spec.job_id], f"{type(exc).__name__}: {exc}", ttl)
        raise
    return {"status": outcome[spec.job_id]}


ALLOWED = {f"{__name__}.{name}" for name in ("generate",)}
