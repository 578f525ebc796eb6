"""Event streams end: a resume at or past the final event closes at once, stream ids are range-checked, and a
client holds a bounded number of streams and long polls. Real processes, read with a plain HTTP client."""

from __future__ import annotations

import time

import httpx
import pytest

from helpers import claim_as_worker
from stack import Stack, free_port, stack_env

pytestmark = pytest.mark.slow
CLOSE_WITHIN_S = 4.0  # keep-alives come every 2 s: a stream that stays open shows within this


def stream_lines(client, job_id: str, last_event_id: str | None, within_s: float = CLOSE_WITHIN_S):
    """(lines, closed): what the stream sent, and whether the server closed it within `within_s`."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    lines, started = [], time.monotonic()
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            lines.append(line)
            if time.monotonic() - started > within_s:
                return lines, False
    return lines, time.monotonic() - started <= within_s


def finished_job(client, seed: int) -> tuple[str, list[str]]:
    job = client.post("/generate", json={"seed": seed, "steps": 3}).json()
    assert client.get(f"/jobs/{job['id']}", params={"wait": 30}).json()["status"] == "succeeded"
    lines, closed = stream_lines(client, job["id"], None, within_s=30)
    assert closed
    return job["id"], [line.removeprefix("id: ") for line in lines if line.startswith("id: ")]


def test_a_resume_at_or_past_the_final_event_gets_it_and_closes_at_once(stack):
    with stack.client() as c:
        job_id, ids = finished_job(c, 611)
        for resume in (ids[-1], "99999999999999-0"):  # at the final event, and past it (an EventSource's retry)
            lines, closed = stream_lines(c, job_id, resume)
            assert closed, f"Last-Event-ID {resume}: still open after {CLOSE_WITHIN_S} s: {lines}"
            assert 'data: {"status":"succeeded"}' in lines and f"id: {ids[-1]}" in lines
        for _ in range(50):  # streams that end free their slot: many reconnects in a row all get served
            assert stream_lines(c, job_id, ids[-1])[1]


def test_an_out_of_range_last_event_id_replays_from_the_start(stack):
    with stack.client() as c:
        job_id, ids = finished_job(c, 612)
        for bad in ("18446744073709551616-0", "0-18446744073709551616", "99999999999999999999-1"):
            lines, closed = stream_lines(c, job_id, bad)
            assert closed and [line.removeprefix("id: ") for line in lines if line.startswith("id: ")] == ids
    assert "Traceback" not in stack.log("api")


def test_streams_and_long_polls_per_key_are_capped(tiny_store, redis_server, tmp_path):
    key_a, key_b = "streams-key-a-" + "a" * 10, "streams-key-b-" + "b" * 10
    env = {"DIFFUSETV_API_KEYS": f"{key_a},{key_b}", "DIFFUSETV_CLIENT_STREAMS": "3"}
    s = Stack(stack_env(redis_server.url, tiny_store.root, **env), free_port(), tmp_path)
    claim_as_worker(redis_server.url)  # a stand-in for a worker's claim, but no worker: the job stays queued
    s.start_api()  # and its streams stay open
    try:
        s.wait_healthy()
        a = httpx.Client(base_url=s.base, headers={"Authorization": f"Bearer {key_a}"}, timeout=30)
        b = httpx.Client(base_url=s.base, headers={"Authorization": f"Bearer {key_b}"}, timeout=30)
        with a, b:
            job_id = a.post("/generate", json={"seed": 5}).json()["id"]
            streams = [a.stream("GET", f"/jobs/{job_id}/events") for _ in range(3)]
            opened = [cm.__enter__() for cm in streams]
            assert [r.status_code for r in opened] == [200, 200, 200]
            fourth = a.get(f"/jobs/{job_id}/events")
            assert fourth.status_code == 429 and int(fourth.headers["Retry-After"]) > 0, fourth.text
            poll = a.get(f"/jobs/{job_id}", params={"wait": 5})
            assert poll.status_code == 429, poll.text  # long polls share the cap
            assert a.get(f"/jobs/{job_id}").status_code == 200  # a plain read is not a stream
            other = b.post("/generate", json={"seed": 6}).json()["id"]
            assert b.get(f"/jobs/{other}", params={"wait": 1}).status_code == 200  # another key has its own
            streams[0].__exit__(None, None, None)
            deadline = time.monotonic() + 10
            while (r := a.get(f"/jobs/{job_id}", params={"wait": 0.5})).status_code == 429:
                assert time.monotonic() < deadline, "a closed stream never gave its slot back"
            assert r.status_code == 200
            for cm in streams[1:]:
                cm.__exit__(None, None, None)
    finally:
        s.stop_all()
