"""Nothing runs from Redis: a pickled payload and a JSON job naming os.system, planted directly in the
queue of a real worker process, are refused without running anything, and the worker carries on."""

import os
import pickle
import time
import zlib

import pytest
import redis as redis_lib
from rq import Queue
from rq.exceptions import DeserializationError
from rq.job import Job
from rq.serializers import JSONSerializer

from app.core import keys

pytestmark = pytest.mark.slow


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickled_job(conn, queue: Queue, job_id: str, marker) -> None:
    """An RQ job whose payload is a pickle that would run a shell command if it were ever unpickled."""
    payload = pickle.dumps((Exploit(marker), None, [], {}))
    for data in (payload, zlib.compress(payload)):
        conn.hset(
            f"rq:job:{job_id}",
            mapping={
                "data": data,
                "status": "queued",
                "origin": queue.name,
                "created_at": "2026-01-01T00:00:00.000000Z",
                "description": "x",
            },
        )
    conn.rpush(queue.key, job_id)


def test_pickle_and_os_system_are_refused(stack, tmp_path):
    conn = redis_lib.Redis.from_url(stack.redis.url)
    queue = Queue(keys.queue_name("tiny@1"), connection=conn, serializer=JSONSerializer)
    pickled_marker, system_marker = tmp_path / "unpickled", tmp_path / "system-ran"
    plant_pickled_job(conn, queue, "f" * 32, pickled_marker)
    system_job = queue.enqueue_call("os.system", args=[f"touch {system_marker}"], job_id="e" * 32)
    callback_marker = tmp_path / "callback-ran"
    from rq import Callback

    hooked = queue.enqueue_call(
        "worker.jobs.generate",
        kwargs={"job_id": "d" * 32},
        job_id="d" * 32,
        on_failure=Callback("os.system"),
        on_success=Callback("os.system"),
    )
    with stack.client() as c:
        healthy = c.post("/generate", json={"seed": 9, "steps": 5}).json()
        assert c.get(f"/jobs/{healthy['id']}", params={"wait": 30}).json()["status"] == "succeeded"
    deadline = time.monotonic() + 10
    while conn.llen(queue.key) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert conn.llen(queue.key) == 0
    assert not pickled_marker.exists() and not system_marker.exists() and not callback_marker.exists()
    hooked.refresh()
    assert hooked.get_status() == "failed"
    system_job.refresh()
    assert system_job.get_status() == "failed"
    assert stack.procs["worker"].poll() is None, "the worker must survive hostile jobs"
    assert "refused" in stack.log("worker") and "callbacks or dependencies are not allowed" in stack.log("worker")
    with pytest.raises(DeserializationError):
        Job.fetch("f" * 32, connection=conn, serializer=JSONSerializer).func_name  # noqa: B018
