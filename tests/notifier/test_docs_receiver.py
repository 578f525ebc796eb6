"""docs/API.md's webhook receiver, run as written (on a free port): a delivery from the notifier verifies in it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

from webhooks import SECRET, Running, delivery, enqueue, settings, wait_until

from diffusetv.launch import free_port
from helpers import REPO
from notifier.main import Notifier

JOB = "9" * 32


def receiver_code() -> str:
    text = (REPO / "docs" / "API.md").read_text()
    section = text[text.index("## Webhooks") : text.index("## Models, health, metrics")]
    [code] = [c for c in re.findall(r"```python\n(.*?)```", section, re.S) if "HTTPServer(" in c]
    return code


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_docs_receiver_verifies_a_delivery(redis, redis_server, tmp_path):
    port = free_port()
    script = tmp_path / "receiver.py"
    script.write_text(receiver_code().replace('("127.0.0.1", 9000)', f'("127.0.0.1", {port})'))
    env = {**os.environ, "DIFFUSETV_WEBHOOK_SECRET": SECRET}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: listening(port) or proc.poll() is not None, what="the receiver's start")
        did = enqueue(redis, JOB, f"http://127.0.0.1:{port}/hook")
        with Running(Notifier(settings(redis_server.url), redis)):
            wait_until(lambda: delivery(redis, did).get("state") in ("delivered", "failed"), what="the delivery")
        assert delivery(redis, did)["state"] == "delivered"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert out.decode().splitlines() == [f"job.completed {JOB} succeeded"], err.decode()
