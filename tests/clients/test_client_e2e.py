"""The client against a live stack (Redis, `diffusetv worker`, `diffusetv api` as real processes)."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
from diffusetv_client import AsyncClient, Client, Conflict, JobFailed, NotFound, ValidationError

pytestmark = pytest.mark.slow


def test_generate_wait_png_and_save(live, tmp_path):
    with Client(live.base) as client:
        job = client.generate(seed=11, steps=5)
        assert job.status in ("queued", "running", "succeeded") and job.params["seed"] == 11
        assert job.wait(timeout=120) is job and job.status == "succeeded" and job.progress.steps == 5
        assert job.model.name == "tiny" and job.engine.device == "cpu" and job.image_url == f"/jobs/{job.id}/image.png"
        png = job.png()
        assert png == httpx.get(f"{live.base}/jobs/{job.id}/image.png").content and png[:4] == b"\x89PNG"
        assert job.save(tmp_path / "out.png").read_bytes() == png
        assert client.job(job.id).finished_at == job.finished_at


def test_events_from_the_start_to_the_final_status(live):
    with Client(live.base) as client:
        job = client.generate(seed=12, steps=20, previews=True)
        events = list(job.events())
        assert events[0].event == "status" and events[0].data["status"] in ("queued", "running")
        assert events[-1].event == "status" and events[-1].data == {"status": "succeeded"} and events[-1].final
        steps = [e.data["step"] for e in events if e.event == "progress"]
        assert steps == sorted(steps) and steps[-1] == 20
        previews = [e for e in events if e.event == "preview"]
        assert previews and all(e.data["url"].startswith("data:image/png;base64,") for e in previews)
        ids = [e.id for e in events]
        assert len(set(ids)) == len(ids) and all(ids)
        assert job.refresh().status == "succeeded"


class DropAfterFirstEvent(httpx.BaseTransport):
    """Real HTTP, but the first event stream is cut right after its first event, as a dropped connection."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.streams: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/events"):
            self.streams.append(request)
            if len(self.streams) == 1:
                response = httpx.Response(response.status_code, headers=response.headers, stream=Cut(response))
        return response

    def close(self) -> None:
        self.inner.close()


class Cut(httpx.SyncByteStream):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    def __iter__(self):
        seen = b""
        for chunk in self.response.stream:
            seen += chunk
            end = seen.find(b"\n\n")
            if end >= 0:
                yield seen[: end + 2]
                break
        self.response.close()
        raise httpx.ReadError("connection dropped")


def test_events_resume_after_a_drop_without_loss_or_repeat(live):
    with Client(live.base) as plain:
        job = plain.generate(seed=13, steps=10)
        whole = [(e.id, e.event, e.data) for e in job.events()]
    transport = DropAfterFirstEvent()
    with Client(live.base, transport=transport) as client:
        resumed = [(e.id, e.event, e.data) for e in client.job(job.id).events()]
    assert resumed == whole and len(whole) >= 3
    assert "last-event-id" not in transport.streams[0].headers
    assert transport.streams[1].headers["last-event-id"] == whole[0][0]


def test_interpolate_invert_and_models(live):
    with Client(live.base) as client:
        models = client.models()
        assert models.default == "tiny@1" and models.get("tiny").served and models.get("tiny").shape.width == 16
        walk = client.interpolate(seed_a=1, seed_b=2, frames=3, steps=5)
        assert walk.kind == "interpolate" and walk.params["frames"] == 3
        animation, strip = walk.png(), walk.strip()
        assert animation == httpx.get(f"{live.base}{walk.image_url}").content and b"acTL" in animation
        assert strip == httpx.get(f"{live.base}{walk.strip_url}").content
        source = client.generate(seed=1, steps=5).wait(timeout=120)  # an input must have succeeded
        inversion = client.invert(source, steps=5)
        latent = inversion.latent()
        header = json.loads(latent[8 : 8 + int.from_bytes(latent[:8], "little")])
        assert header["latent"]["dtype"] == "F32" and header["__metadata__"]["steps"] == "5"
        again = client.generate(latent=inversion, steps=5)
        assert again.wait(timeout=120).status == "succeeded" and len(again.params["latent"]) == 64
        with pytest.raises(ValueError, match="no strip"):
            source.strip()


def test_cancel_a_queued_job_and_errors(live):
    worker = live.procs["worker"]
    with Client(live.base) as client:
        worker.send_signal(signal.SIGSTOP)  # the job stays queued (the worker's heartbeat still counts for 20 s)
        try:
            job = client.generate(seed=14, steps=5)
            assert job.cancel() is job and job.status == "canceled"
        finally:
            worker.send_signal(signal.SIGCONT)
        with pytest.raises(Conflict, match="already canceled"):
            job.cancel()
        with pytest.raises(JobFailed) as failed:
            job.png()
        assert failed.value.job is job
        assert [e.data for e in job.events()][-1] == {"status": "canceled"}
        with pytest.raises(ValidationError) as invalid:
            client.generate(seed=1, steps=0)
        assert invalid.value.status == 422 and invalid.value.fields == ["steps"]
        with pytest.raises(NotFound):
            client.job("0" * 32)


def test_the_async_client(live):
    async def run():
        async with AsyncClient(live.base) as client:
            job = await client.generate(seed=15, steps=5)
            events = [e async for e in job.events()]
            png = await job.png()
            return job, events, png

    job, events, png = asyncio.run(run())
    assert job.status == "succeeded" and events[-1].data == {"status": "succeeded"}
    assert png == httpx.get(f"{live.base}/jobs/{job.id}/image.png").content


class DropFirstAnswer(httpx.BaseTransport):
    """Real HTTP, but the answer to the first POST is lost after the server made it (a connection reset)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost: list[dict] = []
        self.posts: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.posts.append(request)
            if not self.lost:
                self.lost.append(json.loads(response.read()))
                response.close()
                raise httpx.ReadError("connection reset after the server answered", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_post_whose_answer_was_lost_is_retried_without_a_second_job(live):
    transport = DropFirstAnswer()
    with Client(live.base, transport=transport) as client:
        job = client.generate(steps=5)  # no seed: the server draws one, once
    made = transport.lost[0]
    assert made["status"] in ("queued", "running", "succeeded") and len(transport.posts) == 2
    assert transport.posts[0].headers["idempotency-key"] == transport.posts[1].headers["idempotency-key"]
    assert job.id == made["id"] and job.params["seed"] == made["params"]["seed"]


def test_one_idempotency_key_is_one_job_and_another_body_is_refused(live):
    with Client(live.base) as client:
        first = client.generate(seed=16, steps=5, idempotency_key="client-e2e-16")
        again = client.generate(seed=16, steps=5, idempotency_key="client-e2e-16")
        assert again.id == first.id
        with pytest.raises(ValidationError) as refused:
            client.generate(seed=17, steps=5, idempotency_key="client-e2e-16")
        assert refused.value.fields == ["idempotency-key"] and "another request body" in str(refused.value)
        drawn = client.generate(steps=5)
        assert isinstance(drawn.params["seed"], int) and drawn.wait(timeout=120).status == "succeeded"
