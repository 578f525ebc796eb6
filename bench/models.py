"""The network the benchmarks run: the default U-Net with random weights, alone or in a temporary store."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from diffusion.unet import UNet, UNetConfig
from model_store import Store
from model_store.weights import save_model

BENCH_MODEL = "benchnet"
DEFAULT_CONFIG = UNetConfig(32)


def random_unet(config: UNetConfig | None = None, seed: int = 0) -> UNet:
    """A U-Net with random weights and a non-zero head (the real head starts at zero), in eval mode."""
    torch.manual_seed(seed)
    net = UNet(config or DEFAULT_CONFIG)
    with torch.no_grad():
        net.head.weight.normal_(0, 0.1)
        net.head.bias.normal_(0, 0.01)
    return net.eval()


def save_bench_model(root: Path, config: UNetConfig | None = None, name: str = BENCH_MODEL) -> Store:
    """A store at `root` holding `name@1`: a random-weights U-Net (speed only; its images are noise)."""
    store = Store(root)
    training = {"note": "random weights, for benchmarks only"}
    save_model(store, name, random_unet(config), "offset_cosine", [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], training)
    return store


@contextlib.contextmanager
def model_source(
    store: str | None, model: str | None, config: UNetConfig | None = None, name: str = BENCH_MODEL
) -> Iterator[tuple[Path, str]]:
    """(store root, model ref): the given ones, or a temporary store holding the random-weights model `name`."""
    if store:
        yield Path(store), model or "emoji32"
        return
    with temporary_store(config, name) as temporary:
        yield temporary.root, model or name


@contextlib.contextmanager
def temporary_store(config: UNetConfig | None = None, name: str = BENCH_MODEL) -> Iterator[Store]:
    """A throw-away store holding the bench model `name`; removed on exit."""
    with tempfile.TemporaryDirectory(prefix="diffusetv-bench-") as tmp:
        yield save_bench_model(Path(tmp) / "models", config, name)


def supported_precisions(precisions: Sequence[str], device: str = "cpu") -> list[str]:
    """The precisions the engine offers on `device` (bf16 only with native kernels: worker.engine.bf16_supported)."""
    from worker.engine import bf16_supported

    return [p for p in precisions if p != "bf16" or bf16_supported(device)]


def bench_engine(precision: str = "fp32", config: UNetConfig | None = None, compile: bool = False):
    """The worker's engine (`worker.engine.load_engine`) on the CPU, serving the random-weights bench model."""
    from worker.engine import load_engine

    with temporary_store(config) as store:
        return load_engine(BENCH_MODEL, store, "cpu", precision, compile)
