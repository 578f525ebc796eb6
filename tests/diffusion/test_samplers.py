"""The multistep samplers (diffusion.samplers) against diffusers' own schedulers, on an analytic network, and their
batch invariance: a row's bits never depend on the rows beside it, whichever their samplers."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion import diffusers_ddim, diffusers_multistep
from diffusion.ddim import DDIMRun, keras_grid, last_step
from diffusion.samplers import Level, get
from diffusion.samplers.dpmpp_2m import coefficients
from diffusion.samplers.unipc import corrector_rhos
from diffusion.schedule import offset_cosine
from model_store.diffusers_kind import multistep_scheduler, multistep_timesteps

SHAPE = (3, 8, 8)
CONFIGS = {
    "ddpm-linear": {},
    "scaled-leading-offset": {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "timestep_spacing": "leading",
        "steps_offset": 1,
    },
    "cosine-v-trailing": {
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
    },
    "sample-500": {"prediction_type": "sample", "num_train_timesteps": 500, "clip_sample": True},
}


def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for a network, row by row: its output depends on x and t only."""
    t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return 0.6 * torch.tanh(x) + 0.2 * torch.sin(3 * x + t / 300.0) + 0.05 * torch.cos(t / 100.0)


def reference(scheduler_cls: str, config: dict, steps: int, x_T: torch.Tensor) -> torch.Tensor:
    import diffusers

    scheduler = getattr(diffusers, scheduler_cls).from_config(diffusers.DDPMScheduler(**config).config)
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(network(x, torch.full((x.shape[0],), float(t))), t, x).prev_sample
    return x


def ours(sampler: str, config: dict, steps: int, x_T: torch.Tensor) -> torch.Tensor:
    settings = multistep_scheduler(config)
    grid = diffusers_multistep.grid(settings, multistep_timesteps(settings, steps))
    prediction = settings["prediction_type"]

    def read(out, x, alpha_bar):
        return diffusers_ddim.read(prediction, out, x, alpha_bar, None)

    n = x_T.shape[0]
    run = DDIMRun(network, [0] * n, steps, SHAPE, x_T=x_T, grid=grid, read=read, samplers=[sampler] * n, clip=1.0)
    return last_step(run).x


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("steps", [8, 20])
@pytest.mark.parametrize(
    ("sampler", "cls"), [("dpmpp_2m", "DPMSolverMultistepScheduler"), ("unipc", "UniPCMultistepScheduler")]
)
def test_the_multistep_samplers_match_diffusers(sampler, cls, config, steps):
    pytest.importorskip("diffusers")
    x_T = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(7))
    want = reference(cls, CONFIGS[config], steps, x_T)
    got = ours(sampler, CONFIGS[config], steps, x_T)
    assert want.abs().max() > 0.1  # a picture, not zeros
    assert torch.allclose(got, want, rtol=1e-4, atol=2e-5), float((got - want).abs().max())


def test_the_multistep_grid_is_the_schedulers():
    diffusers = pytest.importorskip("diffusers")
    for config in CONFIGS.values():
        for cls in (diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler):
            scheduler = cls.from_config(diffusers.DDPMScheduler(**config).config)
            scheduler.set_timesteps(12)
            settings = multistep_scheduler(dict(scheduler.config))
            grid = diffusers_multistep.grid(settings, multistep_timesteps(settings, 12))
            assert [int(g.time) for g in grid] == scheduler.timesteps.tolist()
            sigmas = scheduler.sigmas.double()
            assert [g.alpha_bar for g in grid] == pytest.approx((1 / (sigmas[:-1] ** 2 + 1)).tolist(), rel=1e-12)
            assert grid[-1].alpha_bar_prev == 1.0


def test_a_level_is_alpha_sigma_and_the_half_log_snr():
    level = Level.of(0.64)
    assert (level.alpha, level.sigma) == pytest.approx((0.8, 0.6))
    assert level.lam == pytest.approx(math.log(0.8 / 0.6))
    assert Level.of(1.0).lam == math.inf
    with pytest.raises(ValueError):
        Level.of(0.0)


def test_dpmpp_first_order_is_ddim_and_reaches_x0_at_zero_noise():
    s, t = Level.of(0.3), Level.of(0.6)
    a, b, c = coefficients(s, t, None)
    # DDIM at eta 0 in x0 form: x_t = α_t·x̂0 + σ_t·(x_s − α_s·x̂0)/σ_s
    assert (a, b, c) == pytest.approx((t.sigma / s.sigma, t.alpha - t.sigma / s.sigma * s.alpha, 0.0))
    assert coefficients(s, Level.of(1.0), None) == (0.0, 1.0, 0.0)


def test_the_unipc_corrector_weights_solve_its_system():
    h, r = 0.4, -0.7
    b_h = math.expm1(-h)
    rho_1, rho_2 = corrector_rhos(h, b_h, r)
    phi_2 = math.expm1(-h) / -h - 1
    phi_3 = phi_2 / -h - 0.5
    assert rho_1 + rho_2 == pytest.approx(phi_2 / b_h)
    assert r * rho_1 + rho_2 == pytest.approx(2 * phi_3 / b_h)
    assert corrector_rhos(h, b_h, None) == (0.0, 0.5)


def rows_alone_and_together(grid, samplers, x_T, drop_at=None):
    together = DDIMRun(network, list(range(len(samplers))), len(grid), SHAPE, x_T=x_T, grid=grid, samplers=samplers)
    for step in together:
        if drop_at is not None and step.step == drop_at:
            together.drop([0])
    final = step.x0_pred
    kept = list(range(len(samplers)))[1 if drop_at is not None else 0 :]
    for j, i in enumerate(kept):
        alone = DDIMRun(network, [i], len(grid), SHAPE, x_T=x_T[i : i + 1], grid=grid, samplers=[samplers[i]])
        assert torch.equal(last_step(alone).x0_pred[0], final[j]), samplers[i]


def test_rows_of_every_sampler_keep_their_bits_in_one_batch():
    grid = keras_grid(offset_cosine, 10)
    x_T = torch.randn((5, *SHAPE), generator=torch.Generator().manual_seed(3))
    rows_alone_and_together(grid, ["ddim", "dpmpp_2m", "unipc", "unipc", "dpmpp_2m"], x_T)


def test_a_row_that_leaves_changes_no_other_row():
    grid = keras_grid(offset_cosine, 10)
    x_T = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(4))
    rows_alone_and_together(grid, ["unipc", "dpmpp_2m", "unipc", "ddim"], x_T, drop_at=4)


def test_samplers_differ_and_ddim_is_unchanged_by_them():
    grid = keras_grid(offset_cosine, 10)
    x_T = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(5))
    images = {
        name: last_step(DDIMRun(network, [0], 10, SHAPE, x_T=x_T, grid=grid, samplers=[name])).x0_pred
        for name in ("ddim", "dpmpp_2m", "unipc")
    }
    plain = last_step(DDIMRun(network, [0], 10, SHAPE, x_T=x_T, grid=grid)).x0_pred
    assert torch.equal(images["ddim"], plain)
    assert not torch.equal(images["dpmpp_2m"], images["ddim"])
    assert not torch.equal(images["unipc"], images["dpmpp_2m"])


def test_a_multistep_sampler_takes_no_eta_and_no_harmonize():
    grid = keras_grid(offset_cosine, 4)
    with pytest.raises(ValueError, match="no eta"):
        DDIMRun(network, [0], 4, SHAPE, grid=grid, eta=0.5, samplers=["dpmpp_2m"])
    with pytest.raises(ValueError, match="no eta"):
        DDIMRun(network, [0], 4, SHAPE, grid=grid, harmonize=2, samplers=["unipc"])
    with pytest.raises(ValueError, match="unknown sampler"):
        get("euler")


def test_the_samplers_that_keep_a_history_are_the_ones_the_api_refuses_eta_for():
    from model_store.samplers import MULTISTEP, SAMPLERS, refusal

    assert {name for name in SAMPLERS if get(name).multistep} == MULTISTEP
    assert [name for name in SAMPLERS if get(name).clips] == ["ddim"]
    assert refusal("dpmpp_2m", eta=0.1)[0] == "eta" and refusal("unipc", harmonize=1)[0] == "harmonize"
    assert refusal("unipc", inverting=True)[0] == "sampler" and refusal("ddim", eta=1.0, harmonize=3) is None


@pytest.mark.parametrize("config", list(CONFIGS))
def test_the_multistep_step_bound_is_the_most_distinct_timesteps(config):
    diffusers = pytest.importorskip("diffusers")
    from model_store.diffusers_kind import multistep_max_steps

    settings = multistep_scheduler(CONFIGS[config])
    bound = multistep_max_steps(settings)
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.DDPMScheduler(**CONFIGS[config]).config)
    scheduler.set_timesteps(bound)
    assert multistep_timesteps(settings, bound) == scheduler.timesteps.tolist()
    assert len(set(scheduler.timesteps.tolist())) == bound
    with pytest.raises(ValueError, match=r"repeat or leave|steps must be in"):
        multistep_timesteps(settings, bound + 1)  # diffusers would divide by h = 0, or read past T
