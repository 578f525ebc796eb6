"""Errors that are the user's to fix: printed as one line, without a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UserError(Exception):
    pass


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the known domain errors into UserError."""
    from model_store.errors import ModelStoreError

    known: tuple[type[Exception], ...] = (ModelStoreError,)
    try:
        from diffusion.data import DataError
        from diffusion.emoji import FontMissing
        from diffusion.train import RunError

        known += (DataError, FontMissing, RunError)
    except ImportError:  # torch-free install: only the store's errors can occur
        pass
    try:
        yield
    except known as exc:
        raise UserError(str(exc)) from None
