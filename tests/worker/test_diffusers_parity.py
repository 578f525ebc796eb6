"""Same seed, same picture as diffusers: an imported pipeline through our engine against DDIMPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers_models import pipeline_image, quantised, saturation, save_pipeline, tiny_unet

from diffusion.ddim import last_step
from model_store import Store
from model_store.importers.diffusers import import_diffusers
from worker.engine import load_engine

SCHEDULERS = {
    # DDPMScheduler's own defaults (as google/ddpm-cifar10-32 has): DDIMPipeline reads them with from_config
    "ddpm-linear": ("DDPMScheduler", {}),
    "ddim-cosine-v-trailing": (
        "DDIMScheduler",
        {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    ),
    "ddim-scaled-sample-offset": (
        "DDIMScheduler",
        {
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "prediction_type": "sample",
            "steps_offset": 1,
            "set_alpha_to_one": False,
        },
    ),
    "ddim-linspace-noclip": (
        "DDIMScheduler",
        {
            "timestep_spacing": "linspace",
            "clip_sample": False,
            "prediction_type": "v_prediction",
            "num_train_timesteps": 500,
            "set_alpha_to_one": False,
        },
    ),
}
STEPS = 10
MAX_SATURATION = 0.35


def make_scheduler(name: str):
    import diffusers

    cls, kwargs = SCHEDULERS[name]
    return getattr(diffusers, cls)(**kwargs)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each scheduler config with its own random UNet, saved as a DDPMPipeline folder and imported."""
    root = tmp_path_factory.mktemp("parity")
    store = Store(root / "models")
    folders = {}
    for i, name in enumerate(SCHEDULERS):
        folders[name] = save_pipeline(root / name, tiny_unet(seed=i), make_scheduler(name))
        import_diffusers(folders[name], name, store=store)
    return store, folders


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_our_image_for_a_seed_is_ddimpipelines(imported, name, eta):
    store, folders = imported
    engine = load_engine(name, store=store, device="cpu")
    for seed in (0, 12345):
        theirs = pipeline_image(folders[name], seed, STEPS, eta)  # (1, C, H, W) in [0, 1]
        last = last_step(engine.run([seed], STEPS, [eta]))
        ours = (engine.model.final(last).float().cpu() / 2 + 0.5).clamp(0, 1)
        assert (ours - theirs).abs().max() < 2e-3, (ours - theirs).abs().max()  # float tensors
        mine, want = engine.generate([seed], STEPS, [eta])[0], quantised(theirs)[0]
        assert np.abs(mine.astype(int) - want.astype(int)).max() <= 2  # pixels: within two levels
        assert saturation(want) < MAX_SATURATION and want.std() > 10  # a wrong mapping cannot hide in 0/255
        assert len(np.unique(want)) > 50


def test_a_seed_gives_the_same_bytes_alone_and_in_any_batch(imported):
    store, _ = imported
    engine = load_engine("ddpm-linear", store=store, device="cpu")
    seeds, etas = [5, 6, 7, 8, 9], [0.0, 1.0, 0.0, 0.5, 1.0]
    together = engine.generate(seeds, STEPS, etas)
    for i, (seed, eta) in enumerate(zip(seeds, etas, strict=True)):
        assert np.array_equal(engine.generate([seed], STEPS, [eta])[0], together[i])
    alone = last_step(engine.run([8], STEPS, [0.5])).x
    assert torch.equal(alone[0], last_step(engine.run(seeds, STEPS, etas)).x[3])  # bit-equal floats


def test_the_image_is_the_last_prev_sample_not_the_last_x0(imported):
    """With set_alpha_to_one false the two differ: DDIMPipeline returns prev_sample."""
    store, _ = imported
    engine = load_engine("ddim-linspace-noclip", store=store, device="cpu")
    last = last_step(engine.run([3], STEPS, [0.0]))
    assert not torch.equal(last.x, last.x0_pred)
    assert torch.equal(engine.model.final(last), last.x)
