"""The `file:///dir` result store: one file an object under a local or shared directory.

A write goes to a temporary name beside the object, is fsynced, renamed over the object's name, and the directory is
fsynced (POSIX rename is atomic): neither a reader nor a crash sees half a file, and a job is marked succeeded only
after its file is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from app.core.results import StoreUnavailable


class FileStore:
    scheme = "file"
    inline_previews = False

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ValueError(f"not an object name: {name!r}")
        return self.root.joinpath(*parts)

    def put(self, name: str, data: bytes) -> None:
        path = self.path(name)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # dot files: never an object's name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)  # the bytes are on disk before the name points at them
            finally:
                os.close(fd)
            os.replace(temporary, path)  # atomic: a reader sees the old file or the whole new one
            _fsync_directory(path.parent)  # the rename itself survives a crash
        except OSError as exc:
            with contextlib.suppress(OSError):  # a parent that is not a directory fails here too
                temporary.unlink(missing_ok=True)
            raise StoreUnavailable(f"{path.parent}: {exc.strerror or exc}") from None

    def get(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                return None
            raise StoreUnavailable(f"{self.root}: {exc.strerror or exc}") from None

    def delete(self, name: str) -> None:
        try:
            self.path(name).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"{self.root}: {exc.strerror or exc}") from None

    def presign(self, name: str, expires_s: int) -> str | None:
        return None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
