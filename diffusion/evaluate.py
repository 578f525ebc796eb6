"""Model evaluation: KID of a model's samples against the held-out split, beside reference figures.

The references put the model's figure on a scale:
- the training split against the held-out split, the floor a perfect model would reach;
- uniform random noise images, and an untrained network sampled the same way, the ceilings it must beat.
The model passes when its whole interval lies below both ceilings' intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from diffusion.ddim import sample
from diffusion.denoiser import Denoiser
from diffusion.kid import KID, NUM_SUBSETS, kid
from diffusion.schedule import get_schedule
from diffusion.unet import UNet, UNetConfig

Generate = Callable[[Sequence[int]], np.ndarray]  # seeds -> (B, H, W, 3) uint8
Extract = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) uint8 -> (N, D) features
BATCH_SIZE = 64

MODEL, FLOOR, NOISE, UNTRAINED = "model", "train", "noise", "untrained"


def generate_in_batches(
    generate: Generate, n: int, batch_size: int = BATCH_SIZE, desc: str = "", progress: bool | None = None
) -> np.ndarray:
    """Images for seeds 0..n-1, `batch_size` at a time, with a progress bar."""
    out = []
    with tqdm(total=n, desc=desc, unit="img", disable=None if progress is None else not progress) as bar:
        for start in range(0, n, batch_size):
            seeds = list(range(start, min(start + batch_size, n)))
            out.append(generate(seeds))
            bar.update(len(seeds))
    return np.concatenate(out)


def noise_images(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uniform random uint8 RGB from a seeded numpy generator."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def untrained_generator(
    config: dict,
    mean: Sequence[float],
    std: Sequence[float],
    schedule: str,
    steps: int,
    seed: int = 0,
    device: str = "cpu",
) -> Generate:
    """DDIM (eta 0) from a fresh U-Net (torch.manual_seed(seed)) with the model's config and normalisation.

    Its output layer starts at zero, as in the Keras example, so it predicts no noise at all: x̂0 = x_T / √ᾱ_T,
    saturated colour noise once denormalised and clipped.
    """
    torch.manual_seed(seed)
    net = UNet(UNetConfig.from_dict(config)).to(device).eval()
    denoiser = Denoiser(net, mean, std)
    shape = (net.config.channels, net.config.image_size, net.config.image_size)
    sched = get_schedule(schedule)

    def generate(seeds: Sequence[int]) -> np.ndarray:
        return denoiser.to_pixels(sample(denoiser, seeds, steps, shape, schedule=sched, device=device))

    return generate


@dataclass(frozen=True)
class Row:
    key: str  # MODEL, FLOOR, NOISE or UNTRAINED
    label: str
    n: int
    kid: KID


@dataclass(frozen=True)
class Evaluation:
    features: str
    reference: int  # held-out images
    rows: tuple[Row, ...]

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    def below(self, key: str, other: str) -> bool:
        """Whether `key`'s interval lies entirely below `other`'s."""
        return self.row(key).kid.high < self.row(other).kid.low

    @property
    def model_passes(self) -> bool:
        return self.below(MODEL, NOISE) and self.below(MODEL, UNTRAINED)

    def to_json(self) -> dict:
        return {
            "features": self.features,
            "heldout": self.reference,
            "rows": [{"key": r.key, "label": r.label, "n": r.n, **r.kid.to_json()} for r in self.rows],
            "model_below_noise": self.below(MODEL, NOISE),
            "model_below_untrained": self.below(MODEL, UNTRAINED),
        }


def kid_rows(
    extract: Extract,
    heldout: np.ndarray,
    sets: Sequence[tuple[str, str, np.ndarray]],
    subsets: int = NUM_SUBSETS,
    seed: int = 0,
) -> tuple[Row, ...]:
    """KID of each (key, label, images) against the held-out images, all with the same subset seed."""
    reference = extract(heldout)
    return tuple(
        Row(key, label, len(images), kid(extract(images), reference, subsets, seed=seed)) for key, label, images in sets
    )


def evaluate(
    generate_model: Generate,
    generate_untrained: Generate,
    extract: Extract,
    train: np.ndarray,
    heldout: np.ndarray,
    n: int,
    seed: int = 0,
    model_label: str = "model",
    features: str = "default",
    subsets: int = NUM_SUBSETS,
    progress: bool | None = None,
) -> Evaluation:
    """Generate n samples (seeds 0..n-1) from the model and from an untrained network; compare all four sets."""
    if n < 2:
        raise ValueError("n must be >= 2")
    model = generate_in_batches(generate_model, n, desc=model_label, progress=progress)
    if model.shape[1:] != heldout.shape[1:]:
        raise ValueError(f"the model makes {model.shape[1:]} images, the data is {heldout.shape[1:]}")
    untrained = generate_in_batches(generate_untrained, n, desc="untrained", progress=progress)
    sets = [
        (MODEL, model_label, model),
        (FLOOR, "train split (floor)", train),
        (NOISE, "uniform noise", noise_images(n, heldout.shape[1], seed)),
        (UNTRAINED, "untrained network", untrained),
    ]
    return Evaluation(features, len(heldout), kid_rows(extract, heldout, sets, subsets, seed))


def format_table(evaluation: Evaluation) -> str:
    rows = evaluation.rows
    first = rows[0].kid
    lines = [
        f"KID against the held-out split ({evaluation.reference} images), features {evaluation.features}, "
        f"mean of {first.subsets} subsets, 95% bootstrap interval",
        f"{'set':28} {'n':>6} {'subset':>6} {'KID':>11}  {'95% interval':>25}",
    ]
    for r in rows:
        k = r.kid
        lines.append(f"{r.label:28} {r.n:>6} {k.subset_size:>6} {k.kid:>11.4g}  [{k.low:>11.4g}, {k.high:>11.4g}]")
    yes = {True: "yes", False: "NO"}
    lines.append(
        f"model interval below noise: {yes[evaluation.below(MODEL, NOISE)]}; "
        f"below untrained network: {yes[evaluation.below(MODEL, UNTRAINED)]}"
    )
    return "\n".join(lines)
