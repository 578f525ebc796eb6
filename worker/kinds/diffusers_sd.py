"""Kind `diffusers-sd`: a latent text-to-image pipeline (Stable Diffusion 1.x, 2.x), run as diffusers'
`StableDiffusionPipeline` runs it with a `DDIMScheduler`, row by row.

- **The network** is diffusers' `UNet2DConditionModel`, called as `net(latents, t, prompt_embeds)`; classifier-free
  guidance is rows of one call (diffusion.guidance), the negative prompt's embedding in place of the empty one's.
- **The prompt** is tokenized alone, padded to the tokenizer's `model_max_length` and truncated there, and encoded
  alone by the `CLIPTextModel` (`text_encoder(ids)[0]`, no attention mask, as the pipeline does for CLIP), so its
  embedding never depends on the prompts beside it. Embeddings are cached per model, bounded in bytes.
- **The latents** of a seed are the first draw of its own CPU generator, (C, H/f, W/f) with C the UNet's
  `in_channels` and f the VAE's scale factor, as `randn_tensor` draws a one-image batch, times the scheduler's
  `init_noise_sigma` (1 for DDIM). The grid, the parameterisation and the step are the `diffusers-unet2d` kind's
  (DDIMScheduler's), and the image is the last step's latents.
- **The pixels** are `vae.decode(latents / scaling_factor)`, one row per call (so a row's bits never depend on its
  batch), then as diffusers maps them: (x/2 + 0.5) clamped to [0, 1], round(x·255).
- **A picture** goes in as `StableDiffusionImg2ImgPipeline.prepare_latents` takes a one-image batch:
  `vae.encode(2·p/255 − 1)`, one row per call, its `latent_dist` sampled with the row's generator (before the
  run draws its noise from it), times `scaling_factor`; an inversion, which has no seed, takes the distribution's
  mode. A mask goes to the latents' size as StableDiffusionInpaintPipeline's `interpolate` (nearest).
- **Precision.** The engine's precision (bf16 on a GPU that has it) is the UNet's; the text encoder and the VAE
  always run in fp32, where the VAE's decoder is known to stay finite.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from diffusion.denoiser import denormalised_pixels
from diffusion.guidance import Condition
from model_store import Manifest, ModelStoreError
from model_store.manifest import read_verified_weights
from model_store.sd_kind import KIND, TokenizerFile, sizes
from worker.kinds import mask_tensor
from worker.kinds.diffusers_unet2d import DiffusersUNet2D

EMBEDDING_CACHE_BYTES = 64 * 2**20  # an SD prompt embedding is 77 x 768 fp32, about 236 KB: some 280 prompts
PROBE_PROMPTS = ("", "a red heart", "a photograph of a cat", "the moon over a house")
PARTS = ("unet", "vae", "text_encoder")


def parts_of(state: dict[str, torch.Tensor], where: str) -> dict[str, dict[str, torch.Tensor]]:
    """The one weights file's tensors, split by part prefix (`unet.`, `vae.`, `text_encoder.`)."""
    found: dict[str, dict[str, torch.Tensor]] = {part: {} for part in PARTS}
    for key, value in state.items():
        part, _, name = key.partition(".")
        if part not in found or not name:
            raise ModelStoreError(f"{where}: weight {key!r} belongs to no part ({', '.join(PARTS)})")
        found[part][name] = value
    return found


class UNetConditioned(nn.Module):
    """`net(x, t, c)` -> the UNet's output, for (B, 1, 1, 1) or (B,) discrete timesteps and (B, L, D) prompt
    embeddings (UNet2DConditionModel.forward's `encoder_hidden_states`)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t.reshape(-1), encoder_hidden_states=c, return_dict=False)[0]


def build_parts(manifest: Manifest) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(unet, vae, text_encoder), untrained, from the manifest's configs; an ImportError says what to install."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built from the store's files: nothing is fetched
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError as exc:
        raise ModelStoreError(
            f"{manifest.ref}: {KIND} models need diffusers and transformers (pip install 'diffusetv[worker]'): {exc}"
        ) from None
    unet = UNet2DConditionModel.from_config(manifest.config)
    vae = AutoencoderKL.from_config(manifest.extras["vae"])
    return unet, vae, CLIPTextModel(CLIPTextConfig.from_dict(manifest.extras["text_encoder"]))


class DiffusersSD(DiffusersUNet2D):
    conditioned = True

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        latent = manifest.extras["latent"]
        self.channels = int(manifest.config.get("in_channels", latent["channels"]))
        self.factor = int(latent["vae_scale_factor"])
        self.scaling = float(latent["scaling_factor"])
        self.shift = latent.get("shift_factor")
        self.sizes = sizes(manifest)
        self.tokens = TokenizerFile.of(manifest)
        self.vae: nn.Module | None = None
        self.text_encoder: nn.Module | None = None
        self.tokenizer = None
        self.embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cached_bytes = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.shape_at(None)

    def shape_at(self, size: tuple[int, int] | None) -> tuple[int, int, int]:
        """(channels, height, width) of the latents of a (width, height) image (the default size's for None)."""
        width, height = size if size is not None else self.sizes[0]
        return self.channels, height // self.factor, width // self.factor

    def all_sizes(self) -> list[tuple[int, int] | None]:
        return list(self.sizes)

    def image_shape_at(self, size: tuple[int, int] | None) -> tuple[int, int, int]:
        width, height = size if size is not None else self.sizes[0]
        return 3, height, width

    def parts(self, net: nn.Module) -> list[nn.Module]:
        return [net, *(m for m in (self.vae, self.text_encoder) if m is not None)]

    def network(self, device: str) -> nn.Module:
        unet, vae, text_encoder = build_parts(self.manifest)
        where = str(self.manifest.weights_path)
        parts = parts_of(load_safetensors(read_verified_weights(self.manifest)), where)
        for name, module in zip(PARTS, (unet, vae, text_encoder), strict=True):
            try:
                module.load_state_dict(parts[name], strict=True)
            except RuntimeError as exc:
                first = " ".join(str(exc).splitlines()[:2])
                raise ModelStoreError(f"{where}: the {name} weights do not fit its config ({first})") from None
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.tokens.read(self.manifest))
        pad_id = tokenizer.token_to_id(self.tokens.pad_token)
        if pad_id is None:
            raise ModelStoreError(f"{self.manifest.file}: pad token {self.tokens.pad_token!r} is not in the tokenizer")
        tokenizer.enable_truncation(self.tokens.max_length)  # diffusers: truncation=True, max_length=model_max_length
        tokenizer.enable_padding(length=self.tokens.max_length, pad_id=pad_id, pad_token=self.tokens.pad_token)
        self.tokenizer = tokenizer
        self.vae = vae.to(device).eval()
        self.text_encoder = text_encoder.to(device).eval()
        return UNetConditioned(unet).to(device).eval()

    @torch.inference_mode()
    def embed(self, prompt: str) -> torch.Tensor:
        """The (L, D) embedding of a normalised prompt ("" is the empty prompt), computed alone, float32:
        `text_encoder(tokenizer(prompt, padding="max_length", truncation=True).input_ids)[0]`, as the pipeline's
        `encode_prompt` does for CLIP."""
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError("the network is not loaded")
        if prompt not in self.embeddings:
            device = next(self.text_encoder.parameters()).device
            ids = torch.tensor([self.tokenizer.encode(prompt).ids], dtype=torch.long, device=device)
            embedding = self.text_encoder(ids, attention_mask=None)[0][0].float()
            self.embeddings[prompt] = embedding
            self.cached_bytes += embedding.numel() * embedding.element_size()
            while self.cached_bytes > EMBEDDING_CACHE_BYTES and len(self.embeddings) > 1:
                _, dropped = self.embeddings.popitem(last=False)
                self.cached_bytes -= dropped.numel() * dropped.element_size()
        self.embeddings.move_to_end(prompt)
        return self.embeddings[prompt]

    def condition(self, prompt: str | None, guidance: float | None, negative: str | None = None) -> Condition:
        """diffusers' guidance: at s > 1, eq. 6 with the negative prompt's embedding (else the empty prompt's) as the
        unconditional branch; at s <= 1 the conditional row alone (`do_classifier_free_guidance` is s > 1). Every
        job is conditioned: no prompt is the empty one."""
        scale = 1.0 if guidance is None else float(guidance)
        cond = self.embed(prompt or "")
        if scale <= 1:
            return Condition(cond, 1.0)
        return Condition(cond, scale, self.embed(negative) if negative else None)

    def probe_conditions(self, rows: int) -> torch.Tensor:
        """Conditions for the kernel probe: a few fixed prompts' embeddings, in turn."""
        return torch.stack([self.embed(PROBE_PROMPTS[i % len(PROBE_PROMPTS)]) for i in range(rows)])

    @torch.inference_mode()
    def to_model(self, pixels: np.ndarray, gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, C, h, w) latents, one row per call: `vae.encode(2·p/255 − 1).latent_dist`
        sampled with the row's generator (its `.mode()` without generators), times `scaling_factor` (with a shift
        factor, (z − shift)·scaling, the inverse of `pixels`)."""
        if self.vae is None:
            raise RuntimeError("the network is not loaded")
        if gens is not None and len(gens) != len(pixels):
            raise ValueError(f"{len(pixels)} pictures and {len(gens)} generators")
        device = next(self.vae.parameters()).device
        images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255.0
        images = 2.0 * images - 1.0  # VaeImageProcessor.normalize
        latents = []
        for i, row in enumerate(images.split(1)):
            dist = self.vae.encode(row.to(device), return_dict=False)[0]
            z = dist.mode() if gens is None else dist.sample(generator=gens[i])  # retrieve_latents
            z = z.float()
            z = z * self.scaling if self.shift is None else (z - float(self.shift)) * self.scaling
            latents.append(z.cpu())
        return torch.cat(latents).contiguous()

    def mask_to_model(self, mask: np.ndarray) -> torch.Tensor:
        """(B, H, W, 1) uint8 -> (B, 1, H/f, W/f) float 0/1: StableDiffusionInpaintPipeline.prepare_mask_latents'
        `interpolate(mask, size=(H // f, W // f))` (nearest)."""
        full = mask_tensor(mask)
        size = (full.shape[2] // self.factor, full.shape[3] // self.factor)
        return torch.nn.functional.interpolate(full, size=size).contiguous()

    @torch.inference_mode()
    def pixels(self, x0: torch.Tensor) -> np.ndarray:
        """(B, C, h, w) latents -> (B, H, W, 3) uint8: `vae.decode(latents / scaling_factor)`, one row per call."""
        if self.vae is None:
            raise RuntimeError("the network is not loaded")
        device = next(self.vae.parameters()).device
        images = []
        for row in x0.float().to(device).split(1):
            latents = row / self.scaling if self.shift is None else row / self.scaling + float(self.shift)
            images.append(self.vae.decode(latents, return_dict=False)[0].float().cpu())
        return denormalised_pixels(torch.cat(images), [0.5] * 3, [0.5] * 3)  # (x/2 + 0.5).clamp(0, 1), round(·255)
