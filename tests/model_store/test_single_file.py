"""Single-file SD checkpoints: the refusal's one line, and its conversion command run as written, with no network,
on a checkpoint in the original LDM layout, giving back the pipeline's own tensors."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO
from model_store.importers.single_file import SUFFIXES, command, refusal

# Loaded first by the conversion's interpreter (PYTHONPATH): any connection attempt fails the conversion.
NO_NETWORK = """import socket
def refuse(*args, **kwargs):
    raise OSError("the conversion tried to use the network")
socket.socket.connect = refuse
socket.create_connection = refuse
"""
WEIGHTS = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}


def test_the_refusal_is_one_line_naming_the_file_with_the_command_for_it():
    path = Path("/data/models/dream shaper's v8.safetensors")
    line = refusal(path)
    assert "\n" not in line and line.startswith(f"{path}: a single-file checkpoint")
    assert command(path) in line and "docs/MODELS.md" in line and "diffusetv import diffusers" in line
    assert ".safetensors" in SUFFIXES and ".ckpt" in SUFFIXES


def test_the_command_quotes_every_path_for_the_shell():
    odd = ("a b's.ckpt", 'x"y $HOME `z`', "out;rm -rf ~")
    argv = shlex.split(command(*odd))
    assert argv[:2] == ["python", "-c"] and argv[3:] == list(odd)
    assert "from_single_file(sys.argv[1], config=sys.argv[2], local_files_only=True)" in argv[2]


def test_docs_models_md_gives_the_command_the_refusal_gives():
    assert command("v1-5-pruned-emaonly.safetensors") in (REPO / "docs" / "MODELS.md").read_text()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny SD 1.x pipeline folder, named DIR as the refusal's command names it."""
    from sd_pipelines import save_sd_pipeline

    return save_sd_pipeline(tmp_path_factory.mktemp("single") / "DIR")


def state(folder: Path, part: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / part / WEIGHTS[part])


def write_checkpoint(pipeline: Path, file: Path) -> None:
    """The pipeline's UNet, VAE and text encoder as one LDM checkpoint, as a `.safetensors` or a `.ckpt` pickle."""
    from ldm_checkpoint import ldm_checkpoint
    from safetensors.torch import save_file

    def config(part: str) -> dict:
        return json.loads((pipeline / part / "config.json").read_text())

    checkpoint = ldm_checkpoint(
        state(pipeline, "unet"), config("unet"), state(pipeline, "vae"), config("vae"), state(pipeline, "text_encoder")
    )
    if file.suffix == ".safetensors":
        save_file(checkpoint, file)
    else:
        torch.save({"state_dict": checkpoint}, file)  # as LDM's trainer saved them


def run_offline(line: str, cwd: Path) -> subprocess.CompletedProcess:
    """LINE in a shell whose `python` is this interpreter, with HF_HUB_OFFLINE=1, an empty hub cache, and sockets
    that refuse to connect."""
    guard = cwd / "no-network"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(guard),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(cwd / "hf-home"),
    }
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dream shaper's v8.safetensors", "v1-5-pruned-emaonly.ckpt"])
def test_the_refusals_command_converts_a_checkpoint_offline_to_the_same_tensors(pipeline, name):
    from transformers import CLIPTokenizer

    where = pipeline.parent
    file = where / name
    write_checkpoint(pipeline, file)
    out = where / "OUT"
    shutil.rmtree(out, ignore_errors=True)  # the other parameter's
    line = refusal(file)
    assert str(file) in line and command(file) in line

    proc = run_offline(command(file), cwd=where)  # the refusal's command as written: DIR and OUT are in `where`

    assert proc.returncode == 0, proc.stderr[-3000:]
    for part in WEIGHTS:
        original, new = state(pipeline, part), state(out, part)
        assert new.keys() == original.keys(), part
        different = [k for k, v in original.items() if v.dtype != new[k].dtype or not torch.equal(v, new[k])]
        assert not different, f"{part}: {different[:5]}"
    assert not list((where / "hf-home").rglob("*"))
    prompt = "a red heart on the moon"
    ids = [CLIPTokenizer.from_pretrained(f / "tokenizer")(prompt).input_ids for f in (pipeline, out)]
    assert ids[0] == ids[1]
