"""Results served from the result store (app.results_http): image.png, strip.png, the latent, previews and the
/v1 images, in process against a real Redis, with the `redis` store and a `file://` one. A finished job is written by
hand, as a worker leaves it: its record names its results by digest, its objects are in the store and published in
the registry (app.core.objects). A store that does not answer is a 503 with Retry-After, an object gone behind a live
record a 410 that says so; a conditional request is answered without the store."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid

import openai
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from PIL import Image

from app.core import keys, objects
from app.core.jobs import JobStatus
from app.core.results import StoreUnavailable
from app.core.settings import Settings
from app.main import create_app
from app.results_http import STORE_RETRY_AFTER_S, UNAVAILABLE
from helpers import claim_as_worker

TTL = 600
PNG = b"\x89PNG\r\n\x1a\n" + b"the image" * 50
STRIP = b"\x89PNG\r\n\x1a\n" + b"the strip" * 70
LATENT = b"safetensors, as far as the API cares" * 3
MISSING = "is missing from the result store"


@pytest.fixture(params=["redis", "file"])
def setup(request, tiny_store, redis_server, tmp_path):
    results = "redis" if request.param == "redis" else f"file://{tmp_path / 'results'}"
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", results=results)
    conn = redis_lib.Redis.from_url(redis_server.url)
    with TestClient(create_app(settings)) as c:
        yield c, conn


def stored(conn, store, kind: str, data: bytes) -> str:
    """`data` put into the store and published in the registry, as a worker does; its sha256."""
    digest = hashlib.sha256(data).hexdigest()
    name = objects.name(kind, digest)
    objects.put(conn, store, name, data, hold_s=60, window_s=1)
    assert objects.publish(conn, name, len(data), TTL)
    return digest


def finished(c, conn, kind: str = "generate", owner: str = "", **results: bytes) -> str:
    """A succeeded job of `kind` written into Redis as a worker leaves it, with its results (`sha256`, `strip_sha256`:
    PNGs; `latent_sha256`: a latent) stored and published."""
    job_id = uuid.uuid4().hex
    record = {"id": job_id, "kind": kind, "status": JobStatus.SUCCEEDED.value, "owner": owner, "params": "{}"}
    for field, data in results.items():
        record[field] = stored(
            conn, c.app.state.results, objects.LATENT if field == "latent_sha256" else objects.PNG, data
        )
    conn.hset(keys.job(job_id), mapping=record)
    return job_id


class Down:
    """A result store that does not answer: every call raises StoreUnavailable, and counts."""

    scheme = "s3"
    inline_previews = False

    def __init__(self) -> None:
        self.calls = 0

    def _down(self, *args):
        self.calls += 1
        raise StoreUnavailable("s3: connect timeout")

    put = get = delete = presign = _down


class Signing:
    """A result store that presigns (as S3 does) and serves nothing itself."""

    scheme = "s3"
    inline_previews = False

    def put(self, name: str, data: bytes) -> None:
        raise AssertionError("not written here")

    def get(self, name: str) -> bytes | None:
        raise AssertionError("a redirect reads no bytes")

    def delete(self, name: str) -> None:
        raise AssertionError("not deleted here")

    def presign(self, name: str, expires_s: int) -> str | None:
        return f"https://bucket.example/{name}?expires={expires_s}&signature=abc"


def test_image_and_strip_are_the_stored_bytes_with_their_sha256_as_etag(setup):
    c, conn = setup
    job = finished(c, conn, kind="interpolate", sha256=PNG, strip_sha256=STRIP)
    for route, data in (("image.png", PNG), ("strip.png", STRIP)):
        r = c.get(f"/jobs/{job}/{route}")
        assert r.status_code == 200 and r.content == data
        assert r.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert r.headers["content-type"] == "image/png"
        assert r.headers["cache-control"] == "public, max-age=86400, immutable"
        again = c.get(f"/jobs/{job}/{route}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == r.headers["etag"]
        head = c.head(f"/jobs/{job}/{route}")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(data)) and head.headers["content-type"] == "image/png"
        assert head.headers["etag"] == r.headers["etag"]
        assert c.head(f"/jobs/{job}/{route}", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    generation = finished(c, conn, sha256=PNG)
    assert c.get(f"/jobs/{generation}/strip.png").status_code == 404
    assert c.head(f"/jobs/{generation}/strip.png").status_code == 404
    assert c.get(f"/jobs/{'0' * 32}/image.png").status_code == 404
    assert c.head(f"/jobs/{'0' * 32}/image.png").status_code == 404


def test_an_unfinished_job_is_409_and_another_owners_404(setup):
    c, conn = setup
    job = finished(c, conn, sha256=PNG)
    conn.hset(keys.job(job), "status", JobStatus.RUNNING.value)
    conn.sadd(keys.RUNNING, job)  # a run a worker holds: the reaper's, not reconciled here
    assert c.get(f"/jobs/{job}/image.png").status_code == 409
    assert c.head(f"/jobs/{job}/image.png").status_code == 409
    other = finished(c, conn, owner="someone-else", sha256=PNG)
    assert c.get(f"/jobs/{other}/image.png").status_code == 404


def test_an_object_deleted_by_hand_is_a_410_that_says_so(setup):
    c, conn = setup
    job = finished(c, conn, kind="interpolate", sha256=PNG, strip_sha256=STRIP)
    c.app.state.results.delete(objects.name(objects.PNG, hashlib.sha256(PNG).hexdigest()))
    r = c.get(f"/jobs/{job}/image.png")
    assert r.status_code == 410 and MISSING in r.json()["detail"] and job in r.json()["detail"], r.text
    assert "RESULT_TTL" in r.json()["detail"]
    assert c.get(f"/jobs/{job}/strip.png").status_code == 200  # its other object is there
    etag = f'"{hashlib.sha256(PNG).hexdigest()}"'
    assert c.get(f"/jobs/{job}/image.png", headers={"If-None-Match": etag}).status_code == 304  # the cache has it
    no_digest = finished(c, conn)  # a record that names no object at all
    r = c.get(f"/jobs/{no_digest}/image.png")
    assert r.status_code == 410 and MISSING in r.json()["detail"]


def test_a_head_without_a_known_size_sends_no_length(setup):
    c, conn = setup
    job = finished(c, conn, sha256=PNG)
    conn.delete(keys.object_entry(objects.name(objects.PNG, hashlib.sha256(PNG).hexdigest())))
    head = c.head(f"/jobs/{job}/image.png")
    assert head.status_code == 200 and "content-length" not in head.headers and head.content == b""
    assert head.headers["etag"] == f'"{hashlib.sha256(PNG).hexdigest()}"'


def test_a_store_that_does_not_answer_is_a_503_with_retry_after_and_a_304_never_asks_it(setup):
    c, conn = setup
    job = finished(c, conn, kind="interpolate", sha256=PNG, strip_sha256=STRIP)
    inversion = finished(c, conn, kind="invert", sha256=PNG, latent_sha256=LATENT)
    c.app.state.results = down = Down()
    for path in (f"/jobs/{job}/image.png", f"/jobs/{job}/strip.png", f"/jobs/{inversion}/latent"):
        r = c.get(path)
        assert r.status_code == 503 and r.json()["detail"] == UNAVAILABLE, r.text
        assert r.headers["retry-after"] == str(STORE_RETRY_AFTER_S)
    calls = down.calls
    etag = f'"{hashlib.sha256(PNG).hexdigest()}"'
    assert c.get(f"/jobs/{job}/image.png", headers={"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    head = c.head(f"/jobs/{job}/image.png")  # from the registry, not the store
    assert head.status_code == 200 and head.headers["content-length"] == str(len(PNG))
    assert down.calls == calls


def test_the_latent_is_read_from_the_store(setup):
    c, conn = setup
    inversion = finished(c, conn, kind="invert", sha256=PNG, latent_sha256=LATENT)
    r = c.get(f"/jobs/{inversion}/latent")
    assert r.status_code == 200 and r.content == LATENT
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["etag"] == f'"{hashlib.sha256(LATENT).hexdigest()}"'
    assert r.headers["content-disposition"] == f'attachment; filename="diffusetv-{inversion}.safetensors"'
    generation = finished(c, conn, sha256=PNG)
    assert c.get(f"/jobs/{generation}/latent").status_code == 404
    c.app.state.results.delete(objects.name(objects.LATENT, hashlib.sha256(LATENT).hexdigest()))
    r = c.get(f"/jobs/{inversion}/latent")
    assert r.status_code == 410 and MISSING in r.json()["detail"]


def test_a_preview_is_served_to_its_jobs_owner(setup):
    c, conn = setup
    job = finished(c, conn, sha256=PNG)
    preview = b"\x89PNG\r\n\x1a\n" + b"a preview" * 20
    sha = stored(conn, c.app.state.results, objects.PNG, preview)
    r = c.get(f"/jobs/{job}/previews/{sha}.png")
    assert r.status_code == 200 and r.content == preview and r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == f'"{sha}"' and "immutable" in r.headers["cache-control"]
    assert c.get(f"/jobs/{job}/previews/{sha}.png", headers={"If-None-Match": f'"{sha}"'}).status_code == 304
    unknown = hashlib.sha256(b"never stored").hexdigest()
    assert c.get(f"/jobs/{job}/previews/{unknown}.png").status_code == 404
    other = finished(c, conn, owner="someone-else", sha256=PNG)
    assert c.get(f"/jobs/{other}/previews/{sha}.png").status_code == 404
    assert c.get(f"/jobs/{'0' * 32}/previews/{sha}.png").status_code == 404
    c.app.state.results.delete(objects.name(objects.PNG, sha))
    r = c.get(f"/jobs/{job}/previews/{sha}.png")
    assert r.status_code == 410 and MISSING in r.json()["detail"]
    c.app.state.results = Down()
    r = c.get(f"/jobs/{job}/previews/{sha}.png")
    assert r.status_code == 503 and r.headers["retry-after"] == str(STORE_RETRY_AFTER_S)


def test_a_malformed_preview_digest_is_404_before_redis_is_asked(setup):
    c, conn = setup
    job = finished(c, conn, sha256=PNG)
    sha = hashlib.sha256(PNG).hexdigest()

    class NoRedis:
        def __getattr__(self, name):
            raise AssertionError(f"Redis was asked: {name}")

    real, c.app.state.redis = c.app.state.redis, NoRedis()
    try:
        for bad in (sha.upper(), sha[:-1], sha + "0", "x" * 64, "g" + sha[1:]):
            r = c.get(f"/jobs/{job}/previews/{bad}.png")
            assert r.status_code == 404 and r.json()["detail"] == "no such preview", (bad, r.text)
    finally:
        c.app.state.redis = real


def test_with_redirects_a_get_is_a_307_to_a_presigned_url_and_a_head_is_answered_here(setup):
    c, conn = setup
    job = finished(c, conn, kind="interpolate", sha256=PNG, strip_sha256=STRIP)
    settings = c.app.state.settings
    c.app.state.settings = settings.model_copy(update={"results_redirect": True, "results_presign_s": 120})
    c.app.state.results = Signing()
    try:
        for route, data in (("image.png", PNG), ("strip.png", STRIP)):
            sha = hashlib.sha256(data).hexdigest()
            r = c.get(f"/jobs/{job}/{route}", follow_redirects=False)
            assert r.status_code == 307, r.text
            assert r.headers["location"] == f"https://bucket.example/png/{sha}.png?expires=120&signature=abc"
            assert r.headers["cache-control"] == "no-store"
            assert c.get(f"/jobs/{job}/{route}", headers={"If-None-Match": f'"{sha}"'}).status_code == 304
            head = c.head(f"/jobs/{job}/{route}", follow_redirects=False)
            assert head.status_code == 200 and head.headers["etag"] == f'"{sha}"'
            assert head.headers["content-length"] == str(len(data))
    finally:
        c.app.state.settings = settings


def test_a_job_named_as_an_input_is_read_from_the_store(setup):
    c, conn = setup
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buffer, format="PNG")
    claim_as_worker(c.app.state.settings.redis_url)
    job = finished(c, conn, sha256=buffer.getvalue())
    assert c.post("/generate", json={"seed": 1, "image": {"job": job}}).status_code == 202
    c.app.state.results.delete(objects.name(objects.PNG, hashlib.sha256(buffer.getvalue()).hexdigest()))
    r = c.post("/generate", json={"seed": 1, "image": {"job": job}})
    assert r.status_code == 410 and r.json()["detail"].startswith(f"image: the image of job {job} {MISSING}")
    inversion = finished(c, conn, kind="invert", sha256=PNG, latent_sha256=LATENT)
    real, c.app.state.results = c.app.state.results, Down()
    try:
        r = c.post("/generate", json={"seed": 2, "image": {"job": finished_on(real, conn, buffer.getvalue())}})
        assert r.status_code == 503 and r.headers["retry-after"] == str(STORE_RETRY_AFTER_S)
        r = c.post("/generate", json={"latent": {"job": inversion}, "steps": 20})
        assert r.status_code == 503 and r.json()["detail"] == UNAVAILABLE
    finally:
        c.app.state.results = real
    c.app.state.results.delete(objects.name(objects.LATENT, hashlib.sha256(LATENT).hexdigest()))
    r = c.post("/generate", json={"latent": {"job": inversion}, "steps": 20})
    assert r.status_code == 410 and "latent of job" in r.json()["detail"]


def finished_on(store, conn, png: bytes) -> str:
    """A finished generation whose PNG is put into `store` (the app's may be a stub by then)."""
    job_id = uuid.uuid4().hex
    sha = stored(conn, store, objects.PNG, png)
    record = {"id": job_id, "kind": "generate", "status": "succeeded", "owner": "", "params": "{}", "sha256": sha}
    conn.hset(keys.job(job_id), mapping=record)
    return job_id


@pytest.fixture
def v1(setup, monkeypatch):
    """The /v1 route, with its jobs finished by hand as soon as they are queued: each has a PNG of its own."""
    c, conn = setup
    claim_as_worker(c.app.state.settings.redis_url)
    store = c.app.state.results

    async def wait_for_all(request, redis, job_ids, owner, lease):
        records = []
        for i, job_id in enumerate(job_ids):
            png = PNG + f"job {i}".encode()
            fields = {"status": "succeeded", "sha256": stored(conn, store, objects.PNG, png)}
            conn.hset(keys.job(job_id), mapping=fields)
            records.append({k.decode(): v.decode() for k, v in conn.hgetall(keys.job(job_id)).items()})
        return records

    monkeypatch.setattr("app.routes.openai.wait_for_all", wait_for_all)
    return c


def test_v1_b64_images_are_read_from_the_store(v1):
    c = v1
    r = c.post("/v1/images/generations", json={"prompt": "", "n": 2, "response_format": "b64_json", "seed": 3})
    assert r.status_code == 200, r.text
    images = [base64.b64decode(d["b64_json"]) for d in r.json()["data"]]
    assert images == [PNG + b"job 0", PNG + b"job 1"]


def test_v1_with_the_store_down_is_a_503_in_openais_shape_naming_the_jobs(v1):
    c = v1
    c.app.state.results = Down()
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=c, max_retries=2)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.images.generate(prompt="", n=2, response_format="b64_json", extra_body={"seed": 4, "steps": 3})
    assert caught.value.status_code == 503
    headers = caught.value.response.headers
    assert headers["x-should-retry"] == "false" and headers["retry-after"] == str(STORE_RETRY_AFTER_S)
    error = caught.value.body
    assert UNAVAILABLE in error["message"] and len(error["jobs"]) == 2 and error["type"] == "server_error"
    assert json.loads(caught.value.response.text)["error"]["code"] == "service_unavailable"


def test_v1_with_an_image_gone_from_the_store_is_a_410_naming_the_jobs(v1):
    c = v1

    class Emptied(Signing):  # answers, but has lost every object
        def get(self, name: str) -> bytes | None:
            return None

    c.app.state.results = Emptied()
    r = c.post("/v1/images/generations", json={"prompt": "", "n": 2, "response_format": "b64_json", "seed": 5})
    assert r.status_code == 410 and r.headers["x-should-retry"] == "false", r.text
    error = r.json()["error"]
    assert MISSING in error["message"] and len(error["jobs"]) == 2 and error["jobs"][0] in error["message"]
    url = c.post("/v1/images/generations", json={"prompt": "", "n": 1, "response_format": "url", "seed": 6})
    assert url.status_code == 200 and url.json()["data"][0]["url"].endswith("/image.png")  # no store read for a URL


@pytest.mark.slow
def test_a_file_store_end_to_end_previews_are_urls_served_to_the_jobs_owner(tiny_store, redis_server, tmp_path):
    """Real processes with DIFFUSETV_RESULTS=file://: the previews' `url`s are the API's, and answer their PNGs; the
    image is the stored file's bytes, and a HEAD gives its length."""
    from helpers import read_events
    from stack import running_stack

    root = tmp_path / "results"
    env = {"DIFFUSETV_RESULTS": f"file://{root}"}
    with running_stack(redis_server, tiny_store.root, tmp_path, **env) as s, s.client() as c:
        job = c.post("/generate", json={"seed": 7, "steps": 8, "previews": True}).json()["id"]
        previews = [d for _, e, d in read_events(c, job) if e == "preview"]
        assert previews and all(p["url"].startswith(f"/jobs/{job}/previews/") for p in previews), previews
        for p in previews:
            r = c.get(p["url"])
            assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.text
            assert r.headers["etag"] == f'"{p["url"].rsplit("/", 1)[1].removesuffix(".png")}"'
        image = c.get(f"/jobs/{job}/image.png")
        sha = hashlib.sha256(image.content).hexdigest()
        assert image.status_code == 200 and image.headers["etag"] == f'"{sha}"'
        assert (root / "png" / f"{sha}.png").read_bytes() == image.content
        head = c.head(f"/jobs/{job}/image.png")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(image.content))
