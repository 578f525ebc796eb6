"""The DiffuseTV API: app, middleware, error handlers, routers."""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager

import anyio
import redis as redis_lib
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.content_type import JsonBodies
from app.core.pictures import DecodeGate
from app.core.redis import PoolExhausted, connect_sync, is_oom
from app.core.results import open_store
from app.core.settings import Settings, get_settings
from app.headers import SecurityHeaders
from app.limits import BodySizeLimit
from app.openai_errors import OpenAIErrors, under_v1
from app.peers import TransportPeer
from app.reaper import Reaper
from app.routes import deliveries, events, jobs, page, system
from app.routes.openai import router as openai_router
from app.waker import Waker
from model_store import kinds

REDIS_RETRY_AFTER_S = 2
BUSY_RETRY_AFTER_S = 1
THREADS = 256
log = logging.getLogger("diffusetv.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    kinds.load_modules(settings.extra_kind_modules)  # DIFFUSETV_KIND_MODULES: kinds beyond the built-in ones

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.store = settings.store()
        app.state.decodes = DecodeGate(settings.image_decodes)  # pictures decoded at once (app.inputs)
        url = settings.redis_url or "redis://127.0.0.1:6379/0"
        # One bounded pool for every request and the reaper: a request that waits longer than
        # REDIS_POOL_WAIT_S for a connection is a 429 (the API is busy), never a 503 (Redis is fine).
        app.state.redis = connect_sync(url, pool_size=settings.redis_pool_size, pool_wait_s=settings.redis_pool_wait_s)
        app.state.results = open_store(settings, app.state.redis)  # results by name (a redis store: on this pool)
        app.state.waker = Waker(url)  # one more connection: every idle long poll and event stream waits on it
        app.state.waker.start()
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        reaper = Reaper(app.state.redis, settings)
        reaper.start()
        yield
        reaper.stop()
        await app.state.waker.stop()
        app.state.redis.close()

    app = FastAPI(
        title="DiffuseTV",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by app.routes.page from local files
        redoc_url=None,
        description="Deterministic DDIM image generation: POST a seed, get a PNG.",
    )
    app.add_middleware(BodySizeLimit, timeout_s=settings.body_timeout_s, picture_limit=settings.image_body_bytes)
    app.add_middleware(JsonBodies)
    app.add_middleware(OpenAIErrors)  # outside the two above: their answers under /v1 take OpenAI's shape too
    app.add_middleware(SecurityHeaders)  # outside the others, so that their answers carry the headers too
    app.add_middleware(TransportPeer)  # last, so outermost: it reads the server's own `receive`
    app.include_router(jobs.router)
    app.include_router(deliveries.router)
    app.include_router(events.router)
    app.include_router(system.router)
    app.include_router(page.router)
    app.include_router(openai_router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")

    @app.exception_handler(redis_lib.ConnectionError)
    @app.exception_handler(redis_lib.TimeoutError)
    async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": "Redis is unavailable; retry later"}, 503, headers={"Retry-After": str(REDIS_RETRY_AFTER_S)}
        )

    @app.exception_handler(PoolExhausted)
    async def busy(request: Request, exc: Exception) -> JSONResponse:
        log.warning("busy: %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "the API is at capacity; retry later"}, 429, headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # the errors echo the input, which JSON can't hold when it is NaN or Infinity (Python's JSON reads them),
        # and UTF-8 can't hold when a string has a lone surrogate ("\ud800", which JSON's escapes can write)
        return JSONResponse({"detail": echoable(jsonable_encoder(exc.errors()))}, 422)

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

    @app.exception_handler(redis_lib.exceptions.ResponseError)
    async def script_error(request: Request, exc: Exception) -> JSONResponse:
        # Redis before 7 reports an OOM inside a script as a script error. A script is refused at its first
        # write, before it has written anything, so this too is "full", with nothing half made.
        if is_oom(exc):
            return await redis_full(request, exc)
        raise exc

    app.openapi = lambda: api_schema(app, keyed=bool(settings.keys))
    return app


def echoable(value):
    """`value` as a JSON response can hold it: every NaN and infinity replaced by its name, as a string, and
    every lone surrogate in a string or a key written as its escape (`\\ud800`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {echoable(k): echoable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [echoable(v) for v in value]
    return value


def api_schema(app: FastAPI, keyed: bool) -> dict:
    """The OpenAPI schema: without the bearer scheme for a deployment that runs without API keys, and without the 422
    of the routes under /v1, which answer a 400 instead (app.openai_errors)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        if not keyed:
            schema.get("components", {}).pop("securitySchemes", None)
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                if not keyed:
                    operation.pop("security", None)
                    operation.get("responses", {}).pop("401", None)
                if under_v1(path):
                    operation.get("responses", {}).pop("422", None)
        app.openapi_schema = schema
    return app.openapi_schema


app = create_app()
