"""An imported Stable Diffusion pipeline (kind `diffusers-sd`, a tiny random one) through the whole stack, as real
processes: redis-server, `diffusetv worker` and `diffusetv api`. A job gives the CLI's bytes alone and batched with
other prompts; a long prompt is truncated and says so; previews arrive; a job can be canceled; the cache answers a
repeat; other sizes are a 422 that lists the model's."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from sd_pipelines import save_sd_pipeline

from app.core.png import decode_png, read_parameters
from helpers import canceled_when_running, read_events, run_cli
from helpers import final_job as final
from model_store.importers.diffusers_sd import import_sd
from stack import running_stack

pytestmark = pytest.mark.slow
STEPS = 6
LONG_PROMPT = " ".join(["a red heart on the big blue moon of the sun"] * 10)  # 100 words, past 77 tokens


@pytest.fixture
def sd_stack(tiny_store, redis_server, tmp_path):
    folder = save_sd_pipeline(tmp_path / "pipe", seed=5)
    import_sd(folder, "sd", store=tiny_store)
    env = {"DIFFUSETV_MODELS": "sd", "DIFFUSETV_MAX_BATCH_WAIT_MS": "600"}
    with running_stack(redis_server, tiny_store.root, tmp_path, timeout=180, model="sd", **env) as s:
        yield s


def cli_png(store_root, tmp_path, body: dict) -> bytes:
    out = tmp_path / f"cli-{body['seed']}.png"
    env = {"DIFFUSETV_MODEL_STORE": str(store_root), "DIFFUSETV_TORCH_THREADS": "1"}
    args = ["sample", "--model", "sd", "--seed", str(body["seed"]), "--steps", str(STEPS)]
    args += ["--eta", str(body.get("eta", 0.0)), "--prompt", body.get("prompt", "")]
    for field, flag in (("guidance", "--guidance"), ("negative_prompt", "--negative-prompt")):
        if field in body:
            args += [flag, str(body[field])]
    for field in ("width", "height"):
        if field in body:
            args += [f"--{field}", str(body[field])]
    run_cli(*args, "--device", "cpu", "--out", str(out), env=env)
    return out.read_bytes()


def test_a_latent_model_serves_the_clis_bytes_alone_and_batched_with_other_prompts(sd_stack, tiny_store, tmp_path):
    bodies = [
        {"seed": 41, "prompt": "a red heart", "width": 24, "height": 16},
        {"seed": 42, "prompt": "a blue cat", "negative_prompt": "a tree", "guidance": 5.0, "width": 24, "height": 16},
        {"seed": 43, "prompt": LONG_PROMPT, "eta": 1.0, "width": 24, "height": 16},
        {"seed": 44, "prompt": "the moon", "guidance": 1.0, "width": 24, "height": 16},
    ]
    with sd_stack.client() as c:
        models = {m["ref"]: m for m in c.get("/models").json()["models"]}
        entry = models["sd@1"]
        assert entry["kind"] == "diffusers-sd" and entry["conditioning"] == "text"
        assert entry["default_guidance"] == 7.5
        assert entry["sizes"] == [{"width": 16, "height": 16}, {"width": 24, "height": 16}, {"width": 16, "height": 24}]
        r = c.post("/generate", json={"seed": 1, "steps": STEPS, "model": "sd", "width": 32, "height": 32})
        assert r.status_code == 422 and "16x16, 24x16, 16x24" in r.text, r.text
        ids = [c.post("/generate", json={**b, "steps": STEPS, "model": "sd"}).json()["id"] for b in bodies]
        jobs = [final(c, i) for i in ids]
        assert all(j["status"] == "succeeded" for j in jobs), jobs
        assert max(j["batch_size"] for j in jobs) > 1  # they shared a batch
        assert jobs[2]["params"]["truncated_tokens"] > 0
        assert "truncated_tokens" not in jobs[0]["params"]
        assert jobs[0]["params"]["guidance"] == 7.5 and jobs[1]["params"]["negative_prompt"] == "a tree"
        pngs = [c.get(j["image_url"]).content for j in jobs]
        assert read_parameters(pngs[0])["identity"] == tiny_store.resolve("sd").identity
        alone = c.post("/generate", json={"seed": 45, "steps": STEPS, "model": "sd", "prompt": "a red heart"}).json()
        alone = final(c, alone["id"])
        assert alone["status"] == "succeeded" and alone["batch_size"] == 1
        alone_png = c.get(alone["image_url"]).content
        repeat = c.post("/generate", json={"seed": 45, "steps": STEPS, "model": "sd", "prompt": "A  Red heart "})
        assert repeat.status_code == 202 and repeat.json()["status"] == "succeeded"  # the cache answered
        assert c.get(repeat.json()["image_url"]).content == alone_png
    for body, png in zip(bodies, pngs, strict=True):
        assert png == cli_png(tiny_store.root, tmp_path, body), body
    assert alone_png == cli_png(tiny_store.root, tmp_path, {"seed": 45, "prompt": "a red heart"})
    assert decode_png(pngs[0]).shape == (16, 24, 3) and decode_png(alone_png).shape == (16, 16, 3)
    assert len(np.unique(decode_png(alone_png))) > 50


def test_a_latent_model_shows_previews_cancels_and_interpolates(sd_stack):
    with sd_stack.client() as c:
        job = c.post("/generate", json={"seed": 7, "steps": 20, "previews": True, "model": "sd", "prompt": "a cat"})
        evs = read_events(c, job.json()["id"])
        previews = [d for _, e, d in evs if e == "preview"]
        assert len(previews) >= 2 and all(p["url"].startswith("data:image/png;base64,") for p in previews)
        assert evs[-1][1:] == ("status", {"status": "succeeded"})

        long = c.post("/generate", json={"seed": 8, "steps": 900, "model": "sd", "prompt": "a dog"}).json()
        evs = canceled_when_running(sd_stack, c, long["id"])
        assert evs[-1][1:] == ("status", {"status": "canceled"})
        assert c.get(f"/jobs/{long['id']}").json()["progress"]["step"] < 900

        walk = {"seed_a": 11, "seed_b": 12, "frames": 3, "steps": STEPS, "model": "sd", "width": 24, "height": 16}
        r = c.post("/interpolate", json={**walk, "prompt": "a red heart", "prompt_b": "a blue cat"})
        assert r.status_code == 202, r.text
        done = final(c, r.json()["id"])
        assert done["status"] == "succeeded", done
        strip = decode_png(c.get(done["strip_url"]).content)
        assert strip.shape == (16, 3 * 24, 3)
        ends = [
            {"seed": 11, "prompt": "a red heart", "width": 24, "height": 16},
            {"seed": 12, "prompt": "a blue cat", "width": 24, "height": 16},
        ]
        first, last = (
            final(c, c.post("/generate", json={**e, "steps": STEPS, "model": "sd"}).json()["id"]) for e in ends
        )
        assert np.array_equal(strip[:, :24], decode_png(c.get(first["image_url"]).content))  # seed_a with prompt
        assert np.array_equal(strip[:, -24:], decode_png(c.get(last["image_url"]).content))  # seed_b with prompt_b


def test_a_latent_model_takes_pictures_through_the_vae_with_the_clis_bytes(sd_stack, tiny_store, tmp_path):
    """Guided image-to-image, inpainting and inversion of a latent pipeline at a size of its own: the picture goes in
    through the VAE's encoder, the kept region comes back from the input exactly, and the CLI gives the same bytes."""
    import base64
    import io

    from PIL import Image

    size = {"width": 24, "height": 16}
    with sd_stack.client() as c:
        source = c.post("/generate", json={"seed": 50, "steps": STEPS, "model": "sd", "prompt": "a cat", **size})
        source = final(c, source.json()["id"])
        picture = c.get(source["image_url"]).content
        (tmp_path / "in.png").write_bytes(picture)
        mask = np.zeros((16, 24), np.uint8)
        mask[:, :8] = 255  # repaint the left third
        buffer = io.BytesIO()
        Image.fromarray(mask).save(buffer, format="PNG")
        (tmp_path / "mask.png").write_bytes(buffer.getvalue())
        body = {"seed": 51, "steps": STEPS, "model": "sd", "prompt": "a dog", "image": {"job": source["id"]}, **size}
        img2img = final(c, c.post("/generate", json={**body, "strength": 0.5}).json()["id"])
        masked = {**body, "strength": 1.0, "mask": base64.b64encode(buffer.getvalue()).decode()}
        inpaint = final(c, c.post("/generate", json=masked).json()["id"])
        inverted = c.post("/invert", json={"image": {"job": source["id"]}, "steps": STEPS, "model": "sd", **size})
        inverted = final(c, inverted.json()["id"])
        assert [j["status"] for j in (img2img, inpaint, inverted)] == ["succeeded"] * 3
        assert img2img["params"]["guidance"] == 7.5 and img2img["progress"] == {"step": 3, "steps": 3}
        pngs = [c.get(j["image_url"]).content for j in (img2img, inpaint, inverted)]
        latent = c.get(inverted["latent_url"]).content
    assert np.array_equal(decode_png(pngs[1])[:, 8:], decode_png(picture)[:, 8:])
    env = {"DIFFUSETV_MODEL_STORE": str(tiny_store.root), "DIFFUSETV_TORCH_THREADS": "1"}
    common = ["--model", "sd", "--steps", str(STEPS), "--device", "cpu", "--width", "24", "--height", "16"]
    cli = [*common, "--seed", "51", "--prompt", "a dog", "--image", str(tmp_path / "in.png")]
    run_cli("sample", *cli, "--strength", "0.5", "--out", str(tmp_path / "a.png"), env=env)
    run_cli("sample", *cli, "--strength", "1", "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "b.png"),
            env=env)  # fmt: skip
    run_cli("invert", str(tmp_path / "in.png"), *common, "--out", str(tmp_path / "latent.safetensors"),
            "--reconstruction", str(tmp_path / "c.png"), env=env)  # fmt: skip
    assert [(tmp_path / f"{n}.png").read_bytes() for n in "abc"] == pngs
    assert (tmp_path / "latent.safetensors").read_bytes() == latent
