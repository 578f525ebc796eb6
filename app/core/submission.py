"""What a submission carries besides its job spec: where to push the job's events (webhook) and the client's
Idempotency-Key. Neither enters the engine key (app.core.runs.engine_key): they never split a run or the cache."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.hooks import DEFAULT_EVENTS, EVENTS, delivery_ttl


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key, scoped to its client (app.clients.client_id), with the fingerprint of its request (the route
    and the canonical validated body, before any server-drawn seed)."""

    scope: str
    key: str
    fingerprint: str


@dataclass(frozen=True)
class Submission:
    webhook: str | None = None
    events: tuple[str, ...] = DEFAULT_EVENTS
    idempotency: Idempotency | None = None

    def __post_init__(self) -> None:
        if unknown := set(self.events) - set(EVENTS):
            raise ValueError(f"unknown webhook events {sorted(unknown)}")

    def record_fields(self, settings) -> dict[str, str]:
        """The job record's webhook fields (app.core.hooks reads them); none without a webhook."""
        if not self.webhook:
            return {}
        events = ",".join(e for e in EVENTS if e in self.events)
        return {"webhook": self.webhook, "webhook_events": events, "webhook_ttl": str(delivery_ttl(settings))}


NONE = Submission()
