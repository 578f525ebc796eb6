"""The model identity keys runs and the cache: two versions with the same weights and another schedule never
share an engine key, a run or a cache entry (real Redis, the worker run in process)."""

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from rq import Queue
from rq.serializers import JSONSerializer

from app.core import keys, runs
from app.core.png import decode_png, read_parameters
from app.core.settings import Settings, get_settings
from app.main import create_app
from helpers import copy_version, generate_spec
from worker import registry
from worker.engine import load_engine
from worker.main import DiffuseWorker

REFS = ("tiny@1", "tiny@2")


@pytest.fixture
def service(tiny_store, redis_server, monkeypatch):
    """tiny@1 and tiny@2: the same weights file, the second on the cosine schedule; both served in process."""
    copy_version(tiny_store, "tiny", 1, schedule="cosine")
    monkeypatch.setenv("DIFFUSETV_MAX_BATCH_WAIT_MS", "0")
    get_settings.cache_clear()
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny")
    conn = redis_lib.Redis.from_url(redis_server.url)
    for ref in REFS:
        registry.ENGINES[ref] = load_engine(ref, tiny_store, device="cpu")
        conn.set(keys.engine(ref), registry.ENGINES[ref].id)

    def work():
        queues = [Queue(keys.queue_name(ref), connection=conn, serializer=JSONSerializer) for ref in REFS]
        DiffuseWorker(queues, connection=conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")

    with TestClient(create_app(settings)) as client:
        client.work, client.redis = work, conn
        yield client
    registry.ENGINES.clear()
    get_settings.cache_clear()


def test_same_weights_other_schedule_other_engine_key(service, tiny_store):
    v1, v2 = (tiny_store.resolve(ref) for ref in REFS)
    assert v1.digest == v2.digest and v1.identity != v2.identity
    keys_ = [runs.engine_key(generate_spec(m, 42, 8, 0.0), "cpu/fp32/k") for m in (v1, v2)]
    assert keys_[0] != keys_[1]


def test_same_weights_other_schedule_never_share_a_cache_entry(service):
    body = {"seed": 42, "steps": 8}
    first = service.post("/generate", json={**body, "model": "tiny@1"}).json()
    service.work()
    assert service.post("/generate", json={**body, "model": "tiny@1"}).json()["status"] == "succeeded"  # a hit
    other = service.post("/generate", json={**body, "model": "tiny@2"}).json()
    assert other["status"] == "queued"  # tiny@1's entry is no answer for tiny@2
    service.work()
    pngs = []
    for job in (first, other):
        assert service.get(f"/jobs/{job['id']}", params={"wait": 10}).json()["status"] == "succeeded"
        pngs.append(service.get(f"/jobs/{job['id']}/image.png").content)
    assert decode_png(pngs[0]).tolist() != decode_png(pngs[1]).tolist()
    v1, v2 = (read_parameters(png) for png in pngs)
    assert v1["digest"] == v2["digest"] and v1["identity"] != v2["identity"]
    assert (v1["version"], v2["version"]) == (1, 2)
    assert service.get(f"/jobs/{other['id']}").json()["model"]["identity"] == v2["identity"]
    assert service.post("/generate", json={**body, "model": "tiny@2"}).json()["status"] == "succeeded"


def test_same_weights_other_schedule_never_share_a_run(service):
    body = {"seed": 43, "steps": 8}
    jobs = [service.post("/generate", json={**body, "model": ref}).json() for ref in REFS]
    led = [service.redis.hget(keys.job(j["id"]), "run").decode() for j in jobs]
    assert led == [j["id"] for j in jobs]  # each leads its own run: no joining across versions
