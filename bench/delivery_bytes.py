"""What one webhook delivery keeps in Redis, measured with MEMORY USAGE (SAMPLES 0), at each stage of its life.

    python -m bench.delivery_bytes

Starts a redis-server on a free loopback port and the API in process (no worker) serving the bundled emoji32,
submits a generation with a webhook, ends the job as the worker would (its status script's `hook`), then takes the
delivery through the notifier's own scripts (app.core.deliveries: claim, body, finish) with a 503 and a 200, and
prints the bytes of the delivery's hash, its attempts and its place in the due and pending sets after each step.
"""

from __future__ import annotations

import sys
import time

from bench.scratch_redis import scratch_redis

URL = "https://hooks.example/diffusetv/done"


def main() -> int:
    from fastapi.testclient import TestClient

    from app.core import deliveries, hooks, keys
    from app.core.settings import Settings
    from app.core.signing import new_secret
    from app.main import create_app

    with scratch_redis("diffusetv-delivery-bytes-") as (conn, url):
        settings = Settings(redis_url=url, heartbeat_s=300, webhook_secret=new_secret())
        with TestClient(create_app(settings)) as client:
            model = client.get("/models").json()["models"][0]
            conn.set(keys.engine(model["ref"]), "cpu/fp32/bench")  # a live worker, as far as the API can tell
            job = client.post("/generate", json={"seed": 2, "webhook": URL}).json()
        assert job["status"] == "queued", job
        job_id = job["id"]
        conn.hset(keys.job(job_id), "status", "succeeded")
        conn.eval(keys.LUA_KEYS + hooks.LUA_HOOK + "hook(ARGV[1], ARGV[2])\n", 0, job_id, "succeeded")
        [did] = [d.decode() for d in conn.lrange(keys.job_deliveries(job_id), 0, -1)]

        def in_set(key: str) -> int:
            """The bytes the delivery takes in a sorted set: its MEMORY USAGE with the member, less without."""
            score = conn.zscore(key, did)
            if score is None:
                return 0
            with_it = conn.memory_usage(key, samples=0) or 0
            conn.zrem(key, did)
            without = conn.memory_usage(key, samples=0) or 0  # 0 once empty: the whole key is then counted
            conn.zadd(key, {did: score})
            return with_it - without

        def usage(stage: str) -> None:
            hashed = conn.memory_usage(keys.delivery(did), samples=0) or 0
            tried = conn.memory_usage(keys.delivery_attempts(did), samples=0) or 0
            sets = in_set(keys.DELIVERIES_DUE) + in_set(keys.DELIVERIES_PENDING)
            print(f"{stage:34} hash {hashed:5d}  attempts {tried:4d}  sets {sets:4d}  total {hashed + tried + sets:5d}")

        record = conn.hget(keys.delivery(did), "record")
        print(f"job record snapshot: {len(record)} bytes of JSON")
        usage("enqueued")
        [claim], _ = deliveries.claim(conn, 1, 60.0, "bench", 0.0)
        body = deliveries.body(conn, claim)
        print(f"body: {len(body)} bytes")
        usage("claimed, body stored")
        deliveries.finish(conn, claim, deliveries.RETRY, time.time(), 503, None, 0.0)
        usage("one attempt (503), retry waiting")
        conn.zadd(keys.DELIVERIES_DUE, {did: 0.0})
        [claim], _ = deliveries.claim(conn, 1, 60.0, "bench", 0.0)
        deliveries.finish(conn, claim, deliveries.DELIVERED, time.time(), 200)
        usage("delivered after two attempts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
