"""A job's time (app.core.timeouts): JOB_TIMEOUT, or its model's work at MIN_GFLOPS where the model records its FLOPs;
what the API enqueues with it, the records' TTLs it sets, and the 422s past MAX_JOB_TIMEOUT."""

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from rq.job import Job
from rq.serializers import JSONSerializer

from app.core import keys, timeouts
from app.core.settings import Settings
from app.core.spec import GenerateSpec, InterpolateSpec
from app.main import create_app
from helpers import SD15_FLOPS, claim_as_worker, save_sd_manifest

JOB = "0" * 32
SD15_DEFAULT_JOB = 50 * 2 * SD15_FLOPS["unet_row"] + SD15_FLOPS["vae_decode"] + SD15_FLOPS["text_encoder"]


@pytest.fixture
def sd(tiny_store):
    return save_sd_manifest(tiny_store)


def generation(manifest, steps=50, guidance=7.5, width=512, height=512, **fields) -> GenerateSpec:
    return GenerateSpec(
        JOB, manifest.ref, manifest.identity, 1, steps, 0.0, guidance=guidance, width=width, height=height, **fields
    )


def walk(manifest, frames=8, steps=50, guidance=7.5, **fields) -> InterpolateSpec:
    return InterpolateSpec(
        JOB, manifest.ref, manifest.identity, 1, 2, frames, steps, guidance=guidance, width=512, height=512, **fields
    )


def test_a_models_work_at_min_gflops_sets_its_jobs_time_never_under_job_timeout(sd, tiny_store):
    settings = Settings()
    assert (settings.job_timeout, settings.min_gflops, settings.max_job_timeout) == (600, 20.0, 21_600)
    assert timeouts.flops(sd, generation(sd).work()) == SD15_DEFAULT_JOB == 82_855_161_565_184
    assert timeouts.job_timeout(settings, sd, generation(sd)) == 4143  # 82.86 TFLOP / 20 GFLOP/s, rounded up
    assert timeouts.job_timeout(settings, sd, generation(sd, width=768)) == 6214  # 1.5 x the pixels
    assert timeouts.job_timeout(settings, sd, generation(sd, guidance=1.0)) == 2135  # one row a step
    assert timeouts.job_timeout(settings, sd, generation(sd, steps=2)) == 600  # the floor: JOB_TIMEOUT
    assert timeouts.job_timeout(Settings(min_gflops=1000), sd, generation(sd)) == 600  # a GPU's rate
    assert timeouts.job_timeout(Settings(min_gflops=1000, job_timeout=5), sd, generation(sd)) == 83
    tiny = tiny_store.resolve("tiny")  # a model that records no FLOPs: JOB_TIMEOUT, whatever it asks
    spec = GenerateSpec(JOB, tiny.ref, tiny.identity, 1, 1000, 0.0)
    assert timeouts.flops(tiny, spec.work()) is None
    assert timeouts.job_timeout(Settings(job_timeout=77), tiny, spec) == 77


def test_seconds_are_rounded_up_exactly():
    settings = Settings()
    assert timeouts.seconds(settings, 600 * 20 * 10**9) == 600
    assert timeouts.seconds(settings, 600 * 20 * 10**9 + 1) == 601
    assert timeouts.seconds(Settings(min_gflops=0.5), 10**9) == 2


def test_the_most_steps_and_frames_that_fit_max_job_timeout(sd):
    settings = Settings()
    assert timeouts.most(settings, sd, generation(sd), "steps", 1, 1000) == 267
    assert timeouts.job_timeout(settings, sd, generation(sd, steps=267)) == 21_574
    assert timeouts.job_timeout(settings, sd, generation(sd, steps=268)) > 21_600
    assert timeouts.most(settings, sd, walk(sd), "frames", 2, 32) == 5
    assert timeouts.most(settings, sd, walk(sd, steps=1), "frames", 2, 32) == 32  # all fit: the upper bound
    assert timeouts.most(settings, sd, walk(sd, steps=300), "frames", 2, 32) == 1  # none fits: one under the lower


def test_max_job_timeout_is_at_least_job_timeout_and_at_most_a_day():
    assert Settings(job_timeout=900, max_job_timeout=900).max_job_timeout == 900
    with pytest.raises(ValidationError, match=r"MAX_JOB_TIMEOUT \(899\) must be at least DIFFUSETV_JOB_TIMEOUT"):
        Settings(job_timeout=900, max_job_timeout=899)
    with pytest.raises(ValidationError):
        Settings(max_job_timeout=86_401)
    with pytest.raises(ValidationError):
        Settings(min_gflops=0)


def test_a_pending_jobs_ttl_covers_its_own_runs():
    settings = Settings(result_ttl=3600, max_retries=2)
    assert settings.pending_ttl(600) == 3600 + 3 * 600
    assert settings.pending_ttl(4143) == 3600 + 3 * 4143


@pytest.fixture
def client(sd, tiny_store, redis_server):
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny")
    claim_as_worker(redis_server.url)
    claim_as_worker(redis_server.url, sd.ref)
    with TestClient(create_app(settings)) as c:
        c.redis = c.app.state.redis
        yield c


def rq_job(client, job_id: str) -> Job:
    return Job.fetch(job_id, connection=client.redis, serializer=JSONSerializer)


def test_the_api_enqueues_each_job_with_its_time_and_its_records_live_as_long(client):
    settings = client.app.state.settings
    long = client.post("/generate", json={"seed": 1, "model": "sd"})
    assert long.status_code == 202, long.text
    job_id = long.json()["id"]
    assert rq_job(client, job_id).timeout == 4143
    pending = settings.pending_ttl(4143)
    assert settings.pending_ttl(settings.job_timeout) < client.redis.ttl(keys.job(job_id)) <= pending
    assert settings.pending_ttl(settings.job_timeout) < client.redis.ttl(f"rq:job:{job_id}") <= pending
    assert client.redis.ttl(keys.run(job_id)) > settings.pending_ttl(settings.job_timeout)
    again = client.post("/generate", json={"seed": 1, "model": "sd"}).json()  # joins the run: the same time
    assert again["id"] != job_id and client.redis.ttl(keys.job(again["id"])) > settings.pending_ttl(600)
    short = client.post("/generate", json={"seed": 1, "steps": 1000}).json()  # tiny records no FLOPs
    assert rq_job(client, short["id"]).timeout == settings.job_timeout
    assert client.redis.ttl(keys.job(short["id"])) <= settings.pending_ttl(settings.job_timeout)
    prompted = client.post("/generate", json={"seed": 2, "model": "sd", "prompt": "a cat", "negative_prompt": "dog"})
    # two prompts to encode: 13.3 GFLOP more, under a second at 20 GFLOP/s
    assert prompted.status_code == 202 and rq_job(client, prompted.json()["id"]).timeout == 4144


def test_a_generation_past_max_job_timeout_is_422_naming_steps_and_the_most_that_fit(client):
    r = client.post("/generate", json={"seed": 1, "model": "sd", "steps": 268})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "steps"] and error["input"] == 268
    assert "sd@1 takes at most 267 steps at 512x512 with this guidance" in error["msg"]
    assert "DIFFUSETV_MAX_JOB_TIMEOUT (21600 s)" in error["msg"] and "DIFFUSETV_MIN_GFLOPS=20 GFLOP/s" in error["msg"]
    assert client.post("/generate", json={"seed": 1, "model": "sd", "steps": 267}).status_code == 202
    unguided = client.post("/generate", json={"seed": 1, "model": "sd", "steps": 500, "guidance": 1.0})
    assert unguided.status_code == 202  # one row a step: twice the steps fit
    wide = client.post("/generate", json={"seed": 1, "model": "sd", "steps": 268, "width": 768})
    assert "at most 177 steps at 768x512" in wide.json()["detail"][0]["msg"]
    assert client.post("/generate", json={"seed": 1, "steps": 1000}).status_code == 202  # no FLOPs: no bound


def test_an_interpolation_past_max_job_timeout_is_422_naming_frames_and_the_most_that_fit(client):
    r = client.post("/interpolate", json={"seed_a": 1, "seed_b": 2, "model": "sd", "frames": 6})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "frames"] and error["input"] == 6
    assert "sd@1 takes at most 5 frames at 512x512 with this guidance and 50 steps" in error["msg"]
    ok = client.post("/interpolate", json={"seed_a": 1, "seed_b": 2, "model": "sd", "frames": 5})
    assert ok.status_code == 202 and rq_job(client, ok.json()["id"]).timeout == 20_712
    # too long even at 2 frames: fewer steps are what fit, so `steps` is named
    r = client.post("/interpolate", json={"seed_a": 1, "seed_b": 2, "model": "sd", "frames": 4, "steps": 200})
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "steps"] and error["input"] == 200
    assert "at most 65 steps at 512x512 with this guidance and 4 frames" in error["msg"]
    tiny = client.post("/interpolate", json={"seed_a": 1, "seed_b": 2, "frames": 32, "steps": 1000})
    assert tiny.status_code == 202  # no FLOPs: no bound


def test_the_refusal_needs_no_live_worker(client, sd):
    client.redis.delete(keys.engine(sd.ref))
    assert client.post("/generate", json={"seed": 1, "model": "sd", "steps": 300}).status_code == 422
    assert client.post("/generate", json={"seed": 1, "model": "sd"}).status_code == 503


def test_a_latent_model_imported_without_flops_keeps_job_timeout(client, tiny_store, redis_server):
    old = save_sd_manifest(tiny_store, "old", flops=None)
    claim_as_worker(redis_server.url, old.ref)
    r = client.post("/generate", json={"seed": 1, "model": "old", "steps": 999})
    assert r.status_code == 202, r.text
    assert rq_job(client, r.json()["id"]).timeout == client.app.state.settings.job_timeout
