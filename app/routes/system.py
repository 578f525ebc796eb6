"""Models, health, readiness and metrics."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import JSONResponse

from app import models, schemas
from app.auth import OwnerDep
from app.core.workers import live as live_workers
from app.deps import RedisDep, SettingsDep, StoreDep
from app.metrics import render_metrics
from model_store import ModelStoreError, kinds
from model_store.vocabulary import normalise

router = APIRouter(tags=["system"])


@router.get("/models", response_model=schemas.ModelList, responses=schemas.error_responses(503))
def list_models(redis: RedisDep, store: StoreDep, settings: SettingsDep) -> schemas.ModelList:
    """The servable models in the store, per kind; `served`: a live worker has it loaded."""
    default = models.default_ref(store, settings.model)
    manifests = models.offered(store)
    live = models.served(redis, [m.ref for m in manifests])
    entries = [
        schemas.ModelEntry(**models.describe(m), default=m.ref == default, served=m.ref in live) for m in manifests
    ]
    return schemas.ModelList(default=default, models=entries)


@router.get("/models/{ref}/prompts", response_model=schemas.PromptList, responses=schemas.error_responses(404))
def list_prompts(ref: str, store: StoreDep, response: Response) -> schemas.PromptList:
    """A text model's training captions (suggestions) and known words; 404 for an unknown model or one without
    prompts."""
    try:
        manifest = store.resolve(ref)
    except ModelStoreError:
        manifest = None
    spec = models.text_spec(manifest) if manifest is not None and kinds.is_served(manifest) else None
    if spec is None:
        raise HTTPException(404, f"no text model {ref!r}")
    response.headers["Cache-Control"] = "public, max-age=3600"  # a model version never changes
    prompts = list(dict.fromkeys(normalise(c) for c in spec.captions))
    return schemas.PromptList(model=manifest.ref, prompts=prompts, words=list(spec.vocabulary.words))


@router.get("/healthz", response_model=schemas.Health)
def healthz() -> schemas.Health:
    """Liveness: the API process answers."""
    return schemas.Health(status="ok")


@router.get(
    "/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}, **schemas.error_responses(429)}
)
def readyz(
    redis: RedisDep,
    store: StoreDep,
    settings: SettingsDep,
    scope: Annotated[Literal["service", "api"], Query(description="api: this API instance can serve")] = "service",
) -> Response:
    """Readiness: Redis answers and live workers have every model of DIFFUSETV_MODELS loaded (O(1) in Redis's
    other keys). `scope=api`: Redis answers, so this API instance can take requests (for load balancers and API
    pods, whose readiness must not wait for workers)."""
    redis.ping()
    if scope == "api":
        return JSONResponse({"status": "ready", "detail": {"scope": "api"}})
    wanted = []
    for ref in settings.served_models:
        try:
            wanted.append(store.resolve(ref).ref)
        except ModelStoreError:
            return JSONResponse({"status": "unready", "detail": {"model": f"{ref} is not in the store"}}, 503)
    workers = live_workers(redis)
    live = models.served(redis, wanted)
    detail = {"models": {ref: ref in live for ref in wanted}, "workers": len(workers), "serving": len(live)}
    if len(live) < len(wanted):
        return JSONResponse({"status": "unready", "detail": detail}, 503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ready", "detail": detail})


@router.get("/metrics", response_class=Response, responses=schemas.error_responses(401, 429, 503))
def metrics(redis: RedisDep, store: StoreDep, owner: OwnerDep) -> Response:
    """Prometheus text: queue lengths, live workers and the workers' counters kept in Redis."""
    body, content_type = render_metrics(redis, store, live_workers(redis))
    return Response(body, media_type=content_type)
