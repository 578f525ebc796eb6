"""What one job keeps in Redis, per result store, measured with MEMORY USAGE, beside the estimate the quotas charge.

    python -m bench.job_bytes

For each result store (`redis`; `s3` on a moto server of its own on 127.0.0.1 where moto is installed, else `file` in
a temporary directory) it starts a redis-server on a free loopback port and the API in process serving the bundled
emoji32, then makes jobs whose result is a random-pixel PNG (as large as such a PNG gets) of 32x32 and of 256x256:

- a new job, without and with previews, at STEPS steps. The API queues it, and an RQ SimpleWorker in this process runs
  it through the worker's own path (worker.batch: take, start, one progress event a step, previews at the steps a
  worker sends them, then finish: app.core.objects.put and the deliver script) with an engine that only draws
  random pixels; RQ ends its job as it does for a real worker;
- a cache hit of the new job's request.

A job's bytes are the growth of every key of Redis across it, MEMORY USAGE ... SAMPLES 0 (exact): its record, event
stream, RQ's job hash and result, the cache entry, the registry (app.core.objects: an object's entry and its member
of the expiry set, for every store) and, in the redis store only, the objects' bytes (its PNG; previews travel inline
in its event stream there). Keys that no job owns (counters, the quota window, worker heartbeats) are left out.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from bench.scratch_redis import scratch_redis

STEPS = 50
SIZES = (32, 256)
ENGINE_ID = "cpu/fp32/bench"
BUCKET = "diffusetv-bench"
SHARED = ("diffusetv:metrics", "diffusetv:quota:", "diffusetv:worker", "diffusetv:workers", "rq:worker", "rq:workers")
SHARED += ("diffusetv:engine:", "diffusetv:reaper", "diffusetv:client")  # not a job's: heartbeats, locks, leases


@dataclass
class Row:
    store: str
    size: int
    kind: str  # "new", "new, previews", "cache hit"
    png: int  # the result's PNG bytes
    parts: dict[str, int] = field(default_factory=dict)  # category -> bytes
    charged: int = 0  # app.core.submit's estimate (result_cost, or a cache hit's stored bytes + RECORD_BYTES)

    @property
    def total(self) -> int:
        return sum(self.parts.values())


class BenchEngine:
    """What worker.batch asks of an engine, drawing random pixels of `size` for the result and each preview."""

    id = ENGINE_ID

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.rng = size, np.random.default_rng(seed)

    def record(self) -> dict:
        return {"device": "cpu", "precision": "fp32", "kernels": "bench"}

    def pixels(self, x0) -> np.ndarray:
        return self.rng.integers(0, 256, (len(x0), self.size, self.size, 3), dtype=np.uint8)


def category(key: str) -> str | None:
    """Which part of a job a key is, by its name; None for the keys no job owns."""
    if key.startswith(SHARED):
        return None
    for prefix, name in (
        ("diffusetv:job:", "record"),
        ("diffusetv:events:", "events"),
        ("diffusetv:blob:", "blobs"),
        ("diffusetv:object:", "registry"),
        ("diffusetv:objects", "registry"),
        ("diffusetv:cache:", "cache"),
        ("rq:", "rq"),
    ):
        if key.startswith(prefix):
            return name
    return "other"


def sizes(conn) -> dict[str, int]:
    """Every key's MEMORY USAGE, exact (SAMPLES 0: every field of a hash, every entry of a stream)."""
    out = {}
    for raw in conn.scan_iter(count=1000):
        used = conn.memory_usage(raw, samples=0)
        if used is not None:
            out[raw.decode()] = used
    return out


def growth(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Bytes each part grew by (new keys whole, shared sets and registries by their growth)."""
    parts: dict[str, int] = {}
    for key, used in after.items():
        part = category(key)
        if part is not None and used != before.get(key, 0):
            parts[part] = parts.get(part, 0) + used - before.get(key, 0)
    return parts


def random_png(size: int, seed: int) -> bytes:
    from app.core.png import encode_png

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode_png(pixels, {"seed": seed, "steps": STEPS, "eta": 0.0, "model": "emoji32"})


def bench_generate(size: int, seed: int):
    """An RQ job function standing in for worker.jobs.generate: the worker's own path for one run, its result a
    random-pixel PNG of `size`, one progress event every step, previews where a worker sends them."""

    def generate(**kwargs) -> dict:
        from rq import Queue, get_current_job

        from app.core import runs
        from app.core.events import preview_steps
        from app.core.settings import get_settings
        from app.core.spec import GenerateSpec
        from worker import batch
        from worker.jobs import timeout_of

        job = get_current_job()
        redis, settings = job.connection, get_settings()
        spec = GenerateSpec.from_kwargs(kwargs)
        engine = BenchEngine(size, seed)
        batch.take(redis, spec.job_id, Queue(job.origin, connection=redis).key, timeout_of(job), spec.inputs())
        live = batch.start(redis, [batch.Run(spec, runs.engine_key(spec, engine.id))], engine)
        ttl, waiting = settings.result_ttl, [[spec.job_id]]
        shown = preview_steps(spec.steps, settings.preview_every_steps)
        for step in range(1, spec.steps + 1):
            batch.report_progress(redis, live, waiting, step, True, ttl)
            if step in shown:
                batch.send_previews(redis, engine, live, waiting, np.zeros(1), step, ttl)
        outcome = batch.finish(redis, live[0], random_png(size, seed), 1, engine, ttl)
        return {"status": outcome, "batch": 1}

    return generate


def run_queued(conn, queue_name: str, function) -> None:
    """RQ's burst SimpleWorker runs what is queued, with `function` as worker.jobs.generate."""
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    import worker.jobs

    class BenchWorker(SimpleWorker):
        def subscribe(self) -> None:  # no command channel: its teardown would wait for the listener's thread
            pass

        def unsubscribe(self) -> None:
            pass

    real = worker.jobs.generate
    worker.jobs.generate = function
    try:
        queue = Queue(queue_name, connection=conn, serializer=JSONSerializer)
        BenchWorker([queue], connection=conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
    finally:
        worker.jobs.generate = real


@contextlib.contextmanager
def moto_s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with one bucket: the DIFFUSETV_* settings that point a stack at it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from diffusetv.launch import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(Bucket=BUCKET)
        yield {
            "DIFFUSETV_RESULTS": f"s3://{BUCKET}/results",
            "DIFFUSETV_S3_ENDPOINT_URL": endpoint,
            "DIFFUSETV_S3_REGION": "us-east-1",
            "DIFFUSETV_S3_ADDRESSING_STYLE": "path",
            "DIFFUSETV_S3_ACCESS_KEY_ID": creds["aws_access_key_id"],
            "DIFFUSETV_S3_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        }
    finally:
        server.stop()


@contextlib.contextmanager
def result_store(name: str) -> Iterator[dict[str, str]]:
    if name == "redis":
        yield {"DIFFUSETV_RESULTS": "redis"}
    elif name == "s3":
        with moto_s3() as env:
            yield env
    else:
        with tempfile.TemporaryDirectory(prefix="diffusetv-job-bytes-") as folder:
            yield {"DIFFUSETV_RESULTS": f"file://{folder}"}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """The DIFFUSETV_* settings of this process (the API's and the worker path's get_settings) for the block."""
    from app.core.settings import get_settings

    saved = {k: v for k, v in os.environ.items() if k.startswith("DIFFUSETV_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k in values:
            os.environ.pop(k, None)
        os.environ.update(saved)
        get_settings.cache_clear()


def measure_store(store: str) -> list[Row]:
    """The rows of one result store, on a fresh Redis."""
    from fastapi.testclient import TestClient

    from app.core import keys
    from app.core.settings import get_settings
    from app.core.submit import RECORD_BYTES, result_cost
    from app.main import create_app

    rows = []
    with scratch_redis("diffusetv-job-bytes-") as (conn, url), result_store(store) as store_env:
        env = {
            **store_env,
            "DIFFUSETV_REDIS_URL": url,
            "DIFFUSETV_HEARTBEAT_S": "300",
            "DIFFUSETV_CLIENT_BYTES": str(2**40),  # the quota's estimate is printed, not enforced here
            "DIFFUSETV_TORCH_THREADS": "1",
        }
        with environment(env), TestClient(create_app(get_settings())) as client:
            model = client.get("/models").json()["models"][0]
            conn.set(keys.engine(model["ref"]), ENGINE_ID)
            queue = keys.queue_name(model["ref"])
            seed = 1000

            def new_job(size: int, previews: bool) -> tuple[dict, dict[str, int], bytes]:
                nonlocal seed
                seed += 1
                before = sizes(conn)
                job = client.post("/generate", json={"seed": seed, "steps": STEPS, "previews": previews}).json()
                run_queued(conn, queue, bench_generate(size, seed))
                job = client.get(f"/jobs/{job['id']}").json()
                assert job["status"] == "succeeded", job
                png = client.get(job["image_url"])
                assert png.status_code == 200, png.text
                return job, growth(before, sizes(conn)), png.content

            new_job(32, False)  # the counters, the quota window and RQ's registries exist from here on
            for size in SIZES:
                for previews in (False, True):
                    _, parts, png = new_job(size, previews)
                    label = "new, previews" if previews else "new"
                    charged = result_cost(size, 3, STEPS, previews)  # as a model of that size is charged
                    rows.append(Row(store, size, label, len(png), parts, charged))
                before = sizes(conn)
                hit = client.post("/generate", json={"seed": seed, "steps": STEPS}).json()  # the last one's request
                assert hit["status"] == "succeeded", hit
                rows.append(
                    Row(store, size, "cache hit", len(png), growth(before, sizes(conn)), len(png) + RECORD_BYTES)
                )
    return rows


def stores() -> list[str]:
    import importlib.util

    s3 = importlib.util.find_spec("moto") is not None and importlib.util.find_spec("boto3") is not None
    return ["redis", "s3" if s3 else "file"]


PARTS = ("record", "events", "rq", "cache", "registry", "blobs", "other")


def format_rows(rows: list[Row]) -> str:
    lines = [
        f"{'store':6} {'size':>7} {'job':14} {'png':>7} {'total':>9}  "
        + " ".join(f"{p:>8}" for p in PARTS)
        + f" {'charged':>9}"
    ]
    for r in rows:
        lines.append(
            f"{r.store:6} {r.size:>3}x{r.size:<3} {r.kind:14} {r.png:7d} {r.total:9d}  "
            + " ".join(f"{r.parts.get(p, 0):8d}" for p in PARTS)
            + f" {r.charged:9d}"
        )
    lines.append("")
    lines.append("256x256 / 32x32, Redis bytes per job at equal steps:")
    by = {(r.store, r.size, r.kind): r.total for r in rows}
    for store in dict.fromkeys(r.store for r in rows):
        ratios = [
            f"{kind} {by[store, 256, kind] / by[store, 32, kind]:.3f}" for kind in dict.fromkeys(r.kind for r in rows)
        ]
        lines.append(f"  {store:6} " + ", ".join(ratios))
    return "\n".join(lines)


def main() -> int:
    from app.core.submit import RECORD_BYTES

    started = time.monotonic()
    rows = [row for store in stores() for row in measure_store(store)]
    print(f"Redis bytes per job (MEMORY USAGE, SAMPLES 0), {STEPS} steps; RECORD_BYTES = {RECORD_BYTES}")
    print(format_rows(rows))
    print(
        "charged: what admission adds to the client's bytes quota, whatever the store (app.core.submit: result_cost "
        "for a new job of a model of that size, a cache hit's stored bytes + RECORD_BYTES)"
    )
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
