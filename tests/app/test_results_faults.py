"""Faults of the result store, injected into a whole stack (redis-server, `diffusetv worker`, `diffusetv api`, the tiny
model) whose results go to a moto S3 (signatures checked) or a directory: the store stopped (SIGSTOP: connections
are accepted, nothing is answered) while a worker delivers, or while a client reads; an object deleted by hand behind
a live record; a directory the worker cannot write. docs/RELIABILITY.md lists them with their bounds.

The S3 clients get short timeouts here, so that the bounds are short: one call takes at most CALL_S (connect + read
timeout, one attempt), and a worker retries a result for RETRY_S before its job fails."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import redis as redis_lib

from app.core import keys, objects
from helpers import cli_sample, final_job

pytestmark = pytest.mark.slow
RETRY_S = 4  # DIFFUSETV_RESULTS_RETRY_S
CALL_S = 1 + 1  # DIFFUSETV_S3_CONNECT_TIMEOUT_S + DIFFUSETV_S3_READ_TIMEOUT_S, one attempt (DIFFUSETV_S3_MAX_ATTEMPTS)
SLACK_S = 4  # a busy machine's delays: the worker's encode, the polls, the processes' scheduling
FAULT_ENV = {
    "DIFFUSETV_S3_CONNECT_TIMEOUT_S": "1",
    "DIFFUSETV_S3_READ_TIMEOUT_S": "1",
    "DIFFUSETV_S3_MAX_ATTEMPTS": "1",
    "DIFFUSETV_RESULTS_RETRY_S": str(RETRY_S),
}
SLOW = {"seed": 2024, "steps": 300, "eta": 0.2}  # long enough to stop the store while it runs
UNAVAILABLE = "result store unavailable"


@pytest.fixture(scope="module")
def slow_png(module_tiny_store, tmp_path_factory) -> bytes:
    """`diffusetv sample` of SLOW: the bytes its job must end with."""
    return cli_sample(module_tiny_store.root, tmp_path_factory.mktemp("cli") / "slow.png", SLOW)


def fault_stack(backend_name: str, store, tmp_path_factory):
    """A whole stack with its results in a fresh `backend_name` store (stack.ResultsBackend) and FAULT_ENV."""
    from stack import RedisServer, ResultsBackend, running_stack

    backend = ResultsBackend.open(backend_name, tmp_path_factory.mktemp(f"results-{backend_name}"), **FAULT_ENV)
    server = RedisServer().start()
    logs = tmp_path_factory.mktemp(f"stack-{backend_name}")
    try:
        with running_stack(server, store.root, logs, **{**backend.env, **FAULT_ENV}) as s:
            s.backend = backend
            yield s
    finally:
        server.cleanup()
        backend.close()


@pytest.fixture(scope="module")
def s3_stack(module_tiny_store, tmp_path_factory):
    pytest.importorskip("boto3")
    pytest.importorskip("moto")
    yield from fault_stack("s3", module_tiny_store, tmp_path_factory)


@pytest.fixture(scope="module")
def file_stack(module_tiny_store, tmp_path_factory):
    yield from fault_stack("file", module_tiny_store, tmp_path_factory)


def drop_cache(stack) -> None:
    conn = redis_lib.Redis.from_url(stack.redis.url)
    conn.delete(*conn.keys("diffusetv:cache:*") or ["-"])


def live_objects(stack) -> set[str]:
    """The names the registry holds live now."""
    conn = redis_lib.Redis.from_url(stack.redis.url)
    return {n.decode() for n in conn.zrange(keys.OBJECTS, 0, -1) if objects.state(conn, n.decode()) == "live"}


def until(c, job_id: str, ready, timeout: float = 60) -> dict:
    """The job polled (every 10 ms) until `ready(job)`."""
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/jobs/{job_id}").json()
        if ready(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.01)


def delivering(job: dict) -> bool:
    """Its last step is done (the worker now stores its PNG), or it has ended."""
    progress = job.get("progress") or {}
    return job["status"] not in ("queued", "running") or progress.get("step") == progress.get("steps") != 0


def running_then_paused(stack, c) -> tuple[dict, float]:
    """SLOW posted afresh, the store stopped once it runs; the job and the time (monotonic) its worker began to
    deliver it."""
    drop_cache(stack)
    job = c.post("/generate", json=SLOW).json()
    assert job["status"] == "queued", job
    job = until(c, job["id"], lambda j: j["status"] != "queued")
    stack.backend.s3.pause()
    assert job["status"] == "running" and job["progress"]["step"] < SLOW["steps"], job  # not delivered yet
    job = until(c, job["id"], delivering)
    return job, time.monotonic()


def test_a_store_down_while_the_worker_delivers_fails_the_job_within_the_retry_window(s3_stack, slow_png):
    conn = redis_lib.Redis.from_url(s3_stack.redis.url)
    name = objects.name(objects.PNG, hashlib.sha256(slow_png).hexdigest())
    live = live_objects(s3_stack)
    with s3_stack.client() as c:
        try:
            job, delivered_at = running_then_paused(s3_stack, c)
            assert job["status"] == "running", job
            job = until(c, job["id"], lambda j: j["status"] not in ("queued", "running"), timeout=30)
            took = time.monotonic() - delivered_at
            assert live_objects(s3_stack) == live and objects.state(conn, name) != "live"
        finally:
            s3_stack.backend.s3.resume()
        assert job["status"] == "failed" and UNAVAILABLE in job["error"], job
        assert job["image_url"] is None and c.get(f"/jobs/{job['id']}/image.png").status_code == 409
        assert RETRY_S - 0.5 <= took <= RETRY_S + CALL_S + SLACK_S, took  # it retried the window, then gave up
        again = final_job(c, c.post("/generate", json=SLOW).json()["id"], deadline_s=60)
        assert again["status"] == "succeeded", again  # nothing cached, nothing left half made
        assert c.get(again["image_url"]).content == slow_png
    assert objects.state(conn, name) == "live" and s3_stack.backend.read(s3_stack.redis.url, name) == slow_png


def test_a_store_back_within_the_retry_window_lets_the_job_succeed(s3_stack, slow_png):
    back_after = 2.0  # of RETRY_S
    with s3_stack.client() as c:
        try:
            job, delivered_at = running_then_paused(s3_stack, c)
            time.sleep(max(0.0, delivered_at + back_after - time.monotonic()))
            at_resume = c.get(f"/jobs/{job['id']}").json()
        finally:
            s3_stack.backend.s3.resume()
        assert at_resume["status"] == "running", at_resume  # still trying when the store came back
        job = until(c, job["id"], lambda j: j["status"] not in ("queued", "running"), timeout=30)
        took = time.monotonic() - delivered_at
        assert job["status"] == "succeeded", job
        assert back_after <= took <= RETRY_S + CALL_S + SLACK_S, took
        assert c.get(job["image_url"]).content == slow_png


def test_previews_that_a_stopped_store_does_not_take_stall_the_run_at_most_once(s3_stack):
    """A preview that the store does not take is skipped (worker.batch.PREVIEW_WINDOW_S): a store that does not
    answer may cost a run one call's timeouts, not one for every previewed step."""
    body = {"seed": 65, "steps": 6, "previews": True}  # a preview at each step
    with s3_stack.client() as c:
        s3_stack.backend.s3.pause()
        try:
            started = time.monotonic()
            job = c.post("/generate", json=body).json()
            job = until(c, job["id"], lambda j: j["status"] not in ("queued", "running"), timeout=60)
            took = time.monotonic() - started
        finally:
            s3_stack.backend.s3.resume()
        assert job["status"] == "failed" and UNAVAILABLE in job["error"], job
        assert took <= CALL_S + RETRY_S + CALL_S + SLACK_S, took  # one stalled preview, then the result's window


def test_a_store_down_while_a_client_reads_is_503_with_retry_after_then_200(s3_stack):
    with s3_stack.client() as c:
        job = final_job(c, c.post("/generate", json={"seed": 61, "steps": 8}).json()["id"], deadline_s=60)
        assert job["status"] == "succeeded", job
        url = job["image_url"]
        png = c.get(url)
        assert png.status_code == 200
        s3_stack.backend.s3.pause()
        try:
            started = time.monotonic()
            down = c.get(url)
            took = time.monotonic() - started
            etag = {"If-None-Match": png.headers["etag"]}
            not_modified = c.get(url, headers=etag).status_code  # answered from the record: no store call
            head = c.head(url)  # answered from the registry
        finally:
            s3_stack.backend.s3.resume()
        assert down.status_code == 503, (down.status_code, down.text)
        assert int(down.headers["retry-after"]) > 0 and "result store" in down.json()["detail"]
        assert took <= CALL_S + SLACK_S, took
        assert not_modified == 304
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(png.content)
        deadline = time.monotonic() + CALL_S + SLACK_S
        while (up := c.get(url)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)  # the store answers what it held back first
        assert up.status_code == 200 and up.content == png.content


def test_an_object_deleted_by_hand_behind_a_live_record_is_410_saying_so(s3_stack):
    s3 = s3_stack.backend.s3
    with s3_stack.client() as c:
        job = final_job(c, c.post("/generate", json={"seed": 62, "steps": 8}).json()["id"], deadline_s=60)
        assert job["status"] == "succeeded", job
        png = c.get(job["image_url"])
        assert png.status_code == 200
        sha256 = hashlib.sha256(png.content).hexdigest()
        key = f"{s3.prefix}/png/{sha256}.png"
        assert key in s3.objects()
        s3.client().delete_object(Bucket=s3.bucket, Key=key)  # a lifecycle rule, or a person
        assert key not in s3.objects()
        conn = redis_lib.Redis.from_url(s3_stack.redis.url)
        assert objects.state(conn, objects.name(objects.PNG, sha256)) == "live"  # the registry still says so
        gone = c.get(job["image_url"])
        assert gone.status_code == 410, (gone.status_code, gone.text)
        detail = gone.json()["detail"]
        assert "missing from the result store" in detail and job["id"] in detail, detail


@pytest.mark.parametrize("fault", ["read-only", "blocked"])
def test_a_directory_the_worker_cannot_write_fails_the_job(file_stack, fault):
    root = file_stack.backend.root
    png_dir = root / "png"
    body = {"seed": 63 if fault == "read-only" else 64, "steps": 8}
    if fault == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only (chmod 500) directory")
        changed = [p for p in (root, png_dir) if p.is_dir()]
        for path in changed:
            path.chmod(0o500)
        undo = [lambda p=p: p.chmod(0o755) for p in changed]
    else:  # a file where the worker makes its png/ directory: refused to root too
        aside = root / ".png-aside"
        if png_dir.exists():
            png_dir.rename(aside)
        png_dir.write_bytes(b"not a directory")
        undo = [png_dir.unlink, lambda: aside.exists() and aside.rename(png_dir)]
    with file_stack.client() as c:
        try:
            started = time.monotonic()
            job = final_job(c, c.post("/generate", json=body).json()["id"], deadline_s=60)
            took = time.monotonic() - started
        finally:
            for step in undo:
                step()
        assert job["status"] == "failed" and UNAVAILABLE in job["error"], job
        assert RETRY_S - 0.5 <= took <= RETRY_S + SLACK_S + 5, took
        drop_cache(file_stack)
        again = final_job(c, c.post("/generate", json=body).json()["id"], deadline_s=60)
        assert again["status"] == "succeeded", again
        png = c.get(again["image_url"]).content
    assert (png_dir / f"{hashlib.sha256(png).hexdigest()}.png").read_bytes() == png
