"""A text model end to end, as real processes: redis-server, `diffusetv worker` (two of them, one after the
other) and `diffusetv api` serving `tiny@1` and the text model `words@1`; the CLI gives the same bytes."""

import numpy as np
import pytest
import redis as redis_lib

from app.core.png import decode_png, read_parameters
from helpers import run_cli, save_tiny_text
from stack import running_stack

pytestmark = pytest.mark.slow


@pytest.fixture
def text_stack(tiny_store, redis_server, tmp_path):
    save_tiny_text(tiny_store)
    with running_stack(redis_server, tiny_store.root, tmp_path, DIFFUSETV_MODELS="tiny,words") as s:
        yield s


def finished(c, job) -> tuple[dict, bytes]:
    job = c.get(f"/jobs/{job['id']}", params={"wait": 30}).json()
    assert job["status"] == "succeeded", job
    return job, c.get(job["image_url"]).content


def test_prompted_jobs_keep_their_bytes_alone_batched_on_two_workers_and_in_the_cli(text_stack, tiny_store, tmp_path):
    mine = {"model": "words", "seed": 21, "steps": 12, "prompt": "Red Heart", "guidance": 3.5}
    others = [
        {"model": "words", "seed": 22, "steps": 12, "prompt": "grinning cat with smiling eyes", "guidance": 7.0},
        {"model": "words", "seed": 23, "steps": 12, "eta": 1.0},
        {"model": "words", "seed": 24, "steps": 12, "prompt": "dog", "guidance": 1.0},
    ]
    conn = redis_lib.Redis.from_url(text_stack.redis.url)
    with text_stack.client() as c:
        alone_job, alone = finished(c, c.post("/generate", json=mine).json())
        assert alone_job["batch_size"] == 1
        conn.delete(*conn.keys("diffusetv:cache:*"))
        text_stack.procs["worker"].send_signal(19)  # SIGSTOP: let the jobs queue up, to be batched together
        posted = [c.post("/generate", json=b).json() for b in [*others[:2], mine, others[2]]]
        text_stack.procs["worker"].send_signal(18)  # SIGCONT
        results = [finished(c, j) for j in posted]
        batched_job, batched = results[2]
        assert batched_job["batch_size"] > 1, batched_job
        assert batched == alone
        # a second worker process, started fresh, computes it again
        text_stack.procs["worker"].terminate()
        text_stack.procs["worker"].wait(20)
        text_stack.start_worker("worker2", DIFFUSETV_MODELS="words")
        text_stack.wait_serving("words@1")  # the API refuses a model that no live worker serves
        conn.delete(*conn.keys("diffusetv:cache:*"))
        again_job, again = finished(c, c.post("/generate", json=mine).json())
        assert again == alone and again_job["id"] != alone_job["id"]
    params = read_parameters(alone)
    manifest = tiny_store.resolve("words")
    assert {k: params[k] for k in ("prompt", "guidance", "seed", "steps", "eta", "identity")} == {
        "prompt": "red heart", "guidance": 3.5, "seed": 21, "steps": 12, "eta": 0.0, "identity": manifest.identity,
    }  # fmt: skip
    out = tmp_path / "cli.png"
    run_cli("sample", "--model", "words", "--seed", "21", "--steps", "12", "--prompt", "red   HEART",
            "--guidance", "3.5", "--out", str(out))  # fmt: skip
    assert out.read_bytes() == alone


def test_guidance_0_is_the_prompt_free_pixels_and_a_normalised_repeat_is_a_cache_hit(text_stack):
    with text_stack.client() as c:
        _, free = finished(c, c.post("/generate", json={"model": "words", "seed": 5, "steps": 10}).json())
        zero_body = {"model": "words", "seed": 5, "steps": 10, "prompt": "cat face", "guidance": 0}
        _, zero = finished(c, c.post("/generate", json=zero_body).json())
        assert np.array_equal(decode_png(free), decode_png(zero)) and free != zero
        assert read_parameters(free)["prompt"] is None and read_parameters(zero)["prompt"] == "cat face"
        repeat = c.post("/generate", json={**zero_body, "prompt": " CAT  face "})
        assert repeat.status_code == 202 and repeat.json()["status"] == "succeeded"  # answered from the cache
        assert c.get(repeat.json()["image_url"]).content == zero


def test_an_interpolation_from_cat_face_to_dog_face_ends_on_their_generate_images(text_stack):
    with text_stack.client() as c:
        body = {"model": "words", "seed_a": 3, "seed_b": 4, "frames": 4, "steps": 8, "prompt": "cat face",
                "prompt_b": "dog face", "guidance": 2.0}  # fmt: skip
        job = c.post("/interpolate", json=body).json()
        job = c.get(f"/jobs/{job['id']}", params={"wait": 30}).json()
        assert job["status"] == "succeeded", job
        strip = decode_png(c.get(job["strip_url"]).content)
        side = strip.shape[0]
        frames = [strip[:, i * side : (i + 1) * side] for i in range(4)]
        for seed, prompt, frame in ((3, "cat face", frames[0]), (4, "dog face", frames[-1])):
            one = {"model": "words", "seed": seed, "steps": 8, "prompt": prompt, "guidance": 2.0}
            _, png = finished(c, c.post("/generate", json=one).json())
            assert np.array_equal(decode_png(png), frame), prompt
        assert not np.array_equal(frames[1], frames[2])
        params = read_parameters(c.get(job["image_url"]).content)
        assert (params["prompt"], params["prompt_b"], params["guidance"]) == ("cat face", "dog face", 2.0)
