"""A full Redis (`maxmemory` with `noeviction`) as both Redis versions word it, and the retries around it."""

import logging
import threading

import pytest
import redis as redis_lib

from app.core.jobs import JobStatus, transition
from app.core.redis import is_oom, skip_when_full, while_full
from helpers import fill_redis

pytestmark = pytest.mark.each_redis

log = logging.getLogger("test")


@pytest.fixture
def full(redis_server):
    """A client of a Redis that refuses every write that could grow it."""
    conn = redis_lib.Redis.from_url(redis_server.url)
    conn.hset("diffusetv:job:j", "status", "running")
    fill_redis(conn)
    yield conn
    conn.config_set("maxmemory", 0)


def refusal(call) -> redis_lib.RedisError:
    with pytest.raises(redis_lib.RedisError) as caught:
        call()
    return caught.value


def test_every_form_of_the_refusal_is_oom(full):
    version = full.info("server")["redis_version"]
    script = refusal(lambda: transition(full, "j", (JobStatus.RUNNING,), {"status": JobStatus.FAILED}))
    pipe = full.pipeline(transaction=False).hset("h", "a", "b").expire("h", 10)
    refused = [
        refusal(lambda: full.set("k", "v")),
        script,
        refusal(pipe.execute),
        refusal(full.pipeline(transaction=True).hset("h", "a", "b").execute),
    ]
    assert all(is_oom(e) for e in refused), (version, refused)
    if version.startswith("6."):  # inside a script, Redis 6.2 gives a script error, not an OOM error
        assert type(script) is redis_lib.exceptions.ResponseError and "OOM" in str(script), script
    full.config_set("maxmemory", 0)
    others = [refusal(lambda: full.lpush("diffusetv:job:j", "x")), refusal(lambda: full.eval("return {err='x'}", 0))]
    assert not any(is_oom(e) for e in others), others


def test_while_full_retries_until_memory_returns(full):
    threading.Timer(0.5, lambda: full.config_set("maxmemory", 0)).start()
    assert while_full(log, "a test write", full.set, "k", "v") is True
    assert full.get("k") == b"v"


def test_while_full_gives_up_after_its_patience_and_lets_other_errors_through(full):
    with pytest.raises(redis_lib.RedisError) as caught:
        while_full(log, "a test write", full.set, "k", "v", patience_s=0.3)
    assert is_oom(caught.value)
    with pytest.raises(redis_lib.exceptions.ResponseError, match="WRONGTYPE"):  # a read: Redis serves it when full
        while_full(log, "a wrong command", full.get, "diffusetv:job:j", patience_s=5)


def test_skip_when_full_skips_and_says_so(full, caplog):
    assert skip_when_full(log, "progress", full.set, "k", "v") is False
    assert "Redis is full (maxmemory): progress skipped" in caplog.text
    full.config_set("maxmemory", 0)
    assert skip_when_full(log, "progress", full.set, "k", "v") is True
