"""The asyncio client: `AsyncClient` and its `AsyncJob`, the same calls as `Client`'s, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .base import DEFAULT_URL, MAX_WAIT_S, BaseClient
from .errors import DiffuseTVError, JobFailed, WaitTimeout, raise_for
from .schema import JobView, from_json
from .sse import Event, EventParser


@dataclass
class AsyncJob(JobView):
    """A job (the fields of GET /jobs/{id}); its methods are `Job`'s, awaited."""

    _client: AsyncClient | None = field(default=None, repr=False, compare=False)

    async def refresh(self) -> AsyncJob:
        self.update(await self._client.job(self.id))
        return self

    async def wait(self, timeout: float | None = None) -> AsyncJob:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            left = MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(self, timeout)
            self.update(await self._client._poll(self.id, min(MAX_WAIT_S, left)))
        return self

    async def png(self) -> bytes:
        return await self._result("image_url")

    async def strip(self) -> bytes:
        return await self._result("strip_url")

    async def latent(self) -> bytes:
        return await self._result("latent_url")

    async def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(await self.png())
        return path

    async def cancel(self) -> AsyncJob:
        self.update(await self._client.cancel(self.id))
        return self

    def events(self) -> AsyncIterator[Event]:
        return self._client._events(self.events_url)

    async def _result(self, link: str) -> bytes:
        await self.wait()
        if self.status != "succeeded":
            raise JobFailed(self)
        url = getattr(self, link)
        if url is None:
            raise ValueError(f"a {self.kind} job has no {link.removesuffix('_url')}")
        return await self._client._bytes(url)


class AsyncClient(BaseClient):
    """`Client` for asyncio: `await client.generate(...)`, `async for event in job.events()`. Use it in an
    `async with` block, or `await aclose()`."""

    def __init__(self, base_url: str = DEFAULT_URL, *, transport=None, **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _job(self, data: dict[str, Any]) -> AsyncJob:
        job = from_json(AsyncJob, data)
        job._client = self
        return job

    async def _call(
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
        return parse(raise_for(await self._send(request, replayable=replayable)))

    async def _send(self, request: httpx.Request, stream: bool = False, replayable: bool = True) -> httpx.Response:
        attempt, waited = 0, 0.0
        while True:
            attempt += 1
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                delay = self.retry.after_error(error, attempt, waited, replayable)
                if delay is None:
                    raise
            else:
                delay = self.retry.after_response(response, attempt, waited)
                if delay is None:
                    return response
                await response.aclose()
            await asyncio.sleep(delay)
            waited += delay

    async def _events(self, url: str) -> AsyncIterator[Event]:
        parser, drops, waited = EventParser(), 0, 0.0
        while True:
            headers = {"accept": "text/event-stream"}
            if parser.last_id:
                headers["last-event-id"] = parser.last_id
            response = await self._send(self._http.build_request("GET", url, headers=headers), stream=True)
            dropped = None
            try:
                if not response.is_success:
                    await response.aread()
                    raise_for(response)
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        drops, waited = 0, 0.0
                        yield event
                        if event.final:
                            return
            except httpx.TransportError as error:
                dropped = error
            finally:
                await response.aclose()
            parser.reset()
            drops += 1
            delay = self.retry.delay(drops, waited)
            if delay is None:
                raise dropped or DiffuseTVError(None, f"the event stream of {url} closed {drops} times before the end")
            await asyncio.sleep(delay)
            waited += delay
