"""Webhook test helpers (importable as `webhooks`): deliveries enqueued by the hook's own Lua (app.core.hooks),
settings that let webhooks reach 127.0.0.1, a notifier run in a thread, and a receiver: a threaded HTTP server on a
loopback address that answers from a script of statuses and records every request it gets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from app.core import hooks, keys
from app.core.settings import Settings
from app.core.signing import new_secret
from helpers import wait_for

SECRET = new_secret()
_HOOK = keys.LUA_KEYS + hooks.LUA_HOOK + "hook(ARGV[1], ARGV[2])\n"
_PROGRESS = keys.LUA_KEYS + hooks.LUA_HOOK + "progress_hook(ARGV[1])\n"


def settings(redis_url: str, **overrides) -> Settings:
    values = {
        "redis_url": redis_url,
        "webhook_secret": SECRET,
        "webhook_allow_nets": "127.0.0.1/32",
        "webhook_base_delay_s": 0.2,
        "webhook_timeout_s": 3,
        "webhook_attempts": 4,
        "webhook_jitter_seed": 7,
        **overrides,
    }
    return Settings(**values)


def job_record(job_id: str, status: str, url: str, events: str = "completed", owner: str = "") -> dict[str, str]:
    """A generation job's hash, as the submit script writes it, with a webhook subscription."""
    return {
        "id": job_id,
        "kind": "generate",
        "status": status,
        "params": json.dumps({"seed": 7, "steps": 5, "eta": 0.0, "previews": False, "sampler": "ddim"}),
        "model": json.dumps({"name": "tiny", "version": 1, "digest": "d" * 64}),
        "owner": owner,
        "created_at": repr(time.time()),
        "finished_at": repr(time.time()) if status in ("succeeded", "failed", "canceled") else "",
        "attempts": "0",
        "webhook": url,
        "webhook_events": events,
        "webhook_ttl": "3600",
    }


def enqueue(redis, job_id: str, url: str, status: str = "succeeded", **record) -> str | None:
    """Write a job with a webhook and run the status hook as a status-change script does; the id of the job's last
    delivery (None: it has none)."""
    redis.hset(keys.job(job_id), mapping=job_record(job_id, status, url, **record))
    redis.eval(_HOOK, 0, job_id, status)
    last = redis.lrange(keys.job_deliveries(job_id), -1, -1)
    return last[0].decode() if last else None


def report_progress(redis, job_id: str, step: int, steps: int) -> None:
    redis.hset(keys.job(job_id), "progress", json.dumps({"step": step, "steps": steps}))
    redis.eval(_PROGRESS, 0, job_id)


def delivery(redis, delivery_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis.hgetall(keys.delivery(delivery_id)).items()}


def attempts(redis, delivery_id: str) -> list[dict]:
    return [json.loads(a) for a in redis.lrange(keys.delivery_attempts(delivery_id), 0, -1)]


def wait_until(predicate, timeout: float = 60, what: str = "the condition"):
    return wait_for(predicate, timeout, what)


class Running:
    """A Notifier's loop in a thread of its own, stopped on exit."""

    def __init__(self, notifier) -> None:
        self.notifier = notifier
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.notifier.run(self.stop))

    def __enter__(self):
        self.thread.start()
        return self.notifier

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        assert not self.thread.is_alive(), "the notifier did not stop"


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.time() when it arrived


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


class Receiver:
    """Answers request n with `answers[n]` (the last one repeats); `requests` holds what came, in order."""

    def __init__(self, answers: list[Answer | int] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.answers = [a if isinstance(a, Answer) else Answer(a) for a in (answers or [200])]
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                    answer = receiver.answers[min(n, len(receiver.answers) - 1)]
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"http://{host or self.server.server_address[0]}:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        """Until `count` requests have come (AssertionError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.requests)} of {count} requests arrived within {timeout} s")


class Listener:
    """A bare TCP listener that counts the connections made to it (and answers none)."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.setblocking(False)
        while True:  # connections the kernel completed but the thread had not yet accepted
            try:
                self.sock.accept()[0].close()
            except OSError:
                break
            self.connections += 1
        self.sock.close()
