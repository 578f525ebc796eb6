"""`diffusetv import diffusers|keras`: a model trained elsewhere, as the next version of a store name."""

from __future__ import annotations

import argparse
from pathlib import Path


def diffusers(args: argparse.Namespace) -> int:
    from model_store import Store
    from model_store.importers.diffusers import import_diffusers

    scheduler = Path(args.scheduler) if args.scheduler else None
    manifest = import_diffusers(Path(args.dir), args.name, scheduler=scheduler, store=Store())
    imported = manifest.training["imported"]
    ignored = ", ".join(imported["ignored_scheduler_keys"]) or "none"
    print(
        f"imported {manifest.ref} (diffusers-unet2d, {imported['source_dtype']} -> float32, "
        f"sha256:{manifest.digest[:12]}) to {manifest.path}; scheduler keys ignored as DDIMScheduler does: {ignored}"
    )
    return 0


def keras(args: argparse.Namespace) -> int:
    from model_store import Store
    from model_store.importers.keras import import_keras

    manifest = import_keras(
        Path(args.file),
        args.name,
        image_size=args.image_size,
        min_signal_rate=args.min_signal_rate,
        max_signal_rate=args.max_signal_rate,
        store=Store(),
    )
    cfg = manifest.config
    print(
        f"imported {manifest.ref} (ddim-unet, widths {cfg['widths']}, block depth {cfg['block_depth']}, "
        f"sha256:{manifest.digest[:12]}) to {manifest.path}"
    )
    return 0
