"""POST /v1/images/generations in process, against a real Redis with no worker: its validation, its errors in
OpenAI's shape (the official `openai` SDK reads them), its jobs, and its bounded wait."""

from __future__ import annotations

import json

import openai
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app.core import keys
from app.core.results.redis_store import RedisStore
from app.core.settings import Settings
from app.main import create_app
from helpers import claim_as_worker

URL = "/v1/images/generations"
KEY = "k" * 32


def make_client(tiny_store, redis_server, **overrides) -> TestClient:
    overrides = {"openai_wait_s": 0.3, **overrides}
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", **overrides)
    return TestClient(create_app(settings))


@pytest.fixture
def client(tiny_store, redis_server):
    claim_as_worker(redis_server.url)
    with make_client(tiny_store, redis_server) as c:
        yield c


@pytest.fixture
def sdk(client):
    """The official SDK, talking to the in-process app; no retries, so that each call is one request."""
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


def job_ids(redis) -> list[str]:
    """The ids of the jobs in Redis (their records' keys, not the keys under a job: `job:<id>:deliveries`)."""
    found = (k.decode().removeprefix(keys.job("")) for k in redis.scan_iter(match=keys.job("*")))
    return sorted(i for i in found if ":" not in i)


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


def test_a_wrong_size_is_a_400_naming_size_in_openais_shape(client):
    for size in ["32x32", "16x17", "big", "0x0", "16X16", " 16x16"]:
        r = client.post(URL, json={"prompt": "", "size": size})
        assert r.status_code == 400, r.text
        error = error_of(r)
        assert error["param"] == "size" and error["type"] == "invalid_request_error"
        assert "16x16" in error["message"], error  # the sizes the model makes


def test_the_sdk_raises_bad_request_naming_size(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(prompt="", size="1024x1024", extra_body={"seed": 1, "steps": 2})
    assert caught.value.status_code == 400
    assert caught.value.param == "size" and "size" in caught.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a red heart"}, "prompt"),  # a prompt-free model takes no prompt
        ({"prompt": "", "guidance": 2.0}, "guidance"),
        ({"prompt": "", "n": 0}, "n"),
        ({"prompt": "", "n": 11}, "n"),
        ({"prompt": "", "n": "2"}, "n"),
        ({"prompt": "", "stream": True}, "stream"),
        ({"prompt": "", "output_format": "jpeg"}, "output_format"),
        ({"prompt": "", "response_format": "png"}, "response_format"),
        ({"prompt": "", "colour": "red"}, "colour"),
        ({"prompt": "", "seed": -1}, "seed"),
        ({"prompt": "", "seed": 2**53 - 2, "n": 3}, "seed"),  # seed + n - 1 past the seed range
        ({"prompt": "", "steps": 0}, "steps"),
        ({"prompt": "", "sampler": "dpmpp_2m", "eta": 0.5}, "eta"),
        ({"prompt": "", "model": "nope"}, "model"),
        ({}, "prompt"),
    ],
)
def test_invalid_requests_are_400_naming_the_field(client, redis_server, body, param):
    r = client.post(URL, json=body)
    assert r.status_code == 400, r.text
    assert error_of(r)["param"] == param
    assert job_ids(redis_lib.Redis.from_url(redis_server.url)) == []  # nothing queued


def test_ignored_openai_fields_are_accepted(client):
    ignored = {"quality": "hd", "style": "vivid", "user": "u1", "background": "auto", "moderation": "low"}
    r = client.post(URL, json={"prompt": "", "output_compression": 50, "output_format": "png", **ignored})
    assert r.status_code == 408, r.text  # accepted and queued; no worker runs it


def test_a_malformed_body_and_the_middlewares_answers_take_the_shape(client):
    r = client.post(URL, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r)["type"] == "invalid_request_error"
    r = client.post(URL, content=b'{"prompt": ""}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "JSON" in error_of(r)["message"]
    r = client.post(URL, content=b'{"prompt": "' + b"a" * 70_000 + b'"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and error_of(r)["message"] == "request body over 64 KiB"
    r = client.get("/v1/models/none")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    assert client.post("/generate", json={"seed": -1}).json()["detail"][0]["loc"] == ["body", "seed"]  # as before


def test_past_the_wait_it_is_a_408_naming_the_jobs_and_saying_not_to_retry(client, redis_server):
    r = client.post(URL, json={"prompt": "", "n": 3, "size": "16x16", "extra": None} | {"seed": 5})
    assert r.status_code == 400  # `extra` is no field
    r = client.post(URL, json={"prompt": "", "n": 3, "size": "16x16", "seed": 5, "steps": 7})
    assert r.status_code == 408, r.text
    assert r.headers["x-should-retry"] == "false"
    error = error_of(r)
    assert error["type"] == "timeout" and len(error["jobs"]) == 3
    redis = redis_lib.Redis.from_url(redis_server.url)
    params = [json.loads(redis.hget(keys.job(i), "params")) for i in error["jobs"]]
    assert params == [{"seed": s, "steps": 7, "eta": 0.0} for s in (5, 6, 7)]  # /generate's
    for job_id in error["jobs"]:
        assert job_id in error["message"]
        assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
    assert redis.zcard(keys.leases("addr:testclient")) == 0  # the wait's stream lease is given back


def test_without_a_seed_the_server_draws_one(client, redis_server):
    r = client.post(URL, json={"prompt": "", "n": 2, "steps": 3})
    jobs = error_of(r)["jobs"]
    redis = redis_lib.Redis.from_url(redis_server.url)
    seeds = [json.loads(redis.hget(keys.job(i), "params"))["seed"] for i in jobs]
    assert seeds[1] == seeds[0] + 1 and 0 <= seeds[0] <= 2**53 - 2


def test_no_live_worker_is_a_503_in_the_shape_and_queues_nothing(tiny_store, redis_server):
    with make_client(tiny_store, redis_server) as c:
        r = c.post(URL, json={"prompt": "", "seed": 1})
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert error_of(r)["type"] == "server_error"
    assert job_ids(redis_lib.Redis.from_url(redis_server.url)) == []


def test_a_client_at_its_stream_cap_is_a_429_before_any_job_is_queued(tiny_store, redis_server):
    claim_as_worker(redis_server.url)
    with make_client(tiny_store, redis_server, client_streams=1) as c:
        queued = c.post("/generate", json={"seed": 1, "steps": 3}).json()["id"]
        with c.stream("GET", f"/jobs/{queued}/events"):  # holds the client's one stream lease
            r = c.post(URL, json={"prompt": "", "seed": 2})
    assert r.status_code == 429 and error_of(r)["code"] == "rate_limit_exceeded"
    redis = redis_lib.Redis.from_url(redis_server.url)
    assert job_ids(redis) == [queued]


def test_a_quota_refusal_is_a_429_that_admits_none_of_the_images(tiny_store, redis_server):
    claim_as_worker(redis_server.url)
    with make_client(tiny_store, redis_server, client_jobs=3) as c:
        r = c.post(URL, json={"prompt": "", "seed": 1, "n": 4})
    assert r.status_code == 429 and "Retry-After" in r.headers, r.text
    assert error_of(r)["type"] == "requests"
    assert job_ids(redis_lib.Redis.from_url(redis_server.url)) == []


def test_with_keys_a_missing_key_is_a_401_in_the_shape(tiny_store, redis_server):
    claim_as_worker(redis_server.url)
    with make_client(tiny_store, redis_server, api_keys=KEY) as c:
        r = c.post(URL, json={"prompt": "", "seed": 1})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert error_of(r)["code"] == "invalid_api_key"
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong" * 8, http_client=c, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            sdk.images.generate(prompt="", extra_body={"seed": 1})
        r = c.post(URL, json={"prompt": "", "seed": 1}, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 408  # the right key: queued


def test_the_schema_declares_the_route_and_its_openai_errors(client):
    operation = client.get("/openapi.json").json()["paths"][URL]["post"]
    assert {"200", "400", "408", "409", "413", "415", "429", "500", "503"} <= set(operation["responses"])
    assert "422" not in operation["responses"]  # answered as 400
    error = operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert error.endswith("/OpenAIError")


def test_an_idempotency_key_gives_the_same_jobs_and_seed_and_another_body_is_a_400(client, redis_server):
    body = {"prompt": "", "n": 2, "steps": 4}  # no seed: the server draws one, once
    first = client.post(URL, json=body, headers={"Idempotency-Key": '"retry-1"'})
    again = client.post(URL, json={"steps": 4, "n": 2, "prompt": ""}, headers={"Idempotency-Key": "retry-1"})
    assert first.status_code == again.status_code == 408
    jobs = error_of(first)["jobs"]
    assert error_of(again)["jobs"] == jobs
    redis = redis_lib.Redis.from_url(redis_server.url)
    assert len(job_ids(redis)) == 2  # no second pair of jobs
    other = client.post(URL, json={**body, "steps": 5}, headers={"Idempotency-Key": "retry-1"})
    assert other.status_code == 400 and error_of(other)["param"] == "idempotency-key"
    assert "another request body" in error_of(other)["message"]
    malformed = client.post(URL, json=body, headers={"Idempotency-Key": "a" * 256})
    assert malformed.status_code == 400 and error_of(malformed)["param"] == "idempotency-key"
    assert len(job_ids(redis)) == 2
    generate = client.post("/generate", json={"steps": 4}, headers={"Idempotency-Key": "retry-1"})
    assert generate.status_code == 422  # the key named another route's request; outside /v1, FastAPI's shape
    assert generate.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_a_retry_with_its_key_waits_for_its_jobs_even_once_no_worker_serves_the_model(client, redis_server):
    from helpers import release_claim

    body, headers = {"prompt": "", "n": 2, "steps": 4}, {"Idempotency-Key": "served-then-not"}
    first = client.post(URL, json=body, headers=headers)
    assert first.status_code == 408
    release_claim(redis_server.url)
    again = client.post(URL, json=body, headers=headers)
    assert again.status_code == 408 and error_of(again)["jobs"] == error_of(first)["jobs"]
    assert client.post(URL, json=body).status_code == 503
    redis = redis_lib.Redis.from_url(redis_server.url)
    redis.delete(keys.job(error_of(first)["jobs"][1]))  # one of its jobs expired: the retry starts anew
    claim_as_worker(redis_server.url)
    anew = client.post(URL, json=body, headers=headers)
    assert anew.status_code == 408 and set(error_of(anew)["jobs"]).isdisjoint(error_of(first)["jobs"])


@pytest.mark.parametrize("path", ["/v1/images/generations", "/generate"])
def test_a_body_that_does_not_arrive_in_time_is_a_408_in_the_shape_of_its_path(path):
    import anyio

    from app.limits import BodySizeLimit
    from app.openai_errors import OpenAIErrors

    async def never_called(scope, receive, send):
        raise AssertionError("the app got a request whose body never arrived")

    app = OpenAIErrors(BodySizeLimit(never_called, timeout_s=0.05))
    sent = []

    async def receive():
        await anyio.sleep(60)  # the body never comes

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", b"application/json")]}
    anyio.run(app, scope, receive, send)
    start, body = sent
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()
    answer = json.loads(body["body"])
    if path.startswith("/v1/"):
        assert answer["error"]["type"] == "timeout" and "did not arrive" in answer["error"]["message"]
    else:
        assert answer == {"detail": "the request body did not arrive within 0.05 s"}


def test_the_sdk_does_not_retry_a_408_so_no_more_jobs_are_queued(client, redis_server):
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=2)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.images.generate(prompt="", n=3, extra_body={"seed": 9, "steps": 3})
    assert caught.value.status_code == 408 and len(caught.value.body["jobs"]) == 3
    assert len(job_ids(redis_lib.Redis.from_url(redis_server.url))) == 3  # one request, not three


def test_a_text_models_images_are_generates_jobs_with_the_normalised_prompt(tiny_store, redis_server):
    from helpers import TEXT_CAPTIONS, save_tiny_text

    save_tiny_text(tiny_store)
    claim_as_worker(redis_server.url, "words@1")
    caption = TEXT_CAPTIONS[0]
    with make_client(tiny_store, redis_server) as c:
        sent = {"model": "words", "steps": 6, "guidance": 3.0}
        r = c.post(URL, json={**sent, "prompt": f"  {caption.upper()} ", "n": 2, "seed": 3})
        assert r.status_code == 408, r.text
        jobs = error_of(r)["jobs"]
        params = [c.get(f"/jobs/{job_id}").json()["params"] for job_id in jobs]
        assert [p["prompt"] for p in params] == [caption, caption] and [p["seed"] for p in params] == [3, 4]
        follower = c.post("/generate", json={**sent, "prompt": caption, "seed": 4}).json()
        assert follower["params"] == params[1]
        run = redis_lib.Redis.from_url(redis_server.url).hget(keys.job(follower["id"]), "run")
        assert run.decode() == jobs[1]  # the same engine key: /generate's job follows the image's run
        r = c.post(URL, json={"model": "words", "prompt": "", "negative_prompt": "x"})
        assert r.status_code == 400 and error_of(r)["param"] == "negative_prompt"


@pytest.mark.parametrize(("end", "status", "says"), [("cancel", 409, "was canceled"), ("fail", 500, "failed: boom")])
def test_a_job_that_ends_without_an_image_ends_the_wait_naming_the_jobs(tiny_store, redis_server, end, status, says):
    import threading
    import time

    from app.core import runs

    claim_as_worker(redis_server.url)
    redis = redis_lib.Redis.from_url(redis_server.url)
    answers = []
    with make_client(tiny_store, redis_server, openai_wait_s=60) as c:
        post = threading.Thread(target=lambda: answers.append(c.post(URL, json={"prompt": "", "n": 2, "seed": 1})))
        post.start()
        deadline = time.monotonic() + 30
        while len(job_ids(redis)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        job_id = min(job_ids(redis), key=lambda i: json.loads(redis.hget(keys.job(i), "params"))["seed"])
        if end == "cancel":
            assert c.delete(f"/jobs/{job_id}").status_code == 202
        else:
            runs.fail_run(redis, job_id, "boom", 600)
        post.join(30)
    [r] = answers
    assert r.status_code == status and r.headers["x-should-retry"] == "false", r.text
    error = error_of(r)
    assert job_id in error["jobs"] and len(error["jobs"]) == 2 and says in error["message"]


@pytest.mark.parametrize(
    ("broken", "status", "says"),
    [
        ("xrevrange", 503, "could not reach Redis"),  # in the wait
        ("store", 410, "is missing from the result store"),  # reading the images
    ],
)
def test_an_error_after_admission_names_the_jobs_and_says_not_to_retry(
    client, redis_server, monkeypatch, broken, status, says
):
    redis = redis_lib.Redis.from_url(redis_server.url)
    if broken == "xrevrange":

        def fail(self, *args, **kwargs):
            raise redis_lib.ConnectionError("Redis went away")

        monkeypatch.setattr(redis_lib.Redis, "xrevrange", fail)
    else:
        monkeypatch.setattr(RedisStore, "get", lambda self, name: None)  # the images deleted from the store ...
        monkeypatch.setattr("app.routes.openai.ended_badly", lambda records, job_ids, wait_s: None)  # ... once done
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=2)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.images.generate(prompt="", n=2, response_format="b64_json", extra_body={"seed": 4, "steps": 3})
    assert caught.value.status_code == status and caught.value.response.headers["x-should-retry"] == "false"
    error = caught.value.body
    assert len(error["jobs"]) == 2 and says in error["message"] and error["jobs"][0] in error["message"]
    assert len(job_ids(redis)) == 2  # one request, not three: the SDK did not retry
    assert redis.zcard(keys.leases("addr:testclient")) == 0  # the wait's stream lease is given back


def test_the_wait_ends_once_the_client_has_hung_up(tiny_store, redis_server):
    """A client that went away is not waited for: the wait returns at its first wake (WAKE_S), not after
    DIFFUSETV_OPENAI_WAIT_S, and the route then gives its stream lease back."""
    import time
    from types import SimpleNamespace

    from app.core import leases
    from app.routes.openai import wait_for_all

    claim_as_worker(redis_server.url)
    with make_client(tiny_store, redis_server, openai_wait_s=60) as c:
        queued = c.post("/generate", json={"seed": 1, "steps": 3}).json()["id"]
        redis = c.app.state.redis
        lease = leases.hold(redis, "addr:gone", 1, 30)
        asked = []

        async def is_disconnected():
            asked.append(time.monotonic())
            return True

        request = SimpleNamespace(app=c.app, is_disconnected=is_disconnected)
        started = time.monotonic()
        [record] = c.portal.call(wait_for_all, request, redis, [queued], "", lease)
        took = time.monotonic() - started
        lease.release()
    assert record["status"] == "queued" and len(asked) == 1
    assert took < 30  # one wake (1 s), far from the 60 s wait
