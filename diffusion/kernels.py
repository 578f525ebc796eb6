"""Call shapes whose kernels give every row the same bits: found by probing, not assumed.

A seed's image must not depend on how many others share its batch. The network's fast kernels
(oneDNN on the CPU, cuDNN on CUDA) choose their algorithm, and so their order of summation, from the
call's shape and the thread count; the row's values never enter that choice. So a call of `n` rows
gives the same bits for a row as the reference call of `R` rows exactly when that shape's kernels
agree with the reference's, and one probe per candidate shape, on any input, settles it.

Which sizes agree depends on the kernels and the thread count (`python -m bench.invariance`, quoted in
docs/DETERMINISM.md): with oneDNN at 2 threads every call of 2..16 rows agrees with the 16-row reference
and a 1-row call does not; at 3 threads a thread boundary cuts some images, so fewer sizes agree and
the reference shrinks to 15 rows; at 1 thread only the reference agrees. The probe keeps the agreeing
sizes; the engine pads a short call up to the smallest of them (zero rows, dropped afterwards), and the
fingerprint of the reference output names the arithmetic, so that workers whose kernels disagree never
serve one model together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# network(x, noise_rate, *conditions) for one call; the probe feeds it whole calls. Every input has one row per image.
Network = Callable[..., torch.Tensor]
Inputs = tuple[torch.Tensor, ...]
PROBE_SEED = 20261128
# A network whose one-row call costs more FLOPs than this calls one row at a time on the CPU: one fixed
# call size is row-independent by construction, and a lone job pays for no padding. (ddpm-cifar10-32:
# 12.1 GFLOP a row, where one row already keeps the cores busy; the default 32-px U-Net: 0.57 GFLOP.)
LARGE_ROW_FLOPS = 2e9


class KernelsError(RuntimeError):
    """The network gives different bits for the same input: no call shape is safe."""


@dataclass(frozen=True)
class CallShapes:
    """The numbers of rows a network call may have, ascending; the largest is the reference call."""

    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.sizes or list(self.sizes) != sorted(set(self.sizes)) or self.sizes[0] < 1:
            raise ValueError(f"call sizes must be distinct positive integers in ascending order, got {self.sizes}")

    @property
    def largest(self) -> int:
        return self.sizes[-1]

    def plan(self, rows: int) -> list[int]:
        """The size of each call for `rows` rows: full reference calls, then the rest padded up to an allowed size."""
        full, rest = divmod(rows, self.largest)
        calls = [self.largest] * full
        if rest:
            calls.append(next(s for s in self.sizes if s >= rest))
        return calls


@dataclass(frozen=True)
class Probe:
    shapes: CallShapes
    fingerprint: str  # sha256 of the probe's first row as every agreeing call computes it
    rejected: tuple[int, ...]  # sizes tried whose rows differ from the reference, or depend on their position


def row_flops(network: Network, shape: Sequence[int], device: str | torch.device = "cpu") -> int:
    """The FLOPs of one one-row call (FlopCounterMode: convolutions and matrix products, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, rates = probe_inputs(1, shape, device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(x, rates)
    return int(counter.get_total_flops())


def reference_rows(flops_per_row: int, device_type: str, default: int) -> int:
    """The reference call of the probe: one row for a large network on the CPU (LARGE_ROW_FLOPS), else `default`."""
    return 1 if device_type == "cpu" and flops_per_row > LARGE_ROW_FLOPS else default


def probe_inputs(rows: int, shape: Sequence[int], device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed pseudo-random images and noise rates in (0.1, 0.95), the same on every machine."""
    gen = torch.Generator(device="cpu").manual_seed(PROBE_SEED)
    x = torch.randn((rows, *shape), generator=gen)
    rates = 0.1 + 0.85 * torch.rand((rows, 1, 1, 1), generator=gen)
    return x.to(device), rates.to(device)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def _rows(inputs: Inputs, n: int) -> Inputs:
    return tuple(t[:n] for t in inputs)


def _flipped(inputs: Inputs) -> Inputs:
    return tuple(t.flip(0) for t in inputs)


def _copies(inputs: Inputs, n: int) -> Inputs:
    """Row 0 of every input, n times."""
    return tuple(t[:1].expand(n, *t.shape[1:]).contiguous() for t in inputs)


def _agrees(network: Network, inputs: Inputs, ref: torch.Tensor) -> bool:
    """An n-row call gives the reference's rows, and row 0 copied to every position gives row 0 everywhere."""
    n = inputs[0].shape[0]
    if not torch.equal(network(*inputs), ref[:n]):
        return False
    copies = network(*_copies(inputs, n))
    return torch.equal(copies, ref[:1].expand_as(copies))


def probe(
    network: Network,
    shape: Sequence[int],
    reference: int,
    device: str | torch.device = "cpu",
    candidates: Sequence[int] | None = None,
    conditions: torch.Tensor | None = None,
) -> Probe:
    """Which call sizes give each row the same bits, in any position and beside any neighbours.

    The reference is the largest call of at most `reference` rows whose rows do not depend on their
    position or neighbours (same bits with the rows reversed, and for row 0 copied to every
    position); with 3 threads and 16 rows, say, oneDNN splits some images between two threads.
    Every smaller size is then kept when its rows equal the reference's. `candidates` limits the
    sizes tried (all of 1..reference by default), e.g. to powers of two when each shape is compiled.
    A conditioned network is probed as it runs: `conditions` holds one condition row per probe row
    (at least `reference` of them), passed as the network's third input.
    """
    tried = sorted({n for n in (candidates or range(1, reference + 1)) if 1 <= n <= reference} | {reference})
    inputs: Inputs = probe_inputs(reference, shape, device)
    if conditions is not None:
        inputs = (*inputs, conditions[:reference].to(device))
    for size in reversed(tried):
        rows = _rows(inputs, size)
        ref = network(*rows)
        flipped = network(*_flipped(rows)).flip(0)
        if torch.equal(flipped, ref) and _agrees(network, rows, ref):
            break
    else:
        raise KernelsError("the network's output is not reproducible even for one row at a time")
    sizes = [n for n in tried if n < size and _agrees(network, _rows(inputs, n), ref)]
    rejected = tuple(sorted(set(tried) - set(sizes) - {size}))
    return Probe(CallShapes((*sizes, size)), _digest(ref[0]), rejected)
