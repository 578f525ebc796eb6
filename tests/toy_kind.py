"""A model kind that lives only in the tests, plugged in as a user would plug in their own:
`DIFFUSETV_KIND_MODULES=toy_kind` (with this folder importable). This module is the torch-free part that
the API reads; `toy_kind_engine` is the worker side (its `MODELS`), which only a worker imports.

Its network is a fixed linear map that predicts x0 (not ε) on a grey, non-square image, over its own
time grid, with pixels in [-1, 1]: everything a kind decides differs from `ddim-unet`.
"""

from model_store import kinds

NAME = "toy-linear"
MAX_STEPS = 50


def shape(config: dict) -> kinds.Shape:
    return int(config["height"]), int(config["width"]), int(config["channels"])


KIND = kinds.register(kinds.Kind(NAME, shape, served=True, module=__name__, max_steps=MAX_STEPS))
