"""What a loaded model takes in memory, measured, and the batch a memory budget allows.

At load the engine measures its model: the bytes of every part's weights, and the peak above them of one network
call of the most rows it makes (the probe's largest call size) at its largest image size, or of the image decode
where that is larger (a latent model's VAE). On CUDA the peak is the allocator's (`max_memory_allocated`); on the
CPU it is the growth of the process's resident high-water mark (VmHWM, reset through /proc/self/clear_refs), once
the C allocator's free memory is handed back (glibc's malloc_trim), so that what the call allocates shows as growth
rather than reusing freed pages unseen. Where neither can be read, the activations are 0 and `measured` says so.

The budget (DIFFUSETV_MEMORY_BUDGET_MB, else 90 % of the GPU's memory or 80 % of the machine's) caps two things:
the probe's reference call on CUDA (128 rows today), so the largest call fits beside the weights; and the samples
one batch may hold (MAX_BATCH_SIZE, capped), each of which keeps its latents, its step's temporaries, its prompt
embeddings and its decoded image while the batch runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

MB = 2**20
CPU_SHARE, GPU_SHARE = 0.8, 0.9  # of the machine's memory, of the GPU's: the default budget
STEP_COPIES = 8  # latent-sized tensors a sample keeps through a step: x, x0, eps, noise, guidance's temporaries


@dataclass(frozen=True)
class Memory:
    parameters: int  # bytes of every part's weights
    activations: int  # peak bytes above the weights of the largest network call (or the decode, where larger)
    rows: int  # that call's rows
    per_sample: int  # bytes a sample keeps while its batch runs
    budget: int  # bytes the model may take (DIFFUSETV_MEMORY_BUDGET_MB, else most of the device's)
    max_batch: int  # the most samples one batch may hold within the budget (1 at least)
    measured: bool = True  # whether the activations could be measured here

    def to_json(self) -> dict:
        return asdict(self)


def parameter_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the modules' parameters and buffers, each tensor once."""
    seen, total = set(), 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def budget_bytes(setting_mb: int | None, device: str) -> int:
    """DIFFUSETV_MEMORY_BUDGET_MB in bytes, else 90 % of the GPU's memory or 80 % of the machine's."""
    if setting_mb is not None:
        return setting_mb * MB
    if device == "cuda":
        return int(GPU_SHARE * torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return int(CPU_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _status_kb(field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def release_free_memory() -> None:
    """Hand the C allocator's free memory back to the system (glibc's malloc_trim), where there is one."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_bytes(call: Callable[[], object], device: str) -> int | None:
    """The peak memory above the current use while `call` runs; None where it cannot be measured."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - before)
    release_free_memory()  # else memory the allocator holds, freed but resident, is reused unseen
    try:  # Linux: writing 5 resets the resident high-water mark to the current resident size
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = _status_kb("VmRSS")
    call()
    after = _status_kb("VmHWM")
    if before is None or after is None:
        return None
    return max(0, after - before)


def max_batch(budget: int, parameters: int, activations: int, per_sample: int, cap: int) -> int:
    """The most samples a batch may hold: what the budget leaves beside the weights and the largest call, per sample;
    at most `cap` (MAX_BATCH_SIZE) and at least 1 (the model was loaded: one sample fits, or loading refused it)."""
    room = budget - parameters - activations
    return max(1, min(cap, room // max(1, per_sample)))


def reference_cap(budget: int, parameters: int, one_row: int | None, reference: int) -> int:
    """The probe's reference call, in rows, capped so that its activations fit the budget beside the weights."""
    if not one_row:
        return reference
    return max(1, min(reference, (budget - parameters) // one_row))
