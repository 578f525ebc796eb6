"""A real local stack for the service benchmark: redis-server, `diffusetv worker` and `diffusetv api`.

Everything binds to 127.0.0.1 on free ports; every process gets its own process group, and
`LocalStack` stops them all when its `with` block ends, whatever happened inside.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from diffusetv.launch import free_port, redis_server_binary, start_redis, stop, wait_http

ROOT = Path(__file__).resolve().parents[1]  # where `python -m diffusetv.cli` resolves
READY_TIMEOUT_S = 180


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
        with (self.workdir / "redis.log").open("ab") as log:
            redis, redis_port = start_redis(
                redis_server_binary(prefer_path=True),
                self.workdir,
                *("--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as every process of the stack
            )
        self.procs.append(redis)
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
