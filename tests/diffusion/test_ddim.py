import math

import numpy as np
import pytest
import torch

from diffusion.ddim import (
    Picture,
    ddim_step,
    forward_noise,
    generators,
    jump,
    keep,
    sample,
    sample_loop,
    start_step,
    time_grid,
)
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


# Pictures in: image-to-image, inpainting, RePaint, latents.


def probed_denoiser(shape=(3, 16, 16)) -> Denoiser:
    """The tiny net with the call sizes its probe keeps (padded up to, as the engine calls it)."""
    denoiser = Denoiser(make_tiny_net(), [0.5] * 3, [0.25] * 3, channels_last=True)
    denoiser.calibrate(shape, reference=8)
    return denoiser


def a_picture(seed: int, shape=(3, 16, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def left_half_kept(shape=(3, 16, 16)) -> torch.Tensor:
    mask = torch.ones((1, *shape[1:]))
    mask[..., : shape[2] // 2] = 0  # keep the left half, repaint the right
    return mask


@pytest.mark.parametrize("steps", [1, 7, 10, 50])
@pytest.mark.parametrize("strength", [0.0, 0.05, 0.3, 0.5, 0.75, 0.99, 1.0])
def test_start_step_is_diffusers_get_timesteps(steps, strength):
    from types import SimpleNamespace

    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler()
    scheduler.set_timesteps(steps)
    pipe = SimpleNamespace(scheduler=scheduler)
    timesteps, runs = diffusers.StableDiffusionImg2ImgPipeline.get_timesteps(pipe, steps, strength, "cpu")
    start = start_step(steps, strength)
    assert runs == steps - start == len(timesteps)
    assert timesteps.tolist() == scheduler.timesteps[start:].tolist()


def test_forward_noise_jump_and_keep_are_their_equations():
    rng = np.random.default_rng(3)
    x0, eps, z, x = (torch.from_numpy(rng.standard_normal((2, 3, 4, 4))) for _ in range(4))
    mask = torch.from_numpy((rng.random((2, 1, 4, 4)) > 0.5).astype(np.float64))
    assert torch.allclose(forward_noise(x0, eps, 0.36), 0.6 * x0 + 0.8 * eps, rtol=1e-12)
    assert torch.allclose(jump(x, z, 0.3, 0.6), math.sqrt(0.5) * x + math.sqrt(0.5) * z, rtol=1e-12)
    kept = keep(x, x0, mask)
    assert torch.equal(kept, torch.where(mask.bool(), x, x0))  # exact for a 0/1 mask
    # a jump from ᾱ_prev to ᾱ of the forward-noised x0 has the statistics of x0 noised to ᾱ
    big = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    jumped = jump(forward_noise(torch.ones_like(big), big, 0.6), noise, 0.3, 0.6)
    assert jumped.mean().item() == pytest.approx(math.sqrt(0.3), abs=0.01)
    assert jumped.var().item() == pytest.approx(0.7, abs=0.01)


def test_a_picture_row_enters_at_its_start_step_from_its_noised_picture():
    denoiser, shape, steps = probed_denoiser(), (3, 16, 16), 10
    x0 = a_picture(0)
    run = sample_loop(denoiser, [4], steps, shape, eta=0.5, pictures=[Picture(x0, 6)])
    grid = run.grid
    # the same: DDIM over the last 4 steps of the grid from x0 noised with the seed's first draw
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    x_T = forward_noise(x0, eps, grid[6].alpha_bar)[None]  # its x_T draw is ε, then eta noise per step
    steps_seen = list(run)
    want = sample_loop(denoiser, [4], 4, shape, eta=0.5, grid=grid[6:], x_T=x_T)
    assert [s.active for s in steps_seen] == [[False]] * 6 + [[True]] * 4
    assert all(torch.equal(s.x0_pred[0], x0) for s in steps_seen[:6])  # not entered: it shows its picture
    for ours, theirs in zip(steps_seen[6:], want, strict=True):
        assert torch.equal(ours.x0_pred, theirs.x0_pred) and torch.equal(ours.x, theirs.x)


def test_strength_zero_runs_no_step_and_makes_no_call():
    calls = []

    def eps_model(x, t):
        calls.append(x.shape[0])
        return torch.zeros_like(x)

    x0 = a_picture(1, (3, 4, 4))
    run = sample_loop(eps_model, [1, 2], 5, (3, 4, 4), pictures=[Picture(x0, 5), None])
    for step in run:
        assert step.active == [False, True]
        assert torch.equal(step.x0_pred[0], x0) and torch.equal(step.x[0], x0)
    assert calls == [1] * 5  # the seed row alone, each step
    only = list(sample_loop(eps_model, [1], 3, (3, 4, 4), pictures=[Picture(x0, 3)]))
    assert len(only) == 3 and calls == [1] * 5 and torch.equal(only[-1].x0_pred[0], x0)


def run_rows(denoiser, seeds, pictures, etas, steps=8, harmonize=0, drop_at=None, drop=()):
    run = sample_loop(denoiser, seeds, steps, (3, 16, 16), eta=etas, pictures=pictures, harmonize=harmonize)
    for step in run:
        if step.step == drop_at:
            run.drop(list(drop))
    return step


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_picture_row_is_bit_identical_alone_batched_with_seeds_and_after_a_drop(eta):
    denoiser = probed_denoiser()
    mask = left_half_kept()
    rows = [
        (11, Picture(a_picture(2), 3)),
        (12, None),
        (13, Picture(a_picture(3), 5, mask)),
        (14, Picture(a_picture(4), 0)),
        (15, None),
    ]
    alone = [run_rows(denoiser, [s], [p], [eta], harmonize=2) for s, p in rows]
    together = run_rows(denoiser, [s for s, _ in rows], [p for _, p in rows], [eta] * 5, harmonize=2)
    for i, one in enumerate(alone):
        assert torch.equal(together.x0_pred[i], one.x0_pred[0]) and torch.equal(together.x[i], one.x[0]), i
    dropped = run_rows(
        denoiser, [s for s, _ in rows], [p for _, p in rows], [eta] * 5, harmonize=2, drop_at=4, drop=(1, 3)
    )
    for j, i in enumerate([0, 2, 4]):
        assert torch.equal(dropped.x0_pred[j], alone[i].x0_pred[0]) and torch.equal(dropped.x[j], alone[i].x[0])


def test_no_pictures_and_own_generators_leave_a_run_unchanged():
    denoiser, shape = probed_denoiser(), (3, 16, 16)
    plain = sample(denoiser, [1, 2, 3], 6, shape, eta=[0.0, 0.5, 1.0])
    same = sample(denoiser, [1, 2, 3], 6, shape, eta=[0.0, 0.5, 1.0], pictures=[None] * 3, gens=generators([1, 2, 3]))
    assert torch.equal(plain, same)


def test_a_latent_replaces_x_T_after_its_draw():
    denoiser, shape = probed_denoiser(), (3, 16, 16)
    latent = torch.randn(shape, generator=torch.Generator().manual_seed(99))
    given = sample(denoiser, [5, 6], 6, shape, eta=1.0, latents=[latent, None])
    x_T = torch.stack([latent, torch.randn(shape, generator=torch.Generator().manual_seed(6))])
    assert torch.equal(given, sample(denoiser, [5, 6], 6, shape, eta=1.0, x_T=x_T))


@pytest.mark.parametrize("harmonize", [0, 3])
def test_inpainting_keeps_the_kept_region_at_every_step(harmonize):
    denoiser, shape = probed_denoiser(), (3, 16, 16)
    x0, mask = a_picture(5), left_half_kept()
    run = sample_loop(denoiser, [7], 6, shape, eta=0.5, pictures=[Picture(x0, 0, mask)], harmonize=harmonize)
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    kept = mask[0] == 0
    for step, g in zip(run, run.grid, strict=True):
        known = forward_noise(x0, eps, g.alpha_bar_prev)
        assert torch.equal(step.x[0][:, kept], known[:, kept])
        assert torch.equal(step.x0_pred[0][:, kept], x0[:, kept])
        assert not torch.equal(step.x[0][:, ~kept], known[:, ~kept])


def test_harmonize_changes_the_repainted_region_only_deterministically_and_draws_in_order():
    denoiser, shape, steps = probed_denoiser(), (3, 16, 16), 6
    x0, mask = a_picture(6), left_half_kept()
    picture = [Picture(x0, 2, mask)]
    base = run_rows(denoiser, [8], picture, [1.0], steps=steps)
    once = run_rows(denoiser, [8], picture, [1.0], steps=steps, harmonize=2)
    again = run_rows(denoiser, [8], picture, [1.0], steps=steps, harmonize=2)
    kept = mask[0] == 0
    assert torch.equal(once.x0_pred, again.x0_pred) and torch.equal(once.x, again.x)
    assert torch.equal(once.x0_pred[0][:, kept], base.x0_pred[0][:, kept])
    assert not torch.equal(once.x0_pred[0][:, ~kept], base.x0_pred[0][:, ~kept])
    # the documented order: ε, then per step run: eta noise, then per jump (not at the last step): z, eta noise
    run = sample_loop(denoiser, [8], steps, shape, eta=1.0, pictures=picture, harmonize=2)
    for _ in run:
        pass
    runs = steps - 2
    draws = 1 + runs + (runs - 1) * 2 * 2
    gen = torch.Generator().manual_seed(8)
    for _ in range(draws):
        torch.randn(shape, generator=gen)
    assert torch.equal(run.gens[0].get_state(), gen.get_state())
