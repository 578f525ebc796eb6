"""What the API asks of the kind registry: request fields and bounds, and what GET /models says (no Redis)."""

import dataclasses

import pytest
from fastapi.exceptions import RequestValidationError

from app import models
from model_store import kinds


def test_a_field_the_kind_does_not_take_is_422_naming_it(tiny_store, monkeypatch):
    texty = dataclasses.replace(kinds.KINDS["ddim-unet"], fields=frozenset({"prompt"}), max_steps=40)
    monkeypatch.setitem(kinds.KINDS, "ddim-unet", texty)
    manifest = tiny_store.resolve("tiny")
    models.check_request(manifest, 40, {"prompt"})  # taken, and within the bound
    with pytest.raises(RequestValidationError) as info:
        models.check_request(manifest, 41, {"prompt", "guidance"})
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [("body", "guidance"), ("body", "steps")]
    assert "does not take 'guidance'" in errors[0]["msg"] and "at most 40 steps" in errors[1]["msg"]


def test_a_sampler_the_model_cannot_run_is_422_on_sampler_with_the_kinds_reason(tiny_store, monkeypatch):
    refusal = lambda manifest, sampler: None if sampler == "ddim" else f"{manifest.ref}: DDIM only"  # noqa: E731
    monkeypatch.setitem(
        kinds.KINDS, "ddim-unet", dataclasses.replace(kinds.KINDS["ddim-unet"], sampler_refusal=refusal)
    )
    manifest = tiny_store.resolve("tiny")
    models.check_request(manifest, 50, set(), "ddim")
    with pytest.raises(RequestValidationError) as info:
        models.check_request(manifest, 1001, set(), "unipc")
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [("body", "steps"), ("body", "sampler")]
    assert errors[1]["msg"] == "sampler 'unipc': tiny@1: DDIM only" and errors[1]["input"] == "unipc"
    assert models.describe(manifest)["samplers"] == ["ddim"]


def test_only_served_kinds_are_offered_and_described(tiny_store):
    from helpers import copy_version

    copy_version(tiny_store, "tiny", 1, kind="feature-cnn")
    copy_version(tiny_store, "tiny", 2, kind="nobody-knows")
    assert [m.ref for m in models.offered(tiny_store)] == ["tiny@1"]
    entry = models.describe(tiny_store.resolve("tiny@1"))
    assert entry["kind"] == "ddim-unet" and entry["shape"] == {"height": 16, "width": 16, "channels": 3}
    assert entry["identity"] == tiny_store.resolve("tiny@1").identity and entry["max_steps"] == 1000
    assert entry["samplers"] == ["ddim", "dpmpp_2m", "unipc"]


def test_the_local_stack_serves_every_servable_model_default_first(tiny_store):
    from app.models import every_served
    from helpers import several_models

    several_models(tiny_store)  # beside tiny: toy (a test kind), lonely (a U-Net), odd (an unregistered kind)
    import toy_kind  # noqa: F401  registers toy-linear, as DIFFUSETV_KIND_MODULES would

    assert every_served(tiny_store, "tiny") == ["tiny", "lonely", "toy"]
    assert every_served(tiny_store, "toy@1") == ["toy@1", "lonely", "tiny"]
    assert every_served(tiny_store, "nope") == ["nope", "lonely", "tiny", "toy"]  # the worker will say it is missing
