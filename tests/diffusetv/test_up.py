"""`diffusetv up` (what `make run` starts): embedded Redis, a worker and the API; Ctrl-C leaves nothing."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from webhooks import wait_until

from app.core.png import read_parameters
from helpers import REPO, require_prerequisite, several_models
from stack import free_port

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    """Every process below pid, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def ended(job_url: str, within_s: float) -> str:
    """The job's status once it has ended, by long polls until `within_s` has passed (a cold stack loads its model
    first); its status then if it has not."""
    deadline = time.monotonic() + within_s
    while True:
        status = httpx.get(job_url, params={"wait": 30}, timeout=60).json()["status"]
        if status not in ("queued", "running") or time.monotonic() > deadline:
            return status


def start_up(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """`diffusetv up ARGS` as a terminal starts it, with its output on one text pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "diffusetv.cli", "up", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # a shell that runs the tests in the background ignores SIGINT in its children: give `up` a terminal's
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_the_readme_curl_line_and_ctrl_c_stops_everything(tiny_store, tmp_path):
    require_prerequisite("curl")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSETV_REDIS_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    if Path("/usr/bin/redis-server").exists():  # prove the bundled binary is used, not the system's
        shim = tmp_path / "bin"
        shim.mkdir()
        env["PATH"] = f"{Path(sys.executable).parent}:{shim}"
        for tool in ("curl", "sh", "bash"):
            (shim / tool).symlink_to(f"/usr/bin/{tool}")
    up = start_up(["--port", str(port)], env, tmp_path)
    lines = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            assert line, "up exited:\n" + "".join(lines)
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/" in output and "embedded" in output
        curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
        subprocess.run(["bash", "-c", curl], cwd=tmp_path, env=env, check=True, timeout=60)
        png = (tmp_path / "seed42.png").read_bytes()
        assert png.startswith(b"\x89PNG") and read_parameters(png)["seed"] == 42
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        children = descendants(up.pid)
        assert len(children) >= 3  # redis-server, worker, api
    finally:
        up.send_signal(signal.SIGINT)
        try:
            rest, _ = up.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            up.terminate()  # `up` stops its children on SIGTERM too: leave nothing behind a failure
            up.communicate(timeout=30)
            raise
    assert up.returncode == 0, rest
    wait_until(lambda: not any(alive(pid) for pid in children), 15, "every child's exit")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")


def test_makefile_run_starts_up_on_the_port():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run: .*\n\t\$\(BIN\)/diffusetv up --port \$\(PORT\)", makefile, re.M)


def test_readme_curl_line_is_the_one_up_prints():
    from diffusetv.up import curl_line

    assert curl_line("http://127.0.0.1:8000") in (REPO / "README.md").read_text()


def test_up_on_a_busy_port_exits_at_once_with_one_line_and_starts_nothing(tiny_store):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "diffusetv.cli", "up", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            env={k: v for k, v in os.environ.items() if k != "DIFFUSETV_REDIS_URL"},
        )
        took = time.monotonic() - started
    assert proc.returncode == 2 and took < 2, (proc.returncode, took)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines == [
        f"diffusetv up: error: port {port} is in use on 127.0.0.1: stop what listens there, or pick another port: "
        f"make run PORT={port + 1} (diffusetv up --port {port + 1})"
    ]
    assert "DiffuseTV is up" not in proc.stdout  # it never polled the other process on that port


def test_a_child_that_dies_is_reported_with_its_own_last_line(tiny_store, monkeypatch):
    monkeypatch.setenv("DIFFUSETV_MODEL", "no-such-model")
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSETV_REDIS_URL"}
    cmd = [sys.executable, "-m", "diffusetv.cli", "up", "--port", str(free_port())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("diffusetv up: error: the worker exited (status 2): diffusetv worker: error: ")
    assert "no-such-model" in last


def test_health_probes_leave_no_access_log_lines():
    import logging

    from diffusetv.commands import quiet_health_checks

    def line(path: str, status: int = 200) -> logging.LogRecord:
        args = ("127.0.0.1:5000", "GET", path, "1.1", status)
        return logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', args, None)

    assert not quiet_health_checks(line("/readyz", 503)) and not quiet_health_checks(line("/healthz"))
    assert not quiet_health_checks(line("/readyz?scope=api"))
    assert quiet_health_checks(line("/generate", 202)) and quiet_health_checks(line("/jobs/x/image.png"))


def test_the_embedded_redis_starts_quietly(tmp_path, capfd):
    from diffusetv.launch import stop
    from diffusetv.up import start_embedded_redis

    proc, url = start_embedded_redis(tmp_path)
    try:
        assert url.startswith("redis://127.0.0.1:")
    finally:
        stop([proc])
    out, err = capfd.readouterr()
    assert out == err == ""  # no banner, no overcommit warning on the terminal
    assert (tmp_path / "redis.log").exists()


def test_up_serves_every_model_given_with_model(tiny_store, tmp_path):
    """`up --model A --model B` replaces DIFFUSETV_MODELS: one worker holds both, and /readyz waits for both."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSETV_REDIS_URL"}
    env |= several_models(tiny_store)
    env["DIFFUSETV_MODELS"] = "lonely"  # overridden by --model
    up = start_up(["--port", str(port), "--model", "tiny", "--model", "toy@1"], env, REPO)
    lines = []
    try:
        while "Ctrl-C stops everything" not in (lines[-1] if lines else ""):
            line = up.stdout.readline()
            assert line, "up exited:\n" + "".join(lines)
            lines.append(line)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["detail"]["models"] == {"tiny@1": True, "toy@1": True}
        models = httpx.get(f"http://127.0.0.1:{port}/models").json()["models"]
        assert {m["ref"]: m["served"] for m in models} == {"lonely@1": False, "tiny@1": True, "toy@1": True}
    finally:
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=30)
    assert up.returncode == 0, rest


def test_up_starts_the_notifier_and_a_receiver_on_this_machine_gets_its_webhook(tiny_store, tmp_path):
    """`up` runs `diffusetv notifier` beside the worker and the API, allowing 127.0.0.0/8 for it: the docs' local
    receiver gets a signed job.completed. Ctrl-C stops the notifier with the rest."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from standardwebhooks import Webhook

    from app.core.signing import new_secret

    received: list[tuple[bytes, dict[str, str]]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    secret = new_secret()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DIFFUSETV_REDIS_URL", "DIFFUSETV_WEBHOOK_ALLOW_NETS")}
    env["DIFFUSETV_WEBHOOK_SECRET"] = secret
    up = start_up(["--port", str(port)], env, tmp_path)
    lines = []
    try:
        while "Ctrl-C stops everything" not in (lines[-1] if lines else ""):
            line = up.stdout.readline()
            assert line, "up exited:\n" + "".join(lines)
            lines.append(line)
        children = descendants(up.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in children if alive(pid)]
        assert [b"notifier"] in [c[-2:-1] for c in commands], commands
        hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        base = f"http://127.0.0.1:{port}"
        job = httpx.post(f"{base}/generate", json={"seed": 7, "steps": 5, "webhook": hook}).json()
        assert ended(f"{base}/jobs/{job['id']}", 300) == "succeeded"
        wait_until(lambda: received, 60, "the webhook")
        ((body, headers),) = received
        envelope = Webhook(secret).verify(body, headers)
        assert envelope["type"] == "job.completed" and envelope["data"]["id"] == job["id"]
        assert json.loads(body)["data"]["status"] == "succeeded"
        assert headers["webhook-id"] == f"msg_{job['id']}_1"
    finally:
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=30)
        receiver.shutdown()
    assert up.returncode == 0, rest
    wait_until(lambda: not any(alive(pid) for pid in children), 15, "every child's exit")
