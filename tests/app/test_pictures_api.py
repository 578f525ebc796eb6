"""Pictures in, at the API: bad inputs are a clear 4xx naming the field and write nothing; good ones are stored once per
pixel digest, with the job, counted in the client's bytes. In process against a real Redis (no worker needed)."""

from __future__ import annotations

import base64
import hashlib
import io
import resource
import struct
import time
import zlib

import numpy as np
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app.core import keys, objects, pictures
from app.core.jobs import JobStatus
from app.core.settings import Settings
from app.main import create_app
from helpers import claim_as_worker, expiry, registered, store_result, stored_bytes

BODY_LIMIT = 256 * 1024  # the image routes' body limit in these tests (DIFFUSETV_IMAGE_BODY_BYTES)


@pytest.fixture
def setup(tiny_store, redis_server):
    settings = Settings(
        redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", image_body_bytes=BODY_LIMIT
    )
    claim_as_worker(redis_server.url)
    conn = redis_lib.Redis.from_url(redis_server.url)
    with TestClient(create_app(settings)) as c:
        yield c, conn


def png_file(pixels: np.ndarray, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def glyph(seed: int = 0, side: int = 16) -> np.ndarray:
    """A smooth picture with some texture, (side, side, 3) uint8."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, side)
    base = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, -ramp) / 2 + 128, np.full((side, side), 90.0)], -1
    )
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def bomb_png(side: int = 20000) -> bytes:
    """A 1-bit greyscale PNG of side × side zeros: a few KB of file, 400 MP once decoded."""
    raw = zlib.compress(b"\0" * (1 + side // 8) * side, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def field_of(response) -> list:
    return [tuple(err["loc"]) for err in response.json()["detail"]]


GONE = b"an object that the sweep removed"


def succeeded_job(
    conn, owner: str = "", kind: str = "generate", png: bytes | None = None, latent: bytes | None = None
) -> str:
    """A finished job written straight into Redis, as a worker leaves it: its PNG (and an inversion's latent) stored
    and live; without `png` (or `latent`), a job whose object has expired: its record names a digest that is stored
    no more."""
    job_id = f"{np.random.default_rng().integers(2**62):032x}"
    record = {"id": job_id, "kind": kind, "status": JobStatus.SUCCEEDED.value, "owner": owner, "params": "{}"}
    gone = hashlib.sha256(GONE).hexdigest()
    record["sha256"] = store_result(conn, objects.PNG, png) if png is not None else gone
    if kind == "invert":
        record["latent_sha256"] = store_result(conn, objects.LATENT, latent) if latent is not None else gone
    conn.hset(keys.job(job_id), mapping=record)
    return job_id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"seed": 1, "image": b64(b"not an image at all")}, "image"),
        ({"seed": 1, "image": "data:image/png;base64,@@@"}, "image"),
        ({"seed": 1, "image": b64(png_file(glyph())[:-40])}, "image"),  # truncated
        ({"seed": 1, "mask": b64(png_file(glyph()))}, "mask"),  # a mask without image
        ({"seed": 1, "strength": 0.5}, "strength"),  # strength without image
        ({"seed": 1, "strength": 1.5, "image": b64(png_file(glyph()))}, "strength"),
        ({"seed": 1, "harmonize": 2, "image": b64(png_file(glyph()))}, "harmonize"),  # without a mask
        ({"seed": 1, "harmonize": 11}, "harmonize"),
        ({"latent": {"job": "0" * 32}, "image": b64(png_file(glyph()))}, "latent"),  # latent excludes image
        ({"latent": {"job": "0" * 32}, "strength": 0.3}, "latent"),
        ({"latent": {"job": "0" * 32}, "eta": 0.5}, "seed"),  # eta > 0 draws from the seed
        ({"seed": 1, "image": {"job": "0" * 32, "extra": 1}}, "image"),
    ],
)
def test_bad_picture_inputs_are_422_naming_the_field(setup, body, field):
    c, conn = setup
    r = c.post("/generate", json=body)
    assert r.status_code == 422, r.text
    assert any(field in loc for loc in field_of(r)), r.json()
    assert not registered(conn, objects.INPUT) and not conn.keys(keys.blob("*"))  # nothing half-made


def test_each_end_of_an_interpolation_is_one_of_seed_picture_latent(setup):
    c, _ = setup
    picture = b64(png_file(glyph()))
    r = c.post("/interpolate", json={"seed_a": 1, "seed_b": 2, "latent_b": {"job": "0" * 32}})
    assert r.status_code == 422 and ("body", "latent_b") in field_of(r)
    r = c.post("/interpolate", json={"seed_a": 1, "image_a": picture, "seed_b": 2})
    assert r.status_code == 422 and ("body", "image_a") in field_of(r)


def test_a_decompression_bomb_is_refused_fast_without_growing_memory(setup):
    c, conn = setup
    bomb = bomb_png()
    assert len(bomb) < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    r = c.post("/generate", json={"seed": 1, "image": b64(bomb)})
    elapsed = time.monotonic() - started
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.status_code == 422 and ("body", "image") in field_of(r), r.text
    assert "pixels" in r.json()["detail"][0]["msg"]
    assert elapsed < 1.0, elapsed
    assert grown_mb < 50, grown_mb  # decoded in full it would be 50 MB at 1 bit, 400 MB as 8-bit grey
    assert not registered(conn, objects.INPUT) and not conn.keys(keys.blob("*"))


def test_a_body_over_the_image_limit_is_413_and_other_routes_keep_64_kib(setup):
    c, _ = setup
    big = b64(b"\0" * BODY_LIMIT)
    r = c.post("/generate", json={"seed": 1, "image": big})
    assert r.status_code == 413 and "256 KiB" in r.json()["detail"]
    under = png_file(glyph(side=160))  # about 80 KB of noise: over 64 KiB as base64 JSON, under the image limit
    assert 64 * 1024 < len(b64(under)) < BODY_LIMIT
    assert c.post("/generate", json={"seed": 1, "image": b64(under)}).status_code == 202
    r = c.post("/jobs/" + "0" * 32, content=b"x" * 70_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_a_job_input_must_be_the_owners_finished_single_image(setup):
    c, conn = setup
    unknown = c.post("/generate", json={"seed": 1, "image": {"job": "f" * 32}})
    assert unknown.status_code == 404 and "image" in unknown.json()["detail"]
    other = succeeded_job(conn, owner="someone-else", png=png_file(glyph()))
    assert c.post("/generate", json={"seed": 1, "image": {"job": other}}).status_code == 404
    strip = succeeded_job(conn, kind="interpolate", png=png_file(glyph()))
    r = c.post("/generate", json={"seed": 1, "image": {"job": strip}})
    assert r.status_code == 422 and ("body", "image") in field_of(r)
    expired = succeeded_job(conn, png=png_file(glyph()))
    conn.delete(keys.job(expired))  # RESULT_TTL passed: the record went (its object no sooner)
    assert c.post("/generate", json={"seed": 1, "image": {"job": expired}}).status_code == 404
    missing = succeeded_job(conn)  # a live record whose object is gone (deleted by hand): 410, never a 500
    r = c.post("/generate", json={"seed": 1, "image": {"job": missing}})
    assert r.status_code == 410 and r.json()["detail"].startswith("image:"), r.text
    assert "missing from the result store" in r.json()["detail"]
    running = c.post("/generate", json={"seed": 5}).json()["id"]  # queued: no worker here
    r = c.post("/generate", json={"seed": 1, "image": {"job": running}})
    assert r.status_code == 409 and "queued" in r.json()["detail"]
    mine = succeeded_job(conn, png=png_file(glyph()))
    assert c.post("/generate", json={"seed": 1, "image": {"job": mine}}).status_code == 202


def test_a_latent_must_be_a_succeeded_inversion_of_this_model_steps_and_size(setup):
    c, conn = setup
    from safetensors.numpy import save

    generation = succeeded_job(conn, png=png_file(glyph()))
    r = c.post("/generate", json={"latent": {"job": generation}})
    assert r.status_code == 422 and ("body", "latent") in field_of(r)
    manifest = c.app.state.store.resolve("tiny")
    latent = np.zeros((3, 16, 16), np.float32)
    meta = {"identity": manifest.identity, "model": manifest.ref, "steps": "20"}
    blob = save({"latent": latent}, metadata=meta)
    inversion = succeeded_job(conn, kind="invert", png=png_file(glyph()), latent=blob)
    r = c.post("/generate", json={"latent": {"job": inversion}, "steps": 10})
    assert r.status_code == 422 and "steps" in r.json()["detail"][0]["msg"]
    other_latent = save({"latent": latent}, metadata={**meta, "identity": "0" * 64})
    other = succeeded_job(conn, kind="invert", png=png_file(glyph()), latent=other_latent)
    assert c.post("/generate", json={"latent": {"job": other}, "steps": 20}).status_code == 422
    ok = c.post("/generate", json={"latent": {"job": inversion}, "steps": 20})
    assert ok.status_code == 202, ok.text
    assert ok.json()["params"]["seed"] is None and len(ok.json()["params"]["latent"]) == 64
    expired = succeeded_job(conn, kind="invert", png=png_file(glyph()), latent=blob)
    conn.delete(keys.job(expired))  # RESULT_TTL passed: the record went
    assert c.post("/generate", json={"latent": {"job": expired}, "steps": 20}).status_code == 404
    missing = succeeded_job(conn, kind="invert", png=png_file(glyph()))  # its latent gone behind a live record
    r = c.post("/generate", json={"latent": {"job": missing}, "steps": 20})
    assert r.status_code == 410 and r.json()["detail"].startswith("latent:"), r.text
    assert "missing from the result store" in r.json()["detail"]


def test_a_latent_is_refused_by_a_sampler_other_than_the_one_it_was_inverted_with(setup):
    c, conn = setup
    from safetensors.numpy import save

    manifest = c.app.state.store.resolve("tiny")
    meta = {"identity": manifest.identity, "model": manifest.ref, "steps": "20"}
    latent = np.zeros((3, 16, 16), np.float32)
    by = {}
    for sampler in ("ddim", "dpmpp_2m"):
        named = {} if sampler == "ddim" else {"sampler": sampler}  # a DDIM inversion's file names no sampler
        blob = save({"latent": latent}, metadata={**meta, **named})
        by[sampler] = succeeded_job(conn, kind="invert", png=png_file(glyph()), latent=blob)
    for inverted, asked, status in [("ddim", "ddim", 202), ("ddim", "dpmpp_2m", 422), ("dpmpp_2m", "ddim", 422),
                                    ("dpmpp_2m", "dpmpp_2m", 202), ("dpmpp_2m", "unipc", 422)]:  # fmt: skip
        r = c.post("/generate", json={"latent": {"job": by[inverted]}, "steps": 20, "sampler": asked})
        assert r.status_code == status, (inverted, asked, r.text)
        if status == 422:
            assert ("body", "latent") in field_of(r) and "sampler" in r.json()["detail"][0]["msg"]


def test_the_same_picture_in_other_files_is_one_digest_stored_once_and_counted(setup):
    c, conn = setup
    pixels = glyph(3)
    first = c.post("/generate", json={"seed": 1, "image": b64(png_file(pixels, compress_level=0)), "strength": 0.5})
    again = c.post("/generate", json={"seed": 2, "image": b64(png_file(pixels, compress_level=9)), "strength": 0.5})
    uri = "data:image/png;base64," + b64(png_file(pixels, optimize=True))
    third = c.post("/generate", json={"seed": 3, "image": uri, "strength": 0.5})
    digests = {r.json()["params"]["image"] for r in (first, again, third)}
    assert len(digests) == 1 and digests == {pictures.digest(pixels)}
    stored = registered(conn, objects.INPUT)
    assert stored == [objects.name(objects.INPUT, pictures.digest(pixels))]
    assert np.array_equal(pictures.from_blob(stored_bytes(conn, stored[0])), pixels)
    assert objects.state(conn, stored[0]) == "live"  # published with the jobs, kept as long as the last of them
    assert expiry(conn, stored[0]) > time.time() + c.app.state.settings.result_ttl


def test_an_input_counts_towards_the_clients_bytes(setup):
    c, conn = setup

    def used() -> int:
        quota = conn.keys("diffusetv:quota:*")
        return int(conn.hget(quota[0], "bytes")) if quota else 0

    start = used()
    assert c.post("/generate", json={"seed": 1, "steps": 10}).status_code == 202
    plain = used() - start
    body = {"seed": 2, "steps": 10, "image": b64(png_file(glyph(4))), "strength": 1.0}  # all 10 steps run
    assert c.post("/generate", json=body).status_code == 202
    (stored,) = registered(conn, objects.INPUT)
    assert used() - start - plain == plain + len(stored_bytes(conn, stored)) == plain + objects.size(conn, stored)


def test_strength_defaults_and_the_picture_is_in_the_params(setup):
    c, _ = setup
    r = c.post("/generate", json={"seed": 1, "image": b64(png_file(glyph()))})
    assert r.status_code == 202
    params = r.json()["params"]
    assert params["strength"] == 0.8 and params["image"] == pictures.digest(glyph())


def test_invert_takes_a_picture_and_refuses_a_bad_one(setup):
    c, _ = setup
    r = c.post("/invert", json={"image": b64(png_file(glyph())), "steps": 20})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "invert" and r.json()["params"]["steps"] == 20
    bad = c.post("/invert", json={"image": b64(b"GIF89a....")})
    assert bad.status_code == 422 and ("body", "image") in field_of(bad)
    assert c.post("/invert", json={"steps": 20}).status_code == 422
    none = c.post("/invert", json={"image": None, "steps": 20})
    assert none.status_code == 422 and ("body", "image") in [tuple(e["loc"][:2]) for e in none.json()["detail"]]
    latent = c.get(f"/jobs/{r.json()['id']}/latent")
    assert latent.status_code == 409
