"""Smoke test of the load test (bench/load.py): a short run against a real local stack loses no job."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 300  # 12 s of load, the stack's start-up and the drain, on a loaded machine


def test_a_short_mixed_load_loses_no_job_and_answers_only_documented_statuses(tmp_path):
    out = tmp_path / "load.json"
    command = [sys.executable, "-m", "bench.load", "--clients", "4", "--minutes", "0.2", "--steps", "5"]
    proc = subprocess.run(
        [*command, "--threads", "1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(out.read_text())
    jobs = summary["jobs"]
    assert jobs["lost"] == 0 and jobs["accepted"] == jobs["final"] > 0, jobs
    assert summary["undocumented"] == {} and summary["bad_input_accepted"] == 0
    assert set(summary["actions"]) == {"fresh", "sse", "join", "repeat", "cancel", "bad"}, summary["actions"]
    assert summary["unavailable_503"] == 0 and summary["queue"]["max_seen"] <= summary["queue"]["max_queue"]
    assert summary["worker_rss"]["start_kib"] and summary["worker_rss"]["end_kib"]
    assert "LOST = 0" in proc.stdout
