"""Sinusoidal embedding of the noise variance (Keras DDIM example, after NeRF / Transformer positional codes)."""

from __future__ import annotations

import math

import torch


def embedding_frequencies(dims: int = 32, max_frequency: float = 1000.0) -> torch.Tensor:
    """e^{k f} for k = 0..L-1, with L = dims/2 and f = ln(max_frequency)/(L-1), in float64."""
    half = dims // 2
    f = math.log(max_frequency) / (half - 1)
    return torch.exp(torch.arange(half, dtype=torch.float64) * f)


def sinusoidal_embedding(
    variance: torch.Tensor, dims: int = 32, max_frequency: float = 1000.0, frequencies: torch.Tensor | None = None
) -> torch.Tensor:
    """gamma(x) = (sin(2 pi e^{kf} x)..., cos(2 pi e^{kf} x)...): (B, 1, 1, 1) -> (B, dims, 1, 1).

    Computed in float64 and cast back, one sample at a time in effect (elementwise), so a sample's
    embedding does not depend on the batch it is in. `frequencies`, if given, is
    `embedding_frequencies(dims, max_frequency)` already on the device (no copy in the forward pass,
    which a CUDA graph could not capture).
    """
    if frequencies is None:
        frequencies = embedding_frequencies(dims, max_frequency).to(variance.device)
    angular = 2.0 * math.pi * frequencies
    x = variance.to(torch.float64).reshape(-1, 1) * angular  # (B, L)
    emb = torch.cat([torch.sin(x), torch.cos(x)], dim=1)  # (B, 2L)
    return emb.to(variance.dtype).reshape(-1, dims, 1, 1)
