"""Random-weights Stable Diffusion pipelines for `bench sd`, written in code (nothing is downloaded), kept in a cache.

    python -m bench.sd_pipeline {tiny,sd-1.5} DIR [--store STORE]     # the folder, for diffusers; and its import

Two shapes: `tiny` (a few hundred thousand parameters, for smoke runs) and `sd-1.5` (Stable Diffusion 1.5's
UNet2DConditionModel, AutoencoderKL and CLIPTextModel configs, 1.07 G parameters, about 4.3 GB in fp32). Each is
built once with a fixed seed, saved as a `StableDiffusionPipeline` folder with SD 1.5's DDIM scheduler settings and
a synthetic CLIP BPE tokenizer, and imported with `diffusetv import diffusers`. Both live under the cache directory,
in a folder named after the pipeline and a digest of its configs, and are reused by later runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

DEFAULT_CACHE = Path("~/.cache/diffusetv-bench")
MODEL = "sdbench"
SEED = 0
# Words of the bench's prompts, given merges; any text tokenizes (what no merge joins stays in byte tokens).
WORDS = ("a", "photograph", "of", "red", "heart", "on", "the", "moon", "cat", "tree", "house")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class Shape:
    """One pipeline's configs (diffusers' and transformers' keyword arguments), its vocabulary and its image size."""

    name: str
    unet: dict
    vae: dict
    text_encoder: dict
    vocab_size: int
    size: tuple[int, int]  # (width, height) of the compared images

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# Stable Diffusion 1.5's configs (the architecture only; the weights are random here).
SD15 = Shape(
    name="sd-1.5",
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    text_encoder={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
    },
    vocab_size=49408,
    size=(256, 256),  # a quarter of the work of 512x512
)
# The same block types, a few hundred thousand parameters: seconds, for smoke runs.
TINY = Shape(
    name="tiny",
    unet={
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (16, 32),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 24,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 32,
        "scaling_factor": 0.18215,
    },
    text_encoder={
        "hidden_size": 24,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "projection_dim": 24,
        "hidden_act": "quick_gelu",
    },
    vocab_size=1000,
    size=(32, 32),
)
SHAPES = {shape.name: shape for shape in (TINY, SD15)}
# Stable Diffusion 1.5's scheduler settings, as a DDIMScheduler.
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's (and CLIP's) reversible map of bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_tokenizer(folder: Path, vocab_size: int, max_length: int = 77) -> Path:
    """A CLIPTokenizer folder (vocab.json, merges.txt, its configs, as SD folders carry it) whose vocabulary has
    `vocab_size` entries, as CLIP's: every byte's symbol alone and with the end-of-word marker, merges joining each of
    WORDS left to right, unused fillers up to the size, then the start and end tokens (the end is also the pad)."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges = []
    for word in WORDS:  # w o r d</w> -> wo r d</w> -> wor d</w> -> word</w>
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.append(parts[0])
    vocab = list(dict.fromkeys(vocab))
    fillers = vocab_size - len(vocab) - 2
    if fillers < 0:
        raise ValueError(f"a vocabulary of {vocab_size} entries cannot hold the {len(vocab) + 2} needed")
    vocab += [f"<|filler{i}|>" for i in range(fillers)] + [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    config = {**specials, "model_max_length": max_length, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def parts(shape: Shape, seed: int = SEED):
    """(unet, vae, text_encoder, scheduler) of `shape`, random weights drawn from `seed`, fp32, eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**shape.unet).eval()
    vae = AutoencoderKL(**shape.vae).eval()
    text = CLIPTextConfig(
        **shape.text_encoder,
        vocab_size=shape.vocab_size,
        bos_token_id=shape.vocab_size - 2,
        eos_token_id=shape.vocab_size - 1,
    )
    return unet, vae, CLIPTextModel(text).eval(), DDIMScheduler(**SCHEDULER)


def save_pipeline(shape: Shape, folder: Path, seed: int = SEED) -> Path:
    """`shape` as a StableDiffusionPipeline folder (safetensors, no safety checker), written beside `folder` and
    renamed into place when whole."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    partial = folder.with_name(folder.name + ".partial")
    tokenizer = folder.with_name(folder.name + ".tokenizer")
    for leftover in (partial, tokenizer):
        shutil.rmtree(leftover, ignore_errors=True)
    write_tokenizer(tokenizer, shape.vocab_size)
    unet, vae, text_encoder, scheduler = parts(shape, seed)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(partial, safe_serialization=True)
    shutil.rmtree(partial / "tokenizer")  # the slow tokenizer's files alone, as SD folders carry them
    shutil.move(tokenizer, partial / "tokenizer")
    partial.rename(folder)
    return folder


def import_pipeline(folder: Path, store: Path, size: tuple[int, int]) -> None:
    """`diffusetv import diffusers FOLDER --name sdbench --sizes WxH`, into the store at `store`."""
    from diffusetv.cli import main as diffusetv

    os.environ["DIFFUSETV_MODEL_STORE"] = str(store)
    code = diffusetv(["import", "diffusers", str(folder), "--name", MODEL, "--sizes", f"{size[0]}x{size[1]}"])
    if code:
        raise SystemExit(f"importing {folder} failed ({code})")


def prepared(shape: Shape, cache: Path, say=print) -> tuple[Path, Path]:
    """(the pipeline folder, the store holding it as `sdbench@1`): from the cache, else built and imported there by
    this module's command in a child process, so that their memory is not this process's."""
    home = cache.expanduser() / f"{shape.name}-{shape.digest}"
    folder, store = home / "pipeline", home / "models"
    if not (store / MODEL / "1" / "model.json").is_file():
        say(f"building the {shape.name} pipeline (random weights, seed {SEED}) in {folder} and importing it")
        repo = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (repo, os.environ.get("PYTHONPATH"))))}
        command = [sys.executable, "-m", "bench.sd_pipeline", shape.name, str(folder), "--store", str(store)]
        subprocess.run(command, check=True, env=env)
    return folder, store


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sd_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=list(SHAPES), help="which pipeline")
    parser.add_argument("folder", type=Path, help="the StableDiffusionPipeline folder to write, unless it is there")
    parser.add_argument("--store", type=Path, help="also import it there as sdbench@1 (replacing what is there)")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not (args.folder / "model_index.json").is_file():
        args.folder.parent.mkdir(parents=True, exist_ok=True)
        save_pipeline(shape, args.folder)
    if args.store:
        shutil.rmtree(args.store, ignore_errors=True)
        import_pipeline(args.folder, args.store, shape.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
