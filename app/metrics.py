"""Prometheus metrics, read from Redis at scrape time, so every API instance reports the same."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from app.core import keys
from app.queueing import queue_for
from model_store import Store

COUNTERS = {
    "model_runs": ("diffusetv_model_runs", "Batched model runs (one DDIM loop each)"),
    "image_steps": ("diffusetv_image_steps", "Image-steps computed by workers"),
    "run_seconds": ("diffusetv_run_seconds", "Seconds spent in model runs"),
}
JOB_STATUSES = ("succeeded", "failed", "canceled")


class RedisCollector:
    def __init__(self, redis, store: Store, workers: list[dict]) -> None:
        self.redis, self.store, self.workers = redis, store, workers

    def collect(self):
        raw = {k.decode(): float(v) for k, v in self.redis.hgetall(keys.METRICS).items()}
        for field, (name, doc) in COUNTERS.items():
            c = CounterMetricFamily(name, doc)
            c.add_metric([], raw.get(field, 0.0))
            yield c
        jobs = CounterMetricFamily("diffusetv_jobs", "Jobs finished by workers, by status", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], raw.get(f"jobs_{status}", 0.0))
        yield jobs
        queued = GaugeMetricFamily("diffusetv_queue_length", "Jobs waiting, by model", labels=["model"])
        for m in self.store.list():
            if m.kind == "ddim-unet":
                queued.add_metric([m.ref], queue_for(self.redis, m.ref).count)
        yield queued
        live = GaugeMetricFamily("diffusetv_workers", "Live workers (heartbeat not expired)")
        live.add_metric([], len(self.workers))
        yield live


def render_metrics(redis, store: Store, workers: list[dict]) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    registry.register(RedisCollector(redis, store, workers))
    return generate_latest(registry), CONTENT_TYPE_LATEST
