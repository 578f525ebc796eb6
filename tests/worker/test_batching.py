"""Dynamic batching, the result cache and shared runs, with a real Redis and a worker run in process."""

import hashlib
import json

import pytest
from rq.serializers import JSONSerializer

from app.core import events, keys, objects
from app.core.png import encode_png
from app.core.settings import get_settings
from helpers import generate_spec


def metrics(conn) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in conn.hgetall(keys.METRICS).items()}


def alone_png(engine, seed, steps, eta) -> bytes:
    return encode_png(
        engine.generate([seed], steps, [eta])[0], engine.parameters(generate_spec(engine.manifest, seed, steps, eta))
    )


def test_a_batch_of_8_mixed_seeds_and_etas_equals_one_by_one(service):
    requests = [
        {"seed": s, "steps": 12, "eta": e}
        for s, e in zip([5, 900, 3, 2**53 - 1, 17, 0, 64, 8], [0, 1, 0.3, 0, 0.7, 1, 0, 0.5], strict=True)
    ]
    ids = [service.post("/generate", json=r).json()["id"] for r in requests]
    service.work()
    for job_id, r in zip(ids, requests, strict=True):
        job = service.get(f"/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["batch_size"] == 8, job
        png = service.get(f"/jobs/{job_id}/image.png").content
        assert png == alone_png(service.engine, r["seed"], 12, float(r["eta"])), r
    m = metrics(service.redis)
    assert m["batches"] == 1 and m["batch_size:8"] == 1 and m["runs"] == 8


def test_batches_group_by_steps_and_respect_the_size_limit(service, monkeypatch):
    monkeypatch.setenv("DIFFUSETV_MAX_BATCH_SIZE", "4")
    get_settings.cache_clear()
    five = [service.post("/generate", json={"seed": i, "steps": 5}).json()["id"] for i in range(5)]
    seven = [service.post("/generate", json={"seed": i, "steps": 7}).json()["id"] for i in range(3)]
    service.work()
    sizes = lambda ids: sorted(service.get(f"/jobs/{i}").json()["batch_size"] for i in ids)  # noqa: E731
    assert sizes(five) == [1, 4, 4, 4, 4]
    assert sizes(seven) == [3, 3, 3]
    assert metrics(service.redis)["batches"] == 3


def test_a_repeated_request_is_answered_from_the_cache(service):
    first = service.post("/generate", json={"seed": 42, "steps": 8, "eta": 0.5}).json()
    service.work()
    png = service.get(f"/jobs/{first['id']}/image.png")
    again = service.post("/generate", json={"seed": 42, "steps": 8, "eta": 0.5})
    assert again.status_code == 202
    job = again.json()
    assert job["id"] != first["id"] and job["status"] == "succeeded" and job["batch_size"] == 1
    repeat = service.get(f"/jobs/{job['id']}/image.png")
    assert repeat.content == png.content and repeat.headers["etag"] == png.headers["etag"]
    assert service.redis.llen("rq:queue:" + keys.queue_name("tiny@1")) == 0
    other_eta = service.post("/generate", json={"seed": 42, "steps": 8, "eta": 0.4}).json()
    assert other_eta["status"] == "queued"  # another engine key: not a hit
    m = metrics(service.redis)
    assert m["cache_hits"] == 1 and m["runs"] == 1


def test_eight_identical_concurrent_requests_make_one_model_run(service):
    ids = [service.post("/generate", json={"seed": 7, "steps": 9}).json()["id"] for _ in range(8)]
    assert service.redis.llen("rq:queue:" + keys.queue_name("tiny@1")) == 1
    assert [service.get(f"/jobs/{i}").json()["queue_position"] for i in ids] == [0] * 8
    service.work()
    pngs = {service.get(f"/jobs/{i}/image.png").content for i in ids}
    assert len(pngs) == 1
    m = metrics(service.redis)
    assert m["runs"] == 1 and m["batches"] == 1 and m["joined"] == 7
    assert "diffusetv_runs_total 1.0" in service.get("/metrics").text


def test_canceling_one_of_identical_requests_keeps_the_run_for_the_other(service):
    a = service.post("/generate", json={"seed": 3, "steps": 6}).json()
    b = service.post("/generate", json={"seed": 3, "steps": 6}).json()
    assert service.delete(f"/jobs/{a['id']}").json()["status"] == "canceled"
    assert service.redis.llen("rq:queue:" + keys.queue_name("tiny@1")) == 1  # the run still waits
    service.work()
    assert service.get(f"/jobs/{b['id']}").json()["status"] == "succeeded"
    assert service.get(f"/jobs/{a['id']}").json()["status"] == "canceled"
    assert service.get(f"/jobs/{a['id']}/image.png").status_code == 409
    again = service.post("/generate", json={"seed": 3, "steps": 6}).json()  # the cache names b, not the canceled a
    assert again["status"] == "succeeded"
    png = service.get(f"/jobs/{b['id']}/image.png").content
    assert service.get(f"/jobs/{again['id']}/image.png").content == png


def test_canceling_every_waiting_job_withdraws_the_run(service):
    a = service.post("/generate", json={"seed": 4, "steps": 6}).json()
    b = service.post("/generate", json={"seed": 4, "steps": 6}).json()
    service.delete(f"/jobs/{a['id']}")
    service.delete(f"/jobs/{b['id']}")
    assert service.redis.llen("rq:queue:" + keys.queue_name("tiny@1")) == 0
    c = service.post("/generate", json={"seed": 4, "steps": 6}).json()  # a fresh run, not the canceled one
    assert c["status"] == "queued"
    service.work()
    assert service.get(f"/jobs/{c['id']}").json()["status"] == "succeeded"
    assert metrics(service.redis)["runs"] == 1


def test_claimed_jobs_finish_their_rq_lifecycle(service):
    ids = [service.post("/generate", json={"seed": i, "steps": 4}).json()["id"] for i in range(3)]
    service.work()
    from rq.job import Job

    statuses = [Job.fetch(i, connection=service.redis, serializer=JSONSerializer).get_status() for i in ids]
    assert statuses == ["finished"] * 3
    assert json.loads(service.redis.hget(keys.job(ids[1]), "progress")) == {"step": 4, "steps": 4}


def test_the_cache_entry_is_written_with_the_first_delivery(service):
    """A client that sees `succeeded` and repeats its request at once must hit the cache: no window between."""
    from app.core.jobs import DELIVERED, ENDED, deliver
    from app.core.results.redis_store import RedisStore

    conn = service.redis
    job = service.post("/generate", json={"seed": 5, "steps": 4}).json()
    png = b"\x89PNG delivered"
    sha256 = hashlib.sha256(png).hexdigest()
    name = objects.name(objects.PNG, sha256)
    objects.put(conn, RedisStore(conn), name, png, hold_s=60, window_s=1)  # stored, as a worker does before it delivers
    entry = ("diffusetv:test:cache-entry", '{"job": "x"}')
    assert deliver(conn, job["id"], 60, {"sha256": sha256}, {name: len(png)}, cache=entry) == DELIVERED
    assert conn.get(entry[0]) == entry[1].encode() and conn.hget(keys.job(job["id"]), "status") == b"succeeded"
    conn.delete(entry[0])
    again = deliver(conn, job["id"], 60, {"sha256": sha256}, {name: len(png)}, cache=entry)
    assert again == ENDED and conn.get(entry[0]) is None  # already final: nothing written


def test_identical_interpolations_share_one_run_then_the_cache(service):
    walk = {"seed_a": 5, "seed_b": 6, "frames": 4, "steps": 6}
    first, second = (service.post("/interpolate", json=walk).json() for _ in range(2))
    assert first["status"] == second["status"] == "queued"
    service.work()
    results = []
    for job in (first, second):
        done = service.get(f"/jobs/{job['id']}").json()
        assert done["status"] == "succeeded" and done["kind"] == "interpolate", done
        results.append((service.get(done["image_url"]).content, service.get(done["strip_url"]).content))
    assert results[0] == results[1]
    again = service.post("/interpolate", json=walk).json()
    assert again["status"] == "succeeded"  # from the cache, with its strip
    assert (service.get(again["image_url"]).content, service.get(again["strip_url"]).content) == results[0]
    other = service.post("/interpolate", json={**walk, "frames": 5}).json()
    assert other["status"] == "queued"  # another walk: another key
    m = metrics(service.redis)
    assert m["runs"] == 1 and m["cache_hits"] == 1 and m["joined"] == 1


class CancelAt:
    """An engine's `run` whose sampler, as it yields step `step`, has the API cancel `job_id` first: the worker sees the
    cancel right after that step, as a client's DELETE that lands then."""

    def __init__(self, service, job_id: str, step: int) -> None:
        self.service, self.job_id, self.step, self.run = service, job_id, step, service.engine.run

    def __call__(self, *args, **kw):
        sampler = self.run(*args, **kw)
        outer = self

        class Sampler:
            def __iter__(self):
                for step in sampler:
                    if step.step == outer.step:
                        assert outer.service.delete(f"/jobs/{outer.job_id}").status_code == 202
                    yield step

            def drop(self, rows):
                sampler.drop(rows)

        return Sampler()


@pytest.mark.parametrize("when", ["a step before the last", "the last step"])
def test_a_run_canceled_mid_batch_leaves_its_mates_their_own_bytes(service, monkeypatch, when):
    steps = 10
    assert events.preview_steps(steps) == set(range(1, steps + 1))  # every step of 10 is a preview step
    seeds = [11, 12, 13, 14]
    ids = [service.post("/generate", json={"seed": s, "steps": steps}).json()["id"] for s in seeds]
    alone = {seed: alone_png(service.engine, seed, steps, 0.0) for seed in seeds}
    step = 4 if when == "a step before the last" else steps
    monkeypatch.setattr(service.engine, "run", CancelAt(service, ids[1], step))  # the second row of the batch
    service.work()
    jobs = [service.get(f"/jobs/{i}").json() for i in ids]
    assert jobs[1]["status"] == "canceled", jobs[1]
    for job, seed in zip(jobs, seeds, strict=True):
        if job["id"] == ids[1]:
            continue
        assert job["status"] == "succeeded" and job["batch_size"] == 4, job
        assert service.get(f"/jobs/{job['id']}/image.png").content == alone[seed], seed
