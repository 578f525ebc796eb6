"""GET /jobs/{id}/deliveries: the job's webhook deliveries and their attempts, to the job's owner only."""

from __future__ import annotations

import json
import time

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app import auth
from app.core import hooks, keys
from app.core.jobs import JobStatus, deliver, transition
from app.core.settings import Settings
from app.core.submission import Submission
from app.main import create_app
from app.views import iso

KEY_A, KEY_B = "alpha-" + "a" * 26, "bravo-" + "b" * 26
URL = "https://receiver.example/hooks?token=abc"


@pytest.fixture
def setup(tiny_store, redis_server):
    settings = Settings(
        redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", api_keys=f"{KEY_A}, {KEY_B}"
    )
    with TestClient(create_app(settings)) as client:
        yield client, redis_lib.Redis.from_url(redis_server.url), settings


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_job(conn, settings, job_id: str, webhook: str | None = URL, events=("start", "completed")) -> str:
    """A queued job of KEY_A's, as the submit script writes it."""
    conn.hset(
        keys.job(job_id),
        mapping={
            "id": job_id,
            "kind": "generate",
            "status": JobStatus.QUEUED.value,
            "params": json.dumps({"seed": 1, "steps": 4}),
            "model": json.dumps({"name": "tiny", "version": 1}),
            "owner": auth.owner_id(KEY_A),
            "created_at": repr(time.time()),
            "attempts": "0",
            **Submission(webhook, events).record_fields(settings),
        },
    )
    return job_id


def attempt(conn, delivery_id: str, at: float, status_code=None, error=None, next_at=None) -> None:
    """An attempt as the notifier records it."""
    record = {"at": at, "status_code": status_code, "error": error, "next_at": next_at}
    conn.rpush(keys.delivery_attempts(delivery_id), json.dumps(record))


def test_the_owner_sees_every_delivery_and_attempt(setup):
    client, conn, settings = setup
    job_id = new_job(conn, settings, "a" * 32)
    transition(conn, job_id, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING})
    assert deliver(conn, job_id, 600, {"sha256": "0" * 64}, {})
    started, completed = f"msg_{job_id}_1", f"msg_{job_id}_2"
    attempt(conn, started, 1_700_000_000.25, status_code=200)
    conn.hset(keys.delivery(started), "state", "delivered")
    attempt(conn, completed, 1_700_000_001.5, status_code=503, next_at=1_700_000_031.5)
    attempt(conn, completed, 1_700_000_031.5, error="connection refused", next_at=1_700_000_091.5)
    conn.hset(keys.delivery(completed), "next_at", "1700000091.500000")  # the retry, as the notifier schedules it
    conn.zadd(keys.DELIVERIES_DUE, {completed: 1_700_000_091.5})
    created = {d: conn.hget(keys.delivery(d), "timestamp").decode() for d in (started, completed)}

    r = client.get(f"/jobs/{job_id}/deliveries", headers=bearer(KEY_A))
    assert r.status_code == 200
    assert r.json() == {
        "deliveries": [
            {
                "id": started,
                "type": "job.started",
                "state": "delivered",
                "url": URL,
                "created_at": iso(created[started]),
                "next_attempt_at": None,
                "attempts": [
                    {"at": "2023-11-14T22:13:20.250Z", "status_code": 200, "error": None, "next_attempt_at": None}
                ],
            },
            {
                "id": completed,
                "type": "job.completed",
                "state": "pending",
                "url": URL,
                "created_at": iso(created[completed]),
                "next_attempt_at": "2023-11-14T22:14:51.500Z",
                "attempts": [
                    {
                        "at": "2023-11-14T22:13:21.500Z",
                        "status_code": 503,
                        "error": None,
                        "next_attempt_at": "2023-11-14T22:13:51.500Z",
                    },
                    {
                        "at": "2023-11-14T22:13:51.500Z",
                        "status_code": None,
                        "error": "connection refused",
                        "next_attempt_at": "2023-11-14T22:14:51.500Z",
                    },
                ],
            },
        ]
    }
    conn.hset(keys.delivery(completed), "state", "failed")  # the last attempt failed: no next try
    after = client.get(f"/jobs/{job_id}/deliveries", headers=bearer(KEY_A)).json()["deliveries"][1]
    assert (after["state"], after["next_attempt_at"]) == ("failed", None)


def test_another_key_an_unknown_or_a_malformed_id_is_404(setup):
    client, conn, settings = setup
    job_id = new_job(conn, settings, "b" * 32)
    for path, key in (
        (f"/jobs/{job_id}/deliveries", KEY_B),
        (f"/jobs/{'c' * 32}/deliveries", KEY_A),
        ("/jobs/not-a-job/deliveries", KEY_A),
    ):
        r = client.get(path, headers=bearer(key))
        assert (r.status_code, r.json()) == (404, {"detail": "no such job"})
    assert client.get(f"/jobs/{job_id}/deliveries").status_code == 401


def test_a_job_without_webhook_has_none_and_an_expired_delivery_is_left_out(setup):
    client, conn, settings = setup
    plain = new_job(conn, settings, "d" * 32, webhook=None)
    transition(conn, plain, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING})
    assert client.get(f"/jobs/{plain}/deliveries", headers=bearer(KEY_A)).json() == {"deliveries": []}
    job_id = new_job(conn, settings, "e" * 32)
    transition(conn, job_id, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING})
    transition(conn, job_id, (JobStatus.RUNNING,), {"status": JobStatus.CANCELED})
    conn.delete(keys.delivery(f"msg_{job_id}_1"))  # past its TTL
    listed = client.get(f"/jobs/{job_id}/deliveries", headers=bearer(KEY_A)).json()["deliveries"]
    assert [(d["id"], d["type"], d["state"]) for d in listed] == [(f"msg_{job_id}_2", "job.completed", "pending")]


def test_a_progress_event_is_due_when_its_throttle_allows(setup):
    client, conn, settings = setup
    job_id = new_job(conn, settings, "f" * 32, events=("progress",))
    transition(conn, job_id, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING})
    pipe = conn.pipeline(transaction=False)
    hooks.progress(pipe, job_id)
    pipe.execute()
    due = conn.zscore(keys.DELIVERIES_DUE, hooks.progress_slot(job_id))
    [d] = client.get(f"/jobs/{job_id}/deliveries", headers=bearer(KEY_A)).json()["deliveries"]
    assert (d["id"], d["type"], d["state"], d["url"]) == (f"msg_{job_id}_1", "job.progress", "pending", URL)
    assert d["next_attempt_at"] == iso(repr(due)) and d["attempts"] == []


def test_a_progress_report_the_end_made_moot_shows_dropped(setup):
    client, conn, settings = setup
    job_id = new_job(conn, settings, "9" * 32, events=("progress", "completed"))
    transition(conn, job_id, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING})
    pipe = conn.pipeline(transaction=False)
    hooks.progress(pipe, job_id)
    pipe.execute()
    transition(conn, job_id, (JobStatus.RUNNING,), {"status": JobStatus.CANCELED})
    listed = client.get(f"/jobs/{job_id}/deliveries", headers=bearer(KEY_A)).json()["deliveries"]
    states = [(d["type"], d["state"], d["next_attempt_at"]) for d in listed]
    assert states == [("job.progress", "dropped", None), ("job.completed", "pending", states[1][2])]
    assert states[1][2] is not None


def test_the_schema_declares_the_route(setup):
    client, _, _ = setup
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/jobs/{job_id}/deliveries"]["get"]
    assert set(operation["responses"]) >= {"200", "404"}
    fields = schema["components"]["schemas"]["Delivery"]["properties"]
    assert set(fields) == {"id", "type", "state", "url", "created_at", "next_attempt_at", "attempts"}
