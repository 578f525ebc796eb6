"""FastAPI dependencies as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

import redis as redis_lib
from fastapi import Depends, Request

from app.core.results import ResultStore
from app.core.settings import Settings
from model_store import Store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> redis_lib.Redis:
    return request.app.state.redis


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_results(request: Request) -> ResultStore:
    return request.app.state.results


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis_lib.Redis, Depends(get_redis)]
StoreDep = Annotated[Store, Depends(get_store)]
ResultsDep = Annotated[ResultStore, Depends(get_results)]
