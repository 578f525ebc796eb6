"""Load and save model weights (safetensors). Imports torch: only the worker and the CLI use this."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from diffusion.unet import UNet, UNetConfig
from model_store import kinds
from model_store.errors import ModelStoreError
from model_store.manifest import MANIFEST, WEIGHTS, Manifest, read_verified_weights, sha256_bytes
from model_store.store import Store

UNET_KIND = "ddim-unet"
TEXT_KIND = "ddim-unet-text"


def read_state(manifest: Manifest, kind: str) -> dict[str, torch.Tensor]:
    """The weights of a model of `kind`, after checking their sha256: the same bytes are hashed and parsed."""
    kinds.require(manifest, kind)
    data = read_verified_weights(manifest)
    try:
        return load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ModelStoreError(f"{manifest.weights_path}: not a readable safetensors file ({exc})") from None


def load_model(manifest: Manifest, device: str | torch.device = "cpu", kind: str = UNET_KIND) -> UNet:
    """Build the U-Net from the manifest's config and load its verified EMA weights, in eval mode.

    `kind` is the manifest's: `ddim-unet`, or `ddim-unet-text` for the prompt-conditioned U-Net."""
    state = read_state(manifest, kind)
    net = UNet(UNetConfig.from_dict(manifest.config))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelStoreError(f"{manifest.weights_path}: weights do not fit the config ({exc})") from None
    return net.to(device).eval()


def save_model(
    store: Store,
    name: str,
    net: torch.nn.Module,
    schedule: str,
    mean: list[float],
    std: list[float],
    training: dict,
    kind: str = UNET_KIND,
    extras: dict | None = None,
) -> Manifest:
    """Write the weights and manifest as the next version of `name`, atomically. `net.config` has `to_dict()`."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    return save_state(store, name, state, net.config.to_dict(), schedule, mean, std, training, kind, extras)


def save_state(
    store: Store,
    name: str,
    state: dict[str, torch.Tensor],
    config: dict,
    schedule: str,
    mean: list[float],
    std: list[float],
    training: dict,
    kind: str = UNET_KIND,
    extras: dict | None = None,
    files: dict[str, bytes] | None = None,
) -> Manifest:
    """Write a state dict (as safetensors) and its manifest as the next version of `name`, atomically, with `files`
    (plain names: bytes, e.g. a tokenizer the manifest names with its sha256) beside them."""
    version = store.next_version(name)
    data = save_safetensors({k: v.detach().cpu().contiguous() for k, v in state.items()})
    manifest = Manifest(
        name=name,
        version=version,
        config=config,
        schedule=schedule,
        mean=list(mean),
        std=list(std),
        sha256=sha256_bytes(data),
        training=training,
        kind=kind,
        extras=dict(extras or {}),
    )
    final = store.root / name / str(version)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a published model is readable like any file
    try:
        for file, content in (files or {}).items():
            (tmp / file).write_bytes(content)
        (tmp / WEIGHTS).write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        os.rename(tmp, final)  # fails if the version appeared meanwhile: never overwrite a model
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelStoreError(f"cannot write {final}: {exc.strerror or exc}") from None
    return store.resolve(f"{name}@{version}")


def publish_run(
    store: Store, run_dir: Path, name: str, captions: list[str] | None = None, default_guidance: float = 3.0
) -> Manifest:
    """Take a training run's EMA weights (checkpoint.pt, read with weights_only=True) into the store.

    A prompt-conditioned run becomes a `ddim-unet-text` model: its vocabulary, `captions` (the training
    captions, for suggestions) and `default_guidance` go into the manifest's `text` field."""
    run_file, checkpoint = run_dir / "run.json", run_dir / "checkpoint.pt"
    if not run_file.is_file() or not checkpoint.is_file():
        raise ModelStoreError(f"{run_dir}: not a training run (needs run.json and checkpoint.pt)")
    run = json.loads(run_file.read_text())
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = UNet(UNetConfig.from_dict(run["unet"]))
    net.load_state_dict(payload["ema"])
    cfg = run["config"]
    training = {
        "steps": int(payload["step"]),
        "elapsed_s": round(float(payload["elapsed_s"]), 1),
        "batch_size": cfg["batch_size"],
        "learning_rate": cfg["learning_rate"],
        "lr_decay": cfg.get("lr_decay", "constant"),  # runs from before the option held it constant
        "p2": {"gamma": cfg.get("p2_gamma", 0.0), "k": cfg.get("p2_k", 1.0)},  # 0: the unweighted loss
        "weight_decay": cfg["weight_decay"],
        "ema": {"max": cfg["ema_max"], "warmup_power": cfg["ema_power"]},
        "seed": cfg["seed"],
        "data": run["data"],
        "hardware": run["hardware"],
        "recipe": cfg.get("recipe", {}),
        "resumes": run.get("resumes", []),
    }
    if cfg.get("init"):
        training["init"] = cfg["init"]
    norm = run["normalization"]
    if "vocabulary" not in run:
        return save_model(store, name, net, cfg["schedule"], norm["mean"], norm["std"], training)
    from model_store.text import TEXT_FIELD, TextSpec
    from model_store.vocabulary import Vocabulary

    training["prompt_dropout"] = cfg["prompt_dropout"]
    text = TextSpec(Vocabulary.from_dict(run["vocabulary"]), tuple(captions or ()), float(default_guidance))
    extras = {TEXT_FIELD: text.to_json()}
    return save_model(store, name, net, cfg["schedule"], norm["mean"], norm["std"], training, TEXT_KIND, extras)
