"""A job's inputs, read by digest from the result store, where the API stored them (app.core.objects, INPUT): the
pixels the API converted (app.core.pictures; the worker never decodes a user's file) and inversions' latents
(safetensors)."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from app.core import objects, pictures
from app.core.results import open_store
from app.core.settings import get_settings
from app.core.spec import Spec
from worker.engine import PictureIn


class InputGone(RuntimeError):
    """A job's input is no longer stored (it outlived its jobs): the job fails with this reason."""


def blob(redis, digest: str) -> bytes:
    """An input's bytes; a store that does not answer raises app.core.results.StoreUnavailable (the job fails)."""
    data = open_store(get_settings(), redis).get(objects.name(objects.INPUT, digest))
    if data is None:
        raise InputGone(f"the job's input {digest[:12]}… has expired; submit the job again")
    return data


def pixels(redis, digest: str) -> np.ndarray:
    """(H, W, C) uint8: a picture or a mask, as the API converted it."""
    return pictures.from_blob(blob(redis, digest))


def latent(redis, digest: str) -> torch.Tensor:
    """(C, H, W) float32: an inversion's latent."""
    return load_safetensors(blob(redis, digest))["latent"].to(torch.float32)


def picture_in(redis, spec: Spec) -> PictureIn | None:
    """A generation row's picture (image-to-image, with a mask inpainting); None for a row from noise or a latent."""
    image = getattr(spec, "image", None)
    if image is None:
        return None
    mask = pixels(redis, spec.mask) if spec.mask is not None else None
    return PictureIn(pixels(redis, image), spec.strength, mask, spec.harmonize)
