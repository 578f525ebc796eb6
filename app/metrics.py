"""Prometheus metrics, read from Redis at scrape time, so every API instance reports the same."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from app.core import keys
from app.models import offered
from app.queueing import queue_for
from model_store import Store

COUNTERS = {
    "batches": ("diffusetv_batches", "Batched model runs: one DDIM loop each"),
    "runs": ("diffusetv_runs", "Samples computed (one per engine key; identical requests share one)"),
    "image_steps": ("diffusetv_image_steps", "Image-steps computed by workers"),
    "run_seconds": ("diffusetv_run_seconds", "Seconds workers spent in batches"),
    "cache_hits": ("diffusetv_cache_hits", "Requests answered from the result cache"),
    "joined": ("diffusetv_joined", "Requests that joined an identical run already queued or running"),
    "jobs_failed": ("diffusetv_jobs_failed", "Jobs failed by workers"),
}
RUN_OUTCOMES = ("succeeded", "canceled")


class RedisCollector:
    def __init__(self, redis, store: Store, workers: list[dict]) -> None:
        self.redis, self.store, self.workers = redis, store, workers

    def collect(self):
        raw = {k.decode(): float(v) for k, v in self.redis.hgetall(keys.METRICS).items()}
        for field, (name, doc) in COUNTERS.items():
            c = CounterMetricFamily(name, doc)
            c.add_metric([], raw.get(field, 0.0))
            yield c
        outcomes = CounterMetricFamily(
            "diffusetv_run_outcomes", "Runs finished by workers, by outcome", labels=["outcome"]
        )
        for outcome in RUN_OUTCOMES:
            outcomes.add_metric([outcome], raw.get(f"runs_{outcome}", 0.0))
        yield outcomes
        sizes = CounterMetricFamily("diffusetv_batch_size", "Batches by the number of runs in them", labels=["size"])
        for field in sorted((f for f in raw if f.startswith("batch_size:")), key=lambda f: int(f.split(":")[1])):
            sizes.add_metric([field.split(":")[1]], raw[field])
        yield sizes
        queued = GaugeMetricFamily("diffusetv_queue_length", "Runs waiting, by model", labels=["model"])
        for m in offered(self.store):
            queued.add_metric([m.ref], queue_for(self.redis, m.ref).count)
        yield queued
        live = GaugeMetricFamily("diffusetv_workers", "Live workers (heartbeat not expired)")
        live.add_metric([], len(self.workers))
        yield live


def render_metrics(redis, store: Store, workers: list[dict]) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    registry.register(RedisCollector(redis, store, workers))
    return generate_latest(registry), CONTENT_TYPE_LATEST
