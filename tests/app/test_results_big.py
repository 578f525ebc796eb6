"""A 256x256 model end to end with its results in S3, as real processes: redis-server, `diffusetv worker` (serving an
imported diffusers UNet2DModel at 256x256 and the same architecture at 32x32) and `diffusetv api`, the bucket on a moto
server (signatures checked).

The 256x256 PNG comes through the API with the CLI's bytes, the object in the bucket holds them, and what a job keeps
in Redis (its record, event stream, RQ's job and result, the registry entries of its objects; no bytes of any object)
is within 10% of the 32x32 job's at equal steps, with and without previews: with S3, a job's Redis memory does not grow
with its image."""

from __future__ import annotations

import json
import time

import pytest
import redis as redis_lib

pytest.importorskip("diffusers")

from diffusers_models import save_pipeline

from app.core import keys, objects
from app.core.png import decode_png
from helpers import final_job, run_cli
from model_store.importers.diffusers import import_diffusers
from stack import running_stack

pytestmark = pytest.mark.slow
pytest_plugins = ["s3_server"]  # own_moto_s3
STEPS = 3
SEED = 7
SIZES = {"big": 256, "small": 32}
TOLERANCE = 0.10


def quick_unet(seed: int, sample_size: int):
    """A random UNet2DModel of four levels, self-attention at the lowest only (32x32 tokens at 256x256).

    tests/diffusers_models.tiny_unet(sample_size=256) attends at 128x128 (16,384 tokens): about 18 s a step on one CPU
    thread. This one takes about 0.07 s a step at 256x256, so the whole stack runs a few steps at once."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16, 16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    ).eval()


@pytest.fixture
def big_stack(tiny_store, redis_server, tmp_path, own_moto_s3):
    s3 = own_moto_s3
    from diffusers import DDPMScheduler

    for name, size in SIZES.items():
        folder = save_pipeline(tmp_path / f"pipe-{name}", quick_unet(4, size), DDPMScheduler())
        import_diffusers(folder, name, store=tiny_store)
    env = {**s3.env(), "DIFFUSETV_MODELS": ",".join(SIZES)}
    with running_stack(redis_server, tiny_store.root, tmp_path, timeout=120, model="big", **env) as s:
        yield s


def cli_png(store_root, tmp_path, model: str) -> bytes:
    out = tmp_path / f"cli-{model}.png"
    env = {"DIFFUSETV_MODEL_STORE": str(store_root), "DIFFUSETV_TORCH_THREADS": "1"}
    args = ["sample", "--model", model, "--seed", str(SEED), "--steps", str(STEPS), "--eta", "0"]
    run_cli(*args, "--device", "cpu", "--out", str(out), env=env)
    return out.read_bytes()


def redis_bytes(conn, job_id: str) -> dict[str, int]:
    """MEMORY USAGE (exact: SAMPLES 0) of every key of one job: those named by its id (record, event stream, RQ's job
    and result) and the registry entries of its objects (its PNG, its previews). No object's bytes are in Redis."""
    used = {k.decode(): conn.memory_usage(k, samples=0) for k in conn.scan_iter(match=f"*{job_id}*")}
    names = [objects.name(objects.PNG, conn.hget(keys.job(job_id), "sha256").decode())]
    for _, fields in conn.xrange(keys.events(job_id)):
        if fields[b"event"] == b"preview":
            url = json.loads(fields[b"data"])["url"]
            assert url.startswith(f"/jobs/{job_id}/previews/"), url  # an object of the store, not a data URL
            names.append(objects.name(objects.PNG, url.rsplit("/", 1)[1].removesuffix(".png")))
    for name in names:
        assert conn.exists(keys.blob(name)) == 0, f"{name}'s bytes are in Redis"
        used[keys.object_entry(name)] = conn.memory_usage(keys.object_entry(name), samples=0)
    return used


def test_a_256x256_result_through_s3_costs_redis_what_a_32x32_one_does(big_stack, own_moto_s3, tiny_store, tmp_path):
    s3 = own_moto_s3
    conn = redis_lib.Redis.from_url(big_stack.redis.url)
    started = time.monotonic()
    with big_stack.client() as c:
        jobs = {}
        for model in SIZES:
            for previews in (False, True):
                body = {"model": model, "seed": SEED, "steps": STEPS, "eta": 0.0, "previews": previews}
                if previews:
                    body["seed"] = SEED + 1  # a run of its own, not a cache hit of the first
                job = final_job(c, c.post("/generate", json=body).json()["id"], 120)
                assert job["status"] == "succeeded", job
                jobs[model, previews] = job
        png = c.get(jobs["big", False]["image_url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png", png.text[:200]
        small = c.get(jobs["small", False]["image_url"]).content
    ran_s = time.monotonic() - started

    assert decode_png(png.content).shape == (256, 256, 3) and decode_png(small).shape == (32, 32, 3)
    assert png.content == cli_png(tiny_store.root, tmp_path, "big")
    assert small == cli_png(tiny_store.root, tmp_path, "small")
    record = conn.hgetall(keys.job(jobs["big", False]["id"]))
    name = objects.name(objects.PNG, record[b"sha256"].decode())
    stored = s3.client().get_object(Bucket=s3.bucket, Key=f"{s3.prefix}/{name}")["Body"].read()
    assert stored == png.content

    for previews in (False, True):
        big, little = (redis_bytes(conn, jobs[m, previews]["id"]) for m in SIZES)
        ratio = sum(big.values()) / sum(little.values())
        print(f"previews={previews}: 256x256 {sum(big.values())} B, 32x32 {sum(little.values())} B, ratio {ratio:.3f}")
        assert abs(ratio - 1) <= TOLERANCE, (previews, big, little)
        if previews:
            assert min(len(big), len(little)) > 5  # the previews' registry entries are counted too
    assert ran_s < 60, f"the four jobs took {ran_s:.0f} s"
