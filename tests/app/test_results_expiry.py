"""Results expire with the last job that uses them, as real processes: redis-server, `diffusetv worker` and
`diffusetv api` (whose reaper sweeps) with the results in an S3 bucket (moto, signatures checked), RESULT_TTL at its
minimum (60 s) and a sweep every second.

At t0 jobs A (seed 1) and C (seed 2) are made; at t0 + 30 s B asks A's request again, a cache hit that points at A's
object and keeps it until B's record expires (t0 + 90 s). Each object must be gone, from the bucket and from the
registry, within BOUND_S of the expiry of the last job that uses it, and not before: C's by t0 + 60 s + BOUND_S, while
A's object stays for B (B's image.png still 200, the same bytes); A's by t0 + 90 s + BOUND_S. An object uploaded but
never published (a worker killed between its upload and its delivery) goes once its hold has passed. Afterwards the
bucket is empty: the sweeper alone keeps it bounded (no lifecycle rule)."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import redis as redis_lib

from app.core import keys, objects
from helpers import final_job
from stack import running_stack

pytestmark = pytest.mark.slow
pytest_plugins = ["s3_server"]  # own_moto_s3


RESULT_TTL_S = 60  # DIFFUSETV_RESULT_TTL's minimum
SWEEP_S = 1  # DIFFUSETV_RESULTS_SWEEP_S
SLACK_S = 5  # a pass of the sweeper, the reaper's lock and a busy machine
BOUND_S = SWEEP_S + SLACK_S  # an object is gone at most this long after the last job that uses it has expired
HIT_AT_S = 30  # B, the cache hit of A's request, this long after t0
ORPHAN_HOLD_S = 10  # the hold of an object uploaded and never published
REQUEST = {"steps": 4, "eta": 0.0}


@pytest.fixture
def expiring_stack(tiny_store, redis_server, tmp_path, own_moto_s3):
    s3 = own_moto_s3
    env = {
        **s3.env(),
        "DIFFUSETV_RESULT_TTL": str(RESULT_TTL_S),
        "DIFFUSETV_RESULTS_SWEEP_S": str(SWEEP_S),
        "DIFFUSETV_HEARTBEAT_S": "1",
    }
    with running_stack(redis_server, tiny_store.root, tmp_path, **env) as s:
        yield s


def s3_store(s3):
    """The stack's result store, opened in this process (as a worker opens it)."""
    from app.core.results import open_store
    from app.core.settings import Settings

    settings = Settings(
        results=f"s3://{s3.bucket}/{s3.prefix}",
        s3_endpoint_url=s3.endpoint,
        s3_addressing_style="path",
        s3_region=s3.region,
        s3_access_key_id=s3.access_key_id,
        s3_secret_access_key=s3.secret_access_key,
    )
    return open_store(settings, None)


def wait_until(deadline: float, done, what: str, explain=lambda: "") -> float:
    """Poll `done` until it is true (returns the time it was) or `deadline` (epoch s) passes (fails, saying `what`)."""
    while True:
        if done():
            return time.time()
        if time.time() > deadline:
            pytest.fail(f"{what}, {time.time() - deadline:.1f} s past its deadline; {explain()}")
        time.sleep(0.25)


def test_objects_expire_with_the_last_job_that_uses_them(expiring_stack, own_moto_s3):
    s3 = own_moto_s3
    conn = redis_lib.Redis.from_url(expiring_stack.redis.url)
    store = s3_store(s3)

    def key(name: str) -> str:
        return f"{s3.prefix}/{name}"

    def gone(name: str) -> bool:
        return key(name) not in s3.objects() and objects.state(conn, name) is None

    def registry() -> str:
        now = time.time()
        scores = {n.decode(): round(s - now, 1) for n, s in conn.zrange(keys.OBJECTS, 0, -1, withscores=True)}
        return f"registry (name: seconds left) {scores}; bucket {s3.objects()}"

    # a worker killed between its upload and its delivery: reserved, uploaded, never published
    orphan_data = os.urandom(256)
    orphan = objects.name(objects.PNG, hashlib.sha256(orphan_data).hexdigest())
    assert objects.reserve(conn, orphan, ORPHAN_HOLD_S)
    store.put(orphan, orphan_data)
    orphaned_at = time.time()
    assert key(orphan) in s3.objects() and objects.state(conn, orphan) == "pending"

    with expiring_stack.client() as c:
        t0 = time.time()
        a = c.post("/generate", json={**REQUEST, "seed": 1}).json()
        cj = c.post("/generate", json={**REQUEST, "seed": 2}).json()
        a, cj = final_job(c, a["id"], 60), final_job(c, cj["id"], 60)
        delivered = time.time()  # both were delivered (their records and objects scored) before this
        assert a["status"] == cj["status"] == "succeeded", (a, cj)
        png_a = c.get(a["image_url"]).content
        name_a = objects.name(objects.PNG, hashlib.sha256(png_a).hexdigest())
        name_c = objects.name(objects.PNG, hashlib.sha256(c.get(cj["image_url"]).content).hexdigest())
        assert name_a != name_c and {key(name_a), key(name_c)} <= set(s3.objects())

        swept = wait_until(
            orphaned_at + ORPHAN_HOLD_S + BOUND_S,
            lambda: gone(orphan),
            "the unpublished object was not swept",
            registry,
        )
        assert swept >= orphaned_at + ORPHAN_HOLD_S - 1, "swept before its hold passed"

        time.sleep(max(0.0, t0 + HIT_AT_S - time.time()))
        hit_from = time.time()
        b = c.post("/generate", json={**REQUEST, "seed": 1}).json()
        hit_to = time.time()  # B's record, and A's object with it, live until between hit_from + TTL and hit_to + TTL
        assert b["status"] == "succeeded" and b["id"] != a["id"], b

        # C's object: gone within BOUND_S of C's expiry; A's stays for B
        wait_until(delivered + RESULT_TTL_S + BOUND_S, lambda: gone(name_c), "C's object outlived C", registry)
        assert time.time() < hit_from + RESULT_TTL_S, "the test ran too late to tell A's object from C's"
        assert key(name_a) in s3.objects() and objects.state(conn, name_a) == "live", registry()
        time.sleep(max(0.0, delivered + RESULT_TTL_S + 1 - time.time()))
        assert c.get(f"/jobs/{a['id']}").status_code == 404  # A itself has expired: B alone keeps the object
        r = c.get(f"/jobs/{b['id']}/image.png")
        assert r.status_code == 200 and r.content == png_a, (r.status_code, r.text[:200])
        assert key(name_a) in s3.objects(), registry()

        # A's object: gone within BOUND_S of B's expiry, never before it
        went = wait_until(hit_to + RESULT_TTL_S + BOUND_S, lambda: gone(name_a), "A's object outlived B", registry)
        assert went >= hit_from + RESULT_TTL_S, f"A's object went {hit_from + RESULT_TTL_S - went:.1f} s before B did"
        assert c.get(f"/jobs/{b['id']}").status_code == 404

    assert s3.objects() == [], "the bucket holds objects that no job uses"
    assert conn.zcard(keys.OBJECTS) == 0 and list(conn.scan_iter(keys.object_entry("*"))) == [], registry()
