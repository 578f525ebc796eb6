"""The chaos run at CI size (bench/chaos.py): 3 workers, 2 APIs, the notifier and an S3 store (moto), a tiny model,
worker kills and one of each other fault; nothing lost, every byte kept. And the same run with the reaper off fails:
the check can fail."""

from __future__ import annotations

import sys

import pytest

from bench import chaos
from helpers import REPO

pytestmark = pytest.mark.slow
ALL_FAULTS = {"kill_worker", "kill_api", "kill_notifier", "pause_store", "kill_redis"}


def ci_config(**kw) -> chaos.Config:
    """45 s of load with a worker kill every 15 s (two, with the rest of the schedule between them)."""
    values = {"minutes": 0.75, "clients": 4, "workers": 3, "kill_every": 15.0, "seed": 7, "steps": 10,
              "results": "s3", "drain": 120.0, "webhook_drain": 60.0}  # fmt: skip
    return chaos.Config(**{**values, **kw})


def test_a_chaos_run_loses_no_job_and_keeps_every_byte():
    pytest.importorskip("moto")
    summary = chaos.run(ci_config(), "tests/bench/test_chaos.py")
    report = chaos.format_report(summary)
    assert summary["ok"], report
    assert {w["action"] for w in summary["windows"]} == ALL_FAULTS, report
    kills = [w for w in summary["windows"] if w["action"] == "kill_worker"]
    assert len(kills) >= 2 and any(w["runs"] for w in kills), report
    jobs, checked = summary["jobs"], summary["bytes"]
    assert jobs["accepted"] == jobs["held"] > 0 and jobs["succeeded"] > 0, report
    # every job re-run after a kill is among those whose bytes were compared with the reference
    assert checked["rerun_checked"] == jobs["rerun_after_a_kill"] and checked["checked"] > 0, report
    assert summary["webhooks"]["ended_jobs"] == jobs["accepted"], report
    assert summary["lost_answers"] > 0, report  # resends with the same Idempotency-Key were made, and checked


def test_the_chaos_run_fails_when_the_reaper_is_off():
    pytest.importorskip("moto")
    without_reaper = [sys.executable, str(REPO / "tests" / "api_without_reaper.py")]
    summary = chaos.run(ci_config(minutes=0.5, drain=20.0, webhook_drain=2.0), "reaper off", api_command=without_reaper)
    report = chaos.format_report(summary)
    assert not summary["ok"], report
    held = [run for w in summary["windows"] if w["action"] == "kill_worker" for run in w["runs"]]
    assert held and summary["failures"]["lost"] > 0, report
