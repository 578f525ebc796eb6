"""The `diffusetv` subcommands. Each imports what it needs when it runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from diffusetv.errors import UserError

DEFAULT_MODEL = "emoji32"
MAX_SEED = 2**53 - 1


def default_model() -> str:
    return os.environ.get("DIFFUSETV_MODEL") or DEFAULT_MODEL


def sample(args: argparse.Namespace) -> int:
    if not 0 <= args.seed <= MAX_SEED - max(args.n - 1, 0):
        raise UserError(f"--seed must be in 0..2^53-1 (got {args.seed})")
    if not 1 <= args.steps <= 1000:
        raise UserError(f"--steps must be in 1..1000 (got {args.steps})")
    if not 0.0 <= args.eta <= 1.0:
        raise UserError(f"--eta must be in 0..1 (got {args.eta})")
    if not 1 <= args.n <= 1024:
        raise UserError(f"--n must be in 1..1024 (got {args.n})")
    from app.core.png import encode_png
    from diffusion.grid import grid_columns, make_grid
    from worker.engine import load_engine

    engine = load_engine(args.model or default_model(), device=args.device, precision=args.precision)
    seeds = list(range(args.seed, args.seed + args.n))
    images = engine.generate(seeds, args.steps, [args.eta] * args.n)
    parameters = engine.parameters(args.seed, args.steps, args.eta)
    if args.n > 1:
        parameters["n"] = args.n
        pixels = make_grid(images, grid_columns(args.n))
    else:
        pixels = images[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(pixels, parameters))
    m = engine.manifest
    print(f"wrote {out} ({args.n} image{'s' * (args.n > 1)}, {m.ref}, {engine.device}/{engine.precision})")
    return 0


def train(args: argparse.Namespace) -> int:
    from diffusion.train import TrainConfig
    from diffusion.train import train as run_training

    widths = tuple(int(w) for w in args.widths.split(","))
    cfg = TrainConfig(
        data=args.data,
        steps=args.steps,
        image_size=args.image_size,
        batch_size=args.batch_size,
        widths=widths,
        block_depth=args.block_depth,
        schedule=args.schedule,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every,
        recipe={"command": "diffusetv " + " ".join(sys.argv[1:])},
    )
    state = run_training(cfg, args.out, resume=args.resume)
    print(f"{args.out}: trained to step {state.step} ({state.elapsed_s:.0f} s of training)")
    return 0


def publish(args: argparse.Namespace) -> int:
    from model_store import Store
    from model_store.weights import publish_run

    manifest = publish_run(Store(), Path(args.run_dir), args.name)
    print(f"published {manifest.ref} ({manifest.digest[:12]}) to {manifest.path}")
    return 0


def models(args: argparse.Namespace) -> int:
    from model_store import Store

    store = Store()
    if args.action == "verify":
        refs = store.refs()
        for ref in refs:
            manifest = store.verify(ref)
            print(f"ok  {ref}  sha256:{manifest.digest}")
        print(f"{len(refs)} model(s) verified in {store.root}")
        return 0
    default = default_model()
    rows = store.list()
    if not rows:
        print(f"no models in {store.root}")
    for m in rows:
        latest = store.versions(m.name)[-1] == m.version
        mark = " (default)" if (latest and default in (m.name, m.ref)) or default == m.ref else ""
        cfg = m.config
        print(
            f"{m.ref:24} {cfg['image_size']}x{cfg['image_size']}  widths={cfg['widths']}  sha256:{m.digest[:12]}{mark}"
        )
    return 0


def data(args: argparse.Namespace) -> int:
    from diffusion import emoji

    arrays = emoji.write(args.out, args.font or emoji.DEFAULT_FONT, args.size)
    print(
        f"wrote {args.out}: {len(arrays['train'])} train + {len(arrays['heldout'])} held-out images "
        f"of {args.size}x{args.size}"
    )
    return 0
