"""The reaper, pass by pass, against a real Redis: re-queue a dead worker's run, then give up."""

import json
import time

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from rq.job import Job

from app.core import keys, runs, workers
from app.core.jobs import JobStatus, transition
from app.core.settings import Settings
from app.main import create_app
from app.reaper import Reaper, reap_once, rescue_stranded
from helpers import claim_as_worker

pytestmark = pytest.mark.each_redis


@pytest.fixture
def setup(tiny_store, redis_server):
    settings = Settings(
        redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", max_retries=2, heartbeat_s=300
    )  # the app's own reaper thread stays idle; the test calls reap_once
    claim_as_worker(redis_server.url)
    with TestClient(create_app(settings)) as client:
        yield client, redis_lib.Redis.from_url(redis_server.url), settings


def take(conn, job_id: str, worker: str) -> str:
    """What a worker does when it starts a run: off the queue, marked running under its id."""
    queue_key = "rq:queue:" + keys.queue_name("tiny@1")
    assert conn.lrem(queue_key, 1, job_id) == 1
    run_key = conn.hget(keys.job(job_id), "run").decode()
    runs.mark_running(conn, run_key, worker, job_id)
    transition(
        conn,
        job_id,
        (JobStatus.QUEUED,),
        {"status": JobStatus.RUNNING, "progress": json.dumps({"step": 3, "steps": 5})},
    )
    return run_key


def test_requeue_twice_then_fail(setup):
    client, conn, settings = setup
    job_id = client.post("/generate", json={"seed": 1, "steps": 5}).json()["id"]
    follower = client.post("/generate", json={"seed": 1, "steps": 5}).json()["id"]
    for death in (1, 2):
        run_key = take(conn, job_id, f"dead-{death}")
        assert reap_once(conn, settings) == [run_key]
        for j in (job_id, follower):
            job = client.get(f"/jobs/{j}").json()
            assert job["status"] == "queued" and job["queue_position"] == 0 and job["progress"] is None
        assert conn.lrange("rq:queue:" + keys.queue_name("tiny@1"), 0, -1) == [job_id.encode()]
    take(conn, job_id, "dead-3")
    reap_once(conn, settings)
    for j in (job_id, follower):
        job = client.get(f"/jobs/{j}").json()
        assert job["status"] == "failed" and "died 3 times" in job["error"]
    assert not conn.smembers(keys.RUNNING)


def test_a_live_worker_is_left_alone(setup):
    client, conn, settings = setup
    job_id = client.post("/generate", json={"seed": 2, "steps": 5}).json()["id"]
    conn.set(keys.worker("alive"), "{}", ex=60)
    take(conn, job_id, "alive")
    assert reap_once(conn, settings) == []
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"


def test_one_reaper_at_a_time(setup):
    _, conn, settings = setup
    a, b = Reaper(conn, settings), Reaper(conn, settings)
    assert a.holds_lock() and not b.holds_lock() and a.holds_lock()
    conn.delete(keys.REAPER_LOCK)
    assert b.holds_lock() and not a.holds_lock()


QUEUE_KEY = "rq:queue:" + keys.queue_name("tiny@1")


@pytest.mark.parametrize("held_by", ["intermediate queue", "started registry"])
def test_a_job_a_dead_worker_took_off_its_queue_before_starting_its_run_is_put_back(setup, held_by):
    client, conn, settings = setup
    job_id = client.post("/generate", json={"seed": 3, "steps": 5}).json()["id"]
    other = client.post("/generate", json={"seed": 4, "steps": 5}).json()["id"]
    # what RQ does as a worker takes the job (BLMOVE to its intermediate queue, then the started registry), and the
    # worker dies before it marks the run running (worker.batch.take)
    intermediate = QUEUE_KEY + ":intermediate"
    assert conn.lmove(QUEUE_KEY, intermediate, "LEFT", "RIGHT") == job_id.encode()
    if held_by == "started registry":
        conn.lrem(intermediate, 1, job_id)
        conn.zadd("rq:wip:" + keys.queue_name("tiny@1"), {f"{job_id}:execution": time.time() + 600})
    assert reap_once(conn, settings) == []  # no worker marked it: the heartbeat reaper cannot see it
    seen: dict[str, float] = {}
    assert rescue_stranded(conn, seen, after_s=0.5) == [] and set(seen) == {job_id}
    assert conn.lrange(QUEUE_KEY, 0, -1) == [other.encode()]
    time.sleep(0.6)
    assert rescue_stranded(conn, seen, after_s=0.5) == [job_id] and seen == {}
    assert conn.lrange(QUEUE_KEY, 0, -1) == [job_id.encode(), other.encode()]  # at the front, once
    assert conn.llen(intermediate) == 0 and not conn.zrange("rq:wip:" + keys.queue_name("tiny@1"), 0, -1)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["queue_position"] == 0, job


def test_a_job_whose_worker_marks_its_run_in_time_is_left_alone(setup):
    client, conn, _ = setup
    job_id = client.post("/generate", json={"seed": 5, "steps": 5}).json()["id"]
    conn.lmove(QUEUE_KEY, QUEUE_KEY + ":intermediate", "LEFT", "RIGHT")
    seen: dict[str, float] = {}
    assert rescue_stranded(conn, seen, after_s=0.2) == [] and set(seen) == {job_id}
    conn.set(keys.worker("alive"), "{}", ex=60)
    runs.mark_running(conn, job_id, "alive", job_id, [job_id])  # its worker reaches `take`
    time.sleep(0.3)
    assert rescue_stranded(conn, seen, after_s=0.2) == [] and seen == {}
    assert conn.llen(QUEUE_KEY) == 0


def test_a_claimed_run_leaves_the_queue_and_is_marked_running_in_one_step(setup):
    client, conn, _ = setup
    job_id = client.post("/generate", json={"seed": 6, "steps": 5}).json()["id"]
    assert runs.claim(conn, QUEUE_KEY, job_id, "w1", 600)
    assert conn.llen(QUEUE_KEY) == 0 and conn.sismember(keys.RUNNING, job_id)
    assert conn.hget(keys.run(job_id), "worker") == b"w1"
    assert not runs.claim(conn, QUEUE_KEY, job_id, "w2", 600)  # another worker had it: nothing written
    assert conn.hget(keys.run(job_id), "worker") == b"w1"


def test_a_started_job_whose_worker_still_beats_is_its_own_however_long_it_takes(setup):
    client, conn, _ = setup
    job_id = client.post("/generate", json={"seed": 7, "steps": 5}).json()["id"]
    conn.lrem(QUEUE_KEY, 1, job_id)  # RQ handed it to a worker whose records wait for a full Redis, say
    conn.zadd("rq:wip:" + keys.queue_name("tiny@1"), {f"{job_id}:execution": time.time() + 600})
    conn.hset(Job.key_for(job_id), "worker_name", workers.rq_name("slow"))
    conn.set(keys.worker("slow"), "{}", ex=60)
    seen: dict[str, float] = {}
    assert rescue_stranded(conn, seen, after_s=0) == [] and seen == {}
    conn.delete(keys.worker("slow"))  # it died: no need to wait
    assert rescue_stranded(conn, seen, after_s=3600) == [job_id]
    assert conn.lrange(QUEUE_KEY, 0, -1) == [job_id.encode()]


def test_the_leaders_take_leaves_no_copy_of_its_run_in_the_queue(setup):
    client, conn, _ = setup
    job_id = client.post("/generate", json={"seed": 8, "steps": 5}).json()["id"]
    assert conn.lrange(QUEUE_KEY, 0, -1) == [job_id.encode()]  # a copy the reaper put back, say
    runs.mark_running(conn, job_id, "w1", job_id, [job_id], 600, QUEUE_KEY)
    assert conn.llen(QUEUE_KEY) == 0 and conn.sismember(keys.RUNNING, job_id)
