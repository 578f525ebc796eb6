"""Tiny random Stable Diffusion pipelines, saved as `StableDiffusionPipeline` folders with no hub: a small
`UNet2DConditionModel`, `AutoencoderKL` and `CLIPTextModel`, and a CLIP BPE tokenizer whose vocabulary and merges
are written here. And diffusers' own image for a request, the reference of the parity tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from bench.sd_pipeline import bytes_to_unicode  # GPT-2's (and CLIP's) map of bytes to characters

# A byte-level BPE vocabulary: every byte's symbol (as GPT-2/CLIP map bytes to unicode), each also with the
# end-of-word marker, a few merges, and CLIP's specials. Any text tokenizes (unknown words fall back to bytes).
WORDS = ("a", "red", "heart", "blue", "cat", "dog", "tree", "house", "sun", "moon", "on", "the", "of", "big")


def write_tokenizer(folder: Path, max_length: int = 77, pad: str = "<|endoftext|>") -> Path:
    """A CLIPTokenizer folder (vocab.json, merges.txt and its configs) with a small vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = []
    for word in WORDS:  # merge each word left to right: w o r d -> wo r d -> wor d -> word</w>
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            if parts[0] not in vocab_list:
                vocab_list.append(parts[0])
    merges = list(dict.fromkeys(merges))
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    if pad not in vocab_list:
        vocab_list.append(pad)
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps({**specials, "pad_token": pad}))
    config = {**specials, "pad_token": pad, "model_max_length": max_length, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "CLIPTokenizer"}))
    return folder


def tiny_parts(seed: int = 0, prediction: str = "epsilon", vocab_size: int = 600, latent_channels: int = 4):
    """(unet, vae, text_encoder, scheduler) of a tiny SD pipeline, random weights, eval mode."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=latent_channels,
        out_channels=latent_channels,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=16,
        scaling_factor=0.5,
    ).eval()
    with torch.no_grad():  # a random decoder's colours reach far past [-1, 1]: halve them, so few pixels clip
        vae.decoder.conv_out.weight.mul_(0.5)
        vae.decoder.conv_out.bias.mul_(0.5)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
        )
    ).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction,
    )
    return unet, vae, text, scheduler


def save_sd_pipeline(folder: Path, seed: int = 0, prediction: str = "epsilon", variant: str | None = None) -> Path:
    """A StableDiffusionPipeline folder as `save_pretrained` writes it, with no safety checker."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tok_dir = write_tokenizer(folder.parent / f".{folder.name}-tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    unet, vae, text, scheduler = tiny_parts(seed, prediction, vocab_size=len(tokenizer))
    if variant == "fp16":
        unet, vae, text = (m.to(torch.float16) for m in (unet, vae, text))
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, variant=variant, safe_serialization=True)
    shutil.rmtree(folder / "tokenizer")  # as SD folders carry it: the slow tokenizer's files, no tokenizer.json
    shutil.copytree(tok_dir, folder / "tokenizer")
    shutil.rmtree(tok_dir)
    return folder


def sd_reference(
    folder: Path,
    prompt: str,
    seed: int,
    steps: int,
    eta: float = 0.0,
    guidance: float = 7.5,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' StableDiffusionPipeline with a DDIMScheduler, fp32 on the CPU: (the final latents (1, C, h, w),
    the image as a float (1, 3, H, W) tensor in [0, 1] before quantisation)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(
        prompt=prompt,
        negative_prompt=negative_prompt,
        guidance_scale=guidance,
        num_inference_steps=steps,
        eta=eta,
        width=width,
        height=height,
    )
    latents = pipe(**kwargs, generator=torch.Generator().manual_seed(seed), output_type="latent").images.float()
    image = pipe(**kwargs, generator=torch.Generator().manual_seed(seed), output_type="pt").images.float()
    return latents, image
