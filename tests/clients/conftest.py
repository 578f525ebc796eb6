"""The Python client's tests: this repository's client (clients/python) first on the path, and a live stack."""

from __future__ import annotations

import sys

import pytest

from helpers import REPO, make_tiny_net

sys.path.insert(0, str(REPO / "clients" / "python"))  # before any installed copy of the client

import diffusetv_client

assert diffusetv_client.__file__.startswith(str(REPO / "clients" / "python")), diffusetv_client.__file__


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Redis, `diffusetv worker` and `diffusetv api` serving `tiny@1`, for a module's tests. The worker's heartbeat
    is slow (10 s, so it counts as live for 20 s), so that a test may pause the worker and still submit."""
    from model_store import Store
    from model_store.weights import save_model
    from stack import RedisServer, running_stack

    root = tmp_path_factory.mktemp("client-stack")
    store = Store(root / "models")
    save_model(store, "tiny", make_tiny_net(), "offset_cosine", [0.5, 0.45, 0.4], [0.25, 0.2, 0.3], {"steps": 0})
    server = RedisServer().start()
    try:
        with running_stack(server, store.root, root, DIFFUSETV_HEARTBEAT_S="10") as stack:
            yield stack
    finally:
        server.cleanup()
