"""Rolling upgrades, both ways: a job queued by the previous API runs on this worker, with the bytes this API's
job gets; a job of a newer API, carrying a field this worker does not know, fails with the reason."""

import json
import time

from rq import Queue
from rq.serializers import JSONSerializer

from app.core import keys


def plant(service, job_id: str, kwargs: dict, params: dict) -> None:
    """A generation job as an API writes it: its record, then its RQ job on the model's queue."""
    model = service.engine.manifest
    record = {
        "id": job_id,
        "status": "queued",
        "params": json.dumps(params),
        "model": json.dumps({"name": model.name, "version": model.version, "digest": model.digest}),
        "owner": "",
        "created_at": repr(time.time()),
        "attempts": "0",
        "run": job_id,
    }
    service.redis.hset(keys.job(job_id), mapping=record)
    queue = Queue(keys.queue_name("tiny@1"), connection=service.redis, serializer=JSONSerializer)
    queue.enqueue_call("worker.jobs.generate", kwargs=kwargs, job_id=job_id)


def test_a_job_queued_by_the_previous_api_runs_and_gives_todays_bytes(service):
    identity = service.engine.manifest.identity
    old = "a" * 32
    # What the previous API queued (its JobSpec.to_kwargs): every field written out, and `run_key`, which the
    # API computed and nothing ever read. Its record has no `kind`.
    kwargs = {
        "job_id": old, "seed": 42, "steps": 8, "eta": 0.5, "model_ref": "tiny@1", "identity": identity,
        "previews": False, "run_key": "f" * 64, "prompt": None, "guidance": None,
    }  # fmt: skip
    plant(service, old, kwargs, {"seed": 42, "steps": 8, "eta": 0.5, "previews": False})
    service.work()
    job = service.get(f"/jobs/{old}").json()
    assert job["status"] == "succeeded", job
    assert job["params"] == {"seed": 42, "steps": 8, "eta": 0.5, "previews": False}
    png = service.get(f"/jobs/{old}/image.png").content
    today = service.post("/generate", json={"seed": 42, "steps": 8, "eta": 0.5}).json()
    assert today["status"] == "succeeded"  # the old job's result is this request's cache entry: the same key
    assert service.get(f"/jobs/{today['id']}/image.png").content == png


def test_a_job_without_the_fields_at_their_defaults_runs(service):
    """A newer API leaves out a field at its default; an older one never sent it: either way it is the default."""
    job_id = "b" * 32
    kwargs = {"job_id": job_id, "seed": 3, "steps": 6, "eta": 0.0, "model_ref": "tiny@1"}
    kwargs["identity"] = service.engine.manifest.identity
    plant(service, job_id, kwargs, {"seed": 3, "steps": 6, "eta": 0.0})
    service.work()
    assert service.get(f"/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_newer_apis_job_fails_with_the_field_it_needs_not_a_type_error(service):
    job_id = "c" * 32
    kwargs = {"job_id": job_id, "seed": 3, "steps": 6, "eta": 0.0, "model_ref": "tiny@1", "scheduler": "karras"}
    kwargs["identity"] = service.engine.manifest.identity
    plant(service, job_id, kwargs, {"seed": 3, "steps": 6, "eta": 0.0, "scheduler": "karras"})
    service.work()
    job = service.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed", job
    assert "SpecError" in job["error"] and "'scheduler'" in job["error"] and "upgrade the workers" in job["error"]
    assert "TypeError" not in job["error"]
    healthy = service.post("/generate", json={"seed": 4, "steps": 6}).json()
    service.work()
    assert service.get(f"/jobs/{healthy['id']}").json()["status"] == "succeeded"
