"""Event streams end: a resume at or past the final event closes at once, stream ids are range-checked, and a
client holds a bounded number of streams and long polls. Real processes, read with a plain HTTP client."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest
import redis as redis_lib

from app.core import keys
from helpers import claim_as_worker, make_tiny_net
from stack import Stack, free_port, running_stack, stack_env

pytestmark = pytest.mark.slow
CLOSE_WITHIN_S = 4.0  # keep-alives come every 2 s: a stream that stays open shows within this
LEASE_S = 2  # DIFFUSETV_STREAM_LEASE_S of the stack that holds streams past it
HOLD_S = 12  # many such leases, and longer than the fixed 10 s lease that events alone never renewed


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


@pytest.fixture
def slow_store(tmp_path, monkeypatch):
    """A store whose `tiny@1` is 256 pixels square: a 1000-step job runs for much longer than the test holds its streams
    (HOLD_S), even on a fast CPU (an AVX-512 Xeon ran it in about 4 s at 64 pixels, 9 s at 128)."""
    from model_store import Store
    from model_store.weights import save_model

    store = Store(tmp_path / "models")
    save_model(store, "tiny", make_tiny_net(image_size=256), "offset_cosine", [0.5] * 3, [0.25] * 3, {"steps": 0})
    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(store.root))
    monkeypatch.setenv("DIFFUSETV_MODEL", "tiny")
    return store


class Reader(threading.Thread):
    """Reads one event stream to its end in the background, counting its progress events; `ended` once the
    server closed it cleanly."""

    def __init__(self, base: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.base, self.job_id = base, job_id
        self.status: int | None = None
        self.progress = 0
        self.ended = False

    def run(self) -> None:
        url = f"{self.base}/jobs/{self.job_id}/events"
        with contextlib.suppress(httpx.TransportError), httpx.stream("GET", url, timeout=60) as r:
            self.status = r.status_code  # (a transport error: a failed test stopped the API under it)
            for line in r.iter_lines():
                self.progress += line == "event: progress"
            self.ended = True


def refused(client, job_id: str) -> tuple[int, int]:
    """The statuses of a third event stream and of a long poll of the job (closed at once if they open)."""
    with client.stream("GET", f"/jobs/{job_id}/events") as third:
        stream_status = third.status_code
    return stream_status, client.get(f"/jobs/{job_id}", params={"wait": 0.5}).status_code


def test_streams_on_a_running_job_keep_their_slots_past_the_lease(slow_store, redis_server, tmp_path):
    env = {"DIFFUSETV_CLIENT_STREAMS": "2", "DIFFUSETV_STREAM_LEASE_S": str(LEASE_S)}
    with running_stack(redis_server, slow_store.root, tmp_path, **env) as s, s.client() as c:
        job_id = c.post("/generate", json={"seed": 7, "steps": 1000}).json()["id"]
        readers = [Reader(s.base, job_id) for _ in range(2)]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 30
        while not all(reader.progress for reader in readers):  # both streams are open on the running job
            assert time.monotonic() < deadline, "the job never sent progress"
            time.sleep(0.1)
        assert [reader.status for reader in readers] == [200, 200]
        opened, seen, before = time.monotonic(), [], [reader.progress for reader in readers]
        while (held := time.monotonic() - opened) < HOLD_S:
            seen.append((round(held, 1), *refused(c, job_id)))
            assert seen[-1][1:] == (429, 429), f"the two streams no longer hold the cap after {held:.1f} s: {seen}"
            time.sleep(0.5)
        assert c.get(f"/jobs/{job_id}").json()["status"] == "running"
        read = [reader.progress for reader in readers]
        emitted = progress_times(redis_server.url, job_id)  # after the readers' counts: it holds at least theirs
        c.delete(f"/jobs/{job_id}")
        for reader in readers:
            reader.join(30)
    # the streams carried events all along, not keep-alives only: the job went on making progress events during the
    # hold, and each stream had read every one of them written more than a lease before the end (however fast the
    # machine steps: the bound counts events, not seconds)
    ended_ms = emitted[-1] if emitted else 0
    assert sum(start < n for n, start in zip(read, before, strict=True)) == 2, (read, before)
    assert len([t for t in emitted if t > ended_ms - HOLD_S * 1000]) >= 2, emitted
    settled = len([t for t in emitted if t <= ended_ms - LEASE_S * 1000])
    assert min(read) >= settled, (read, settled, len(emitted))


def progress_times(redis_url: str, job_id: str) -> list[int]:
    """The times (ms, from the stream ids) of a job's progress events, oldest first."""
    entries = redis_lib.Redis.from_url(redis_url).xrange(keys.events(job_id))
    return [int(entry_id.split(b"-")[0]) for entry_id, fields in entries if fields.get(b"event") == b"progress"]


@pytest.fixture
def short_leases(tiny_store, redis_server, tmp_path):
    """`diffusetv api` without a worker (jobs stay queued), one stream or long poll per client, 1 s leases."""
    env = {"DIFFUSETV_CLIENT_STREAMS": "1", "DIFFUSETV_STREAM_LEASE_S": "1"}
    s = Stack(stack_env(redis_server.url, tiny_store.root, **env), free_port(), tmp_path)
    claim_as_worker(redis_server.url)
    s.start_api()
    try:
        s.wait_healthy()
        yield s
    finally:
        s.stop_all()


def long_poll(client, job_id: str, wait: float) -> tuple[threading.Thread, list[httpx.Response]]:
    """A long poll of the job in the background: its thread, and a list that gets its response."""
    polled: list[httpx.Response] = []
    poll = threading.Thread(target=lambda: polled.append(client.get(f"/jobs/{job_id}", params={"wait": wait})))
    poll.start()
    return poll, polled


def test_a_long_poll_keeps_its_slot_past_the_lease(short_leases):
    with short_leases.client() as c, short_leases.client() as second:
        job_id = c.post("/generate", json={"seed": 8}).json()["id"]
        started = time.monotonic()
        poll, polled = long_poll(c, job_id, 5)
        time.sleep(0.5)
        while poll.is_alive() and (waited := time.monotonic() - started) < 4.5:
            assert second.get(f"/jobs/{job_id}/events").status_code == 429, f"the slot was free after {waited:.1f} s"
            time.sleep(0.5)
        poll.join(10)
    assert polled[0].status_code == 200 and polled[0].json()["status"] == "queued"
    assert time.monotonic() - started >= 5  # the whole wait, five leases long


def test_a_stream_that_lost_its_lease_takes_it_again_or_closes_at_the_cap(short_leases, redis_server):
    held = keys.leases("addr:loopback")  # no keys: the loopback range is one client (app.clients)
    conn = redis_lib.Redis.from_url(redis_server.url)
    with short_leases.client() as c:
        job_id = c.post("/generate", json={"seed": 9}).json()["id"]
        reader = Reader(short_leases.base, job_id)
        reader.start()
        deadline = time.monotonic() + 10
        while not (lease := conn.zrange(held, 0, -1)):
            assert time.monotonic() < deadline, "the stream took no lease"
            time.sleep(0.05)
        conn.delete(held)  # lost, as after a stall longer than the lease, with room under the cap
        time.sleep(1.0)
        assert reader.is_alive() and conn.zrange(held, 0, -1) == lease  # taken again, with the same id
        conn.delete(held)
        conn.zadd(held, {"another": time.time() + 60})  # lost, and another stream took the slot
        reader.join(2.0)
        assert reader.ended and reader.status == 200  # closed cleanly: the client resumes with Last-Event-ID
        assert conn.zrange(held, 0, -1) == [b"another"]

        conn.delete(held)
        started = time.monotonic()
        poll, polled = long_poll(c, job_id, 10)
        time.sleep(0.5)
        conn.delete(held)
        conn.zadd(held, {"another": time.time() + 60})  # the long poll's slot, lost and taken while it waits
        poll.join(10)
    assert polled[0].status_code == 200 and polled[0].json()["status"] == "queued"
    assert time.monotonic() - started < 3  # answered early, with the job as it is
