"""Idempotent submits (IETF draft "The Idempotency-Key HTTP Header Field"): the same key and body give the same job,
another body is a 422, only admitted submissions are recorded, and 50 concurrent requests with one key make one job.

Real Redis; the API in process, and a real `diffusetv api` for the concurrent requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app.core import keys
from app.core.idempotency import fingerprint, parse_key
from app.core.settings import Settings
from app.main import create_app
from helpers import claim_as_worker, release_claim
from stack import Stack, free_port, stack_env

QUEUE = "rq:queue:" + keys.queue_name("tiny@1")


@pytest.fixture
def client(tiny_store, redis_server):
    claim_as_worker(redis_server.url)
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", heartbeat_s=300)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("abc", "abc"),
        ('"abc"', "abc"),
        ('"a b"', "a b"),  # a quoted key may hold spaces
        (r'"a\"b\\c"', 'a"b\\c'),
        ("  8e03978e-40d5-43e8-bc93-6894a57f9324 ", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("x" * 255, "x" * 255),
        ('"' + "x" * 255 + '"', "x" * 255),
    ],
)
def test_a_key_is_read_bare_or_quoted(value, key):
    assert parse_key(value) == key


@pytest.mark.parametrize("value", ["", '""', "a b", '"abc', 'abc"', '"a"b"', r'"a\b"', "x" * 256, "é", '"\x7f"'])
def test_a_malformed_key_is_refused(value):
    assert parse_key(value) is None


def test_the_fingerprint_is_the_route_and_the_canonical_body():
    assert fingerprint("/generate", {"seed": 1, "steps": 5}) == fingerprint("/generate", {"steps": 5, "seed": 1})
    assert fingerprint("/generate", {"seed": 1}) != fingerprint("/interpolate", {"seed": 1})
    assert fingerprint("/generate", {"seed": 1}) != fingerprint("/generate", {"seed": 2})


def test_the_same_key_and_body_give_the_same_job_and_another_body_a_422(client, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    first = client.post("/generate", json={"seed": 1, "steps": 5}, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    job_id = first.json()["id"]
    assert first.headers["Location"] == f"/jobs/{job_id}"
    # the same body, however it is spelled (defaults, order), and the key quoted: the same job, as it is now
    again = client.post("/generate", json={"steps": 5, "eta": 0.0, "seed": 1}, headers={"Idempotency-Key": '"k-1"'})
    assert again.status_code == 202 and again.json()["id"] == job_id
    assert again.headers["Location"] == f"/jobs/{job_id}"
    assert conn.llen(QUEUE) == 1 and len(list(conn.scan_iter(match=keys.job("*")))) == 1
    other = client.post("/generate", json={"seed": 2, "steps": 5}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422
    (error,) = other.json()["detail"]
    assert error["loc"] == ["header", "idempotency-key"]
    assert error["msg"] == "this Idempotency-Key was used with another request body"
    elsewhere = client.post(
        "/interpolate", json={"seed_a": 1, "seed_b": 2, "steps": 5}, headers={"Idempotency-Key": "k-1"}
    )
    assert elsewhere.status_code == 422  # the route is part of the fingerprint
    fresh = client.post("/generate", json={"seed": 2, "steps": 5}, headers={"Idempotency-Key": "k-2"})
    unkeyed = client.post("/generate", json={"seed": 1, "steps": 5})  # without a key: a job of its own
    assert fresh.status_code == unkeyed.status_code == 202
    assert len({job_id, fresh.json()["id"], unkeyed.json()["id"]}) == 3
    quota = conn.hgetall(next(conn.scan_iter(match=keys.quota("*", "*"))))
    assert quota[b"jobs"] == b"3"  # the replay was not charged


def test_a_retry_without_a_seed_gets_the_same_job_and_seed(client):
    headers = {"Idempotency-Key": "seedless"}
    first = client.post("/generate", json={"steps": 5}, headers=headers).json()
    again = client.post("/generate", json={"steps": 5}, headers=headers).json()
    assert again["id"] == first["id"] and again["params"]["seed"] == first["params"]["seed"]
    other = client.post("/generate", json={"steps": 5}).json()
    assert other["id"] != first["id"]


@pytest.mark.parametrize(
    ("route", "body"),
    [("/generate", {"seed": 1, "steps": 5}), ("/interpolate", {"seed_a": 1, "seed_b": 2, "steps": 5})],
)
def test_a_retry_gets_its_job_even_once_no_worker_serves_the_model(client, redis_server, route, body):
    """The key is looked up before the request's checks: a retry of an admitted request is never a 503."""
    headers = {"Idempotency-Key": f"served-then-not{route}"}
    first = client.post(route, json=body, headers=headers)
    assert first.status_code == 202
    release_claim(redis_server.url)  # the model's last worker stops
    again = client.post(route, json=body, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == f"/jobs/{first.json()['id']}"
    assert client.post(route, json=body).status_code == 503  # a new request is still refused
    other = client.post(route, json={**body, "steps": 6}, headers=headers)
    assert other.status_code == 503  # another body under the key is no replay: the checks come first


@pytest.mark.parametrize("value", ['"unclosed', "x" * 256, "two words"])
def test_a_malformed_header_is_a_422_naming_it_and_queues_nothing(client, redis_server, value):
    r = client.post("/generate", json={"seed": 1, "steps": 5}, headers={"Idempotency-Key": value})
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["header", "idempotency-key"]]
    assert redis_lib.Redis.from_url(redis_server.url).llen(QUEUE) == 0


def test_a_refused_submission_is_not_recorded(tiny_store, redis_server):
    claim_as_worker(redis_server.url)
    conn = redis_lib.Redis.from_url(redis_server.url)
    settings = Settings(
        redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", heartbeat_s=300, max_queue=1
    )
    with TestClient(create_app(settings)) as c:
        assert c.post("/generate", json={"seed": 1, "steps": 5}).status_code == 202
        headers = {"Idempotency-Key": "after-429"}
        assert c.post("/generate", json={"seed": 2, "steps": 5}, headers=headers).status_code == 429
        assert list(conn.scan_iter(match=keys.idempotency("*", "*"))) == []
        conn.delete(QUEUE)  # the queue has room again
        retried = c.post("/generate", json={"seed": 2, "steps": 5}, headers=headers)
        assert retried.status_code == 202  # the same key, now admitted: a new job
        assert c.post("/generate", json={"seed": 2, "steps": 5}, headers=headers).json()["id"] == retried.json()["id"]


def test_keys_are_per_api_key(tiny_store, redis_server):
    claim_as_worker(redis_server.url)
    a, b = "idem-key-a-" + "a" * 12, "idem-key-b-" + "b" * 12
    settings = Settings(
        redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", heartbeat_s=300, api_keys=f"{a},{b}"
    )
    with TestClient(create_app(settings)) as c:
        body = {"seed": 1, "steps": 5}
        as_a = c.post("/generate", json=body, headers={"Authorization": f"Bearer {a}", "Idempotency-Key": "k"})
        as_b = c.post("/generate", json=body, headers={"Authorization": f"Bearer {b}", "Idempotency-Key": "k"})
        assert as_a.status_code == as_b.status_code == 202 and as_a.json()["id"] != as_b.json()["id"]


def test_fifty_concurrent_requests_with_one_key_make_one_job(tiny_store, redis_server, tmp_path):
    claim_as_worker(redis_server.url, "tiny@1", "cpu/fp32/aaaa")
    s = Stack(stack_env(redis_server.url, tiny_store.root), free_port(), tmp_path)
    s.start_api()
    try:
        s.wait_healthy()

        def post(_: int) -> httpx.Response:
            headers = {"Idempotency-Key": "one-key"}
            return httpx.post(f"{s.base}/generate", json={"seed": 5, "steps": 5}, headers=headers, timeout=60)

        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(post, range(50)))
        other = httpx.post(
            f"{s.base}/generate", json={"seed": 6, "steps": 5}, headers={"Idempotency-Key": "one-key"}, timeout=60
        )
    finally:
        s.stop_all()
    assert [r.status_code for r in answers] == [202] * 50, [r.text for r in answers if r.status_code != 202]
    (job_id,) = {r.json()["id"] for r in answers}
    assert {r.headers["Location"] for r in answers} == {f"/jobs/{job_id}"}
    conn = redis_lib.Redis.from_url(redis_server.url)
    assert [i.decode() for i in conn.lrange(QUEUE, 0, -1)] == [job_id]
    assert [k.decode() for k in conn.scan_iter(match=keys.job("*"))] == [keys.job(job_id)]
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
