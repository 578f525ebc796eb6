"""The result stores end to end: the same whole stack (redis-server, `diffusetv worker`, `diffusetv api` serving the
tiny 16×16 model) with its results in Redis, in a directory (file:///dir) and in an S3 bucket (moto, signatures
checked), and the same bytes from each: the CLI's, alone and batched, from the cache, for an interpolation, and the
previews. Then what only S3 does: the object in the bucket, no second object for a cache hit, and the 307 to a
presigned URL (DIFFUSETV_RESULTS_REDIRECT)."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest
import redis as redis_lib

from app.core import keys, objects
from app.core.png import decode_png
from helpers import cli_sample, final_job, read_events

pytestmark = pytest.mark.slow
REQUEST = {"seed": 1234, "steps": 20, "eta": 0.3}  # what the CLI samples too
SIGSTOP, SIGCONT = 19, 18


@pytest.fixture(scope="module")
def cli_png(module_tiny_store, tmp_path_factory) -> bytes:
    """`diffusetv sample` of REQUEST: the bytes every backend must serve."""
    return cli_sample(module_tiny_store.root, tmp_path_factory.mktemp("cli") / "cli.png", REQUEST)


def succeeded(c: httpx.Client, job: dict) -> dict:
    done = final_job(c, job["id"], deadline_s=120)
    assert done["status"] == "succeeded", done
    return done


def image(c: httpx.Client, job: dict) -> httpx.Response:
    r = c.get(f"/jobs/{job['id']}/image.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", (r.status_code, r.text[:300])
    return r


def drop_cache(stack) -> None:
    """The cache entries gone, so that the next identical request runs afresh (its objects stay where they are)."""
    conn = redis_lib.Redis.from_url(stack.redis.url)
    conn.delete(*conn.keys("diffusetv:cache:*") or ["-"])


def test_the_apis_bytes_are_the_clis_and_the_stores(results_stack, cli_png):
    backend = results_stack.backend
    with results_stack.client() as c:
        job = succeeded(c, c.post("/generate", json=REQUEST).json())
        png = image(c, job)
        sha256 = hashlib.sha256(cli_png).hexdigest()
        assert png.content == cli_png and job["image_url"] == f"/jobs/{job['id']}/image.png"
        assert png.headers["etag"] == f'"{sha256}"'
        head = c.head(f"/jobs/{job['id']}/image.png")
        assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == f'"{sha256}"'
        assert int(head.headers["content-length"]) == len(cli_png)
    name = objects.name(objects.PNG, sha256)  # png/<sha256>.png; in S3 under the prefix
    assert backend.read(results_stack.redis.url, name) == cli_png
    assert name in backend.names(results_stack.redis.url)
    conn = redis_lib.Redis.from_url(results_stack.redis.url)
    assert objects.state(conn, name) == "live" and objects.size(conn, name) == len(cli_png)
    if backend.name == "s3":
        key = f"{backend.s3.prefix}/png/{sha256}.png"
        assert key in backend.s3.objects()
        assert backend.s3.client().get_object(Bucket=backend.s3.bucket, Key=key)["Body"].read() == cli_png
    else:
        assert (conn.get(keys.blob(name)) is not None) == (backend.name == "redis")  # Redis holds it only there


def test_jobs_batched_get_the_bytes_they_get_alone(results_stack):
    requests = [{"seed": 40 + i, "steps": 12, "eta": 0.5 * i} for i in range(3)]
    worker = results_stack.procs["worker"]
    with results_stack.client() as c:
        alone = [succeeded(c, c.post("/generate", json=r).json()) for r in requests]
        assert [j["batch_size"] for j in alone] == [1, 1, 1]
        pngs = [image(c, j).content for j in alone]
        for _attempt in range(3):  # a slow machine may still split the batch: try the arrangement again
            drop_cache(results_stack)
            worker.send_signal(SIGSTOP)  # the jobs queue up meanwhile, to be taken as one batch
            try:
                posted = [c.post("/generate", json=r).json() for r in requests]
            finally:
                worker.send_signal(SIGCONT)
            assert all(p["status"] == "queued" for p in posted), posted  # runs of their own, not cache hits
            batched = [succeeded(c, p) for p in posted]
            if min(j["batch_size"] for j in batched) > 1:
                break
        assert min(j["batch_size"] for j in batched) > 1, [j["batch_size"] for j in batched]
        assert [image(c, j).content for j in batched] == pngs
    assert len(set(pngs)) == 3


def test_a_cache_hit_serves_the_same_object(results_stack):
    backend, url = results_stack.backend, results_stack.redis.url
    body = {"seed": 555, "steps": 10}
    with results_stack.client() as c:
        first = succeeded(c, c.post("/generate", json=body).json())
        png = image(c, first)
        before = backend.names(url)
        r = c.post("/generate", json=body)
        assert r.status_code in (200, 202), r.text
        second = r.json()
        assert second["status"] == "succeeded" and second["id"] != first["id"]  # answered at once, from the cache
        again = image(c, second)
        assert again.content == png.content and again.headers["etag"] == png.headers["etag"]
        etag = {"If-None-Match": png.headers["etag"]}
        not_modified = c.get(f"/jobs/{second['id']}/image.png", headers=etag)
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert not_modified.headers["etag"] == png.headers["etag"]
    assert backend.names(url) == before  # no second object (a cache hit points at the first one)


def test_an_interpolation_serves_its_apng_and_strip_the_same_on_a_repeat(results_stack):
    walk = {"seed_a": 5, "seed_b": 6, "frames": 3, "steps": 10}
    with results_stack.client() as c:
        served = []
        for attempt in range(2):
            if attempt:
                drop_cache(results_stack)  # the repeat runs afresh
            job = c.post("/interpolate", json=walk).json()
            assert job["status"] == "queued", job
            job = succeeded(c, job)
            apng = image(c, job).content
            strip = c.get(f"/jobs/{job['id']}/strip.png")
            assert strip.status_code == 200 and strip.headers["content-type"] == "image/png"
            assert strip.headers["etag"] == f'"{hashlib.sha256(strip.content).hexdigest()}"'
            head = c.head(f"/jobs/{job['id']}/strip.png")
            assert head.status_code == 200 and int(head.headers["content-length"]) == len(strip.content)
            served.append((job["id"], apng, strip.content))
        (first_id, apng, strip), (second_id, apng2, strip2) = served
    assert first_id != second_id and apng == apng2 and strip == strip2
    assert apng.startswith(b"\x89PNG") and 0 < apng.find(b"acTL") < apng.find(b"IDAT")  # an APNG of the frames
    assert decode_png(strip).shape == (16, 3 * 16, 3)  # the frames side by side


def test_previews_are_data_urls_in_redis_and_objects_elsewhere(results_stack):
    backend = results_stack.backend
    with results_stack.client() as c:
        job = c.post("/generate", json={"seed": 9, "steps": 6, "previews": True}).json()
        events = read_events(c, job["id"])
        assert events[-1][1:] == ("status", {"status": "succeeded"}), events[-3:]
        previews = [data for _, event, data in events if event == "preview"]
        assert previews, events
        for preview in previews:
            url = preview["url"]
            if backend.name == "redis":
                assert url.startswith("data:image/png;base64,")
                png = base64.b64decode(url.removeprefix("data:image/png;base64,"))
                assert decode_png(png).shape == (16, 16, 3)
                continue
            match = re.fullmatch(rf"/jobs/{job['id']}/previews/([0-9a-f]{{64}})\.png", url)
            assert match, url
            r = c.get(url)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", (r.status_code, r.text)
            assert hashlib.sha256(r.content).hexdigest() == match[1]
            assert decode_png(r.content).shape == (16, 16, 3)
            assert c.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
            assert match[1] == r.headers["etag"].strip('"')
        if backend.name != "redis":
            missing = f"/jobs/{job['id']}/previews/{'0' * 64}.png"
            assert c.get(missing).status_code == 404


@pytest.mark.parametrize("results_backend", ["s3"], indirect=True)
def test_s3_redirects_to_a_presigned_url_that_needs_no_credentials(results_stack, cli_png):
    s3 = results_stack.backend.s3
    redirecting = results_stack.start_second_api(
        "api-redirect", DIFFUSETV_RESULTS_REDIRECT="1", DIFFUSETV_S3_PUBLIC_URL=s3.endpoint
    )
    with results_stack.client() as c, httpx.Client(base_url=redirecting, timeout=40) as r:
        job = succeeded(c, c.post("/generate", json=REQUEST).json())
        answer = r.get(f"/jobs/{job['id']}/image.png")  # httpx does not follow it
        assert answer.status_code == 307, (answer.status_code, answer.text)
        assert answer.headers["cache-control"] == "no-store"
        location = answer.headers["location"]
        assert location.startswith(f"{s3.endpoint}/{s3.bucket}/{s3.prefix}/png/") and "X-Amz-Signature=" in location
        fetched = httpx.get(location, timeout=10)  # a plain client: no credentials, no Authorization header
        assert fetched.status_code == 200 and fetched.content == cli_png
        signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", location)
        flipped = "0" if signature[1][0] != "0" else "1"
        tampered = location[: signature.start(1)] + flipped + location[signature.start(1) + 1 :]
        refused = httpx.get(tampered, timeout=10)
        assert refused.status_code == 403 and refused.content != cli_png
        head = r.head(f"/jobs/{job['id']}/image.png")  # answered by the API itself, never redirected
        assert head.status_code == 200 and "location" not in head.headers
        assert int(head.headers["content-length"]) == len(cli_png)
        assert head.headers["etag"] == f'"{hashlib.sha256(cli_png).hexdigest()}"'
        etag = {"If-None-Match": head.headers["etag"]}
        assert r.get(f"/jobs/{job['id']}/image.png", headers=etag).status_code == 304  # answered by the API
