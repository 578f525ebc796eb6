"""Through the API: a real stack on loopback, measured from HTTP clients.

    python -m bench.service [--store DIR --model REF] [--clients N] [--requests N] [--repeats N] [--steps N]

Starts redis-server, `diffusetv worker` and `diffusetv api` as processes (bench.stack), then:
- throughput: images/s of N concurrent clients against one sequential client, same worker, same run;
- service overhead: one request's latency (POST to PNG bytes) against `Engine.generate` in this process
  for the same seed and steps, at the worker's thread count;
- cache: a repeated identical request against a fresh one.
Every request but the cache's repeats uses a seed never used before in the run, so no cache can answer it.
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from bench.report import fmt, median, percentile, table, timings

DEFAULTS = {"repeats": 3, "steps": 50, "clients": 16, "requests": 32}
QUICK = {"repeats": 2, "steps": 5, "clients": 4, "requests": 4, "matmul_runs": 3}
FINAL = {"succeeded", "failed", "canceled"}
WAIT_S = 30  # the API's longest long-poll
MAX_POLLS = 40  # long-polls per job, at most
PHASE_TIMEOUT_S = 1800  # no phase runs longer than this
HTTP_TIMEOUT_S = WAIT_S + 30


class Seeds:
    """Fresh seeds: consecutive from a random start, never repeated in a run; thread-safe."""

    def __init__(self) -> None:
        self._count = itertools.count(random.SystemRandom().randrange(2**52))
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return next(self._count)


@dataclass(frozen=True)
class Done:
    latency_s: float  # POST /generate to the last byte of the PNG
    job: dict  # the finished job
    answered_at_once: bool  # the POST already said `succeeded` (a cached result)


def request_image(client: httpx.Client, seed: int, steps: int, deadline: float) -> Done:
    """POST /generate, long-poll the job until it ends, fetch the PNG; bounded by MAX_POLLS and `deadline`."""
    started = time.perf_counter()
    r = client.post("/generate", json={"seed": seed, "steps": steps})
    if r.status_code != 202:
        raise RuntimeError(f"POST /generate answered {r.status_code}: {r.text[:500]}")
    job = r.json()
    at_once = job["status"] == "succeeded"
    for _ in range(MAX_POLLS):
        if job["status"] in FINAL or time.monotonic() > deadline:
            break
        r = client.get(f"/jobs/{job['id']}", params={"wait": WAIT_S})
        r.raise_for_status()
        job = r.json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    png = client.get(job["image_url"])
    png.raise_for_status()
    if not png.content.startswith(b"\x89PNG"):
        raise RuntimeError(f"job {job['id']}: the image is not a PNG")
    return Done(time.perf_counter() - started, job, at_once)


def client_loop(base: str, n: int, seeds: Seeds, steps: int, deadline: float) -> list[Done]:
    with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT_S) as client:
        return [request_image(client, seeds(), steps, deadline) for _ in range(n)]


def load_round(base: str, clients: int, requests: int, seeds: Seeds, steps: int) -> tuple[float, list[Done]]:
    """`requests` images from `clients` concurrent clients, each posting its share one after another."""
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(client_loop, base, n, seeds, steps, deadline) for n in shares if n]
        done = [d for f in futures for d in f.result()]
    return time.perf_counter() - started, done


def throughput(base: str, clients: int, requests: int, repeats: int, seeds: Seeds, steps: int) -> dict:
    """Sequential (1 client) and concurrent (`clients`) rounds, alternated; median images/s of each."""
    requests = max(requests, clients)
    modes = {"sequential": 1, "concurrent": clients}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    latencies: dict[str, list[float]] = {m: [] for m in modes}
    batch_sizes: dict[str, list[int]] = {m: [] for m in modes}
    for _ in range(repeats):
        for mode, n_clients in modes.items():
            wall, done = load_round(base, n_clients, requests, seeds, steps)
            rates[mode].append(len(done) / wall)
            latencies[mode] += [d.latency_s for d in done]
            batch_sizes[mode] += [int(d.job.get("batch_size") or 1) for d in done]
    out = {
        mode: {
            "clients": n_clients,
            "images_per_round": requests,
            "images_per_s": median(rates[mode]),
            "p50_s": percentile(latencies[mode], 50),
            "p95_s": percentile(latencies[mode], 95),
            "mean_batch_size": sum(batch_sizes[mode]) / len(batch_sizes[mode]),
        }
        for mode, n_clients in modes.items()
    }
    out["ratio"] = out["concurrent"]["images_per_s"] / out["sequential"]["images_per_s"]
    return out


def overhead(base: str, engine, repeats: int, seeds: Seeds, steps: int) -> dict:
    """One request end to end against the same job's `Engine.generate` in this process (idle worker)."""
    used = [seeds() for _ in range(repeats)]
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT_S) as client:
        service = [request_image(client, s, steps, deadline).latency_s for s in used]
    engine.generate([used[0]], min(steps, 2), [0.0])  # warm-up
    it = iter(used)
    in_process = timings(lambda: engine.generate([next(it)], steps, [0.0]), repeats)
    s, p = median(service), median(in_process)
    return {"service_s": s, "in_process_s": p, "ratio": s / p, "overhead_s": s - p}


def cache(base: str, repeats: int, seeds: Seeds, steps: int) -> dict:
    """A fresh request, then the identical request again; medians of each."""
    fresh, repeated, hits = [], [], 0
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT_S) as client:
        for _ in range(repeats):
            seed = seeds()
            fresh.append(request_image(client, seed, steps, deadline).latency_s)
            again = request_image(client, seed, steps, deadline)
            repeated.append(again.latency_s)
            hits += again.answered_at_once
    f, r = median(fresh), median(repeated)
    return {"fresh_s": f, "repeat_s": r, "ratio": r / f, "answered_at_once": hits, "pairs": repeats}


def run(
    repeats: int = DEFAULTS["repeats"],
    steps: int = DEFAULTS["steps"],
    threads: int | None = None,
    clients: int = DEFAULTS["clients"],
    requests: int = DEFAULTS["requests"],
    store: str | None = None,
    model: str | None = None,
    matmul_runs: int | None = None,
) -> dict:
    import torch

    from bench.flops import matmul_gflops, torch_threads, unet_flops
    from bench.models import model_source
    from bench.stack import LocalStack
    from diffusion.unet import UNetConfig
    from model_store import Store
    from worker.engine import load_engine

    with torch_threads(threads) as n_threads, model_source(store, model) as (root, ref):
        manifest = Store(root).resolve(ref)
        flops = unet_flops(config=UNetConfig.from_dict(manifest.config))
        mm = matmul_gflops(n_threads, **({"runs": matmul_runs} if matmul_runs else {}))
        engine = load_engine(manifest.ref, Store(root), "cpu", "fp32")
        seeds = Seeds()
        with LocalStack(root, manifest.ref, n_threads) as stack:
            with httpx.Client(base_url=stack.base, timeout=HTTP_TIMEOUT_S) as client:  # warm-up
                request_image(client, seeds(), min(steps, 2), time.monotonic() + PHASE_TIMEOUT_S)
            over = overhead(stack.base, engine, repeats, seeds, steps)
            cached = cache(stack.base, repeats, seeds, steps)
            load = throughput(stack.base, clients, requests, repeats, seeds, steps)
    gflops = load["concurrent"]["images_per_s"] * steps * flops / 1e9
    return {
        "threads": n_threads,
        "steps": steps,
        "repeats": repeats,
        "model": manifest.ref,
        "torch": torch.__version__,
        "flops_per_image_step": flops,
        "matmul_gflops": mm,
        "throughput": load,
        "overhead": over,
        "cache": cached,
        "concurrent_gflops": gflops,
        "concurrent_efficiency": gflops / mm,
    }


def format_result(res: dict) -> str:
    t, o, c = res["throughput"], res["overhead"], res["cache"]
    seq, con = t["sequential"], t["concurrent"]

    def ms(s: float) -> str:
        return fmt(1000 * s)

    rows = [
        ["throughput: 1 client", f"{fmt(seq['images_per_s'])} img/s", "", ms(seq["p50_s"]), ms(seq["p95_s"])],
        [
            f"throughput: {con['clients']} clients",
            f"{fmt(con['images_per_s'])} img/s",
            f"{t['ratio']:.2f}x",
            ms(con["p50_s"]),
            ms(con["p95_s"]),
        ],
        ["overhead: in-process generate", f"{ms(o['in_process_s'])} ms", "", "", ""],
        ["overhead: one request end to end", f"{ms(o['service_s'])} ms", f"{o['ratio']:.2f}x", "", ""],
        ["cache: fresh request", f"{ms(c['fresh_s'])} ms", "", "", ""],
        ["cache: identical request again", f"{ms(c['repeat_s'])} ms", f"{c['ratio']:.2f}x", "", ""],
    ]
    notes = [
        f"model {res['model']}, {res['steps']} steps, eta 0, worker and bench at {res['threads']} torch threads, "
        f"median of {res['repeats']}",
        f"throughput: {con['images_per_round']} images per round, fresh seeds; ratio = {con['clients']} clients / 1; "
        f"mean batch size {seq['mean_batch_size']:.2f} (1 client), {con['mean_batch_size']:.2f} ({con['clients']})",
        f"under {con['clients']} clients: {fmt(res['concurrent_gflops'])} model GFLOP/s "
        f"({res['flops_per_image_step'] / 1e9:.3f} GFLOP per image-step) = "
        f"{100 * res['concurrent_efficiency']:.1f}% of the fp32 matmul rate ({fmt(res['matmul_gflops'])} GFLOP/s)",
        "overhead ratio = end to end / in-process (POST to PNG bytes, via long-poll); "
        f"{ms(o['overhead_s'])} ms added by the service",
        f"cache ratio = repeat / fresh; {c['answered_at_once']} of {c['pairs']} repeats answered `succeeded` at once",
    ]
    headers = ["measure", "value", "ratio", "p50 ms", "p95 ms"]
    return table("Through the API (real processes on loopback)", headers, rows, notes)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.__main__ import main as bench_main

    return bench_main(["service", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
