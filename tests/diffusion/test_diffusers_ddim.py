"""diffusion.diffusers_ddim against diffusers' own DDIMScheduler: the grid, the alpha-bars and each step."""

from __future__ import annotations

import pytest
import torch

from diffusion import diffusers_ddim as dd
from diffusion.ddim import ddim_step
from model_store.diffusers_kind import max_steps

diffusers = pytest.importorskip("diffusers")

CONFIGS = [
    {},  # DDIMScheduler's defaults: linear, epsilon, leading, clip_sample, set_alpha_to_one
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1},
    {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"prediction_type": "sample", "timestep_spacing": "linspace", "set_alpha_to_one": False, "clip_sample": False},
    {"num_train_timesteps": 100, "clip_sample_range": 0.5, "set_alpha_to_one": False},
    {
        "trained_betas": torch.linspace(1e-4, 0.03, 200).tolist(),
        "num_train_timesteps": 200,
        "timestep_spacing": "trailing",
    },
    {
        "beta_schedule": "squaredcos_cap_v2",
        "rescale_betas_zero_snr": True,
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
        "clip_sample": False,
    },
]
STEPS = [1, 3, 10, 50, 100]


def ours(config: dict) -> dd.SchedulerConfig:
    settings = dict(config)
    return dd.SchedulerConfig.from_dict(settings)


@pytest.mark.parametrize("config", CONFIGS)
def test_alphas_cumprod_are_diffusers_bit_for_bit(config):
    theirs = diffusers.DDIMScheduler(**config)
    assert torch.equal(dd.alphas_cumprod(ours(config)), theirs.alphas_cumprod)
    assert dd.final_alpha_cumprod(ours(config), theirs.alphas_cumprod) == float(theirs.final_alpha_cumprod)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("steps", STEPS)
def test_grid_is_set_timesteps_and_steps_prev(config, steps):
    theirs = diffusers.DDIMScheduler(**config)
    cfg = ours(config)
    if steps > cfg.num_train_timesteps:
        with pytest.raises(ValueError):
            dd.timesteps(cfg, steps)
        return
    theirs.set_timesteps(steps)
    assert dd.timesteps(cfg, steps) == theirs.timesteps.tolist()
    for g, t in zip(dd.grid(cfg, steps), theirs.timesteps.tolist(), strict=True):
        prev = t - cfg.num_train_timesteps // steps  # step, 1., whatever the spacing
        assert g.time == float(t)
        assert g.alpha_bar == float(theirs.alphas_cumprod[t])
        want_prev = theirs.alphas_cumprod[prev] if prev >= 0 else theirs.final_alpha_cumprod
        assert g.alpha_bar_prev == float(want_prev)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_each_step_is_ddimscheduler_step(config, eta):
    """read() + the shared eq. 12 step == DDIMScheduler.step's prev_sample (clip keeps the unclipped eps)."""
    steps = 10
    theirs = diffusers.DDIMScheduler(**config)
    theirs.set_timesteps(steps)
    cfg = ours(config)
    gen = torch.Generator().manual_seed(7)
    for g, t in zip(dd.grid(cfg, steps), theirs.timesteps, strict=True):
        x = 1.5 * torch.randn((2, 3, 8, 8), generator=gen)
        out = 1.5 * torch.randn((2, 3, 8, 8), generator=gen)  # large: clipping happens
        noise = torch.randn((2, 3, 8, 8), generator=gen)
        want = theirs.step(out, t, x, eta=eta, variance_noise=noise if eta > 0 else None)
        eps, x0 = dd.read(cfg.prediction_type, out, x, g.alpha_bar, dd.clip_range(cfg))
        x_prev, x0_used = ddim_step(x, eps, g.alpha_bar, g.alpha_bar_prev, eta, noise if eta > 0 else None, x0=x0)
        assert torch.allclose(x0_used, want.pred_original_sample, rtol=1e-5, atol=1e-5)
        if g.alpha_bar == 0:  # zero terminal SNR: epsilon reads are infinite there; v and sample are finite
            continue
        assert torch.allclose(x_prev, want.prev_sample, rtol=1e-5, atol=2e-5), (
            t,
            (x_prev - want.prev_sample).abs().max(),
        )


def test_clip_sample_keeps_the_unclipped_eps_in_the_direction_term():
    cfg = dd.SchedulerConfig(clip_sample=True, clip_sample_range=0.1)
    x, out = torch.full((1, 1, 1, 1), 3.0), torch.full((1, 1, 1, 1), -2.0)
    eps, x0 = dd.read("epsilon", out, x, 0.5, dd.clip_range(cfg))
    assert float(eps) == -2.0 and float(x0) == pytest.approx(0.1)


def test_steps_beyond_the_training_timesteps_are_refused():
    cfg = dd.SchedulerConfig(num_train_timesteps=50)
    with pytest.raises(ValueError, match=r"1\.\.50"):
        dd.grid(cfg, 51)
    offset = dd.SchedulerConfig(steps_offset=1)
    assert max_steps({**offset.to_dict()}) == 999 and max_steps({**cfg.to_dict()}) == 50
    with pytest.raises(ValueError, match="outside"):
        dd.timesteps(offset, 1000)
    dd.timesteps(offset, 999)
