"""The engines this worker process has loaded, by model reference (`name@version`)."""

from __future__ import annotations

from worker.engine import Engine

ENGINES: dict[str, Engine] = {}
WORKER_ID = ""  # this process's worker id, named in its heartbeat key and in the runs it computes


def get(model_ref: str) -> Engine:
    try:
        return ENGINES[model_ref]
    except KeyError:
        raise LookupError(f"model {model_ref} is not loaded by this worker (it has {sorted(ENGINES)})") from None
