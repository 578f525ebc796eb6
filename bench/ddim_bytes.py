"""Fingerprints of DDIM's outputs through the engine, to compare two commits on one machine: a change that must keep
every DDIM job's bytes (a new sampler, a refactor of the run) prints the same lines before and after it.

    python -m bench.ddim_bytes          # in each checkout, then diff the two outputs

Each line is the sha256 (first 16 hex digits) of the uint8 images, or of the float32 latents, of: the bundled
emoji32 at eta 0 and at mixed etas; image-to-image and inpainting with RePaint in one batch; a refined inversion and
its reconstruction; emoji32-text with guided, prompt-free and eta-1 rows, and their PNG files; and a small random
diffusers UNet2DModel (seeded) whose DDPMScheduler clamps x̂0, generated and inverted. Pixel bytes depend on the CPU's
kernels (the engine id), so compare outputs from one machine.
"""

from __future__ import annotations

import hashlib
import inspect
import tempfile
from pathlib import Path

import numpy as np


def fingerprint(array) -> str:
    data = array if isinstance(array, np.ndarray) else array.numpy()
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()[:16]


def emoji_lines() -> dict[str, str]:
    from diffusion.ddim import last_step
    from worker.engine import PictureIn, load_engine

    e = load_engine("emoji32", device="cpu")
    out = {
        "emoji32 eta 0": fingerprint(e.generate([0, 1, 2, 3], 20, [0.0] * 4)),
        "emoji32 mixed etas": fingerprint(e.generate([0, 1, 2, 3], 20, [1.0, 0.0, 0.5, 1.0])),
    }
    picture = e.generate([5], 20, [0.0])[0]
    mask = np.zeros((32, 32, 1), np.uint8)
    mask[8:24, 8:24] = 255
    rows = [PictureIn(picture, 0.6), None, PictureIn(picture, 1.0, mask, 2)]
    where = "starts" if "starts" in inspect.signature(e.run).parameters else "pictures"  # an older engine's keyword
    out["emoji32 pictures in"] = fingerprint(
        e.images(last_step(e.run([1, 2, 3], 20, [0.0, 0.3, 0.0], **{where: rows})), rows)
    )
    *_, inverse = e.invert([picture], 20)
    out["emoji32 inversion"] = fingerprint(inverse.x)
    out["emoji32 reconstruction"] = fingerprint(e.images(last_step(e.reconstruct(list(inverse.x), 20))))
    t = load_engine("emoji32-text", device="cpu")
    conditions = [t.condition("red heart", 3.0), t.condition(None, None), t.condition("cat", 1.0)]
    images = t.generate([0, 1, 2], 20, [0.0, 0.0, 1.0], conditions=conditions)
    out["emoji32-text"] = fingerprint(images)
    out["emoji32-text PNGs"] = fingerprint(np.frombuffer(pngs(t, images), np.uint8))
    return out


def pngs(engine, images) -> bytes:
    """The jobs' PNG files (pixels and `parameters`), as a worker writes them, for the text model's three rows."""
    from app.core.png import encode_png
    from app.core.spec import GenerateSpec

    m = engine.manifest
    asked = [{"prompt": "red heart", "guidance": 3.0}, {}, {"prompt": "cat", "guidance": 1.0}]
    specs = [GenerateSpec("0" * 32, m.ref, m.identity, seed=i, steps=20, eta=[0.0, 0.0, 1.0][i], **a)
             for i, a in enumerate(asked)]  # fmt: skip
    return b"".join(encode_png(image, engine.parameters(spec)) for image, spec in zip(images, specs, strict=True))


def diffusers_lines() -> dict[str, str]:
    import diffusers
    import torch

    from diffusion.ddim import last_step
    from model_store import Store
    from model_store.importers.diffusers import import_diffusers
    from worker.engine import load_engine

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    ).eval()  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pipeline"
        diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(folder)
        store = Store(Path(tmp) / "store")
        e = load_engine(import_diffusers(folder, "tiny", store=store).ref, store=store, device="cpu")
        picture = e.generate([4], 10, [0.0])[0]
        return {
            "diffusers (clip_sample)": fingerprint(e.generate([0, 1, 2], 10, [0.0, 1.0, 0.0])),
            "diffusers inversion": fingerprint(last_step(e.invert([picture], 10)).x),
        }


def main() -> None:
    for name, value in {**emoji_lines(), **diffusers_lines()}.items():
        print(f"{name:26} {value}")


if __name__ == "__main__":
    main()
