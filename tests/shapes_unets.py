"""Small diffusers `UNet2DModel`s with self-attention, trained on coloured discs and squares (16x16, RGB): the models of
the multistep parity tests (tests/worker/test_multistep_parity.py). A random network's multistep samples saturate
almost every pixel, which would hide errors; these make unsaturated pictures.

The weights are committed (tests/fixtures/shapes-unets.safetensors, float16, every model's tensors under its name);
this module builds the networks and loads them, and, run as a script, trains them again from their seeds on one
thread (about five minutes on a CPU core) and rewrites the file:

    python tests/shapes_unets.py
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

WEIGHTS = Path(__file__).parent / "fixtures" / "shapes-unets.safetensors"
SIZE = 16
CHANNELS = 3
# Each model's training: the beta schedule of its noise and the quantity it predicts (as a diffusers scheduler config
# names them), and its seed.
MODELS: dict[str, dict] = {
    "eps-scaled": {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "epsilon",
    },
    "v-cosine": {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
    "sample-linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "sample"},
}
SEEDS = {"eps-scaled": 0, "v-cosine": 1, "sample-linear": 2}
TRAIN_STEPS = 1200
BATCH = 32
LEARNING_RATE = 3e-3


def shapes_unet():
    """The architecture: two levels of 8 and 16 channels, the lower one with self-attention (as ddpm-cifar10-32 has),
    and attention in the middle block; float32, eval mode, random weights."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=SIZE,
        in_channels=CHANNELS,
        out_channels=CHANNELS,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    ).eval()


def load_unet(name: str):
    """The trained model `name` (one of MODELS), float32, eval mode."""
    from safetensors.torch import load_file

    prefix = f"{name}/"
    tensors = load_file(WEIGHTS)
    unet = shapes_unet()
    state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
    unet.load_state_dict(state, strict=True)
    return unet


def shapes(n: int, gen: torch.Generator) -> torch.Tensor:
    """n pictures (n, 3, 16, 16) in [-0.6, 0.6]: a plain background and one disc or square of another colour, at a
    random place and size. The colours stay inside the range, so that the samples are not clipped at 0 or 255."""
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    background = torch.rand(n, 3, 1, 1, generator=gen) * 1.2 - 0.6
    colour = torch.rand(n, 3, 1, 1, generator=gen) * 1.2 - 0.6
    centre = torch.rand(n, 2, generator=gen) * 8 + 4
    radius = torch.rand(n, generator=gen) * 3 + 2.5
    disc = torch.rand(n, generator=gen) < 0.5
    dy, dx = ys - centre[:, 0, None, None], xs - centre[:, 1, None, None]
    r = radius[:, None, None]
    inside = torch.where(disc[:, None, None], dy**2 + dx**2 <= r**2, (dy.abs() <= r) & (dx.abs() <= r))
    return torch.where(inside[:, None], colour, background)


def alphas_cumprod(config: dict) -> torch.Tensor:
    """ᾱ_t of a model's noise schedule, as its diffusers scheduler computes it (1000 training timesteps)."""
    from diffusers import DDPMScheduler

    keys = ("beta_schedule", "beta_start", "beta_end")
    return DDPMScheduler(**{k: config[k] for k in keys if k in config}).alphas_cumprod.double()


def train(name: str) -> dict[str, torch.Tensor]:
    """Model `name` trained from its seed: x_t = √ᾱ x0 + √(1−ᾱ) ε (Ho et al. 2020, eq. 4) at uniform t, the loss the
    squared error of its prediction (ε; v = √ᾱ ε − √(1−ᾱ) x0, Salimans & Ho 2022; or x0). An ε model's error is
    weighted by 1/ᾱ = 1 + (1−ᾱ)/ᾱ, its own plus that of the x0 it implies: the multistep samplers read x0 from ε,
    √((1−ᾱ)/ᾱ) times its error, about 15 times at the noisiest timestep, which would saturate their samples."""
    config = MODELS[name]
    torch.manual_seed(SEEDS[name])
    gen = torch.Generator().manual_seed(SEEDS[name])
    unet = shapes_unet().train()
    a = alphas_cumprod(config)
    optimiser = torch.optim.Adam(unet.parameters(), lr=LEARNING_RATE)
    for step in range(TRAIN_STEPS):
        for group in optimiser.param_groups:  # cosine decay to zero
            group["lr"] = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / TRAIN_STEPS))
        x0 = shapes(BATCH, gen)
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, len(a), (BATCH,), generator=gen)
        signal, noise = a[t].sqrt().float()[:, None, None, None], (1 - a[t]).sqrt().float()[:, None, None, None]
        x_t = signal * x0 + noise * eps
        target = {"epsilon": eps, "v_prediction": signal * eps - noise * x0, "sample": x0}[config["prediction_type"]]
        weight = 1 / signal**2 if config["prediction_type"] == "epsilon" else torch.ones_like(signal)
        loss = (weight * (unet(x_t, t).sample - target).pow(2)).mean() / weight.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == TRAIN_STEPS - 1:
            print(f"{name} step {step} loss {loss.item():.4f}")
    return {f"{name}/{k}": v.detach().to(torch.float16).contiguous() for k, v in unet.state_dict().items()}


def main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    tensors: dict[str, torch.Tensor] = {}
    for name in MODELS:
        tensors.update(train(name))
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, WEIGHTS, metadata={"made_by": "tests/shapes_unets.py"})
    print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
