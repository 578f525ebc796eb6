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
from helpers import final_job as final
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


def test_an_imported_pipeline_takes_pictures_with_the_clis_bytes(cifar_stack, tiny_store, tmp_path):
    """Image-to-image, inpainting and inversion of a pixel-space diffusers model through the stack; the CLI's
    `sample --image --mask` and `invert` give the same bytes."""
    import base64

    with cifar_stack.client() as c:
        source = final(c, c.post("/generate", json={"seed": 5, "steps": STEPS, "model": "cifar"}).json()["id"])
        picture = c.get(source["image_url"]).content
        (tmp_path / "in.png").write_bytes(picture)
        side = decode_png(picture).shape[0]
        mask = np.zeros((side, side), np.uint8)
        mask[: side // 2] = 255  # repaint the top half
        buffer = io.BytesIO()
        Image.fromarray(mask).save(buffer, format="PNG")
        (tmp_path / "mask.png").write_bytes(buffer.getvalue())
        body = {"seed": 6, "steps": STEPS, "model": "cifar", "image": {"job": source["id"]}, "strength": 0.75}
        img2img = final(c, c.post("/generate", json=body).json()["id"])
        masked = {**body, "strength": 1.0, "mask": base64.b64encode(buffer.getvalue()).decode()}
        inpaint = final(c, c.post("/generate", json=masked).json()["id"])
        inverted = c.post("/invert", json={"image": {"job": source["id"]}, "steps": STEPS, "model": "cifar"}).json()
        inverted = final(c, inverted["id"])
        assert [j["status"] for j in (img2img, inpaint, inverted)] == ["succeeded"] * 3
        assert img2img["progress"] == {"step": 6, "steps": 6}
        pngs = [c.get(j["image_url"]).content for j in (img2img, inpaint, inverted)]
        latent = c.get(inverted["latent_url"]).content
    out = decode_png(pngs[1])
    assert np.array_equal(out[side // 2 :], decode_png(picture)[side // 2 :])  # the kept half, exactly
    env = {"DIFFUSETV_MODEL_STORE": str(tiny_store.root), "DIFFUSETV_TORCH_THREADS": "1"}
    common = ["--model", "cifar", "--steps", str(STEPS), "--device", "cpu"]
    run_cli("sample", *common, "--seed", "6", "--image", str(tmp_path / "in.png"), "--strength", "0.75",
            "--out", str(tmp_path / "a.png"), env=env)  # fmt: skip
    run_cli("sample", *common, "--seed", "6", "--image", str(tmp_path / "in.png"), "--strength", "1",
            "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "b.png"), env=env)  # fmt: skip
    run_cli("invert", str(tmp_path / "in.png"), *common, "--out", str(tmp_path / "latent.safetensors"),
            "--reconstruction", str(tmp_path / "c.png"), env=env)  # fmt: skip
    assert (tmp_path / "a.png").read_bytes() == pngs[0]
    assert (tmp_path / "b.png").read_bytes() == pngs[1]
    assert (tmp_path / "c.png").read_bytes() == pngs[2]
    assert (tmp_path / "latent.safetensors").read_bytes() == latent
    run_cli("sample", *common, "--latent", str(tmp_path / "latent.safetensors"), "--out", str(tmp_path / "d.png"),
            env=env)  # fmt: skip
    assert np.array_equal(decode_png((tmp_path / "d.png").read_bytes()), decode_png(pngs[2]))
