"""Heartbeats and the one-engine-per-model rule, against a real Redis."""

import json
import time

import pytest
import redis as redis_lib

from app.core import keys
from helpers import fill_redis
from worker.heartbeat import EngineConflict, Heartbeat, claim_engines

pytestmark = pytest.mark.each_redis


def test_a_second_engine_is_refused(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    claim_engines(conn, {"m@1": "cpu/fp32/aaaa"}, ttl=10)
    claim_engines(conn, {"m@1": "cpu/fp32/aaaa"}, ttl=10)  # the same engine: welcome
    with pytest.raises(EngineConflict, match="already served by cpu/fp32/aaaa"):
        claim_engines(conn, {"m@1": "cuda/bf16/bbbb"}, ttl=10)
    with pytest.raises(EngineConflict, match="this worker is cpu/fp32/cccc"):  # same device, other kernels
        claim_engines(conn, {"m@1": "cpu/fp32/cccc"}, ttl=10)
    claim_engines(conn, {"other@1": "cuda/bf16/bbbb"}, ttl=10)  # another model may use another engine


def test_heartbeat_lists_models_and_expires(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    beat = Heartbeat(conn, "w1", {"m@1": "cpu/fp32/aaaa"}, period_s=1)
    beat.beat()
    info = json.loads(conn.get(keys.worker("w1")))
    assert info["models"] == ["m@1"] and info["engines"] == {"m@1": "cpu/fp32/aaaa"}
    assert 0 < conn.ttl(keys.worker("w1")) <= 2 and 0 < conn.ttl(keys.engine("m@1")) <= 2
    beat.stop()
    assert conn.get(keys.worker("w1")) is None


def test_a_full_redis_refuses_the_heartbeat_but_its_keys_stay_alive(redis_server):
    """Past the key's TTL (2 s) of refused heartbeats, the worker is still alive to the reaper: it would otherwise
    re-queue the runs that this worker is still computing."""
    conn = redis_lib.Redis.from_url(redis_server.url)
    beat = Heartbeat(conn, "w1", {"m@1": "cpu/fp32/aaaa"}, period_s=1)
    beat.beat()
    fill_redis(conn)
    beat.start()
    try:
        time.sleep(3.5)
        with pytest.raises(redis_lib.RedisError):  # full all along
            beat.beat()
        assert conn.exists(keys.worker("w1")) and conn.exists(keys.engine("m@1"))
    finally:
        conn.config_set("maxmemory", 0)
        beat.stop()


def test_memory_exhausted_while_a_failed_beat_is_reported_does_not_end_the_heartbeat(redis_server, monkeypatch):
    """A MemoryError in a beat, and another in the log line that reports it (memory is exhausted for both): the
    thread goes on, and beats once memory returns. Had it ended, the worker would live on taken for dead: the reaper
    would re-queue the runs it is computing, and its models would go unserved."""
    from worker import heartbeat

    conn = redis_lib.Redis.from_url(redis_server.url)
    beat = Heartbeat(conn, "w1", {"m@1": "cpu/fp32/aaaa"}, period_s=1)
    real_beat, failing = beat.beat, [1, 2]

    def beat_in_exhausted_memory():
        if failing:
            failing.pop()
            raise MemoryError
        real_beat()

    def warning(*args, **kwargs):
        raise MemoryError  # the report needs memory too

    monkeypatch.setattr(beat, "beat", beat_in_exhausted_memory)
    monkeypatch.setattr(heartbeat.log, "warning", warning)
    beat.start()
    try:
        deadline = time.monotonic() + 6
        while conn.get(keys.worker("w1")) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not failing and beat.is_alive()
        assert conn.get(keys.worker("w1")) is not None
    finally:
        beat.stop()
