"""Worker threads default to the CPUs this process may use: its affinity, capped by the cgroup's quota."""

import os
import subprocess
import sys

import pytest

from app.core.cpus import quota_cpus


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("cpu_max", "cpus"), [("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000", 2)])
def test_the_cgroup_v2_quota_in_whole_cpus(tmp_path, cpu_max, cpus):
    missing = tmp_path / "nope"
    assert quota_cpus(write(tmp_path, "cpu.max", cpu_max), missing, missing) == cpus


def test_the_cgroup_v1_quota_and_none(tmp_path):
    missing = tmp_path / "nope"
    quota, period = write(tmp_path, "q", "400000\n"), write(tmp_path, "p", "100000\n")
    assert quota_cpus(missing, quota, period) == 4
    assert quota_cpus(missing, write(tmp_path, "q1", "-1\n"), period) is None
    assert quota_cpus(missing, missing, missing) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_the_default_follows_the_affinity_not_the_host():
    code = (
        "import os; os.sched_setaffinity(0, {0}); os.environ.pop('DIFFUSETV_TORCH_THREADS', None)\n"
        "from app.core.settings import Settings; print(Settings().torch_threads)"
    )
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSETV_TORCH_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "1"
