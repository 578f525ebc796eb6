"""`diffusetv import diffusers`: what is read, what is refused with one line, what is ignored, what is stored."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers_models import save_pipeline, tiny_unet

from helpers import run_cli
from model_store import ModelStoreError, Store, kinds
from model_store.importers.diffusers import import_diffusers
from model_store.weights import read_state


def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler()


@pytest.fixture
def pipeline(tmp_path):
    return save_pipeline(tmp_path / "pipe", tiny_unet(), ddpm())


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "models")


def test_a_pipeline_becomes_a_diffusers_unet2d_version_with_the_resolved_ddim_settings(pipeline, store):
    m = import_diffusers(pipeline, "cifar", store=store)
    assert (m.ref, m.kind, m.weights) == ("cifar@1", "diffusers-unet2d", "ema.safetensors")
    assert m.config["block_out_channels"] == [16, 32] and "_class_name" not in m.config
    s = m.extras["scheduler"]
    assert m.extras["scheduler_config"] == json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text())
    # DDPMScheduler's values, and DDIMScheduler's defaults for what DDPMScheduler does not say
    assert (s["beta_schedule"], s["clip_sample"], s["set_alpha_to_one"], s["steps_offset"]) == ("linear", True, True, 0)
    imported = m.training["imported"]
    assert "variance_type" in imported["ignored_scheduler_keys"] and imported["source_dtype"] == "float32"
    assert kinds.of(m).describe(m)["shape"] == {"height": 16, "width": 16, "channels": 3}
    assert kinds.of(m).steps_bound(m) == 1000
    state = read_state(m, "diffusers-unet2d")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert import_diffusers(pipeline, "cifar", store=store).ref == "cifar@2"


def test_an_fp16_variant_is_upcast_and_its_dtype_recorded(tmp_path, store):
    unet = tiny_unet()
    folder = save_pipeline(tmp_path / "half", tiny_unet(), ddpm(), variant="fp16")
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    m = import_diffusers(folder, "half", store=store)
    assert m.training["imported"]["source_dtype"] == "float16"
    state = read_state(m, "diffusers-unet2d")
    want = unet.conv_in.weight.detach().half().float()
    assert state["conv_in.weight"].dtype == torch.float32 and torch.equal(state["conv_in.weight"], want)


def test_a_pickled_bin_is_read_with_weights_only_and_stored_as_safetensors(tmp_path, store, monkeypatch):
    folder = save_pipeline(tmp_path / "bin", tiny_unet(), ddpm(), safe=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    m = import_diffusers(folder, "pickled", store=store)
    assert calls == [True]
    assert sorted(p.name for p in m.path.iterdir()) == ["ema.safetensors", "model.json"]  # no pickle is served


def test_a_unet_folder_needs_and_takes_a_scheduler(tmp_path, pipeline, store):
    with pytest.raises(ModelStoreError, match="needs --scheduler"):
        import_diffusers(pipeline / "unet", "bare", store=store)
    m = import_diffusers(pipeline / "unet", "bare", scheduler=pipeline / "scheduler", store=store)
    assert m.extras["scheduler"]["num_train_timesteps"] == 1000


def test_non_square_and_greyscale_models_are_supported(tmp_path, store):
    folder = save_pipeline(tmp_path / "grey", tiny_unet(sample_size=[16, 24], channels=1), ddpm())
    m = import_diffusers(folder, "grey", store=store)
    assert kinds.of(m).describe(m)["shape"] == {"height": 16, "width": 24, "channels": 1}


def edit(file, **changes):
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("where", "changes", "message"),
    [
        ("model_index.json", {"vqvae": ["diffusers", "VQModel"]}, "has a 'vqvae': latent and conditional"),
        ("model_index.json", {"text_encoder": ["transformers", "CLIPTextModel"]}, "has a 'text_encoder'"),
        ("model_index.json", {"unet": ["diffusers", "UNet2DConditionModel"]}, "not a diffusers UNet2DModel"),
        ("unet/config.json", {"_class_name": "UNet2DConditionModel"}, "a UNet2DConditionModel is not supported"),
        ("unet/config.json", {"num_class_embeds": 10}, "class-conditional"),
        ("unet/config.json", {"out_channels": 6}, "out_channels 6 differs"),
        ("scheduler/scheduler_config.json", {"thresholding": True}, "`thresholding: true`"),
        ("scheduler/scheduler_config.json", {"prediction_type": "flow"}, "prediction_type 'flow' is not supported"),
        ("scheduler/scheduler_config.json", {"timestep_spacing": "karras"}, "timestep_spacing 'karras'"),
    ],
)
def test_refusals_are_one_line_each(pipeline, store, where, changes, message):
    edit(pipeline / where, **changes)
    with pytest.raises(ModelStoreError, match=message) as err:
        import_diffusers(pipeline, "refused", store=store)
    assert "\n" not in str(err.value)
    assert store.versions("refused") == []


def test_four_channels_are_refused(tmp_path, store):
    folder = save_pipeline(tmp_path / "rgba", tiny_unet(channels=4), ddpm())
    with pytest.raises(ModelStoreError, match="4 channels are not supported"):
        import_diffusers(folder, "rgba", store=store)


def test_weights_that_do_not_fit_the_config_are_refused(pipeline, store):
    edit(pipeline / "unet" / "config.json", block_out_channels=[16, 64])
    with pytest.raises(ModelStoreError, match="do not fit the UNet config"):
        import_diffusers(pipeline, "misfit", store=store)


def test_missing_weights_are_refused(pipeline, store):
    (pipeline / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelStoreError, match="no UNet weights"):
        import_diffusers(pipeline, "empty", store=store)


def test_the_step_bound_is_per_model(tmp_path, store):
    from diffusers import DDIMScheduler

    folder = save_pipeline(tmp_path / "short", tiny_unet(), DDIMScheduler(num_train_timesteps=100))
    m = import_diffusers(folder, "short", store=store)
    assert kinds.of(m).steps_bound(m) == 100 and kinds.of(m).describe(m)["max_steps"] == 100


def test_the_cli_imports_and_samples_it(pipeline, tmp_path, monkeypatch):
    root = tmp_path / "cli-store"
    env = {"DIFFUSETV_MODEL_STORE": str(root), "DIFFUSETV_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = run_cli("import", "diffusers", str(pipeline), "--name", "pipe", env=env)
    assert "imported pipe@1 (diffusers-unet2d" in out.stdout and "variance_type" in out.stdout
    png = tmp_path / "s.png"
    run_cli("sample", "--model", "pipe", "--seed", "3", "--steps", "5", "--device", "cpu", "--out", str(png), env=env)
    from app.core.png import decode_png, read_parameters

    assert decode_png(png.read_bytes()).shape == (16, 16, 3)
    assert read_parameters(png.read_bytes())["model"] == "pipe"
    bad = run_cli(
        "sample", "--model", "pipe", "--seed", "3", "--steps", "1001", "--out", str(png), env=env, check=False
    )
    assert bad.returncode == 2 and "1..1000" in bad.stderr
    shutil.rmtree(pipeline / "scheduler")
    refused = run_cli("import", "diffusers", str(pipeline), "--name", "pipe", env=env, check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "missing" in refused.stderr
    assert np.array_equal(Store(root).versions("pipe"), [1])
