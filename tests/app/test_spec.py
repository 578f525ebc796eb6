"""The job spec (app.core.spec): one object from the route to the worker, whose keys stay what they were.

The golden values were computed by the code before the spec existed (engine_key's loose arguments and
Engine.parameters'), so a spec that keys or labels a request differently fails here."""

import json
from dataclasses import dataclass

import pytest

from app.core.png import encode_png, parameters_json
from app.core.runs import engine_key
from app.core.spec import GenerateSpec, InterpolateSpec, InvertSpec, SpecError
from app.schemas import GenerateRequest, InterpolateRequest, InvertRequest
from model_store import Store

ENGINE = "cpu/fp32/0123456789abcdef"
JOB = "0" * 32
TINY, TEXT = ("a" * 64, "tiny@1"), ("b" * 64, "emoji32-text@4")
GOLDEN = {  # (identity, ref, seed, steps, eta, engine[, prompt, guidance]) -> sha256, as keyed before the spec
    "prompt-free": "beafb5573294bfc537bcb5e4395ac73fea3cdc7da325270b75a7398d871bf1a5",
    "prompted": "06c0b52729aac56f50578acb8d7428346fd587dd7efc8284b75d05f71a0011ac",
    "pending": "d8bba3dcc702939b7c0a8c28ccd06ebabfab86e7ca083796af14358f20442e2e",
}


def prompt_free(spec=GenerateSpec, **more):
    return spec(JOB, TINY[1], TINY[0], seed=42, steps=50, eta=0.0, **more)


def prompted(spec=GenerateSpec, **more):
    return spec(JOB, TEXT[1], TEXT[0], seed=7, steps=20, eta=0.5, prompt="red heart", guidance=3.0, **more)


def test_the_engine_keys_are_those_of_before():
    assert engine_key(prompt_free(), ENGINE) == GOLDEN["prompt-free"]
    assert engine_key(prompted(), ENGINE) == GOLDEN["prompted"]
    assert engine_key(prompt_free(), "pending") == GOLDEN["pending"]  # the join key before a worker reports


def test_previews_and_the_job_id_are_outside_the_key_minus_zero_is_zero():
    assert engine_key(prompt_free(previews=True), ENGINE) == GOLDEN["prompt-free"]
    other = GenerateSpec("1" * 32, TINY[1], TINY[0], seed=42, steps=50, eta=-0.0)
    assert engine_key(other, ENGINE) == GOLDEN["prompt-free"]
    assert engine_key(prompt_free(), ENGINE.replace("0123", "9999")) != GOLDEN["prompt-free"]


def test_the_png_encoder_is_in_the_key_so_every_key_changed_once():
    """A worker's engine names its PNG encoder (worker.engine.Engine.encoder): keys of before it are orphaned once,
    and workers whose encoders differ never share a key."""
    with_encoder = engine_key(prompt_free(), f"{ENGINE}/00112233aabbccdd")
    assert with_encoder not in GOLDEN.values()
    assert with_encoder != engine_key(prompt_free(), f"{ENGINE}/ffffffffffffffff")
    assert with_encoder == engine_key(prompt_free(previews=True), f"{ENGINE}/00112233aabbccdd")


def test_picture_fields_join_the_key_only_when_given():
    base = engine_key(prompt_free(), ENGINE)
    pictured = engine_key(prompt_free(image="c" * 64, strength=0.5), ENGINE)
    assert pictured != base and pictured != engine_key(prompt_free(image="c" * 64, strength=0.6), ENGINE)
    assert engine_key(prompt_free(image="c" * 64, strength=0.5, mask="d" * 64), ENGINE) != pictured
    assert engine_key(prompt_free(harmonize=0), ENGINE) == base  # a default joins nothing


BUNDLED_PARAMETERS = {  # Engine.parameters of the bundled models before the spec, on an fp32 CPU engine
    "emoji32@1": '{"device":"cpu","digest":"e0f310630721b5977116adbc3cf607dba2549537054ac6e7f914c50d70822fd2",'
    '"eta":0.0,"identity":"111ad635c361de98e018957cc7f3cd41ee80e9c9fe0c23fc76917679ec7dfbc5","model":"emoji32",'
    '"precision":"fp32","seed":42,"steps":50,"version":1}',
    "emoji32-text@4": '{"device":"cpu","digest":"1c612e73041205f495d48e94647691816309787d16c88cc971c44966dd4531bf",'
    '"eta":0.0,"guidance":null,"identity":"0597319f48f7c14dbbcfc31e15f9ed7f7dc03583647e1e47e3cf7f8e7a90534c",'
    '"model":"emoji32-text","precision":"fp32","prompt":null,"seed":42,"steps":50,"version":4}',
    "emoji32-text@4 prompted": '{"device":"cpu","digest":'
    '"1c612e73041205f495d48e94647691816309787d16c88cc971c44966dd4531bf","eta":0.5,"guidance":3.0,"identity":'
    '"0597319f48f7c14dbbcfc31e15f9ed7f7dc03583647e1e47e3cf7f8e7a90534c","model":"emoji32-text","precision":'
    '"fp32","prompt":"red heart","seed":1,"steps":20,"version":4}',
    "emoji32-text@4 walk": '{"device":"cpu","digest":'
    '"1c612e73041205f495d48e94647691816309787d16c88cc971c44966dd4531bf","eta":0.0,"frames":4,"guidance":3.0,'
    '"identity":"0597319f48f7c14dbbcfc31e15f9ed7f7dc03583647e1e47e3cf7f8e7a90534c","model":"emoji32-text",'
    '"precision":"fp32","prompt":"red heart","prompt_b":null,"seed_a":1,"seed_b":2,'
    '"steps":10,"version":4}',
}


def bundled_engine(ref: str):
    """An fp32 CPU engine's labels for a bundled model: Engine.parameters reads only the manifest and the engine."""
    from worker.engine import Engine

    return Engine(Store().resolve(ref), None, None, "cpu", "fp32", None)


def test_the_png_parameters_are_those_of_before():
    plain, text = bundled_engine("emoji32@1"), bundled_engine("emoji32-text@4")

    def labels(engine, spec_type=GenerateSpec, **fields):
        spec = spec_type(JOB, engine.manifest.ref, engine.manifest.identity, **fields)
        return parameters_json(engine.parameters(spec))

    assert labels(plain, seed=42, steps=50, eta=0.0) == BUNDLED_PARAMETERS["emoji32@1"]
    assert labels(text, seed=42, steps=50, eta=0.0) == BUNDLED_PARAMETERS["emoji32-text@4"]
    walk = {"seed_a": 1, "seed_b": 2, "frames": 4, "steps": 10, "prompt": "red heart", "guidance": 3.0}
    assert (
        labels(text, seed=1, steps=20, eta=0.5, prompt="red heart", guidance=3.0)
        == BUNDLED_PARAMETERS["emoji32-text@4 prompted"]
    )
    assert labels(text, InterpolateSpec, **walk) == BUNDLED_PARAMETERS["emoji32-text@4 walk"]


def test_params_and_kwargs_name_what_the_request_set():
    assert prompt_free().params() == {"seed": 42, "steps": 50, "eta": 0.0}
    assert prompted().params({"ignored_words": ["xyzzy"]}) == {
        "seed": 7, "steps": 20, "eta": 0.5, "prompt": "red heart", "guidance": 3.0, "ignored_words": ["xyzzy"],
    }  # fmt: skip
    assert prompt_free(previews=True).params()["previews"] is True
    kwargs = prompted().to_kwargs()
    assert kwargs == {"job_id": JOB, "model_ref": TEXT[1], "identity": TEXT[0], **prompted().params()}
    assert GenerateSpec.from_kwargs(json.loads(json.dumps(kwargs))) == prompted()


def test_a_spec_from_a_request_takes_the_bodys_fields_and_the_normalised_ones():
    manifest = Store().resolve("emoji32-text@4")
    body = GenerateRequest(seed=9, prompt="  Red   HEART ", previews=True)
    spec = GenerateSpec.from_request(body, manifest, prompt="red heart", guidance=3.0)
    assert (spec.seed, spec.steps, spec.eta, spec.previews) == (9, 50, 0.0, True)
    assert (spec.prompt, spec.guidance, spec.model_ref, spec.identity) == (
        "red heart",
        3.0,
        manifest.ref,
        manifest.identity,
    )
    assert len(spec.job_id) == 32 and spec.job_id != GenerateSpec.from_request(body, manifest).job_id
    walk = InterpolateSpec.from_request(InterpolateRequest(seed_a=1, seed_b=2), manifest)
    assert walk.params() == {"seed_a": 1, "seed_b": 2, "frames": 8, "steps": 50}
    assert walk.cost(32, 3) > prompt_free().cost(32, 3)  # 16 images: the animation and the strip


def test_batch_keys_split_models_and_steps_not_seeds_or_prompts():
    assert prompt_free().batch_key() == prompt_free(previews=True).batch_key()
    same = GenerateSpec(JOB, TEXT[1], TEXT[0], seed=1, steps=20, eta=0.0)
    assert prompted().batch_key() == same.batch_key()
    assert prompted().batch_key() != GenerateSpec(JOB, TEXT[1], TEXT[0], seed=7, steps=21, eta=0.5).batch_key()
    assert prompt_free().batch_key() != GenerateSpec(JOB, TEXT[1], TEXT[0], seed=42, steps=50, eta=0.0).batch_key()


def test_decoding_ignores_retired_fields_and_refuses_unknown_or_missing_ones():
    old = {**prompt_free().to_kwargs(), "previews": False, "prompt": None, "guidance": None, "run_key": "f" * 64}
    assert GenerateSpec.from_kwargs(old) == prompt_free()
    with pytest.raises(SpecError, match=r"\['scheduler'\].*upgrade the workers"):
        GenerateSpec.from_kwargs({**prompt_free().to_kwargs(), "scheduler": "karras"})
    with pytest.raises(SpecError, match="incomplete"):
        GenerateSpec.from_kwargs({k: v for k, v in prompt_free().to_kwargs().items() if k != "seed"})


# A field added later, as the issues to come add them: only the request schema and the spec change.
class DummyRequest(GenerateRequest):
    dummy: int = 0


@dataclass(frozen=True)
class DummySpec(GenerateSpec):
    dummy: int = 0


def test_a_new_optional_field_at_its_default_changes_no_key_params_or_png_byte(tiny_store):
    from worker.engine import load_engine

    manifest = tiny_store.resolve("tiny")
    base = GenerateSpec.from_request(GenerateRequest(seed=42, steps=50), manifest)
    at_default = DummySpec.from_request(DummyRequest(seed=42, steps=50), manifest)
    given = DummySpec.from_request(DummyRequest(seed=42, steps=50, dummy=3), manifest)
    golden = GenerateSpec(JOB, manifest.ref, manifest.identity, seed=42, steps=50, eta=0.0)
    assert engine_key(at_default, ENGINE) == engine_key(base, ENGINE) == engine_key(golden, ENGINE)
    assert engine_key(given, ENGINE) != engine_key(base, ENGINE)
    assert at_default.params() == base.params() and given.params() == {**base.params(), "dummy": 3}
    assert {**at_default.to_kwargs(), "job_id": JOB} == {**base.to_kwargs(), "job_id": JOB}
    assert DummySpec.from_kwargs(given.to_kwargs()) == given
    with pytest.raises(SpecError, match="dummy"):  # a worker that does not know it refuses the job
        GenerateSpec.from_kwargs(given.to_kwargs())
    assert at_default.batch_key() == base.batch_key()

    engine = load_engine("tiny", tiny_store, device="cpu")
    pixels = engine.generate([42], 4, [0.0])[0]
    png = encode_png(pixels, engine.parameters(base))
    assert encode_png(pixels, engine.parameters(at_default)) == png
    labelled = encode_png(pixels, engine.parameters(given))
    assert labelled != png and b'"dummy":3' in labelled


SD = ("c" * 64, "sd@1")


def test_compute_counts_two_rows_a_sample_when_guided_and_keeps_the_existing_kinds_counts():
    assert prompt_free().compute() == 50 and prompted().compute() == 40  # as before: rows x steps, twice with a prompt
    walk = InterpolateSpec(JOB, TEXT[1], TEXT[0], seed_a=1, seed_b=2, frames=4, steps=10)
    assert walk.compute() == 40
    assert InterpolateSpec(JOB, TEXT[1], TEXT[0], 1, 2, 4, 10, prompt="red heart", guidance=3.0).compute() == 80

    def latent(**fields):  # a diffusers-sd job: every job guided, the empty prompt too (prompt None)
        return GenerateSpec(JOB, SD[1], SD[0], seed=1, steps=50, eta=0.0, width=512, height=512, **fields)

    assert latent(guidance=7.5).compute() == 100  # the unconditional row beside the empty prompt's
    assert latent(guidance=1.0).compute() == 50  # s <= 1: the conditional row alone
    assert latent(prompt="a cat", guidance=7.5).compute() == 100


def test_work_says_what_a_kinds_estimate_reads():
    from model_store.bounds import MAX_GUIDANCE
    from model_store.kinds import Work

    spec = GenerateSpec(JOB, SD[1], SD[0], 1, 30, 0.0, prompt="a cat", guidance=7.5, width=768, height=512)
    assert spec.work() == Work(1, 30, 7.5, 1, 768, 512)
    assert GenerateSpec(JOB, SD[1], SD[0], 1, 30, 0.0, guidance=2.0, negative_prompt="dog").work().prompts == 2
    assert spec.batch_work() == Work(1, 30, MAX_GUIDANCE, 2, 768, 512)  # the costliest job of its batch key
    walk = InterpolateSpec(
        JOB, SD[1], SD[0], 1, 2, 6, 20, prompt="a", prompt_b="b", guidance=7.5, width=512, height=512
    )
    assert walk.work() == Work(6, 20, 7.5, 2, 512, 512)
    assert prompt_free().work() == Work(1, 50, None, 1)


# The key of a `dpmpp_2m` job: sha256 of its canonical JSON, the DDIM job's fields and `"sampler":"dpmpp_2m"`.
MULTISTEP_KEY = "c904e0b1dab0e1d285c355ae119aeee0107852c15406dd1a86efe4969af6bd88"
MULTISTEP_JSON = (
    '{"device":"cpu","eta":0.0,"identity":"' + "a" * 64 + '","kernels":"0123456789abcdef","model":"tiny@1",'
    '"precision":"fp32","sampler":"dpmpp_2m","seed":42,"steps":50}'
)


def test_a_ddim_job_keeps_its_key_params_png_and_kwargs_and_another_sampler_is_named_in_each():
    import hashlib

    assert engine_key(prompt_free(sampler="ddim"), ENGINE) == GOLDEN["prompt-free"]
    assert engine_key(prompted(sampler="ddim"), ENGINE) == GOLDEN["prompted"]
    assert prompt_free(sampler="ddim").to_kwargs() == prompt_free().to_kwargs()
    assert "sampler" not in prompt_free().to_kwargs() and "sampler" not in prompt_free().png_parameters()

    multistep = prompt_free(sampler="dpmpp_2m")
    assert engine_key(multistep, ENGINE) == MULTISTEP_KEY == hashlib.sha256(MULTISTEP_JSON.encode()).hexdigest()
    assert engine_key(prompt_free(sampler="unipc"), ENGINE) not in (MULTISTEP_KEY, *GOLDEN.values())
    assert multistep.params() == {"seed": 42, "steps": 50, "eta": 0.0, "sampler": "dpmpp_2m"}
    assert multistep.png_parameters() == multistep.params()
    kwargs = json.loads(json.dumps(multistep.to_kwargs()))
    assert kwargs["sampler"] == "dpmpp_2m" and GenerateSpec.from_kwargs(kwargs) == multistep


def test_the_walk_and_the_inversion_name_a_sampler_other_than_ddim():
    walk = {"seed_a": 1, "seed_b": 2, "frames": 4, "steps": 10}
    ddim_walk = InterpolateSpec(JOB, TINY[1], TINY[0], **walk, sampler="ddim")
    assert ddim_walk == InterpolateSpec(JOB, TINY[1], TINY[0], **walk)
    assert ddim_walk.png_parameters() == {**walk, "eta": 0.0}
    unipc_walk = InterpolateSpec(JOB, TINY[1], TINY[0], **walk, sampler="unipc")
    assert unipc_walk.png_parameters() == {**walk, "sampler": "unipc", "eta": 0.0}
    assert engine_key(unipc_walk, ENGINE) != engine_key(ddim_walk, ENGINE)

    inversion = InvertSpec(JOB, TINY[1], TINY[0], image="c" * 64, steps=20)
    multistep = InvertSpec(JOB, TINY[1], TINY[0], image="c" * 64, steps=20, sampler="dpmpp_2m")
    assert inversion.params() == {"image": "c" * 64, "steps": 20}
    assert multistep.params() == {"image": "c" * 64, "steps": 20, "sampler": "dpmpp_2m"}
    assert engine_key(multistep, ENGINE) != engine_key(inversion, ENGINE)
    assert InvertSpec.from_kwargs(multistep.to_kwargs()) == multistep


def test_inversions_of_two_samplers_never_share_a_batch_generations_leave_it_to_the_worker():
    inversion = InvertSpec(JOB, TINY[1], TINY[0], image="c" * 64, steps=20)
    assert inversion.batch_key() != InvertSpec(JOB, TINY[1], TINY[0], "c" * 64, 20, sampler="dpmpp_2m").batch_key()
    assert inversion.batch_key() == InvertSpec(JOB, TINY[1], TINY[0], "d" * 64, 20, sampler="ddim").batch_key()
    # the grid its sampler calls the network on joins a generation's batch key at the worker (Engine.batch_key)
    assert prompt_free(sampler="unipc").batch_key() == prompt_free().batch_key()


def test_a_request_without_a_sampler_is_ddim_and_the_spec_takes_the_one_sent():
    manifest = Store().resolve("emoji32@1")
    assert GenerateSpec.from_request(GenerateRequest(seed=1), manifest).sampler == "ddim"
    assert GenerateSpec.from_request(GenerateRequest(seed=1, sampler="unipc"), manifest).sampler == "unipc"
    walk = InterpolateSpec.from_request(InterpolateRequest(seed_a=1, seed_b=2, sampler="dpmpp_2m"), manifest)
    assert walk.sampler == "dpmpp_2m"
    inversion = InvertSpec.from_request(InvertRequest(image="x", sampler="dpmpp_2m"), manifest, image="c" * 64)
    assert (inversion.sampler, inversion.image) == ("dpmpp_2m", "c" * 64)


def test_the_schemas_sampler_names_are_the_stores():
    from typing import get_args

    from app.schemas import SamplerName
    from model_store.samplers import DEFAULT_SAMPLER, SAMPLERS

    assert get_args(SamplerName) == SAMPLERS
    for request in (GenerateRequest, InterpolateRequest, InvertRequest):
        assert request.model_fields["sampler"].default == DEFAULT_SAMPLER
