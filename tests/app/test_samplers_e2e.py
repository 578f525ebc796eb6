"""Samplers end to end, as real processes: redis-server, `diffusetv worker` (two of them, one after the other) and
`diffusetv api`. A dpmpp_2m and a unipc job give the same bytes alone, batched with DDIM jobs of the same model and
steps, on a second worker and in the CLI."""

import numpy as np
import pytest
import redis as redis_lib

from app.core.png import decode_png, read_parameters
from helpers import final_job, run_cli
from stack import running_stack

pytestmark = pytest.mark.slow


def finished(c, job) -> tuple[dict, bytes]:
    job = final_job(c, job["id"])
    assert job["status"] == "succeeded", job
    return job, c.get(job["image_url"]).content


def test_multistep_jobs_keep_their_bytes_alone_batched_with_ddim_on_two_workers_and_in_the_cli(
    redis_server, tiny_store, tmp_path
):
    mine = [{"seed": 31, "steps": 10, "sampler": "dpmpp_2m"}, {"seed": 32, "steps": 10, "sampler": "unipc"}]
    ddim = [{"seed": 33, "steps": 10}, {"seed": 34, "steps": 10, "eta": 1.0, "sampler": "ddim"}]
    with running_stack(redis_server, tiny_store.root, tmp_path) as stack:
        conn = redis_lib.Redis.from_url(stack.redis.url)
        with stack.client() as c:
            alone = [finished(c, c.post("/generate", json=body).json()) for body in mine]
            assert [job["batch_size"] for job, _ in alone] == [1, 1]
            assert alone[0][1] != alone[1][1]
            conn.delete(*conn.keys("diffusetv:cache:*"))
            stack.procs["worker"].send_signal(19)  # SIGSTOP: let the jobs queue up, to be batched together
            posted = [c.post("/generate", json=b).json() for b in [ddim[0], mine[0], ddim[1], mine[1]]]
            stack.procs["worker"].send_signal(18)  # SIGCONT
            batched = [finished(c, j) for j in posted]
            assert batched[1][0]["batch_size"] > 1 and batched[3][0]["batch_size"] > 1, batched
            assert [batched[1][1], batched[3][1]] == [alone[0][1], alone[1][1]]
            stack.procs["worker"].terminate()
            stack.procs["worker"].wait(60)
            stack.start_worker("worker2")
            stack.wait_serving("tiny@1")
            conn.delete(*conn.keys("diffusetv:cache:*"))
            again = [finished(c, c.post("/generate", json=body).json()) for body in mine]
            assert [a[1] for a in again] == [a[1] for a in alone]
            assert again[0][0]["params"]["sampler"] == "dpmpp_2m" and "sampler" not in batched[0][0]["params"]
            # an interpolation of the sampler ends on its /generate images
            walk = final_job(c, c.post("/interpolate", json={"seed_a": 32, "seed_b": 31, "frames": 3, "steps": 10,
                                                             "sampler": "unipc"}).json()["id"])  # fmt: skip
            strip = decode_png(c.get(walk["strip_url"]).content)
            side = strip.shape[0]
            assert np.array_equal(strip[:, :side], decode_png(alone[1][1]))
            other = finished(c, c.post("/generate", json={"seed": 31, "steps": 10, "sampler": "unipc"}).json())[1]
            assert np.array_equal(strip[:, 2 * side :], decode_png(other))
    params = read_parameters(alone[1][1])
    assert (params["sampler"], params["seed"], params["steps"]) == ("unipc", 32, 10)
    out = tmp_path / "cli.png"
    run_cli("sample", "--model", "tiny", "--seed", "32", "--steps", "10", "--sampler", "unipc", "--out", str(out))
    assert out.read_bytes() == alone[1][1]
