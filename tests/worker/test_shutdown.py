"""Stopping and checking a worker as its container does: PID 1 of its own PID namespace (`unshare -fp --mount-proc`).

As PID 1, a process ignores every signal it has no handler for, and `docker stop` (or the kubelet) sends
SIGTERM from outside the namespace. So a worker without a SIGTERM handler during its model load would wait
out the whole grace period; with RQ's handler, during a batch, it must finish the batch and then exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib

from app.core import keys
from helpers import REPO, require
from stack import Stack, free_port, stack_env


def namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    proc = subprocess.run(["unshare", "-fp", "--mount-proc", "sh", "-c", "echo $$"], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() == "1"


def start_as_pid1(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """`diffusetv worker ARGS` as PID 1 of a new PID namespace; the Popen is unshare, its only child the worker."""
    require(namespaces_work(), "unshare -fp --mount-proc does not work here (needs root or user namespaces)")
    return subprocess.Popen(
        ["unshare", "-fp", "--mount-proc", sys.executable, "-m", "diffusetv.cli", "worker", *args],
        env=env,
        cwd=REPO,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def namespace_init(unshare: subprocess.Popen, timeout: float = 10) -> int:
    """The host pid of the worker (PID 1 inside its namespace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
        if children:
            status = Path(f"/proc/{children[0]}/status").read_text()
            nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
            assert nspid[-1] == "1", f"not PID 1 in its namespace: {nspid}"
            return int(children[0])
        time.sleep(0.02)
    raise AssertionError("unshare started no child")


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"worker exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        time.sleep(0.01)
    raise AssertionError(f"no {text!r} in the log within {timeout} s:\n{log.read_text()[-3000:]}")


def worker_env(redis_url: str, store: Path, tmp_path: Path, model: str) -> dict[str, str]:
    return stack_env(redis_url, store, model, DIFFUSETV_HEALTH_FILE=str(tmp_path / "worker.health"))


@pytest.mark.slow
def test_sigterm_during_the_model_load_stops_pid1_within_5_s(redis_server, tmp_path):
    """emoji32's load with its kernel probe takes seconds; SIGTERM in the middle of it ends the worker at once."""
    from model_store.store import BUNDLED

    log = tmp_path / "worker.log"
    env = worker_env(redis_server.url, BUNDLED, tmp_path, "emoji32")
    proc = start_as_pid1(env, log)
    try:
        pid = namespace_init(proc)
        wait_for_line(log, "loading emoji32", proc, timeout=120)
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        rc = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    print(f"PID 1 stopped {took:.2f} s after SIGTERM during its model load")
    assert "loaded emoji32" not in text, f"the signal came after the load; the test proved nothing:\n{text[-2000:]}"
    assert took < 5, f"PID 1 took {took:.1f} s to stop during its model load"
    assert rc == 0, text[-2000:]
    assert "SIGTERM during start-up" in text


@pytest.mark.slow
def test_sigterm_during_a_batch_lets_pid1_finish_it_then_exit(tiny_store, redis_server, tmp_path):
    health_file = tmp_path / "worker.health"
    log = tmp_path / "worker.log"
    env = worker_env(redis_server.url, tiny_store.root, tmp_path, "tiny")
    stack = Stack(dict(env), free_port(), tmp_path)
    stack.start_api()
    proc = start_as_pid1(env, log)
    try:
        pid = namespace_init(proc)
        stack.wait_ready(timeout=120)
        check = subprocess.run(
            [sys.executable, "-m", "diffusetv.cli", "worker", "--check"], env=env, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr  # models loaded, main loop waiting for jobs
        assert json.loads(health_file.read_text())["state"] == "idle"
        with stack.client() as c:
            ids = [c.post("/generate", json={"seed": s, "steps": 1000}).json()["id"] for s in range(4)]
            deadline = time.monotonic() + 60
            while c.get(f"/jobs/{ids[0]}").json()["status"] != "running":
                assert time.monotonic() < deadline, "the batch never started"
                time.sleep(0.02)
            assert json.loads(health_file.read_text())["state"] == "busy"
            os.kill(pid, signal.SIGTERM)
            rc = proc.wait(timeout=120)
            jobs = [c.get(f"/jobs/{i}").json() for i in ids]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stack.stop_all()
    assert rc == 0, log.read_text()[-3000:]
    running = [j for j in jobs if j["batch_size"] is not None]
    assert running and all(j["status"] == "succeeded" for j in running), [(j["status"], j["error"]) for j in jobs]
    assert not health_file.exists(), "a stopped worker leaves no health file behind"
    conn = redis_lib.Redis.from_url(redis_server.url)
    assert not conn.keys(keys.worker("*")), "a stopped worker unregisters its heartbeat"


def test_the_health_check_fails_before_the_load_and_when_the_loop_is_late(tmp_path):
    from worker import health

    path = tmp_path / "worker.health"
    assert "not ready" in health.problem(path)
    health.promise(path, 60, "idle")
    assert health.problem(path) is None
    assert not health.overdue()
    assert "stuck" in health.problem(path, now=time.time() + 61)
    health.promise(path, -1, "busy")  # a deadline already past: the main loop is late
    assert health.overdue()
    assert "stuck: the main loop (busy)" in health.problem(path)
    env = {**os.environ, "DIFFUSETV_HEALTH_FILE": str(path)}
    check = subprocess.run([sys.executable, "-m", "diffusetv.cli", "worker", "--check"], env=env, capture_output=True)
    assert check.returncode == 1
    health.clear(path)
    check = subprocess.run([sys.executable, "-m", "diffusetv.cli", "worker", "--check"], env=env, capture_output=True)
    assert check.returncode == 1 and b"not ready" in check.stderr


def test_the_heartbeat_stops_when_the_main_loop_is_late(redis_server):
    from worker.heartbeat import Heartbeat

    conn = redis_lib.Redis.from_url(redis_server.url)
    alive = [True]
    beat = Heartbeat(conn, "w-late", {"m@1": "cpu/fp32/aaaa"}, period_s=1, alive=lambda: alive[0])
    beat.beat()
    beat.start()
    try:
        time.sleep(1.5)
        assert conn.exists(keys.worker("w-late"))
        alive[0] = False
        time.sleep(3.5)  # the key's TTL is 2 s: without beats it expires
        assert not conn.exists(keys.worker("w-late"))
    finally:
        beat.stop()


def test_a_stopping_worker_does_not_wait_out_its_listeners_sixty_seconds(redis_server):
    """RQ subscribes each worker to a channel of commands, read by a thread in 60 s waits; as the worker stops, RQ's
    unsubscribe waited for that thread. When the thread has already read the UNSUBSCRIBE's reply, it was 60 s."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    from worker.main import DiffuseWorker

    conn = redis_lib.Redis.from_url(redis_server.url)
    worker = DiffuseWorker([Queue("q", connection=conn, serializer=JSONSerializer)], connection=conn)
    worker.subscribe()
    deadline = time.monotonic() + 10
    while not worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.pubsub.unsubscribe()  # the thread reads the reply, and waits again: the stop below finds it waiting
    while worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 5
