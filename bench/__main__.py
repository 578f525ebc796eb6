"""`python -m bench [engine|precision|diffusers|service|gpu|guidance|sd|inversion|pictures|quality|samplers|negative|
all]`: run, print tables, JSON."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bench.options import parser, validate

MODULES = {
    "engine": "bench.engine",
    "precision": "bench.precision",
    "diffusers": "bench.diffusers_cmp",
    "service": "bench.service",
    "gpu": "bench.gpu",
    "guidance": "bench.guidance",
    "sd": "bench.sd",
    "inversion": "bench.inversion",
    "pictures": "bench.pictures",
    "quality": "bench.quality",
    "samplers": "bench.samplers",
    "negative": "bench.negative",
}
# `gpu` needs a GPU, `sd` half an hour, `inversion` the emoji font and some minutes, `negative` a few minutes: run
# them by name
ALL = ("engine", "precision", "diffusers", "service")
SERVICE_ONLY = ("clients", "requests", "store", "model")
STORE_ONLY = ("store", "model")  # guidance: the text model to time
SD_ONLY = ("pipeline", "cache", "resume")


def settings(module, args: argparse.Namespace, name: str) -> dict:
    """The keyword arguments of `module.run`: its defaults, then --quick's, then what was given."""
    kwargs = dict(module.DEFAULTS)
    if args.quick:
        kwargs.update(module.QUICK)
    given = {"repeats": args.repeats, "steps": args.steps, "threads": args.threads}
    if name == "service":
        given |= {k: getattr(args, k) for k in SERVICE_ONLY}
    if name == "guidance":
        given |= {k: getattr(args, k) for k in STORE_ONLY}
    if name == "sd":
        given |= {k: getattr(args, k) for k in SD_ONLY}
    if "device" in module.DEFAULTS:
        given["device"] = args.device
    kwargs.update({k: v for k, v in given.items() if v is not None})
    return kwargs


def run(args: argparse.Namespace) -> dict:
    from bench.report import format_machine, machine, write_json

    names = list(ALL) if args.suite == "all" else [args.suite]
    info = machine()
    if args.threads:
        info["torch_threads"] = args.threads
    print(format_machine(info), flush=True)
    results = {}
    for name in names:
        module = importlib.import_module(MODULES[name])
        kwargs = settings(module, args, name)
        results[name] = module.run(**kwargs)
        print("\n" + module.format_result(results[name]), flush=True)
    data = {"machine": info, "quick": bool(args.quick), "results": results}
    if args.json:
        write_json(args.json, data)
        print(f"\nwrote {args.json}")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = validate(args)
    if problem:
        print(f"bench: error: {problem}", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
