"""`sampler` at the API: every bad combination is a 422 naming the field and queues nothing; a good one is named in
the job's params and key, and a `"ddim"` job is the job without the field. In process against a real Redis (no
worker needed)."""

from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app.core import keys, objects
from app.core.settings import Settings
from app.main import create_app
from helpers import claim_as_worker, registered
from model_store import kinds
from model_store.samplers import SAMPLERS


@pytest.fixture
def setup(tiny_store, redis_server):
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny")
    claim_as_worker(redis_server.url)
    with TestClient(create_app(settings)) as c:
        yield c, redis_lib.Redis.from_url(redis_server.url)


def picture() -> str:
    """A 16x16 PNG (the tiny model's size) in base64."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PICTURE = picture()


@pytest.mark.parametrize(
    ("route", "body", "field", "message"),
    [
        ("/generate", {"seed": 1, "sampler": "euler"}, "sampler", "'ddim', 'dpmpp_2m' or 'unipc'"),
        ("/generate", {"seed": 1, "sampler": "DDIM"}, "sampler", "'ddim', 'dpmpp_2m' or 'unipc'"),
        ("/generate", {"seed": 1, "sampler": None}, "sampler", "'ddim', 'dpmpp_2m' or 'unipc'"),
        ("/interpolate", {"seed_a": 1, "seed_b": 2, "sampler": "euler"}, "sampler", "'ddim', 'dpmpp_2m' or"),
        ("/invert", {"image": PICTURE, "sampler": 3}, "sampler", "'ddim', 'dpmpp_2m' or 'unipc'"),
        ("/generate", {"seed": 1, "sampler": "dpmpp_2m", "eta": 0.5}, "eta", "sampler 'dpmpp_2m' takes eta 0"),
        ("/generate", {"seed": 1, "sampler": "unipc", "eta": 1}, "eta", "sampler 'unipc' takes eta 0"),
        ("/generate", {"latent": {"job": "0" * 32}, "sampler": "unipc", "eta": 0.1}, "eta", "eta is DDIM's alone"),
        (
            "/generate",
            {"seed": 1, "sampler": "unipc", "image": PICTURE, "mask": PICTURE, "harmonize": 2},
            "harmonize",
            "sampler 'unipc' keeps a history per row and takes harmonize 0",
        ),
        (
            "/generate",
            {"seed": 1, "sampler": "dpmpp_2m", "image": PICTURE, "mask": PICTURE, "harmonize": 1},
            "harmonize",
            "harmonize is DDIM's alone",
        ),
        ("/invert", {"image": PICTURE, "sampler": "unipc"}, "sampler", "'unipc' does not invert: use one of ddim, dpm"),
        (
            "/interpolate",
            {"image_a": PICTURE, "seed_b": 2, "sampler": "unipc"},
            "sampler",
            "image_a is inverted with the job's sampler: 'unipc' does not invert",
        ),
        (
            "/interpolate",
            {"seed_a": 1, "image_b": PICTURE, "sampler": "unipc"},
            "sampler",
            "image_b is inverted with the job's sampler",
        ),
    ],
)
def test_a_bad_sampler_or_combination_is_422_naming_the_field_and_queues_nothing(setup, route, body, field, message):
    c, conn = setup
    r = c.post(route, json=body)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", field] and message in error["msg"], error
    assert not conn.keys(keys.job("*")) and not registered(conn, objects.INPUT) and not conn.keys(keys.blob("*"))


def test_a_multistep_sampler_at_eta_0_is_queued_and_named_in_the_params(setup):
    c, _ = setup
    for body in ({"seed": 1, "sampler": "dpmpp_2m"}, {"seed": 1, "sampler": "unipc", "eta": 0}):
        r = c.post("/generate", json=body)
        assert r.status_code == 202, r.text
        params = {"seed": 1, "steps": 50, "eta": 0.0, "previews": False, "sampler": body["sampler"]}
        assert r.json()["params"] == params
        assert c.get(f"/jobs/{r.json()['id']}").json()["params"]["sampler"] == body["sampler"]
    inpainting = {"seed": 2, "sampler": "unipc", "image": PICTURE, "mask": PICTURE, "harmonize": 0, "strength": 1.0}
    r = c.post("/generate", json=inpainting)
    assert r.status_code == 202 and r.json()["params"]["sampler"] == "unipc", r.text
    eta = c.post("/generate", json={"seed": 3, "sampler": "ddim", "eta": 0.5})
    assert eta.status_code == 202 and eta.json()["params"]["eta"] == 0.5


def test_ddim_sent_is_ddim_absent_one_run_and_another_sampler_is_another_run(setup):
    c, conn = setup

    def run_of(body: dict) -> tuple[str, dict]:
        r = c.post("/generate", json=body)
        assert r.status_code == 202, r.text
        return conn.hget(keys.job(r.json()["id"]), "run").decode(), r.json()["params"]

    absent, absent_params = run_of({"seed": 7, "steps": 10})
    sent, sent_params = run_of({"seed": 7, "steps": 10, "sampler": "ddim"})
    assert sent == absent and sent_params == absent_params and "sampler" not in sent_params
    multistep, _ = run_of({"seed": 7, "steps": 10, "sampler": "dpmpp_2m"})
    other, _ = run_of({"seed": 7, "steps": 10, "sampler": "unipc"})
    assert len({absent, multistep, other}) == 3


def test_interpolations_and_inversions_take_the_samplers_that_invert(setup):
    c, _ = setup
    walk = c.post("/interpolate", json={"image_a": PICTURE, "seed_b": 2, "frames": 2, "sampler": "dpmpp_2m"})
    assert walk.status_code == 202, walk.text
    assert walk.json()["params"]["sampler"] == "dpmpp_2m" and len(walk.json()["params"]["image_a"]) == 64
    seeds = c.post("/interpolate", json={"seed_a": 1, "seed_b": 2, "frames": 2, "sampler": "unipc"})
    assert seeds.status_code == 202 and seeds.json()["params"]["sampler"] == "unipc", seeds.text
    inversion = c.post("/invert", json={"image": PICTURE, "steps": 20, "sampler": "dpmpp_2m"})
    assert inversion.status_code == 202, inversion.text
    assert inversion.json()["params"] == {"image": walk.json()["params"]["image_a"], "steps": 20,
                                          "previews": False, "sampler": "dpmpp_2m"}  # fmt: skip
    plain = c.post("/invert", json={"image": PICTURE, "steps": 20, "sampler": "ddim"})
    assert plain.status_code == 202 and "sampler" not in plain.json()["params"]


def refusing(monkeypatch, runs: tuple[str, ...]) -> None:
    """The tiny model's kind runs only `runs`, as a diffusers model imported without its scheduler config does."""
    kind = kinds.KINDS["ddim-unet"]
    refusal = lambda manifest, sampler: None if sampler in runs else f"{manifest.ref} keeps no scheduler config"  # noqa: E731
    monkeypatch.setitem(kinds.KINDS, "ddim-unet", dataclasses.replace(kind, sampler_refusal=refusal))


def test_a_model_that_cannot_run_the_sampler_is_422_on_sampler_and_lists_what_it_runs(setup, monkeypatch):
    c, conn = setup
    (entry,) = c.get("/models").json()["models"]
    assert entry["samplers"] == list(SAMPLERS) == ["ddim", "dpmpp_2m", "unipc"]
    refusing(monkeypatch, ("ddim",))
    assert c.get("/models").json()["models"][0]["samplers"] == ["ddim"]
    for route, body in [
        ("/generate", {"seed": 1, "sampler": "unipc"}),
        ("/interpolate", {"seed_a": 1, "seed_b": 2, "sampler": "dpmpp_2m"}),
        ("/invert", {"image": PICTURE, "sampler": "dpmpp_2m"}),
    ]:
        r = c.post(route, json=body)
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert error["loc"] == ["body", "sampler"], error
        assert error["msg"] == f"sampler {body['sampler']!r}: tiny@1 keeps no scheduler config"
    assert not conn.keys(keys.job("*"))
    assert c.post("/generate", json={"seed": 1}).status_code == 202


def test_the_openapi_schema_offers_the_samplers_with_ddim_the_default(setup):
    c, _ = setup
    schemas = c.get("/openapi.json").json()["components"]["schemas"]
    for request in ("GenerateRequest", "InterpolateRequest", "InvertRequest"):
        sampler = schemas[request]["properties"]["sampler"]
        assert sampler["enum"] == ["ddim", "dpmpp_2m", "unipc"] and sampler["default"] == "ddim", sampler
        assert sampler["description"] and "sampler" not in schemas[request].get("required", [])
    entry = schemas["ModelEntry"]
    assert "samplers" in entry["required"]
    assert entry["properties"]["samplers"]["items"]["enum"] == ["ddim", "dpmpp_2m", "unipc"]
