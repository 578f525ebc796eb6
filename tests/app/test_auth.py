"""Bearer-key authentication and job isolation between keys."""

import inspect

import pytest
from fastapi.testclient import TestClient

from app import auth
from app.core.settings import Settings
from app.main import create_app
from helpers import claim_as_worker

KEY_A, KEY_B = "alpha-" + "a" * 26, "bravo-" + "b" * 26


@pytest.fixture
def client(tiny_store, redis_server):
    settings = Settings(
        redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", api_keys=f"{KEY_A}, {KEY_B}"
    )
    claim_as_worker(redis_server.url)
    with TestClient(create_app(settings)) as c:
        yield c


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong-key-" + "x" * 22),
        {"Authorization": KEY_A},
        {"Authorization": f"Basic {KEY_A}"},
        bearer(KEY_A[:-1]),
    ],
)
def test_missing_or_wrong_keys_are_401(client, headers):
    r = client.post("/generate", json={"seed": 1}, headers=headers)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert client.get(f"/jobs/{'a' * 32}", headers=headers).status_code == 401
    assert client.get("/metrics", headers=headers).status_code == 401


def test_right_keys_work_and_jobs_belong_to_their_key(client):
    r = client.post("/generate", json={"seed": 1}, headers=bearer(KEY_A))
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert client.get(f"/jobs/{job_id}", headers=bearer(KEY_A)).status_code == 200
    for call in (client.get, client.delete):
        assert call(f"/jobs/{job_id}", headers=bearer(KEY_B)).status_code == 404
    assert client.get(f"/jobs/{job_id}/image.png", headers=bearer(KEY_B)).status_code == 404
    assert client.get(f"/jobs/{job_id}/image.png", headers=bearer(KEY_A)).status_code == 409
    assert client.delete(f"/jobs/{job_id}", headers=bearer(KEY_A)).status_code == 202
    assert client.get("/metrics", headers=bearer(KEY_B)).status_code == 200


def test_open_endpoints_stay_open(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200  # open (the fixture stands in for the worker's claim)
    assert client.get("/models").status_code == 200


def test_the_key_is_not_stored(client, redis_server):
    import redis

    job_id = client.post("/generate", json={"seed": 2}, headers=bearer(KEY_A)).json()["id"]
    conn = redis.Redis(host="127.0.0.1", port=redis_server.port)
    dump = b"".join(conn.dump(k) or b"" for k in conn.keys("*"))
    assert KEY_A.encode() not in dump
    assert conn.hget(f"diffusetv:job:{job_id}", "owner") == auth.owner_id(KEY_A).encode()


def test_comparison_is_constant_time_in_the_code():
    source = inspect.getsource(auth.constant_time_match)
    assert "hmac.compare_digest" in source and "break" not in source and "return True" not in source
    assert auth.constant_time_match(KEY_B, [KEY_A, KEY_B]) and not auth.constant_time_match("x", [KEY_A])


def test_short_keys_are_refused_at_start_up():
    with pytest.raises(ValueError, match="16 characters"):
        Settings(api_keys="short")


def test_openapi_declares_the_bearer_scheme_with_keys(client):
    schema = client.get("/openapi.json").json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert "401" in schema["paths"]["/generate"]["post"]["responses"]
