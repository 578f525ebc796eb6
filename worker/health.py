"""The worker's health file: the deadline by which its main loop promises to be back (`diffusetv worker --check`).

Only the main thread writes it, never the heartbeat thread:
- before each wait for jobs: the wait (RQ's dequeue timeout) plus a margin;
- before each job: its RQ timeout (JOB_TIMEOUT, or more: app.core.timeouts) plus the margin (RQ ends it by then).
A worker whose main loop is stuck misses its deadline, even while its heartbeat thread could still beat.
No file means the worker has not loaded its models yet: not ready.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MARGIN_S = 30  # slack for Redis round trips and the batch's last writes
DEQUEUE_TIMEOUT_S = 30  # the longest single wait for a job; the main loop comes back at least this often when idle

_deadline: float | None = None  # this process's last promise (time.time())


def promise(path: Path, seconds: float, state: str) -> None:
    """The main loop will be back within `seconds`: write it atomically (a rename), for the health command."""
    global _deadline
    _deadline = time.time() + seconds
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"state": state, "deadline": _deadline, "pid": os.getpid()}))
    os.replace(tmp, path)


def overdue() -> bool:
    """Did this process's main loop miss its last deadline? (False before its first promise.)"""
    return _deadline is not None and time.time() > _deadline


def clear(path: Path) -> None:
    path.unlink(missing_ok=True)


def problem(path: Path, now: float | None = None) -> str | None:
    """Why the worker writing `path` is not healthy, or None."""
    try:
        record = json.loads(path.read_text())
        deadline, state = float(record["deadline"]), str(record["state"])
    except FileNotFoundError:
        return f"not ready: no health file at {path} (the models are not loaded yet, or the worker is not running)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable health file {path}: {exc}"
    late = (time.time() if now is None else now) - deadline
    if late > 0:
        return f"stuck: the main loop ({state}) is {late:.0f} s past its deadline"
    return None
