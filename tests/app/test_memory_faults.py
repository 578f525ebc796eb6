"""A worker out of memory, with real processes and a real Redis: killed by the kernel's OOM killer in a memory cgroup,
and refused an allocation under an address-space limit (`ulimit -v`).

The jobs that run out of memory are of `wide@1`: a U-Net of few channels at 1024x1024, whose one network call takes
some 500 MB above what the worker holds at rest for 5 GFLOP (about a second on one thread here). Each limit is made
from the worker's own measure once it is ready (its resident set, its address space) plus a margin well below that.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_lib
from cgroups import CgroupUnavailable, MemoryCgroup

from app.core import keys, workers
from helpers import final_job, wait_for
from stack import Stack, free_port, stack_env

pytestmark = pytest.mark.slow
MB = 2**20
HEARTBEAT_TTL_S = 2  # DIFFUSETV_HEARTBEAT_S=1 (stack_env)
SLACK_S = 3.0  # reaper period (1 s) + polling + process scheduling on a loaded 2-core machine
MARGIN = 64 * MB  # above the worker's idle measure: what a small job needs, not what a `wide` network call does
WIDE = "wide@1"


def proc_status(pid: int) -> dict[str, int]:
    """/proc/PID/status's sizes in bytes (VmRSS, RssAnon, RssFile, VmSize, ...)."""
    sizes = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            sizes[key] = int(value.split()[0]) * 1024
    return sizes


def at_rest(pid: int, seconds: float = 1.0) -> dict[str, int]:
    """proc_status of `pid` at its smallest address space over `seconds` (a thread's stack and arena come and go)."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(proc_status(pid))
        time.sleep(0.1)
    return min(samples, key=lambda sizes: sizes["VmSize"])


def worker_memory(conn, pid: int, ref: str = WIDE) -> dict:
    """What the live worker `pid` measured of `ref` at load (worker.memory.Memory, from its heartbeat)."""
    (info,) = [w for w in workers.live(conn) if w["pid"] == pid]
    return info["memory"][ref]


def status(c, job_id: str) -> dict:
    return c.get(f"/jobs/{job_id}").json()


@pytest.fixture
def wide_store(tiny_store):
    """`tiny_store` with `wide@1` beside `tiny@1`."""
    import torch

    from diffusion.unet import UNet, UNetConfig
    from model_store.weights import save_model

    torch.manual_seed(0)
    net = UNet(UNetConfig(1024, widths=(4, 8), block_depth=1))
    torch.nn.init.normal_(net.head.weight, std=0.1)
    save_model(tiny_store, "wide", net, "offset_cosine", [0.5] * 3, [0.25] * 3, {})
    return tiny_store


@pytest.fixture
def memory_cgroup():
    try:
        with MemoryCgroup() as cgroup:
            yield cgroup
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup: {exc}")


def test_a_worker_the_kernel_kills_for_memory_is_reaped_and_its_job_reruns_elsewhere(
    wide_store, redis_server, tmp_path, memory_cgroup
):
    """The worker in a memory cgroup holds the run when its network call passes the cgroup's limit: the kernel's OOM
    killer kills it (SIGKILL, counted by the cgroup), the reaper re-queues the run as for any SIGKILL, and a worker
    outside the cgroup runs it to the same bytes as an undisturbed run."""
    env = stack_env(redis_server.url, wide_store.root, model="wide", DIFFUSETV_CLIENT_BYTES=str(2**30))
    s = Stack(env, free_port(), tmp_path)
    s.redis = redis_server
    conn = redis_lib.Redis.from_url(redis_server.url)
    oom_worker = s.start_worker("oom-worker", preexec_fn=memory_cgroup.enter)
    s.start_api()
    try:
        s.wait_ready(timeout=120)
        idle = proc_status(oom_worker.pid)
        limit = idle["VmRSS"] + MARGIN  # what it holds at rest, page cache it maps included, and a margin
        memory_cgroup.limit(limit)
        (oom_worker_id,) = [w["id"] for w in workers.live(conn) if w["pid"] == oom_worker.pid]
        wide = worker_memory(conn, oom_worker.pid)
        # Even with every file page it maps evicted, its own memory and one network call pass the limit.
        assert idle["RssAnon"] + wide["activations"] + wide["per_sample"] > limit + 2 * MARGIN, (idle, wide, limit)
        body = {"model": "wide", "seed": 61, "steps": 2, "eta": 0.5}
        with s.client() as c:
            job = c.post("/generate", json=body).json()
            run_key = conn.hget(keys.job(job["id"]), "run").decode()
            taker = wait_for(lambda: conn.hget(keys.run(run_key), "worker"), 20, "the run to start").decode()
            assert taker == oom_worker_id
            s.start_worker("worker")  # only now, so that the run is the cgroup worker's
            try:
                rc = oom_worker.wait(60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"not killed within 60 s under {limit / MB:.0f} MB: {status(c, job['id'])}")
            killed = time.monotonic()
            assert rc == -signal.SIGKILL, (rc, s.log("oom-worker")[-3000:])
            assert memory_cgroup.oom_kills() == 1  # the kernel's OOM killer, not anyone's kill(2)
            wait_for(lambda: conn.hget(keys.METRICS, "requeued"), HEARTBEAT_TTL_S + SLACK_S, "the run re-queued")
            assert time.monotonic() - killed <= HEARTBEAT_TTL_S + SLACK_S
            done = final_job(c, job["id"], deadline_s=180)  # once the other worker has loaded its model
            assert done["status"] == "succeeded", (done, s.log("worker")[-3000:])
            png = c.get(f"/jobs/{job['id']}/image.png").content
            assert float(conn.hget(keys.METRICS, "requeued")) == 1
            conn.delete(*conn.keys("diffusetv:cache:*") or ["-"])
            again = c.post("/generate", json=body).json()  # the same request, undisturbed
            assert final_job(c, again["id"])["status"] == "succeeded"
            assert c.get(f"/jobs/{again['id']}/image.png").content == png
    finally:
        s.stop_all()


def test_an_address_space_limit_fails_the_job_and_the_worker_serves_on(wide_store, redis_server, tmp_path):
    """Under `ulimit -v` (RLIMIT_AS) an allocation past the limit is refused (torch's "can't allocate memory", or a
    MemoryError) instead of the process being killed: the job ends `failed` saying so, never left `running`, and the
    worker lives on and runs a job that fits."""
    env = stack_env(
        redis_server.url, wide_store.root, model="tiny", DIFFUSETV_MODELS="tiny,wide", DIFFUSETV_CLIENT_BYTES=str(2**30)
    )
    s = Stack(env, free_port(), tmp_path)
    s.redis = redis_server
    conn = redis_lib.Redis.from_url(redis_server.url)
    worker = s.start_worker()
    s.start_api()
    try:
        s.wait_ready(timeout=120)
        s.wait_serving(WIDE)
        with s.client() as c:
            warm = c.post("/generate", json={"model": "tiny", "seed": 60, "steps": 5}).json()
            assert final_job(c, warm["id"], deadline_s=60)["status"] == "succeeded"
            idle = at_rest(worker.pid)
            limit = idle["VmSize"] + MARGIN
            resource.prlimit(worker.pid, resource.RLIMIT_AS, (limit, limit))  # `ulimit -v`, on the running worker
            wide = worker_memory(conn, worker.pid)
            assert wide["activations"] > 2 * MARGIN, wide
            job = c.post("/generate", json={"model": "wide", "seed": 62, "steps": 2}).json()
            done = final_job(c, job["id"], deadline_s=120)
            assert done["status"] == "failed", (done, s.log("worker")[-3000:])
            assert "allocate memory" in done["error"] or "MemoryError" in done["error"], done
            assert worker.poll() is None, s.log("worker")[-3000:]
            small = c.post("/generate", json={"model": "tiny", "seed": 63, "steps": 5}).json()
            assert final_job(c, small["id"], deadline_s=60)["status"] == "succeeded", s.log("worker")[-3000:]
            assert c.get("/readyz").status_code == 200
            assert worker.poll() is None
            assert conn.hget(keys.METRICS, "requeued") is None  # its heartbeat held: never taken for dead
    finally:
        s.stop_all()
