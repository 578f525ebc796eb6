"""The API's input handling, in process against a real Redis (no worker needed)."""

import json

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app
from helpers import claim_as_worker

pytestmark = pytest.mark.each_redis


@pytest.fixture
def client(tiny_store, redis_server):
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny")
    claim_as_worker(redis_server.url)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"seed": 1, "steps": 0}, "steps"),
        ({"seed": 1, "steps": 1001}, "steps"),
        ({"seed": 1, "eta": -0.1}, "eta"),
        ({"seed": 1, "eta": 1.5}, "eta"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**53}, "seed"),
        ({"seed": "42"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": 1, "steps": "50"}, "steps"),
        ({"seed": 1, "colour": "red"}, "colour"),
        ({"seed": 1, "model": "nope"}, "model"),
        ({"seed": 1, "model": "../etc"}, "model"),
        ({"seed": 1, "previews": "yes"}, "previews"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(client, body, field):
    r = client.post("/generate", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(field in err["loc"] for err in detail), detail


def test_unknown_model_names_the_available_ones(client):
    r = client.post("/generate", json={"seed": 1, "model": "nope"})
    assert "tiny@1" in r.json()["detail"][0]["msg"]


def test_missing_and_malformed_bodies(client):
    assert client.post("/generate").status_code == 422
    r = client.post("/generate", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


def test_body_over_64_kib_is_413(client):
    r = client.post(
        f"/jobs/{'0' * 32}",
        content=b'{"seed": 1, "x": "' + b"a" * 70_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json() == {"detail": "request body over 64 KiB"}  # the routes without pictures


def test_accepted_job_and_its_defaults(client):
    r = client.post("/generate", json={"seed": 2**53 - 1})
    assert r.status_code == 202
    job = r.json()
    assert r.headers["Location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["queue_position"] == 0
    assert job["params"] == {"seed": 2**53 - 1, "steps": 50, "eta": 0.0, "previews": False}
    assert job["model"]["name"] == "tiny" and len(job["model"]["digest"]) == 64
    second = client.post("/generate", json={"seed": 3, "steps": 5, "eta": 1}).json()
    assert client.get(f"/jobs/{second['id']}").json()["queue_position"] == 1


@pytest.mark.parametrize("job_id", ["nope", "0" * 31, "G" * 32, "0" * 33, "..%2F..%2Fetc"])
def test_malformed_and_unknown_ids_are_404(client, job_id):
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(f"/jobs/{'a' * 32}").status_code == 404
    assert client.delete(f"/jobs/{'a' * 32}").status_code == 404


def test_image_of_an_unfinished_job_is_409_and_cancel_twice_is_409(client):
    job = client.post("/generate", json={"seed": 5}).json()
    assert client.get(f"/jobs/{job['id']}/image.png").status_code == 409
    r = client.delete(f"/jobs/{job['id']}")
    assert r.status_code == 202 and r.json()["status"] == "canceled"
    assert client.delete(f"/jobs/{job['id']}").status_code == 409


def test_queue_full_is_429_with_retry_after(tiny_store, redis_server):
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", max_queue=2)
    claim_as_worker(redis_server.url)
    with TestClient(create_app(settings)) as c:
        assert [c.post("/generate", json={"seed": i}).status_code for i in range(3)] == [202, 202, 429]
        r = c.post("/generate", json={"seed": 9})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


def test_models_and_openapi(client):
    models = client.get("/models").json()
    assert models["default"] == "tiny@1"
    assert [m["ref"] for m in models["models"]] == ["tiny@1"] and models["models"][0]["default"]
    schema = client.get("/openapi.json").json()
    props = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert props["steps"]["maximum"] == 1000 and props["steps"]["default"] == 50
    seed = next(option for option in props["seed"]["anyOf"] if option.get("type") == "integer")
    assert seed["maximum"] == 2**53 - 1 and props["seed"]["description"]
    assert schema["components"]["schemas"]["GenerateRequest"]["additionalProperties"] is False
    entry = schema["components"]["schemas"]["ModelEntry"]
    assert {"kind", "shape", "conditioning", "served", "identity"} <= set(entry["required"])
    assert schema["components"]["schemas"]["Shape"]["required"] == ["height", "width", "channels"]
    (model,) = models["models"]
    assert model["served"] and model["kind"] == "ddim-unet" and model["conditioning"] == "none"
    assert model["shape"] == {"height": 16, "width": 16, "channels": 3} and model["image_size"] == 16


def test_readyz_is_503_without_a_worker(client, redis_server):
    import redis

    from app.core import keys

    assert client.get("/readyz").json()["detail"]["models"] == {"tiny@1": True}
    redis.Redis.from_url(redis_server.url).delete(keys.engine("tiny@1"))  # as when the last worker's TTL ends
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["detail"] == {"models": {"tiny@1": False}, "workers": 0, "serving": 0}
    assert int(r.headers["Retry-After"]) > 0
    assert client.get("/healthz").status_code == 200
    api = client.get("/readyz", params={"scope": "api"})  # an API pod is ready without workers: Redis answers
    assert api.status_code == 200 and api.json() == {"status": "ready", "detail": {"scope": "api"}}
    assert client.get("/readyz", params={"scope": "nope"}).status_code == 422


def test_redis_down_is_503_with_retry_after(tiny_store):
    from stack import free_port

    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", model_store=tiny_store.root, model="tiny")
    with TestClient(create_app(settings)) as c:
        for call in (
            lambda: c.post("/generate", json={"seed": 1}),
            lambda: c.get(f"/jobs/{'a' * 32}"),
            lambda: c.get("/readyz"),
            lambda: c.get("/readyz", params={"scope": "api"}),
        ):
            r = call()
            assert r.status_code == 503 and r.headers["Retry-After"] == "2"
            assert r.json() == {"detail": "Redis is unavailable; retry later"}


def test_a_full_redis_is_503_and_the_job_is_not_half_made(client, redis_server):
    import redis

    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", max(1, r.info("memory")["used_memory"] - 1024))
    try:
        resp = client.post("/generate", json={"seed": 1})
        assert resp.status_code == 503 and resp.json()["detail"] == "Redis is full; retry later"
    finally:
        r.config_set("maxmemory", 0)
    assert r.llen("rq:queue:diffusetv:generate:tiny@1") == 0


@pytest.mark.parametrize("eta", ["0.5", True, None, [0.5]])
def test_eta_is_strict_too(client, eta):
    r = client.post("/generate", json={"seed": 1, "eta": eta})
    assert r.status_code == 422 and any("eta" in e["loc"] for e in r.json()["detail"])


def test_a_body_that_is_not_utf8_is_422(client):
    r = client.post("/generate", content=b'{"seed": "\xe9"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


def test_openapi_documents_errors_and_no_bearer_scheme_without_keys(client):
    schema = client.get("/openapi.json").json()
    generate = schema["paths"]["/generate"]["post"]["responses"]
    assert {"202", "413", "422", "429", "503"} <= set(generate) and "401" not in generate
    assert {"404", "409"} <= set(schema["paths"]["/jobs/{job_id}"]["delete"]["responses"])
    assert "securitySchemes" not in schema["components"]


def test_a_chunked_body_over_64_kib_is_413(client):
    def chunks():
        for _ in range(20):
            yield b"x" * 4096

    r = client.post(f"/jobs/{'0' * 32}", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_minus_zero_eta_is_zero(client, redis_server):
    a = client.post("/generate", json={"seed": 77, "eta": 0.0}).json()
    b = client.post("/generate", json={"seed": 77, "eta": -0.0}).json()
    assert b["params"]["eta"] == 0.0 and str(b["params"]["eta"]) == "0.0"
    assert b["queue_position"] == a["queue_position"] == 0  # the same run


@pytest.fixture
def lenient_client(tiny_store, redis_server):
    """A client that sees a server error as the 500 a user would get, rather than as the exception."""
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"seed": 1, "eta": NaN}', "eta"),
        (b'{"seed": Infinity}', "seed"),
        (b'{"seed": 1, "steps": -Infinity}', "steps"),
        (b'{"seed": 1, "colour": NaN}', "colour"),
        (b'{"seed": 1, "previews": [NaN, {"x": Infinity}]}', "previews"),
    ],
)
def test_non_finite_numbers_are_a_json_422_and_nothing_is_logged_as_an_error(lenient_client, caplog, body, field):
    with caplog.at_level("WARNING"):
        r = lenient_client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json", r.text
    assert any(field in err["loc"] for err in r.json()["detail"]), r.json()
    assert [rec for rec in caplog.records if rec.levelname in ("ERROR", "CRITICAL")] == []


def test_an_unknown_model_names_no_server_path_and_no_other_kind_of_model(tiny_store, redis_server):
    import shutil

    from model_store.store import BUNDLED

    shutil.copytree(BUNDLED / "emoji32-features", tiny_store.root / "emoji32-features")  # not a generative model
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny")
    with TestClient(create_app(settings)) as c:
        for model in ("nope", "emoji32-features", "nope@3"):
            r = c.post("/generate", json={"seed": 1, "model": model})
            message = json.dumps(r.json())
            assert r.status_code == 422 and str(tiny_store.root) not in message and "/models" not in message, message
            msg = r.json()["detail"][0]["msg"]
            assert "tiny@1" in msg
            assert "emoji32-features" not in msg.replace(repr(model), ""), msg  # only what the client sent


def waited_for(answer: bytes) -> bool:
    """The whole response is in: its Content-Length bytes follow the head."""
    head, _, body = answer.partition(b"\r\n\r\n")
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return bool(length) and len(body) >= length[0]


@pytest.mark.each_redis(False)  # the API process's own answer: no Redis difference
def test_a_body_that_never_finishes_is_408_within_the_body_timeout(tiny_store, redis_server, tmp_path):
    import socket
    import time

    from stack import Stack, free_port, stack_env

    s = Stack(stack_env(redis_server.url, tiny_store.root, DIFFUSETV_BODY_TIMEOUT_S="1"), free_port(), tmp_path)
    s.start_api()
    try:
        s.wait_healthy()
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            head = (
                b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            sock.sendall(head + b'{"seed": ')  # and never the rest
            started = time.monotonic()
            sock.settimeout(6)
            answer = b""
            try:
                while chunk := sock.recv(4096):  # the head and the body may come in separate packets
                    answer += chunk
                    if b"\r\n\r\n" in answer and waited_for(answer):
                        break
            except TimeoutError:
                pass
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert waited < 4, waited
        assert b"did not arrive" in answer
    finally:
        s.stop_all()


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data", None]
)
def test_a_body_not_declared_as_json_is_415_saying_so(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/generate", content=b'{"seed": 1}', headers=headers)
    assert r.status_code == 415
    assert r.json()["detail"] == (
        f"the body must be JSON, sent with Content-Type: application/json (this one: {content_type or 'none'})"
    )


def test_json_with_a_charset_is_read_and_an_empty_body_is_still_422(client):
    r = client.post("/generate", content=b'{"seed": 1}', headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 202
    assert client.post("/generate").status_code == 422


LONE_SURROGATES = [  # JSON's escapes can write half of a UTF-16 pair, which no UTF-8 text can hold
    ("/generate", b'{"seed": 1, "prompt": "\\ud800"}', "prompt"),
    ("/generate", b'{"seed": 1, "model": "tiny\\udfff"}', "model"),
    ("/generate", b'{"seed": 1, "colour": "\\ud800"}', "colour"),
    ("/generate", b'{"seed": 1, "\\ud800": 1}', "body"),
    ("/generate", b'{"seed": 1, "previews": [{"\\udc00": "\\ud800"}]}', "previews"),
    ("/generate", b'"\\ud800"', "body"),
    ("/interpolate", b'{"seed_a": 1, "seed_b": 2, "prompt_b": "a \\ud800 b"}', "prompt_b"),
    ("/interpolate", b'{"seed_a": 1, "seed_b": 2, "frames": {"\\ud800": "\\udc00"}}', "frames"),
]


@pytest.mark.parametrize(("path", "body", "field"), LONE_SURROGATES)
def test_a_lone_surrogate_is_a_json_422_naming_the_field(lenient_client, caplog, path, body, field):
    with caplog.at_level("WARNING"):
        r = lenient_client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json", r.text[-300:]
    detail = r.json()["detail"]
    assert any(err["loc"][-1] == field for err in detail), detail
    assert "\\ud" in r.text  # the input echoed, a lone surrogate written as its escape
    assert [rec for rec in caplog.records if rec.levelname in ("ERROR", "CRITICAL")] == []


@pytest.mark.each_redis(False)  # the API process's own answer: no Redis difference
def test_a_lone_surrogate_is_a_json_422_from_the_api_process(tiny_store, redis_server, tmp_path):
    from stack import Stack, free_port, stack_env

    s = Stack(stack_env(redis_server.url, tiny_store.root), free_port(), tmp_path)
    s.start_api()
    try:
        s.wait_healthy()
        with s.client() as c:
            for path, body, field in LONE_SURROGATES:
                r = c.post(path, content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 422 and r.headers["content-type"] == "application/json", r.text[-300:]
                assert any(err["loc"][-1] == field for err in r.json()["detail"])
    finally:
        s.stop_all()
    log = s.log("api")
    assert "Traceback" not in log and "Logging error" not in log and " 500 " not in log, log[-3000:]
