"""`diffusetv import diffusers|keras`: a model trained elsewhere, as the next version of a store name."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusetv.errors import UserError


def diffusers(args: argparse.Namespace) -> int:
    from model_store import Store
    from model_store.importers.diffusers import import_diffusers
    from model_store.importers.diffusers_sd import is_stable_diffusion

    source = Path(args.dir)
    if source.is_dir() and is_stable_diffusion(source):
        return stable_diffusion(args, source)
    if args.sizes is not None or args.default_guidance is not None:
        raise UserError(f"{source}: --sizes and --default-guidance are for Stable Diffusion pipelines only")
    scheduler = Path(args.scheduler) if args.scheduler else None
    manifest = import_diffusers(source, args.name, scheduler=scheduler, store=Store())
    imported = manifest.training["imported"]
    ignored = ", ".join(imported["ignored_scheduler_keys"]) or "none"
    print(
        f"imported {manifest.ref} (diffusers-unet2d, {imported['source_dtype']} -> float32, "
        f"sha256:{manifest.digest[:12]}) to {manifest.path}; scheduler keys ignored as DDIMScheduler does: {ignored}"
    )
    return 0


def stable_diffusion(args: argparse.Namespace, source: Path) -> int:
    """A Stable Diffusion pipeline folder, with a progress bar over its parts (reading weights takes a while)."""
    from tqdm import tqdm

    from model_store import Store
    from model_store.importers.diffusers_sd import STAGES, import_sd, parse_sizes

    if args.scheduler is not None:
        raise UserError(f"{source}: --scheduler is for a UNet2DModel folder; a pipeline's scheduler/ is read")
    sizes = parse_sizes(args.sizes) if args.sizes is not None else None
    with tqdm(total=len(STAGES), unit="part", disable=None, leave=False) as bar:

        def progress(stage: str) -> None:
            bar.set_description(stage)
            bar.update(1)

        manifest = import_sd(source, args.name, sizes, args.default_guidance, store=Store(), progress=progress)
    imported = manifest.training["imported"]
    print(f"imported {manifest.ref} (diffusers-sd, {imported['what']}) to {manifest.path}")
    for part, read in imported["parts"].items():
        print(f"  {part}: {read['file']} ({read['source_dtype']} -> float32)")
    tokenizer = manifest.extras["tokenizer"]
    print(f"  tokenizer: {tokenizer['file']} (sha256:{tokenizer['sha256'][:12]})")
    print(f"  ignored parts: {', '.join(imported['ignored_parts']) or 'none'}")
    print(f"  scheduler keys ignored as DDIMScheduler does: {', '.join(imported['ignored_scheduler_keys']) or 'none'}")
    sizes = [f"{w}x{h}" for w, h in manifest.extras["sizes"]]
    print(f"  sizes: {sizes[0]} (default){''.join(', ' + s for s in sizes[1:])}")
    print(f"  sha256:{manifest.digest}")
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
