import math

import numpy as np
import pytest
import torch

from diffusion.ddim import ddim_step, sample, sample_loop, time_grid
from diffusion.denoiser import Denoiser
from diffusion.kernels import CallShapes
from diffusion.schedule import offset_cosine
from helpers import make_tiny_net


def reference_step(x, eps, a_t, a_prev, eta, z):
    """DDIM paper (Song et al. 2020) eq. 12 with sigma from eq. 16, in float64 numpy."""
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
    return np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * z, x0


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize(("a_t", "a_prev"), [(0.1, 0.3), (0.0004, 0.02), (0.5, 0.9025)])
def test_ddim_step_matches_equation_12(eta, a_t, a_prev):
    rng = np.random.default_rng(1)
    x, eps, z = (rng.standard_normal((4, 3, 8, 8)) for _ in range(3))
    want_x, want_x0 = reference_step(x, eps, a_t, a_prev, eta, z)
    got_x, got_x0 = ddim_step(
        torch.from_numpy(x), torch.from_numpy(eps), a_t, a_prev, eta, torch.from_numpy(z) if eta else None
    )
    assert got_x.dtype == torch.float64
    assert np.linalg.norm(got_x.numpy() - want_x) / np.linalg.norm(want_x) <= 1e-10
    assert np.linalg.norm(got_x0.numpy() - want_x0) / np.linalg.norm(want_x0) <= 1e-10


def test_ddim_step_per_sample_eta_and_tensor_alpha_bars():
    rng = np.random.default_rng(2)
    x, eps, z = (rng.standard_normal((2, 3, 4, 4)) for _ in range(3))
    etas = np.array([0.0, 1.0]).reshape(2, 1, 1, 1)
    got, _ = ddim_step(
        *(torch.from_numpy(a) for a in (x, eps)),
        torch.tensor(0.2, dtype=torch.float64),
        torch.tensor(0.4, dtype=torch.float64),
        torch.from_numpy(etas),
        torch.from_numpy(z),
    )
    for i, eta in enumerate([0.0, 1.0]):
        want, _ = reference_step(x[i], eps[i], 0.2, 0.4, eta, z[i])
        assert np.linalg.norm(got[i].numpy() - want) / np.linalg.norm(want) <= 1e-10


def test_eta_above_zero_needs_noise():
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x, x, 0.2, 0.4, 0.5)


def smooth_eps(x: torch.Tensor, t: float) -> torch.Tensor:
    """A fixed, smooth epsilon-model defined by the test: a function of x and t."""
    return 0.3 * torch.tanh(x) * (1 + t) + 0.1 * math.sin(3 * t)


def wrong_step(x_t, eps, a_t, a_prev, eta, noise=None):
    """A plausible bug: alpha_bar instead of its square root on the x0 term."""
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return a_prev * x0 + math.sqrt(1 - a_prev) * eps, x0


def invert_and_regenerate(step, x_image: torch.Tensor, n: int = 50, t_max: float = 0.8) -> float:
    """Relative L2 error of x after the DDIM ODE is run up from t = 0 to t_max (inversion) and back down.

    t_max = 0.8 (signal rate 0.95 -> 0.21): nearer t = 1 the x0 estimate divides by sqrt(alpha_bar) = 0.02,
    which multiplies the first-order discretisation error of inversion by up to 50.
    """
    ts = [t_max * k / n for k in range(n + 1)]
    ab = [offset_cosine(t)[0].item() ** 2 for t in ts]
    x = x_image.clone()
    for k in range(n):  # encode: the ODE run forwards in t
        x, _ = step(x, smooth_eps(x, ts[k]), ab[k], ab[k + 1], 0.0)
    for k in range(n, 0, -1):  # decode: the usual DDIM direction
        x, _ = step(x, smooth_eps(x, ts[k]), ab[k], ab[k - 1], 0.0)
    return (torch.linalg.norm(x - x_image) / torch.linalg.norm(x_image)).item()


INVERSION_TOLERANCE = 0.01  # relative L2; measured 2.9e-3 for 50 steps, 7e-4 for 200 (first order)


def test_ddim_inversion_round_trip_returns_to_x():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert invert_and_regenerate(ddim_step, x) <= INVERSION_TOLERANCE
    assert invert_and_regenerate(ddim_step, x, n=200) < invert_and_regenerate(ddim_step, x, n=50)
    assert invert_and_regenerate(wrong_step, x) > 10 * INVERSION_TOLERANCE, "the tolerance must catch a wrong step"


def test_time_grid_is_the_keras_grid():
    assert time_grid(4) == [(1.0, 0.75), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0)]
    with pytest.raises(ValueError):
        time_grid(0)


def test_loop_yields_every_step_and_the_first_draw_is_x_T():
    seen = []

    def eps_model(x, rate):
        seen.append((x.clone(), rate.clone()))
        return torch.zeros_like(x)

    steps = list(sample_loop(eps_model, [7], 5, (3, 4, 4)))
    assert [s.step for s in steps] == [1, 2, 3, 4, 5]
    x_T = torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(7))
    assert torch.equal(seen[0][0][0], x_T)
    assert seen[0][1].flatten().tolist() == pytest.approx([offset_cosine(1.0)[1].item()], rel=1e-6)
    # with eps = 0 the final x0 is x_T / sqrt(alpha_bar at t = 1), the last step's prediction
    x_last_in = seen[-1][0][0]
    assert torch.allclose(steps[-1].x0_pred[0], x_last_in / offset_cosine(0.2)[0].item(), rtol=1e-6)


def test_each_sample_has_its_own_noise_stream():
    denoiser = Denoiser(make_tiny_net(), [0.5] * 3, [0.25] * 3)
    shape = (3, 16, 16)
    alone = sample(denoiser, [5], 6, shape, eta=0.7)
    # the same seed in a batch with eta = 0 and eta = 1 neighbours
    mixed = sample(denoiser, [1, 5, 2], 6, shape, eta=[0.0, 0.7, 1.0])
    assert torch.equal(mixed[1], alone[0])
    assert not torch.equal(sample(denoiser, [5], 6, shape, eta=0.0)[0], alone[0]), "eta must matter"


@pytest.mark.parametrize("sizes", [(1,), (4,), "probed"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_seed_is_bit_identical_alone_or_in_any_batch(eta, sizes):
    denoiser = Denoiser(make_tiny_net(), [0.5] * 3, [0.25] * 3, channels_last=True)
    shape = (3, 16, 16)
    if sizes == "probed":  # oneDNN: call sizes that the probe found to keep a row's bits, padded up to
        denoiser.calibrate(shape, reference=8)
    else:
        denoiser.shapes = CallShapes(sizes)
    alone = [sample(denoiser, [s], 8, shape, eta=eta)[0] for s in range(8)]
    for batch in ([0, 1, 2, 3, 4, 5, 6, 7], [7, 3], [3, 0, 6], [5, 4, 3, 2, 1], list(range(8)) * 2 + [1]):
        together = sample(denoiser, batch, 8, shape, eta=eta)
        for row, seed in enumerate(batch):
            assert torch.equal(together[row], alone[seed]), f"seed {seed} changed in batch {batch}"


def test_equal_kernel_fingerprints_give_equal_outputs_at_any_thread_count():
    """Workers at other thread counts share a model only when their probes agree (worker.heartbeat)."""
    threads = torch.get_num_threads()
    shape = (3, 32, 32)
    try:
        results = {}
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            denoiser = Denoiser(make_tiny_net(image_size=32), [0.5] * 3, [0.25] * 3, channels_last=True)
            fingerprint = denoiser.calibrate(shape, reference=16).fingerprint
            results[n] = (fingerprint, sample(denoiser, [11, 12, 13], 6, shape, eta=0.5))
    finally:
        torch.set_num_threads(threads)
    # workers share a model only with equal fingerprints (worker.heartbeat): those must agree to the bit.
    # On the development CPU all three are one fingerprint (python -m bench.invariance).
    for fingerprint, out in results.values():
        same = [other for fp, other in results.values() if fp == fingerprint]
        assert all(torch.equal(out, other) for other in same)


def test_dropping_a_row_mid_run_leaves_the_others_unchanged():
    denoiser = Denoiser(make_tiny_net(), [0.5] * 3, [0.25] * 3)
    shape = (3, 16, 16)
    full = sample(denoiser, [1, 2, 3], 10, shape, eta=[0.0, 0.5, 1.0])
    run = sample_loop(denoiser, [1, 2, 3], 10, shape, eta=[0.0, 0.5, 1.0])
    for step in run:
        if step.step == 4:
            run.drop([1])  # seed 2 leaves after step 4
            assert run.rows == [0, 2]
    assert torch.equal(step.x0_pred[0], full[0]) and torch.equal(step.x0_pred[1], full[2])
    assert step.x0_pred.shape[0] == 2
