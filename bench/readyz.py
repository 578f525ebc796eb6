"""Readiness under a large keyspace: `/readyz` latency with N unrelated keys in Redis, and whether a storm of
concurrent `/readyz` delays another client's `POST /generate`.

    python -m bench.readyz [--keys 300000] [--runs 20] [--concurrent 100] [--json FILE]

Starts a real local stack (bench.stack: redis-server, one worker, the API; a small random model), then:
1. times `--runs` sequential `GET /readyz` with the keyspace as it is (a handful of keys);
2. writes `--keys` unrelated keys (strings under the service's own prefix, as a day of results leaves them);
3. times `--runs` sequential `GET /readyz` again;
4. times `POST /generate` from a second client, alone and then while `--concurrent` clients send `/readyz`
   back to back.
Exit status 1 when the median `/readyz` with the keys is 50 ms or more, or a POST during the storm is not a 202
or takes 1 s or more (docs/RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence

import httpx

from bench.report import format_machine, machine, table, write_json

READY_LIMIT_MS = 50.0
POST_LIMIT_MS = 1000.0
POSTS = 10
BATCH = 10_000


def timed_get(http: httpx.Client, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    status = http.get(path).status_code
    return 1000 * (time.perf_counter() - started), status


def fill(redis_url: str, n: int) -> int:
    import redis

    conn = redis.Redis.from_url(redis_url)
    for start in range(0, n, BATCH):
        pipe = conn.pipeline(transaction=False)
        for i in range(start, min(n, start + BATCH)):
            pipe.set(f"diffusetv:job:{i:032x}", "x")
        pipe.execute()
    size = conn.dbsize()
    conn.close()
    return size


async def posts_during_storm(base: str, concurrent: int, seed0: int) -> tuple[list[float], list, int, list]:
    """POST latencies (ms) and statuses from one client while `concurrent` others send /readyz back to back."""
    stop, readies, statuses, posted = asyncio.Event(), [0], [], []

    async def storm(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                statuses.append((await http.get("/readyz")).status_code)
                readies[0] += 1
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)

    limits = httpx.Limits(max_connections=concurrent + 10)
    async with (
        httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http,
        httpx.AsyncClient(base_url=base, timeout=30) as poster,
    ):
        tasks = [asyncio.create_task(storm(http)) for _ in range(concurrent)]
        await asyncio.sleep(1.0)  # the storm is on
        latencies = []
        for i in range(POSTS):
            started = time.perf_counter()
            try:
                posted.append((await poster.post("/generate", json={"seed": seed0 + i, "steps": 5})).status_code)
            except httpx.HTTPError as exc:  # counted at the time it took to fail
                posted.append(type(exc).__name__)
            latencies.append(1000 * (time.perf_counter() - started))
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*tasks)
    return latencies, posted, readies[0], statuses


def posts_alone(http: httpx.Client, seed0: int) -> list[float]:
    out = []
    for i in range(POSTS):
        started = time.perf_counter()
        assert http.post("/generate", json={"seed": seed0 + i, "steps": 5}).status_code == 202
        out.append(1000 * (time.perf_counter() - started))
    return out


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    from bench.models import model_source
    from bench.stack import LocalStack
    from diffusion.unet import UNetConfig

    info = {"command": shlex.join([sys.executable, "-m", "bench.readyz", *argv]), "machine": machine()}
    print(f"command: {info['command']}\n{format_machine(info['machine'])}", flush=True)
    small = UNetConfig(16, widths=(8, 16), block_depth=1)
    with model_source(None, None, small, "readynet") as (store, model), LocalStack(store, model, 1) as stack:
        url = stack.env["DIFFUSETV_REDIS_URL"]
        with httpx.Client(base_url=stack.base, timeout=30) as http:
            timed_get(http, "/readyz")
            empty = [timed_get(http, "/readyz") for _ in range(args.runs)]
            print(f"writing {args.keys} keys...", flush=True)
            size = fill(url, args.keys)
            timed_get(http, "/readyz")
            full = [timed_get(http, "/readyz") for _ in range(args.runs)]
            alone = posts_alone(http, 10_000)
        storm, posted, readies, statuses = asyncio.run(posts_during_storm(stack.base, args.concurrent, 20_000))
    return {
        **info,
        "keys": size,
        "readyz_ms_few_keys": [ms for ms, _ in empty],
        "readyz_ms_with_keys": [ms for ms, _ in full],
        "readyz_statuses": sorted({s for _, s in empty + full}),
        "post_ms_alone": alone,
        "post_ms_during_storm": storm,
        "post_statuses_during_storm": posted,
        "storm_readyz_answered": readies,
        "storm_statuses": {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)},
        "concurrent": args.concurrent,
    }


def format_report(s: dict) -> str:
    med = statistics.median
    rows = [
        ["/readyz, few keys", len(s["readyz_ms_few_keys"]), f"{med(s['readyz_ms_few_keys']):.1f}",
         f"{max(s['readyz_ms_few_keys']):.1f}"],
        [f"/readyz, {s['keys']} keys", len(s["readyz_ms_with_keys"]), f"{med(s['readyz_ms_with_keys']):.1f}",
         f"{max(s['readyz_ms_with_keys']):.1f}"],
        ["POST /generate alone", len(s["post_ms_alone"]), f"{med(s['post_ms_alone']):.1f}",
         f"{max(s['post_ms_alone']):.1f}"],
        [f"POST during {s['concurrent']} concurrent /readyz", len(s["post_ms_during_storm"]),
         f"{med(s['post_ms_during_storm']):.1f}", f"{max(s['post_ms_during_storm']):.1f}"],
    ]  # fmt: skip
    ratio = med(s["readyz_ms_with_keys"]) / med(s["readyz_ms_few_keys"])
    return "\n".join(
        [
            table("Latency", ["what", "n", "median ms", "max ms"], rows),
            f"/readyz with the keys / without: {ratio:.2f}x (median); statuses {s['readyz_statuses']}",
            f"during the storm: {s['storm_readyz_answered']} /readyz answered, statuses {s['storm_statuses']}; "
            f"the POSTs: {s['post_statuses_during_storm']}",
            "OK" if ok(s) else f"FAILED: median /readyz >= {READY_LIMIT_MS} ms, or a POST not 202 or slower than 1 s",
        ]
    )


def ok(s: dict) -> bool:
    fast = statistics.median(s["readyz_ms_with_keys"]) < READY_LIMIT_MS
    return fast and max(s["post_ms_during_storm"]) < POST_LIMIT_MS and set(s["post_statuses_during_storm"]) == {202}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.readyz", description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=300_000, help="unrelated keys to write (default 300000)")
    p.add_argument("--runs", type=int, default=20, help="sequential /readyz per measurement (default 20)")
    p.add_argument("--concurrent", type=int, default=100, help="clients sending /readyz in the storm (default 100)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the summary as JSON")
    args = p.parse_args(argv)
    if args.keys < 0 or args.runs < 1 or args.concurrent < 1:
        print("bench.readyz: error: --keys >= 0, --runs and --concurrent >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("DIFFUSETV_TORCH_THREADS", "1")
    summary = run(args, argv)
    print("\n" + format_report(summary), flush=True)
    if args.json:
        write_json(args.json, summary)
    return 0 if ok(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
