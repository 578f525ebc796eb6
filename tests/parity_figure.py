"""The picture of docs/MODELS.md: for the same seeds, diffusers' DDIMPipeline and ours on an imported pipeline,
and the Keras example's `generate()` and ours on an imported checkpoint, from the parity tests' models.

    PYTHONPATH=.:tests python tests/parity_figure.py docs/img/parity.png

Rows: DDIMPipeline, ours (eta 0), DDIMPipeline, ours (eta 1), Keras, ours; each image scaled x4 (nearest).
Prints the largest pixel difference of each pair.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

SEEDS = (0, 1, 2, 3, 4, 5)
STEPS = 20
SCALE = 4


def diffusers_rows(folder: Path) -> list[np.ndarray]:
    from diffusers import DDPMScheduler
    from diffusers_models import pipeline_image, quantised, save_pipeline, tiny_unet

    from model_store import Store
    from model_store.importers.diffusers import import_diffusers
    from worker.engine import load_engine

    store = Store(folder / "models")
    pipe = save_pipeline(folder / "pipe", tiny_unet(seed=0), DDPMScheduler())
    import_diffusers(pipe, "pipe", store=store)
    engine = load_engine("pipe", store=store, device="cpu")
    rows = []
    for eta in (0.0, 1.0):
        theirs = np.concatenate([quantised(pipeline_image(pipe, s, STEPS, eta)) for s in SEEDS])
        ours = engine.generate(list(SEEDS), STEPS, [eta] * len(SEEDS))
        print(f"diffusers eta {eta}: largest pixel difference {np.abs(theirs.astype(int) - ours).max()}")
        rows += [theirs, ours]
    return rows


def keras_rows(folder: Path) -> list[np.ndarray]:
    import keras_ddim_example as example

    from diffusion.ddim import last_step
    from model_store import Store
    from model_store.importers.keras import import_keras
    from worker.engine import load_engine

    store = Store(folder / "models")
    folder.mkdir(parents=True, exist_ok=True)
    model = example.trained_checkpoint(folder / "ddim.weights.h5")
    import_keras(folder / "ddim.weights.h5", "fromkeras", 16, store=store)
    engine = load_engine("fromkeras", store=store, device="cpu")
    noise = np.stack([np.random.default_rng(s).standard_normal((16, 16, 3)).astype("float32") for s in SEEDS])
    theirs = example.keras.ops.convert_to_numpy(model.generate_from(example.keras.ops.convert_to_tensor(noise), STEPS))
    theirs = np.round(theirs * 255).astype(np.uint8)
    x_T = torch.from_numpy(noise).permute(0, 3, 1, 2).contiguous()
    ours = engine.pixels(last_step(engine.run(list(SEEDS), STEPS, [0.0] * len(SEEDS), starts=x_T)).x0_pred)
    print(f"keras: largest pixel difference {np.abs(theirs.astype(int) - ours).max()}")
    return [theirs, ours]


def main(out: str) -> None:
    from PIL import Image

    from diffusion.grid import make_grid

    with tempfile.TemporaryDirectory() as tmp:
        rows = diffusers_rows(Path(tmp) / "d") + keras_rows(Path(tmp) / "k")
    images = np.concatenate(rows)
    grid = make_grid(images, len(SEEDS))
    big = np.repeat(np.repeat(grid, SCALE, axis=0), SCALE, axis=1)
    Image.fromarray(big).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
