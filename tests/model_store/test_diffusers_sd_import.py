"""`diffusetv import diffusers` of a Stable Diffusion pipeline: what is read, stored, measured, and refused with one
line each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safetensors.torch import load_file, save_file
from sd_pipelines import save_sd_pipeline, tiny_parts

from model_store import ModelStoreError, Store
from model_store.importers.diffusers_sd import (
    KIND,
    STAGES,
    default_sizes,
    import_sd,
    is_stable_diffusion,
    parse_sizes,
)
from model_store.manifest import read_verified_weights, sha256_bytes
from model_store.store import BUNDLED

PROMPTS = ("a red heart on the moon", "A BIG blue cat, of the SUN!", "café 🍩", "")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """The tiny SD pipelines, saved once: `eps` (seed 0, fp32 safetensors) and `v16` (seed 1, v-prediction, the
    fp16 variant)."""
    root = tmp_path_factory.mktemp("sd")
    return {
        "eps": save_sd_pipeline(root / "eps", seed=0),
        "v16": save_sd_pipeline(root / "v16", seed=1, prediction="v_prediction", variant="fp16"),
    }


@pytest.fixture
def eps(pipelines, tmp_path):
    """A copy of the eps pipeline, for this test to change."""
    return shutil.copytree(pipelines["eps"], tmp_path / "eps")


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "models")


def stored_state(manifest) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(read_verified_weights(manifest))


def edit(file, **changes):
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("pipeline", "seed", "prediction", "dtype"),
    [("eps", 0, "epsilon", torch.float32), ("v16", 1, "v_prediction", torch.float16)],
)
def test_a_pipeline_becomes_one_diffusers_sd_version(pipelines, store, pipeline, seed, prediction, dtype):
    source = pipelines[pipeline]
    stages = []
    m = import_sd(source, "sd", store=store, progress=stages.append)
    assert (m.ref, m.kind, KIND, m.weights) == ("sd@1", "diffusers-sd", "diffusers-sd", "ema.safetensors")
    assert stages == list(STAGES)
    assert sorted(p.name for p in m.path.iterdir()) == ["ema.safetensors", "model.json", "tokenizer.json"]
    read = lambda part: json.loads((source / part).read_text())  # noqa: E731
    unet_config = read("unet/config.json")
    assert m.config == {k: v for k, v in unet_config.items() if not k.startswith("_")}
    assert (m.schedule, m.mean, m.std) == ("scaled_linear", [0.5] * 3, [0.5] * 3)
    x = m.extras
    assert x["scheduler"]["prediction_type"] == prediction and x["scheduler"]["steps_offset"] == 1
    assert x["scheduler_config"] == read("scheduler/scheduler_config.json")
    assert x["vae"] == {k: v for k, v in read("vae/config.json").items() if not k.startswith("_")}
    assert x["text_encoder"] == read("text_encoder/config.json")
    assert x["latent"] == {"channels": 4, "vae_scale_factor": 2, "scaling_factor": 0.5, "shift_factor": None}
    assert x["sizes"] == [[16, 16], [24, 16], [16, 24]] and x["default_guidance"] == 7.5
    assert set(x["flops"]) == {"unet_row", "vae_decode", "text_encoder"}
    assert all(isinstance(v, int) and v > 0 for v in x["flops"].values())
    tokenizer = x["tokenizer"]
    assert tokenizer["sha256"] == sha256_bytes((m.path / "tokenizer.json").read_bytes())
    assert (tokenizer["file"], tokenizer["model_max_length"]) == ("tokenizer.json", 77)
    assert (tokenizer["pad_token"], tokenizer["bos_token"]) == ("<|endoftext|>", "<|startoftext|>")
    assert tokenizer["config"] == read("tokenizer/tokenizer_config.json")
    assert tokenizer["special_tokens_map"] == read("tokenizer/special_tokens_map.json")
    imported = m.training["imported"]
    assert (imported["from"], imported["what"]) == ("diffusers", "StableDiffusionPipeline")
    assert imported["source"] == str(source)
    variant = ".fp16" if dtype == torch.float16 else ""
    assert imported["parts"] == {
        "unet": {"file": f"diffusion_pytorch_model{variant}.safetensors", "source_dtype": str(dtype)[6:]},
        "vae": {"file": f"diffusion_pytorch_model{variant}.safetensors", "source_dtype": str(dtype)[6:]},
        "text_encoder": {"file": f"model{variant}.safetensors", "source_dtype": str(dtype)[6:]},
    }
    assert imported["ignored_parts"] == [] and imported["diffusers_version"] == "0.42.1"
    # the weights: exactly each part's state dict, prefixed, in fp32 (the fp16 variant's values upcast)
    state = stored_state(m)
    parts = dict(zip(("unet", "vae", "text_encoder"), tiny_parts(seed, prediction, vocab_size=545)[:3], strict=True))
    want = {f"{p}.{k}": v.to(dtype).float() for p, net in parts.items() for k, v in net.state_dict().items()}
    assert sorted(state) == sorted(want)
    assert all(v.dtype == torch.float32 and torch.equal(v, want[k]) for k, v in state.items())
    rebuild_from_the_manifest(m, state)


def rebuild_from_the_manifest(m, state: dict[str, torch.Tensor]) -> None:
    """Each part builds from its field of model.json alone and takes its prefixed weights strictly."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    nets = {
        "unet": UNet2DConditionModel.from_config(m.config),
        "vae": AutoencoderKL.from_config(m.extras["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(m.extras["text_encoder"])),
    }
    for part, net in nets.items():
        net.load_state_dict({k.removeprefix(f"{part}."): v for k, v in state.items() if k.startswith(f"{part}.")})


def test_the_tokenizer_file_loads_with_tokenizers_alone_and_gives_transformers_ids(pipelines, store):
    from transformers import CLIPTokenizer

    m = import_sd(pipelines["eps"], "sd", store=store)
    code = (
        "import json, sys; from tokenizers import Tokenizer; t = Tokenizer.from_file(sys.argv[1]); "
        "print(json.dumps([t.encode(p).ids for p in json.loads(sys.argv[2])])); "
        "assert not {'torch', 'transformers'} & set(sys.modules), 'imported more than tokenizers'"
    )
    args = [sys.executable, "-c", code, str(m.path / "tokenizer.json"), json.dumps(PROMPTS)]
    alone = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    transformers = CLIPTokenizer.from_pretrained(pipelines["eps"] / "tokenizer")
    assert alone == [transformers(p).input_ids for p in PROMPTS]
    assert alone[0][0] == 543 and alone[0][-1] == 544  # <|startoftext|> … <|endoftext|>


@pytest.mark.parametrize(
    ("file", "changes"),
    [
        ("unet/config.json", {"norm_eps": 1e-6}),
        ("vae/config.json", {"force_upcast": False}),
        ("text_encoder/config.json", {"layer_norm_eps": 1e-6}),
        ("scheduler/scheduler_config.json", {"_class_name": "PNDMScheduler"}),  # the same DDIM settings
        ("tokenizer/merges.txt", None),  # one merge less: another tokenizer.json
    ],
)
def test_the_identity_changes_with_every_config_and_the_tokenizer(eps, store, file, changes):
    before = import_sd(eps, "sd", store=store)
    if changes is None:
        (eps / file).write_text("\n".join((eps / file).read_text().splitlines()[:-1]) + "\n")
    else:
        edit(eps / file, **changes)
    after = import_sd(eps, "sd", store=store)
    assert after.digest == before.digest and after.identity != before.identity


def test_sizes_are_given_or_the_native_size_and_its_buckets(pipelines, store):
    m = import_sd(pipelines["eps"], "sd", sizes=parse_sizes("24x16, 16x16,32X32"), default_guidance=4, store=store)
    assert m.extras["sizes"] == [[24, 16], [16, 16], [32, 32]] and m.extras["default_guidance"] == 4.0
    small = import_sd(pipelines["eps"], "sd", sizes=[(16, 16)], store=store)  # the FLOPs are at the default size
    assert small.extras["flops"]["unet_row"] < m.extras["flops"]["unet_row"]
    assert small.extras["flops"]["text_encoder"] == m.extras["flops"]["text_encoder"]
    assert default_sizes({"sample_size": 64}, 8) == [[512, 512], [768, 512], [512, 768]]
    assert default_sizes({"sample_size": 96}, 8) == [[768, 768], [1152, 768], [768, 1152]]
    assert default_sizes({"sample_size": [64, 96]}, 8) == [[768, 512], [512, 768]]  # [height, width]: 768 wide
    assert default_sizes({"sample_size": 8}, 2) == [[16, 16], [24, 16], [16, 24]]


@pytest.mark.parametrize(
    ("sizes", "guidance", "message"),
    [
        ("16x15", None, "--sizes: 16x15: each side must be a positive multiple of 2"),
        ("4096x16", None, "at most 2048"),
        ("0x16", None, "positive multiple"),
        ("16x16,16x16", None, "--sizes: a size is listed twice"),
        ("16", None, "--sizes: '16' is not WIDTHxHEIGHT"),
        ("16x16,", None, "--sizes: '' is not WIDTHxHEIGHT"),
        (None, 20.5, r"--default-guidance 20.5: expected 0.0..20.0"),
        (None, float("nan"), "--default-guidance nan"),
    ],
)
def test_bad_sizes_and_guidance_are_refused(pipelines, store, sizes, guidance, message):
    with pytest.raises(ModelStoreError, match=message) as info:
        import_sd(pipelines["eps"], "sd", parse_sizes(sizes) if sizes else None, guidance, store=store)
    assert "\n" not in str(info.value) and store.versions("sd") == []


def component(cls: str | None, library: str = "diffusers"):
    return [library, cls]


REFUSALS = [
    ("model_index.json", {"text_encoder_2": component("CLIPTextModelWithProjection", "transformers")}, "an SDXL"),
    ("model_index.json", {"tokenizer_2": component("CLIPTokenizer", "transformers")}, "'tokenizer_2' .*an SDXL"),
    ("unet/config.json", {"addition_embed_type": "text_time"}, "addition_embed_type 'text_time': an SDXL UNet"),
    ("unet/config.json", {"time_cond_proj_dim": 256}, "time_cond_proj_dim 256: an LCM UNet"),
    ("unet/config.json", {"class_embed_type": "timestep"}, "an upscaler or unCLIP UNet"),
    ("unet/config.json", {"num_class_embeds": 1000}, "num_class_embeds 1000: an upscaler or unCLIP UNet"),
    ("unet/config.json", {"in_channels": 9}, "in_channels 9 differs from the VAE's latent_channels 4"),
    ("unet/config.json", {"out_channels": 8}, "out_channels 8 differs from in_channels 4"),
    ("model_index.json", {"controlnet": component("ControlNetModel")}, "'controlnet' .*a ControlNet pipeline"),
    ("model_index.json", {"adapter": component("T2IAdapter")}, "a T2I-Adapter pipeline"),
    ("model_index.json", {"image_encoder": component("CLIPVisionModelWithProjection", "transformers")}, "IP-Adapter"),
    ("model_index.json", {"prior": component("PriorTransformer")}, "a prior"),
    ("model_index.json", {"unet_2": component("UNet2DConditionModel")}, "two UNets"),
    ("model_index.json", {"movq": component("VQModel")}, "a 'movq' part that a StableDiffusionPipeline does not have"),
    (
        "model_index.json",
        {"text_encoder": component("CLIPTextModelWithProjection", "transformers")},
        "text_encoder is a CLIPTextModelWithProjection, not a CLIPTextModel",
    ),
    (
        "text_encoder/config.json",
        {"architectures": ["T5EncoderModel"], "model_type": "t5"},
        "a T5EncoderModel \\(t5\\) is not a CLIPTextModel",
    ),
    (
        "model_index.json",
        {"tokenizer": component("T5TokenizerFast", "transformers")},
        "tokenizer is a T5TokenizerFast, not a CLIPTokenizer or CLIPTokenizerFast",
    ),
    ("tokenizer/tokenizer_config.json", {"tokenizer_class": "T5Tokenizer"}, "a T5Tokenizer is not a CLIPTokenizer"),
    ("model_index.json", {"vae": [None, None]}, r"no vae \(a StableDiffusionPipeline has unet, vae, text_encoder"),
    ("text_encoder/config.json", {"hidden_size": 32}, "hidden_size 32 differs from the UNet's cross_attention_dim 24"),
    ("unet/config.json", {"block_out_channels": [16, 64]}, "unet/diffusion_pytorch_model.safetensors: weights do not"),
    ("scheduler/scheduler_config.json", {"thresholding": True}, "`thresholding: true`"),
    ("tokenizer/tokenizer_config.json", {"model_max_length": 100}, "model_max_length 100 is more than the text"),
]


@pytest.mark.parametrize(("file", "changes", "message"), REFUSALS, ids=[m[:30] for _, _, m in REFUSALS])
def test_refusals_are_one_line_each(eps, store, file, changes, message):
    edit(eps / file, **changes)
    with pytest.raises(ModelStoreError, match=message) as info:
        import_sd(eps, "refused", store=store)
    assert "\n" not in str(info.value) and store.versions("refused") == []


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("vae", "vae/config.json: missing"),
        ("text_encoder/model.safetensors", "text_encoder: no text_encoder weights .looked for model.safetensors"),
        ("tokenizer/vocab.json", "tokenizer/vocab.json: missing"),
        ("scheduler", "scheduler_config.json: missing"),
        ("model_index.json", "model_index.json: missing"),
    ],
)
def test_missing_parts_are_named(eps, store, remove, message):
    path = eps / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(ModelStoreError, match=message) as info:
        import_sd(eps, "refused", store=store)
    assert "\n" not in str(info.value)


def test_sharded_and_non_finite_weights_are_refused(eps, store):
    weights = eps / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_in.bias"][0] = float("inf")
    save_file(state, weights)
    with pytest.raises(ModelStoreError, match=r"weight 'conv_in\.bias' is not finite"):
        import_sd(eps, "refused", store=store)
    weights.rename(eps / "unet" / "diffusion_pytorch_model-00001-of-00002.safetensors")
    (eps / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text("{}")
    with pytest.raises(ModelStoreError, match=r"sharded weights \(diffusion_pytorch_model.safetensors.index.json\)"):
        import_sd(eps, "refused", store=store)


def test_a_single_file_and_a_bundled_name_are_refused(eps, store, tmp_path):
    checkpoint = eps / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ModelStoreError) as info:
        import_sd(checkpoint, "single", store=store)
    assert str(checkpoint) in str(info.value) and "single-file" in str(info.value)
    with pytest.raises(ModelStoreError, match=f"model name 'emoji32' is a bundled model \\({BUNDLED / 'emoji32'}\\)"):
        import_sd(eps, "emoji32", store=Store.layered(tmp_path / "user"))


def test_old_pickles_and_key_names_are_read_and_stored_as_today(pipelines, eps, store):
    """A transformers 4 text encoder (`pytorch_model.bin`, keys under `text_model.`, a saved position_ids buffer) and
    an old VAE (attention keys query/key/value/proj_attn) import to the same weights as the current files."""
    text = eps / "text_encoder"
    state = {f"text_model.{k}": v for k, v in load_file(text / "model.safetensors").items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(state, text / "pytorch_model.bin")
    (text / "model.safetensors").unlink()
    vae_file = eps / "vae" / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    vae = {}
    for k, v in load_file(vae_file).items():
        for new, was in old.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{was}.")
        vae[k] = v
    assert any(".query." in k for k in vae)
    save_file(vae, vae_file)
    m = import_sd(eps, "old", store=store)
    assert m.training["imported"]["parts"]["text_encoder"]["file"] == "pytorch_model.bin"
    assert m.digest == import_sd(pipelines["eps"], "today", store=store).digest


def test_the_cli_imports_a_pipeline_and_says_what_it_read_ignored_and_wrote(pipelines, tmp_path, monkeypatch, capsys):
    from diffusers import DDPMScheduler
    from diffusers_models import save_pipeline, tiny_unet

    from diffusetv.cli import main

    root = tmp_path / "user"
    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(root))
    source = shutil.copytree(pipelines["v16"], tmp_path / "v16")
    checker = {"safety_checker": component("StableDiffusionSafetyChecker", "stable_diffusion")}
    edit(source / "model_index.json", **checker, feature_extractor=component("CLIPImageProcessor", "transformers"))
    options = ["--name", "tiny-sd", "--sizes", "24x16,16x16", "--default-guidance", "5"]
    assert is_stable_diffusion(source) and main(["import", "diffusers", str(source), *options]) == 0
    m = Store(root).resolve("tiny-sd")
    assert capsys.readouterr().out.splitlines() == [
        f"imported tiny-sd@1 (diffusers-sd, StableDiffusionPipeline) to {m.path}",
        "  unet: diffusion_pytorch_model.fp16.safetensors (float16 -> float32)",
        "  vae: diffusion_pytorch_model.fp16.safetensors (float16 -> float32)",
        "  text_encoder: model.fp16.safetensors (float16 -> float32)",
        f"  tokenizer: tokenizer.json (sha256:{m.extras['tokenizer']['sha256'][:12]})",
        "  ignored parts: feature_extractor, safety_checker",
        "  scheduler keys ignored as DDIMScheduler does: none",
        "  sizes: 24x16 (default), 16x16",
        f"  sha256:{m.digest}",
    ]
    assert m.training["imported"]["ignored_parts"] == ["feature_extractor", "safety_checker"]
    assert (m.extras["sizes"], m.extras["default_guidance"]) == ([[24, 16], [16, 16]], 5.0)
    unet2d = save_pipeline(tmp_path / "ddpm", tiny_unet(), DDPMScheduler())
    refused = [
        ([unet2d, "--sizes", "16x16"], "--sizes and --default-guidance are for Stable Diffusion pipelines only"),
        ([unet2d, "--default-guidance", "3"], "--sizes and --default-guidance are for Stable Diffusion pipelines"),
        ([source, "--scheduler", source / "scheduler"], "--scheduler is for a UNet2DModel folder"),
        ([source / "unet" / "diffusion_pytorch_model.fp16.safetensors"], "a single-file checkpoint"),
        ([source, "--sizes", "24x16;16x16"], "--sizes: '24x16;16x16' is not WIDTHxHEIGHT"),
    ]
    for given, message in refused:
        assert main(["import", "diffusers", *map(str, given), "--name", "other"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffusetv import: error: ") and message in err and err.count("\n") == 1, err
    assert main(["import", "diffusers", str(source), "--name", "emoji32"]) == 2
    assert "'emoji32' is a bundled model" in capsys.readouterr().err
    assert Store(root).refs() == ["tiny-sd@1"]
