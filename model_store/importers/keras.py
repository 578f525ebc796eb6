"""`diffusetv import keras FILE`: a Keras 3 `.weights.h5` of the Keras DDIM example's `DiffusionModel`
(`save_weights`), read with h5py alone, as a `ddim-unet` store version.

Where things are. The file holds three groups: `layers/functional/layers/…` (the network being trained),
`ema_network/layers/…` (its EMA, which `generate()` uses, and which is imported) and
`layers/normalization/vars/{0: mean, 1: variance, 2: count}` (the data's per-channel statistics).

Layer order. Inside a network, child layers are named by class plus a counter in the functional model's
layer order, not in creation order: a residual block's BatchNormalization, then its two 3×3
convolutions, then its 1×1 shortcut (when the widths differ). Shapes alone are ambiguous, so the import
replays that order over our U-Net's blocks (diffusion.unet, the same topology) and checks each shape.

Inferred and given. Widths, block depth and embedding size are inferred from the shapes; a file that does
not fit is refused, naming its first layer that doesn't. The signal rates are not in the file: they are
options, with the example's defaults (0.02, 0.95).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from diffusion.schedule import MAX_SIGNAL_RATE, MIN_SIGNAL_RATE, offset_cosine_name
from diffusion.unet import UNet, UNetConfig
from model_store.errors import ModelStoreError
from model_store.manifest import Manifest
from model_store.store import Store
from model_store.weights import UNET_KIND, save_state

EMA = "ema_network/layers"
NETWORK = "layers/functional/layers"
NORMALIZATION = "layers/normalization/vars"
LAYER = re.compile(r"(conv2d|batch_normalization)(?:_(\d+))?")


def layers_of(group, kind: str) -> list[str]:
    """The `kind` layers of a network group, in the functional model's layer order (their counters)."""
    found = []
    for name in group:
        m = LAYER.fullmatch(name)
        if m and m[1] == kind:
            found.append((int(m[2] or 0), name))
    return [name for _, name in sorted(found)]


def variables(group, name: str) -> list[np.ndarray]:
    """A layer's variables in order (`vars/0`, `vars/1`, …)."""
    vars_ = group[name]["vars"]
    return [np.asarray(vars_[str(i)], dtype=np.float32) for i in range(len(vars_))]


def infer_config(convs: list[tuple[str, np.ndarray]], norms: list[str], image_size: int, file: Path) -> UNetConfig:
    """Widths, block depth, embedding size and channels from the shapes (HWIO kernels)."""
    if len(convs) < 3 or not norms:
        raise ModelStoreError(f"{file}: not the Keras DDIM example's network (too few convolutions)")
    stem = convs[0][1]
    channels, w0 = stem.shape[2], stem.shape[3]
    # the blocks' first 3×3 convolutions, one per BatchNormalization, in order
    block_widths = [k.shape[3] for _, k in convs[1:-1] if k.shape[:2] == (3, 3)][::2]
    blocks = len(norms)
    depth = next((i for i, w in enumerate(block_widths) if w != w0), len(block_widths))
    if depth == 0 or blocks % depth or (blocks // depth) % 2 == 0:
        raise ModelStoreError(f"{file}: {blocks} residual blocks do not make a U-Net of the example's shape")
    levels = (blocks // depth + 1) // 2
    widths = tuple(int(block_widths[level * depth]) for level in range(levels))
    first_norm_width = convs[1][1].shape[2]  # the first block sees the stem's output and the embedding
    try:
        return UNetConfig(
            image_size,
            channels=int(channels),
            widths=widths,
            block_depth=depth,
            embedding_dims=int(first_norm_width - w0),
        )
    except ValueError as exc:
        raise ModelStoreError(f"{file}: {exc}") from None


def replay(net: UNet, convs: list[tuple[str, np.ndarray, np.ndarray]], norms, file: Path) -> dict[str, torch.Tensor]:
    """Our state dict, by walking our blocks in the functional model's order and taking the file's layers."""
    conv_iter, norm_iter = iter(convs), iter(norms)
    state: dict[str, torch.Tensor] = {}

    def take_conv(module_name: str, module: torch.nn.Conv2d) -> None:
        try:
            name, kernel, bias = next(conv_iter)
        except StopIteration:
            raise ModelStoreError(f"{file}: the file has too few convolutions for {module_name}") from None
        want = (module.kernel_size[0], module.kernel_size[1], module.in_channels, module.out_channels)
        if tuple(kernel.shape) != want or bias.shape != (module.out_channels,):
            raise ModelStoreError(f"{file}: layer {name} has a {tuple(kernel.shape)} kernel where {want} fits")
        state[f"{module_name}.weight"] = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        state[f"{module_name}.bias"] = torch.from_numpy(bias)

    def take_norm(module_name: str, module: torch.nn.BatchNorm2d) -> None:
        try:
            name, mean, var = next(norm_iter)
        except StopIteration:
            raise ModelStoreError(f"{file}: the file has too few BatchNormalizations for {module_name}") from None
        if mean.shape != (module.num_features,):
            raise ModelStoreError(
                f"{file}: layer {name} normalises {mean.shape[0]} channels where {module.num_features} fit"
            )
        state[f"{module_name}.running_mean"] = torch.from_numpy(mean)
        state[f"{module_name}.running_var"] = torch.from_numpy(var)
        state[f"{module_name}.num_batches_tracked"] = torch.tensor(0)

    take_conv("stem", net.stem)
    groups = [("down", net.down), ("middle", [net.middle]), ("up", net.up)]
    for prefix, levels in groups:
        for level, blocks in enumerate(levels):
            for b, block in enumerate(blocks):
                path = f"{prefix}.{level}.{b}" if prefix != "middle" else f"middle.{b}"
                take_norm(f"{path}.norm", block.norm)
                take_conv(f"{path}.conv1", block.conv1)  # the functional order: both 3×3 convolutions,
                take_conv(f"{path}.conv2", block.conv2)
                if isinstance(block.skip, torch.nn.Conv2d):
                    take_conv(f"{path}.skip", block.skip)  # then the 1×1 shortcut
    take_conv("head", net.head)
    left = [name for name, *_ in conv_iter] + [name for name, *_ in norm_iter]
    if left:
        raise ModelStoreError(f"{file}: layer {left[0]} is left over: the file is not a U-Net of the inferred shape")
    return state


def import_keras(
    file: Path,
    name: str,
    image_size: int,
    min_signal_rate: float = MIN_SIGNAL_RATE,
    max_signal_rate: float = MAX_SIGNAL_RATE,
    store: Store | None = None,
) -> Manifest:
    """Convert the EMA network of a Keras DDIM example checkpoint and publish it as the next version of `name`."""
    try:
        import h5py
    except ImportError:
        raise ModelStoreError("diffusetv import keras needs h5py (pip install 'diffusetv[worker]')") from None

    store = store or Store()
    store.next_version(name)  # a bad name is refused before anything is read
    try:
        schedule = offset_cosine_name(min_signal_rate, max_signal_rate)
    except ValueError as exc:
        raise ModelStoreError(str(exc)) from None
    if not str(file).endswith(".weights.h5"):
        raise ModelStoreError(
            f"{file}: not a Keras 3 .weights.h5 (a TensorFlow checkpoint must first be loaded and saved with "
            "save_weights('….weights.h5') under Keras 3; see docs/MODELS.md)"
        )
    try:
        h5 = h5py.File(file, "r")
    except OSError as exc:
        raise ModelStoreError(f"{file}: not a readable HDF5 file ({exc})") from None
    with h5:
        for group in (EMA, NORMALIZATION):
            if group not in h5:
                raise ModelStoreError(f"{file}: no {group} group: not a checkpoint of the Keras DDIM example")
        ema = h5[EMA]
        convs = [(n, *variables(ema, n)) for n in layers_of(ema, "conv2d")]
        norms = [(n, *variables(ema, n)[:2]) for n in layers_of(ema, "batch_normalization")]
        bad = next((n for n, *v in convs if len(v) != 2), None)
        if bad is not None:
            raise ModelStoreError(f"{file}: layer {bad} is not a convolution with a bias")
        config = infer_config([(n, k) for n, k, _ in convs], [n for n, *_ in norms], image_size, file)
        mean, variance = (np.asarray(h5[NORMALIZATION][str(i)], dtype=np.float64).reshape(-1) for i in (0, 1))
        count = float(np.asarray(h5[NORMALIZATION]["2"])) if "2" in h5[NORMALIZATION] else None
    if mean.shape != (config.channels,) or variance.shape != (config.channels,):
        raise ModelStoreError(f"{file}: the normalization has {mean.shape[0]} channels, the network {config.channels}")
    net = UNet(config)
    state = replay(net, convs, norms, file)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelStoreError(f"{file}: weights do not fit the inferred U-Net ({str(exc).splitlines()[0]})") from None
    training = {
        "imported": {
            "from": "keras",
            "source": str(file),
            "network": "ema_network",
            "normalization_count": count,
            "signal_rates": {"min": min_signal_rate, "max": max_signal_rate},
        }
    }
    std = [float(v) ** 0.5 for v in variance]  # the example's denormalize: mean + x * variance**0.5
    return save_state(
        store, name, net.state_dict(), config.to_dict(), schedule, mean.tolist(), std, training, UNET_KIND
    )
