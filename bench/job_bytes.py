"""What one job keeps in Redis, measured with MEMORY USAGE, beside the estimate the quotas charge for it.

    python -m bench.job_bytes

Starts a redis-server on a free loopback port and the API in process (no worker) serving the bundled
emoji32, then makes (1) a cache hit of a 32x32 result (a random-pixel PNG, as large as such a PNG gets) and
(2) a queued job with previews, and prints the bytes of each key against `app.core.submit.result_cost`.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

from bench.scratch_redis import scratch_redis


def main() -> int:
    from fastapi.testclient import TestClient

    from app.core import keys, runs
    from app.core.png import encode_png
    from app.core.settings import Settings
    from app.core.spec import GenerateSpec
    from app.core.submit import RECORD_BYTES, result_cost
    from app.main import create_app

    with scratch_redis("diffusetv-job-bytes-") as (conn, url):
        with TestClient(create_app(Settings(redis_url=url, heartbeat_s=300))) as client:
            model = client.get("/models").json()["models"][0]
            engine = "cpu/fp32/bench"
            conn.set(keys.engine(model["ref"]), engine)
            pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            png = encode_png(pixels, {"seed": 1, "steps": 50, "eta": 0.0, "model": model["name"]})
            source = "f" * 32
            conn.set(keys.png(source), png)
            record = {"device": "cpu", "precision": "fp32", "kernels": "bench"}
            conn.hset(keys.job(source), mapping={"id": source, "status": "succeeded", "engine": json.dumps(record)})
            spec = GenerateSpec(source, model["ref"], model["identity"], seed=1, steps=50, eta=0.0)  # {"seed": 1}'s
            cache = keys.cache(runs.engine_key(spec, engine))
            conn.set(cache, json.dumps({"job": source, "sha256": hashlib.sha256(png).hexdigest()}))
            hit = client.post("/generate", json={"seed": 1}).json()
            queued = client.post("/generate", json={"seed": 2, "previews": True}).json()
        assert hit["status"] == "succeeded" and queued["status"] == "queued", (hit, queued)
        rows = []
        for label, job_id in (("cache hit", hit["id"]), ("queued, previews", queued["id"])):
            named = (("record", keys.job(job_id)), ("events", keys.events(job_id)), ("png", keys.png(job_id)))
            sizes = {name: conn.memory_usage(key) or 0 for name, key in named}
            rows.append((label, sizes, sum(sizes.values())))
        print(f"PNG of a 32x32 random image: {len(png)} bytes; RECORD_BYTES = {RECORD_BYTES}")
        for label, sizes, total in rows:
            print(f"{label:18} {total:6d} bytes  {sizes}")
        print(f"charged: cache hit {len(png) + RECORD_BYTES}, new job (50 steps) {result_cost(32, 3, 50, False)}, "
              f"with previews {result_cost(32, 3, 50, True)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
