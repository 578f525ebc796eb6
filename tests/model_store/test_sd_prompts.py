"""Kind `diffusers-sd`, torch-free: CLIP's prompt rules, tokens counted with the stored tokenizer.json alone, the
model's sizes and what `GET /models` says of it."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from sd_pipelines import save_sd_pipeline

from model_store import Store, kinds
from model_store.importers.diffusers_sd import import_sd
from model_store.sd_kind import normalise, prompts, token_count, truncated_tokens
from model_store.text import PromptError


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-kind")
    folder = save_sd_pipeline(root / "pipe", seed=1)
    return import_sd(folder, "sd", store=Store(root / "models"), default_guidance=6.0)


def test_prompts_are_normalised_as_clip_reads_them():
    assert normalise("  A  Red\tHEART\n") == "a red heart"
    assert normalise("e\u0301toile") == "\u00e9toile"  # NFC
    assert normalise("red\u200bheart\u202e!\x00\x07") == "redheart!"  # format (Cf) and control (Cc) marks dropped
    assert normalise(None) == normalise("") == ""
    assert normalise("🐱 cat") == "🐱 cat"


def test_the_rules_default_guidance_and_count_truncated_tokens(manifest):
    text = prompts(manifest, "A Red Heart", None)
    assert (text.prompt, text.guidance, text.negative_prompt, text.truncated_tokens) == ("a red heart", 6.0, None, 0)
    assert text.fields() == {"prompt": "a red heart", "guidance": 6.0, "negative_prompt": None}
    assert text.notes() == {}
    empty = prompts(manifest, "   ", 2.0, "")
    assert (empty.prompt, empty.guidance, empty.negative_prompt) == (None, 2.0, None)
    assert prompts(manifest, "x", 7.5, " A Tree ").negative_prompt == "a tree"
    long = prompts(manifest, " ".join(["a red heart on the moon"] * 20), None)
    assert long.truncated_tokens == token_count(manifest, long.prompt) - 77 > 0
    assert long.notes() == {"truncated_tokens": long.truncated_tokens}
    assert truncated_tokens(manifest, "a red heart") == 0 and token_count(manifest, "a red heart") == 5
    with pytest.raises(PromptError, match="guidance"):
        prompts(manifest, "a", 21.0)


def test_the_model_lists_its_sizes_and_refuses_others(manifest):
    kind = kinds.of(manifest)
    assert kind.image_shape(manifest) == (16, 16, 3)
    assert kind.image_shape(manifest, 24, 16) == (16, 24, 3)
    assert kind.image_shape(manifest, None, 24) == (24, 16, 3)
    with pytest.raises(kinds.SizeError, match=r"makes 16x16, 24x16, 16x24 \(width x height\), not 32x16"):
        kind.image_shape(manifest, 32, None)
    entry = kind.describe(manifest)
    assert entry["kind"] == "diffusers-sd" and entry["conditioning"] == "text"
    assert entry["shape"] == {"height": 16, "width": 16, "channels": 3}
    assert entry["sizes"][1] == {"width": 24, "height": 16} and entry["default_guidance"] == 6.0
    assert entry["max_steps"] == 999  # DDIMScheduler's leading grid with steps_offset 1
    one_size = kinds.get("ddim-unet")
    assert one_size.sizes is None


def test_the_api_counts_tokens_without_torch(manifest):
    """The API's half reads the tokenizer with the `tokenizers` package alone."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from model_store import Store\n"
        "from model_store.sd_kind import truncated_tokens\n"
        f"m = Store({str(manifest.path.parent.parent)!r}).resolve('sd')\n"
        "print(truncated_tokens(m, ' '.join(['a red heart on the moon'] * 20)))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 0
