"""Models, health, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app import schemas
from app.auth import OwnerDep
from app.core.workers import live as live_workers
from app.deps import RedisDep, SettingsDep, StoreDep
from app.metrics import render_metrics
from model_store import ModelStoreError

router = APIRouter(tags=["system"])


@router.get("/models", response_model=schemas.ModelList)
def list_models(store: StoreDep, settings: SettingsDep) -> schemas.ModelList:
    """The generative models in the store; `default` is what /generate uses without `model`."""
    try:
        default = store.resolve(settings.model).ref
    except ModelStoreError:
        default = settings.model
    entries = [
        schemas.ModelEntry(
            name=m.name,
            version=m.version,
            ref=m.ref,
            digest=m.digest,
            image_size=m.config["image_size"],
            schedule=m.schedule,
            default=m.ref == default,
        )
        for m in store.list()
        if m.kind == "ddim-unet"
    ]
    return schemas.ModelList(default=default, models=entries)


@router.get("/healthz", response_model=schemas.Health)
def healthz() -> schemas.Health:
    """Liveness: the API process answers."""
    return schemas.Health(status="ok")


@router.get(
    "/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}, **schemas.error_responses(429)}
)
def readyz(redis: RedisDep, store: StoreDep, settings: SettingsDep) -> Response:
    """Readiness: Redis answers and a live worker has the default model loaded (O(1) in Redis's other keys)."""
    redis.ping()
    try:
        default = store.resolve(settings.model).ref
    except ModelStoreError:
        return JSONResponse({"status": "unready", "detail": {"model": f"{settings.model} is not in the store"}}, 503)
    workers = live_workers(redis)
    serving = [w["id"] for w in workers if default in w.get("models", [])]
    detail = {"model": default, "workers": len(workers), "serving": len(serving)}
    if not serving:
        return JSONResponse({"status": "unready", "detail": detail}, 503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ready", "detail": detail})


@router.get("/metrics", response_class=Response, responses=schemas.error_responses(401, 429, 503))
def metrics(redis: RedisDep, store: StoreDep, owner: OwnerDep) -> Response:
    """Prometheus text: queue lengths, live workers and the workers' counters kept in Redis."""
    body, content_type = render_metrics(redis, store, live_workers(redis))
    return Response(body, media_type=content_type)
