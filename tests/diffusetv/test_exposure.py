"""`diffusetv api` and `diffusetv up` never serve an open API to the network: a non-loopback bind needs keys, or
an explicit statement that an authenticating proxy is in front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from helpers import REPO, claim_as_worker
from stack import Stack, free_port, stack_env

pytestmark = pytest.mark.slow
KEY = "exposure-test-key-" + "k" * 16


@pytest.mark.parametrize("command", [["api"], ["up", "--host", "0.0.0.0"]])
def test_an_open_api_on_a_non_loopback_address_is_refused_at_start(tiny_store, redis_server, command):
    env = stack_env(redis_server.url, tiny_store.root, DIFFUSETV_HOST="0.0.0.0", DIFFUSETV_PORT=str(free_port()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffusetv.cli", *command],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()  # `up` stops what it started on SIGTERM
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"`diffusetv {' '.join(command)}` started an open API on 0.0.0.0:\n{err[-2000:]}")
    assert proc.returncode != 0, out[-2000:] + err[-2000:]
    assert "0.0.0.0" in err and "DIFFUSETV_API_KEYS" in err and "DIFFUSETV_AUTH_PROXY" in err


@pytest.mark.parametrize("how", ["keys", "keys file", "auth proxy"])
def test_a_non_loopback_bind_starts_with_keys_or_behind_an_authenticating_proxy(
    tiny_store, redis_server, tmp_path, how
):
    extra = {"keys": {"DIFFUSETV_API_KEYS": KEY}, "auth proxy": {"DIFFUSETV_AUTH_PROXY": "true"}}.get(how, {})
    if how == "keys file":
        (tmp_path / "keys").write_text(f"# the deployment's keys\n{KEY}\n")
        extra = {"DIFFUSETV_API_KEYS_FILE": str(tmp_path / "keys")}
    s = Stack(stack_env(redis_server.url, tiny_store.root, DIFFUSETV_HOST="0.0.0.0", **extra), free_port(), tmp_path)
    claim_as_worker(redis_server.url)  # a stand-in for a worker's claim: the job is accepted and stays queued
    s.start_api()
    try:
        s.wait_healthy()
        r = httpx.post(f"{s.base}/generate", json={"seed": 1})
        assert r.status_code == (202 if how == "auth proxy" else 401), r.text
        if how != "auth proxy":
            ok = httpx.post(f"{s.base}/generate", json={"seed": 1}, headers={"Authorization": f"Bearer {KEY}"})
            assert ok.status_code == 202, ok.text
    finally:
        s.stop_all()
