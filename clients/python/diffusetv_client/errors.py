"""The API's error answers as exceptions: one class per status, all of them `DiffuseTVError`."""

from __future__ import annotations

from typing import Any

import httpx


class DiffuseTVError(Exception):
    """An error answer: `status` (its HTTP status; None for errors of the client's own, such as a wait that timed
    out), `detail` (the body's `detail`: a message, or FastAPI's list of field errors) and the answer's headers."""

    def __init__(self, status: int | None, detail: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        super().__init__(f"{status}: {message(detail)}" if status is not None else message(detail))

    @property
    def retry_after(self) -> str | None:
        """The answer's Retry-After, as sent (seconds or an HTTP date), if any."""
        return self.headers.get("retry-after")


class BadRequest(DiffuseTVError):
    """A 4xx the other classes do not name (408, 413, 415...): the request itself must change."""


class AuthenticationError(BadRequest):
    """401: API keys are configured and the key is missing or wrong."""


class NotFound(BadRequest):
    """404: unknown, expired or another key's job (or model)."""


class Conflict(BadRequest):
    """409: the job has not succeeded (image, strip, latent) or has already ended (cancel)."""


class ValidationError(BadRequest):
    """422: a field is refused. `fields` names them (the last part of each error's `loc`)."""

    @property
    def fields(self) -> list[str]:
        if not isinstance(self.detail, list):
            return []
        return [str(e["loc"][-1]) for e in self.detail if isinstance(e, dict) and e.get("loc")]


class RateLimited(DiffuseTVError):
    """429: a bound was reached (a queue, a quota, open streams); still so after the client's retries."""


class Unavailable(DiffuseTVError):
    """503: Redis is unreachable, or no live worker serves the model; still so after the client's retries."""


class ServerError(DiffuseTVError):
    """Another 5xx."""


class JobFailed(DiffuseTVError):
    """The job ended without a result (failed or canceled), so it has no image: `job` is the job as it ended."""

    def __init__(self, job: Any) -> None:
        self.job = job
        super().__init__(None, f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))


class WaitTimeout(DiffuseTVError, TimeoutError):
    """`job.wait(timeout)` ran out before the job ended: `job` is the job as it was last seen."""

    def __init__(self, job: Any, timeout: float) -> None:
        self.job = job
        super().__init__(None, f"job {job.id} still {job.status} after {timeout:g} s")


BY_STATUS: dict[int, type[DiffuseTVError]] = {
    401: AuthenticationError,
    404: NotFound,
    409: Conflict,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
}


def message(detail: Any) -> str:
    """A line for the exception: the message, or each field error as `loc: msg`."""
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, dict):
                loc = ".".join(str(p) for p in error.get("loc", ()))
                parts.append(f"{loc}: {error.get('msg', '')}" if loc else str(error.get("msg", error)))
            else:
                parts.append(str(error))
        return "; ".join(parts)
    return str(detail)


def error_for(response: httpx.Response) -> DiffuseTVError:
    """The exception for an error answer (its body already read)."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text or response.reason_phrase
    status = response.status_code
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else BadRequest)
    return cls(status, detail, dict(response.headers))


def raise_for(response: httpx.Response) -> httpx.Response:
    """The response when it is a success (2xx, or 304), else its exception."""
    if response.is_success or response.status_code == 304:
        return response
    raise error_for(response)
