"""The client against stub transports: retries, Retry-After, Idempotency-Key, errors, SSE parsing and resuming,
and its dataclasses against the API's OpenAPI schema."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import diffusetv_client
import httpx
import pytest
from diffusetv_client import AsyncClient, Client, RateLimited, ValidationError
from diffusetv_client import client as sync_module
from diffusetv_client.retry import Retry, retry_after_s
from diffusetv_client.schema import JobView, ModelList, required
from diffusetv_client.sse import EventParser

JOB_ID = "0123456789abcdef0123456789abcdef"


def job_json(status: str = "queued", **extra) -> dict:
    return {
        "id": JOB_ID,
        "kind": "generate",
        "status": status,
        "params": {"seed": 7, "steps": 5, "eta": 0.0, "previews": False},
        "model": {"name": "tiny", "version": 1, "digest": "d" * 64, "identity": "i" * 64},
        "created_at": "2026-01-01T00:00:00.000Z",
        "events_url": f"/jobs/{JOB_ID}/events",
        "image_url": f"/jobs/{JOB_ID}/image.png" if status == "succeeded" else None,
        **extra,
    }


@pytest.fixture
def sleeps(monkeypatch):
    """The client's waits, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(sync_module.time, "sleep", slept.append)
    return slept


def stub(answers):
    """A client whose transport answers each request with the next of `answers` (a Response, or an exception to
    raise); `requests` records what it was sent."""
    answers = list(answers)
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return Client("http://127.0.0.1:9", transport=httpx.MockTransport(handle)), requests


def test_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_s("3", now) == 3.0
    assert retry_after_s(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7.0
    assert retry_after_s(format_datetime(now - timedelta(seconds=7), usegmt=True), now) == 0.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None and retry_after_s("-1") is None


def test_a_429_is_retried_after_its_retry_after_with_the_same_idempotency_key(sleeps):
    client, requests = stub(
        [
            httpx.Response(429, json={"detail": "this client's quota ..."}, headers={"Retry-After": "2"}),
            httpx.Response(503, json={"detail": "Redis is unavailable"}, headers={"Retry-After": "1"}),
            httpx.Response(202, json=job_json(), headers={"Location": f"/jobs/{JOB_ID}"}),
        ]
    )
    job = client.generate(seed=7, steps=5)
    assert job.id == JOB_ID and job.status == "queued" and job.params["seed"] == 7
    assert sleeps == [2.0, 1.0]
    keys = {r.headers["idempotency-key"] for r in requests}
    assert len(requests) == 3 and len(keys) == 1  # one call, one key, on every try
    assert json.loads(requests[0].content) == {"seed": 7, "steps": 5, "eta": 0.0, "previews": False}
    assert requests[0].url.path == "/generate"
    another, more = stub([httpx.Response(202, json=job_json())])
    another.generate(seed=7)
    assert more[0].headers["idempotency-key"] not in keys  # each call its own key


def test_an_idempotency_key_of_the_callers_own_is_sent_as_given():
    client, requests = stub([httpx.Response(202, json=job_json())])
    client.generate(seed=1, idempotency_key="order-42")
    assert requests[0].headers["idempotency-key"] == "order-42"


def test_a_retry_after_over_the_longest_wait_is_not_waited_for(sleeps):
    client, requests = stub([httpx.Response(429, json={"detail": "full"}, headers={"Retry-After": "3600"})])
    with pytest.raises(RateLimited) as caught:
        client.generate(seed=1)
    assert caught.value.status == 429 and caught.value.retry_after == "3600" and caught.value.detail == "full"
    assert sleeps == [] and len(requests) == 1


def test_retries_stop_at_the_attempts_and_at_the_total_wait(sleeps):
    busy = [httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "1"}) for _ in range(9)]
    client, requests = stub(busy)
    client.retry = Retry(attempts=3, max_wait=60, total=300)
    with pytest.raises(diffusetv_client.Unavailable):
        client.models()
    assert sleeps == [1.0, 1.0, 1.0] and len(requests) == 4
    sleeps.clear()
    client, requests = stub(busy)
    client.retry = Retry(attempts=10, max_wait=60, total=2.5)
    with pytest.raises(diffusetv_client.Unavailable):
        client.models()
    assert sleeps == [1.0, 1.0] and len(requests) == 3


def test_a_lost_answer_to_a_post_is_retried_with_its_key_and_a_lost_cancel_is_not(sleeps):
    lost = httpx.ReadError("connection reset")
    client, requests = stub([lost, httpx.Response(202, json=job_json())])
    assert client.generate(seed=1).id == JOB_ID
    assert len(requests) == 2 and requests[0].headers["idempotency-key"] == requests[1].headers["idempotency-key"]
    client, requests = stub([lost])
    with pytest.raises(httpx.ReadError):
        client.cancel(JOB_ID)
    assert len(requests) == 1
    client, requests = stub([httpx.ConnectError("refused"), httpx.Response(202, json=job_json("canceled"))])
    assert client.cancel(JOB_ID).status == "canceled"  # never sent: safe to send again


def test_errors_are_typed_and_name_the_fields():
    detail = [{"type": "int_type", "loc": ["body", "seed"], "msg": "Input should be a valid integer", "input": "4"}]
    client, _ = stub(
        [httpx.Response(422, json={"detail": detail}), httpx.Response(404, json={"detail": "no such job"})]
    )
    with pytest.raises(ValidationError) as caught:
        client.generate(seed=4)
    assert caught.value.status == 422 and caught.value.fields == ["seed"]
    assert str(caught.value) == "422: body.seed: Input should be a valid integer"
    with pytest.raises(diffusetv_client.NotFound, match="no such job"):
        client.job(JOB_ID)


def test_wait_long_polls_until_the_end_and_png_fetches_the_image(sleeps):
    client, requests = stub(
        [
            httpx.Response(200, json=job_json("running")),
            httpx.Response(200, json=job_json("succeeded")),
            httpx.Response(200, content=b"\x89PNG...", headers={"content-type": "image/png"}),
        ]
    )
    job = client._job(job_json("queued"))
    assert job.png() == b"\x89PNG..."
    assert job.status == "succeeded" and job.image_url == f"/jobs/{JOB_ID}/image.png"
    assert [r.url.params.get("wait") for r in requests] == ["30.000", "30.000", None]
    assert requests[2].url.path == f"/jobs/{JOB_ID}/image.png"


def test_wait_times_out_and_a_failed_job_has_no_png():
    client, _ = stub([httpx.Response(200, json=job_json("running"))] * 3)
    job = client._job(job_json("queued"))
    with pytest.raises(diffusetv_client.WaitTimeout):
        job.wait(timeout=0)
    failed, _ = stub([])
    ended = failed._job(job_json("failed", error="the worker died"))
    with pytest.raises(diffusetv_client.JobFailed, match="the worker died"):
        ended.png()


def test_the_sse_parser_follows_the_standard():
    parser = EventParser()
    lines = [": keep-alive", "", "id: 1-0", "event: status", 'data: {"status":"queued",', 'data: "x":1}', ""]
    got = [e for line in lines if (e := parser.feed(line)) is not None]
    assert len(got) == 1 and got[0].event == "status" and got[0].id == "1-0" and not got[0].final
    assert got[0].data == {"status": "queued", "x": 1}  # data lines joined by a newline: valid JSON
    assert parser.feed("event: progress") is None and parser.feed("") is None  # no data: nothing dispatched
    assert [parser.feed(x) for x in ("data:plain", "")][1].data == "plain"  # one space after the colon is optional
    parser.feed("event: status")
    parser.feed('data: {"status":"succeeded"}')
    final = parser.feed("")
    assert final.final and final.id == "1-0"  # an event without an id line keeps the last one


class Dropping(httpx.SyncByteStream):
    """A stream that sends `body`, then fails as a dropped connection would."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self):
        yield self.body
        raise httpx.ReadError("connection dropped")


def test_events_resume_after_a_drop_with_last_event_id(sleeps):
    first = b'id: 1-0\nevent: status\ndata: {"status":"queued"}\n\nid: 2-0\nevent: progress\ndata: {"step":1'
    rest = b'id: 2-0\nevent: progress\ndata: {"step":1,"steps":2}\n\n'
    rest += b'id: 3-0\nevent: status\ndata: {"status":"succeeded"}\n\n'
    client, requests = stub(
        [
            httpx.Response(200, stream=Dropping(first), headers={"content-type": "text/event-stream"}),
            httpx.Response(200, content=rest, headers={"content-type": "text/event-stream"}),
        ]
    )
    events = list(client._job(job_json()).events())
    assert [(e.id, e.event) for e in events] == [("1-0", "status"), ("2-0", "progress"), ("3-0", "status")]
    assert events[1].data == {"step": 1, "steps": 2} and events[-1].final
    assert "last-event-id" not in requests[0].headers and requests[1].headers["last-event-id"] == "1-0"
    assert len(sleeps) == 1


def test_the_async_client_retries_and_waits_alike(monkeypatch):
    answers = [
        httpx.Response(429, json={"detail": "busy"}, headers={"Retry-After": "1"}),
        httpx.Response(202, json=job_json()),
        httpx.Response(200, json=job_json("succeeded")),
        httpx.Response(200, content=b"\x89PNG"),
        httpx.Response(200, content=b'id: 5-0\nevent: status\ndata: {"status":"succeeded"}\n\n'),
    ]
    requests: list[httpx.Request] = []
    slept: list[float] = []

    async def handle(request):
        requests.append(request)
        return answers.pop(0)

    async def sleep(delay):
        slept.append(delay)

    monkeypatch.setattr(diffusetv_client.aio.asyncio, "sleep", sleep)

    async def run():
        async with AsyncClient("http://127.0.0.1:9", transport=httpx.MockTransport(handle)) as client:
            job = await client.generate(seed=7)
            png = await job.png()
            events = [e async for e in job.events()]
            return job, png, events

    job, png, events = asyncio.run(run())
    assert job.status == "succeeded" and png == b"\x89PNG" and [e.id for e in events] == ["5-0"]
    assert slept == [1.0] and requests[0].headers["idempotency-key"] == requests[1].headers["idempotency-key"]


def client_dataclasses() -> list[type]:
    """Every dataclass of the client that mirrors an API schema (`__schema__`)."""
    found = []
    for name in diffusetv_client.__all__:
        cls = getattr(diffusetv_client, name)
        if dataclasses.is_dataclass(cls) and "__schema__" in vars(cls):
            found.append(cls)
    return found


def test_every_field_of_the_clients_dataclasses_is_in_the_openapi_schema():
    from app.main import create_app

    schemas = create_app().openapi()["components"]["schemas"]
    mirrored = client_dataclasses()
    assert {c.__schema__ for c in mirrored} >= {"Job", "ModelInfo", "Engine", "Progress", "ModelList", "ModelEntry"}
    for cls in mirrored:
        schema = schemas[cls.__schema__]
        names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        missing = set(names) - set(schema["properties"])
        assert not missing, f"{cls.__name__}: {sorted(missing)} are not fields of the API's {cls.__schema__}"
        loose = set(required(cls)) - set(schema.get("required", []))
        assert not loose, f"{cls.__name__}: {sorted(loose)} are required here but optional in {cls.__schema__}"
        for name, convert in getattr(cls, "__nested__", {}).items():
            refs = json.dumps(schema["properties"][name])
            inner = type(convert(_sample(name, cls)))
            inner = type(convert(_sample(name, cls))[0]) if inner is list else inner
            assert f'"#/components/schemas/{inner.__schema__}"' in refs, (cls.__name__, name, refs)


def test_every_argument_of_the_clients_calls_is_a_field_of_the_request():
    import inspect

    from app.main import create_app

    schemas = create_app().openapi()["components"]["schemas"]
    calls = {"generate": "GenerateRequest", "interpolate": "InterpolateRequest", "invert": "InvertRequest"}
    for call, request in calls.items():
        arguments = set(inspect.signature(getattr(Client, call)).parameters) - {"self", "idempotency_key"}
        fields = set(schemas[request]["properties"])
        assert arguments - fields == set(), f"{call}: {sorted(arguments - fields)} are not fields of {request}"
        assert fields - arguments == set(), f"{call} does not take {sorted(fields - arguments)} of {request}"


def _sample(name: str, cls: type):
    """A value for the nested field `name` of `cls`, just enough to build its dataclass."""
    samples = {
        "model": {"name": "m", "version": 1, "digest": "d"},
        "engine": {"device": "cpu", "precision": "fp32"},
        "progress": {"step": 1, "steps": 2},
        "shape": {"height": 1, "width": 1, "channels": 3},
        "sizes": [{"width": 1, "height": 1}],
        "models": [json.loads(json.dumps(MODEL_ENTRY))],
    }
    return samples[name]


MODEL_ENTRY = {
    "name": "tiny", "version": 1, "ref": "tiny@1", "digest": "d", "identity": "i", "kind": "ddim-unet",
    "shape": {"height": 16, "width": 16, "channels": 3}, "image_size": 16, "conditioning": "none", "max_steps": 1000,
    "samplers": ["ddim"], "schedule": "offset_cosine", "default": True, "served": True,
}  # fmt: skip


def test_unknown_fields_of_a_newer_server_are_ignored():
    job = Client("http://127.0.0.1:9")._job(job_json(webhook="https://example.org/hook", something_new=1))
    assert isinstance(job, JobView) and job.id == JOB_ID and not hasattr(job, "something_new")
    models = diffusetv_client.schema.from_json(ModelList, {"default": "tiny@1", "models": [MODEL_ENTRY]})
    assert models.get("tiny").ref == "tiny@1" and models.get("tiny@2") is None


def test_the_client_is_python_3_9_source():
    """The client supports Python 3.9: its syntax parses as 3.9's, and no annotation is evaluated at run time."""
    import ast
    from pathlib import Path

    package = Path(diffusetv_client.__file__).parent
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path), feature_version=(3, 9))
        futures = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
        assert path.name == "__init__.py" or [a.name for n in futures for a in n.names] == ["annotations"], path
