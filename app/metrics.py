"""Prometheus metrics, read from Redis at scrape time, so every API instance reports the same."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from app.core import deliveries, keys
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
    "objects_swept": ("diffusetv_objects_swept", "Stored objects deleted by the sweeper once no live job used them"),
}
RUN_OUTCOMES = ("succeeded", "canceled", "failed")  # failed: the result store did not take the result
WEBHOOK_OUTCOMES = (
    "delivered",
    "failed",
    "gone",
    "expired",
)  # the notifier's counters `webhook_<outcome>` (app.core.deliveries)
PROGRESS_OUTCOMES = ("sent", "failed")


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
        stored = GaugeMetricFamily("diffusetv_objects", "Objects in the result store's registry (app.core.objects)")
        stored.add_metric([], self.redis.zcard(keys.OBJECTS))
        yield stored
        live = GaugeMetricFamily("diffusetv_workers", "Live workers (heartbeat not expired)")
        live.add_metric([], len(self.workers))
        yield live
        yield from self.webhooks(raw)

    def webhooks(self, raw: dict[str, float]):
        """The notifier's: deliveries ended by outcome, attempts, progress reports, and what is still pending."""
        ended = CounterMetricFamily(
            "diffusetv_webhook_deliveries",
            "Webhook deliveries ended, by outcome (gone: the receiver answered 410; expired: found expired when due)",
            labels=["outcome"],
        )
        for outcome in WEBHOOK_OUTCOMES:
            ended.add_metric([outcome], raw.get(f"webhook_{outcome}", 0.0))
        yield ended
        attempts = CounterMetricFamily("diffusetv_webhook_attempts", "Webhook attempts made (progress included)")
        attempts.add_metric([], raw.get("webhook_attempts", 0.0))
        yield attempts
        progress = CounterMetricFamily(
            "diffusetv_webhook_progress", "Progress webhooks (sent once, never retried), by outcome", labels=["outcome"]
        )
        for outcome in PROGRESS_OUTCOMES:
            progress.add_metric([outcome], raw.get(f"webhook_progress_{outcome}", 0.0))
        yield progress
        count, oldest = deliveries.pending(self.redis)
        seconds, micros = self.redis.time()
        pending = GaugeMetricFamily("diffusetv_webhook_pending", "Webhook deliveries not yet delivered or failed")
        pending.add_metric([], count)
        yield pending
        age = GaugeMetricFamily(
            "diffusetv_webhook_oldest_pending_seconds",
            "Age of the oldest webhook delivery not yet delivered or failed (0: none)",
        )
        age.add_metric([], max(0.0, seconds + micros / 1e6 - oldest) if oldest is not None else 0.0)
        yield age


def render_metrics(redis, store: Store, workers: list[dict]) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    registry.register(RedisCollector(redis, store, workers))
    return generate_latest(registry), CONTENT_TYPE_LATEST
