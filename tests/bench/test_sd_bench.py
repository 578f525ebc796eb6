"""`bench sd`: its pipelines are Stable Diffusion 1.5's shape."""

from __future__ import annotations

import importlib.util

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
