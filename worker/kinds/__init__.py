"""The worker side of model kinds: one module per kind, behind one interface (as k-diffusion's `external.py`).

A kind module builds its network from the manifest and says how to read it: the time grid (what the
network is called with at each step, and the alpha-bars of the step), the map from the network's output
to the ε̂ and x̂0 of the shared DDIM step (diffusion.ddim, eq. 12), and the map from model space to pixels.
The engine, the kernel probe, batching, previews and interpolation see nothing else. The torch-free
registry (model_store.kinds) says which kinds exist and which are served; which class runs a served kind
is said here (`model_class`).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from diffusion.ddim import GridStep, Step
from diffusion.guidance import Condition
from model_store import Manifest, ModelStoreError, kinds


class KindModel(ABC):
    """One model of one kind, as the engine runs it.

    A text-conditioned kind (`conditioned`) has a network called as `net(x, time_input(t), c)`, with c each row's
    prompt embedding, and says how to embed a prompt (`embed`; "" is the empty prompt) and which conditions the
    kernel probe runs with (`probe_conditions`)."""

    conditioned = False
    clip: float | None = None  # the clamp of x̂0 that DDIM applies (a diffusers scheduler's `clip_sample`); None: none

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one sample in model space."""
        height, width, channels = kinds.of(self.manifest).shape(self.manifest.config)
        return channels, height, width

    def shape_at(self, size: tuple[int, int] | None) -> tuple[int, int, int]:
        """(channels, height, width) in model space of a (width, height) image; a kind of one size takes None."""
        if size is not None:
            raise ModelStoreError(f"{self.manifest.ref} makes one size; it takes no width or height")
        return self.shape

    def image_shape_at(self, size: tuple[int, int] | None) -> tuple[int, int, int]:
        """(channels, height, width) of the image in pixels; in model space, for a pixel-space kind."""
        return self.shape_at(size)

    def parts(self, net: nn.Module) -> list[nn.Module]:
        """Every module of the loaded model, for its memory (the network, and any encoder or decoder beside it)."""
        return [net]

    def all_sizes(self) -> list[tuple[int, int] | None]:
        """Every (width, height) the model makes, its default first; [None] for a kind of one size."""
        return [None]

    @abstractmethod
    def network(self, device: str) -> nn.Module:
        """The network with its verified weights, in eval mode, called as `net(x, time_input(t))`."""

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        """What the network takes for a row's time `t` (a grid step's `time`, (B, 1, 1, 1))."""
        return t

    @abstractmethod
    def grid(self, steps: int, sampler: str = "ddim") -> list[GridStep]:
        """The `steps` steps of a run of `sampler` (model_store.samplers): each one's network time and its alpha-bars.
        A continuous-time kind has one grid for every sampler; a kind that runs DDIM alone may take `steps` only."""

    def grid_of(self, steps: int, sampler: str) -> list[GridStep]:
        """`grid` for a sampler the kind runs (model_store.kinds.Kind.refuse_sampler): DDIM's is `grid(steps)`, which
        every kind takes, a plug-in kind written before samplers too."""
        return self.grid(steps) if sampler == "ddim" else self.grid(steps, sampler)

    def grid_key(self, sampler: str) -> str:
        """Names the grid `sampler` calls the network on: jobs of equal grid keys share network calls. "" for a kind
        whose every sampler runs on one grid."""
        return ""

    def read(self, out: torch.Tensor, x_t: torch.Tensor, alpha_bar: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ε̂, x̂0 or None) from the network's output; None lets the sampler derive x̂0 from ε̂ (eq. 12). Unclamped:
        DDIM alone applies `clip` (diffusion.samplers)."""
        return out, None

    def final(self, step: Step) -> torch.Tensor:
        """What the image is made of, from a run's last step: its x̂0 (a kind may take its x_prev instead)."""
        return step.x0_pred

    @property
    def image_is_x0(self) -> bool:
        """Whether the image is the last step's x̂0 (`final`), rather than its x: where inversion starts
        (diffusion.inversion)."""
        return True

    @abstractmethod
    def pixels(self, x0: torch.Tensor) -> np.ndarray:
        """(B, C, H, W) model space -> (B, H, W, C) uint8."""

    def to_model(self, pixels: np.ndarray, gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """(B, H, W, C) uint8 -> (B, C, h, w) float32 on the CPU in model space: the inverse of `pixels`. A kind that
        samples (a VAE's latent distribution) draws from each row's generator in `gens`, and takes the
        distribution's mode without them (inversion). A kind without it takes no picture."""
        raise ModelStoreError(f"{self.manifest.ref} takes no picture")

    def mask_to_model(self, mask: np.ndarray) -> torch.Tensor:
        """(B, H, W, 1) uint8 {0, 255} (white: repaint) -> (B, 1, h, w) float32 0/1 in model space's size (a
        pixel-space kind: the mask itself)."""
        return mask_tensor(mask)

    def embed(self, prompt: str) -> torch.Tensor:
        """A prompt's embedding, computed alone (text-conditioned kinds)."""
        raise ModelStoreError(f"{self.manifest.ref} takes no prompt")

    def condition(self, prompt: str | None, guidance: float | None, negative: str | None = None) -> Condition:
        """A sample's condition: its normalised prompt's embedding (none without a prompt) and its guidance scale.
        A kind with a negative prompt (its request field) embeds it as the unconditional branch."""
        if negative:
            raise ModelStoreError(f"{self.manifest.ref} takes no negative prompt")
        if not prompt:
            return Condition(None)
        return Condition(self.embed(prompt), 1.0 if guidance is None else float(guidance))

    def probe_conditions(self, rows: int) -> torch.Tensor | None:
        """One condition per probe row for a conditioned network; None for an unconditioned one."""
        return None


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """(B, H, W, 1) uint8 -> (B, 1, H, W) float32: 1 where the mask is white (>= 128: repaint), 0 where it is black."""
    return torch.from_numpy(np.ascontiguousarray(mask) >= 128).permute(0, 3, 1, 2).float().contiguous()


# The built-in kinds' models, imported when first needed (their modules import this one).
BUILT_IN = {
    "ddim-unet": "worker.kinds.ddim_unet:DDIMUNet",
    "ddim-unet-text": "worker.kinds.ddim_unet_text:DDIMUNetText",
    "diffusers-unet2d": "worker.kinds.diffusers_unet2d:DiffusersUNet2D",
    "diffusers-sd": "worker.kinds.diffusers_sd:DiffusersSD",
}


def model_for(manifest: Manifest) -> KindModel:
    """The kind module's model for this manifest; a one-line error for a kind that is unknown or not served."""
    return model_class(kinds.served(manifest))(manifest)


def model_class(kind: kinds.Kind) -> type[KindModel]:
    """The class that runs a served kind: a built-in kind's from BUILT_IN; a plug-in kind's from the `MODELS`
    (kind name -> class) of the module beside the one that registered it, `<module>_engine`."""
    if kind.module is not None:
        module_name = f"{kind.module}_engine"
        models = getattr(import_engine(kind, module_name), "MODELS", {})
        if kind.name not in models:
            raise ModelStoreError(f"model kind {kind.name!r}: {module_name}.MODELS has no {kind.name!r}")
        return models[kind.name]
    if kind.name not in BUILT_IN:
        raise ModelStoreError(
            f"model kind {kind.name!r}: not a built-in kind, and registered without its module (module=__name__)"
        )
    module_name, _, class_name = BUILT_IN[kind.name].partition(":")
    return getattr(import_engine(kind, module_name), class_name)


def import_engine(kind: kinds.Kind, module_name: str):
    """The module that holds a kind's model, or a one-line error naming the kind and the module."""
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelStoreError(f"model kind {kind.name!r}: cannot load {module_name} ({exc})") from None
