"""What a loaded model takes in memory, measured, and the batch a memory budget allows (filled in below)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Memory:
    parameters: int  # bytes of every part's weights
    activations: int  # peak bytes above the weights of the largest network call (or the decode, where larger)
    rows: int  # that call's rows
    budget: int  # bytes the model may take (DIFFUSETV_MEMORY_BUDGET_MB, else most of the device's)
    max_batch: int  # the most samples one batch may hold within the budget
