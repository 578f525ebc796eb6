"""The small text encoder of prompt-conditioned U-Nets, trained jointly with them.

A prompt arrives as a fixed number of word ids (START, its known words, PAD; see
`model_store.vocabulary`). The encoder embeds each id with its position, averages over the non-PAD
tokens of that row only, and maps the mean through a two-layer MLP. START is always there, so the
empty prompt has a learned embedding of its own: the unconditional branch of classifier-free
guidance. Nothing mixes rows, so a row's embedding never depends on the prompts beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PAD = 0  # the id that pads a prompt to its fixed length (model_store.vocabulary.PAD)


class TextEncoder(nn.Module):
    """(B, T) int64 word ids -> (B, dims) prompt embedding."""

    def __init__(self, vocab_size: int, tokens: int, dims: int, width: int = 128) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.positions = nn.Parameter(torch.zeros(tokens, width))
        self.hidden = nn.Linear(width, width)
        self.out = nn.Linear(width, dims)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = (ids != PAD).unsqueeze(-1).to(self.positions.dtype)  # (B, T, 1)
        e = (self.words(ids) + self.positions) * keep  # (B, T, W)
        mean = e.sum(dim=1) / keep.sum(dim=1)  # (B, W): a masked mean; START keeps the count >= 1
        return self.out(F.silu(self.hidden(mean)))  # (B, dims)


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018): h * (1 + gamma(c)) + beta(c), zero-initialised.

    Applied to a residual block's normalised activations; at initialisation it is the identity, so a
    conditioned U-Net starts as the unconditioned one."""

    def __init__(self, dims: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dims, 2 * width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(c).to(h.dtype)[:, :, None, None].chunk(2, dim=1)  # (B, W, 1, 1) each
        return h * (1 + gamma) + beta
