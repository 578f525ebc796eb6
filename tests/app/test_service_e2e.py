"""End to end: redis-server, `diffusetv worker` and `diffusetv api` as real processes, HTTP only."""

import hashlib
import os
import signal
import time

import pytest

from app.core.png import decode_png, encoder_fingerprint, read_parameters
from helpers import run_cli

pytestmark = pytest.mark.slow


def wait_status(client, job_id, statuses, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} still {job['status']}")


def test_lifecycle_png_and_cli_identity(stack, tiny_store, tmp_path):
    with stack.client() as c:
        r = c.post("/generate", json={"seed": 1234, "steps": 1000, "eta": 0.3})
        assert r.status_code == 202 and r.headers["Location"] == f"/jobs/{r.json()['id']}"
        job_id = r.json()["id"]
        seen, statuses = [], []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}").json()
            statuses.append(job["status"])
            if job["status"] == "running":
                seen.append(job["progress"]["step"])
            if job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.01)
        assert job["status"] == "succeeded", job
        assert statuses[0] in ("queued", "running")
        assert len(set(seen)) >= 3 and seen == sorted(seen), seen  # progress moved forward
        assert job["progress"] == {"step": 1000, "steps": 1000} and job["batch_size"] == 1
        kernels, encoder = job["engine"]["kernels"], job["engine"]["encoder"]
        assert job["engine"] == {"device": "cpu", "precision": "fp32", "kernels": kernels, "encoder": encoder}
        assert len(kernels) == 16 and encoder == encoder_fingerprint()
        png = c.get(job["image_url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.headers["etag"] == f'"{hashlib.sha256(png.content).hexdigest()}"'
        assert "immutable" in png.headers["cache-control"]
        params = read_parameters(png.content)
        manifest = tiny_store.resolve("tiny")
        assert params == {
            "seed": 1234,
            "steps": 1000,
            "eta": 0.3,
            "model": "tiny",
            "version": 1,
            "digest": manifest.digest,
            "identity": manifest.identity,
            "device": "cpu",
            "precision": "fp32",
        }
        assert decode_png(png.content).shape == (16, 16, 3)
    out = tmp_path / "cli.png"
    run_cli("sample", "--model", "tiny", "--seed", "1234", "--steps", "1000", "--eta", "0.3", "--out", str(out))
    assert out.read_bytes() == png.content


def test_wait_returns_when_the_job_ends(stack):
    with stack.client() as c:
        job = c.post("/generate", json={"seed": 5, "steps": 300}).json()
        started = time.monotonic()
        done = c.get(f"/jobs/{job['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded" and time.monotonic() - started < 30
        image = c.get(f"/jobs/{job['id']}/image.png", params={"wait": 5})
        assert image.status_code == 200


def test_same_request_same_bytes_across_workers_and_304(stack):
    with stack.client() as c:
        first = c.post("/generate", json={"seed": 77, "steps": 20}).json()
        a = c.get(f"/jobs/{first['id']}/image.png", params={"wait": 30})
        stack.procs["worker"].terminate()
        stack.procs["worker"].wait(20)
        stack.start_worker("worker2")  # a second worker process, started fresh
        stack.wait_serving("tiny@1")  # the API refuses a model that no live worker serves
        import redis

        conn = redis.Redis.from_url(stack.redis.url)
        conn.delete(*conn.keys("diffusetv:cache:*"))  # make the second worker compute it again
        second = c.post("/generate", json={"seed": 77, "steps": 20}).json()
        assert second["status"] == "queued"
        b = c.get(f"/jobs/{second['id']}/image.png", params={"wait": 30})
        assert second["id"] != first["id"]
        assert b.status_code == 200 and a.content == b.content and a.headers["etag"] == b.headers["etag"]
        assert c.get(f"/jobs/{second['id']}/image.png", headers={"If-None-Match": a.headers["etag"]}).status_code == 304
        other = c.post("/generate", json={"seed": 78, "steps": 20}).json()
        assert c.get(f"/jobs/{other['id']}/image.png", params={"wait": 30}).content != a.content


def test_cancel_queued_and_running(stack):
    with stack.client() as c:
        long = c.post("/generate", json={"seed": 1, "steps": 1000}).json()
        wait_status(c, long["id"], {"running"})
        queued = c.post("/generate", json={"seed": 2, "steps": 10}).json()
        assert c.get(f"/jobs/{queued['id']}").json()["queue_position"] == 0
        r = c.delete(f"/jobs/{queued['id']}")
        assert r.status_code == 202 and r.json()["status"] == "canceled"
        step_at_cancel = c.get(f"/jobs/{long['id']}").json()["progress"]["step"]
        assert c.delete(f"/jobs/{long['id']}").status_code == 202
        time.sleep(1.0)
        stopped = c.get(f"/jobs/{long['id']}").json()
        assert stopped["status"] == "canceled" and stopped["progress"]["step"] < 1000
        assert stopped["progress"]["step"] - step_at_cancel < 200  # the run stopped, not merely relabelled
        never = c.get(f"/jobs/{queued['id']}").json()
        assert never["status"] == "canceled" and never["started_at"] is None
        assert c.get(f"/jobs/{long['id']}/image.png").status_code == 409
        assert c.delete(f"/jobs/{long['id']}").status_code == 409
        # the worker is free again and nothing of the canceled jobs was stored
        after = c.post("/generate", json={"seed": 3, "steps": 5}).json()
        assert c.get(f"/jobs/{after['id']}", params={"wait": 30}).json()["status"] == "succeeded"
        assert c.get(f"/jobs/{queued['id']}").json()["started_at"] is None
    assert '"status": "canceled"' in stack.log("worker")


def test_readyz_follows_the_worker(stack):
    with stack.client() as c:
        assert c.get("/readyz").status_code == 200
        os.kill(stack.procs["worker"].pid, signal.SIGKILL)
        stack.procs["worker"].wait()
        killed = time.monotonic()
        while c.get("/readyz").status_code == 200:
            assert time.monotonic() - killed < 2 * 1 + 1.5, "readyz still 200 after the heartbeat TTL"
            time.sleep(0.1)
        assert c.get("/readyz").json()["detail"]["serving"] == 0


def test_api_survives_redis_going_away_and_recovers(stack):
    with stack.client() as c:
        stack.redis.stop()
        started = time.monotonic()
        r = c.post("/generate", json={"seed": 1})
        assert r.status_code == 503 and r.headers["Retry-After"] and r.json()["detail"]
        assert time.monotonic() - started < 5
        assert c.get("/healthz").status_code == 200 and stack.procs["api"].poll() is None
        stack.redis.start()
        stack.wait_ready(timeout=30)
        job = c.post("/generate", json={"seed": 1, "steps": 5}).json()
        assert c.get(f"/jobs/{job['id']}", params={"wait": 30}).json()["status"] == "succeeded"


def test_worker_runs_only_worker_jobs_functions(stack, tmp_path):
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from app.core import keys
    from app.core.jobs import new_job_id, new_record
    from app.core.spec import GenerateSpec

    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    conn = redis.Redis.from_url(stack.redis.url)
    job_id = new_job_id()
    spec = GenerateSpec(job_id, "tiny@1", "0" * 64, seed=1, steps=5, eta=0.0)
    conn.hset(keys.job(job_id), mapping=new_record(spec, {"name": "tiny", "version": 1, "digest": "0" * 64}))
    queue = Queue(keys.queue_name("tiny@1"), connection=conn, serializer=JSONSerializer)
    rq_job = queue.enqueue_call("os.remove", args=[str(victim)], job_id=job_id)
    with stack.client() as c:
        job = c.get(f"/jobs/{job_id}", params={"wait": 20}).json()
        assert job["status"] == "failed" and "refused" in job["error"] and "os.remove" in job["error"]
        healthy = c.post("/generate", json={"seed": 4, "steps": 5}).json()
        assert c.get(f"/jobs/{healthy['id']}", params={"wait": 30}).json()["status"] == "succeeded"
    assert victim.read_text() == "still here"
    rq_job.refresh()
    assert rq_job.get_status() == "failed"


def test_cancel_inside_a_batch_leaves_the_others_intact(stack, tmp_path):
    with stack.client() as c:
        blocker = c.post("/generate", json={"seed": 1, "steps": 400}).json()
        wait_status(c, blocker["id"], {"running"})
        jobs = [
            c.post("/generate", json={"seed": s, "steps": 1000, "eta": e}).json()
            for s, e in ((10, 0.0), (11, 0.5), (12, 1.0))
        ]
        for job in jobs:
            wait_status(c, job["id"], {"running"})
        assert c.delete(f"/jobs/{jobs[1]['id']}").status_code == 202
        done = [c.get(f"/jobs/{j['id']}", params={"wait": 30}).json() for j in (jobs[0], jobs[2])]
        assert [d["status"] for d in done] == ["succeeded", "succeeded"]
        assert [d["batch_size"] for d in done] == [3, 3]
        assert c.get(f"/jobs/{jobs[1]['id']}").json()["status"] == "canceled"
        png = c.get(f"/jobs/{jobs[2]['id']}/image.png").content
    out = tmp_path / "alone.png"
    run_cli("sample", "--model", "tiny", "--seed", "12", "--steps", "1000", "--eta", "1.0", "--out", str(out))
    assert out.read_bytes() == png
