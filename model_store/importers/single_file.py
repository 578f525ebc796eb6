"""Single-file Stable Diffusion checkpoints: one `.safetensors` or `.ckpt` in the original LDM (CompVis) layout, as
AUTOMATIC1111 and ComfyUI keep them. `diffusetv import diffusers` does not read them; it refuses one with a line
that gives the command converting it to a pipeline folder, once, with diffusers itself (docs/MODELS.md):

    python -c '<StableDiffusionPipeline.from_single_file(F, config=DIR, local_files_only=True).save_pretrained(OUT)>'
        F DIR OUT

The paths are the script's arguments, so that the shell quotes them and nothing in them is read as Python. DIR is
a pipeline folder of the same family (SD 1.x for a 1.x checkpoint, 2.x-v for a 768 v-prediction one): the file has
the weights, DIR the configs, the tokenizer and the scheduler. With `config` a local folder and `local_files_only`,
diffusers reads nothing from a hub.
"""

from __future__ import annotations

import shlex
from pathlib import Path

SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
CONVERT = (
    "import sys; from diffusers import StableDiffusionPipeline as P; "
    "P.from_single_file(sys.argv[1], config=sys.argv[2], local_files_only=True).save_pretrained(sys.argv[3])"
)


def command(file: str | Path, config_dir: str | Path = "DIR", out: str | Path = "OUT") -> str:
    """The shell command that converts FILE into the pipeline folder OUT, with DIR's configs and tokenizer."""
    return shlex.join(["python", "-c", CONVERT, str(file), str(config_dir), str(out)])


def refusal(path: Path) -> str:
    """One line for a single-file checkpoint given as DIR: what it is, and the command that converts it."""
    return (
        f"{path}: a single-file checkpoint, which `diffusetv import diffusers` does not read; convert it once into "
        f"a pipeline folder OUT, with DIR a pipeline folder of the same family (docs/MODELS.md): {command(path)}, "
        "then import OUT"
    )
