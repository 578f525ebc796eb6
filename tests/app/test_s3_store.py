"""The S3 result store against moto's S3 server (a process of its own, signatures checked): bytes kept exactly, with
their SHA-256 checksum; missing objects read as None; a stalled or refusing store is StoreUnavailable within the
timeouts; presigned URLs work with a plain HTTP client and stop working when tampered with."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.core.results import StoreUnavailable, location, open_store
from app.core.results.s3_store import S3Store
from app.core.settings import Settings
from diffusetv.launch import free_port

pytest_plugins = ["s3_server"]  # the fixtures moto_s3 and moto_s3_server


def settings_for(s3, prefix: str = "results", **overrides) -> Settings:
    values = {
        "results": f"s3://{s3.bucket}/{prefix}".rstrip("/"),
        "s3_endpoint_url": s3.endpoint,
        "s3_addressing_style": "path",
        "s3_region": s3.region,
        "s3_access_key_id": s3.access_key_id,
        "s3_secret_access_key": s3.secret_access_key,
        "s3_max_attempts": 1,
    }
    return Settings(**{**values, **overrides})


def store_for(s3, prefix: str = "results", **overrides) -> S3Store:
    settings = settings_for(s3, prefix, **overrides)
    return S3Store.from_settings(location(settings.results)[1], settings)


def png_name(data: bytes) -> str:
    return f"png/{hashlib.sha256(data).hexdigest()}.png"


def test_put_get_round_trip_with_checksum(moto_s3):
    store = store_for(moto_s3)
    sent = []
    store.client.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(request.headers))
    data = os.urandom(300_000) + b"\x00\r\n"
    name = png_name(data)
    store.put(name, data)
    assert store.get(name) == data
    assert moto_s3.objects() == [f"results/{name}"]
    obj = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key=f"results/{name}")
    assert obj["Body"].read() == data and obj["ContentType"] == "image/png"
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert [headers["x-amz-checksum-sha256"].decode() for headers in sent] == [digest]
    assert store.scheme == "s3" and store.inline_previews is False


def test_content_type_of_other_objects(moto_s3):
    store = store_for(moto_s3)
    store.put("latent/abc.safetensors", b"latent")
    obj = moto_s3.client().head_object(Bucket=moto_s3.bucket, Key="results/latent/abc.safetensors")
    assert obj["ContentType"] == "application/octet-stream"


def test_missing_and_deleted_objects_read_as_none(moto_s3):
    store = store_for(moto_s3)
    assert store.get("png/missing.png") is None
    store.put("png/a.png", b"a")
    store.delete("png/a.png")
    assert store.get("png/a.png") is None
    store.delete("png/a.png")  # a missing object is no error
    assert moto_s3.objects() == []


def test_one_store_shared_by_threads(moto_s3):
    store = store_for(moto_s3)
    blobs = {png_name(bytes([i]) * 5000): bytes([i]) * 5000 for i in range(16)}

    def round_trip(item):
        store.put(*item)
        return store.get(item[0]) == item[1]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(round_trip, blobs.items()))
    assert moto_s3.objects() == sorted(f"results/{name}" for name in blobs)


def test_prefix_is_honoured(moto_s3):
    store_for(moto_s3, prefix="deep/er").put("png/a.png", b"a")
    store_for(moto_s3, prefix="").put("png/b.png", b"b")
    assert moto_s3.objects() == ["deep/er/png/a.png", "png/b.png"]
    assert store_for(moto_s3, prefix="").get("png/a.png") is None
    assert store_for(moto_s3, prefix="deep/er").get("png/a.png") == b"a"


def test_stalled_server_is_unavailable_within_the_timeouts(moto_s3):
    """SIGSTOPped, the server still accepts connections (the kernel's backlog) and answers nothing: each attempt ends
    at the read timeout (a PUT first waits botocore's fixed second for "100 Continue"); 1 attempt is 1 request."""
    store = store_for(moto_s3, s3_connect_timeout_s=1, s3_read_timeout_s=1, s3_max_attempts=1)
    sent = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))
    store.put("png/a.png", b"a")
    moto_s3.pause()
    try:
        for call in (lambda: store.put("png/b.png", b"b"), lambda: store.get("png/a.png")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=f"s3://{moto_s3.bucket}: .*Read timeout"):
                call()
            assert time.monotonic() - started < 1 + 1 + 1 + 1.5  # connect + 100-continue + read, and some slack
    finally:
        moto_s3.resume()
    assert sent == ["PUT", "PUT", "GET"]
    store.put("png/b.png", b"b")
    assert store.get("png/a.png") == b"a" and store.get("png/b.png") == b"b"


def test_max_attempts_counts_the_first_attempt(moto_s3):
    store = store_for(moto_s3, s3_read_timeout_s=0.5, s3_max_attempts=2)
    sent = []
    store.client.meta.events.register("before-send.s3.GetObject", lambda request, **_: sent.append(request.url))
    moto_s3.pause()
    try:
        with pytest.raises(StoreUnavailable):
            store.get("png/a.png")
    finally:
        moto_s3.resume()
    assert len(sent) == 2


def test_read_timeout_mid_body_is_unavailable(moto_s3):
    """The server stops after the headers of a large object: the body's read times out (botocore's ReadTimeoutError
    from StreamingBody.read), which is StoreUnavailable too, not a short object."""
    data = os.urandom(32 << 20)  # far more than the socket buffers hold
    store_for(moto_s3).put("latent/big.safetensors", data)  # moto may take more than a second to take it in
    store = store_for(moto_s3, s3_read_timeout_s=1)
    store.client.meta.events.register("after-call.s3.GetObject", lambda **_: moto_s3.pause())
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match=f"s3://{moto_s3.bucket}: get .*Read timeout"):
            store.get("latent/big.safetensors")
    finally:
        moto_s3.resume()
    assert time.monotonic() - started < 10


def test_refusals_are_unavailable_and_name_the_bucket(moto_s3):
    wrong_secret = store_for(moto_s3, s3_secret_access_key="not-the-secret")
    with pytest.raises(StoreUnavailable, match=f"s3://{moto_s3.bucket}: put .*SignatureDoesNotMatch \\(403\\)"):
        wrong_secret.put("png/a.png", b"a")
    with pytest.raises(StoreUnavailable, match="SignatureDoesNotMatch"):
        wrong_secret.get("png/a.png")  # a refusal, not "no such object"
    with pytest.raises(StoreUnavailable, match="InvalidAccessKeyId"):
        store_for(moto_s3, s3_access_key_id="AKIAUNKNOWN0000000000").delete("png/a.png")
    with pytest.raises(StoreUnavailable, match=r"s3://no-such-bucket: .*NoSuchBucket"):
        store_for(moto_s3, s3_endpoint_url=moto_s3.endpoint, results="s3://no-such-bucket").put("png/a.png", b"a")
    assert moto_s3.objects() == []


def test_connection_refused_is_unavailable(moto_s3):
    store = store_for(moto_s3, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable, match="Could not connect"):
        store.put("png/a.png", b"a")
    with pytest.raises(StoreUnavailable):
        store.get("png/a.png")


def test_throttling_and_5xx_are_unavailable_and_404_is_none(moto_s3):
    from botocore.stub import Stubber

    store = store_for(moto_s3)
    with Stubber(store.client) as stub:
        stub.add_client_error("get_object", "SlowDown", "Reduce your request rate.", 503)
        stub.add_client_error("put_object", "InternalError", "We encountered an internal error.", 500)
        stub.add_client_error("get_object", "NoSuchKey", "The specified key does not exist.", 404)
        with pytest.raises(StoreUnavailable, match="SlowDown \\(503\\)"):
            store.get("png/a.png")
        with pytest.raises(StoreUnavailable, match="InternalError \\(500\\)"):
            store.put("png/a.png", b"a")
        assert store.get("png/a.png") is None


def test_presigned_url_works_until_tampered_with(moto_s3):
    store = store_for(moto_s3)
    data = os.urandom(1000)
    name = png_name(data)
    store.put(name, data)
    url = store.presign(name, 60)
    assert url.startswith(f"{moto_s3.endpoint}/{moto_s3.bucket}/results/{name}?") and "X-Amz-Expires=60" in url
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == data
    at = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    other_signature = url[:at] + ("1" if url[at] == "0" else "0") + url[at + 1 :]
    other_key = url.replace(name, png_name(b"other"))
    store.put(png_name(b"other"), b"other")
    for tampered in (other_signature, other_key):
        answer = httpx.get(tampered)
        assert answer.status_code == 403 and b"SignatureDoesNotMatch" in answer.content


def test_presigned_url_names_the_public_endpoint(moto_s3):
    store = store_for(moto_s3, s3_public_url="https://results.example.test:8443")
    url = store.presign("png/a.png", 300)
    assert url.startswith(f"https://results.example.test:8443/{moto_s3.bucket}/results/png/a.png?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=300" in url
    assert store.presign("png/a.png", 300).startswith("https://results.example.test:8443/")


def test_environment_of_a_stack_process(moto_s3, monkeypatch):
    """MotoS3.env() is all that a process needs: the settings read it, open_store makes the store."""
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    store = open_store(Settings(), None)
    store.put("png/a.png", b"a")
    assert moto_s3.objects() == [f"{moto_s3.prefix}/png/a.png"]


def test_boto3_chain_when_settings_are_unset(moto_s3, monkeypatch, tmp_path):
    """Endpoint, credentials and region left to boto3: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...; us-east-1 when no
    region is named anywhere."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret_access_key)
    settings = Settings(results=f"s3://{moto_s3.bucket}", s3_addressing_style="path")
    store = S3Store.from_settings(moto_s3.bucket, settings)
    assert store.client.meta.region_name == "us-east-1"
    store.put("png/a.png", b"a")
    assert store.get("png/a.png") == b"a" and moto_s3.objects() == ["png/a.png"]
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert S3Store.from_settings(moto_s3.bucket, settings).client.meta.region_name == "eu-west-3"


def test_half_a_credential_is_refused():
    with pytest.raises(ValueError, match="together"):
        S3Store.from_settings("bucket", Settings(results="s3://bucket", s3_access_key_id="AKIA"))


def test_boto3_is_imported_only_for_an_s3_store(monkeypatch):
    code = "import sys, app.core.results.s3_store, app.core.settings; assert 'boto3' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ImportError, match=r"pip install 'diffusetv\[s3\]'"):
        S3Store.from_settings("bucket", Settings(results="s3://bucket"))
