"""Training loop of the Keras DDIM recipe: predict the noise, mean absolute error, AdamW, EMA.

A run directory holds `run.json` (the recipe), `checkpoint.pt` (online weights, EMA, optimiser,
step and RNG state; read back with weights_only=True), `loss.csv` and `samples/step_*.png`.
A resumed run continues bit for bit towards its total step count.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from diffusion.data import channel_stats, load_images, to_tensor
from diffusion.ddim import sample
from diffusion.denoiser import Denoiser
from diffusion.ema import EMAWarmup, ema_update
from diffusion.grid import make_grid
from diffusion.schedule import get_schedule
from diffusion.unet import UNet, UNetConfig

CHECKPOINT = "checkpoint.pt"
RUN_JSON = "run.json"
LOSS_CSV = "loss.csv"
MIN_STD = 1e-3


class RunError(ValueError):
    """The run directory cannot be started or resumed as asked."""


@dataclass
class TrainConfig:
    data: str
    steps: int
    image_size: int = 32
    batch_size: int = 64
    widths: tuple[int, ...] = (32, 64, 96, 128)
    block_depth: int = 2
    schedule: str = "offset_cosine"
    learning_rate: float = 1e-3
    # "constant" (the Keras example) or "cosine": annealed from learning_rate to 0 over the run's steps.
    lr_decay: str = "constant"
    weight_decay: float = 1e-4
    # P2 weighting (Choi et al. 2022, eq. 8) of the noise loss: 1 / (p2_k + SNR)^p2_gamma; 0: unweighted (Keras).
    p2_gamma: float = 0.0
    p2_k: float = 1.0
    ema_max: float = 0.999
    ema_power: float = 2.0 / 3.0
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 1000
    sample_steps: int = 20
    sample_count: int = 16
    npz_key: str | None = None
    # Prompts (0: none): word ids per caption, `text_tokens` per prompt, embedded in `text_dims`. A share
    # `prompt_dropout` of the samples sees the empty prompt, for classifier-free guidance (Ho & Salimans 2022).
    text_tokens: int = 0
    text_dims: int = 64
    prompt_dropout: float = 0.15
    # A warm start: the store model (NAME@VERSION sha256:DIGEST) whose weights the network starts from.
    # Layers it lacks (the text encoder, FiLM) keep their initialisation; FiLM's zero init makes the
    # conditioned U-Net start as exactly that model.
    init: str | None = None
    recipe: dict = field(default_factory=dict)  # free-form: command line, notes

    def unet_config(self, text_vocab: int = 0) -> UNetConfig:
        text = {"text_vocab": text_vocab, "text_tokens": self.text_tokens, "text_dims": self.text_dims}
        return UNetConfig(
            self.image_size, widths=tuple(self.widths), block_depth=self.block_depth, **(text if text_vocab else {})
        )

    # Changing these would make a resumed run a different run.
    FIXED = (
        "data",
        "image_size",
        "batch_size",
        "widths",
        "block_depth",
        "schedule",
        "learning_rate",
        "lr_decay",
        "weight_decay",
        "p2_gamma",
        "p2_k",
        "ema_max",
        "ema_power",
        "seed",
        "npz_key",
        "text_tokens",
        "text_dims",
        "prompt_dropout",
        "init",
    )


@dataclass
class TrainState:
    step: int
    model: UNet
    ema: UNet
    optimizer: torch.optim.Optimizer
    rng: torch.Generator
    elapsed_s: float


def epoch_batch(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the step's batch: epoch-wise permutations from Generator(seed, epoch), dropping the tail."""
    per_epoch = max(1, n // batch_size)
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    if n < batch_size:  # tiny data sets: repeat the permutation to fill a batch
        perm = perm.repeat(-(-batch_size // n))
    return perm[offset * batch_size : (offset + 1) * batch_size]


LR_DECAYS = ("constant", "cosine")


def learning_rate(base: float, decay: str, step: int, steps: int) -> float:
    """The learning rate of optimiser step `step` (0-based) of a run of `steps`.

    cosine: eta_t = base * (1 + cos(pi * t / T)) / 2, SGDR (Loshchilov & Hutter 2017, eq. 5) with
    eta_min = 0 and a single cycle; a pure function of the step, so a resumed run keeps it."""
    if decay == "constant":
        return base
    if decay == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    raise RunError(f"unknown learning-rate decay {decay!r}; choose one of {', '.join(LR_DECAYS)}")


def p2_weight(signal_rate: torch.Tensor, noise_rate: torch.Tensor, gamma: float, k: float) -> torch.Tensor:
    """lambda'_t = 1 / (k + SNR(t))^gamma, SNR = alpha_t / (1 - alpha_t) = (signal / noise)^2 (Choi et al. 2022,
    eq. 8, with lambda_t = 1 of L_simple): the noisy steps, where a sample's content is decided, weigh more."""
    return (k + (signal_rate / noise_rate) ** 2) ** -gamma


def diffusion_loss(
    model: UNet,
    images: torch.Tensor,
    schedule_name: str,
    rng: torch.Generator,
    prompts: torch.Tensor | None = None,
    prompt_dropout: float = 0.0,
    p2: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """MAE between the true and predicted noise at uniform t (Keras example's train_step).

    With prompts (B, T), each sample sees the empty prompt with probability `prompt_dropout`. With
    p2 = (gamma, k), gamma > 0, each sample's MAE is weighted by p2_weight."""
    b = images.shape[0]
    noises = torch.randn(images.shape, generator=rng)
    t = torch.rand((b, 1, 1, 1), generator=rng, dtype=torch.float64)
    signal, noise_rate = (r.to(torch.float32) for r in get_schedule(schedule_name)(t))
    noisy = signal * images + noise_rate * noises  # x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
    if prompts is not None:
        dropped = torch.rand((b, 1), generator=rng) < prompt_dropout  # Ho & Salimans 2022, Algorithm 1
        prompts = torch.where(dropped, model.empty_prompt, prompts)
    predicted = model(noisy, noise_rate**2, prompts)
    if p2[0] == 0:
        return F.l1_loss(predicted, noises)
    per_sample = (predicted - noises).abs().mean(dim=(1, 2, 3))
    return (p2_weight(signal, noise_rate, *p2).flatten() * per_sample).mean()


def new_state(cfg: TrainConfig, unet: UNetConfig, init: dict[str, torch.Tensor] | None = None) -> TrainState:
    torch.manual_seed(cfg.seed)
    model = UNet(unet)
    if init is not None:
        warm_start(model, init)
    ema = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    rng = torch.Generator().manual_seed(cfg.seed)
    return TrainState(0, model, ema, optimizer, rng, 0.0)


def warm_start(model: UNet, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `model`; only the prompt layers may be missing from it, and nothing may be extra."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise RunError(f"the initial weights do not fit this U-Net ({str(exc).splitlines()[-1].strip()})") from None
    foreign = [k for k in missing if not (k.startswith("text.") or ".film." in k)]
    if foreign or unexpected:
        raise RunError(f"the initial weights do not fit this U-Net (missing {foreign[:3]}, extra {unexpected[:3]})")


def save_checkpoint(run_dir: Path, state: TrainState) -> None:
    payload = {
        "step": state.step,
        "model": state.model.state_dict(),
        "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "rng": state.rng.get_state(),
        "torch_rng": torch.get_rng_state(),
        "elapsed_s": state.elapsed_s,
    }
    tmp = run_dir / (CHECKPOINT + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, run_dir / CHECKPOINT)  # atomic: a crash leaves the previous checkpoint


def load_checkpoint(run_dir: Path, cfg: TrainConfig, unet: UNetConfig) -> TrainState:
    state = new_state(cfg, unet)
    payload = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    state.model.load_state_dict(payload["model"])
    state.ema.load_state_dict(payload["ema"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.rng.set_state(payload["rng"])
    torch.set_rng_state(payload["torch_rng"])
    state.step, state.elapsed_s = int(payload["step"]), float(payload["elapsed_s"])
    return state


def read_run(run_dir: Path) -> dict:
    return json.loads((run_dir / RUN_JSON).read_text())


def hardware() -> dict:
    return {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def prepare_run(
    cfg: TrainConfig, run_dir: Path, resume: bool, vocabulary: dict | None = None, init: dict | None = None
) -> tuple[TrainState, dict]:
    """Create a run directory or reopen one, checking that the recipe (and vocabulary) is unchanged."""
    learning_rate(cfg.learning_rate, cfg.lr_decay, 0, cfg.steps)  # an unknown decay fails before any work
    if cfg.p2_gamma < 0 or cfg.p2_k <= 0:  # k = 0 would weigh pure noise (SNR 0) infinitely
        raise RunError(f"P2 needs gamma >= 0 and k > 0, not gamma {cfg.p2_gamma} and k {cfg.p2_k}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CHECKPOINT).exists():
        if not resume:
            raise RunError(f"{run_dir} already holds a run; pass --resume to continue it")
        run = read_run(run_dir)
        old = run["config"]
        defaults = {f.name: f.default for f in fields(TrainConfig)}  # a run from before an option had its default
        changed = [k for k in TrainConfig.FIXED if json.dumps(old.get(k, defaults[k])) != json.dumps(asdict(cfg)[k])]
        if run.get("vocabulary") != vocabulary:
            changed.append("vocabulary")
        if cfg.lr_decay != "constant" and old["steps"] != cfg.steps:  # the decay is spread over the steps
            changed.append(f"steps under the {cfg.lr_decay} learning-rate decay")
        if changed:
            raise RunError(f"{run_dir}: cannot resume with a changed {', '.join(changed)}")
        run["config"]["steps"] = cfg.steps
        state = load_checkpoint(run_dir, cfg, UNetConfig.from_dict(run["unet"]))
        if cfg.recipe:  # keep the history: each resume, from which step, with which command line
            run.setdefault("resumes", []).append({"from_step": state.step, **cfg.recipe})
        return state, run
    images = load_images(cfg.data, cfg.image_size, cfg.npz_key)
    mean, std = channel_stats(images)
    if init is not None:  # the network keeps the input statistics it was trained with
        mean, std = init["mean"], init["std"]
    unet = cfg.unet_config(len(vocabulary["words"]) + 2 if vocabulary else 0)  # + PAD and START
    run = {
        "config": {**asdict(cfg), "widths": list(cfg.widths)},
        "unet": unet.to_dict(),
        "normalization": {"mean": mean, "std": [max(s, MIN_STD) for s in std]},
        "data": {"path": str(cfg.data), "images": int(images.shape[0])},
        "hardware": hardware(),
        **({"vocabulary": vocabulary} if vocabulary else {}),
    }
    return new_state(cfg, unet, None if init is None else init["state"]), run


def write_run(run_dir: Path, run: dict, state: TrainState) -> None:
    run = {**run, "trained_steps": state.step, "elapsed_s": round(state.elapsed_s, 1)}
    (run_dir / RUN_JSON).write_text(json.dumps(run, indent=2) + "\n")


def trim_loss_log(path: Path, step: int) -> None:
    """Drop rows past the checkpoint's step, so a resumed log has each step once."""
    if not path.exists():
        return
    rows = list(csv.reader(path.open()))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(kept)


def sample_grid(ema: UNet, run: dict, cfg: TrainConfig) -> np.ndarray:
    norm = run["normalization"]
    denoiser = Denoiser(ema, norm["mean"], norm["std"])
    shape = (3, cfg.image_size, cfg.image_size)
    seeds = list(range(cfg.sample_count))
    x0 = sample(denoiser, seeds, cfg.sample_steps, shape, schedule=get_schedule(cfg.schedule))
    return make_grid(denoiser.to_pixels(x0))


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool | None = None,
    prompts: np.ndarray | None = None,
    vocabulary: dict | None = None,
    init: dict | None = None,
) -> TrainState:
    """Train towards cfg.steps total steps, checkpointing, logging and sampling along the way.

    A prompt-conditioned run takes `prompts`, (N, text_tokens) word ids aligned with the images, and the
    `vocabulary` they came from (model_store.vocabulary), which the run records. A warm start (cfg.init)
    takes `init`: {"state": weights, "mean": [...], "std": [...]} of that model."""
    run_dir = Path(run_dir)
    if (prompts is None) != (cfg.text_tokens == 0) or (prompts is None) != (vocabulary is None):
        raise RunError("a run with prompts needs text_tokens, word ids and their vocabulary, all three")
    if (init is None) != (cfg.init is None):
        raise RunError("a warm start needs both cfg.init and the initial weights")
    state, run = prepare_run(cfg, run_dir, resume, vocabulary, init)
    images = load_images(cfg.data, cfg.image_size, cfg.npz_key)
    if prompts is not None and prompts.shape != (len(images), cfg.text_tokens):
        raise RunError(f"prompts are {prompts.shape}, not one row of {cfg.text_tokens} ids per image")
    prompt_ids = None if prompts is None else torch.from_numpy(prompts.astype(np.int64))
    norm = run["normalization"]
    mean = torch.tensor(norm["mean"], dtype=torch.float32).reshape(1, 3, 1, 1)
    std = torch.tensor(norm["std"], dtype=torch.float32).reshape(1, 3, 1, 1)
    data = (to_tensor(images) - mean) / std  # the Keras example's Normalization layer
    warmup = EMAWarmup(power=cfg.ema_power, max_value=cfg.ema_max)
    (run_dir / "samples").mkdir(exist_ok=True)
    log_path = run_dir / LOSS_CSV
    trim_loss_log(log_path, state.step)
    new_log = not log_path.exists()
    state.model.train()
    bar = tqdm(
        total=cfg.steps,
        initial=state.step,
        disable=None if progress is None else not progress,
        unit="step",
        dynamic_ncols=True,
    )
    with log_path.open("a", newline="") as log:
        writer = csv.writer(log)
        if new_log:
            writer.writerow(["step", "loss", "ema_decay", "elapsed_s"])
        while state.step < cfg.steps:
            started = time.perf_counter()
            index = epoch_batch(len(data), cfg.batch_size, cfg.seed, state.step)
            batch_prompts = None if prompt_ids is None else prompt_ids[index]
            loss = diffusion_loss(
                state.model, data[index], cfg.schedule, state.rng, batch_prompts, cfg.prompt_dropout,
                (cfg.p2_gamma, cfg.p2_k),
            )  # fmt: skip
            lr = learning_rate(cfg.learning_rate, cfg.lr_decay, state.step, cfg.steps)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            decay = warmup.decay(state.step)
            ema_update(state.ema, state.model, decay)
            state.step += 1
            state.elapsed_s += time.perf_counter() - started
            writer.writerow([state.step, f"{loss.item():.6f}", f"{decay:.6f}", f"{state.elapsed_s:.1f}"])
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", ema=f"{decay:.4f}", refresh=False)
            done = state.step == cfg.steps
            if state.step % cfg.checkpoint_every == 0 or done:
                log.flush()
                save_checkpoint(run_dir, state)
                write_run(run_dir, run, state)
            if cfg.sample_every and (state.step % cfg.sample_every == 0 or done):
                grid = sample_grid(state.ema, run, cfg)
                Image.fromarray(grid).save(run_dir / "samples" / f"step_{state.step:07d}.png")
    bar.close()
    if not (run_dir / CHECKPOINT).exists():
        save_checkpoint(run_dir, state)
    write_run(run_dir, run, state)
    return state
