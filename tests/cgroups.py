"""A memory cgroup of a test's own, for processes the test starts in it (importable as `cgroups`).

cgroup v1: a child of the memory hierarchy (`memory.limit_in_bytes`, `memory.oom_control`). cgroup v2: a child of a
cgroup whose `cgroup.subtree_control` enables `memory` (`memory.max`, `memory.events`). The child is made under this
process's own cgroup where that can be written, else under the hierarchy's root; it needs root (or a delegated
cgroup) and a writable cgroupfs, and is removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

V1, V2 = "v1", "v2"
FILES = {  # what each version calls the limit, the usage and the OOM counters
    V1: {"limit": "memory.limit_in_bytes", "usage": "memory.usage_in_bytes", "events": "memory.oom_control"},
    V2: {"limit": "memory.max", "usage": "memory.current", "events": "memory.events"},
}


class CgroupUnavailable(RuntimeError):
    """No memory cgroup can be made here; the message says why."""


def _mounts() -> list[tuple[str, Path, str]]:
    """(version, mount point, root of the mount in its hierarchy) of each memory cgroup hierarchy mounted here."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3].split(",")
            if fstype == "cgroup" and "memory" in options:
                found.append((V1, Path(fields[4]), fields[3]))
            elif fstype == "cgroup2":
                found.append((V2, Path(fields[4]), fields[3]))
    return sorted(found)  # v1 first: where memory is bound to v1, v2 has no memory controller


def _own_path(version: str) -> str | None:
    """This process's cgroup in the hierarchy of `version` (/proc/self/cgroup)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (version == V1 and "memory" in controllers.split(",")) or (version == V2 and controllers == ""):
                return path
    return None


def _parents(version: str, mount: Path, mount_root: str) -> list[Path]:
    """Where a child may go: this process's own cgroup, then the hierarchy's root (as mounted)."""
    own = _own_path(version)
    candidates = []
    if own is not None and (own == mount_root or own.startswith(mount_root.rstrip("/") + "/")):
        candidates.append(mount / own[len(mount_root) :].lstrip("/"))
    candidates.append(mount)
    return list(dict.fromkeys(candidates))


class MemoryCgroup:
    """`with MemoryCgroup() as cg:` a fresh memory cgroup, without a limit until `limit(bytes)`. Start a process in it
    with `preexec_fn=cg.enter` (the child joins before it execs, so all it allocates is charged here). On exit the
    processes still in it are moved back to the parent and the cgroup is removed."""

    def __init__(self, prefix: str = "diffusetv-test-") -> None:
        self.name = f"{prefix}{uuid.uuid4().hex[:8]}"
        self.path: Path | None = None
        self.version: str | None = None

    def __enter__(self) -> MemoryCgroup:
        reasons = []
        mounts = _mounts()
        if not mounts:
            raise CgroupUnavailable("no cgroup filesystem with a memory controller is mounted")
        for version, mount, root in mounts:
            for parent in _parents(version, mount, root):
                try:
                    self._make(version, parent)
                    return self
                except OSError as exc:
                    reasons.append(f"{parent}: {exc.strerror or exc}")
                except CgroupUnavailable as exc:
                    reasons.append(f"{parent}: {exc}")
        raise CgroupUnavailable(
            "no memory cgroup can be made here (root and a writable cgroupfs are needed): " + "; ".join(reasons)
        )

    def _make(self, version: str, parent: Path) -> None:
        if version == V2:
            if "memory" not in (parent / "cgroup.controllers").read_text().split():
                raise CgroupUnavailable("cgroup v2 without the memory controller")
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                raise CgroupUnavailable("cgroup v2 whose subtree_control does not enable memory")
        path = parent / self.name
        path.mkdir()
        if not (path / FILES[version]["limit"]).exists():
            path.rmdir()
            raise CgroupUnavailable(f"a child has no {FILES[version]['limit']}")
        self.path, self.version = path, version

    def _file(self, what: str) -> Path:
        return self.path / FILES[self.version][what]

    def enter(self) -> None:
        """Move the calling process into the cgroup: a `preexec_fn`, run in the child between fork and exec."""
        with open(self.path / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def limit(self, nbytes: int) -> None:
        """At most `nbytes` of memory for the cgroup's processes, swap included where swap is accounted."""
        self._file("limit").write_text(str(nbytes))
        if self.version == V2 and (self.path / "memory.swap.max").exists():
            (self.path / "memory.swap.max").write_text("0")
        elif self.version == V1 and (self.path / "memory.memsw.limit_in_bytes").exists():
            with contextlib.suppress(OSError):  # memory + swap: never below the memory limit
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(nbytes))

    def usage(self) -> int:
        """Bytes charged to the cgroup now (page cache included)."""
        return int(self._file("usage").read_text())

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer has killed in the cgroup (`oom_kill N` in memory.oom_control, v1, or
        memory.events, v2)."""
        for line in self._file("events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise CgroupUnavailable(f"{self._file('events')} has no oom_kill count (kernel older than 4.13)")

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def __exit__(self, *exc) -> None:
        if self.path is None:
            return
        deadline = time.monotonic() + 10
        while self.path.exists():
            for pid in self.pids():  # one still running: back to the parent, where it was started from
                with contextlib.suppress(OSError):
                    (self.path.parent / "cgroup.procs").write_text(str(pid))
            try:
                self.path.rmdir()
            except OSError:  # busy a moment after its last process has gone
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
