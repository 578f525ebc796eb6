"""The synchronous client: `Client` and its `Job`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .base import DEFAULT_URL, MAX_WAIT_S, BaseClient
from .errors import DiffuseTVError, JobFailed, WaitTimeout, raise_for
from .schema import JobView, from_json
from .sse import Event, EventParser


@dataclass
class Job(JobView):
    """A job (the fields of GET /jobs/{id}) and what can be done with it through its client."""

    _client: Client | None = field(default=None, repr=False, compare=False)

    def refresh(self) -> Job:
        """The job as it is now (this object, updated)."""
        self.update(self._client.job(self.id))
        return self

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job ends (this object, updated), by long polls; `WaitTimeout` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            left = MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(self, timeout)
            self.update(self._client._poll(self.id, min(MAX_WAIT_S, left)))
        return self

    def png(self) -> bytes:
        """The PNG, once the job has succeeded (it waits for the end): an interpolation's is the animation, an
        inversion's the reconstruction. `JobFailed` when the job failed or was canceled."""
        return self._result("image_url")

    def strip(self) -> bytes:
        """An interpolation's frames side by side, as one PNG."""
        return self._result("strip_url")

    def latent(self) -> bytes:
        """An inversion's latent, as safetensors bytes."""
        return self._result("latent_url")

    def save(self, path: str | Path) -> Path:
        """Write the PNG to `path`."""
        path = Path(path)
        path.write_bytes(self.png())
        return path

    def cancel(self) -> Job:
        """Cancel the job (this object, updated); `Conflict` once it has ended."""
        self.update(self._client.cancel(self.id))
        return self

    def events(self) -> Iterator[Event]:
        """The job's Server-Sent Events, from the start, until its final status. A dropped stream is resumed with
        Last-Event-ID, so no event is lost or repeated."""
        return self._client._events(self.events_url)

    def _result(self, link: str) -> bytes:
        self.wait()
        if self.status != "succeeded":
            raise JobFailed(self)
        url = getattr(self, link)
        if url is None:
            raise ValueError(f"a {self.kind} job has no {link.removesuffix('_url')}")
        return self._client._bytes(url)


class Client(BaseClient):
    """A client of the DiffuseTV API: `generate`, `interpolate`, `invert`, `models`, `job`, `cancel`. Use it in a
    `with` block, or `close()` it. `transport` replaces httpx's (for tests, or a proxy's)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, transport=None, **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _job(self, data: dict[str, Any]) -> Job:
        job = from_json(Job, data)
        job._client = self
        return job

    def _call(
        self,
        method: str,
        url: str,
        parse: Callable[[httpx.Response], Any],
        *,
        replayable: bool = True,
        timeout: float | None = None,
        **kw: Any,
    ) -> Any:
        request = self._http.build_request(method, url, timeout=timeout or self.timeout, **kw)
        return parse(raise_for(self._send(request, replayable=replayable)))

    def _send(self, request: httpx.Request, stream: bool = False, replayable: bool = True) -> httpx.Response:
        """The answer to `request`, tried again after a 429 or 503 and after a dropped connection, within the bounds."""
        attempt, waited = 0, 0.0
        while True:
            attempt += 1
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                delay = self.retry.after_error(error, attempt, waited, replayable)
                if delay is None:
                    raise
            else:
                delay = self.retry.after_response(response, attempt, waited)
                if delay is None:
                    return response
                response.close()
            time.sleep(delay)
            waited += delay

    def _events(self, url: str) -> Iterator[Event]:
        parser, drops, waited = EventParser(), 0, 0.0
        while True:
            headers = {"accept": "text/event-stream"}
            if parser.last_id:
                headers["last-event-id"] = parser.last_id
            response = self._send(self._http.build_request("GET", url, headers=headers), stream=True)
            dropped = None
            try:
                if not response.is_success:
                    response.read()
                    raise_for(response)
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        drops, waited = 0, 0.0
                        yield event
                        if event.final:
                            return
            except httpx.TransportError as error:  # the connection dropped: resume after the last event
                dropped = error
            finally:
                response.close()
            parser.reset()
            drops += 1
            delay = self.retry.delay(drops, waited)
            if delay is None:
                raise dropped or DiffuseTVError(None, f"the event stream of {url} closed {drops} times before the end")
            time.sleep(delay)
            waited += delay
