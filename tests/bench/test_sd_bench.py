"""`bench sd`: its pipelines are Stable Diffusion 1.5's shape, and its tiny run writes the figures, the load, the
memory and a parity within two levels. Speeds are never asserted."""

from __future__ import annotations

import importlib.util
import json

import pytest

needs_diffusers = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None or importlib.util.find_spec("transformers") is None,
    reason="diffusers and transformers are not installed (diffusetv[worker])",
)


@needs_diffusers
def test_the_sd15_shape_has_stable_diffusion_15s_parameter_counts():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.sd_pipeline import SD15

    with torch.device("meta"):  # shapes only: no 4.3 GB of weights
        unet = UNet2DConditionModel(**SD15.unet)
        vae = AutoencoderKL(**SD15.vae)
        text = CLIPTextModel(CLIPTextConfig(**SD15.text_encoder, vocab_size=SD15.vocab_size))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]


@needs_diffusers
def test_the_synthetic_tokenizer_has_clips_vocabulary_size_and_specials(tmp_path):
    from transformers import CLIPTokenizer

    from bench.sd_pipeline import write_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(tmp_path / "tokenizer", 49408))
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    prompt = "a photograph of a red heart on the moon café 🍩"
    ids = tokenizer(prompt).input_ids
    assert ids[0] == 49406 and ids[-1] == 49407 and tokenizer.decode(ids[1:-1]) == prompt
    assert len(ids) < len(prompt.encode())  # the words' merges apply
    assert tokenizer(prompt, padding="max_length", max_length=77).input_ids == ids + [49407] * (77 - len(ids))
    with pytest.raises(ValueError, match="cannot hold"):
        write_tokenizer(tmp_path / "small", 100)


@needs_diffusers
@pytest.mark.slow
def test_the_tiny_sd_bench_writes_its_figures_and_a_parity_within_two_levels(tmp_path, capsys):
    from bench.__main__ import main

    out = tmp_path / "sd.json"
    assert main(["sd", "--quick", "--repeats", "2", "--cache", str(tmp_path / "cache"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Stable Diffusion against diffusers: tiny" in printed and "ours/theirs" in printed
    data = json.loads(out.read_text())
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(data["machine"])
    res = data["results"]["sd"]
    assert res["threads"] == 2 and res["steps"] == 2 and res["guidance"] == 7.5 and list(res["pipelines"]) == ["tiny"]
    tiny = res["pipelines"]["tiny"]
    assert tiny["size"] == [32, 32] and tiny["model"] == "sdbench@1" and tiny["engine"].startswith("cpu/fp32/")
    assert [r["batch"] for r in tiny["rows"]] == [1, 4]
    for row in tiny["rows"]:
        assert row["ours_images_per_s"] > 0 and row["theirs_images_per_s"] > 0 and row["ratio"] > 0
        assert row["cpu_ratio"] > 0 and all(
            0 < v < 2 for v in row["runs"]["ours_cpu_share"] + row["runs"]["theirs_cpu_share"]
        )
        assert len(row["runs"]["ours"]) == len(row["runs"]["theirs"]) == 2 and row["runs"]["first"] == [
            "ours",
            "theirs",
        ]
        assert sum(row["calls"]) >= 2 * row["batch"]  # two UNet rows an image, padded to kept call sizes
    assert tiny["parity"]["first_image_level_diff"] <= 2 and tiny["parity"]["level_diff"] <= 2
    assert tiny["parity"]["ours_first_image_same_in_every_run"]
    assert tiny["load_s"] >= tiny["probe_s"] > 0 and not tiny["probe_cached"] and tiny["call_sizes"]
    assert tiny["parameter_bytes"]["total"] == 4 * sum(tiny["parameters"].values())  # fp32
    assert tiny["peak_rss_load"] >= tiny["rss_after_load"] > tiny["parameter_bytes"]["total"]
    assert tiny["peak_rss_run"] > 0 and tiny["engine_memory"]["parameters"] > 0
    profile = tiny["profile"]
    assert set(profile["unet_contiguous_s"]) == {"1", "2", "8"} and set(profile["unet_channels_last_s"]) == {"1", "2"}
    assert profile["decode_row_s"] > 0 and set(profile["one_row_ceiling"]) == {"1", "4"}
    assert tiny["processes"] == 1

    # Again from the cache: nothing is built or imported, the probe comes from the probe cache, and --resume with
    # every repeat done only reports them.
    assert main(["sd", "--quick", "--repeats", "2", "--cache", str(tmp_path / "cache"), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "building" not in printed and "importing" not in printed and "resuming from" in printed
    assert "from the probe cache" in printed and "from 2 processes (resumed)" in printed
