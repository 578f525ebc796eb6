"""Image features for KID: `extract(images_uint8_NHWC) -> (N, D)` float64 arrays.

`default`: a small CNN trained on the emoji train split alone, as an Exemplar-CNN (Dosovitskiy et al.
2014, "Discriminative Unsupervised Feature Learning with Exemplar Convolutional Neural Networks"):
every training glyph is its own class, and the network learns to recognise it under augmentation
(random shifts of up to ±3 px and scales of 0.9–1.1 with white fill, a per-channel colour gain
about white, mild Gaussian pixel noise). The features are the globally average-pooled last
convolution (post-ReLU, not L2-normalised), like InceptionV3's pool3 features in FID and KID.

`inception`: torchvision's InceptionV3 pool features, only when torchvision and its weights are
already on this machine. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusion.data import channel_stats

OBJECTIVE = (
    "exemplar classification: one class per training glyph, cross-entropy under augmentation "
    "(shift ±3 px and scale 0.9-1.1 with white fill, per-channel gain 0.85-1.15 about white, pixel noise σ 0.03)"
)
MAX_SHIFT_PX = 3.0
SCALE_RANGE = (0.9, 1.1)
GAIN_RANGE = (0.85, 1.15)
NOISE_STD = 0.03
INCEPTION_WEIGHTS = "inception_v3_google-0cc3c7bd.pth"  # torchvision's Inception_V3_Weights.IMAGENET1K_V1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureError(RuntimeError):
    """A feature extractor is not available here."""


class Extractor(Protocol):
    name: str

    def extract(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float64 features."""
        ...


@dataclass(frozen=True)
class FeatureConfig:
    classes: int  # training glyphs: one class each
    widths: tuple[int, ...] = field(default=(32, 64, 128, 128))
    image_size: int = 32  # the size it was trained at

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        return cls(**{**d, "widths": tuple(d["widths"])})

    @property
    def dims(self) -> int:
        return self.widths[-1]


class FeatureCNN(nn.Module):
    """(conv3x3 → BN → ReLU, then a 2x2 average pool except after the last) per width; global average pool.

    Images come in as (B, 3, H, W) floats in [0, 1]; the per-channel normalisation is part of the network.
    """

    def __init__(self, config: FeatureConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        layers, width = [], 3
        for w in config.widths:
            layers.append(nn.Sequential(nn.Conv2d(width, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()))
            width = w
        self.convs = nn.ModuleList(layers)
        self.head = nn.Linear(width, config.classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.avg_pool2d(x, 2)
        return x.mean(dim=(2, 3))  # global average pool: (B, widths[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_unit(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random shift, scale, colour gain and pixel noise of (B, 3, H, W) images in [0, 1]; white fills the border."""
    b, _, h, w = x.shape
    scale = torch.empty(b).uniform_(*SCALE_RANGE, generator=rng)
    shift = torch.empty(b, 2).uniform_(-MAX_SHIFT_PX, MAX_SHIFT_PX, generator=rng)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale  # output -> input coordinates: zoom by `scale`
    theta[:, 0, 2] = shift[:, 0] * 2.0 / w  # pixels -> normalised [-1, 1] coordinates
    theta[:, 1, 2] = shift[:, 1] * 2.0 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample 1 - x so that the zero padding outside the image is white.
    x = 1.0 - F.grid_sample(1.0 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = torch.empty(b, 3, 1, 1).uniform_(*GAIN_RANGE, generator=rng)
    x = 1.0 - (1.0 - x) * gain  # colour gain about white: the background stays white
    x = x + NOISE_STD * torch.randn(x.shape, generator=rng)
    return x.clamp(0.0, 1.0)


def train_feature_extractor(
    train_images: np.ndarray,
    steps: int,
    seed: int,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    widths: Sequence[int] = (32, 64, 128, 128),
    progress=None,
) -> FeatureCNN:
    """Train the exemplar CNN on (N, H, W, 3) uint8 images, one class per image; deterministic given the seed.

    AdamW with a cosine decay of the learning rate to zero (Loshchilov & Hutter 2017) and cross-entropy.
    `progress`, when given, is called with (step, loss) after every step.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    torch.manual_seed(seed)
    mean, std = channel_stats(train_images)
    net = FeatureCNN(FeatureConfig(len(train_images), tuple(widths), train_images.shape[1]), mean, std)
    data = to_unit(train_images)
    rng = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    net.train()
    for step in range(steps):
        lr = 0.5 * learning_rate * (1.0 + math.cos(math.pi * step / steps))  # cosine decay
        for group in optimizer.param_groups:
            group["lr"] = lr
        labels = torch.randint(len(data), (batch_size,), generator=rng)
        loss = F.cross_entropy(net(augment(data[labels], rng)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, loss.item())
    return net.eval()


@dataclass
class CNNExtractor:
    """The default extractor: a FeatureCNN's pooled features."""

    net: FeatureCNN
    name: str = "default"
    batch_size: int = 256

    @torch.inference_mode()
    def extract(self, images: np.ndarray) -> np.ndarray:
        self.net.eval()
        device = next(self.net.parameters()).device
        out = [
            self.net.features(to_unit(images[i : i + self.batch_size]).to(device)).double().cpu()
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, self.net.config.dims))


def inception_weights_path() -> Path:
    """Where torchvision keeps InceptionV3's weights: the torch hub cache ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


@dataclass
class InceptionExtractor:
    """torchvision's InceptionV3 2048-d pool features of images resized to 299x299 (bilinear)."""

    net: nn.Module
    name: str = "inception"
    batch_size: int = 64

    @torch.inference_mode()
    def extract(self, images: np.ndarray) -> np.ndarray:
        mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
        out = []
        for i in range(0, len(images), self.batch_size):
            x = F.interpolate(to_unit(images[i : i + self.batch_size]), size=(299, 299), mode="bilinear")
            out.append(self.net((x - mean) / std).double())
        return torch.cat(out).numpy() if out else np.zeros((0, 2048))


def inception_extractor() -> InceptionExtractor:
    """InceptionV3 from torchvision and weights already in the torch hub cache; FeatureError if either is missing."""
    if importlib.util.find_spec("torchvision") is None:
        raise FeatureError(
            "the inception features need torchvision, which is not installed; install it and put "
            f"{INCEPTION_WEIGHTS} in {inception_weights_path().parent} (nothing is downloaded)"
        )
    path = inception_weights_path()
    if not path.is_file():
        raise FeatureError(
            f"the inception features need torchvision's InceptionV3 weights at {path}, which is missing; "
            "copy the file there ($TORCH_HOME sets the folder): nothing is downloaded"
        )
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.fc = nn.Identity()  # the 2048-d average-pooled features
    return InceptionExtractor(net.eval())
