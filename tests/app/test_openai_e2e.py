"""The official `openai` SDK against real processes (Redis, `diffusetv worker`, `diffusetv api`): its images come
out of the same jobs, and are the same bytes, as POST /generate's."""

from __future__ import annotations

import base64
import hashlib

import openai
import pytest

from app.core.png import decode_png
from stack import running_stack

pytestmark = pytest.mark.slow
PUBLIC = "https://tv.example.com"


@pytest.fixture
def stack(tiny_store, redis_server, tmp_path):
    with running_stack(redis_server, tiny_store.root, tmp_path, DIFFUSETV_PUBLIC_URL=PUBLIC) as s:
        yield s


@pytest.fixture
def sdk(stack):
    return openai.OpenAI(base_url=f"{stack.base}/v1", api_key="unused", max_retries=0, timeout=60)


def generated(stack, seed: int, steps: int) -> bytes:
    """POST /generate's PNG for `seed`."""
    with stack.client() as c:
        job = c.post("/generate", json={"seed": seed, "steps": steps})
        assert job.status_code == 202, job.text
        png = c.get(f"/jobs/{job.json()['id']}/image.png", params={"wait": 30})
        assert png.status_code == 200, png.text
        return png.content


def test_four_images_are_generates_pngs_for_seeds_1_to_4(stack, sdk):
    result = sdk.images.generate(
        model="tiny", prompt="", n=4, size="16x16", response_format="b64_json", extra_body={"seed": 1, "steps": 3}
    )
    pngs = [base64.b64decode(image.b64_json) for image in result.data]
    assert len(pngs) == 4 and len(set(pngs)) == 4  # four seeds, four pictures
    assert all(decode_png(png).shape == (16, 16, 3) for png in pngs)
    assert pngs == [generated(stack, seed, 3) for seed in (1, 2, 3, 4)]
    assert [image.revised_prompt for image in result.data] == [""] * 4
    assert result.model_extra["seed"] == 1 and len(result.model_extra["jobs"]) == 4
    with stack.client() as c:
        params = [c.get(f"/jobs/{job_id}").json()["params"]["seed"] for job_id in result.model_extra["jobs"]]
    assert params == [1, 2, 3, 4]


def test_a_wrong_size_is_a_bad_request_naming_size(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(model="tiny", prompt="", n=4, size="1024x1024", extra_body={"seed": 1})
    assert caught.value.param == "size"
    assert "size" in caught.value.message and "16x16" in caught.value.message


def test_urls_are_the_public_urls_of_the_jobs_images_an_unsent_seed_is_drawn_and_a_retry_replays(stack, sdk):
    retry = {"Idempotency-Key": "urls-1"}
    result = sdk.images.generate(
        model="tiny", prompt="", n=2, response_format="url", extra_body={"steps": 2}, extra_headers=retry
    )
    seed, jobs = result.model_extra["seed"], result.model_extra["jobs"]
    assert [image.url for image in result.data] == [f"{PUBLIC}/jobs/{job_id}/image.png" for job_id in jobs]
    assert all(image.b64_json is None for image in result.data)
    with stack.client() as c:
        for i, job_id in enumerate(jobs):
            png = c.get(f"/jobs/{job_id}/image.png")
            assert png.status_code == 200
            assert png.headers["etag"] == f'"{hashlib.sha256(png.content).hexdigest()}"'
            assert c.get(f"/jobs/{job_id}").json()["params"]["seed"] == seed + i
            assert png.content == generated(stack, seed + i, 2)
    again = sdk.images.generate(
        model="tiny", prompt="", n=2, response_format="url", extra_body={"steps": 2}, extra_headers=retry
    )  # the same key and body: the same jobs, and the seed drawn for them
    assert again.model_extra["jobs"] == jobs and again.model_extra["seed"] == seed
