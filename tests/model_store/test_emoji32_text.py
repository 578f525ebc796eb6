"""The bundled text model, emoji32-text: verified, its vocabulary is its training captions', and it draws colours
that its prompts name (the red heart of docs/API.md)."""

import numpy as np
import pytest

from helpers import require_prerequisite
from model_store import Store
from model_store.store import BUNDLED

pytestmark = pytest.mark.slow

# The weights of the version the bundled one started from (docs/MODEL.md, "How emoji32-text was trained").
EMOJI32_TEXT_2 = "f06aff6cf19331a7a6f10bf3b45bab04aad1e2529c5664727f6f3f2b91def502"


@pytest.fixture(scope="module")
def engine():
    from worker.engine import load_engine

    return load_engine("emoji32-text", Store(BUNDLED), device="cpu")


def test_committed_text_model_verifies_and_records_its_recipe():
    from model_store.text import TextSpec

    manifest = Store(BUNDLED).verify("emoji32-text")
    assert manifest.kind == "ddim-unet-text" and manifest.weights_path.stat().st_size < 20 * 1024 * 1024
    spec = TextSpec.of(manifest)
    assert len(spec.captions) == 1260 and "red heart" in spec.captions
    assert manifest.config["text_vocab"] == len(spec.vocabulary.words) + 2
    assert 0 < spec.default_guidance <= 20
    training = manifest.training
    assert training["steps"] > 0 and training["recipe"]["command"].startswith("diffusetv train")
    assert training["prompt_dropout"] == 0.15


def test_the_bundled_version_records_its_lineage():
    """emoji32-text@1 started from emoji32@1, @2 from @1 (docs/MODEL.md); @3, the bundled version, from @2's
    digest. @1 and @2 are no longer bundled (the repository's history holds them); @2's digest stays in @3's
    record, and @1's in @2's."""
    store = Store(BUNDLED)
    assert [r for r in store.refs() if r.startswith("emoji32-text@")] == ["emoji32-text@3"]
    training = store.verify("emoji32-text@3").training
    assert training["init"] == f"emoji32-text@2 sha256:{EMOJI32_TEXT_2}", training["init"]


def test_the_vocabulary_is_the_training_captions_words():
    require_prerequisite("emoji-font")
    from diffusion import emoji
    from model_store.text import TextSpec
    from model_store.vocabulary import Vocabulary

    data = emoji.build(emoji.DEFAULT_FONT, 32)
    spec = TextSpec.of(Store(BUNDLED).resolve("emoji32-text"))
    assert list(spec.captions) == list(data["train_captions"])
    assert spec.vocabulary == Vocabulary.build(list(data["train_captions"]), spec.vocabulary.tokens)


def test_the_red_heart_of_the_docs_is_red_and_a_blue_heart_is_blue(engine):
    from diffusion.prompt_eval import dominant_hue, hue_name

    for prompt, colour in (("red heart", "red"), ("blue heart", "blue")):
        image = engine.generate([1], 50, [0.0], [engine.condition(prompt, engine.model.text.default_guidance)])[0]
        hue = dominant_hue(image)
        assert hue is not None and hue_name(hue) == colour, (prompt, hue)
        assert np.mean(image.min(axis=-1) > 230) > 0.2  # a glyph on white, not a colour field


def test_the_docs_red_heart_is_what_the_documented_request_gives(tmp_path):
    """docs/img/red-heart.png is seed 1, "red heart", of the newest emoji32-text (the request of docs/API.md, and
    `diffusetv sample` gives the API's bytes). Its `parameters` must match exactly; its pixels may be a level or
    two away on another CPU family (docs/DETERMINISM.md), not more."""
    from PIL import Image

    from helpers import REPO, run_cli

    out = tmp_path / "red-heart.png"
    run_cli("sample", "--model", "emoji32-text", "--seed", "1", "--prompt", "red heart", "--out", str(out),
            env={"DIFFUSETV_MODEL_STORE": str(BUNDLED)})  # fmt: skip
    docs, fresh = Image.open(REPO / "docs" / "img" / "red-heart.png"), Image.open(out)
    assert docs.text == fresh.text, "docs/img/red-heart.png is not the newest emoji32-text's red heart"
    assert np.abs(np.asarray(docs, dtype=int) - np.asarray(fresh, dtype=int)).max() <= 2
