"""DDIM sampling (Song et al. 2020) over the Keras example's time grid.

`ddim_step` is pure: all randomness is passed in. The loop draws each sample's noise from its own
CPU `torch.Generator(seed)` (x_T first, then one draw per step when eta > 0), so a sample never
depends on the other samples in its batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from diffusion.guidance import Guidance
from diffusion.schedule import Schedule, offset_cosine

Scalar = float | torch.Tensor
# eps_model(x_t, time) -> the network's output (predicted noise unless `read` says otherwise); time is (B, 1, 1, 1).
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# read(output, x_t, alpha_bar_t) -> (eps, x0 or None): a kind's parameterisation (None: x0 from eps, eq. 12).
Read = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor | None]]


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t: Scalar,
    alpha_bar_prev: Scalar,
    eta: Scalar,
    noise: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from x_t to x_prev (DDIM paper, eq. 12). Returns (x_prev, x0_pred).

    `x0`, when given, is used instead of the x0 derived from eps (a kind that predicts x0 or v, or clips)."""
    a_t = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype, device=x_t.device)
    a_prev = torch.as_tensor(alpha_bar_prev, dtype=x_t.dtype, device=x_t.device)
    eta = torch.as_tensor(eta, dtype=x_t.dtype, device=x_t.device)
    x0_pred = (x_t - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t) if x0 is None else x0  # "predicted x0"
    # Eq. 16: sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    # (clamped at 0 so that eta = 0 also runs the ODE backwards, a_prev < a_t, for DDIM inversion)
    sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t)) * torch.sqrt(torch.clamp(1 - a_t / a_prev, min=0))
    direction = torch.sqrt(torch.clamp(1 - a_prev - sigma**2, min=0)) * eps  # "direction pointing to x_t"
    x_prev = torch.sqrt(a_prev) * x0_pred + direction  # Eq. 12
    if bool((eta > 0).any()):
        if noise is None:
            raise ValueError("ddim_step needs `noise` when eta > 0")
        x_prev = x_prev + sigma * noise  # Eq. 12: "random noise"
    return x_prev, x0_pred


def time_grid(steps: int) -> list[tuple[float, float]]:
    """Keras example: step k = 0..N-1 runs at t_k = 1 - k/N and moves to t_k - 1/N."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    return [(1.0 - k / steps, 1.0 - (k + 1) / steps) for k in range(steps)]


@dataclass(frozen=True)
class GridStep:
    """One step of a run: the network's time input, and the alpha-bars it moves between."""

    time: float  # what the network is called with (the Keras grid: the noise rate at t)
    alpha_bar: float
    alpha_bar_prev: float


def keras_grid(schedule: Schedule, steps: int) -> list[GridStep]:
    """The Keras example's grid over a continuous-time schedule: alpha_bar = signal_rate**2 at t_k and t_k - 1/N."""
    grid = []
    for t, t_next in time_grid(steps):
        signal, noise_rate = schedule(t)
        signal_next, _ = schedule(t_next)
        grid.append(GridStep(float(noise_rate), float(signal) ** 2, float(signal_next) ** 2))
    return grid


@dataclass(frozen=True)
class Step:
    """What the sampling loop yields after each step: k in 1..steps and the x0 prediction."""

    step: int
    steps: int
    x0_pred: torch.Tensor  # (B, C, H, W), normalised model space
    x: torch.Tensor  # x at the next time


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def draw(gens: Sequence[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal draw of `shape` per generator, stacked: (B, *shape), float32 on the CPU."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])


class DDIMRun:
    """DDIM from each seed's x_T over a grid (`grid`, else the Keras grid of `schedule`); iterating yields every
    step's x0 prediction. `read` maps the network's output to (eps, x0) (a kind's parameterisation).
    With `guidance`, `eps_model` takes each row's condition and the samples are guided (diffusion.guidance).

    Rows can leave between steps (`drop`), e.g. a canceled job: the others are unaffected, since each
    row has its own noise stream and the network's output for a row does not depend on its batch.
    """

    def __init__(
        self,
        eps_model: EpsModel,
        seeds: Sequence[int],
        steps: int,
        shape: tuple[int, int, int],
        eta: Scalar | Sequence[float] = 0.0,
        schedule: Schedule = offset_cosine,
        device: torch.device | str = "cpu",
        x_T: torch.Tensor | None = None,
        grid: Sequence[GridStep] | None = None,
        read: Read | None = None,
        guidance: Guidance | None = None,
    ) -> None:
        self.eps_model, self.steps, self.shape, self.device = eps_model, steps, shape, device
        self.grid = list(grid) if grid is not None else keras_grid(schedule, steps)
        if len(self.grid) != steps:
            raise ValueError(f"a grid of {len(self.grid)} steps for a run of {steps}")
        self.read = read
        self.guidance = guidance  # per-sample text conditions: eps_model is then called with them (diffusion.guidance)
        self.gens = generators(seeds)
        noise = draw(self.gens, shape)  # x_T: the first draw of each sample's generator
        self.x = (noise if x_T is None else x_T).to(device)
        etas = torch.as_tensor(eta, dtype=torch.float64).reshape(-1)
        self.etas = etas.expand(len(seeds)).clone() if etas.numel() == 1 else etas.clone()
        self.rows = list(range(len(seeds)))  # original index of each current row

    def drop(self, rows: Sequence[int]) -> None:
        """Remove current rows (indices into the current batch) from the rest of the run."""
        keep = [i for i in range(len(self.rows)) if i not in set(rows)]
        self.x = self.x[keep]
        self.gens = [self.gens[i] for i in keep]
        self.etas = self.etas[keep]
        self.rows = [self.rows[i] for i in keep]

    def __iter__(self) -> Iterator[Step]:
        for k, g in enumerate(self.grid):
            if not self.rows:
                return
            x = self.x
            times = torch.full((x.shape[0], 1, 1, 1), g.time, dtype=x.dtype, device=x.device)
            if self.guidance is None:
                out = self.eps_model(x, times)
            else:  # each sample with its own text condition, from one call of the conditioned network
                out = self.guidance(self.eps_model, x, times, self.rows)
            eps, x0_given = self.read(out, x, g.alpha_bar) if self.read is not None else (out, None)
            stochastic = self.etas > 0
            step_noise = None
            if bool(stochastic.any()):
                # Only samples with eta > 0 draw, so an eta = 0 sample's stream is unchanged.
                step_noise = torch.zeros(x.shape, dtype=torch.float32)
                for i in torch.nonzero(stochastic).flatten().tolist():
                    step_noise[i] = torch.randn(self.shape, generator=self.gens[i], dtype=torch.float32)
                step_noise = step_noise.to(x.device)
            eta_b = self.etas.reshape(-1, 1, 1, 1).to(device=x.device, dtype=x.dtype)
            self.x, x0 = ddim_step(x, eps, g.alpha_bar, g.alpha_bar_prev, eta_b, step_noise, x0=x0_given)
            yield Step(k + 1, self.steps, x0, self.x)


# DDIM from each seed's x_T; iterate it for every step's x0 prediction (progress, previews, cancel).
sample_loop = DDIMRun


def last_step(steps: Iterable[Step]) -> Step:
    """Run a sampling loop to its end."""
    (last,) = deque(steps, maxlen=1)
    return last


def sample(
    eps_model: EpsModel, seeds: Sequence[int], steps: int, shape: tuple[int, int, int], **kwargs
) -> torch.Tensor:
    """Run the loop to the end and return the last step's x0 prediction (normalised model space)."""
    return last_step(sample_loop(eps_model, seeds, steps, shape, **kwargs)).x0_pred
