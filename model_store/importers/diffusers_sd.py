"""`diffusetv import diffusers DIR` for a Stable Diffusion pipeline folder: a `diffusers-sd` store version.

What is read: a `StableDiffusionPipeline` folder as diffusers saves it (SD 1.x, SD 2.x base and SD 2.x
v-prediction): `model_index.json`, `unet/` (a `UNet2DConditionModel`), `vae/` (an `AutoencoderKL`),
`text_encoder/` (a `CLIPTextModel`), `tokenizer/` (CLIP's BPE files) and `scheduler/scheduler_config.json`. Each
part's weights are read as model_store.importers.diffusers reads a UNet's (safetensors, else the fp16 variant
upcast to fp32, else a pickle with weights_only=True), built from its config and loaded strictly, and all three
go into one fp32 safetensors file under the prefixes `unet.`, `vae.` and `text_encoder.`: its sha256 is the
model's digest. The tokenizer is stored beside model.json as its fast tokenizer's `tokenizer.json`, so that a
process without torch tokenizes with `tokenizers` alone. A safety checker and a feature extractor are not part of
the model: ignored, and recorded. Refused, one line each: SDXL, LCM, upscalers and unCLIP, UNets that take more
than the latents (inpainting, depth, instruct-pix2pix), ControlNets and adapters, other text encoders and
tokenizers, sharded weights and missing parts.
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from model_store.bounds import MAX_GUIDANCE, MIN_GUIDANCE
from model_store.diffusers_kind import ddim_scheduler, shape
from model_store.errors import ModelStoreError
from model_store.importers.diffusers import (
    TRANSFORMERS_WEIGHT_FILES,
    WEIGHT_FILES,
    check_finite,
    read_json,
    read_weights,
)
from model_store.importers.single_file import refusal
from model_store.manifest import Manifest, sha256_bytes
from model_store.store import Store
from model_store.weights import save_state

KIND = "diffusers-sd"
# The parts of a StableDiffusionPipeline that make the model, and the classes each may be.
CLASSES = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,  # any: its config is read as DDIMScheduler.from_config reads it
}
IGNORED = ("safety_checker", "feature_extractor")  # not part of the model's output
# Pipeline parts of other models than a Stable Diffusion text-to-image one; any other part is refused too.
FOREIGN = {
    "text_encoder_2": "an SDXL pipeline (a second text encoder)",
    "tokenizer_2": "an SDXL pipeline (a second tokenizer)",
    "controlnet": "a ControlNet pipeline",
    "adapter": "a T2I-Adapter pipeline",
    "image_encoder": "an IP-Adapter or unCLIP pipeline (an image encoder)",
    "prior": "a prior (unCLIP, Kandinsky or Würstchen)",
    "unet_2": "a pipeline with two UNets",
    "low_res_scheduler": "an upscaler pipeline",
}
# UNet options of SD variants that a text-to-image latent UNet does not have, and what they make it.
VARIANTS = {
    "addition_embed_type": "an SDXL UNet (added conditioning embeddings)",
    "time_cond_proj_dim": "an LCM UNet (guidance embedded in the timestep)",
    "class_embed_type": "an upscaler or unCLIP UNet (class embeddings)",
    "num_class_embeds": "an upscaler or unCLIP UNet (class embeddings)",
    "encoder_hid_dim_type": "a UNet that projects its conditioning (encoder_hid_dim_type)",
}
TEXT_MODEL_TYPE = "clip_text_model"
DEFAULT_GUIDANCE = 7.5
MAX_SIDE = 2048  # pixels, a side of a size in `sizes`
# Prompts the stored tokenizer.json must encode to the same ids as transformers' CLIPTokenizer.
CHECK_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "A Red HEART on the moon, 4k!! (highly detailed)",
    "  two  spaces,\ta tab and\nA NEW LINE  ",
    "café crème über 🍩 ½",
    "",
    "a big red cat " * 30,
)
WEIGHTS = {"unet": WEIGHT_FILES, "vae": WEIGHT_FILES, "text_encoder": TRANSFORMERS_WEIGHT_FILES}  # each part's files
STAGES = ("tokenizer", *WEIGHTS, "store")  # what `progress` is told, in order

Progress = Callable[[str], None]


def is_stable_diffusion(source: Path) -> bool:
    """Whether DIR is a pipeline folder whose UNet is a UNet2DConditionModel: this importer's, not the
    `diffusers-unet2d` one's."""
    index = source / "model_index.json"
    if not index.is_file():
        return False
    unet = read_json(index).get("unet")
    return isinstance(unet, list) and len(unet) == 2 and unet[1] == "UNet2DConditionModel"


def component(value) -> str | None:
    """The class of a model_index.json entry `[library, class]`; None for an absent part ([null, null])."""
    if isinstance(value, list) and len(value) == 2 and value[1] is not None:
        return str(value[1])
    return None


def check_index(index: dict, file: Path) -> list[str]:
    """Refuse a pipeline that is not a Stable Diffusion text-to-image one; the ignored parts it has."""
    ignored = []
    for key, value in index.items():
        cls = component(value)
        if key.startswith("_") or cls is None:
            continue  # diffusers' own fields, pipeline options (requires_safety_checker) and absent parts
        if key in IGNORED:
            ignored.append(key)
        elif key not in CLASSES:
            what = FOREIGN.get(key, f"a {key!r} part that a StableDiffusionPipeline does not have")
            raise ModelStoreError(f"{file}: {key!r} ({cls}): {what} is not supported")
        elif CLASSES[key] is not None and cls not in CLASSES[key]:
            raise ModelStoreError(f"{file}: {key} is a {cls}, not a {' or '.join(CLASSES[key])}")
    missing = [part for part in CLASSES if component(index.get(part)) is None]
    if missing:
        raise ModelStoreError(f"{file}: no {', '.join(missing)} (a StableDiffusionPipeline has {', '.join(CLASSES)})")
    return ignored


def resolved(cls: type, config: dict) -> dict:
    """`config` as `cls.from_config` reads it: every argument of `cls.__init__`, each missing one at its default."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: config.get(p.name, p.default) for p in params if p.default is not inspect.Parameter.empty}


def check_unet(unet: dict, vae: dict, file: Path) -> None:
    """A text-to-image latent UNet: none of the variants' options, and latents in and out."""
    for key, what in VARIANTS.items():
        if unet.get(key) is not None:
            raise ModelStoreError(f"{file}: {key} {unet[key]!r}: {what} is not supported")
    channels, latent = unet["in_channels"], vae["latent_channels"]
    if channels != latent:
        raise ModelStoreError(
            f"{file}: in_channels {channels} differs from the VAE's latent_channels {latent} "
            "(inpainting, depth and instruct-pix2pix UNets take more than the latents): not supported"
        )
    if unet["out_channels"] != channels:
        raise ModelStoreError(f"{file}: out_channels {unet['out_channels']} differs from in_channels {channels}")
    if not isinstance(unet["cross_attention_dim"], int):
        raise ModelStoreError(f"{file}: cross_attention_dim {unet['cross_attention_dim']!r} is not one width")
    try:
        shape(unet)  # sample_size: a side or [height, width]
    except ModelStoreError as exc:
        raise ModelStoreError(f"{file}: {exc}") from None


def check_vae(vae: dict, file: Path) -> None:
    if vae["out_channels"] != 3:
        raise ModelStoreError(f"{file}: out_channels {vae['out_channels']}: only an RGB VAE (3) is supported")


def check_text_encoder(config: dict, unet: dict, file: Path) -> dict:
    """A CLIP text encoder whose width is the UNet's cross-attention width; its config as CLIPTextConfig reads it."""
    from transformers import CLIPTextConfig

    architectures = config.get("architectures") or ["CLIPTextModel"]
    model_type = config.get("model_type", TEXT_MODEL_TYPE)
    if architectures != ["CLIPTextModel"] or model_type != TEXT_MODEL_TYPE:
        raise ModelStoreError(f"{file}: a {'/'.join(architectures)} ({model_type}) is not a CLIPTextModel")
    text = CLIPTextConfig.from_dict(config).to_dict()
    if text["hidden_size"] != unet["cross_attention_dim"]:
        raise ModelStoreError(
            f"{file}: hidden_size {text['hidden_size']} differs from the UNet's "
            f"cross_attention_dim {unet['cross_attention_dim']}"
        )
    return text


def check_configs(configs: dict[str, dict], source: Path) -> tuple[dict, dict, dict]:
    """(the UNet's, the VAE's and the text encoder's configs as their classes read them), checked together."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = resolved(UNet2DConditionModel, configs["unet"])
    vae = resolved(AutoencoderKL, configs["vae"])
    check_vae(vae, source / "vae" / "config.json")
    check_unet(unet, vae, source / "unet" / "config.json")
    text = check_text_encoder(configs["text_encoder"], unet, source / "text_encoder" / "config.json")
    return unet, vae, text


def latent_space(vae: dict) -> dict:
    """The manifest's `latent`: the VAE's latent channels, scale factor (pixels a latent is a side) and scaling."""
    return {
        "channels": vae["latent_channels"],
        "vae_scale_factor": 2 ** (len(vae["block_out_channels"]) - 1),
        "scaling_factor": vae["scaling_factor"],
        "shift_factor": vae["shift_factor"],
    }


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """`--sizes 512x512,768x512`: [(width, height), …], the first the default."""
    sizes = []
    for item in text.split(","):
        width, sep, height = item.strip().lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise ModelStoreError(f"--sizes: {item.strip()!r} is not WIDTHxHEIGHT (e.g. 768x512)")
        sizes.append((int(width), int(height)))
    return sizes


def check_sizes(sizes: list[tuple[int, int]], factor: int) -> list[list[int]]:
    """Each size's sides are positive multiples of the VAE's scale factor, at most MAX_SIDE; none twice."""
    for width, height in sizes:
        if not all(0 < side <= MAX_SIDE and side % factor == 0 for side in (width, height)):
            raise ModelStoreError(
                f"--sizes: {width}x{height}: each side must be a positive multiple of {factor} "
                f"(the VAE's scale factor), at most {MAX_SIDE}"
            )
    if len(set(sizes)) != len(sizes):
        raise ModelStoreError(f"--sizes: a size is listed twice ({', '.join(f'{w}x{h}' for w, h in sizes)})")
    return [[width, height] for width, height in sizes]


def default_sizes(unet: dict, factor: int) -> list[list[int]]:
    """The native size (the UNet's sample_size in pixels), then the 3:2 and 2:3 buckets of its short side N, the
    long side floor(1.5 N / f) f."""
    height, width = (side * factor for side in shape(unet)[:2])
    if max(width, height) > MAX_SIDE:
        raise ModelStoreError(f"the native size {width}x{height} is over {MAX_SIDE} pixels a side: give --sizes")
    short = min(width, height)
    long = math.floor(1.5 * short / factor) * factor
    sizes = [[width, height]]
    for size in ([long, short], [short, long]):
        if size not in sizes and long <= MAX_SIDE:
            sizes.append(size)
    return sizes


def check_guidance(guidance: float) -> float:
    if not (math.isfinite(guidance) and MIN_GUIDANCE <= guidance <= MAX_GUIDANCE):
        raise ModelStoreError(f"--default-guidance {guidance}: expected {MIN_GUIDANCE}..{MAX_GUIDANCE}")
    return float(guidance)


def read_tokenizer(folder: Path, text: dict) -> tuple[bytes, dict]:
    """(the bytes of the fast CLIP tokenizer's tokenizer.json, the manifest's `tokenizer`), after checking
    that `tokenizers` alone encodes as transformers does and that every id has an embedding."""
    from transformers import CLIPTokenizer

    config_file = folder / "tokenizer_config.json"
    config = read_json(config_file)
    cls = config.get("tokenizer_class", "CLIPTokenizer")
    if cls not in CLASSES["tokenizer"]:
        raise ModelStoreError(f"{config_file}: a {cls} is not a CLIPTokenizer")
    special_file = folder / "special_tokens_map.json"
    special = read_json(special_file) if special_file.exists() else {}
    if not (folder / "tokenizer.json").is_file():
        for name in ("vocab.json", "merges.txt"):
            if not (folder / name).is_file():
                raise ModelStoreError(f"{folder / name}: missing (or a tokenizer.json)")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad tokenizer folder
        raise ModelStoreError(f"{folder}: unreadable CLIP tokenizer ({str(exc).splitlines()[0]})") from None
    data = tokenizer.backend_tokenizer.to_str(pretty=True).encode()
    check_tokenizer_file(tokenizer, data, folder)
    record = {
        "file": "tokenizer.json",
        "sha256": sha256_bytes(data),
        "model_max_length": int(tokenizer.model_max_length),
        "pad_token": tokenizer.pad_token,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "config": config,
        "special_tokens_map": special,
    }
    for key in ("pad_token", "bos_token", "eos_token"):
        if not isinstance(record[key], str):
            raise ModelStoreError(f"{folder}: the tokenizer has no {key}")
    if record["model_max_length"] > text["max_position_embeddings"]:
        raise ModelStoreError(
            f"{config_file}: model_max_length {record['model_max_length']} is more than the text encoder's "
            f"max_position_embeddings {text['max_position_embeddings']}"
        )
    if max(tokenizer.get_vocab().values()) >= text["vocab_size"]:
        raise ModelStoreError(f"{folder}: the vocabulary has ids beyond the text encoder's vocab_size")
    return data, record


def check_tokenizer_file(tokenizer, data: bytes, folder: Path) -> None:
    """The written tokenizer.json, loaded by `tokenizers` alone, encodes CHECK_PROMPTS to transformers' ids."""
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "tokenizer.json"
        file.write_bytes(data)
        alone = Tokenizer.from_file(str(file))
    for prompt in CHECK_PROMPTS:
        want = tokenizer(prompt, padding=False, truncation=False, verbose=False).input_ids
        if alone.encode(prompt).ids != want:
            raise ModelStoreError(f"{folder}: its tokenizer.json does not encode {prompt[:40]!r} as transformers does")


def build(part: str, config: dict) -> nn.Module:
    """An untrained part of this config (diffusers' or transformers' class), in eval mode."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if part == "text_encoder":
        return CLIPTextModel(CLIPTextConfig.from_dict(config)).eval()
    return {"unet": UNet2DConditionModel, "vae": AutoencoderKL}[part].from_config(config).eval()


def fit(net: nn.Module, state: dict[str, torch.Tensor], file: Path) -> dict[str, torch.Tensor]:
    """Load `state` into `net` strictly (the net then holds the state's tensors); the state as loaded."""
    check_finite(state, file)
    if hasattr(net, "_fix_state_dict_keys_on_load"):  # diffusers' own renaming of old attention keys (old VAEs)
        state = net._fix_state_dict_keys_on_load(dict(state))
    wanted = set(net.state_dict())
    if all(k.startswith("text_model.") for k in state) and not any(k.startswith("text_model.") for k in wanted):
        # A CLIPTextModel saved by transformers 4 nests its keys in `text_model.`; transformers 5's has no such
        # module and drops the prefix on load (its conversion mapping's PrefixChange): the same here.
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    # Buffers a model no longer saves (non-persistent, such as CLIP's `embeddings.position_ids`) are in older
    # checkpoints; strict loading refuses them, so they are dropped: the model makes its own.
    transient = {name for name, _ in net.named_buffers()} - wanted
    state = {k: v for k, v in state.items() if k not in transient}
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).splitlines()[0:2])
        raise ModelStoreError(f"{file}: weights do not fit the config ({first})") from None
    return state


def flops(call: Callable[[], object]) -> int:
    """FLOPs of one real call (fp32, CPU), counted by torch's FlopCounterMode."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # The CPU's fused attention kernels are invisible to the counter; the math kernel's matmuls are counted.
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def measure(part: str, net: nn.Module, size: list[int], latent: dict, tokens: int, width: int) -> int:
    """FLOPs of one use of a part at the default size: a UNet row, a VAE decode of one latent, one text encoding."""
    factor = latent["vae_scale_factor"]
    latents = torch.zeros(1, latent["channels"], size[1] // factor, size[0] // factor)  # (1, C, h, w)
    if part == "unet":
        context = torch.zeros(1, tokens, width)
        return flops(lambda: net(latents, torch.tensor(999), encoder_hidden_states=context))
    if part == "vae":
        return flops(lambda: net.decode(latents))
    return flops(lambda: net(torch.zeros(1, tokens, dtype=torch.long)))


def read_part(source: Path, part: str, config: dict, cost: Callable[[nn.Module], int]) -> tuple[dict, dict, int]:
    """(the part's fp32 state dict as stored, its record, its FLOPs): read, built, loaded strictly, measured."""
    folder = source / part
    state, file, dtype = read_weights(folder, WEIGHTS[part], part)
    net = build(part, config)
    state = fit(net, state, folder / file)
    if part == "text_encoder":  # stored as transformers 5 names its keys, whichever transformers read them
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    return state, {"file": file, "source_dtype": dtype}, cost(net)


def read_parts(
    source: Path, configs: dict[str, dict], size: list[int], latent: dict, tokens: int, width: int, stage: Progress
) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(every part's weights under its prefix, each part's record, the manifest's `flops`), one part at a time."""
    state, parts, cost = {}, {}, {}
    for part in WEIGHTS:
        stage(part)
        part_state, parts[part], cost[part] = read_part(
            source, part, configs[part], lambda net, p=part: measure(p, net, size, latent, tokens, width)
        )
        state.update({f"{part}.{k}": v for k, v in part_state.items()})
    return state, parts, {"unet_row": cost["unet"], "vae_decode": cost["vae"], "text_encoder": cost["text_encoder"]}


def import_sd(
    source: Path,
    name: str,
    sizes: list[tuple[int, int]] | None = None,
    default_guidance: float | None = None,
    store: Store | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Convert a Stable Diffusion pipeline folder and publish it as the next version of `name`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every part is read from DIR: nothing is fetched from a hub
    store = store or Store()
    store.next_version(name)  # a bad or bundled name is refused before anything is read
    stage = progress or (lambda _: None)
    if source.is_file():
        raise ModelStoreError(refusal(source))
    index_file = source / "model_index.json"
    index = read_json(index_file)
    ignored_parts = check_index(index, index_file)
    configs = {part: read_json(source / part / "config.json") for part in WEIGHTS}
    unet, vae, text = check_configs(configs, source)
    scheduler_file = source / "scheduler" / "scheduler_config.json"
    scheduler_config = read_json(scheduler_file)
    settings, ignored_keys = ddim_scheduler(scheduler_config, str(scheduler_file))
    latent = latent_space(vae)
    factor = latent["vae_scale_factor"]
    sizes_ = check_sizes(sizes, factor) if sizes else default_sizes(unet, factor)
    guidance = check_guidance(DEFAULT_GUIDANCE if default_guidance is None else default_guidance)
    stage("tokenizer")
    tokenizer_json, tokenizer = read_tokenizer(source / "tokenizer", text)
    plain = {part: {k: v for k, v in c.items() if not k.startswith("_")} for part, c in configs.items()}
    tokens, width = tokenizer["model_max_length"], unet["cross_attention_dim"]
    state, parts, cost = read_parts(source, plain, sizes_[0], latent, tokens, width, stage)
    stage("store")
    training = {
        "imported": {
            "from": "diffusers",
            "what": index.get("_class_name", "pipeline"),
            "source": str(source),
            "parts": parts,
            "ignored_parts": ignored_parts,
            "stored_dtype": "float32",
            "scheduler_class": scheduler_config.get("_class_name"),
            "diffusers_version": index.get("_diffusers_version"),
            "ignored_scheduler_keys": ignored_keys,
        }
    }
    extras = {
        "scheduler": settings,
        "scheduler_config": scheduler_config,
        "vae": plain["vae"],
        "text_encoder": {k: v for k, v in configs["text_encoder"].items() if k != "_name_or_path"},
        "tokenizer": tokenizer,
        "latent": latent,
        "sizes": sizes_,
        "default_guidance": guidance,
        "flops": cost,
    }
    schedule = "trained_betas" if settings["trained_betas"] is not None else settings["beta_schedule"]
    mean = std = [0.5] * 3  # model space [-1, 1]: pixels are x/2 + 0.5, as StableDiffusionPipeline's
    files = {tokenizer["file"]: tokenizer_json}
    return save_state(store, name, state, plain["unet"], schedule, mean, std, training, KIND, extras, files)
