"""Engine speed of this checkout against another git revision, paired: short runs alternate between the two
(each in a fresh process, which goes first alternating too), so whatever else the machine is doing hits both
alike. The figure is the median over pairs of this checkout's img-steps/s over the other's, per batch size.

    python -m bench.paired REV [--pairs N] [--batches 1,8] [--steps N] [--threads N]

Each run times `Engine.generate` (the worker's engine on the random-weights bench model, fp32, CPU) through
`bench.models.bench_engine`, which both revisions must have.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEASURE = """
import json, sys, time, torch
torch.set_num_threads({threads})
from bench.models import bench_engine
engine = bench_engine("fp32")
rates = {{}}
for batch in {batches}:
    seeds, etas = list(range(batch)), [0.0] * batch
    engine.generate(seeds, 1, etas)  # warm-up
    started = time.perf_counter()
    engine.generate(seeds, {steps}, etas)
    rates[batch] = batch * {steps} / (time.perf_counter() - started)
print(json.dumps(rates))
"""


def export(rev: str, into: Path) -> Path:
    """The tree of `rev` (git archive) under `into`."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, capture_output=True, check=True)
    tar = into / "tree.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as t:
        # Extraction filters came with Python 3.11.4 (Debian 12 has 3.11.2); the archive is this repository's own.
        t.extractall(into / "tree", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return into / "tree"


def measure(root: Path, batches: Sequence[int], steps: int, threads: int) -> dict[int, float]:
    """img-steps/s per batch of one fresh process running the code under `root`."""
    code = MEASURE.format(batches=list(batches), steps=steps, threads=threads)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def run(rev: str, pairs: int, batches: Sequence[int], steps: int, threads: int) -> dict[int, list[float]]:
    """Per batch, this checkout's rate over `rev`'s, one ratio per pair."""
    ratios: dict[int, list[float]] = {b: [] for b in batches}
    with tempfile.TemporaryDirectory(prefix="diffusetv-paired-") as tmp:
        other = export(rev, Path(tmp))
        for i in range(pairs):
            order = [REPO, other] if i % 2 == 0 else [other, REPO]
            got = {root: measure(root, batches, steps, threads) for root in order}
            for b in batches:
                ratios[b].append(got[REPO][b] / got[other][b])
            print(f"pair {i + 1}: " + ", ".join(f"batch {b} {ratios[b][-1]:.3f}x" for b in batches), flush=True)
    return ratios


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the git revision to compare with, e.g. main")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    ratios = run(args.rev, args.pairs, batches, args.steps, args.threads)
    print(f"\nthis checkout / {args.rev}, engine fp32 img-steps/s, {args.steps} steps, {args.threads} threads:")
    for b, rs in ratios.items():
        spread = f"min {min(rs):.3f}, max {max(rs):.3f}"
        print(f"  batch {b}: median {statistics.median(rs):.3f}x over {len(rs)} pairs ({spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
