"""Seeds the server draws: a request without one gets a CSPRNG's, in the seed range, returned in `params`; the draw
never touches a seed that was sent, nor an end or a job that starts from a picture or a latent."""

from __future__ import annotations

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app import schemas
from app.core import keys
from app.core.settings import Settings
from app.main import create_app
from app.seeds import draw_seed, draw_seeds
from helpers import claim_as_worker
from model_store.bounds import MAX_SEED


def test_drawn_seeds_are_in_range_and_differ():
    seeds = [draw_seed() for _ in range(200)]
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert len(set(seeds)) == 200
    assert max(seeds) > 2**50  # the whole range, not a 32-bit one (fails with probability 1/8 per draw, 8^-200 here)


def test_draw_seeds_fills_only_what_is_missing():
    sent = schemas.GenerateRequest(seed=7)
    assert draw_seeds(sent) is sent
    drawn = draw_seeds(schemas.GenerateRequest())
    assert drawn.seed is not None and 0 <= drawn.seed <= MAX_SEED
    latent = schemas.GenerateRequest(latent={"job": "0" * 32})
    assert draw_seeds(latent).seed is None  # a latent is its own noise
    walk = draw_seeds(schemas.InterpolateRequest(seed_a=3, image_b="AAAA"))
    assert (walk.seed_a, walk.seed_b) == (3, None)
    walk = draw_seeds(schemas.InterpolateRequest(latent_a={"job": "0" * 32}))
    assert walk.seed_a is None and walk.seed_b is not None
    both = draw_seeds(schemas.InterpolateRequest())
    assert both.seed_a is not None and both.seed_b is not None and both.seed_a != both.seed_b
    inversion = schemas.InvertRequest(image="AAAA")
    assert draw_seeds(inversion) is inversion


@pytest.fixture
def client(tiny_store, redis_server):
    claim_as_worker(redis_server.url)
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", heartbeat_s=300)
    with TestClient(create_app(settings)) as c:
        yield c


def test_a_request_without_a_seed_gets_one_in_its_params(client, redis_server):
    first = client.post("/generate", json={"steps": 5})
    second = client.post("/generate", json={"steps": 5})
    assert first.status_code == second.status_code == 202
    a, b = first.json()["params"]["seed"], second.json()["params"]["seed"]
    assert isinstance(a, int) and 0 <= a <= MAX_SEED and a != b
    assert client.get(f"/jobs/{first.json()['id']}").json()["params"]["seed"] == a
    walk = client.post("/interpolate", json={"seed_a": 4, "steps": 5, "frames": 3})
    assert walk.status_code == 202
    params = walk.json()["params"]
    assert params["seed_a"] == 4 and isinstance(params["seed_b"], int) and params["seed_b"] != 4
    # a drawn seed is sent back as any other: the same request with it is the same engine key (it joins the run)
    again = client.post("/generate", json={"steps": 5, "seed": a})
    conn = redis_lib.Redis.from_url(redis_server.url)
    assert conn.hget(keys.job(again.json()["id"]), "run").decode() == first.json()["id"]


def test_the_schema_says_the_seed_is_optional(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "seed" not in schema["GenerateRequest"].get("required", [])
    assert "drawn by the server" in schema["GenerateRequest"]["properties"]["seed"]["description"]
    assert not {"seed_a", "seed_b"} & set(schema["InterpolateRequest"].get("required", []))
