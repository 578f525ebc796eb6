"""Small random diffusers UNet2DModels with attention, saved as diffusers folders (importable as
`diffusers_models`); and diffusers' own DDIMPipeline image for a seed, the reference of the parity tests."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_unet(seed: int = 0, sample_size: int | list[int] = 16, channels: int = 3):
    """A UNet2DModel of two levels, the lower one with self-attention (as ddpm-cifar10-32 has), in eval mode."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )
    return unet.eval()


def save_pipeline(folder: Path, unet, scheduler, variant: str | None = None, safe: bool = True) -> Path:
    """A DDPMPipeline folder as `save_pretrained` writes it (model_index.json, unet/, scheduler/)."""
    from diffusers import DDPMPipeline

    if variant == "fp16":
        unet = unet.to(torch.float16)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, variant=variant, safe_serialization=safe)
    return folder


def pipeline_image(folder: Path, seed: int, steps: int, eta: float) -> torch.Tensor:
    """diffusers' image: DDIMPipeline(...)(generator=torch.Generator().manual_seed(seed), ...), as a float
    (1, C, H, W) tensor in [0, 1], before quantisation."""
    from diffusers import DDIMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / "unet", variant=None).to(torch.float32)
    pipe = DDIMPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=steps, eta=eta, output_type="pt")
    return out.images.float()


def quantised(images: torch.Tensor):
    """diffusers' numpy_to_pil: (images * 255).round() as uint8, (B, H, W, C)."""
    return (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def saturation(pixels) -> float:
    """The share of pixel values at 0 or 255."""
    return float(((pixels == 0) | (pixels == 255)).mean())
