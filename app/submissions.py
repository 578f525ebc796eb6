"""What a request submits besides its job: a webhook and its events, and an Idempotency-Key (app.core.submission).

Checked here, at submit, for every route that queues jobs: a refused webhook or a malformed key is a 422 that names
the field or the header, and nothing is queued. Neither enters the job's spec (app.core.runs.engine_key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from app.core import addresses, deliveries, signing
from app.core.hooks import DEFAULT_EVENTS
from app.core.idempotency import MAX_KEY_CHARS, fingerprint, parse_key
from app.core.settings import Settings
from app.core.submission import Idempotency, Submission

IdempotencyKey = Annotated[
    str | None,
    Header(
        description="a key of the client's choosing (1 to 255 visible ASCII characters, bare or as a quoted "
        'structured-field string, `"abc"`): the same key with the same body within DIFFUSETV_IDEMPOTENCY_WINDOW_S '
        "answers the job it made, with no new job; with another body, 422 (docs/API.md, Idempotent submits)",
    ),
]
HEADER_LOC = ("header", "idempotency-key")
GONE = "the receiver answered 410 Gone for this URL; it gets no more webhooks"


NOT_GIVEN = object()


def invalid(loc: tuple[str, ...], msg: str, given: object = NOT_GIVEN) -> RequestValidationError:
    """A 422 naming one field or header, with the value refused (none for a refusal of the whole request)."""
    error = {"type": "value_error", "loc": loc, "msg": msg}
    return RequestValidationError([error if given is NOT_GIVEN else {**error, "input": given}])


def idempotency(client: str, route: str, body: BaseModel, key: str | None) -> Idempotency | None:
    """The request's Idempotency-Key, scoped to its client, with its fingerprint (the route and the validated body, as
    sent: before any seed is drawn); None without the header. 422 naming the header for a malformed one."""
    if key is None:
        return None
    parsed = parse_key(key)
    if parsed is None:
        msg = f"1 to {MAX_KEY_CHARS} visible ASCII characters, bare or as a quoted string"
        raise invalid(HEADER_LOC, msg, key)
    return Idempotency(client, parsed, fingerprint(route, body.model_dump(mode="json")))


def webhook_refusal(redis, settings: Settings, owner: str, url: str) -> str | None:
    """Why `url` may not receive `owner`'s webhooks (None: it may): a refused address (app.core.addresses), no secret
    to sign with, or a receiver that answered 410 Gone."""
    if why := addresses.url_refusal(url, settings.webhook_nets):
        return why
    if not signing.keys_for(settings, owner):
        if settings.keys:
            return "this API key has no webhook secret (DIFFUSETV_WEBHOOK_SECRETS_FILE)"
        return "webhooks need DIFFUSETV_WEBHOOK_SECRET"
    if deliveries.is_gone(redis, owner, url):
        return GONE
    return None


def submission(redis, settings: Settings, owner: str, client: str, route: str, body: BaseModel, key: str | None):
    """The request's Submission: its webhook (checked: 422 naming `webhook` or `webhook_events`), its events and its
    Idempotency-Key. Taken before any seed is drawn (app.seeds)."""
    webhook, events = getattr(body, "webhook", None), getattr(body, "webhook_events", None)
    if events is not None and webhook is None:
        raise invalid(("body", "webhook_events"), "webhook_events needs a `webhook`", events)
    if webhook is not None and (why := webhook_refusal(redis, settings, owner, webhook)):
        raise invalid(("body", "webhook"), why, webhook)
    events = tuple(events) if events is not None else DEFAULT_EVENTS
    return Submission(webhook, events, idempotency(client, route, body, key))
