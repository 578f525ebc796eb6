"""The DiffuseTV API: app, middleware, error handlers, routers."""

from __future__ import annotations

from contextlib import asynccontextmanager

import anyio
import redis as redis_lib
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.redis import connect_async, connect_sync
from app.core.settings import Settings, get_settings
from app.limits import BodySizeLimit
from app.reaper import Reaper
from app.routes import events, jobs, page, system
from model_store import Store, kinds

REDIS_RETRY_AFTER_S = 2
THREADS = 256


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    kinds.load_modules(settings.extra_kind_modules)  # DIFFUSETV_KIND_MODULES: kinds beyond the built-in ones

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.store = Store(settings.model_store)
        app.state.redis = connect_sync(settings.redis_url or "redis://127.0.0.1:6379/0")
        app.state.aredis = connect_async(settings.redis_url or "redis://127.0.0.1:6379/0")
        # `?wait=` long polls hold a worker thread each: allow many more than the default 40
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        reaper = Reaper(app.state.redis, settings)
        reaper.start()
        yield
        reaper.stop()
        app.state.redis.close()
        await app.state.aredis.aclose()

    app = FastAPI(
        title="DiffuseTV",
        version="0.1.0",
        lifespan=lifespan,
        description="Deterministic DDIM image generation: POST a seed, get a PNG.",
    )
    app.add_middleware(BodySizeLimit)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(system.router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")

    @app.exception_handler(redis_lib.ConnectionError)
    @app.exception_handler(redis_lib.TimeoutError)
    async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": "Redis is unavailable; retry later"}, 503, headers={"Retry-After": str(REDIS_RETRY_AFTER_S)}
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and request.method == "POST":  # a body that is not UTF-8 JSON: bad input
            error = {"type": "json_invalid", "loc": ["body"], "msg": "the body is not valid UTF-8 JSON"}
            return JSONResponse({"detail": [error]}, 422)
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(redis_lib.exceptions.OutOfMemoryError)
    async def redis_full(request: Request, exc: Exception) -> JSONResponse:
        # maxmemory with noeviction: refuse new work rather than lose accepted work
        return JSONResponse(
            {"detail": "Redis is full; retry later"}, 503, headers={"Retry-After": str(REDIS_RETRY_AFTER_S)}
        )

    if not settings.keys:
        app.openapi = lambda: open_schema(app)  # no keys, no security requirement in the schema
    return app


def open_schema(app: FastAPI) -> dict:
    """The OpenAPI schema without the bearer scheme, for a deployment that runs without API keys."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.get("components", {}).pop("securitySchemes", None)
        for path in schema["paths"].values():
            for operation in path.values():
                operation.pop("security", None)
                operation.get("responses", {}).pop("401", None)
        app.openapi_schema = schema
    return app.openapi_schema


app = create_app()
