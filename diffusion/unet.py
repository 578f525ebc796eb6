"""The residual U-Net of the Keras DDIM example, in PyTorch.

Topology (keras-io examples/generative/ddim.py, `get_network`): a 1x1 conv to widths[0] concatenated
with the nearest-upsampled noise-variance embedding; down blocks of residual blocks with average
pooling; a middle of residual blocks; bilinear up blocks that consume the skips; a zero-initialised
1x1 conv to 3 channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.embedding import embedding_frequencies, sinusoidal_embedding
from diffusion.text import FiLM, TextEncoder

TEXT_FIELDS = ("text_vocab", "text_tokens", "text_dims")


@dataclass(frozen=True)
class UNetConfig:
    image_size: int
    channels: int = 3
    widths: tuple[int, ...] = field(default=(32, 64, 96, 128))
    block_depth: int = 2
    embedding_dims: int = 32
    embedding_max_frequency: float = 1000.0
    # A prompt-conditioned U-Net: a text encoder over `text_vocab` word ids, `text_tokens` per prompt, whose
    # `text_dims`-wide embedding modulates every residual block (FiLM). 0: the unconditioned Keras U-Net.
    text_vocab: int = 0
    text_tokens: int = 0
    text_dims: int = 0

    @property
    def conditioned(self) -> bool:
        return self.text_vocab > 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        levels = len(self.widths) - 1
        if self.image_size % (2**levels):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{levels}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        if not self.conditioned:  # unconditioned configs read (and hash) as they always have
            for name in TEXT_FIELDS:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return cls(**{**d, "widths": tuple(d["widths"])})


class ResidualBlock(nn.Module):
    """x + conv3x3(swish(conv3x3(BN(x)))), with a 1x1 conv on the skip when the widths differ.

    With `text_dims`, BN(x) is modulated by the prompt embedding: FiLM(BN(x), c)."""

    def __init__(self, in_width: int, width: int, text_dims: int = 0) -> None:
        super().__init__()
        self.skip = nn.Conv2d(in_width, width, 1) if in_width != width else nn.Identity()
        # Keras BatchNormalization(center=False, scale=False): eps 1e-3, momentum 0.99 == torch 0.01.
        self.norm = nn.BatchNorm2d(in_width, eps=1e-3, momentum=0.01, affine=False)
        self.conv1 = nn.Conv2d(in_width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.film = FiLM(text_dims, in_width) if text_dims else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        residual = self.skip(x)
        h = self.norm(x)
        if self.film is not None:
            h = self.film(h, c)
        x = F.silu(self.conv1(h))  # swish
        return self.conv2(x) + residual


class UNet(nn.Module):
    """(B, C, H, W) noisy images and (B, 1, 1, 1) noise variances -> (B, C, H, W) predicted noise.

    A conditioned U-Net also takes (B, text_tokens) prompt word ids; None means the empty prompt."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        # not saved with the weights (a function of the config); moves with the network to its device
        frequencies = embedding_frequencies(config.embedding_dims, config.embedding_max_frequency)
        self.register_buffer("frequencies", frequencies, persistent=False)
        w, depth, td = config.widths, config.block_depth, config.text_dims
        self.text = TextEncoder(config.text_vocab, config.text_tokens, td) if config.conditioned else None
        if config.conditioned:
            empty = torch.zeros(1, config.text_tokens, dtype=torch.long)
            empty[0, 0] = 1  # START alone (model_store.vocabulary)
            self.register_buffer("empty_prompt", empty, persistent=False)
        self.stem = nn.Conv2d(config.channels, w[0], 1)
        width = w[0] + config.embedding_dims
        self.down = nn.ModuleList()
        skip_widths = []
        for level_width in w[:-1]:
            blocks = nn.ModuleList()
            for _ in range(depth):
                blocks.append(ResidualBlock(width, level_width, td))
                width = level_width
                skip_widths.append(width)
            self.down.append(blocks)
        self.middle = nn.ModuleList()
        for _ in range(depth):
            self.middle.append(ResidualBlock(width, w[-1], td))
            width = w[-1]
        self.up = nn.ModuleList()
        for level_width in reversed(w[:-1]):
            blocks = nn.ModuleList()
            for _ in range(depth):
                blocks.append(ResidualBlock(width + skip_widths.pop(), level_width, td))
                width = level_width
            self.up.append(blocks)
        self.head = nn.Conv2d(width, config.channels, 1)
        nn.init.zeros_(self.head.weight)  # Keras: kernel_initializer="zeros"
        nn.init.zeros_(self.head.bias)

    def forward(
        self, x: torch.Tensor, noise_variance: torch.Tensor, prompt: torch.Tensor | None = None
    ) -> torch.Tensor:
        c = None
        if self.text is not None:
            c = self.encode(self.empty_prompt.expand(x.shape[0], -1) if prompt is None else prompt)
        return self.denoise(x, noise_variance, c)

    def encode(self, prompt: torch.Tensor) -> torch.Tensor:
        """(B, text_tokens) word ids -> (B, text_dims) prompt embeddings, each row on its own."""
        if self.text is None:
            raise ValueError("this U-Net takes no prompt")
        return self.text(prompt)

    def denoise(self, x: torch.Tensor, noise_variance: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net proper; `c` is the (B, text_dims) prompt embedding of a conditioned one (FiLM)."""
        cfg = self.config
        if (c is None) != (self.text is None):
            raise ValueError("a conditioned U-Net needs a prompt embedding, an unconditioned one takes none")
        e = sinusoidal_embedding(noise_variance, cfg.embedding_dims, cfg.embedding_max_frequency, self.frequencies)
        e = e.to(x.dtype).expand(-1, -1, x.shape[2], x.shape[3])  # nearest upsampling of a 1x1 map
        x = torch.cat([self.stem(x), e], dim=1)  # (B, w0 + E, H, W)
        skips = []
        for blocks in self.down:
            for block in blocks:
                x = block(x, c)
                skips.append(x)
            x = F.avg_pool2d(x, 2)
        for block in self.middle:
            x = block(x, c)
        for blocks in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            for block in blocks:
                x = block(torch.cat([x, skips.pop()], dim=1), c)
        return self.head(x)
