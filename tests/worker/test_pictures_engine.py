"""Pictures in through the engine: image-to-image, inpainting, RePaint and inversion, on real pixels.

The tiny model checks the contract (strength 0 is the input, the kept region is the input, a row's bits do not depend
on its batch); the bundled emoji32 checks that refined inversion reconstructs better than naive; a tiny diffusers
UNet2DModel and a tiny Stable Diffusion pipeline check naive inversion against `DDIMInverseScheduler` in the
hand-written loop, and image-to-image against `StableDiffusionImg2ImgPipeline`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion.ddim import last_step
from helpers import require_prerequisite
from model_store import Store
from model_store.store import BUNDLED
from worker.engine import PictureIn, load_engine

STEPS = 8


@pytest.fixture
def engine(tiny_store):
    return load_engine("tiny", tiny_store, device="cpu")


def a_picture(seed: int, size: int = 16, channels: int = 3) -> np.ndarray:
    """A smooth picture with an edge: gradients, a disc, a little noise; (size, size, channels) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    base = [x, y, 1 - (x + y) / 2][:channels]
    image = np.stack(base, axis=-1) * 200 + 20
    disc = (x - rng.uniform(0.3, 0.7)) ** 2 + (y - rng.uniform(0.3, 0.7)) ** 2 < 0.06
    image[disc] = rng.uniform(0, 255, channels)
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def right_half_mask(size: int = 16) -> np.ndarray:
    mask = np.zeros((size, size, 1), dtype=np.uint8)
    mask[:, size // 2 :] = 255  # repaint the right half, keep the left
    return mask


def finish(engine, run, pictures=None):
    return engine.images(last_step(run), pictures)


def test_pixels_to_model_and_back_are_the_same_pixels(engine):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(engine.pixels(engine.model.to_model(pixels)), pixels)
    mask = engine.model.mask_to_model(right_half_mask()[None])
    assert mask.shape == (1, 1, 16, 16) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask[0, 0, :, 8:].eq(1).all() and mask[0, 0, :, :8].eq(0).all()


def test_strength_zero_is_the_input_and_strength_cost_counts_steps(engine):
    picture = a_picture(1)
    rows = [PictureIn(picture, 0.0), None, PictureIn(picture, 0.5)]
    run = engine.run([1, 2, 3], STEPS, [0.0, 0.0, 1.0], starts=rows)
    steps = list(run)
    images = engine.images(steps[-1], rows)
    assert np.array_equal(images[0], picture)
    assert [s.active for s in steps[:4]] == [[False, True, False]] * 4
    assert [s.active for s in steps[4:]] == [[False, True, True]] * 4  # strength 0.5 runs the last 4 of 8 steps
    assert not np.array_equal(images[2], picture)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_picture_rows_are_bit_identical_alone_with_seed_jobs_and_after_a_drop(engine, eta):
    mask = right_half_mask()
    rows = [
        (10, PictureIn(a_picture(2), 0.6)),
        (11, None),
        (12, PictureIn(a_picture(3), 0.9, mask, 2)),
        (13, None),
        (14, PictureIn(a_picture(4), 1.0, mask, 2)),
    ]
    seeds, pictures = [s for s, _ in rows], [p for _, p in rows]
    alone = [last_step(engine.run([s], STEPS, [eta], starts=[p])) for s, p in rows]
    together = last_step(engine.run(seeds, STEPS, [eta] * 5, starts=pictures))
    for i, one in enumerate(alone):
        assert torch.equal(together.x0_pred[i], one.x0_pred[0]) and torch.equal(together.x[i], one.x[0]), i
    run = engine.run(seeds, STEPS, [eta] * 5, starts=pictures)
    for step in run:
        if step.step == 3:
            run.drop([1, 2])  # a seed job and an inpainting job leave mid-run
    for j, i in enumerate([0, 3, 4]):
        assert torch.equal(step.x0_pred[j], alone[i].x0_pred[0]) and torch.equal(step.x[j], alone[i].x[0])
    kept_pictures = [pictures[i] for i in (0, 3, 4)]
    images = engine.images(step, kept_pictures)
    assert np.array_equal(images[2], engine.images(alone[4], [pictures[4]])[0])


@pytest.mark.parametrize("harmonize", [0, 2])
def test_inpainting_keeps_every_kept_pixel_of_the_input(engine, harmonize):
    picture, mask = a_picture(5), right_half_mask()
    rows = [PictureIn(picture, strength, mask, harmonize) for strength in (1.0, 0.5)]
    images = finish(engine, engine.run([21, 22], STEPS, [0.0, 1.0], starts=rows), rows)
    for image in images:
        assert np.array_equal(image[:, :8], picture[:, :8])
        assert not np.array_equal(image[:, 8:], picture[:, 8:])


def test_harmonize_changes_the_repainted_region_only_and_is_deterministic(engine):
    picture, mask = a_picture(6), right_half_mask()
    rows, harmonized = [PictureIn(picture, 0.8, mask)], [PictureIn(picture, 0.8, mask, 3)]
    plain = finish(engine, engine.run([30], STEPS, [0.0], starts=rows), rows)
    first = finish(engine, engine.run([30], STEPS, [0.0], starts=harmonized), harmonized)
    second = finish(engine, engine.run([30], STEPS, [0.0], starts=harmonized), harmonized)
    assert np.array_equal(first, second)
    assert np.array_equal(first[0][:, :8], plain[0][:, :8])
    assert not np.array_equal(first[0][:, 8:], plain[0][:, 8:])


def test_an_inversion_is_bit_identical_alone_and_batched_and_reconstructs(engine):
    pictures = [a_picture(i) for i in range(3)]
    *_, together = engine.invert(pictures, STEPS, refine=1)
    for i, p in enumerate(pictures):
        *_, alone = engine.invert([p], STEPS, refine=1)
        assert torch.equal(alone.x[0], together.x[i])
    assert together.x.shape == (3, 3, 16, 16) and together.x.dtype == torch.float32
    images = finish(engine, engine.reconstruct(list(together.x), STEPS))
    assert images.shape == (3, 16, 16, 3)
    seeds = last_step(engine.run([0, 0, 0], STEPS, [0.0] * 3, starts=together.x))
    assert np.array_equal(images, engine.images(seeds))  # reconstruct is DDIM (eta 0) from the latents


def psnr(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    mse = ((images.astype(np.float64) - reference.astype(np.float64)) ** 2).reshape(len(images), -1).mean(axis=1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


@pytest.mark.slow
def test_refined_inversion_of_emoji32_reconstructs_better_than_naive():
    """On 6 held-out glyphs at 20 steps (bench inversion measures all 140 at 50)."""
    require_prerequisite("emoji-font")
    from diffusion import emoji

    glyphs = emoji.build(emoji.DEFAULT_FONT, 32)["heldout"][:6]
    engine = load_engine("emoji32@1", Store(BUNDLED), device="cpu")
    figures = {}
    for refine in (0, 2):
        *_, inverse = engine.invert(list(glyphs), 20, refine=refine)
        figures[refine] = np.median(psnr(finish(engine, engine.reconstruct(list(inverse.x), 20)), glyphs))
    assert figures[2] > figures[0] + 5, figures


# diffusers: naive inversion is DDIMInverseScheduler's hand-written loop; image-to-image is the img2img pipeline's.

INVERSE_SCHEDULERS = {  # DDIMInverseScheduler takes "leading" and "trailing" spacing only
    "leading-eps-clip": ("DDPMScheduler", {}),
    "trailing-v": (
        "DDIMScheduler",
        {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    ),
    "leading-sample-offset": (
        "DDIMScheduler",
        {"prediction_type": "sample", "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False},
    ),
}
# |ours − diffusers'| of the inverted latent <= ATOL + RTOL·|diffusers'| (float32; a random UNet's latents reach 100)
ATOL, RTOL = 1e-4, 1e-5


def close(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    return bool(((ours - theirs).abs() <= ATOL + RTOL * theirs.abs()).all())


def diffusers_inversion(unet_call, scheduler_config, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The hand-written loop: DDIMInverseScheduler.from_config, set_timesteps, then eps = unet(x, t), x = step."""
    from diffusers import DDIMInverseScheduler

    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    inverse.set_timesteps(steps)
    with torch.no_grad():
        for t in inverse.timesteps:
            x = inverse.step(unet_call(x, t), t, x).prev_sample
    return x


def diffusers_generation(unet_call, scheduler_config, x: torch.Tensor, steps: int) -> torch.Tensor:
    """DDIMScheduler (eta 0) from x_T, as DDIMPipeline and StableDiffusionPipeline loop: the last prev_sample."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet_call(x, t), t, x, eta=0.0).prev_sample
    return x


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """diffusers' postprocess: (x/2 + 0.5).clamp(0, 1), then round(·255): (B, H, W, C) uint8."""
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def unet2d_models(tmp_path_factory):
    pytest.importorskip("diffusers")
    import diffusers
    from diffusers_models import save_pipeline, tiny_unet

    from model_store.importers.diffusers import import_diffusers

    root = tmp_path_factory.mktemp("inversion")
    store = Store(root / "models")
    folders = {}
    for i, (name, (cls, kwargs)) in enumerate(INVERSE_SCHEDULERS.items()):
        folders[name] = save_pipeline(root / name, tiny_unet(seed=10 + i), getattr(diffusers, cls)(**kwargs))
        import_diffusers(folders[name], name, store=store)
    return store, folders


@pytest.mark.parametrize("name", list(INVERSE_SCHEDULERS))
def test_naive_inversion_of_a_unet2d_is_ddiminversescheduler(unet2d_models, name):
    from diffusers import DDPMScheduler, UNet2DModel

    store, folders = unet2d_models
    engine = load_engine(name, store=store, device="cpu")
    unet = UNet2DModel.from_pretrained(folders[name] / "unet").float().eval()
    config = DDPMScheduler.from_pretrained(folders[name] / "scheduler").config
    pictures = [a_picture(40), a_picture(41)]
    *_, ours = engine.invert(pictures, STEPS, refine=0)
    x = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    theirs = torch.cat([diffusers_inversion(lambda x, t: unet(x, t).sample, config, row, STEPS) for row in x.split(1)])
    assert close(ours.x, theirs), (ours.x - theirs).abs().max()
    mine = finish(engine, engine.reconstruct(list(ours.x), STEPS))
    want = to_pixels(diffusers_generation(lambda x, t: unet(x, t).sample, config, theirs, STEPS))
    assert np.abs(mine.astype(int) - want.astype(int)).max() <= 2
    assert len(np.unique(want)) > 50  # a real picture, not a clipped one


@pytest.fixture(scope="module")
def sd_model(tmp_path_factory):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from sd_pipelines import save_sd_pipeline

    from model_store.importers.diffusers_sd import import_sd

    root = tmp_path_factory.mktemp("sd-pictures")
    folder = save_sd_pipeline(root / "pipe", seed=5)
    store = Store(root / "models")
    import_sd(folder, "sd-tiny", store=store)
    return folder, load_engine("sd-tiny", store=store, device="cpu")


@pytest.mark.slow
def test_naive_inversion_of_a_latent_pipeline_is_ddiminversescheduler(sd_model):
    from diffusers import StableDiffusionPipeline

    folder, engine = sd_model
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    empty, _ = pipe.encode_prompt("", "cpu", 1, False)
    pictures = [a_picture(50), a_picture(51)]
    *_, ours = engine.invert(pictures, STEPS, conditions=[engine.condition(None, 1.0)] * 2, refine=0)

    def unet_call(x, t):
        return pipe.unet(x, t, encoder_hidden_states=empty).sample

    scaling = pipe.vae.config.scaling_factor
    with torch.no_grad():
        images = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255 * 2 - 1
        latents = [pipe.vae.encode(row).latent_dist.mode() * scaling for row in images.split(1)]
    theirs = torch.cat([diffusers_inversion(unet_call, pipe.scheduler.config, z, STEPS) for z in latents])
    assert close(ours.x, theirs), (ours.x - theirs).abs().max()
    mine = finish(engine, engine.reconstruct(list(ours.x), STEPS, conditions=[engine.condition(None, 1.0)] * 2))
    with torch.no_grad():
        back = [diffusers_generation(unet_call, pipe.scheduler.config, z, STEPS) for z in theirs.split(1)]
        want = to_pixels(torch.cat([pipe.vae.decode(z / scaling).sample for z in back]))
    assert np.abs(mine.astype(int) - want.astype(int)).max() <= 2
    assert len(np.unique(want)) > 50


@pytest.mark.slow
@pytest.mark.parametrize(("prompt", "guidance", "strength", "seed"), [("a red heart", 7.5, 0.6, 3), ("", 1.0, 0.9, 4)])
def test_image_to_image_of_a_latent_pipeline_is_diffusers_img2img(sd_model, prompt, guidance, strength, seed):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
    from PIL import Image

    folder, engine = sd_model
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    picture = a_picture(60)
    out = pipe(
        prompt=prompt, image=Image.fromarray(picture), strength=strength, num_inference_steps=STEPS,
        guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), output_type="np",
    )  # fmt: skip
    want = np.round(out.images[0] * 255).astype(np.uint8)
    rows = [PictureIn(picture, strength)]
    run = engine.run([seed], STEPS, [0.0], conditions=[engine.condition(prompt, guidance)], starts=rows)
    mine = finish(engine, run, rows)[0]
    assert np.abs(mine.astype(int) - want.astype(int)).max() <= 2
    assert len(np.unique(want)) > 50
    # the same row beside a seed job: the same bytes
    both = engine.run(
        [seed, 9], STEPS, [0.0, 0.0], conditions=[engine.condition(prompt, guidance), engine.condition("sun", 3.0)],
        starts=[rows[0], None],
    )  # fmt: skip
    assert np.array_equal(finish(engine, both, [rows[0], None])[0], mine)
