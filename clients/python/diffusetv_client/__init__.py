"""A Python client for the DiffuseTV HTTP API (docs/API.md, "The Python client").

from diffusetv_client import Client

with Client("http://127.0.0.1:8000") as client:
    job = client.generate(seed=7, steps=50)
    job.save("seed7.png")
"""

from .aio import AsyncClient, AsyncJob
from .base import __version__
from .client import Client, Job
from .errors import (
    AuthenticationError,
    BadRequest,
    Conflict,
    DiffuseTVError,
    JobFailed,
    NotFound,
    RateLimited,
    ServerError,
    Unavailable,
    ValidationError,
    WaitTimeout,
)
from .schema import Engine, JobView, ModelEntry, ModelInfo, ModelList, Progress, Shape, Size
from .sse import Event

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AuthenticationError",
    "BadRequest",
    "Client",
    "Conflict",
    "DiffuseTVError",
    "Engine",
    "Event",
    "Job",
    "JobFailed",
    "JobView",
    "ModelEntry",
    "ModelInfo",
    "ModelList",
    "NotFound",
    "Progress",
    "RateLimited",
    "ServerError",
    "Shape",
    "Size",
    "Unavailable",
    "ValidationError",
    "WaitTimeout",
    "__version__",
]
