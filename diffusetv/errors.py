"""Errors that are the user's to fix: printed as one line, without a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# The domain errors of the model code, by module and name: matching them by name keeps `diffusetv api`
# from importing torch (which `diffusion` needs) just to know what to catch.
DOMAIN_ERRORS = {
    ("diffusion.data", "DataError"),
    ("diffusion.emoji", "FontMissing"),
    ("diffusion.train", "RunError"),
    ("diffusion.features", "FeatureError"),
}


class UserError(Exception):
    pass


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the known domain errors into UserError."""
    from model_store.errors import ModelStoreError

    try:
        yield
    except ModelStoreError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:
        if (type(exc).__module__, type(exc).__name__) in DOMAIN_ERRORS:
            raise UserError(str(exc)) from None
        raise
