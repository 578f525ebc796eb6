"""Seeds the server draws: a request that sends none gets one from a CSPRNG, in the seed range, and the job's
`params.seed` (or `seed_a`, `seed_b`) says which. Drawn after the Idempotency-Key's fingerprint is taken, so a retried
request without a seed gets the same job and the same seed (app.core.idempotency)."""

from __future__ import annotations

import secrets
from typing import TypeVar

from app import schemas
from model_store.bounds import MAX_SEED

Body = TypeVar("Body", bound=schemas.BaseModel)


def draw_seed() -> int:
    """A seed, uniform over 0..MAX_SEED, from the operating system's CSPRNG."""
    return secrets.randbelow(MAX_SEED + 1)


def draw_seeds(body: Body) -> Body:
    """The request with a drawn seed wherever it names none of the noise's sources: /generate's `seed` without a
    `latent` (with one at eta > 0 the seed is still required: the latent was asked for, its noise is the seed's),
    /interpolate's `seed_a` and `seed_b` for an end with no picture and no latent. Other requests are as they are."""
    drawn: dict[str, int] = {}
    if isinstance(body, schemas.GenerateRequest):
        if body.seed is None and body.latent is None:
            drawn["seed"] = draw_seed()
    elif isinstance(body, schemas.InterpolateRequest):
        for end in ("a", "b"):
            if all(getattr(body, f"{name}_{end}") is None for name in ("seed", "image", "latent")):
                drawn[f"seed_{end}"] = draw_seed()
    return body.model_copy(update=drawn) if drawn else body
