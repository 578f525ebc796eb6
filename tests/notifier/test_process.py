"""`diffusetv notifier`, `diffusetv webhook-secret` and `diffusetv owner` as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import standardwebhooks
from webhooks import SECRET, Answer, Receiver, attempts, delivery, enqueue, wait_until

from app.auth import owner_id
from app.core.signing import secret_key
from helpers import REPO, run_cli
from stack import cli

JOB = "e" * 32


def notifier_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSETV_")}
    return {
        **env,
        "DIFFUSETV_REDIS_URL": redis_url,
        "DIFFUSETV_WEBHOOK_SECRET": SECRET,
        "DIFFUSETV_WEBHOOK_ALLOW_NETS": "127.0.0.1/32",
        "DIFFUSETV_WEBHOOK_BASE_DELAY_S": "0.2",
        "DIFFUSETV_WEBHOOK_TIMEOUT_S": "2",
        **extra,
    }


def start(env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen(cli(["diffusetv", "notifier"]), env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def test_webhook_secret_prints_a_new_secret():
    first, second = (run_cli("webhook-secret").stdout.strip() for _ in range(2))
    assert first.startswith("whsec_") and len(secret_key(first)) == 32
    assert first != second


def test_owner_reads_the_key_from_stdin():
    key = "k" * 24
    proc = subprocess.run(
        [sys.executable, "-m", "diffusetv.cli", "owner"], input=key + "\n", capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0 and proc.stdout.strip() == owner_id(key)
    empty = subprocess.run([sys.executable, "-m", "diffusetv.cli", "owner"], input="", capture_output=True, text=True)
    assert empty.returncode == 2 and "stdin" in empty.stderr


@pytest.mark.slow
def test_a_notifier_killed_mid_retry_loses_nothing(redis, redis_server, tmp_path):
    """503 while the first notifier runs; it is killed (SIGKILL) with the retry waiting; a second notifier sends it,
    with the same webhook-id; SIGTERM then stops it cleanly."""
    env = notifier_env(redis_server.url, DIFFUSETV_WEBHOOK_BASE_DELAY_S="1")
    log_path = tmp_path / "notifier.log"
    with Receiver([Answer(503, {"retry-after": "3"}), 200]) as receiver, log_path.open("ab") as log:
        did = enqueue(redis, JOB, receiver.url())
        first = start(env, log)
        try:
            [failed] = receiver.wait_for(1)
            wait_until(lambda: attempts(redis, did), what="the first attempt's record")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            first.kill()
        assert delivery(redis, did)["state"] == "pending" and len(receiver.requests) == 1
        second = start(env, log)
        try:
            wait_until(lambda: delivery(redis, did).get("state") == "delivered", what="the delivery")
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            second.kill()
    delivered = receiver.requests[-1]
    assert len(receiver.requests) == 2
    assert delivered.headers["webhook-id"] == failed.headers["webhook-id"] == did
    standardwebhooks.Webhook(SECRET).verify(delivered.body, delivered.headers)
    assert [a["status_code"] for a in attempts(redis, did)] == [503, 200]
    text = log_path.read_text()
    assert f"{did} job.completed attempt 2/8: 200 -> delivered" in text
    assert "notifier stopped" in text


@pytest.mark.slow
def test_a_notifier_killed_with_its_attempt_in_flight_is_taken_over_once_the_lease_lapses(
    redis, redis_server, tmp_path
):
    """The receiver holds the first request open; the notifier is killed (SIGKILL) while it waits for the answer, so
    nothing of that attempt is recorded. A second notifier takes the delivery once the dead one's lease has run out
    (host wait + 2 x WEBHOOK_TIMEOUT_S + WEBHOOK_LEASE_MARGIN_S, shortened here) and sends the same webhook-id."""
    held, release = threading.Event(), threading.Event()
    seen: list[dict[str, str]] = []

    class HoldFirst(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            if len(seen) == 1:
                held.set()
                release.wait(60)
                return
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), HoldFirst)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    env = notifier_env(redis_server.url, DIFFUSETV_WEBHOOK_TIMEOUT_S="3", DIFFUSETV_WEBHOOK_LEASE_MARGIN_S="0")
    try:
        did = enqueue(redis, JOB, url)
        with (tmp_path / "notifier.log").open("ab") as log:
            first = start(env, log)
            try:
                assert held.wait(60), "the first attempt never arrived"
                first.send_signal(signal.SIGKILL)
                assert first.wait(10) == -signal.SIGKILL
            finally:
                first.kill()
            assert attempts(redis, did) == [] and delivery(redis, did)["claim"]  # in flight: nothing recorded
            second = start(env, log)
            try:
                wait_until(lambda: delivery(redis, did).get("state") == "delivered", timeout=120, what="the delivery")
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(30)
                second.kill()
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert [h["webhook-id"] for h in seen] == [did, did]
    [attempt] = attempts(redis, did)  # the killed attempt left no record; the second one did
    assert attempt["status_code"] == 200
    assert delivery(redis, did)["claims"] == "2"


def test_sigterm_lets_the_attempt_in_flight_end_then_exits(redis, redis_server, tmp_path):
    """The receiver holds the request past the attempt's deadline: on SIGTERM the notifier stops claiming, the attempt
    ends at its deadline and is recorded (a retry, due later for any notifier), and the process exits 0."""
    release = threading.Event()

    class Holding(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            release.wait(60)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Holding)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        did = enqueue(redis, JOB, url)
        with (tmp_path / "notifier.log").open("ab") as log:
            proc = start(notifier_env(redis_server.url, DIFFUSETV_WEBHOOK_BASE_DELAY_S="60"), log)
            try:
                wait_until(lambda: delivery(redis, did).get("claim"), what="the claim")
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0
            finally:
                proc.kill()
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    [attempt] = attempts(redis, did)
    assert attempt["error"] == "timed out" and attempt["next_at"] is not None
    assert delivery(redis, did)["state"] == "pending" and "claim" not in delivery(redis, did)
