"""Kind `diffusers-sd` against diffusers itself: tiny random Stable Diffusion pipelines that the tests build and save
(tests/sd_pipelines.py), imported into a store, give through `diffusetv sample` the image of
`StableDiffusionPipeline(..., scheduler=DDIMScheduler)` within two pixel levels (ε and v prediction, with and without a
negative prompt, at eta 0 and 1, at two sizes), and then the same bytes in any batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from sd_pipelines import save_sd_pipeline, sd_reference

from app.core.png import decode_png, read_parameters
from diffusion.ddim import last_step
from model_store import Store
from model_store.importers.diffusers_sd import import_sd
from model_store.sd_kind import prompts
from worker.engine import load_engine

STEPS = 6
# (prompt, negative prompt, guidance, eta, (width, height) or None for the default 16x16)
CASES = [
    ("a red heart", None, 7.5, 0.0, None),
    ("a blue cat on the moon", "a tree", 5.0, 1.0, (24, 16)),
    ("the big sun", "house", 7.5, 0.0, (16, 24)),
    ("", None, 1.0, 1.0, None),  # guidance 1: the conditional row alone, as diffusers' do_classifier_free_guidance
]


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def imported(request, tmp_path_factory):
    """(the pipeline folder, the store, the model's name) of a tiny pipeline of each prediction type."""
    root = tmp_path_factory.mktemp(f"sd-{request.param}")
    folder = save_sd_pipeline(root / "pipe", seed=3, prediction=request.param)
    store = Store(root / "models")
    name = "sd-eps" if request.param == "epsilon" else "sd-v"
    import_sd(folder, name, store=store)
    return folder, store, name


@pytest.fixture(scope="module")
def engine(imported):
    _, store, name = imported
    return load_engine(name, store=store, device="cpu")


def reference_pixels(image: torch.Tensor) -> np.ndarray:
    """diffusers' numpy_to_pil: (images * 255).round() as uint8, (H, W, C)."""
    return (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


@pytest.mark.slow
def test_the_clis_pictures_are_diffusers_within_two_levels(imported, tmp_path, monkeypatch):
    from diffusetv.cli import main

    folder, store, name = imported
    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(store.root))
    for i, (prompt, negative, guidance, eta, size) in enumerate(CASES):
        out = tmp_path / f"{i}.png"
        args = ["sample", "--model", name, "--prompt", prompt, "--guidance", str(guidance), "--seed", str(10 + i)]
        args += ["--steps", str(STEPS), "--eta", str(eta), "--device", "cpu", "--out", str(out)]
        if negative is not None:
            args += ["--negative-prompt", negative]
        if size is not None:
            args += ["--width", str(size[0]), "--height", str(size[1])]
        assert main(args) == 0
        ours = decode_png(out.read_bytes())
        w, h = size or (16, 16)
        _, image = sd_reference(folder, prompt, 10 + i, STEPS, eta, guidance, negative, width=w, height=h)
        theirs = reference_pixels(image)
        assert ours.shape == theirs.shape == (h, w, 3)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2, (i, prompt)
        saturated = float(((theirs == 0) | (theirs == 255)).mean())
        assert saturated < 0.05, saturated  # unsaturated: the comparison sees the values, not the clipping
        assert len(np.unique(theirs)) > 100
        parameters = read_parameters(out.read_bytes())
        assert (parameters["width"], parameters["height"]) == (w, h)
        assert parameters["negative_prompt"] == negative and parameters["guidance"] == guidance


@pytest.mark.slow
def test_the_latents_are_diffusers_within_float_tolerance(imported, engine):
    folder = imported[0]
    for i, (prompt, negative, guidance, eta, size) in enumerate(CASES):
        text = prompts(engine.manifest, prompt, guidance, negative)
        condition = engine.condition(text.prompt, text.guidance, text.negative_prompt)
        ours = engine.model.final(last_step(engine.run([20 + i], STEPS, [eta], conditions=[condition], size=size)))
        w, h = size or (16, 16)
        theirs, _ = sd_reference(folder, prompt, 20 + i, STEPS, eta, guidance, negative, width=w, height=h)
        assert ours.shape == theirs.shape == (1, 4, h // 2, w // 2)
        assert torch.allclose(ours, theirs, atol=2e-4, rtol=0), float((ours - theirs).abs().max())


@pytest.mark.slow
def test_a_sample_keeps_its_bytes_in_any_batch(engine):
    """Each sample alone, then all of them in one batch of mixed prompts, negative prompts, scales and etas, and in
    another order: the same pixels."""
    rows = [
        ("a red heart", None, 7.5, 0.0),
        ("a blue cat", "a tree", 5.0, 1.0),
        ("", None, 1.0, 0.0),
        ("the moon", "sun", 3.0, 0.5),
        ("a red heart", None, 7.5, 1.0),
    ]
    seeds = [31, 32, 33, 34, 35]
    conditions = [engine.condition(p or None, g, n) for p, n, g, _ in rows]
    etas = [e for *_, e in rows]
    size = (24, 16)
    alone = [
        engine.generate([s], STEPS, [e], [c], size=size)[0] for s, e, c in zip(seeds, etas, conditions, strict=True)
    ]
    batched = engine.generate(seeds, STEPS, etas, conditions, size=size)
    order = [3, 1, 4, 0, 2]
    pick = [seeds[i] for i in order], [etas[i] for i in order], [conditions[i] for i in order]
    shuffled = engine.generate(pick[0], STEPS, pick[1], pick[2], size=size)
    for i in range(len(rows)):
        assert np.array_equal(batched[i], alone[i]), i
        assert np.array_equal(shuffled[order.index(i)], alone[i]), i
    assert not np.array_equal(alone[0], alone[4])  # eta 1 draws other noise: the rows differ


def test_each_size_has_its_own_probe_named_in_the_engine_id(engine):
    assert sorted(engine.sized) == [(16, 16), (16, 24), (24, 16)]
    shapes = {size: denoiser for size, (denoiser, _) in engine.sized.items()}
    assert len({id(d) for d in shapes.values()}) == 3
    assert engine.id.startswith("cpu/fp32/") and len(engine.kernels) == 16
    with pytest.raises(Exception, match="32x32"):
        engine.denoiser_at((32, 32))


def test_the_memory_is_measured_and_bounds_the_batch(engine):
    memory = engine.memory
    parts = engine.model.parts(engine.denoiser.net)
    assert len(parts) == 3  # the UNet, the VAE and the text encoder
    weights = sum(p.numel() * 4 for m in parts for p in m.parameters())
    assert memory.parameters >= weights
    assert memory.rows == max(d.shapes.largest for d, _ in engine.sized.values())
    assert memory.per_sample > 4 * 12 * 8 * 4  # at least the latents of the largest size
    assert engine.max_batch == memory.max_batch >= 1


def test_prompt_embeddings_are_cached_within_a_byte_bound(engine, monkeypatch):
    from worker.kinds import diffusers_sd

    model = engine.model
    one = model.embed("a red heart")
    assert one.shape == (77, 24) and model.embed("a red heart") is one
    monkeypatch.setattr(diffusers_sd, "EMBEDDING_CACHE_BYTES", 3 * one.numel() * 4)
    for word in ("cat", "dog", "tree", "house", "sun"):
        model.embed(word)
    assert len(model.embeddings) == 3 and model.cached_bytes == 3 * one.numel() * 4
    assert "a red heart" not in model.embeddings
    assert torch.equal(model.embed("a red heart"), one)  # recomputed alone: the same bits
