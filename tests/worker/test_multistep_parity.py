"""Same seed, same picture as diffusers, with the multistep samplers: an imported pipeline through our engine's
`dpmpp_2m` and `unipc` against diffusers' own `DPMSolverMultistepScheduler` and `UniPCMultistepScheduler`, each made
`from_config(the pipeline's original scheduler config)` at its defaults and run in DDPMPipeline's loop (x_T from
`randn_tensor` on the seed's CPU generator, `set_timesteps`, then `step` at each timestep). Within two pixel levels,
and the float samples within a tolerance measured on these models.

The models are small trained UNet2DModels with attention (tests/shapes_unets.py, weights committed): on a random
network the multistep samplers saturate almost every pixel, which would hide errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers_models import quantised, saturation, save_pipeline
from shapes_unets import CHANNELS, MODELS, SIZE, load_unet

from diffusion.ddim import last_step
from model_store import ModelStoreError, Store
from model_store.importers.diffusers import import_diffusers
from worker.engine import load_engine

# The keys of a scheduler_config.json that an early diffusers release wrote (as google/ddpm-cifar10-32's, from 0.1),
# before `timestep_spacing` and `prediction_type` existed
OLD_KEYS = (
    "beta_start",
    "beta_end",
    "beta_schedule",
    "clip_sample",
    "num_train_timesteps",
    "trained_betas",
    "variance_type",
)
# name: (the trained model, the pipeline's scheduler class, its settings beyond the model's own training schedule and
# prediction type, the keys its scheduler_config.json keeps (None: all that diffusers 0.42 writes))
CONFIGS = {
    # no timestep_spacing: DDIM runs DDPMScheduler's default ("leading"), the multistep schedulers theirs ("linspace")
    "ddpm-old-keys": (
        "sample-linear",
        "DDPMScheduler",
        {},
        (*OLD_KEYS, "prediction_type"),
    ),
    # DDPMScheduler's defaults as 0.42 writes them ("leading"), clipping x0 to [-0.5, 0.5] under DDIM: the multistep
    # samplers never clamp
    "ddpm-clip": ("sample-linear", "DDPMScheduler", {"clip_sample_range": 0.5}, None),
    # Stable Diffusion's scheduler
    "ddim-sd": (
        "eps-scaled",
        "DDIMScheduler",
        {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"},
        None,
    ),
    "ddim-cosine-v-trailing": ("v-cosine", "DDIMScheduler", {"timestep_spacing": "trailing"}, None),
}
SAMPLERS = {"dpmpp_2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}
# below and above 15, where DPMSolverMultistepScheduler's lower_order_final stops applying (its last step is first
# order at both: final_sigmas_type "zero")
STEPS = [10, 20]
SEEDS = (0, 12345)
FLOAT_TOLERANCE = 2e-5  # max |ours - diffusers'| of the final sample x ([-1, 1] is the image): 4e-6 measured
MAX_SATURATION = 0.15  # the ε model's: up to 12% of its values at 0 or 255 at 20 steps; the others' none
SD_FLOAT_TOLERANCE = 1e-4  # of the final latents, which reach 35 on the random network: 3e-5 measured


def save_config_pipeline(folder: Path, name: str) -> Path:
    """The config's DDPMPipeline folder: its trained UNet and its original scheduler, whose scheduler_config.json
    keeps only the config's keys."""
    import diffusers

    model, cls, settings, keys = CONFIGS[name]
    save_pipeline(folder, load_unet(model), getattr(diffusers, cls)(**MODELS[model], **settings))
    if keys is not None:
        file = folder / "scheduler" / "scheduler_config.json"
        written = json.loads(file.read_text())
        file.write_text(json.dumps({k: v for k, v in written.items() if k.startswith("_") or k in keys}))
    return folder


def multistep_scheduler(sampler: str, config):
    """diffusers' scheduler of a sampler, from the pipeline's original scheduler config at its own defaults."""
    import diffusers

    return getattr(diffusers, SAMPLERS[sampler]).from_config(config)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each config's pipeline folder imported into a store: (the store, {name: (the UNet and the original scheduler's
    config, as DDPMPipeline.from_pretrained loads them from the folder)})."""
    from diffusers import DDPMPipeline

    root = tmp_path_factory.mktemp("multistep")
    store = Store(root / "models")
    pipelines = {}
    for name in CONFIGS:
        folder = save_config_pipeline(root / name, name)
        import_diffusers(folder, name, store=store)
        pipe = DDPMPipeline.from_pretrained(folder)
        pipelines[name] = (pipe.unet.to(torch.float32).eval(), pipe.scheduler.config)
    return store, pipelines


@pytest.fixture(scope="module")
def engines(imported):
    store, _ = imported
    return {name: load_engine(name, store=store, device="cpu") for name in CONFIGS}


@torch.no_grad()
def reference(unet, scheduler, seed: int, steps: int) -> torch.Tensor:
    """diffusers' sample x_0 (1, C, H, W) for a seed: DDPMPipeline's loop with `scheduler`."""
    from diffusers.utils.torch_utils import randn_tensor

    x = randn_tensor((1, CHANNELS, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


def image(x: torch.Tensor) -> np.ndarray:
    """DDPMPipeline's picture of a sample: (x / 2 + 0.5).clamp(0, 1), then numpy_to_pil's rounding."""
    return quantised((x / 2 + 0.5).clamp(0, 1))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_diffusers_multistep_defaults_are_our_samplers(imported, name):
    """The schedulers `from_config` makes of each pipeline's config run the algorithms that `dpmpp_2m` and `unipc`
    implement: read from the config, so a diffusers release that changes a default fails here."""
    _, pipelines = imported
    _, config = pipelines[name]
    dpm = multistep_scheduler("dpmpp_2m", config).config
    assert dpm.algorithm_type == "dpmsolver++" and dpm.solver_order == 2 and dpm.solver_type == "midpoint"
    assert dpm.lower_order_final is True and dpm.euler_at_final is False and dpm.final_sigmas_type == "zero"
    assert not (dpm.thresholding or dpm.use_karras_sigmas or dpm.use_exponential_sigmas or dpm.use_beta_sigmas)
    assert not (dpm.use_lu_lambdas or dpm.use_flow_sigmas or dpm.use_dynamic_shifting)
    assert dpm.lambda_min_clipped == float("-inf") and dpm.variance_type not in ("learned", "learned_range")
    unipc = multistep_scheduler("unipc", config).config
    assert unipc.solver_type == "bh2" and unipc.solver_order == 2 and unipc.predict_x0 is True
    assert unipc.lower_order_final is True and unipc.final_sigmas_type == "zero"
    assert list(unipc.disable_corrector) == [] and unipc.solver_p is None
    assert not (unipc.thresholding or unipc.use_karras_sigmas or unipc.use_exponential_sigmas or unipc.use_beta_sigmas)
    assert not (unipc.use_flow_sigmas or unipc.use_dynamic_shifting)
    written = CONFIGS[name][3]
    for resolved in (dpm, unipc):  # the model's own settings come from the pipeline's config, the rest are defaults
        for key in ("beta_schedule", "prediction_type", "num_train_timesteps"):
            assert resolved[key] == config[key], key
        spacing = config.timestep_spacing if written is None or "timestep_spacing" in written else "linspace"
        assert resolved.timestep_spacing == spacing


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_our_image_for_a_seed_is_diffusers(imported, engines, name, sampler, steps):
    _, pipelines = imported
    unet, config = pipelines[name]
    engine = engines[name]
    for seed in SEEDS:
        theirs = reference(unet, multistep_scheduler(sampler, config), seed, steps)
        ours = engine.model.final(last_step(engine.run([seed], steps, [0.0], samplers=[sampler]))).float().cpu()
        assert ours.shape == theirs.shape
        difference = float((ours - theirs).abs().max())
        assert difference <= FLOAT_TOLERANCE, difference  # float tensors
        mine, want = engine.generate([seed], steps, [0.0], samplers=[sampler])[0], image(theirs)[0]
        levels = int(np.abs(mine.astype(int) - want.astype(int)).max())
        print(f"{name} {sampler} {steps} steps seed {seed}: float {difference:.1e}, {levels} levels")  # pytest -s
        assert levels <= 2  # pixels: within two levels
        assert saturation(want) < MAX_SATURATION and want.std() > 10  # a wrong step cannot hide in 0/255
        assert len(np.unique(want)) > 50


@torch.no_grad()
def clamped_reference(unet, scheduler, seed: int, steps: int, bound: float) -> torch.Tensor:
    """`reference` of an x0-predicting network with its prediction clamped to [-bound, bound] before each step: what
    a multistep sampler that honoured DDIM's `clip_sample` would give."""
    from diffusers.utils.torch_utils import randn_tensor

    x = randn_tensor((1, CHANNELS, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample.clamp(-bound, bound), t, x).prev_sample
    return x


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_clip_sample_does_not_reach_the_multistep_samplers(imported, sampler):
    """The x0-predicting model's config sets clip_sample (to [-0.5, 0.5]), and its predictions leave that range: a
    clamp would move the picture far past the parity tolerance, so the parity test proves that the samplers do not
    clamp."""
    _, pipelines = imported
    unet, config = pipelines["ddpm-clip"]
    assert config.clip_sample and config.clip_sample_range == 0.5 and config.prediction_type == "sample"
    plain = reference(unet, multistep_scheduler(sampler, config), SEEDS[0], STEPS[0])
    clamped = clamped_reference(unet, multistep_scheduler(sampler, config), SEEDS[0], STEPS[0], 0.5)
    assert float((plain - clamped).abs().max()) > 50 * FLOAT_TOLERANCE
    assert np.abs(image(plain).astype(int) - image(clamped).astype(int)).max() > 2  # 10 levels measured


def test_a_dpmpp_2m_row_and_a_unipc_row_keep_their_bytes_in_one_batch(engines):
    engine = engines["ddim-sd"]
    seeds, samplers, steps = [5, 6, 5, 7], ["dpmpp_2m", "unipc", "unipc", "dpmpp_2m"], STEPS[0]
    together = engine.generate(seeds, steps, [0.0] * 4, samplers=samplers)
    floats = engine.model.final(last_step(engine.run(seeds, steps, [0.0] * 4, samplers=samplers)))
    for i, (seed, sampler) in enumerate(zip(seeds, samplers, strict=True)):
        assert np.array_equal(engine.generate([seed], steps, [0.0], samplers=[sampler])[0], together[i]), i
        alone = engine.model.final(last_step(engine.run([seed], steps, [0.0], samplers=[sampler])))
        assert torch.equal(alone[0], floats[i]), i  # bit-equal floats
    assert not np.array_equal(together[0], together[2])  # the same seed, another sampler: another picture


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_multistep_grid_is_diffusers_and_not_ddims(imported, engines, name):
    """DPMSolverMultistepScheduler and UniPCMultistepScheduler call the network at the same timesteps, and DDIM at
    others (but with "trailing" spacing): the grid a sampler calls the network on is diffusers', and a ddim job never
    shares a batch with a multistep one."""
    from diffusers import DDIMScheduler

    _, pipelines = imported
    _, config = pipelines[name]
    model = engines[name].model
    for steps in STEPS:
        multistep = [g.time for g in model.grid(steps, "dpmpp_2m")]
        assert multistep == [g.time for g in model.grid(steps, "unipc")]
        for sampler in SAMPLERS:
            scheduler = multistep_scheduler(sampler, config)
            scheduler.set_timesteps(steps)
            assert multistep == [float(t) for t in scheduler.timesteps], sampler
        ddim = [g.time for g in model.grid(steps, "ddim")]
        scheduler = DDIMScheduler.from_config(config)
        scheduler.set_timesteps(steps)
        assert ddim == [float(t) for t in scheduler.timesteps]
        # "leading" and "linspace" place the multistep schedulers' N timesteps among N + 1 points, "trailing" as DDIM
        assert (ddim == multistep) == (config.timestep_spacing == "trailing")
    assert model.grid_key("ddim") != model.grid_key("dpmpp_2m") == model.grid_key("unipc")  # never one batch
    with pytest.raises(ModelStoreError, match="other times"):
        engines[name].run([1, 2], STEPS[0], [0.0, 0.0], samplers=["ddim", "dpmpp_2m"])


@torch.no_grad()
def sd_reference(folder, sampler: str, prompt: str, negative: str, guidance: float, seed: int, steps: int):
    """StableDiffusionPipeline with its scheduler replaced by the sampler's, `from_config` of the pipeline's own:
    (the final latents (1, 4, h, w), the image as a float (1, 3, H, W) tensor in [0, 1] before quantisation)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    pipe.scheduler = multistep_scheduler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=prompt, negative_prompt=negative, guidance_scale=guidance, num_inference_steps=steps)
    latents = pipe(**kwargs, generator=torch.Generator().manual_seed(seed), output_type="latent").images.float()
    image = pipe(**kwargs, generator=torch.Generator().manual_seed(seed), output_type="pt").images.float()
    return latents, image


@pytest.mark.slow
def test_stable_diffusion_with_a_prompt_and_a_negative_prompt_is_diffusers(tmp_path):
    pytest.importorskip("transformers")
    from sd_pipelines import save_sd_pipeline

    from model_store.importers.diffusers_sd import import_sd
    from model_store.sd_kind import prompts

    folder = save_sd_pipeline(tmp_path / "pipe", seed=3)
    store = Store(tmp_path / "models")
    import_sd(folder, "sd", store=store)
    engine = load_engine("sd", store=store, device="cpu")
    prompt, negative, guidance, seed = "a red heart", "a blue cat", 7.5, 21
    text = prompts(engine.manifest, prompt, guidance, negative)
    condition = engine.condition(text.prompt, text.guidance, text.negative_prompt)
    for sampler in SAMPLERS:
        for steps in STEPS:
            latents, picture = sd_reference(folder, sampler, prompt, negative, guidance, seed, steps)
            run = engine.run([seed], steps, [0.0], conditions=[condition], samplers=[sampler])
            ours = engine.model.final(last_step(run)).float().cpu()
            assert ours.shape == latents.shape
            difference = float((ours - latents).abs().max())
            assert difference <= SD_FLOAT_TOLERANCE, (sampler, steps, difference)  # the latents
            mine = engine.generate([seed], steps, [0.0], [condition], samplers=[sampler])[0]
            want = quantised(picture)[0]
            levels = int(np.abs(mine.astype(int) - want.astype(int)).max())
            print(f"stable diffusion {sampler} {steps} steps: latents {difference:.1e}, {levels} levels")  # pytest -s
            assert levels <= 2, (sampler, steps)
            assert saturation(want) < MAX_SATURATION and len(np.unique(want)) > 80


@torch.no_grad()
def img2img_reference(unet, scheduler, x0: torch.Tensor, seed: int, steps: int, strength: float) -> torch.Tensor:
    """diffusers' image-to-image with a multistep scheduler, as its img2img pipelines run it: `get_timesteps` (the last
    int(steps·strength) timesteps), the picture noised to the first of them with `add_noise` (ε: the seed's first
    draw), `set_begin_index` (an empty history), then `step` at each timestep."""
    scheduler.set_timesteps(steps)
    start = steps - min(int(steps * strength), steps)
    timesteps = scheduler.timesteps[start:]
    scheduler.set_begin_index(start)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x = scheduler.add_noise(x0, noise, timesteps[:1])
    for t in timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_image_to_image_starts_with_an_empty_history_as_set_begin_index(imported, engines, sampler):
    from worker.engine import PictureIn

    _, pipelines = imported
    unet, config = pipelines["ddim-sd"]
    engine = engines["ddim-sd"]
    picture = engine.generate([5], 20, [0.0])[0]  # a picture the model draws
    x0 = torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 127.5 - 1  # its model space, 2·p/255 − 1
    for strength in (0.4, 0.75):
        theirs = img2img_reference(unet, multistep_scheduler(sampler, config), x0, 3, 10, strength)
        rows = [PictureIn(picture, strength)]
        ours = engine.model.final(last_step(engine.run([3], 10, [0.0], starts=rows, samplers=[sampler])))
        difference = float((ours.float().cpu() - theirs).abs().max())
        assert difference <= FLOAT_TOLERANCE, (strength, difference)
        mine = engine.images(last_step(engine.run([3], 10, [0.0], starts=rows, samplers=[sampler])), rows)[0]
        assert np.abs(mine.astype(int) - image(theirs)[0].astype(int)).max() <= 2
        assert not np.array_equal(mine, picture)
