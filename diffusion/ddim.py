"""DDIM sampling (Song et al. 2020) over the Keras example's time grid, from noise or from a picture.

`ddim_step` is pure: all randomness is passed in. The loop draws each sample's noise from its own
CPU `torch.Generator(seed)` (x_T first, then one draw per step when eta > 0), so a sample never
depends on the other samples in its batch. A row may start from a picture (`Picture`: image-to-image,
SDEdit, Meng et al. 2022) at a later grid step, with a mask (inpainting) and RePaint's resampling
(Lugmayr et al. 2022); the order of its draws is fixed (DDIMRun). Each row moves by its own sampler (DDIM, or a
multistep one: diffusion.samplers) on the run's one grid, so rows of every sampler share each network call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from diffusion.guidance import Guidance
from diffusion.samplers import History, predicted_x0
from diffusion.samplers import get as get_sampler
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


def forward_noise(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: Scalar) -> torch.Tensor:
    """x0 noised to the level alpha_bar (DDPM, Ho et al. 2020, eq. 4; the notes' x_t = √ᾱ·x0 + √(1−ᾱ)·ε)."""
    a = torch.as_tensor(alpha_bar, dtype=x0.dtype, device=x0.device)
    return torch.sqrt(a) * x0 + torch.sqrt(1 - a) * eps  # x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε


def keep(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The kept region (mask 0) of x replaced by `known`, the repainted one (mask 1) left:
    mask·x + (1 − mask)·known (RePaint, Lugmayr et al. 2022, eq. 8; StableDiffusionInpaintPipeline's blend)."""
    return mask * x + (1 - mask) * known  # x_{t-1} = m ⊙ x^unknown_{t-1} + (1 − m) ⊙ x^known_{t-1}


def jump(x_prev: torch.Tensor, z: torch.Tensor, alpha_bar: Scalar, alpha_bar_prev: Scalar) -> torch.Tensor:
    """RePaint's jump back from a step's end to its start (Lugmayr et al. 2022, Alg. 1 line 9, on the DDIM grid):
    x_t = √(ᾱ_t/ᾱ_prev)·x_prev + √(1−ᾱ_t/ᾱ_prev)·z, the forward process from ᾱ_prev to ᾱ_t (DDPM eq. 4 between
    two levels)."""
    a_t = torch.as_tensor(alpha_bar, dtype=x_prev.dtype, device=x_prev.device)
    ratio = a_t / torch.as_tensor(alpha_bar_prev, dtype=x_prev.dtype, device=x_prev.device)
    return torch.sqrt(ratio) * x_prev + torch.sqrt(1 - ratio) * z  # x_t ~ N(√(ᾱ_t/ᾱ_prev)·x_prev, (1−ᾱ_t/ᾱ_prev)·I)


def clamped(read: Read | None, clip: float | None) -> Read | None:
    """DDIM's reading of the network: the kind's (ε̂, x̂0), x̂0 clamped to ±clip (DDIMScheduler.step, 4.: `clip_sample`;
    ε̂ is not re-derived). `read` itself when the kind does not clamp."""
    if clip is None:
        return read

    def reading(out: torch.Tensor, x_t: torch.Tensor, alpha_bar: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        eps, x0 = read(out, x_t, alpha_bar) if read is not None else (out, None)
        return eps, (predicted_x0(x_t, eps, alpha_bar) if x0 is None else x0).clamp(-clip, clip)

    return reading


def start_step(steps: int, strength: float) -> int:
    """The first grid step an image-to-image row runs: of `steps`, the last int(steps·strength) run
    (diffusers' `get_timesteps`: t_start = N − min(int(N·strength), N)). `steps` means it runs none."""
    return steps - min(int(steps * strength), steps)


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
    x0_pred: torch.Tensor  # (B, C, H, W), normalised model space; a row that has not entered yet: its picture
    x: torch.Tensor  # x at the next time (a row that has not entered yet: its x at entry)
    active: list[bool] = field(default_factory=list)  # which current rows ran this step


@dataclass(frozen=True)
class Picture:
    """A row that starts from a picture: image-to-image (SDEdit), and with a mask inpainting."""

    x0: torch.Tensor  # (C, H, W) the picture in model space, float32 on the CPU
    start: int  # the first grid step the row runs (0..steps; steps: it runs none), see start_step
    mask: torch.Tensor | None = None  # (1, H, W) float in model space's size: 1 = repaint, 0 = keep


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

    **Rows of their own.** `gens` are the rows' generators (default: `generators(seeds)`; the engine may have
    drawn from them already). `latents` give some rows their x_T. A `pictures` row enters the run at its
    `start` step from x = √ᾱ·x0 + √(1−ᾱ)·ε (ᾱ of that step, ε its first draw) and makes no network call
    before: the network is called on the rows that run the step only, so an image-to-image row shares calls
    with seed rows. With a mask, after each step the kept region is the input noised to the step's end,
    √ᾱ_prev·x0 + √(1−ᾱ_prev)·ε with the same ε (as StableDiffusionInpaintPipeline does), and `harmonize`
    (one number, or one per row) is RePaint's resampling: after each step but the last, that many times, x_prev
    jumps back to the step's level with a fresh draw z and the step is run again.

    **Samplers.** `samplers` names each row's (diffusion.samplers; all DDIM by default), which keeps that row's solver
    state; DDIM alone reads x̂0 through the kind's clamp `clip`. A multistep row takes no eta and no `harmonize`.

    **The draws from each row's generator, in order** (part of the determinism contract):
    1. (a latent model's picture row: the VAE's latent sample, drawn by the engine before the run);
    2. x_T, or the picture's ε: one draw of the sample's shape (made also for a row given its latent, then
       replaced);
    3. for each step that the row runs, in step order: its eta noise (DDIM with eta > 0 only); then, for a masked row
       with `harmonize` N and a step other than the last, N times: the jump's z, then the re-run step's eta
       noise (eta > 0 only).
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
        pictures: Sequence[Picture | None] | None = None,
        harmonize: int | Sequence[int] = 0,
        gens: Sequence[torch.Generator] | None = None,
        latents: Sequence[torch.Tensor | None] | None = None,
        samplers: Sequence[str] | None = None,
        clip: float | None = None,
    ) -> None:
        self.eps_model, self.steps, self.shape, self.device = eps_model, steps, shape, device
        self.grid = list(grid) if grid is not None else keras_grid(schedule, steps)
        if len(self.grid) != steps:
            raise ValueError(f"a grid of {len(self.grid)} steps for a run of {steps}")
        self.read, self.clip = read, clip
        self.guidance = guidance  # per-sample text conditions: eps_model is then called with them (diffusion.guidance)
        n = len(seeds)
        self.gens = list(gens) if gens is not None else generators(seeds)
        self.pictures = list(pictures) if pictures is not None else [None] * n
        self.harmonize = [int(harmonize)] * n if isinstance(harmonize, int) else [int(h) for h in harmonize]
        if not len(self.gens) == len(self.pictures) == len(self.harmonize) == n:
            raise ValueError(f"{n} seeds, but {len(self.gens)} generators, {len(self.pictures)} pictures")
        noise = draw(self.gens, shape)  # x_T, or a picture's ε: the first draw of each sample's generator (2.)
        x = noise if x_T is None else x_T
        if latents is not None and any(latent is not None for latent in latents):
            x = x.clone()
            for i, latent in enumerate(latents):
                if latent is not None:
                    x[i] = latent
        self.starts = [0 if p is None else p.start for p in self.pictures]
        if any(not 0 <= s <= steps for s in self.starts):
            raise ValueError(f"a picture's start step must be in 0..{steps}")
        self.x0 = self.eps = self.mask = None  # (B, C, H, W) pictures, their ε, (B, 1, H, W) masks (1: repaint)
        if any(p is not None for p in self.pictures):
            x, self.x0, self.mask = x.clone(), torch.zeros_like(noise), torch.ones((n, 1, *shape[1:]))
            for i, p in enumerate(self.pictures):
                if p is None:
                    continue
                self.x0[i] = p.x0
                at = self.grid[p.start].alpha_bar if p.start < steps else 1.0  # a row that runs no step: x0
                x[i] = forward_noise(p.x0, noise[i], at)  # DDPM eq. 4, ε = the row's first draw
                if p.mask is not None:
                    self.mask[i] = p.mask
            self.x0, self.eps, self.mask = self.x0.to(device), noise.to(device), self.mask.to(device)
        self.masked = [p is not None and p.mask is not None for p in self.pictures]
        self.x = x.to(device)
        etas = torch.as_tensor(eta, dtype=torch.float64).reshape(-1)
        self.etas = etas.expand(n).clone() if etas.numel() == 1 else etas.clone()
        self.rows = list(range(n))  # original index of each current row
        self.samplers = [get_sampler(name) for name in (samplers if samplers is not None else ["ddim"] * n)]
        if len(self.samplers) != n:
            raise ValueError(f"{n} seeds, but {len(self.samplers)} samplers")
        for i, sampler in enumerate(self.samplers):
            if sampler.multistep and (self.etas[i] > 0 or self.harmonize[i] > 0):
                raise ValueError(f"{sampler.name} takes no eta and no harmonize (a row has eta {float(self.etas[i])})")
        self.histories = [History() for _ in range(n)]  # each row's solver state (diffusion.samplers)

    def drop(self, rows: Sequence[int]) -> None:
        """Remove current rows (indices into the current batch) from the rest of the run."""
        keep_rows = [i for i in range(len(self.rows)) if i not in set(rows)]
        self.x = self.x[keep_rows]
        self.gens = [self.gens[i] for i in keep_rows]
        self.etas = self.etas[keep_rows]
        self.rows = [self.rows[i] for i in keep_rows]
        for name in ("pictures", "harmonize", "starts", "masked", "samplers", "histories"):
            setattr(self, name, [getattr(self, name)[i] for i in keep_rows])
        if self.x0 is not None:
            self.x0, self.eps, self.mask = self.x0[keep_rows], self.eps[keep_rows], self.mask[keep_rows]

    def denoise(self, x: torch.Tensor, at: list[int], g: GridStep, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step k of the current rows `at`, whose x is `x`: one network call on those rows, then each row's update by
        its sampler (diffusion.samplers), a DDIM row with eta > 0 with noise from its generator. Returns (x_prev,
        x0_pred)."""
        times = torch.full((x.shape[0], 1, 1, 1), g.time, dtype=x.dtype, device=x.device)
        if self.guidance is None:
            out = self.eps_model(x, times)
        else:  # each sample with its own text condition, from one call of the conditioned network
            out = self.guidance(self.eps_model, x, times, [self.rows[i] for i in at])
        groups: dict[str, list[int]] = {}
        for j, i in enumerate(at):
            groups.setdefault(self.samplers[i].name, []).append(j)
        if len(groups) == 1:  # one sampler for every row (always, for jobs of one sampler)
            return self.update(x, out, at, g, k)
        x_prev, x0 = torch.empty_like(x), torch.empty_like(x)
        for js in groups.values():
            index = torch.tensor(js, device=x.device)
            x_prev[index], x0[index] = self.update(x[index], out[index], [at[j] for j in js], g, k)
        return x_prev, x0

    def update(
        self, x: torch.Tensor, out: torch.Tensor, at: list[int], g: GridStep, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The update of rows `at` of one sampler from the network's output `out` at x: the kind's reading (ε̂, x̂0;
        through its clamp for a sampler that `clips`), then the sampler's step."""
        sampler = self.samplers[at[0]]
        read = clamped(self.read, self.clip) if sampler.clips else self.read
        eps, x0 = read(out, x, g.alpha_bar) if read is not None else (out, None)
        if sampler.multistep:
            histories = [self.histories[i] for i in at]
            return sampler.step(x, eps, x0, g, k == self.steps - 1, histories)
        etas = self.etas[at] if len(at) < len(self.rows) else self.etas
        stochastic = etas > 0
        step_noise = None
        if bool(stochastic.any()):
            # Only samples with eta > 0 draw, so an eta = 0 sample's stream is unchanged.
            step_noise = torch.zeros(x.shape, dtype=torch.float32)
            for j in torch.nonzero(stochastic).flatten().tolist():
                step_noise[j] = torch.randn(self.shape, generator=self.gens[at[j]], dtype=torch.float32)
            step_noise = step_noise.to(x.device)
        eta_b = etas.reshape(-1, 1, 1, 1).to(device=x.device, dtype=x.dtype)
        return sampler.step(x, eps, x0, g, k == self.steps - 1, [], eta_b, step_noise)

    def known(self, x: torch.Tensor, x0: torch.Tensor, at: list[int], g: GridStep) -> tuple[torch.Tensor, ...]:
        """The masked rows among `at`: the kept region of x_prev replaced by the input noised to ᾱ_prev with the
        row's ε, and that of x0_pred by the input."""
        m = [j for j, i in enumerate(at) if self.masked[i]]
        if not m:
            return x, x0
        rows = [at[j] for j in m]
        x0_in, mask = self.x0[rows], self.mask[rows]
        x, x0 = x.clone(), x0.clone()
        x[m] = keep(x[m], forward_noise(x0_in, self.eps[rows], g.alpha_bar_prev), mask)
        x0[m] = keep(x0[m], x0_in, mask)
        return x, x0

    def resample(
        self, x: torch.Tensor, x0: torch.Tensor, at: list[int], g: GridStep, k: int
    ) -> tuple[torch.Tensor, ...]:
        """RePaint (Lugmayr et al. 2022, Alg. 1): each masked row of `at` with harmonize N jumps back to the step's
        level with a fresh z (its next draw) and runs the step again, N times."""
        for u in range(max((self.harmonize[i] for i in at if self.masked[i]), default=0)):
            m = [j for j, i in enumerate(at) if self.masked[i] and self.harmonize[i] > u]
            rows = [at[j] for j in m]
            z = draw([self.gens[i] for i in rows], self.shape).to(x.device)
            x_t = jump(x[m], z, g.alpha_bar, g.alpha_bar_prev)
            again, x0_again = self.known(*self.denoise(x_t, rows, g, k), rows, g)
            x, x0 = x.clone(), x0.clone()
            x[m], x0[m] = again, x0_again
        return x, x0

    def __iter__(self) -> Iterator[Step]:
        for k, g in enumerate(self.grid):
            if not self.rows:
                return
            active = [s <= k for s in self.starts]
            at = [i for i, a in enumerate(active) if a]
            if len(at) == len(self.rows):  # every row runs this step (always, without pictures)
                x, x0 = self.known(*self.denoise(self.x, at, g, k), at, g)
                if k < self.steps - 1:
                    x, x0 = self.resample(x, x0, at, g, k)
                self.x = x
            else:  # rows that have not entered make no call; they show their picture
                x0 = self.x0.clone()
                if at:
                    x_at, x0_at = self.known(*self.denoise(self.x[at], at, g, k), at, g)
                    if k < self.steps - 1:
                        x_at, x0_at = self.resample(x_at, x0_at, at, g, k)
                    self.x = self.x.clone()
                    self.x[at], x0[at] = x_at, x0_at
            yield Step(k + 1, self.steps, x0, self.x, active)


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
