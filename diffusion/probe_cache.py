"""A cache of kernel probes (diffusion.kernels), so that a worker or `diffusetv sample` does not probe a model
again on a machine that has probed it: one file per key, in a directory of its own (outside the read-only
store).

The key is everything that decides the kernels: the model's identity, the CPU's model and flags (or the
GPU's name), the torch build with its oneDNN and cuDNN, the thread count, the precision, compile, the
sample shape and what was probed (the reference size and the candidates). A cached entry is trusted only
after one reference call on the probe's inputs gives its fingerprint again; otherwise the model is probed
afresh and the entry replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch

from diffusion.kernels import CallShapes, Network, Probe, _digest, probe, probe_inputs

VERSION = 1


@cache
def cpu_description() -> dict:
    """The CPU's model name and flags (Linux /proc/cpuinfo), else what `platform` says."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {"processor": platform.processor(), "machine": platform.machine()}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)  # the last core's; all cores agree
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {"model": fields.get("model name", ""), "flags": fields.get("flags", fields.get("Features", ""))}


def machine_key(device: str) -> dict:
    """What of this machine and build decides the kernels."""
    build = hashlib.sha256(torch.__config__.show().encode()).hexdigest()  # versions of oneDNN, MKL, cuDNN, flags
    key = {"torch": torch.__version__, "build": build, "threads": torch.get_num_threads(), "cpu": cpu_description()}
    if device == "cuda":
        key["gpu"] = torch.cuda.get_device_name()
        key["cudnn"] = torch.backends.cudnn.version()
    key["mkldnn"] = bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    return key


def entry_name(fields: dict) -> str:
    return hashlib.sha256(json.dumps({"v": VERSION, **fields}, sort_keys=True).encode()).hexdigest() + ".json"


def read(file: Path) -> Probe | None:
    try:
        data = json.loads(file.read_text())
        return Probe(CallShapes(tuple(data["sizes"])), str(data["fingerprint"]), tuple(data["rejected"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: probe again


def write(file: Path, found: Probe) -> None:
    """Atomically, so that two workers starting at once never read half an entry."""
    data = {"sizes": list(found.shapes.sizes), "fingerprint": found.fingerprint, "rejected": list(found.rejected)}
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=file.parent)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(data))
    os.replace(tmp, file)


def still_holds(
    network: Network, shape: Sequence[int], reference: int, found: Probe, device, conditions: torch.Tensor | None
) -> bool:
    """One reference call on the probe's inputs (drawn for `reference` rows, as the probe drew them) gives the
    cached fingerprint."""
    size = found.shapes.largest
    x, rates = probe_inputs(reference, shape, device)
    inputs = (x[:size], rates[:size]) + (() if conditions is None else (conditions[:size].to(device),))
    return _digest(network(*inputs)[0]) == found.fingerprint


def cached_probe(
    network: Network,
    shape: Sequence[int],
    reference: int,
    device,
    candidates: Sequence[int] | None,
    directory: Path | None,
    key: dict,
    conditions: torch.Tensor | None = None,
) -> tuple[Probe, bool]:
    """(the probe, whether it came from the cache): the cached entry when it still holds, else a fresh probe."""
    if directory is None:
        return probe(network, shape, reference, device, candidates, conditions), False
    fields = {**key, "shape": list(shape), "reference": reference, "candidates": list(candidates or [])}
    file = Path(directory) / entry_name(fields)
    found = read(file)
    if found is not None and still_holds(network, shape, reference, found, device, conditions):
        return found, True
    found = probe(network, shape, reference, device, candidates, conditions)
    with contextlib.suppress(OSError):  # a read-only or full cache directory costs a probe next time, nothing else
        write(file, found)
    return found, False
