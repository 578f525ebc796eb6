"""Several models in one stack, of two kinds, as real processes: redis-server, `diffusetv worker` (no --model:
it serves DIFFUSETV_MODELS) and `diffusetv api`. The second kind, `toy-linear`, lives only in the tests and is
plugged in by DIFFUSETV_KIND_MODULES, as a user's own kind would be."""

import time

import numpy as np
import pytest
import redis as redis_lib

from app.core import keys
from app.core.png import decode_png, read_parameters
from helpers import several_models
from stack import Stack, free_port, running_stack, stack_env

pytestmark = pytest.mark.slow


@pytest.fixture
def stack2(tiny_store, redis_server, tmp_path):
    with running_stack(redis_server, tiny_store.root, tmp_path, **several_models(tiny_store)) as s:
        yield s


def generated(c, **body) -> tuple[dict, bytes]:
    r = c.post("/generate", json=body)
    assert r.status_code == 202, r.text
    job = c.get(f"/jobs/{r.json()['id']}", params={"wait": 30}).json()
    assert job["status"] == "succeeded", job
    return job, c.get(job["image_url"]).content


def test_two_kinds_in_one_stack(stack2, tiny_store):
    with stack2.client() as c:
        ready = c.get("/readyz").json()
        assert ready["detail"]["models"] == {"tiny@1": True, "toy@1": True}
        job, png = generated(c, seed=5, steps=6, eta=0.3, model="toy")
        toy = tiny_store.resolve("toy")
        assert job["model"] == {"name": "toy", "version": 1, "digest": toy.digest, "identity": toy.identity}
        assert png[25] == 0 and decode_png(png).shape == (6, 10, 3)  # a grey PNG, 10 wide and 6 high
        assert read_parameters(png)["identity"] == toy.identity
        assert len(np.unique(decode_png(png))) > 1
        _, again = generated(c, seed=5, steps=6, eta=0.3, model="toy@1")
        assert again == png
        _, unet = generated(c, seed=5, steps=6, eta=0.3)
        assert decode_png(unet).shape == (16, 16, 3) and read_parameters(unet)["model"] == "tiny"
        r = c.post("/generate", json={"seed": 1, "steps": 60, "model": "toy"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "steps"]
        assert "at most 50 steps" in r.json()["detail"][0]["msg"]


def test_models_lists_kinds_shapes_and_who_serves_them(stack2):
    with stack2.client() as c:
        models = {m["ref"]: m for m in c.get("/models").json()["models"]}
    assert sorted(models) == ["lonely@1", "tiny@1", "toy@1"]  # not odd@1 (unknown kind)
    assert {ref: m["served"] for ref, m in models.items()} == {"lonely@1": False, "tiny@1": True, "toy@1": True}
    assert models["toy@1"]["kind"] == "toy-linear" and models["tiny@1"]["kind"] == "ddim-unet"
    assert models["toy@1"]["shape"] == {"height": 6, "width": 10, "channels": 1}
    assert models["toy@1"]["image_size"] is None and models["tiny@1"]["image_size"] == 16
    assert {m["conditioning"] for m in models.values()} == {"none"}
    assert models["tiny@1"]["default"] and not models["toy@1"]["default"]


def test_a_model_without_a_worker_is_503_at_once_and_not_queued(stack2):
    conn = redis_lib.Redis.from_url(stack2.env["DIFFUSETV_REDIS_URL"])
    with stack2.client() as c:
        started = time.monotonic()
        r = c.post("/generate", json={"seed": 1, "model": "lonely"})
        took = time.monotonic() - started
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert "lonely@1" in r.json()["detail"] and "worker" in r.json()["detail"]
        assert took < 2.0
        r = c.post("/interpolate", json={"seed_a": 1, "seed_b": 2, "model": "lonely@1"})
        assert r.status_code == 503 and "lonely@1" in r.json()["detail"]
    assert conn.llen("rq:queue:" + keys.queue_name("lonely@1")) == 0
    assert not list(conn.scan_iter(match=keys.job("*")))


def test_an_unknown_kind_is_refused_in_the_api_with_one_line_naming_it(stack2):
    with stack2.client() as c:
        r = c.post("/generate", json={"seed": 1, "model": "odd"})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "model"] and "unknown model kind 'mystery-net'" in error["msg"]
    assert "\n" not in error["msg"] and error["msg"].startswith("'odd' is of unknown model kind")
    assert "model.json" not in error["msg"]  # the API names no server path (the worker's message does)


def test_a_worker_refuses_an_unknown_kind_with_one_line(tiny_store, redis_server, tmp_path):
    several_models(tiny_store)
    s = Stack(stack_env(redis_server.url, tiny_store.root), free_port(), tmp_path)
    proc = s.start("worker", ["diffusetv", "worker", "--model", "odd"])
    assert proc.wait(120) == 2
    lines = [line for line in s.log("worker").splitlines() if line.strip()]
    assert lines[-1].startswith("diffusetv worker: error: ") and "unknown model kind 'mystery-net'" in lines[-1]
    assert "odd/1/model.json" in lines[-1]
