"""The allocator setting: network calls stop page-faulting their activations (counted by the kernel)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from helpers import REPO

# One process per measurement: the setting is process-wide and cannot be undone.
FAULTS_PER_CALL = """
import resource, sys, torch
from diffusion.unet import UNet, UNetConfig
from worker.allocator import keep_freed_memory
torch.set_num_threads(1)
kept = keep_freed_memory() if sys.argv[1] == "kept" else None
net = UNet(UNetConfig(32)).eval()
x, v = torch.randn(8, 3, 32, 32), torch.full((8, 1, 1, 1), 0.5)
with torch.inference_mode():
    for _ in range(3):
        net(x, v)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        net(x, v)
    print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_call(mode: str) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_CALL, mode], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_network_calls_reuse_their_pages_once_freed_memory_is_kept():
    _, default = faults_per_call("default")
    kept, with_setting = faults_per_call("kept")
    print(f"minor page faults per 8-row call of the default U-Net: {default:.0f} by default, {with_setting:.0f} kept")
    assert kept == "True"
    assert default > 500  # glibc's defaults: each call faults its activations in again (MBs of pages)
    assert with_setting < default / 20
