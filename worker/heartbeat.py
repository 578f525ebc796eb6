"""The worker's heartbeat: a key with TTL 2 x HEARTBEAT_S listing its loaded models and engine.

`/readyz` reads them (app.core.workers: a key per worker, and a sorted set by expiry) to tell a live
worker with its model loaded from a dead one. The same thread refreshes the engine claim of each model
(one engine per model per Redis).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

from app.core import keys, workers
from app.core.redis import is_oom

log = logging.getLogger("diffusetv.worker")


# Claim the model's engine key if free, or renew it if it is ours; never overwrite another engine's claim.
_RENEW_ENGINE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


class EngineConflict(RuntimeError):
    pass


def claim_engines(redis, engines: dict[str, str], ttl: int) -> None:
    """Refuse to serve a model whose queue another engine (device/precision/kernels/encoder) serves."""
    for ref, engine in engines.items():
        redis.set(keys.engine(ref), engine, nx=True, ex=ttl)
        current = redis.get(keys.engine(ref))
        if current is not None and current.decode() != engine:
            raise EngineConflict(
                f"model {ref} is already served by {current.decode()} workers on this Redis; this worker is "
                f"{engine}. All workers of one model share one device type, precision and kernels, whose "
                "fingerprint changes with the CPU or GPU, the torch build and, on one thread, the thread count "
                "(see docs/DETERMINISM.md)"
            )


class Heartbeat(threading.Thread):
    """Beats every period while `alive()` (the main loop within its deadline, worker/health.py): a worker whose
    main loop is stuck stops beating, so the API reaps and re-queues its jobs."""

    def __init__(
        self, redis, worker_id: str, engines: dict[str, str], period_s: int, alive=None, memory: dict | None = None
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.redis, self.worker_id, self.engines, self.period_s = redis, worker_id, engines, period_s
        self.alive = alive or (lambda: True)
        self.stopped = threading.Event()
        self.info = {
            "id": worker_id,
            "models": list(engines),
            "engines": engines,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.time(),
            "memory": memory or {},  # per model: its weights, its largest call's peak, the batch its budget allows
        }

    def beat(self) -> None:
        ttl = 2 * self.period_s
        pipe = self.redis.pipeline(transaction=False)
        workers.register(pipe, self.worker_id, {**self.info, "at": time.time()}, ttl)
        for ref, engine in self.engines.items():
            pipe.eval(_RENEW_ENGINE, 1, keys.engine(ref), engine, ttl)
        pipe.execute()

    def hold(self) -> None:
        """Keep the worker's key and engine claims alive without writing them: a full Redis refuses SET but still
        takes EXPIRE. So the reaper does not take a live worker's runs for a dead one's, and /readyz, which reads the
        engine claims, still sees the models served (its count of live workers, from a set a full Redis does not let
        us update, drops meanwhile)."""
        ttl = 2 * self.period_s
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(keys.worker(self.worker_id), ttl)
        for ref in self.engines:
            pipe.expire(keys.engine(ref), ttl)
        pipe.execute()

    def run(self) -> None:
        while not self.stopped.wait(self.period_s):
            # Nothing ends the thread but `stop`: not even a failure to report a failure (memory exhausted in the
            # process, a MemoryError in the log line), which would leave a live worker taken for dead.
            with contextlib.suppress(Exception):
                self.tick()

    def tick(self) -> None:
        """One period's beat; a failure is logged, and the next period tries again."""
        if not self.alive():
            log.error("main loop past its deadline: no heartbeat, so that its jobs are re-queued")
            return
        try:
            self.beat()
        except Exception as exc:  # Redis away: keep trying, the TTL tells the API we are gone
            if not is_oom(exc):
                log.warning("heartbeat failed: %s", exc)
                return
            log.warning("Redis is full (maxmemory): heartbeat refused; holding this worker's key")
            with contextlib.suppress(Exception):
                self.hold()

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(Exception):
            workers.unregister(self.redis, self.worker_id)
