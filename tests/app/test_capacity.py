"""Capacity is not an outage: readiness costs O(1) in Redis's keys, and a busy API answers 429, never 503.

In process against a real Redis, and against a real `diffusetv api` for the concurrent cases.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app
from helpers import claim_as_worker
from stack import Stack, free_port, stack_env
from worker.heartbeat import Heartbeat

KEY_A, KEY_B = "a" * 24, "b" * 24


def command_calls(conn) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in conn.info("commandstats").items()}


def calls_of(conn, client) -> dict[str, int]:
    client.get("/readyz")  # warm: the pool's connections are open
    conn.config_resetstat()
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
    calls = command_calls(conn)
    calls.pop("config|resetstat", None)
    calls.pop("config", None)
    calls.pop("info", None)
    return calls


def test_readyz_and_metrics_make_the_same_calls_whatever_else_redis_holds(tiny_store, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", heartbeat_s=300)
    with TestClient(create_app(settings)) as client:
        beat = Heartbeat(conn, "w1", {"tiny@1": "cpu/fp32/aaaa"}, period_s=300)
        beat.beat()
        few = calls_of(conn, client)
        pipe = conn.pipeline(transaction=False)
        for i in range(30_000):  # unrelated keys, as a day of results leaves them
            pipe.set(f"diffusetv:job:{i:032x}", "x")
        pipe.execute()
        many = calls_of(conn, client)
        beat.stop()
    assert "scan" not in few and "scan" not in many, many
    assert many == few  # the same commands, as many times: nothing grows with the keyspace


def test_an_exhausted_pool_is_429_with_retry_after_not_503(tiny_store, redis_server):
    settings = Settings(
        redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", redis_pool_size=4, redis_pool_wait_s=0.2
    )
    claim_as_worker(redis_server.url)
    with TestClient(create_app(settings)) as client:
        pool = client.app.state.redis.connection_pool
        held = [pool.get_connection() for _ in range(4)]  # every connection busy, as under a burst
        try:
            r = client.post("/generate", json={"seed": 1})
            assert r.status_code == 429, r.text
            assert int(r.headers["Retry-After"]) >= 1 and "capacity" in r.json()["detail"]
        finally:
            for connection in held:
                pool.release(connection)
        assert client.post("/generate", json={"seed": 1}).status_code == 202


@pytest.fixture
def api_only(tiny_store, redis_server, tmp_path):
    """`diffusetv api` as a real process on a real Redis, without a worker (a stand-in for its claim of tiny@1:
    jobs are accepted and stay queued)."""
    stacks = []
    claim_as_worker(redis_server.url)

    def start(**env: str) -> Stack:
        s = Stack(stack_env(redis_server.url, tiny_store.root, **env), free_port(), tmp_path)
        s.start_api()
        stacks.append(s)
        s.wait_healthy()
        return s

    yield start
    for s in stacks:
        s.stop_all()


async def long_polls_and_another_key(base: str, job_id: str, polls: int) -> tuple[list[int], list[int]]:
    """`polls` long polls of one job by key A, and meanwhile 20 submits and 20 reads by key B."""
    limits = httpx.Limits(max_connections=polls + 50)
    a = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=60, limits=limits)
    b = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=60, limits=limits)
    async with a, b:
        waits = [asyncio.create_task(a.get(f"/jobs/{job_id}", params={"wait": 6})) for _ in range(polls)]
        await asyncio.sleep(2.0)  # the long polls are all waiting now
        own = await b.post("/generate", json={"seed": 12345})
        own_id = own.json()["id"] if own.status_code == 202 else "0" * 32
        others = await asyncio.gather(
            *(b.post("/generate", json={"seed": 1000 + i}) for i in range(20)),
            *(b.get(f"/jobs/{own_id}") for _ in range(20)),
        )
        polled = await asyncio.gather(*waits)
    return [r.status_code for r in polled], [own.status_code, *(r.status_code for r in others)]


@pytest.mark.slow
def test_long_polls_by_one_key_never_make_anothers_requests_fail(api_only):
    s = api_only(DIFFUSETV_API_KEYS=f"{KEY_A},{KEY_B}")
    with s.client(headers={"Authorization": f"Bearer {KEY_A}"}) as c:
        job_id = c.post("/generate", json={"seed": 1}).json()["id"]
    polled, others = asyncio.run(long_polls_and_another_key(s.base, job_id, 150))
    assert set(others) <= {200, 202}, sorted(others)  # key B is served as if A were not there
    assert 503 not in polled and set(polled) <= {200, 429}, sorted(polled)
    assert polled.count(200) >= 1
