"""The request side of webhooks: `webhook` and `webhook_events` on POST /generate, /interpolate and /invert, checked
at submit (422 naming the field), kept in the job's record and out of its spec, so they never split a run.

Real Redis, the API in process; no notifier (the deliveries' sending is tested with it, in test_webhooks_e2e)."""

from __future__ import annotations

import hashlib
import json
import types

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app.auth import owner_id
from app.core import keys, objects, runs
from app.core.settings import Settings
from app.core.signing import new_secret
from app.main import create_app
from helpers import claim_as_worker, generate_spec, store_result

HOOK = "https://example.com/hooks/diffusetv"


def settings_for(tiny_store, redis_server, **overrides) -> Settings:
    return Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", heartbeat_s=300, **overrides)


@pytest.fixture
def client(tiny_store, redis_server):
    claim_as_worker(redis_server.url)
    with TestClient(create_app(settings_for(tiny_store, redis_server, webhook_secret=new_secret()))) as c:
        yield c


def refused_field(r) -> tuple[str, str]:
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    return error["loc"][-1], error["msg"]


def record(redis_server, job_id: str) -> dict[str, str]:
    raw = redis_lib.Redis.from_url(redis_server.url).hgetall(keys.job(job_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_a_webhook_is_kept_with_the_job_and_never_splits_its_run(client, redis_server):
    hooked = client.post("/generate", json={"seed": 3, "steps": 5, "webhook": HOOK})
    assert hooked.status_code == 202, hooked.text
    fields = record(redis_server, hooked.json()["id"])
    assert fields["webhook"] == HOOK and fields["webhook_events"] == "completed" and int(fields["webhook_ttl"]) > 0
    assert "webhook" not in json.loads(fields["params"]) and "webhook" not in hooked.json()["params"]
    events = {"webhook": HOOK, "webhook_events": ["progress", "start"]}
    joined = client.post("/generate", json={"seed": 3, "steps": 5, **events})
    plain = client.post("/generate", json={"seed": 3, "steps": 5})
    lead = hooked.json()["id"]
    for r in (joined, plain):
        assert r.status_code == 202 and record(redis_server, r.json()["id"])["run"] == lead  # one run for all three
    assert record(redis_server, joined.json()["id"])["webhook_events"] == "start,progress"
    assert "webhook" not in record(redis_server, plain.json()["id"])


def test_interpolate_and_invert_take_a_webhook_too(client, redis_server):
    r = client.post("/interpolate", json={"seed_a": 1, "seed_b": 2, "steps": 5, "webhook": HOOK})
    assert r.status_code == 202 and record(redis_server, r.json()["id"])["webhook"] == HOOK
    r = client.post("/invert", json={"image": "AAAA", "webhook_events": ["completed"]})
    assert refused_field(r) == ("webhook_events", "webhook_events needs a `webhook`")


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"webhook_events": ["completed"]}, "webhook_events", "needs a `webhook`"),
        ({"webhook": HOOK, "webhook_events": []}, "webhook_events", "at least 1"),
        ({"webhook": HOOK, "webhook_events": ["start", "start"]}, "webhook_events", "at most once"),
        ({"webhook": HOOK, "webhook_events": ["done"]}, 0, "'start', 'progress' or 'completed'"),
        ({"webhook": "https://example.com/" + "a" * 2048}, "webhook", "at most 2048"),
        ({"webhook": "ftp://example.com/x"}, "webhook", "https://"),
        ({"webhook": "https://user:pw@example.com/x"}, "webhook", "no user name"),
        ({"webhook": "https://169.254.169.254/latest"}, "webhook", ""),
        ({"webhook": "https://127.1/x"}, "webhook", ""),  # a numeric form getaddrinfo reads as 127.0.0.1
        ({"webhook": "http://127.0.0.1:9/x"}, "webhook", ""),
        ({"webhook": "http://93.184.215.14/x"}, "webhook", "plain http"),
    ],
)
def test_a_refused_webhook_is_a_422_naming_the_field(client, redis_server, extra, field, words):
    r = client.post("/generate", json={"seed": 1, "steps": 5, **extra})
    loc, msg = refused_field(r)
    assert loc == field and words in msg, msg
    assert redis_lib.Redis.from_url(redis_server.url).llen("rq:queue:" + keys.queue_name("tiny@1")) == 0


def test_an_allowed_network_takes_plain_http(tiny_store, redis_server):
    claim_as_worker(redis_server.url)
    settings = settings_for(tiny_store, redis_server, webhook_secret=new_secret(), webhook_allow_nets="127.0.0.1/32")
    with TestClient(create_app(settings)) as c:
        assert c.post("/generate", json={"seed": 1, "steps": 5, "webhook": "http://127.0.0.1:9/x"}).status_code == 202
        loc, _ = refused_field(c.post("/generate", json={"seed": 1, "steps": 5, "webhook": "http://127.0.0.2:9/x"}))
        assert loc == "webhook"


def test_a_webhook_needs_a_secret_to_sign_with(tiny_store, redis_server, tmp_path):
    claim_as_worker(redis_server.url)
    body = {"seed": 1, "steps": 5, "webhook": HOOK}
    with TestClient(create_app(settings_for(tiny_store, redis_server))) as c:
        assert refused_field(c.post("/generate", json=body)) == ("webhook", "webhooks need DIFFUSETV_WEBHOOK_SECRET")
    a, b = "hook-key-a-" + "a" * 12, "hook-key-b-" + "b" * 12
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({owner_id(a): new_secret()}))
    settings = settings_for(tiny_store, redis_server, api_keys=f"{a},{b}", webhook_secrets_file=secrets)
    with TestClient(create_app(settings)) as c:
        assert c.post("/generate", json=body, headers={"Authorization": f"Bearer {a}"}).status_code == 202
        loc, msg = refused_field(c.post("/generate", json=body, headers={"Authorization": f"Bearer {b}"}))
        assert (loc, msg.startswith("this API key has no webhook secret")) == ("webhook", True)


def test_a_url_that_answered_410_is_refused_for_its_owner(client, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    conn.set(keys.webhook_gone("", hashlib.sha256(HOOK.encode()).hexdigest()), "1", ex=600)
    loc, msg = refused_field(client.post("/generate", json={"seed": 1, "steps": 5, "webhook": HOOK}))
    assert loc == "webhook" and "410 Gone" in msg
    other = client.post("/generate", json={"seed": 1, "steps": 5, "webhook": HOOK + "/other"})
    assert other.status_code == 202


def test_a_cache_hit_enqueues_its_completed_delivery_at_submit(client, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    engine = "cpu/fp32/aaaa"
    conn.set(keys.engine("tiny@1"), engine, ex=600)
    model = client.get("/models").json()["models"][0]
    source, png = "f" * 32, b"\x89PNG cached"
    sha256 = store_result(conn, objects.PNG, png)
    conn.hset(keys.job(source), mapping={"id": source, "status": "succeeded", "sha256": sha256})
    key = runs.engine_key(generate_spec(types.SimpleNamespace(**model), 3, 5, 0.0), engine)
    conn.set(keys.cache(key), json.dumps({"job": source, "sha256": sha256}), ex=600)
    hit = client.post("/generate", json={"seed": 3, "steps": 5, "webhook": HOOK})
    assert hit.status_code == 202 and hit.json()["status"] == "succeeded"
    job_id = hit.json()["id"]
    (delivery_id,) = [i.decode() for i in conn.lrange(keys.job_deliveries(job_id), 0, -1)]
    delivery = {k.decode(): v.decode() for k, v in conn.hgetall(keys.delivery(delivery_id)).items()}
    assert (delivery["type"], delivery["url"], delivery["job"]) == ("job.completed", HOOK, job_id)
    assert json.loads(delivery["record"])["status"] == "succeeded"
    assert conn.zscore(keys.DELIVERIES_DUE, delivery_id) is not None
    plain = client.post("/generate", json={"seed": 3, "steps": 5})  # no webhook: nothing to deliver
    assert plain.json()["status"] == "succeeded" and not conn.exists(keys.job_deliveries(plain.json()["id"]))
