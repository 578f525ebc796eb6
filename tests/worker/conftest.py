"""Fixtures of the worker tests: the API and a worker run in process, against a real Redis."""

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from rq import Queue
from rq.serializers import JSONSerializer

from app.core import keys
from app.core.settings import Settings, get_settings
from app.main import create_app
from worker import registry
from worker.engine import load_engine
from worker.main import DiffuseWorker


@pytest.fixture
def service(tiny_store, redis_server, monkeypatch):
    """An API client and a `work()` that runs the queue dry in this process (as `rq worker --burst`)."""
    monkeypatch.setenv("DIFFUSETV_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("DIFFUSETV_MAX_BATCH_WAIT_MS", "0")
    get_settings.cache_clear()
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny")
    conn = redis_lib.Redis.from_url(redis_server.url)
    engine = load_engine("tiny", tiny_store, device="cpu")
    registry.ENGINES["tiny@1"] = engine
    conn.set(keys.engine("tiny@1"), engine.id)

    def work():
        queue = Queue(keys.queue_name("tiny@1"), connection=conn, serializer=JSONSerializer)
        DiffuseWorker([queue], connection=conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")

    with TestClient(create_app(settings)) as client:
        client.work, client.redis, client.engine = work, conn, engine
        yield client
    registry.ENGINES.clear()
    get_settings.cache_clear()
