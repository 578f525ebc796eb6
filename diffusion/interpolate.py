"""Spherical interpolation of initial noises: the latent-space walk of Generative Deep Learning, ch. 8.

With DDIM at eta = 0 the map from x_T to the image is deterministic, so walking x_T on the great
circle between two seeds' noises walks between their images. Gaussian noise in high dimension
lives near a sphere, which is why the walk is spherical rather than linear (Shoemake 1985).
"""

from __future__ import annotations

import math

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """sin((1-t) theta)/sin(theta) a + sin(t theta)/sin(theta) b, theta the angle between a and b.

    Exact at the ends: t = 0 returns a and t = 1 returns b, bit for bit. Computed in float64.
    """
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.clone()
    a64, b64 = a.double(), b.double()
    cos = torch.dot(a64.flatten(), b64.flatten()) / (a64.norm() * b64.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0)).item()
    if math.sin(theta) < 1e-8:  # (anti)parallel: fall back to a straight line
        return ((1 - t) * a64 + t * b64).to(a.dtype)
    out = (math.sin((1 - t) * theta) * a64 + math.sin(t * theta) * b64) / math.sin(theta)
    return out.to(a.dtype)


def interpolation_times(frames: int) -> list[float]:
    """t_i = i / (frames - 1), i = 0..frames-1."""
    return [i / (frames - 1) for i in range(frames)]


def interpolated_noises(x_a: torch.Tensor, x_b: torch.Tensor, frames: int) -> torch.Tensor:
    """(frames, *x_a.shape): the walk from x_a to x_b."""
    return torch.stack([slerp(x_a, x_b, t) for t in interpolation_times(frames)])
