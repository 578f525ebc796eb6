"""The benchmark suite's command-line options (`python -m bench`; `diffusetv bench` passes its arguments on to it)."""

from __future__ import annotations

import argparse

SUITES = (
    "engine",
    "precision",
    "diffusers",
    "service",
    "gpu",
    "guidance",
    "sd",
    "inversion",
    "pictures",
    "quality",
    "samplers",
    "negative",
    "all",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", nargs="?", choices=SUITES, default="all", help="which benchmark (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats; medians are reported (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: 20; service 50)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads, here and in the worker (default: all)"
    )
    parser.add_argument(
        "--device", default=None, choices=("cpu", "cuda"), help="precision and gpu: where the engine runs"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny repeats, steps, batches and loads")
    service = parser.add_argument_group("service (--store, --model: also guidance)")
    service.add_argument("--store", default=None, help="model store (default: a temporary one with a random model)")
    service.add_argument("--model", default=None, help="model to serve (default: benchnet, or emoji32 with --store)")
    service.add_argument("--clients", type=int, default=None, help="concurrent clients (default 16)")
    service.add_argument("--requests", type=int, default=None, help="images per throughput round (default 32)")
    sd = parser.add_argument_group("sd (Stable Diffusion against diffusers)")
    sd.add_argument(
        "--pipeline", default=None, choices=("tiny", "sd-1.5"), help="the random-weights pipeline (default: both)"
    )
    sd.add_argument(
        "--cache", default=None, metavar="DIR", help="where the built pipelines live (default ~/.cache/diffusetv-bench)"
    )
    sd.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks: engine efficiency, against diffusers, through the API. Speeds are ratios "
        "measured in the same run; medians of --repeats.",
    )
    add_arguments(p)
    return p


def validate(args: argparse.Namespace) -> str | None:
    """A message for the first invalid option, or None."""
    for name in ("repeats", "steps", "threads", "clients", "requests"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return f"--{name} must be >= 1 (got {value})"
    if args.steps is not None and args.steps > 1000:
        return f"--steps must be <= 1000 (got {args.steps})"
    return None
