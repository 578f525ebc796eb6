"""Engine efficiency: image-steps/s of DDIM as the worker runs it, against the machine's matmul rate.

    python -m bench.engine [--repeats N] [--steps N] [--threads N] [--json FILE] [--quick]

The `compiled` line is the same engine with `DIFFUSETV_COMPILE=true` (torch.compile; --quick skips it).
The engine is `worker.engine.Engine` (via `load_engine`) serving the default U-Net with random
weights: oneDNN, channels-last, network calls padded to the sizes its kernel probe kept
(diffusion.kernels; the determinism settings, docs/DETERMINISM.md), plus the DDIM arithmetic. The
raw line is the bare U-Net forward (oneDNN, channels-last, the whole batch in one call, no padding,
no DDIM) at the same batch sizes, so the cost of those settings shows. Efficiency is
FLOPs/image-step x image-steps/s / fp32 matmul FLOP/s, all measured in the same run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

import torch

from bench.flops import matmul_gflops, torch_threads, unet_flops
from bench.models import bench_engine, supported_precisions
from bench.report import fmt, median, table, timings
from diffusion.unet import UNetConfig

BATCHES = (1, 2, 4, 8, 16, 32)
PRECISIONS = ("fp32", "bf16")
DEFAULTS = {"repeats": 3, "steps": 20}
QUICK = {"repeats": 2, "steps": 2, "batches": (1, 4), "matmul_runs": 3, "compile": False}
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}
RUN_BUDGET_S = 20.0  # a timed run longer than this at the asked steps runs fewer steps


def capped_steps(warmup_s: float, warmup_steps: int, steps: int, budget_s: float) -> int:
    """`steps`, cut so that one timed run should take about `budget_s` at most (never below 2)."""
    per_step = warmup_s / warmup_steps
    if per_step * steps <= budget_s:
        return steps
    return max(min(steps, 2), int(budget_s / per_step))


def engine_rate(engine, batch: int, steps: int, repeats: int, budget_s: float = RUN_BUDGET_S) -> tuple[float, int]:
    """Median image-steps/s of `Engine.generate` for `batch` seeds after one short warm-up run; and the steps run."""
    seeds, etas = list(range(batch)), [0.0] * batch
    (warmup_s,) = timings(lambda: engine.generate(seeds, 1, etas), 1)
    steps = capped_steps(warmup_s, 1, steps, budget_s)
    seconds = median(timings(lambda: engine.generate(seeds, steps, etas), repeats))
    return batch * steps / seconds, steps


def raw_rate(
    net: torch.nn.Module, batch: int, steps: int, repeats: int, precision: str, budget_s: float = RUN_BUDGET_S
) -> tuple[float, int]:
    """Median image-steps/s of `steps` bare forwards at `batch` rows (oneDNN, channels-last, no padding)."""
    cfg = net.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.channels, cfg.image_size, cfg.image_size, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)  # as the engine calls it
    variance = torch.full((batch, 1, 1, 1), 0.5)
    dtype = AUTOCAST[precision]
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def forwards(n: int) -> None:
        for _ in range(n):
            net(x, variance)

    with torch.inference_mode(), autocast:
        (warmup_s,) = timings(lambda: forwards(1), 1)
        steps = capped_steps(warmup_s, 1, steps, budget_s)
        seconds = median(timings(lambda: forwards(steps), repeats))
    return batch * steps / seconds, steps


def run(
    repeats: int = DEFAULTS["repeats"],
    steps: int = DEFAULTS["steps"],
    threads: int | None = None,
    batches: Sequence[int] = BATCHES,
    precisions: Sequence[str] = PRECISIONS,
    config: UNetConfig | None = None,
    matmul_runs: int | None = None,
    compile: bool = True,
) -> dict:
    """Measure the engine and the raw network at each batch and precision; returns JSON-able results."""
    with torch_threads(threads) as n_threads:
        mm = matmul_gflops(n_threads, **({"runs": matmul_runs} if matmul_runs else {}))
        rows = []
        flops = None
        calls = {}
        offered = supported_precisions(precisions)
        for precision in offered:
            engine = bench_engine(precision, config)
            compiled = bench_engine(precision, config, compile=True) if compile else None
            for name, probed in ((precision, engine), (f"{precision} compiled", compiled)):
                if probed is not None:
                    calls[name] = {"sizes": list(probed.probe.shapes.sizes), "rejected": list(probed.probe.rejected)}
            net = engine.denoiser.net
            flops = flops or unet_flops(net)
            if not torch.backends.mkldnn.enabled:
                raise RuntimeError("oneDNN is switched off in this process: the raw line would not be the default")
            for batch in batches:
                for path in ("engine", "compiled", "raw") if compiled is not None else ("engine", "raw"):
                    if path == "engine":
                        rate, ran = engine_rate(engine, batch, steps, repeats)
                    elif path == "compiled":
                        rate, ran = engine_rate(compiled, batch, steps, repeats)
                    else:
                        rate, ran = raw_rate(net, batch, steps, repeats, precision)
                    gflops = flops * rate / 1e9
                    rows.append(
                        {
                            "path": path,
                            "precision": precision,
                            "batch": batch,
                            "steps": ran,
                            "image_steps_per_s": rate,
                            "gflops": gflops,
                            "efficiency": gflops / mm,
                        }
                    )
    baseline = next(r for r in rows if r["path"] == "engine" and r["batch"] == min(batches))
    for r in rows:
        r["vs_baseline"] = r["image_steps_per_s"] / baseline["image_steps_per_s"]
    return {
        "threads": n_threads,
        "steps": steps,
        "repeats": repeats,
        "left_out": [p for p in precisions if p not in offered],
        "config": (config or UNetConfig(32)).to_dict(),
        "flops_per_image_step": flops,
        "matmul_gflops": mm,
        "baseline": f"engine {baseline['precision']} batch {baseline['batch']}",
        "rows": rows,
        "calls": calls,
        "summary": summary(rows),
    }


def summary(rows: list[dict]) -> dict:
    """For each path and precision: the efficiency at the smallest batch and at the best batch."""
    out: dict[str, dict] = {}
    for key in dict.fromkeys((r["path"], r["precision"]) for r in rows):
        mine = [r for r in rows if (r["path"], r["precision"]) == key]
        first = min(mine, key=lambda r: r["batch"])
        best = max(mine, key=lambda r: r["efficiency"])
        out[f"{key[0]} {key[1]}"] = {
            "batch": first["batch"],
            "efficiency": first["efficiency"],
            "best_batch": best["batch"],
            "best_efficiency": best["efficiency"],
        }
    return out


def format_result(res: dict) -> str:
    rows = [
        [
            r["path"],
            r["precision"],
            r["batch"],
            r["steps"],
            fmt(r["image_steps_per_s"]),
            f"{r['vs_baseline']:.2f}x",
            fmt(r["gflops"]),
            f"{100 * r['efficiency']:.1f}%",
        ]
        for r in res["rows"]
    ]
    headers = ["path", "precision", "batch", "steps", "img-steps/s", "vs base", "GFLOP/s", "of matmul"]
    notes = [
        f"{res['flops_per_image_step'] / 1e9:.3f} GFLOP per image-step (FlopCounterMode, 2 per multiply-add); "
        f"fp32 matmul {fmt(res['matmul_gflops'])} GFLOP/s at {res['threads']} threads (same run)",
        f"up to {res['steps']} steps (network calls) per timed run, fewer where a run would pass "
        f"{RUN_BUDGET_S:.0f} s; median of {res['repeats']}; base = {res['baseline']}",
        "engine: worker.engine.Engine: oneDNN, channels-last, calls padded to probed sizes (the determinism settings)",
        "compiled: the same engine with DIFFUSETV_COMPILE=true (torch.compile, inductor, frozen weights; call sizes "
        "1, 2, 4, 8, 16 probed)",
        "raw: the bare U-Net forward, oneDNN channels-last, the whole batch in one call (1 row: not a kept size); "
        "bf16 is measured against the fp32 matmul",
    ]
    notes += [f"{p}: left out, this CPU has no native {p} kernels" for p in res.get("left_out", [])]
    for precision, c in res.get("calls", {}).items():
        notes.append(
            f"engine {precision} network calls: {', '.join(map(str, c['sizes']))} rows "
            f"(probe rejected: {', '.join(map(str, c['rejected'])) or 'none'})"
        )
    for key, s in res["summary"].items():
        notes.append(
            f"{key}: {100 * s['efficiency']:.1f}% at batch {s['batch']}, "
            f"best {100 * s['best_efficiency']:.1f}% at batch {s['best_batch']}"
        )
    return table("Engine efficiency (image-steps/s of DDIM)", headers, rows, notes)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.__main__ import main as bench_main

    return bench_main(["engine", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
