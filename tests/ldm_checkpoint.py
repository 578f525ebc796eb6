"""A Stable Diffusion pipeline's weights as one single-file checkpoint in the original LDM (CompVis) layout, the
layout AUTOMATIC1111 and ComfyUI read: the inverse of what diffusers' `from_single_file` converts.

The key names follow diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py (Apache-2.0, The
HuggingFace Team), which hard-codes SD 1.x's four levels of two layers. Here the block indices are derived from the
config, as diffusers.loaders.single_file_utils reads them back (convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint), so that tiny pipelines convert too.
"""

from __future__ import annotations

import re

import torch

UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."

UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
VAE_TOP = {"conv_norm_out.": "norm_out."}
VAE_RESNET = {"conv_shortcut.": "nin_shortcut."}
VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def renamed(rest: str, names: dict[str, str]) -> str:
    for new, old in names.items():
        if rest.startswith(new):
            return old + rest[len(new) :]
    return rest


def unet_key(key: str, config: dict) -> str:
    """A UNet2DConditionModel key's LDM name. Level i of the down path has `layers_per_block` resnets (each with its
    attention, if any), then its downsampler; level i of the up path has one more resnet, then its upsampler, after
    the attention when the level has one."""
    per = config["layers_per_block"]
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        way, i, part, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        where = f"input_blocks.{1 + i * (per + 1) + j}" if way == "down" else f"output_blocks.{i * (per + 1) + j}"
        return f"{where}.0.{renamed(rest, UNET_RESNET)}" if part == "resnets" else f"{where}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (per + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        i = int(m[1])
        after = 2 if "CrossAttn" in config["up_block_types"][i] else 1
        return f"output_blocks.{i * (per + 1) + per}.{after}.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):  # resnet 0, attention, resnet 1
        return f"middle_block.{2 * int(m[1])}.{renamed(m[2], UNET_RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    return renamed(key, UNET_TOP)


def vae_key(key: str, config: dict) -> str:
    """An AutoencoderKL key's LDM name. The decoder's up levels are numbered from the bottom in LDM."""
    levels = len(config["block_out_channels"])
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{renamed(m[3], VAE_RESNET)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{renamed(m[3], VAE_RESNET)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{renamed(m[3], VAE_RESNET)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{renamed(m[2], VAE_ATTENTION)}"
    if m := re.fullmatch(r"(encoder|decoder)\.(.+)", key):
        return f"{m[1]}.{renamed(m[2], VAE_TOP)}"
    return key  # quant_conv, post_quant_conv


def vae_tensor(ldm: str, value: torch.Tensor) -> torch.Tensor:
    """LDM's VAE attention projections are 1x1 convolutions: (out, in) -> (out, in, 1, 1)."""
    if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm) and value.ndim == 2:
        return value[:, :, None, None]
    return value


def text_key(key: str) -> str:
    """A CLIPTextModel key as SD 1.x checkpoints hold it (transformers' state dict, under `text_model.`)."""
    return TEXT + (key if key.startswith("text_model.") or key == "text_projection.weight" else f"text_model.{key}")


def ldm_checkpoint(unet: dict, unet_config: dict, vae: dict, vae_config: dict, text: dict) -> dict[str, torch.Tensor]:
    """The three state dicts of a SD 1.x pipeline as one LDM state dict; no two keys may land on one name."""
    out: dict[str, torch.Tensor] = {}

    def put(name: str, value: torch.Tensor) -> None:
        assert name not in out, f"two weights map to {name}"
        out[name] = value

    for key, value in unet.items():
        put(UNET + unet_key(key, unet_config), value)
    for key, value in vae.items():
        name = vae_key(key, vae_config)
        put(VAE + name, vae_tensor(name, value))
    for key, value in text.items():
        put(text_key(key), value)
    return out
