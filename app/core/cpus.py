"""How many CPUs this process may use: its affinity, capped by the cgroup's CPU quota (a container's `cpus:`).

`os.cpu_count()` counts the host's cores, so N workers in N containers on one host would each start as many
threads as the host has cores. The default of DIFFUSETV_TORCH_THREADS is this number instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # "max 100000" or "<quota> <period>" (microseconds)
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")  # -1 for none
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def quota_cpus(cpu_max: Path = CGROUP_V2_CPU_MAX, v1_quota: Path = CGROUP_V1_QUOTA, v1_period: Path = CGROUP_V1_PERIOD):
    """The cgroup's CPU quota in whole CPUs (rounded up), or None when there is none."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = int(v1_quota.read_text()), int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else max(1, math.ceil(quota_us / period_us))


def usable_cpus() -> int:
    """CPUs of this process's affinity mask, capped by the cgroup quota; at least 1."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = quota_cpus()
    return max(1, min(affinity, quota) if quota else affinity)
