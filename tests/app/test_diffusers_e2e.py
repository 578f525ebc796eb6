"""An imported diffusers pipeline through the whole stack, as real processes: redis-server, `diffusetv worker`
(serving DIFFUSETV_MODELS) and `diffusetv api`. The bytes are the CLI's, alone and in a batch; the job can be
canceled, shows previews and interpolates."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("diffusers")

from diffusers_models import save_pipeline, tiny_unet
from PIL import Image

from app.core.png import decode_png, read_parameters
from helpers import canceled_when_running, read_events, run_cli
from model_store.importers.diffusers import import_diffusers
from stack import running_stack

pytestmark = pytest.mark.slow
STEPS = 8


@pytest.fixture
def cifar_stack(tiny_store, redis_server, tmp_path):
    from diffusers import DDPMScheduler

    folder = save_pipeline(tmp_path / "pipe", tiny_unet(seed=4), DDPMScheduler())
    import_diffusers(folder, "cifar", store=tiny_store)
    env = {"DIFFUSETV_MODELS": "cifar", "DIFFUSETV_MAX_BATCH_WAIT_MS": "400"}
    with running_stack(redis_server, tiny_store.root, tmp_path, timeout=120, model="cifar", **env) as s:
        yield s


def cli_png(store_root, tmp_path, seed: int, eta: float) -> bytes:
    out = tmp_path / f"cli-{seed}-{eta}.png"
    env = {"DIFFUSETV_MODEL_STORE": str(store_root), "DIFFUSETV_TORCH_THREADS": "1"}
    args = ["sample", "--model", "cifar", "--seed", str(seed), "--steps", str(STEPS), "--eta", str(eta)]
    run_cli(*args, "--device", "cpu", "--out", str(out), env=env)
    return out.read_bytes()


def test_an_imported_pipeline_serves_the_clis_bytes_alone_and_in_a_batch(cifar_stack, tiny_store, tmp_path):
    requests = [(21, 0.0), (22, 1.0), (23, 0.0), (24, 0.5)]
    with cifar_stack.client() as c:
        models = {m["ref"]: m for m in c.get("/models").json()["models"]}
        assert models["cifar@1"]["kind"] == "diffusers-unet2d" and models["cifar@1"]["max_steps"] == 1000
        ids = [
            c.post("/generate", json={"seed": s, "steps": STEPS, "eta": e, "model": "cifar"}).json()["id"]
            for s, e in requests
        ]
        jobs = [c.get(f"/jobs/{i}", params={"wait": 30}).json() for i in ids]
        assert all(j["status"] == "succeeded" for j in jobs), jobs
        assert max(j["batch_size"] for j in jobs) > 1  # they shared a model run
        pngs = [c.get(j["image_url"]).content for j in jobs]
        assert read_parameters(pngs[0])["identity"] == tiny_store.resolve("cifar").identity
        alone = c.post("/generate", json={"seed": 99, "steps": STEPS, "eta": 1.0, "model": "cifar@1"}).json()
        alone = c.get(f"/jobs/{alone['id']}", params={"wait": 30}).json()
        assert alone["batch_size"] == 1
        alone_png = c.get(alone["image_url"]).content
        r = c.post("/generate", json={"seed": 1, "steps": 1001, "model": "cifar"})
        assert r.status_code == 422
    for (seed, eta), png in zip(requests, pngs, strict=True):
        assert png == cli_png(tiny_store.root, tmp_path, seed, eta)
    assert alone_png == cli_png(tiny_store.root, tmp_path, 99, 1.0)
    assert len(np.unique(decode_png(pngs[0]))) > 50


def test_an_imported_pipeline_cancels_previews_and_interpolates(cifar_stack):
    with cifar_stack.client() as c:
        job = c.post("/generate", json={"seed": 7, "steps": 40, "previews": True, "model": "cifar"}).json()
        evs = read_events(c, job["id"])
        previews = [d for _, e, d in evs if e == "preview"]
        assert previews and all(p["url"].startswith("data:image/png;base64,") for p in previews)
        assert evs[-1][1:] == ("status", {"status": "succeeded"})

        long = c.post("/generate", json={"seed": 8, "steps": 1000, "model": "cifar"}).json()
        evs = canceled_when_running(cifar_stack, c, long["id"])
        assert evs[-1][1:] == ("status", {"status": "canceled"})

        r = c.post("/interpolate", json={"seed_a": 11, "seed_b": 12, "frames": 4, "steps": STEPS, "model": "cifar"})
        assert r.status_code == 202
        done = c.get(f"/jobs/{r.json()['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded", done
        strip = decode_png(c.get(done["strip_url"]).content)
        assert strip.shape == (16, 4 * 16, 3)
        with Image.open(io.BytesIO(c.get(done["image_url"]).content)) as im:
            assert getattr(im, "n_frames", 1) == 4
        end = c.post("/generate", json={"seed": 11, "steps": STEPS, "model": "cifar"}).json()
        first = decode_png(c.get(f"/jobs/{end['id']}/image.png", params={"wait": 30}).content)
        assert np.array_equal(strip[:, :16], first)  # the strip starts at seed_a's image
