"""The `diffusetv` command: sample, train, publish, import, models, up, bench and more. Heavy imports per command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from model_store.samplers import DEFAULT_SAMPLER, SAMPLERS

EXIT_USER_ERROR = 2


def engine_options(p: argparse.ArgumentParser) -> None:
    """The image's size and the engine a command runs the model on, as a worker would."""
    p.add_argument("--width", type=int, default=None, help="models of several sizes: one of its sizes (GET /models)")
    p.add_argument("--height", type=int, default=None, help="and its height (default: the model's default size)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the network, as DIFFUSETV_COMPILE workers do")


def sampler_option(p: argparse.ArgumentParser, help: str) -> None:
    """--sampler, as a request's `sampler` (docs/API.md, Samplers)."""
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=SAMPLERS, help=help)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusetv", description="Serve and train a DDIM diffusion model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="generate images from seeds into a PNG")
    p.add_argument("--model", default=None, help="NAME or NAME@VERSION (default: $DIFFUSETV_MODEL or emoji32)")
    p.add_argument("--seed", type=int, default=None, help="first seed, 0..2^53-1 (required unless --latent)")
    p.add_argument("--steps", type=int, default=50, help="the sampler's steps, 1..1000 (default 50)")
    p.add_argument("--eta", type=float, default=0.0, help="0 = deterministic DDIM, 1 = DDPM-like (default 0)")
    p.add_argument("--n", type=int, default=1, help="images: seeds S..S+n-1 in a grid of ceil(sqrt(n)) columns")
    p.add_argument("--prompt", default=None, help="text models: what to draw (normalised as the API does)")
    p.add_argument("--guidance", type=float, default=None, help="text models: guidance scale s (default: the model's)")
    p.add_argument("--negative-prompt", default=None, help="text models, with a prompt: what to steer away from")
    sampler_option(p, "ddim (default, the only one with --eta and --harmonize), dpmpp_2m or unipc: fewer steps")
    engine_options(p)
    p.add_argument("--image", default=None, help="image-to-image: a PNG, JPEG or WebP to start from")
    p.add_argument("--strength", type=float, default=None, help="with --image: the share of the steps run (0.8)")
    p.add_argument("--mask", default=None, help="with --image: inpainting's mask (white: repaint, black: keep)")
    p.add_argument("--harmonize", type=int, default=0, help="with --mask: RePaint's jumps per step, 0..10")
    p.add_argument("--latent", default=None, help="start from an inversion's latent (diffusetv invert --out)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(run="diffusetv.commands:sample")

    p = sub.add_parser("invert", help="inversion: the latent whose generation draws a picture")
    p.add_argument("image", help="a PNG, JPEG or WebP")
    p.add_argument("--model", default=None, help="NAME or NAME@VERSION (default: $DIFFUSETV_MODEL or emoji32)")
    p.add_argument("--steps", type=int, default=50, help="the sampler's steps, 1..1000 (default 50)")
    p.add_argument("--prompt", default=None, help="text models: the condition it inverts with (at guidance 1)")
    p.add_argument("--guidance", type=float, default=None, help="text models: guidance scale s (default 1)")
    sampler_option(p, "the sampler it inverts and reconstructs with: ddim (default) or dpmpp_2m")
    engine_options(p)
    p.add_argument("--out", required=True, help="the latent's safetensors file to write")
    p.add_argument("--reconstruction", default=None, help="also write the reconstruction's PNG here")
    p.set_defaults(run="diffusetv.pictures:invert")

    p = sub.add_parser("train", help="train a model (resumable)")
    p.add_argument("--data", required=True, help="a folder of images or an .npz of uint8 (N, H, W, 3) images")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, required=True, help="total optimiser steps; --resume continues towards it")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--widths", default="32,64,96,128", help="U-Net widths, comma-separated")
    p.add_argument("--block-depth", type=int, default=2)
    p.add_argument("--schedule", default="offset_cosine", choices=["offset_cosine", "cosine", "linear"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (the Keras example's 1e-3)")
    p.add_argument(
        "--lr-decay",
        default="constant",
        choices=["constant", "cosine"],
        help="constant, or cosine: annealed from --lr to 0 over --steps",
    )
    p.add_argument(
        "--p2-gamma",
        type=float,
        default=0.0,
        help="P2 loss weighting 1/(k + SNR)^gamma (Choi et al. 2022): noisy steps weigh more (0: unweighted)",
    )
    p.add_argument("--p2-k", type=float, default=1.0, help="k of the P2 weighting (default 1)")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=1000, help="steps between EMA sample grids (0: never)")
    p.add_argument(
        "--text-tokens",
        type=int,
        default=0,
        help="condition on the .npz's captions (`train_captions`), this many tokens a prompt (0: no prompts)",
    )
    p.add_argument("--text-dims", type=int, default=64, help="width of the prompt embedding")
    p.add_argument("--prompt-dropout", type=float, default=0.15, help="share of samples that see the empty prompt")
    p.add_argument(
        "--init", default=None, metavar="NAME@VERSION", help="start from a store model's weights (prompt layers new)"
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(run="diffusetv.commands:train")

    p = sub.add_parser("publish", help="put a run's EMA weights into the model store as the next version")
    p.add_argument("run_dir")
    p.add_argument("--name", required=True)
    p.add_argument(
        "--default-guidance", type=float, default=3.0, help="a text model's guidance scale s when a request has none"
    )
    p.set_defaults(run="diffusetv.commands:publish")

    p = sub.add_parser("import", help="import a model trained elsewhere (diffusers, Keras) as the next store version")
    imports = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    q = imports.add_parser(
        "diffusers", help="a diffusers DDPM/DDIM or Stable Diffusion pipeline folder, or a UNet2DModel folder"
    )
    q.add_argument("dir", help="pipeline folder (model_index.json, unet/, scheduler/, …) or UNet2DModel folder")
    q.add_argument("--name", required=True, help="store name; the next version is written")
    q.add_argument("--scheduler", default=None, help="scheduler_config.json or its folder (needed for a UNet folder)")
    q.add_argument(
        "--sizes",
        default=None,
        metavar="WxH,…",
        help="Stable Diffusion: the image sizes served, the first the default (default: the native size, 3:2, 2:3)",
    )
    q.add_argument(
        "--default-guidance", type=float, default=None, help="Stable Diffusion: guidance when a request has none (7.5)"
    )
    q.set_defaults(run="diffusetv.imports:diffusers")
    q = imports.add_parser("keras", help="a Keras 3 .weights.h5 of the Keras DDIM example's DiffusionModel")
    q.add_argument("file", help="the .weights.h5 file (DiffusionModel.save_weights)")
    q.add_argument("--name", required=True, help="store name; the next version is written")
    q.add_argument("--image-size", type=int, required=True, help="the image side the model was trained at")
    q.add_argument("--min-signal-rate", type=float, default=0.02, help="the example's min_signal_rate (0.02)")
    q.add_argument("--max-signal-rate", type=float, default=0.95, help="the example's max_signal_rate (0.95)")
    q.set_defaults(run="diffusetv.imports:keras")

    p = sub.add_parser("models", help="list the model store, or verify every digest")
    p.add_argument("action", nargs="?", choices=["list", "verify"], default="list")
    p.set_defaults(run="diffusetv.commands:models")

    p = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    p.add_argument("--host", default=None, help="bind address (default $DIFFUSETV_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default $DIFFUSETV_PORT or 8000)")
    p.set_defaults(run="diffusetv.commands:api")

    p = sub.add_parser("worker", help="run a worker: load the model once, then run queued jobs")
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="model to serve (repeatable; default $DIFFUSETV_MODELS)",
    )
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument(
        "--check",
        action="store_true",
        help="health check: exit 0 when this host's worker has its models loaded and its main loop is within its "
        "deadline, else 1 (the container health check)",
    )
    p.set_defaults(run="diffusetv.commands:worker")

    p = sub.add_parser("notifier", help="send webhook deliveries: signed, retried with backoff, to public addresses")
    p.set_defaults(run="diffusetv.commands:notifier")

    p = sub.add_parser("webhook-secret", help="print a new webhook signing secret (whsec_…, Standard Webhooks)")
    p.set_defaults(run="diffusetv.commands:webhook_secret")

    p = sub.add_parser("owner", help="print the owner id of an API key read from stdin (WEBHOOK_SECRETS_FILE's keys)")
    p.add_argument("source", nargs="?", choices=["-"], default="-", help="- (stdin, the default)")
    p.set_defaults(run="diffusetv.commands:owner")

    p = sub.add_parser("up", help="the local stack: Redis (embedded unless DIFFUSETV_REDIS_URL), a worker, the API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="model to serve (repeatable; default $DIFFUSETV_MODELS, else every model of the store)",
    )
    p.set_defaults(run="diffusetv.commands:up")

    p = sub.add_parser("data", help="build a data set")
    p.add_argument("dataset", choices=["emoji"])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--font", default=None, help="path of NotoColorEmoji.ttf")
    p.add_argument("--out", required=True, help=".npz file to write")
    p.set_defaults(run="diffusetv.commands:data")

    p = sub.add_parser("features", help="train the KID feature extractor on a train split and publish it")
    p.add_argument("--data", required=True, help=".npz with a `train` array of uint8 (N, H, W, 3) images")
    p.add_argument("--name", default="emoji32-features", help="store name; the next version is written")
    p.add_argument("--steps", type=int, default=800, help="optimiser steps (default 800)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run="diffusetv.commands:features")

    p = sub.add_parser("eval", help="KID of a model's samples against the held-out split, with reference figures")
    p.add_argument("--model", default=None, help="NAME or NAME@VERSION (default: $DIFFUSETV_MODEL or emoji32)")
    p.add_argument("--data", required=True, help=".npz with `train` and `heldout` arrays")
    p.add_argument("--features", default="emoji32-features", help="a feature CNN in the store, or `inception`")
    p.add_argument("--n", type=int, default=500, help="samples, from seeds 0..n-1 (default 500)")
    p.add_argument("--steps", type=int, default=50, help="the sampler's steps, eta 0 (default 50)")
    sampler_option(p, "the sampler of the model's samples (default ddim)")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise images, the untrained network and the subsets")
    p.add_argument("--subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--guidance", type=float, default=None, help="text models: guidance s (default: the model's)")
    p.add_argument(
        "--prompt-subset", type=int, default=200, help="text models: training captions sampled (default 200)"
    )
    p.add_argument("--picture", default=None, metavar="PNG", help="text models: also write prompts x seeds as a PNG")
    p.set_defaults(run="diffusetv.commands:evaluate")

    # No options of its own: every argument, --help included, is passed on to `python -m bench` (bench/options.py).
    p = sub.add_parser(
        "bench",
        add_help=False,
        help="benchmarks: engine, bf16, against diffusers, through the API, on a GPU (python -m bench)",
    )
    p.set_defaults(run="diffusetv.commands:bench")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = rest  # for `python -m bench`, in their order
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    module_name, func_name = args.run.split(":")
    import importlib

    from diffusetv.errors import UserError, user_errors

    try:
        with user_errors():
            command = getattr(importlib.import_module(module_name), func_name)
            return int(command(args) or 0)
    except UserError as exc:
        print(f"diffusetv {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"diffusetv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
