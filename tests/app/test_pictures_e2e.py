"""Pictures in, end to end, as real processes (redis-server, `diffusetv worker`, `diffusetv api` serving the tiny 16×16
model): image-to-image, inpainting, inversion and picture interpolation keep the determinism contract, and the CLI gives
the API's bytes."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
import redis as redis_lib
from safetensors.numpy import load as load_safetensors

from app.core import keys
from app.core.png import decode_png, read_parameters

pytestmark = pytest.mark.slow
FINAL = ("succeeded", "failed", "canceled")
DEADLINE_S = 180  # for one job to end, however busy the machine


def finished(c, job: dict) -> tuple[dict, bytes]:
    """The job once final (repeating the long poll until DEADLINE_S), and its PNG; it must have succeeded."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        job = c.get(f"/jobs/{job['id']}", params={"wait": 30}).json()
        if job["status"] in FINAL or time.monotonic() > deadline:
            break
    assert job["status"] == "succeeded", job
    return job, c.get(job["image_url"]).content


def png_b64(pixels: np.ndarray, **options) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **options)
    return base64.b64encode(buffer.getvalue()).decode()


def half_mask(side: int = 16) -> np.ndarray:
    """White (repaint) on the left half, black (keep) on the right."""
    mask = np.zeros((side, side), np.uint8)
    mask[:, : side // 2] = 255
    return mask


def drop_cache(conn) -> None:
    conn.delete(*conn.keys("diffusetv:cache:*") or ["-"])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_image_to_image_and_inpainting_through_the_stack(stack):
    with stack.client() as c:
        _, source = finished(c, c.post("/generate", json={"seed": 7, "steps": 10}).json())
        picture = decode_png(source)
        zero, png = finished(
            c, c.post("/generate", json={"seed": 1, "steps": 10, "image": png_b64(picture), "strength": 0}).json()
        )
        assert np.array_equal(decode_png(png), picture)  # no step runs: the input's pixels
        assert zero["progress"] == {"step": 0, "steps": 0}
        half, png = finished(
            c, c.post("/generate", json={"seed": 1, "steps": 10, "image": {"job": _["id"]}, "strength": 0.5}).json()
        )
        assert half["progress"] == {"step": 5, "steps": 5} and half["params"]["strength"] == 0.5
        assert not np.array_equal(decode_png(png), picture)
        assert read_parameters(png)["image"] == half["params"]["image"]
        body = {"seed": 2, "steps": 10, "image": png_b64(picture), "mask": png_b64(half_mask()), "strength": 1.0}
        _, inpainted = finished(c, c.post("/generate", json=body).json())
        out = decode_png(inpainted)
        assert np.array_equal(out[:, 8:], picture[:, 8:])  # every kept pixel is the input's
        assert not np.array_equal(out[:, :8], picture[:, :8])
        _, harmonized = finished(c, c.post("/generate", json={**body, "harmonize": 2}).json())
        again = decode_png(harmonized)
        assert np.array_equal(again[:, 8:], picture[:, 8:]) and not np.array_equal(again, out)


def test_pictures_keep_their_bytes_alone_batched_with_seed_jobs_and_on_a_second_worker(stack):
    conn = redis_lib.Redis.from_url(stack.redis.url)
    with stack.client() as c:
        _, source = finished(c, c.post("/generate", json={"seed": 8, "steps": 12}).json())
        picture = png_b64(decode_png(source))
        mask = png_b64(half_mask())
        mine = [
            {"seed": 3, "steps": 12, "image": picture, "strength": 0.6},
            {"seed": 4, "steps": 12, "eta": 1.0, "image": picture, "mask": mask, "strength": 0.9},
        ]
        seeds = [{"seed": 30 + i, "steps": 12, "eta": 0.5 * (i % 2)} for i in range(2)]
        alone = [finished(c, c.post("/generate", json=b).json()) for b in mine]
        assert all(job["batch_size"] == 1 for job, _ in alone)
        inversion = {"image": picture, "steps": 12}
        inv_alone = finished(c, c.post("/invert", json=inversion).json())
        latent_alone = c.get(inv_alone[0]["latent_url"]).content
        for _attempt in range(3):  # a slow machine may still split the batch: retry the arrangement
            drop_cache(conn)
            stack.procs["worker"].send_signal(19)  # SIGSTOP: let the jobs queue up, to be batched together
            posted = [c.post("/generate", json=b).json() for b in [seeds[0], mine[0], seeds[1], mine[1]]]
            stack.procs["worker"].send_signal(18)  # SIGCONT
            results = [finished(c, j) for j in posted]
            if results[1][0]["batch_size"] == 4:
                break
        assert results[1][0]["batch_size"] == 4, [j["batch_size"] for j, _ in results]
        assert results[1][1] == alone[0][1] and results[3][1] == alone[1][1]
        for _attempt in range(3):  # inversions batch with inversions
            drop_cache(conn)
            stack.procs["worker"].send_signal(19)
            other = {"image": png_b64(np.flipud(decode_png(source)).copy()), "steps": 12}
            posted = [c.post("/invert", json=b).json() for b in (other, inversion)]
            stack.procs["worker"].send_signal(18)
            inverted = [finished(c, j) for j in posted]
            if inverted[1][0]["batch_size"] == 2:
                break
        assert inverted[1][0]["batch_size"] == 2
        assert inverted[1][1] == inv_alone[1] and c.get(inverted[1][0]["latent_url"]).content == latent_alone
        stack.procs["worker"].terminate()
        stack.procs["worker"].wait(60)
        stack.start_worker("worker2")
        stack.wait_serving("tiny@1")
        drop_cache(conn)
        assert finished(c, c.post("/generate", json=mine[1]).json())[1] == alone[1][1]
        assert finished(c, c.post("/invert", json=inversion).json())[1] == inv_alone[1]


def test_the_same_picture_re_encoded_hits_the_cache(stack):
    conn = redis_lib.Redis.from_url(stack.redis.url)
    with stack.client() as c:
        _, source = finished(c, c.post("/generate", json={"seed": 9, "steps": 8}).json())
        pixels = decode_png(source)
        first, png = finished(
            c, c.post("/generate", json={"seed": 5, "steps": 8, "image": png_b64(pixels, compress_level=0)}).json()
        )
        hits = int(conn.hget(keys.METRICS, "cache_hits") or 0)
        second = c.post("/generate", json={"seed": 5, "steps": 8, "image": png_b64(pixels, compress_level=9)}).json()
        assert second["status"] == "succeeded"  # answered at once, from the cache
        assert int(conn.hget(keys.METRICS, "cache_hits")) == hits + 1
        assert c.get(second["image_url"]).content == png and second["params"]["image"] == first["params"]["image"]


def test_inversion_reconstructs_and_its_latent_regenerates_and_interpolates(stack):
    with stack.client() as c:
        ends = [finished(c, c.post("/generate", json={"seed": s, "steps": 20}).json()) for s in (11, 12)]
        pictures = [decode_png(png) for _, png in ends]
        job, reconstruction = finished(
            c, c.post("/invert", json={"image": {"job": ends[0][0]["id"]}, "steps": 20}).json()
        )
        assert job["kind"] == "invert" and job["progress"] == {"step": 40, "steps": 40}
        assert psnr(decode_png(reconstruction), pictures[0]) > 25
        blob = c.get(job["latent_url"])
        assert blob.status_code == 200 and blob.headers["content-type"] == "application/octet-stream"
        latent = load_safetensors(blob.content)["latent"]
        assert latent.shape == (3, 16, 16) and latent.dtype == np.float32
        header_len = int.from_bytes(blob.content[:8], "little")  # the metadata, read as any client would
        meta = json.loads(blob.content[8 : 8 + header_len])["__metadata__"]
        assert meta["steps"] == "20" and meta["model"] == "tiny@1" and len(meta["identity"]) == 64
        _, regenerated = finished(c, c.post("/generate", json={"latent": {"job": job["id"]}, "steps": 20}).json())
        assert np.array_equal(decode_png(regenerated), decode_png(reconstruction))
        other, _ = finished(c, c.post("/invert", json={"image": {"job": ends[1][0]["id"]}, "steps": 20}).json())
        walk = {"image_a": {"job": ends[0][0]["id"]}, "latent_b": {"job": other["id"]}, "frames": 3, "steps": 20}
        strip_job, _ = finished(c, c.post("/interpolate", json=walk).json())
        strip = decode_png(c.get(strip_job["strip_url"]).content)
        assert np.array_equal(strip[:, :16], decode_png(reconstruction))
        assert np.array_equal(strip[:, 32:], decode_png(c.get(other["image_url"]).content))
