"""DDIM inversion against its definition: the inverse step undoes eq. 12, and refined inversion finds the x_k whose
forward step (eta 0) gives back x_{k+1}, on a fixed smooth ε-model in float64."""

import math

import pytest
import torch

from diffusion.ddim import ddim_step, keras_grid, last_step, sample_loop
from diffusion.denoiser import Denoiser
from diffusion.inversion import inverse_step, invert, network_calls
from diffusion.schedule import offset_cosine
from helpers import make_tiny_net


def smooth_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, smooth ε-model: a function of x and of each row's time."""
    return 0.3 * torch.tanh(x) * (1 + t) + 0.1 * torch.sin(3 * t)


def picture(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((2, 3, 6, 6), generator=gen, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize(("a", "a_next"), [(0.9, 0.5), (0.3, 0.01), (1.0, 0.8)])
def test_the_inverse_step_undoes_the_ddim_step_for_the_same_eps(a, a_next):
    x, eps = picture(1), picture(2)
    up = inverse_step(x, eps, a, a_next)
    down, _ = ddim_step(up, eps, a_next, a, 0.0)
    assert torch.allclose(down, x, rtol=0, atol=1e-12)


def forward_residuals(xs: list[torch.Tensor], x_image: torch.Tensor, grid, image_is_x0: bool) -> list[float]:
    """max |forward step of x_k − x_{k+1}| for every inverse step (the first one: |x̂0 − picture| for image_is_x0)."""
    lower = [x_image, *xs[:-1]]
    out = []
    for n, (x, below) in enumerate(zip(xs, lower, strict=True)):
        g = grid[len(grid) - 1 - n]
        t = torch.full((x.shape[0], 1, 1, 1), g.time, dtype=x.dtype)
        x_prev, x0 = ddim_step(x, smooth_eps(x, t), g.alpha_bar, g.alpha_bar_prev, 0.0)
        target = x0 if image_is_x0 and n == 0 else x_prev
        out.append((target - below).abs().max().item())
    return out


@pytest.mark.parametrize("image_is_x0", [True, False])
def test_refined_inversion_finds_the_x_whose_forward_step_gives_the_previous_one(image_is_x0):
    grid = keras_grid(offset_cosine, 10)
    x_image = picture(3)
    naive = [s.x for s in invert(smooth_eps, grid, x_image, image_is_x0=image_is_x0, refine=0)]
    refined = [s.x for s in invert(smooth_eps, grid, x_image, image_is_x0=image_is_x0, refine=60)]
    assert len(refined) == 10
    assert max(forward_residuals(refined, x_image, grid, image_is_x0)) < 1e-9
    assert max(forward_residuals(naive, x_image, grid, image_is_x0)) > 1e-3


def test_plain_ddim_from_a_refined_latent_gives_the_picture_back():
    grid = keras_grid(offset_cosine, 10)
    x_image = picture(4).float()
    errors = {}
    for refine in (0, 3, 30):
        *_, x_T = invert(smooth_eps, grid, x_image, image_is_x0=True, refine=refine)
        back = last_step(sample_loop(smooth_eps, [0, 0], 10, (3, 6, 6), x_T=x_T.x, grid=grid)).x0_pred
        errors[refine] = (back - x_image).abs().max().item()
    assert errors[30] < 1e-4 < errors[3] < errors[0]


def test_a_row_inverts_to_the_same_bits_alone_or_in_a_batch():
    shape = (3, 16, 16)
    denoiser = Denoiser(make_tiny_net(), [0.5] * 3, [0.25] * 3, channels_last=True)
    denoiser.calibrate(shape, reference=8)
    grid = keras_grid(offset_cosine, 6)
    pictures = torch.rand((5, *shape), generator=torch.Generator().manual_seed(5)) * 2 - 1
    *_, together = invert(denoiser, grid, pictures, image_is_x0=True, refine=2)
    for i in range(5):
        *_, alone = invert(denoiser, grid, pictures[i : i + 1], image_is_x0=True, refine=2)
        assert torch.equal(alone.x[0], together.x[i])


def test_network_calls_and_refusals():
    assert network_calls(50, 0) == 50 and network_calls(50, 2) == 150
    with pytest.raises(ValueError, match="refine"):
        list(invert(smooth_eps, keras_grid(offset_cosine, 2), picture(), refine=-1))
    assert math.isfinite(next(iter(invert(smooth_eps, keras_grid(offset_cosine, 2), picture()))).x.sum().item())
