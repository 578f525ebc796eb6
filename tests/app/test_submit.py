"""The submit is atomic and bounded: a job, its run, its open-run entry and its queue entry appear together or
not at all, each with a TTL; MAX_QUEUE, the followers of a run and each client's quota hold under races.

Real Redis; in process (with failures injected into the API's Redis client), and a real `diffusetv api` for
the concurrent cases.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import types

import httpx
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app.core import keys, runs
from app.core.png import encode_png
from app.core.settings import Settings
from app.main import create_app
from helpers import claim_as_worker, generate_spec
from stack import Stack, free_port, stack_env

ENGINE = "cpu/fp32/aaaa"
ENGINE_RECORD = json.dumps({"device": "cpu", "precision": "fp32", "kernels": "aaaa"})
QUEUE = "rq:queue:" + keys.queue_name("tiny@1")
PERMANENT = {keys.METRICS, "diffusetv:workers", keys.RUNNING, "rq:queues", QUEUE}  # the service's own structures


def half_made(conn) -> list[str]:
    """Every way the stored state can be half made: a key without TTL, a waiting job no queue entry leads to,
    an open-run entry or an RQ job without its counterpart."""
    problems = []
    queued = {i.decode() for i in conn.lrange(QUEUE, 0, -1)}
    for raw in conn.scan_iter(count=1000):
        key = raw.decode()
        if key not in PERMANENT and conn.ttl(key) < 0:
            problems.append(f"no TTL: {key}")
    for raw in conn.scan_iter(match=keys.job("*"), count=1000):
        record = {k.decode(): v.decode() for k, v in conn.hgetall(raw).items()}
        if record.get("status") in ("queued", "running"):
            run_id = record.get("run", "")
            run = conn.hget(keys.run(run_id), "status")
            if run_id not in queued or run not in (b"queued", b"running"):
                problems.append(f"job {record.get('id')} waits for run {run_id!r} ({run}) that is not queued")
            if not conn.exists(keys.events(record["id"])):
                problems.append(f"job {record['id']} has no events")
    for raw in conn.scan_iter(match=keys.open_run("*"), count=1000):
        run_id = conn.get(raw).decode()
        if run_id not in queued:
            problems.append(f"{raw.decode()} points at run {run_id}, which is not queued")
    for raw in conn.scan_iter(match="rq:job:*", count=1000):
        job_id = raw.decode().removeprefix("rq:job:")
        if ":" not in job_id and not conn.exists(keys.job(job_id)):
            problems.append(f"RQ job {job_id} has no job record")
    return problems


def settings_for(tiny_store, redis_server, **overrides) -> Settings:
    return Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", heartbeat_s=300, **overrides)


def cached_result(conn, client, seed: int, steps: int = 5, png: bytes | None = None) -> bytes:
    """A finished run's result for (seed, steps), as a worker leaves it: its PNG, its job and the cache entry."""
    model = client.get("/models").json()["models"][0]
    conn.set(keys.engine("tiny@1"), ENGINE, ex=600)
    png = png or encode_png(__import__("numpy").zeros((16, 16, 3), "uint8"), {"seed": seed})
    source = "f" * 32
    conn.set(keys.png(source), png, ex=600)
    conn.hset(
        keys.job(source), mapping={"id": source, "status": "succeeded", "engine": ENGINE_RECORD, "batch_size": "1"}
    )
    conn.expire(keys.job(source), 600)
    entry = {"job": source, "sha256": hashlib.sha256(png).hexdigest()}
    key = runs.engine_key(generate_spec(types.SimpleNamespace(**model), seed, steps, 0.0), ENGINE)
    conn.set(keys.cache(key), json.dumps(entry), ex=600)
    return png


class Injected(redis_lib.ConnectionError):
    pass


def inject(app_redis, monkeypatch, at: int, after: bool) -> dict:
    """Fail the `at`-th Redis round trip of the API (a command or a pipeline), before it is sent or after it ran
    (its reply lost)."""
    calls = {"n": 0}
    command = redis_lib.Redis.execute_command
    pipeline = redis_lib.client.Pipeline.execute

    def step(run):
        calls["n"] += 1
        if calls["n"] == at and not after:
            raise Injected(f"injected before round trip {at}")
        result = run()
        if calls["n"] == at:
            raise Injected(f"injected after round trip {at}")
        return result

    app_redis.execute_command = types.MethodType(
        lambda self, *a, **kw: step(lambda: command(self, *a, **kw)), app_redis
    )
    monkeypatch.setattr(redis_lib.client.Pipeline, "execute", lambda self, *a, **kw: step(lambda: pipeline(self)))
    return calls


@pytest.mark.parametrize("kind", ["lead", "follow", "cached"])
@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
def test_a_failure_at_any_step_of_a_submit_leaves_nothing_half_made(tiny_store, redis_server, monkeypatch, kind, after):
    conn = redis_lib.Redis.from_url(redis_server.url)
    with TestClient(create_app(settings_for(tiny_store, redis_server)), raise_server_exceptions=False) as client:
        conn.set(keys.engine("tiny@1"), ENGINE, ex=600)
        if kind == "follow":
            assert client.post("/generate", json={"seed": 7, "steps": 5}).status_code == 202
        if kind == "cached":
            cached_result(conn, client, 7)
        app_redis = client.app.state.redis
        for at in range(1, 40):
            with monkeypatch.context() as m:
                calls = inject(app_redis, m, at, after)
                r = client.post("/generate", json={"seed": 7, "steps": 5})
            del app_redis.execute_command
            assert r.status_code in (202, 503), r.text
            assert half_made(conn) == [], f"a failure {'after' if after else 'before'} round trip {at}"
            if calls["n"] < at:  # the submit went through without reaching the failure: every step was tried
                break
        else:
            pytest.fail("the submit never finished")
        assert r.status_code == 202 and at > 1


def api_process(tiny_store, redis_server, tmp_path, **env: str) -> Stack:
    """A real `diffusetv api`, with a stand-in for a worker's claim of tiny@1 (a model nobody serves is 503)."""
    claim_as_worker(redis_server.url, "tiny@1", ENGINE)
    s = Stack(stack_env(redis_server.url, tiny_store.root, **env), free_port(), tmp_path)
    s.start_api()
    s.wait_healthy()
    return s


async def concurrently(base: str, bodies: list[dict], headers: dict | None = None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits, headers=headers or {}) as http:
        return await asyncio.gather(*(http.post("/generate", json=b) for b in bodies))


def test_max_queue_holds_under_concurrent_submits(tiny_store, redis_server, tmp_path):
    s = api_process(tiny_store, redis_server, tmp_path, DIFFUSETV_MAX_QUEUE="5")
    try:
        answers = asyncio.run(concurrently(s.base, [{"seed": i, "steps": 5} for i in range(60)]))
    finally:
        s.stop_all()
    statuses = [r.status_code for r in answers]
    conn = redis_lib.Redis.from_url(redis_server.url)
    assert statuses.count(202) == 5 and statuses.count(429) == 55, sorted(statuses)
    assert conn.llen(QUEUE) == 5
    assert all(int(r.headers["Retry-After"]) > 0 for r in answers if r.status_code == 429)
    assert half_made(conn) == []


def test_followers_of_one_run_are_bounded_and_there_is_never_a_second_run(tiny_store, redis_server, tmp_path):
    s = api_process(tiny_store, redis_server, tmp_path, DIFFUSETV_MAX_FOLLOWERS="3")
    try:
        answers = asyncio.run(concurrently(s.base, [{"seed": 9, "steps": 5, "previews": True}] * 12))
    finally:
        s.stop_all()
    statuses = sorted(r.status_code for r in answers)
    conn = redis_lib.Redis.from_url(redis_server.url)
    assert statuses == [202] * 4 + [429] * 8, statuses  # the leader and 3 followers
    assert conn.llen(QUEUE) == 1
    (run_id,) = {r.json()["id"] for r in answers if r.status_code == 202} & {
        i.decode() for i in conn.lrange(QUEUE, 0, -1)
    }
    assert conn.scard(keys.run_jobs(run_id)) == 4  # the worker's per-step work: 4 jobs, not 12
    assert half_made(conn) == []


def test_cache_hits_and_joins_count_against_the_clients_quota(tiny_store, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    a, b = "quota-key-a-" + "a" * 12, "quota-key-b-" + "b" * 12
    settings = settings_for(tiny_store, redis_server, api_keys=f"{a},{b}", client_jobs=5)
    with TestClient(create_app(settings)) as client:
        cached_result(conn, client, 3)
        as_a = {"Authorization": f"Bearer {a}"}
        hits = [client.post("/generate", json={"seed": 3, "steps": 5}, headers=as_a) for _ in range(8)]
        assert [r.status_code for r in hits] == [202] * 5 + [429] * 3
        assert all(r.json()["status"] == "succeeded" for r in hits[:5])  # cache hits, each a copy of the PNG
        refused = hits[-1]
        assert 0 < int(refused.headers["Retry-After"]) <= settings.quota_window_s
        assert "quota" in refused.json()["detail"]
        # a join of a queued run counts too, and another key keeps its own quota
        assert client.post("/generate", json={"seed": 4, "steps": 5}, headers=as_a).status_code == 429
        as_b = {"Authorization": f"Bearer {b}"}
        assert client.post("/generate", json={"seed": 3, "steps": 5}, headers=as_b).status_code == 202
    assert len([k for k in conn.scan_iter(match=keys.png("*"))]) == 1 + 5 + 1  # the source and 6 copies


def test_result_bytes_per_client_are_bounded(tiny_store, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    with TestClient(create_app(settings_for(tiny_store, redis_server, client_bytes=2**16))) as client:
        cached_result(conn, client, 3, png=b"\x89PNG" + b"\0" * 14_000)  # a 14 kB result
        statuses = [client.post("/generate", json={"seed": 3, "steps": 5}).status_code for _ in range(5)]
    assert statuses == [202, 202, 202, 429, 429], statuses  # 3 copies and their records fit in 64 KiB, a 4th not


def test_model_work_per_client_is_bounded_and_hits_and_joins_take_none(tiny_store, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    settings = settings_for(tiny_store, redis_server, client_compute=1_000)
    walk = {"seed_a": 1, "seed_b": 2, "frames": 8, "steps": 50}  # 8 rows x 50 steps: 400 image-steps
    with TestClient(create_app(settings)) as client:
        cached_result(conn, client, 3)
        first = client.post("/interpolate", json=walk)
        joined = client.post("/interpolate", json=walk)  # the same run: no more model work
        second = client.post("/interpolate", json={**walk, "seed_b": 3})
        third = client.post("/interpolate", json={**walk, "seed_b": 4})  # 1,200 > 1,000
        assert [r.status_code for r in (first, joined, second, third)] == [202, 202, 202, 429]
        assert conn.hget(keys.job(joined.json()["id"]), "run").decode() == first.json()["id"]
        assert "image-steps" in third.json()["detail"] and int(third.headers["Retry-After"]) > 0
        assert client.post("/generate", json={"seed": 1, "steps": 200}).status_code == 202  # 1,000 in all
        assert client.post("/generate", json={"seed": 2, "steps": 1}).status_code == 429
        hit = client.post("/generate", json={"seed": 3, "steps": 5})  # a cache hit takes no model work
        assert hit.status_code == 202 and hit.json()["status"] == "succeeded"
    assert conn.llen(QUEUE) == 3  # the two walks and the generation: the join and the hit queued nothing
