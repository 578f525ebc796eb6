"""`diffusetv import diffusers DIR`: a diffusers DDPM/DDIM pipeline folder (or a UNet2DModel folder and a
scheduler config) as a `diffusers-unet2d` store version.

What is read: `model_index.json` (a pipeline), `unet/config.json`, the UNet's weights and
`scheduler/scheduler_config.json`. The weights are the safetensors file, else its `fp16` variant (upcast
to fp32), else a `.bin` pickle read with `torch.load(weights_only=True)`, here and only here. What is
refused, with one line: latent and conditional pipelines, UNets other than an unconditional
`UNet2DModel`, shapes the service cannot encode, and scheduler options that change DDIM in a way not
implemented (model_store.diffusers_kind).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from model_store.diffusers_kind import KIND, ddim_scheduler, shape
from model_store.errors import ModelStoreError
from model_store.importers.single_file import refusal
from model_store.manifest import Manifest
from model_store.store import Store
from model_store.weights import save_state

# Pipeline components that make a pipeline latent or conditional: refused.
LATENT_OR_CONDITIONAL = ("vae", "vqvae", "text_encoder", "text_encoder_2", "tokenizer", "image_encoder", "unet_2")
# The weights files of a diffusers model folder, in order of preference: safetensors, its fp16 variant, a pickle.
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
# The same for a transformers model folder (a text encoder).
TRANSFORMERS_WEIGHT_FILES = (
    "model.safetensors",
    "model.fp16.safetensors",
    "pytorch_model.bin",
    "pytorch_model.fp16.bin",
)
CHANNELS = (1, 3)  # greyscale (an L PNG) and RGB


def read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise ModelStoreError(f"{file}: missing") from None
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"{file}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelStoreError(f"{file}: not a JSON object")
    return data


def check_pipeline(index: dict, file: Path) -> None:
    """Refuse latent and conditional pipelines, and any whose UNet is not a UNet2DModel."""
    cls = index.get("_class_name", "a pipeline")
    for part in LATENT_OR_CONDITIONAL:
        if index.get(part) not in (None, [None, None]):
            raise ModelStoreError(
                f"{file}: {cls} has a {part!r}: latent and conditional pipelines are not supported "
                "(only unconditional pixel-space UNet2DModel pipelines, e.g. DDPMPipeline or DDIMPipeline)"
            )
    unet = index.get("unet")
    if not (isinstance(unet, list) and len(unet) == 2 and unet[1] == "UNet2DModel"):
        raise ModelStoreError(f"{file}: {cls}'s unet is {unet!r}, not a diffusers UNet2DModel")


def check_unet(config: dict, file: Path) -> None:
    """An unconditional UNet2DModel whose output is its input's shape, in 1 or 3 channels."""
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ModelStoreError(f"{file}: a {cls} is not supported (only an unconditional UNet2DModel)")
    if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
        raise ModelStoreError(f"{file}: a class-conditional UNet2DModel (class embeddings) is not supported")
    height, width, channels = shape(config)
    out = int(config.get("out_channels", 3))
    if out != channels:
        raise ModelStoreError(f"{file}: out_channels {out} differs from in_channels {channels}; DDIM needs them equal")
    if channels not in CHANNELS:
        raise ModelStoreError(f"{file}: {channels} channels are not supported (1: greyscale, 3: RGB)")
    if min(height, width) < 1:
        raise ModelStoreError(f"{file}: sample_size {config.get('sample_size')!r} is not a positive size")


def find_folders(source: Path, scheduler: Path | None) -> tuple[Path, Path, str]:
    """(the UNet folder, the scheduler config file, what DIR is) for a pipeline folder or a UNet folder."""
    if source.is_file():
        raise ModelStoreError(refusal(source))
    if not source.is_dir():
        raise ModelStoreError(f"{source}: not a folder (a diffusers pipeline folder or a UNet2DModel folder)")
    index_file = source / "model_index.json"
    if index_file.is_file():
        check_pipeline(read_json(index_file), index_file)
        unet_dir = source / "unet"
        scheduler_file = scheduler or source / "scheduler"
        what = str(read_json(index_file).get("_class_name", "pipeline"))
    elif (source / "config.json").is_file():
        if scheduler is None:
            raise ModelStoreError(
                f"{source}: a UNet2DModel folder needs --scheduler FILE_OR_DIR (its scheduler config)"
            )
        unet_dir, scheduler_file, what = source, scheduler, "UNet2DModel folder"
    else:
        raise ModelStoreError(f"{source}: neither a pipeline (model_index.json) nor a UNet2DModel folder (config.json)")
    if scheduler_file.is_dir():
        scheduler_file = scheduler_file / "scheduler_config.json"
    return unet_dir, scheduler_file, what


def read_weights(
    folder: Path, files: tuple[str, ...] = WEIGHT_FILES, part: str = "UNet"
) -> tuple[dict[str, torch.Tensor], str, str]:
    """(the fp32 state dict, the file read, the source dtype) of the first of `files` in `folder`. A `.bin` is a
    pickle: weights_only=True."""
    for name in files:
        file = folder / name
        if not file.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                state = load_file(file)
            else:  # a pickle: only tensors and plain containers are unpickled, and only here, never served
                state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # safetensors and torch.load raise their own types for a bad file
            raise ModelStoreError(f"{file}: unreadable weights ({exc})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelStoreError(f"{file}: not a state dict of tensors")
        dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
        if not dtypes:
            raise ModelStoreError(f"{file}: no floating-point weights")
        state = {k: (v.to(torch.float32) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
        return state, name, ",".join(dtypes)
    index = next(folder.glob("*.index*.json"), None)
    if index is not None:
        raise ModelStoreError(f"{folder}: sharded weights ({index.name}) are not supported")
    raise ModelStoreError(f"{folder}: no {part} weights (looked for {', '.join(files)})")


def check_finite(state: dict[str, torch.Tensor], file: Path) -> None:
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise ModelStoreError(f"{file}: weight {bad!r} is not finite")


def verify(config: dict, state: dict[str, torch.Tensor], file: Path) -> None:
    """The weights fit the config exactly, as diffusers' UNet2DModel, and are finite."""
    from diffusion.diffusers_unet import unet2d

    check_finite(state, file)
    try:
        net = unet2d(config)
    except ImportError as exc:
        raise ModelStoreError(str(exc)) from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:2]
        raise ModelStoreError(f"{file}: weights do not fit the UNet config ({' '.join(first)})") from None


def import_diffusers(source: Path, name: str, scheduler: Path | None = None, store: Store | None = None) -> Manifest:
    """Convert a diffusers pipeline (or UNet folder + scheduler config) and publish it as the next version of `name`."""
    store = store or Store()
    store.next_version(name)  # a bad name is refused before anything is read
    unet_dir, scheduler_file, what = find_folders(source, scheduler)
    unet_file = unet_dir / "config.json"
    unet_config = read_json(unet_file)
    check_unet(unet_config, unet_file)
    scheduler_config = read_json(scheduler_file)
    settings, ignored = ddim_scheduler(scheduler_config, str(scheduler_file))
    state, weights_file, source_dtype = read_weights(unet_dir)
    config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    verify(config, state, unet_dir / weights_file)
    channels = shape(config)[2]
    training = {
        "imported": {
            "from": "diffusers",
            "what": what,
            "source": str(source),
            "weights_file": weights_file,
            "source_dtype": source_dtype,
            "stored_dtype": "float32",
            "unet_class": unet_config.get("_class_name", "UNet2DModel"),
            "scheduler_class": scheduler_config.get("_class_name"),
            "diffusers_version": unet_config.get("_diffusers_version"),
            "ignored_scheduler_keys": ignored,
        }
    }
    schedule = "trained_betas" if settings["trained_betas"] is not None else settings["beta_schedule"]
    return save_state(
        store,
        name,
        state,
        config,
        schedule,
        [0.5] * channels,  # model space [-1, 1]: pixels are x/2 + 0.5, as DDIMPipeline's
        [0.5] * channels,
        training,
        kind=KIND,
        extras={"scheduler": settings, "scheduler_config": scheduler_config},
    )
