"""The registry of model kinds and the model identity (torch-free parts)."""

import re
import subprocess

import pytest

from helpers import REPO, copy_version
from model_store import ModelStoreError, kinds
from model_store.manifest import MANIFEST


def test_built_in_kinds_say_what_is_served():
    assert kinds.get("ddim-unet").served and kinds.get("ddim-unet").conditioning == "none"
    assert not kinds.get("feature-cnn").served  # stored beside the models, never offered


def test_an_unknown_kind_is_one_line_naming_it_and_its_manifest(tiny_store):
    copy_version(tiny_store, "tiny", 1, kind="mystery-net")
    manifest = tiny_store.resolve("tiny@2")
    with pytest.raises(ModelStoreError) as info:
        kinds.of(manifest)
    message = str(info.value)
    assert "\n" not in message and "'mystery-net'" in message and str(manifest.path / MANIFEST) in message


def test_identity_covers_the_schedule_and_normalisation_not_only_the_weights(tiny_store):
    copy_version(tiny_store, "tiny", 1, schedule="cosine")
    copy_version(tiny_store, "tiny", 2, normalization={"mean": [0.5] * 3, "std": [0.2] * 3})
    v1, v2, v3 = (tiny_store.resolve(f"tiny@{v}") for v in (1, 2, 3))
    assert v1.digest == v2.digest == v3.digest  # the weights' file hash: the same bytes
    assert len({v1.identity, v2.identity, v3.identity}) == 3
    assert re.fullmatch(r"[0-9a-f]{64}", v1.identity)


def test_identity_ignores_what_does_not_decide_the_output(tiny_store):
    copy_version(tiny_store, "tiny", 1, training={"steps": 12345, "note": "another record"})
    assert tiny_store.resolve("tiny@1").identity == tiny_store.resolve("tiny@2").identity


def test_identity_covers_fields_a_kind_adds(tiny_store):
    """A field this version does not know (a later kind's vocabulary, say) still changes the identity."""
    copy_version(tiny_store, "tiny", 1, vocabulary=["cat", "dog"])
    v2 = tiny_store.resolve("tiny@2")
    assert v2.extras == {"vocabulary": ["cat", "dog"]} and v2.to_json()["vocabulary"] == ["cat", "dog"]
    assert v2.identity != tiny_store.resolve("tiny@1").identity


def test_kind_modules_register_more_kinds(monkeypatch):
    monkeypatch.setitem(kinds.KINDS, "ddim-unet", kinds.KINDS["ddim-unet"])  # restored after the test
    kinds.load_modules(["toy_kind"])
    assert kinds.get("toy-linear").max_steps == 50 and kinds.get("toy-linear").served
    with pytest.raises(ModelStoreError, match="kind module 'no_such_kinds' cannot be imported"):
        kinds.load_modules(["no_such_kinds"])


def test_no_branch_on_a_kind_outside_the_registry():
    """One mechanism per concern: what a model kind means is said once, in model_store.kinds and its modules.
    (A job's own kind, generate, interpolate or invert, is another thing.)"""
    vendored = ":(exclude)app/static/swagger-ui"  # Swagger UI's own files, not ours
    lines = subprocess.run(
        ["git", "grep", "-nE", "kind", "--", "*.py", "*.js", vendored], cwd=REPO, capture_output=True, text=True
    ).stdout.splitlines()
    job_kinds = "interpolate|generate|invert"
    model_kind = rf"""\.kind\s*(==|!=|in\b)(?![=\s]*['"]({job_kinds})['"])|(==|!=)\s*['"](ddim-unet|feature-cnn)"""
    job_kind = rf"""\bkind\s*(==|!=)\s*['"](?!{job_kinds})"""
    branch = re.compile(f"{model_kind}|{job_kind}")
    allowed = ("model_store/kinds.py:", "tests/")
    assert [line for line in lines if branch.search(line) and not line.startswith(allowed)] == []


def test_a_kind_runs_ddim_alone_unless_it_says_otherwise(tmp_path):
    import dataclasses

    from model_store import kinds

    plain = dataclasses.replace(kinds.KINDS["ddim-unet"], name="plug-in", sampler_refusal=None)
    assert plain.refuse_sampler(_stub("plug-in"), "ddim") is None
    assert "runs ddim alone" in plain.refuse_sampler(_stub("plug-in"), "unipc")
    assert plain.samplers(_stub("plug-in")) == ["ddim"]
    assert kinds.KINDS["ddim-unet"].samplers(_stub("ddim-unet")) == ["ddim", "dpmpp_2m", "unipc"]
    assert "unknown sampler" in plain.refuse_sampler(_stub("plug-in"), "euler")


def _stub(kind: str):
    from types import SimpleNamespace

    return SimpleNamespace(ref="mine@1", kind=kind, extras={}, config={})
