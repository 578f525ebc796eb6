"""The submit is atomic and bounded: a job, its run, its open-run entry and its queue entry appear together or
not at all, each with a TTL; MAX_QUEUE, the followers of a run and each client's quota hold under races.

Real Redis; in process (with failures injected into the API's Redis client), and a real `diffusetv api` for
the concurrent cases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
import types

import httpx
import pytest
import redis as redis_lib
from fastapi import HTTPException
from fastapi.testclient import TestClient

from app.core import keys, objects, runs
from app.core.jobs import new_job_id
from app.core.png import encode_png
from app.core.results.redis_store import RedisStore
from app.core.settings import Settings
from app.core.submission import Idempotency
from app.core.submit import RECORD_BYTES, Admission, Bounds, Entry, admit, quota_for, replayed
from app.main import create_app
from helpers import claim_as_worker, expiry, generate_spec, registered, store_result, stored_bytes
from stack import Stack, free_port, stack_env

pytestmark = pytest.mark.each_redis

ENGINE = "cpu/fp32/aaaa"
ENGINE_RECORD = json.dumps({"device": "cpu", "precision": "fp32", "kernels": "aaaa"})
QUEUE = "rq:queue:" + keys.queue_name("tiny@1")
PERMANENT = {keys.METRICS, "diffusetv:workers", keys.RUNNING, "rq:queues", QUEUE, keys.OBJECTS}  # the service's own
SWEPT = (keys.object_entry(""), keys.blob(""))  # no TTL: the registry's sweep removes them (app.core.objects)


def half_made(conn) -> list[str]:
    """Every way the stored state can be half made: a key without TTL (but the objects, which the sweep removes), an
    object the sweep would never find, a succeeded job without its live object or whose object may go before it, a
    waiting job no queue entry leads to, an open-run entry or an RQ job without its counterpart."""
    problems = []
    queued = {i.decode() for i in conn.lrange(QUEUE, 0, -1)}
    for raw in conn.scan_iter(count=1000):
        key = raw.decode()
        if key not in PERMANENT and not key.startswith(SWEPT) and conn.ttl(key) < 0:
            problems.append(f"no TTL: {key}")
        if key.startswith(SWEPT) and expiry(conn, key.removeprefix(SWEPT[0]).removeprefix(SWEPT[1])) is None:
            problems.append(f"an object the sweep never finds: {key}")
    for raw in conn.scan_iter(match=keys.job("*"), count=1000):
        record = {k.decode(): v.decode() for k, v in conn.hgetall(raw).items()}
        if record.get("status") == "succeeded":
            name = objects.name(objects.PNG, record["sha256"])
            lives = time.time() + conn.ttl(raw) - 2
            if objects.state(conn, name) != "live" or (expiry(conn, name) or 0) < lives:
                problems.append(f"job {record['id']} outlives its object {name} ({objects.state(conn, name)})")
        if record.get("status") in ("queued", "running"):
            run_id = record.get("run", "")
            run = conn.hget(keys.run(run_id), "status")
            if run_id not in queued or run not in (b"queued", b"running"):
                problems.append(f"job {record.get('id')} waits for run {run_id!r} ({run}) that is not queued")
            if not conn.exists(keys.events(record["id"])):
                problems.append(f"job {record['id']} has no events")
    for raw in conn.scan_iter(match=keys.open_run("*"), count=1000):
        run_id = conn.get(raw).decode()
        if run_id not in queued:
            problems.append(f"{raw.decode()} points at run {run_id}, which is not queued")
    for raw in conn.scan_iter(match="rq:job:*", count=1000):
        job_id = raw.decode().removeprefix("rq:job:")
        if ":" not in job_id and not conn.exists(keys.job(job_id)):
            problems.append(f"RQ job {job_id} has no job record")
    return problems


def settings_for(tiny_store, redis_server, **overrides) -> Settings:
    return Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny", heartbeat_s=300, **overrides)


def cached_result(conn, client, seed: int, steps: int = 5, png: bytes | None = None) -> bytes:
    """A finished run's result for (seed, steps), as a worker leaves it: its PNG (a live object), its job and the cache
    entry."""
    model = client.get("/models").json()["models"][0]
    conn.set(keys.engine("tiny@1"), ENGINE, ex=600)
    png = png or encode_png(__import__("numpy").zeros((16, 16, 3), "uint8"), {"seed": seed})
    source = "f" * 32
    sha256 = store_result(conn, objects.PNG, png)
    record = {"id": source, "status": "succeeded", "sha256": sha256, "engine": ENGINE_RECORD, "batch_size": "1"}
    conn.hset(keys.job(source), mapping=record)
    conn.expire(keys.job(source), 600)
    entry = {"job": source, "sha256": sha256}
    key = runs.engine_key(generate_spec(types.SimpleNamespace(**model), seed, steps, 0.0), ENGINE)
    conn.set(keys.cache(key), json.dumps(entry), ex=600)
    return png


class Injected(redis_lib.ConnectionError):
    pass


def inject(app_redis, monkeypatch, at: int, after: bool) -> dict:
    """Fail the `at`-th Redis round trip of the API (a command or a pipeline), before it is sent or after it ran
    (its reply lost)."""
    calls = {"n": 0}
    command = redis_lib.Redis.execute_command
    pipeline = redis_lib.client.Pipeline.execute

    def step(run):
        calls["n"] += 1
        if calls["n"] == at and not after:
            raise Injected(f"injected before round trip {at}")
        result = run()
        if calls["n"] == at:
            raise Injected(f"injected after round trip {at}")
        return result

    app_redis.execute_command = types.MethodType(
        lambda self, *a, **kw: step(lambda: command(self, *a, **kw)), app_redis
    )
    monkeypatch.setattr(redis_lib.client.Pipeline, "execute", lambda self, *a, **kw: step(lambda: pipeline(self)))
    return calls


@pytest.mark.parametrize("kind", ["lead", "follow", "cached"])
@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
def test_a_failure_at_any_step_of_a_submit_leaves_nothing_half_made(tiny_store, redis_server, monkeypatch, kind, after):
    conn = redis_lib.Redis.from_url(redis_server.url)
    with TestClient(create_app(settings_for(tiny_store, redis_server)), raise_server_exceptions=False) as client:
        conn.set(keys.engine("tiny@1"), ENGINE, ex=600)
        if kind == "follow":
            assert client.post("/generate", json={"seed": 7, "steps": 5}).status_code == 202
        if kind == "cached":
            cached_result(conn, client, 7)
        app_redis = client.app.state.redis
        for at in range(1, 40):
            with monkeypatch.context() as m:
                calls = inject(app_redis, m, at, after)
                r = client.post("/generate", json={"seed": 7, "steps": 5})
            del app_redis.execute_command
            assert r.status_code in (202, 503), r.text
            assert half_made(conn) == [], f"a failure {'after' if after else 'before'} round trip {at}"
            if calls["n"] < at:  # the submit went through without reaching the failure: every step was tried
                break
        else:
            pytest.fail("the submit never finished")
        assert r.status_code == 202 and at > 1


def api_process(tiny_store, redis_server, tmp_path, **env: str) -> Stack:
    """A real `diffusetv api`, with a stand-in for a worker's claim of tiny@1 (a model nobody serves is 503)."""
    claim_as_worker(redis_server.url, "tiny@1", ENGINE)
    s = Stack(stack_env(redis_server.url, tiny_store.root, **env), free_port(), tmp_path)
    s.start_api()
    s.wait_healthy()
    return s


async def concurrently(base: str, bodies: list[dict], headers: dict | None = None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits, headers=headers or {}) as http:
        return await asyncio.gather(*(http.post("/generate", json=b) for b in bodies))


def test_max_queue_holds_under_concurrent_submits(tiny_store, redis_server, tmp_path):
    s = api_process(tiny_store, redis_server, tmp_path, DIFFUSETV_MAX_QUEUE="5")
    try:
        answers = asyncio.run(concurrently(s.base, [{"seed": i, "steps": 5} for i in range(60)]))
    finally:
        s.stop_all()
    statuses = [r.status_code for r in answers]
    conn = redis_lib.Redis.from_url(redis_server.url)
    assert statuses.count(202) == 5 and statuses.count(429) == 55, sorted(statuses)
    assert conn.llen(QUEUE) == 5
    assert all(int(r.headers["Retry-After"]) > 0 for r in answers if r.status_code == 429)
    assert half_made(conn) == []


def test_followers_of_one_run_are_bounded_and_there_is_never_a_second_run(tiny_store, redis_server, tmp_path):
    s = api_process(tiny_store, redis_server, tmp_path, DIFFUSETV_MAX_FOLLOWERS="3")
    try:
        answers = asyncio.run(concurrently(s.base, [{"seed": 9, "steps": 5, "previews": True}] * 12))
    finally:
        s.stop_all()
    statuses = sorted(r.status_code for r in answers)
    conn = redis_lib.Redis.from_url(redis_server.url)
    assert statuses == [202] * 4 + [429] * 8, statuses  # the leader and 3 followers
    assert conn.llen(QUEUE) == 1
    (run_id,) = {r.json()["id"] for r in answers if r.status_code == 202} & {
        i.decode() for i in conn.lrange(QUEUE, 0, -1)
    }
    assert conn.scard(keys.run_jobs(run_id)) == 4  # the worker's per-step work: 4 jobs, not 12
    assert half_made(conn) == []


def test_cache_hits_and_joins_count_against_the_clients_quota(tiny_store, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    a, b = "quota-key-a-" + "a" * 12, "quota-key-b-" + "b" * 12
    settings = settings_for(tiny_store, redis_server, api_keys=f"{a},{b}", client_jobs=5)
    with TestClient(create_app(settings)) as client:
        png = cached_result(conn, client, 3)
        as_a = {"Authorization": f"Bearer {a}"}
        hits = [client.post("/generate", json={"seed": 3, "steps": 5}, headers=as_a) for _ in range(8)]
        assert [r.status_code for r in hits] == [202] * 5 + [429] * 3
        assert all(r.json()["status"] == "succeeded" for r in hits[:5])  # cache hits, each charged the PNG's bytes
        refused = hits[-1]
        assert 0 < int(refused.headers["Retry-After"]) <= settings.quota_window_s
        assert "quota" in refused.json()["detail"]
        # a join of a queued run counts too, and another key keeps its own quota
        assert client.post("/generate", json={"seed": 4, "steps": 5}, headers=as_a).status_code == 429
        as_b = {"Authorization": f"Bearer {b}"}
        assert client.post("/generate", json={"seed": 3, "steps": 5}, headers=as_b).status_code == 202
    # no copy: the 6 hits point at the source's one object, live, kept as long as the last of them
    assert registered(conn, objects.PNG) == [objects.name(objects.PNG, hashlib.sha256(png).hexdigest())]
    (name,) = registered(conn, objects.PNG)
    assert objects.state(conn, name) == "live" and objects.size(conn, name) == len(png)
    assert expiry(conn, name) >= time.time() + settings.result_ttl - 5
    charged = sorted(int(conn.hget(k, "bytes")) for k in conn.scan_iter(match=keys.quota("*", "*")))
    assert charged == [len(png) + RECORD_BYTES, 5 * (len(png) + RECORD_BYTES)]  # still the object's bytes, per hit


def test_result_bytes_per_client_are_bounded(tiny_store, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    with TestClient(create_app(settings_for(tiny_store, redis_server, client_bytes=2**16))) as client:
        cached_result(conn, client, 3, png=b"\x89PNG" + b"\0" * 14_000)  # a 14 kB result
        statuses = [client.post("/generate", json={"seed": 3, "steps": 5}).status_code for _ in range(5)]
    assert statuses == [202, 202, 202, 429, 429], statuses  # 3 copies and their records fit in 64 KiB, a 4th not


def test_model_work_per_client_is_bounded_and_hits_and_joins_take_none(tiny_store, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    settings = settings_for(tiny_store, redis_server, client_compute=1_000)
    walk = {"seed_a": 1, "seed_b": 2, "frames": 8, "steps": 50}  # 8 rows x 50 steps: 400 image-steps
    with TestClient(create_app(settings)) as client:
        cached_result(conn, client, 3)
        first = client.post("/interpolate", json=walk)
        joined = client.post("/interpolate", json=walk)  # the same run: no more model work
        second = client.post("/interpolate", json={**walk, "seed_b": 3})
        third = client.post("/interpolate", json={**walk, "seed_b": 4})  # 1,200 > 1,000
        assert [r.status_code for r in (first, joined, second, third)] == [202, 202, 202, 429]
        assert conn.hget(keys.job(joined.json()["id"]), "run").decode() == first.json()["id"]
        assert "image-steps" in third.json()["detail"] and int(third.headers["Retry-After"]) > 0
        assert client.post("/generate", json={"seed": 1, "steps": 200}).status_code == 202  # 1,000 in all
        assert client.post("/generate", json={"seed": 2, "steps": 1}).status_code == 429
        hit = client.post("/generate", json={"seed": 3, "steps": 5})  # a cache hit takes no model work
        assert hit.status_code == 202 and hit.json()["status"] == "succeeded"
    assert conn.llen(QUEUE) == 3  # the two walks and the generation: the join and the hit queued nothing


def entry_for(engine_key: str = "", cache_key: str = "", cost: int = 100, compute: int = 10, **record) -> Entry:
    """A job for the script alone (no RQ job): an id, a record, its engine key."""
    job_id = new_job_id()
    fields = {"id": job_id, "status": "queued", **record}
    return Entry(job_id, fields, cost, QUEUE, engine_key, cache_key, compute)


def bounds_for(jobs: int = 100, max_queue: int = 100, max_followers: int = 100, compute: int = 10_000) -> Bounds:
    quota = quota_for("test", jobs, 2**30, 3600, time.time(), compute)
    return Bounds(quota, ttl=600, result_ttl=600, max_queue=max_queue, max_followers=max_followers)


def admit_all(conn, entries: list[Entry], bounds: Bounds | None = None, idempotency=None) -> Admission:
    """The script over `entries`, each leading run queued by hand (as its RQ commands would)."""
    commands = [[("RPUSH", QUEUE, e.job_id)] for e in entries]
    return admit(conn, entries, bounds or bounds_for(), commands, time.time(), idempotency)


def written(conn) -> set[str]:
    """Every key the script may write (jobs, runs, quotas, idempotency records, the queue)."""
    return {k.decode() for k in conn.scan_iter(count=1000)} - {keys.METRICS}


def test_entries_of_one_submission_share_a_run_and_are_written_together(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    a, b, c = entry_for("ek1"), entry_for("ek1"), entry_for("ek2")
    admission = admit_all(conn, [a, b, c])
    assert admission.admitted and admission.outcome == "lead" and admission.detail == a.job_id
    assert admission.jobs == (
        ("lead", a.job_id, "queued"),
        ("follow", a.job_id, "queued"),
        ("lead", c.job_id, "queued"),
    )
    assert admission.job_ids == (a.job_id, b.job_id, c.job_id)
    assert [i.decode() for i in conn.lrange(QUEUE, 0, -1)] == [a.job_id, c.job_id]  # b rides a's run
    assert sorted(runs.job_ids(conn, a.job_id)) == sorted([a.job_id, b.job_id])
    assert conn.hget(keys.job(b.job_id), "run") == a.job_id.encode()
    used = conn.hgetall(keys.quota("test", int(time.time() // 3600)))
    assert used == {b"jobs": b"3", b"bytes": b"300", b"compute": b"20"}  # one charge each; a join takes no work


@pytest.mark.parametrize(
    ("bound", "outcome"),
    [
        ({"jobs": 2}, "quota"),
        ({"max_queue": 2}, "queue_full"),
        ({"max_followers": 1}, "followers"),
        ({"compute": 15}, "quota"),
    ],
)
def test_one_refused_entry_refuses_the_whole_submission_and_writes_nothing(redis_server, bound, outcome):
    conn = redis_lib.Redis.from_url(redis_server.url)
    before = admit_all(conn, [entry_for("old")])  # a run already queued, with its leader
    assert before.outcome == "lead"
    keys_before = written(conn)
    entries = [entry_for("new1"), entry_for("old"), entry_for("new2")]  # 3 jobs, 2 new runs, 1 joiner of "old"
    if bound.get("max_followers"):
        entries.append(entry_for("old"))  # "old" has its leader and one follower: a second one is one too many
    admission = admit_all(conn, entries, bounds_for(**{"max_queue": 100, **bound}))
    assert not admission.admitted and admission.outcome == outcome and admission.job_ids == ()
    assert written(conn) == keys_before  # nothing of any entry: no job, no run, no charge, no queue entry
    assert conn.llen(QUEUE) == 1 and conn.scard(keys.run_jobs(before.detail)) == 1


def test_a_submission_up_to_its_bounds_is_admitted(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    entries = [entry_for(f"ek{i}") for i in range(3)]
    assert admit_all(conn, entries, bounds_for(jobs=3, max_queue=3, compute=30)).admitted
    assert conn.llen(QUEUE) == 3
    assert admit_all(conn, [entry_for("ek9")], bounds_for(jobs=4, max_queue=4, compute=30)).outcome == "quota"


def idempotency(key: str = "k1", fingerprint: str = "f1") -> Idempotency:
    return Idempotency("addr:loopback", key, fingerprint)


def test_an_idempotency_key_replays_its_jobs_refuses_another_body_and_charges_once(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    first = admit_all(conn, [entry_for("ek1"), entry_for("ek2")], idempotency=idempotency())
    assert first.admitted and not first.replayed
    quota_key = keys.quota("test", int(time.time() // 3600))
    charged = conn.hgetall(quota_key)
    again = admit_all(conn, [entry_for("ek3"), entry_for("ek4")], idempotency=idempotency())
    assert again.admitted and again.replayed and again.job_ids == first.job_ids
    other = admit_all(conn, [entry_for("ek5")], idempotency=idempotency(fingerprint="f2"))
    assert not other.admitted and other.outcome == "mismatch"
    assert conn.hgetall(quota_key) == charged and conn.llen(QUEUE) == 2  # neither charged nor queued anything
    digest = hashlib.sha256(b"k1").hexdigest()
    record = json.loads(conn.get(keys.idempotency("addr:loopback", digest)))
    assert record == {"fingerprint": "f1", "jobs": list(first.job_ids)}
    assert 0 < conn.ttl(keys.idempotency("addr:loopback", digest)) <= 86400
    other_scope = admit_all(conn, [entry_for("ek6")], idempotency=Idempotency("key:someone", "k1", "f2"))
    assert other_scope.admitted and not other_scope.replayed  # a key is its client's own


def test_a_refused_submission_records_no_idempotency_key(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    refused = admit_all(conn, [entry_for("a"), entry_for("b")], bounds_for(jobs=1), idempotency())
    assert refused.outcome == "quota"
    assert list(conn.scan_iter(match=keys.idempotency("*", "*"))) == []
    assert admit_all(conn, [entry_for("a")], bounds_for(jobs=1), idempotency()).admitted  # the same key, now fits


def test_a_replay_whose_jobs_expired_starts_new_jobs_and_rewrites_the_key(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    first = admit_all(conn, [entry_for("ek1")], idempotency=idempotency())
    conn.delete(keys.job(first.job_ids[0]))  # RESULT_TTL may end before the key's window
    again = admit_all(conn, [entry_for("ek2")], idempotency=idempotency())
    assert again.admitted and not again.replayed and again.job_ids != first.job_ids
    digest = hashlib.sha256(b"k1").hexdigest()
    assert json.loads(conn.get(keys.idempotency("addr:loopback", digest)))["jobs"] == list(again.job_ids)


def test_a_replay_with_one_of_its_jobs_expired_starts_them_all_anew(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    first = admit_all(conn, [entry_for("ek1"), entry_for("ek2")], idempotency=idempotency())
    assert replayed(conn, idempotency()) == list(first.job_ids)
    conn.delete(keys.job(first.job_ids[1]))  # its jobs' TTLs differ: one went first
    assert replayed(conn, idempotency()) is None
    again = admit_all(conn, [entry_for("ek3"), entry_for("ek4")], idempotency=idempotency())
    assert again.admitted and not again.replayed and set(again.job_ids).isdisjoint(first.job_ids)
    digest = hashlib.sha256(b"k1").hexdigest()
    assert json.loads(conn.get(keys.idempotency("addr:loopback", digest)))["jobs"] == list(again.job_ids)
    assert replayed(conn, idempotency()) == list(again.job_ids)


def test_another_body_is_a_mismatch_even_once_the_keys_jobs_expired(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    first = admit_all(conn, [entry_for("ek1")], idempotency=idempotency())
    conn.delete(keys.job(first.job_ids[0]))
    assert replayed(conn, idempotency(fingerprint="f2")) is None
    other = admit_all(conn, [entry_for("ek2")], idempotency=idempotency(fingerprint="f2"))
    assert not other.admitted and other.outcome == "mismatch"


WEBHOOK = {"webhook": "https://example.com/hook", "webhook_events": "start,completed", "webhook_ttl": "600"}


def deliveries_of(conn, job_id: str) -> list[dict[str, str]]:
    ids = [i.decode() for i in conn.lrange(keys.job_deliveries(job_id), 0, -1)]
    return [{k.decode(): v.decode() for k, v in conn.hgetall(keys.delivery(i)).items()} for i in ids]


def test_a_cache_hit_and_a_join_of_a_running_run_enqueue_their_webhook_deliveries(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    source = "f" * 32
    sha256 = store_result(conn, objects.PNG, b"\x89PNG")
    conn.hset(keys.job(source), mapping={"id": source, "status": "succeeded", "sha256": sha256})
    conn.set(keys.cache("ck"), json.dumps({"job": source, "sha256": sha256}), ex=600)
    hit, quiet = entry_for("ck", "ck", **WEBHOOK), entry_for("ck", "ck")
    assert admit_all(conn, [hit, quiet]).jobs == (("cached", source, "succeeded"),) * 2
    (delivery,) = deliveries_of(conn, hit.job_id)
    assert delivery["type"] == "job.completed" and delivery["url"] == WEBHOOK["webhook"]
    assert delivery["id"] == f"msg_{hit.job_id}_1" and delivery["job"] == hit.job_id
    assert json.loads(delivery["record"])["status"] == "succeeded" and json.loads(delivery["record"])["cached"] == "1"
    assert conn.zscore(keys.DELIVERIES_DUE, delivery["id"]) is not None
    assert deliveries_of(conn, quiet.job_id) == []  # no webhook, no delivery

    leader = admit_all(conn, [entry_for("run")])
    conn.hset(keys.run(leader.detail), "status", "running")
    joiner, queued_joiner = entry_for("run", **WEBHOOK), entry_for("ek", **WEBHOOK)
    assert admit_all(conn, [joiner, queued_joiner]).jobs == (
        ("follow", leader.detail, "running"),
        ("lead", queued_joiner.job_id, "queued"),
    )
    (started,) = deliveries_of(conn, joiner.job_id)
    assert started["type"] == "job.started" and json.loads(started["record"])["status"] == "running"
    assert deliveries_of(conn, queued_joiner.job_id) == []  # its start comes when a worker starts it


def test_submit_many_queues_every_job_or_none(tiny_store, redis_server):
    from app.core.spec import GenerateSpec
    from app.queueing import new_job, submit_many

    conn = redis_lib.Redis.from_url(redis_server.url)
    conn.set(keys.engine("tiny@1"), ENGINE, ex=600)
    manifest = tiny_store.resolve("tiny")

    def jobs(*seeds: int) -> list:
        specs = [GenerateSpec(new_job_id(), manifest.ref, manifest.identity, seed=s, steps=5, eta=0.0) for s in seeds]
        return [new_job(settings, spec, manifest) for spec in specs]

    settings = settings_for(tiny_store, redis_server, max_queue=3)
    ids = submit_many(conn, settings, jobs(1, 2, 2))  # the third joins the second's run
    assert [i.decode() for i in conn.lrange(QUEUE, 0, -1)] == ids[:2]
    assert conn.hget(keys.job(ids[2]), "run").decode() == ids[1]
    with pytest.raises(HTTPException) as refused:
        submit_many(conn, settings, jobs(3, 4))  # one new run fits the queue, two do not: neither is queued
    assert refused.value.status_code == 429 and "queue is full" in refused.value.detail
    assert conn.llen(QUEUE) == 2 and len(list(conn.scan_iter(match=keys.job("*")))) == 3
    assert half_made(conn) == []


# The result store (app.core.objects): a cache hit points at live objects, inputs are published with their jobs, and
# the deliver script gives a job only objects that are stored.


def snapshot(conn) -> dict[str, bytes]:
    """Every key and its serialized value: equal snapshots mean that nothing was written."""
    return {k.decode(): conn.dump(k) for k in conn.scan_iter(count=1000)}


def pending(conn, kind: str, data: bytes) -> str:
    """An object as an upload leaves it before a script publishes it: stored and reserved (pending). Its name."""
    name = objects.name(kind, hashlib.sha256(data).hexdigest())
    objects.put(conn, RedisStore(conn), name, data, hold_s=600, window_s=1)
    assert objects.state(conn, name) == "pending"
    return name


def claimed(conn, name: str) -> str:
    """The object taken by a sweep, as if its expiry had passed: `deleting`, its bytes not yet removed."""
    conn.zadd(keys.OBJECTS, {name: time.time() - 60})  # no GT: the score is lowered, as time passing would
    assert objects.claim(conn, name) is not None and objects.state(conn, name) == "deleting"
    return name


def swept(conn, name: str) -> None:
    """The object swept, as if its expiry had passed: deleted from the store and forgotten by the registry."""
    conn.zadd(keys.OBJECTS, {name: time.time() - 60})
    assert objects.sweep(conn, RedisStore(conn), 10) >= 1 and objects.state(conn, name) is None
    assert stored_bytes(conn, name) is None


RESULT = {"sha256": (objects.PNG, b"\x89PNG image"), "strip_sha256": (objects.PNG, b"\x89PNG strip")}
RESULT["latent_sha256"] = (objects.LATENT, b"safetensors latent")


def finished_source(conn, cache_key: str) -> tuple[str, dict[str, str]]:
    """A finished job with a PNG, a strip and a latent, all live, and the cache entry that names it: its id, and the
    names of its objects by record field."""
    source = new_job_id()
    digests = {f: store_result(conn, kind, data) for f, (kind, data) in RESULT.items()}
    conn.hset(keys.job(source), mapping={"id": source, "status": "succeeded", **digests})
    conn.expire(keys.job(source), 600)
    conn.set(keys.cache(cache_key), json.dumps({"job": source, "sha256": digests["sha256"]}), ex=600)
    return source, {f: objects.name(RESULT[f][0], d) for f, d in digests.items()}


def test_a_cache_hit_points_at_the_live_objects_keeps_them_as_long_as_itself_and_charges_their_bytes(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    source, names = finished_source(conn, "ck")
    hit = entry_for("ck", "ck")
    assert admit_all(conn, [hit]).jobs == (("cached", source, "succeeded"),)
    record = {k.decode(): v.decode() for k, v in conn.hgetall(keys.job(hit.job_id)).items()}
    assert record["status"] == "succeeded" and record["cached"] == "1"
    assert {f: objects.name(RESULT[f][0], record[f]) for f in RESULT} == names  # the same objects, no copy
    for name in names.values():
        assert objects.state(conn, name) == "live" and expiry(conn, name) >= time.time() + bounds_for().result_ttl - 5
    assert len(registered(conn, objects.PNG)) == 2 and len(registered(conn, objects.LATENT)) == 1
    used = conn.hgetall(keys.quota("test", int(time.time() // 3600)))
    assert int(used[b"bytes"]) == sum(len(data) for _, data in RESULT.values()) + RECORD_BYTES
    assert b"compute" not in used and conn.llen(QUEUE) == 0


@pytest.mark.parametrize("field", list(RESULT))
@pytest.mark.parametrize("how", ["deleting", "unregistered", "pending"])
def test_a_cache_hit_whose_object_is_not_live_is_a_miss_that_queues_a_new_run(redis_server, field, how):
    conn = redis_lib.Redis.from_url(redis_server.url)
    _, names = finished_source(conn, "ck")
    name = names[field]
    if how == "deleting":  # a sweep claimed it: it is going, whatever the cache entry says
        claimed(conn, name)
    elif how == "unregistered":  # the registry forgot it (swept), the record and the cache entry outlived it
        conn.delete(keys.object_entry(name))
        conn.zrem(keys.OBJECTS, name)
    else:  # reserved again by an upload that has not published it
        conn.hset(keys.object_entry(name), "state", "pending")
    before = {n: (objects.state(conn, n), expiry(conn, n)) for n in names.values()}
    miss = entry_for("ck", "ck")
    admission = admit_all(conn, [miss])
    assert admission.jobs == (("lead", miss.job_id, "queued"),)
    assert [i.decode() for i in conn.lrange(QUEUE, 0, -1)] == [miss.job_id]
    assert conn.hget(keys.job(miss.job_id), "status") == b"queued" and not conn.hexists(keys.job(miss.job_id), "cached")
    assert {n: (objects.state(conn, n), expiry(conn, n)) for n in names.values()} == before  # none kept by a miss
    assert conn.hget(keys.METRICS, "cache_hits") is None


def test_a_cache_hit_whose_object_a_sweep_holds_is_queued_again_never_410(tiny_store, redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    with TestClient(create_app(settings_for(tiny_store, redis_server))) as client:
        png = cached_result(conn, client, 3)
        claimed(conn, objects.name(objects.PNG, hashlib.sha256(png).hexdigest()))
        r = client.post("/generate", json={"seed": 3, "steps": 5})
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text
        job = client.get(f"/jobs/{r.json()['id']}").json()
        assert job["status"] == "queued"
        assert client.get(f"/jobs/{r.json()['id']}/image.png").status_code == 409  # not done yet: never 410
    assert [i.decode() for i in conn.lrange(QUEUE, 0, -1)] == [r.json()["id"]]


def with_input(engine_key: str, data: bytes) -> Entry:
    """A job that reads one input (its digest and size in Entry.inputs, as app.queueing stored it)."""
    entry = entry_for(engine_key)
    return dataclasses.replace(entry, inputs={hashlib.sha256(data).hexdigest(): len(data)})


@pytest.mark.parametrize("how", ["deleting", "swept"])
def test_an_input_swept_after_the_api_stored_it_refuses_the_whole_submission_and_writes_nothing(redis_server, how):
    conn = redis_lib.Redis.from_url(redis_server.url)
    kept, lost = b"an input that stays", b"an input the sweep takes"
    kept_name, lost_name = pending(conn, objects.INPUT, kept), pending(conn, objects.INPUT, lost)
    claimed(conn, lost_name) if how == "deleting" else swept(conn, lost_name)
    before = snapshot(conn)
    entries = [entry_for("plain"), with_input("a", kept), with_input("b", lost)]
    admission = admit_all(conn, entries, idempotency=idempotency())
    assert not admission.admitted and admission.outcome == "inputs" and admission.job_ids == ()
    assert admission.detail == hashlib.sha256(lost).hexdigest()
    assert snapshot(conn) == before  # no job, run, charge, queue entry or key; the kept input is still pending
    assert objects.state(conn, kept_name) == "pending"


def test_inputs_are_published_with_their_jobs_and_kept_as_long_as_the_longest(redis_server):
    conn = redis_lib.Redis.from_url(redis_server.url)
    data = b"an input two jobs read"
    name = pending(conn, objects.INPUT, data)
    held = expiry(conn, name)
    a, b = with_input("a", data), with_input("a", data)  # the second joins the first's run
    assert admit_all(conn, [a, b]).admitted
    assert objects.state(conn, name) == "live" and objects.size(conn, name) == len(data)
    assert expiry(conn, name) >= max(held, time.time() + bounds_for().ttl - 5)
    used = conn.hgetall(keys.quota("test", int(time.time() // 3600)))
    assert int(used[b"bytes"]) == 2 * (100 + len(data))  # each job is charged the input it reads


def test_a_route_whose_input_is_swept_before_the_script_answers_503_and_writes_nothing(
    tiny_store, redis_server, monkeypatch
):
    import base64

    import numpy as np

    import app.queueing

    conn = redis_lib.Redis.from_url(redis_server.url)
    real = app.queueing.admit

    def swept_first(redis, *args, **kwargs):  # a sweep between the API's store and the submit script
        for name in registered(redis, objects.INPUT):
            swept(redis, name)
        return real(redis, *args, **kwargs)

    monkeypatch.setattr(app.queueing, "admit", swept_first)
    image = base64.b64encode(encode_png(np.full((16, 16, 3), 120, "uint8"), {})).decode()
    with TestClient(create_app(settings_for(tiny_store, redis_server))) as client:
        conn.set(keys.engine("tiny@1"), ENGINE, ex=600)
        r = client.post("/generate", json={"seed": 1, "steps": 5, "image": image, "strength": 0.5})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
    assert "swept" in r.json()["detail"]
    assert not conn.keys(keys.job("*")) and not conn.keys(keys.quota("*", "*")) and conn.llen(QUEUE) == 0
    assert registered(conn, objects.INPUT) == [] and not conn.keys(keys.blob("*"))
    assert half_made(conn) == []


def waiting_job(conn, status: str = "running") -> str:
    job_id = new_job_id()
    conn.hset(keys.job(job_id), mapping={"id": job_id, "status": status, "webhook": WEBHOOK["webhook"]})
    conn.hset(keys.job(job_id), mapping={k: v for k, v in WEBHOOK.items() if k != "webhook"})
    conn.expire(keys.job(job_id), 600)
    return job_id


def delivery_of(conn, png: bytes, latent: bytes) -> tuple[dict[str, str], dict[str, int]]:
    """The fields and the objects (name -> size) a worker delivers for an inversion's PNG and latent."""
    fields = {"sha256": hashlib.sha256(png).hexdigest(), "latent_sha256": hashlib.sha256(latent).hexdigest()}
    stored = {pending(conn, objects.PNG, png): len(png), pending(conn, objects.LATENT, latent): len(latent)}
    return fields, stored


@pytest.mark.parametrize("how", ["deleting", "unregistered"])
def test_deliver_refuses_an_object_that_is_not_stored_and_writes_nothing(redis_server, how):
    from app.core.jobs import UNSTORED, deliver

    conn = redis_lib.Redis.from_url(redis_server.url)
    job_id = waiting_job(conn)
    fields, stored = delivery_of(conn, b"\x89PNG delivered", b"a latent")
    latent = next(n for n in stored if n.startswith(objects.LATENT))
    if how == "deleting":
        claimed(conn, latent)
    else:
        conn.delete(keys.object_entry(latent))
        conn.zrem(keys.OBJECTS, latent)
    before = snapshot(conn)
    entry = (keys.cache("ck"), json.dumps({"job": job_id, "sha256": fields["sha256"]}))
    assert deliver(conn, job_id, 600, fields, stored, entry) == UNSTORED
    assert snapshot(conn) == before  # still running: no fields, event, cache entry, webhook or object published


def test_deliver_publishes_the_objects_for_as_long_as_the_job_lives(redis_server):
    from app.core.jobs import DELIVERED, ENDED, deliver

    conn = redis_lib.Redis.from_url(redis_server.url)
    job_id = waiting_job(conn)
    fields, stored = delivery_of(conn, b"\x89PNG delivered", b"a latent")
    entry = (keys.cache("ck"), json.dumps({"job": job_id, "sha256": fields["sha256"]}))
    ttl = 3600  # longer than the objects' hold: their expiry is raised to the job's
    assert deliver(conn, job_id, ttl, fields, stored, entry) == DELIVERED
    record = {k.decode(): v.decode() for k, v in conn.hgetall(keys.job(job_id)).items()}
    assert record["status"] == "succeeded" and {f: record[f] for f in fields} == fields
    assert ttl - 5 <= conn.ttl(keys.job(job_id)) <= ttl and conn.get(keys.cache("ck")) is not None
    for name, size in stored.items():
        assert objects.state(conn, name) == "live" and objects.size(conn, name) == size
        assert expiry(conn, name) >= time.time() + ttl - 5
    assert [d["type"] for d in deliveries_of(conn, job_id)] == ["job.completed"]
    # a job that ended meanwhile takes nothing: its objects are not published for it
    canceled = waiting_job(conn, "canceled")
    others, more = delivery_of(conn, b"\x89PNG for nobody", b"another latent")
    before = snapshot(conn)
    assert deliver(conn, canceled, ttl, others, more) == ENDED
    assert snapshot(conn) == before and all(objects.state(conn, n) == "pending" for n in more)
