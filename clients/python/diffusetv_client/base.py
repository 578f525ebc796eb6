"""What the sync and async clients share: settings, and the API's calls as requests. Each call here returns what the
subclass's `_call` returns: the result for `Client`, a coroutine of it for `AsyncClient`."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union
from urllib.parse import quote

import httpx

from .retry import Retry
from .schema import JobView, ModelList, from_json

__version__ = "0.1.0"
DEFAULT_URL = "http://127.0.0.1:8000"
MAX_WAIT_S = 30.0  # the API's longest long poll (GET /jobs/{id}?wait=)

# A picture: the file's bytes, a path to the file, base64 text or a data URL, or a finished job (its image).
Picture = Union[bytes, os.PathLike, str, JobView, dict]
# An inversion's latent: the inversion job, or its id.
Latent = Union[JobView, str, dict]


def as_picture(value: Picture | None) -> str | dict | None:
    """A picture as the API takes it: base64 text, a data URL, or `{"job": id}`."""
    if value is None or isinstance(value, (str, dict)):
        return value
    if isinstance(value, JobView):
        return {"job": value.id}
    if isinstance(value, os.PathLike):
        value = Path(value).read_bytes()
    return base64.b64encode(bytes(value)).decode("ascii")


def as_latent(value: Latent | None) -> dict | None:
    """An inversion's latent as the API takes it: `{"job": id}`."""
    if value is None or isinstance(value, dict):
        return value
    return {"job": value.id if isinstance(value, JobView) else value}


def body(**fields: Any) -> dict[str, Any]:
    """A request body: the fields that are set (the API's defaults stand for the others)."""
    return {name: value for name, value in fields.items() if value is not None}


def job_path(job_id: str) -> str:
    return f"/jobs/{quote(job_id, safe='')}"


class BaseClient:
    """`base_url` is the API's root; `api_key` its bearer key when the API has keys. `timeout` bounds each request
    (a long poll gets its wait on top). 429 and 503 answers, and dropped connections, are retried up to `max_retries`
    times, honouring Retry-After, with no single wait over `max_retry_wait` seconds and `max_retry_total` seconds of
    waiting in all; every POST carries an Idempotency-Key, so that a retried one never makes a second job."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        max_retry_wait: float = 60.0,
        max_retry_total: float = 300.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = Retry(attempts=max_retries, max_wait=max_retry_wait, total=max_retry_total)
        self.headers = {"user-agent": f"diffusetv-client/{__version__}", **(headers or {})}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"

    # The subclass's I/O: `_call` sends one request (with retries) and returns `parse(response)` of its success.
    def _call(self, method: str, url: str, parse: Callable[[httpx.Response], Any], **kw: Any) -> Any:
        raise NotImplementedError

    def _job(self, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _job_from(self, response: httpx.Response) -> Any:
        return self._job(response.json())

    def _submit(self, path: str, fields: dict[str, Any], idempotency_key: str | None) -> Any:
        key = idempotency_key or str(uuid.uuid4())
        return self._call("POST", path, self._job_from, json=fields, headers={"Idempotency-Key": key})

    def generate(
        self,
        seed: int | None = None,
        steps: int = 50,
        *,
        prompt: str | None = None,
        guidance: float | None = None,
        negative_prompt: str | None = None,
        model: str | None = None,
        eta: float = 0.0,
        sampler: str | None = None,
        width: int | None = None,
        height: int | None = None,
        previews: bool = False,
        image: Picture | None = None,
        strength: float | None = None,
        mask: Picture | None = None,
        harmonize: int | None = None,
        latent: Latent | None = None,
        webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ):
        """POST /generate: a job that draws one image (docs/API.md has every field). Without `seed` (and without
        `latent`) the server draws one, and the job's `params["seed"]` says which."""
        fields = body(
            seed=seed, steps=steps, eta=eta, model=model, previews=previews, prompt=prompt, guidance=guidance,
            negative_prompt=negative_prompt, width=width, height=height, image=as_picture(image), strength=strength,
            mask=as_picture(mask), harmonize=harmonize, latent=as_latent(latent), sampler=sampler, webhook=webhook,
            webhook_events=list(webhook_events) if webhook_events is not None else None,
        )  # fmt: skip
        return self._submit("/generate", fields, idempotency_key)

    def interpolate(
        self,
        seed_a: int | None = None,
        seed_b: int | None = None,
        frames: int = 8,
        steps: int = 50,
        *,
        prompt: str | None = None,
        prompt_b: str | None = None,
        guidance: float | None = None,
        negative_prompt: str | None = None,
        model: str | None = None,
        sampler: str | None = None,
        width: int | None = None,
        height: int | None = None,
        image_a: Picture | None = None,
        image_b: Picture | None = None,
        latent_a: Latent | None = None,
        latent_b: Latent | None = None,
        webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ):
        """POST /interpolate: a walk of `frames` images between two ends (a seed, a picture or a latent each); its
        `png()` is the animation, `strip()` the frames side by side."""
        fields = body(
            seed_a=seed_a, seed_b=seed_b, frames=frames, steps=steps, model=model, prompt=prompt, prompt_b=prompt_b,
            guidance=guidance, negative_prompt=negative_prompt, width=width, height=height, image_a=as_picture(image_a),
            image_b=as_picture(image_b), latent_a=as_latent(latent_a), latent_b=as_latent(latent_b), sampler=sampler,
            webhook=webhook, webhook_events=list(webhook_events) if webhook_events is not None else None,
        )  # fmt: skip
        return self._submit("/interpolate", fields, idempotency_key)

    def invert(
        self,
        image: Picture,
        steps: int = 50,
        *,
        prompt: str | None = None,
        guidance: float | None = None,
        negative_prompt: str | None = None,
        model: str | None = None,
        sampler: str | None = None,
        width: int | None = None,
        height: int | None = None,
        previews: bool = False,
        webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ):
        """POST /invert: the picture's latent (`latent()`, safetensors bytes) and its reconstruction (`png()`)."""
        fields = body(
            image=as_picture(image), steps=steps, model=model, previews=previews, prompt=prompt, guidance=guidance,
            negative_prompt=negative_prompt, width=width, height=height, sampler=sampler, webhook=webhook,
            webhook_events=list(webhook_events) if webhook_events is not None else None,
        )  # fmt: skip
        return self._submit("/invert", fields, idempotency_key)

    def models(self):
        """GET /models: the servable models, and which one a request without `model` gets."""
        return self._call("GET", "/models", lambda r: from_json(ModelList, r.json()))

    def job(self, job_id: str):
        """GET /jobs/{id}: the job as it is now."""
        return self._call("GET", job_path(job_id), self._job_from)

    def cancel(self, job_id: str):
        """DELETE /jobs/{id}: cancel a queued job, or stop a running one at its next step; `Conflict` (409) once it
        has ended. Not retried after a dropped answer (a second try would be a 409)."""
        return self._call("DELETE", job_path(job_id), self._job_from, replayable=False)

    def _poll(self, job_id: str, wait: float):
        """GET /jobs/{id}?wait=: the job once it ends, or after `wait` seconds."""
        params = {"wait": f"{min(wait, MAX_WAIT_S):.3f}"}
        return self._call("GET", job_path(job_id), self._job_from, params=params, timeout=self.timeout + wait)

    def _bytes(self, url: str):
        return self._call("GET", url, lambda r: r.content)
