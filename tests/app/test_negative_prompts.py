"""Negative prompts for the emoji text kind (`ddim-unet-text`) through the API: the API and a worker in process,
against a real Redis (docs/API.md, "Prompts")."""

import numpy as np
import pytest
import redis as redis_lib
import torch
from fastapi.testclient import TestClient
from rq import Queue
from rq.serializers import JSONSerializer

from app.core import keys
from app.core.png import decode_png, read_parameters
from app.core.settings import Settings, get_settings
from app.main import create_app
from helpers import make_tiny_net, save_tiny_text
from model_store import Store
from model_store.errors import ModelStoreError
from model_store.weights import save_model
from worker import registry
from worker.engine import load_engine
from worker.main import DiffuseWorker

REFS = ("tiny@1", "words@1")
STEPS = 6


class BurstWorker(DiffuseWorker):
    """The worker of a burst run in process, without RQ's command channel: stopping its listener thread can wait out
    the thread's 60 s poll (redis-py's PubSubWorkerThread.stop joins it), and a burst takes no commands."""

    def subscribe(self) -> None:
        pass


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """tiny@1 (no prompt) and words@1 (a tiny text model), loaded once for the module's tests."""
    store = Store(tmp_path_factory.mktemp("models"))
    save_model(store, "tiny", make_tiny_net(), "offset_cosine", [0.5, 0.45, 0.4], [0.25, 0.2, 0.3], {"steps": 0})
    save_tiny_text(store)
    return store, {ref: load_engine(ref, store, device="cpu") for ref in REFS}


@pytest.fixture
def service(engines, redis_server, monkeypatch):
    """An API client and a `work()` that runs the queues dry in this process (as `rq worker --burst`)."""
    store, loaded = engines
    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(store.root))
    monkeypatch.setenv("DIFFUSETV_BUNDLED_MODELS", "0")
    monkeypatch.setenv("DIFFUSETV_MAX_BATCH_WAIT_MS", "0")
    get_settings.cache_clear()
    settings = Settings(redis_url=redis_server.url, model_store=store.root, model="tiny")
    conn = redis_lib.Redis.from_url(redis_server.url)
    for ref, engine in loaded.items():
        registry.ENGINES[ref] = engine
        conn.set(keys.engine(ref), engine.id)

    def work():
        queues = [Queue(keys.queue_name(ref), connection=conn, serializer=JSONSerializer) for ref in REFS]
        BurstWorker(queues, connection=conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")

    with TestClient(create_app(settings)) as client:
        client.work, client.redis = work, conn
        yield client
    registry.ENGINES.clear()
    get_settings.cache_clear()


def errors(r) -> dict[str, str]:
    assert r.status_code == 422, r.text
    return {err["loc"][-1]: err["msg"] for err in r.json()["detail"]}


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/generate", {"seed": 1, "negative_prompt": "red"}, "needs a prompt"),
        ("/generate", {"seed": 1, "prompt": "  ", "negative_prompt": "red"}, "needs a prompt"),
        ("/generate", {"seed": 1, "prompt": "cat face", "negative_prompt": "zebra"}, "known words include: "),
        ("/generate", {"seed": 1, "prompt": "cat face", "negative_prompt": "!!!"}, "no word"),
        ("/generate", {"seed": 1, "prompt": "cat face", "negative_prompt": "red\x07heart"}, "U+0007"),
        ("/generate", {"seed": 1, "prompt": "cat face", "negative_prompt": "x" * 2001}, "at most 2000 characters"),
        ("/interpolate", {"seed_a": 1, "seed_b": 2, "negative_prompt": "red"}, "needs a prompt"),
        ("/interpolate", {"seed_a": 1, "seed_b": 2, "prompt": "cat", "negative_prompt": "zebra"}, "no word"),
        ("/generate", {"model": "tiny", "seed": 1, "negative_prompt": "red"}, "does not take 'negative_prompt'"),
        ("/generate", {"model": "tiny", "seed": 1, "negative_prompt": ""}, "does not take 'negative_prompt'"),
        ("/interpolate", {"model": "tiny", "seed_a": 1, "seed_b": 2, "negative_prompt": "red"}, "does not take"),
    ],
)
def test_a_bad_negative_prompt_is_422_naming_the_field(service, path, body, says):
    found = errors(service.post(path, json={"model": "words", **body}))
    assert "negative_prompt" in found and says in found["negative_prompt"], found


def test_the_job_holds_the_normalised_negative_prompt_and_an_empty_one_is_none(service):
    body = {"model": "words", "seed": 4, "steps": STEPS, "prompt": "cat face", "guidance": 3.0}
    plain = service.post("/generate", json=body).json()
    negative = service.post("/generate", json={**body, "negative_prompt": "  DOG\u00a0face "})
    assert negative.status_code == 202, negative.text
    assert negative.json()["params"] == {**plain["params"], "negative_prompt": "dog face"}
    empty = service.post("/generate", json={**body, "negative_prompt": " \t"}).json()
    assert empty["params"] == plain["params"]
    run = {j["id"]: service.redis.hget(keys.job(j["id"]), "run").decode() for j in (plain, negative.json(), empty)}
    assert run[empty["id"]] == plain["id"]  # the same key: an empty negative prompt is none
    assert run[negative.json()["id"]] == negative.json()["id"]  # its own key
    unknown = service.post("/generate", json={**body, "negative_prompt": "dog zebra"}).json()
    assert unknown["params"]["ignored_words"] == ["zebra"]


def pixels(service, jobs) -> list[tuple[np.ndarray, dict]]:
    service.work()
    out = []
    for job in jobs:
        done = service.get(f"/jobs/{job['id']}", params={"wait": 10}).json()
        assert done["status"] == "succeeded", done
        png = service.get(done["image_url"]).content
        out.append((decode_png(png), read_parameters(png)))
    return out


@pytest.mark.parametrize(("guidance", "changes"), [(3.0, True), (1.0, False), (0.0, False)])
def test_a_negative_prompt_changes_the_image_only_where_guidance_mixes_two_rows(service, guidance, changes):
    body = {"model": "words", "seed": 7, "steps": STEPS, "prompt": "red heart", "guidance": guidance}
    jobs = [service.post("/generate", json=b).json() for b in (body, {**body, "negative_prompt": "blue heart"})]
    (plain, plain_params), (negative, negative_params) = pixels(service, jobs)
    assert (not np.array_equal(plain, negative)) == changes
    assert "negative_prompt" not in plain_params or plain_params["negative_prompt"] is None
    assert negative_params["negative_prompt"] == "blue heart"


def test_a_negative_prompted_job_keeps_its_bytes_batched_with_other_jobs(service):
    mine = {"model": "words", "seed": 9, "steps": STEPS, "prompt": "red heart", "guidance": 3.0,
            "negative_prompt": "red"}  # fmt: skip
    ((alone, _),) = pixels(service, [service.post("/generate", json=mine).json()])
    for key in service.redis.keys("diffusetv:cache:*"):
        service.redis.delete(key)
    others = [
        {"model": "words", "seed": 10, "steps": STEPS, "prompt": "cat face", "guidance": 5.0, "negative_prompt": "dog"},
        {"model": "words", "seed": 11, "steps": STEPS, "prompt": "dog face", "guidance": 2.0},
        {"model": "words", "seed": 12, "steps": STEPS},
    ]
    jobs = [service.post("/generate", json=b).json() for b in (others[0], mine, *others[1:])]
    results = pixels(service, jobs)
    batched = service.get(f"/jobs/{jobs[1]['id']}").json()
    assert batched["batch_size"] > 1, batched
    assert np.array_equal(results[1][0], alone)


def test_a_negative_prompt_costs_no_extra_row(engines):
    _, loaded = engines
    engine = loaded["words@1"]
    guided = engine.condition("red heart", 3.0, "blue heart")
    assert guided.rows == (True, True) and guided.negative is not None
    assert torch.equal(guided.negative, engine.condition("blue heart", 1.0).embedding)
    for s in (0.0, 1.0):  # no effect there: dropped, so the condition is the one without it
        dropped = engine.condition("red heart", s, "blue heart")
        plain = engine.condition("red heart", s)
        assert dropped.negative is None and dropped.rows == plain.rows
    tiny = loaded["tiny@1"]
    with pytest.raises(ModelStoreError, match="takes no negative prompt"):
        tiny.condition(None, None, "red")


def test_an_interpolation_steers_away_from_its_negative_prompt_all_along(service):
    guided = {"model": "words", "steps": STEPS, "prompt": "cat face", "guidance": 3.0, "negative_prompt": "dog"}
    strip_job = service.post("/interpolate", json={**guided, "seed_a": 3, "seed_b": 4, "frames": 3}).json()
    assert strip_job["params"]["negative_prompt"] == "dog"
    ends = [service.post("/generate", json={**guided, "seed": seed}).json() for seed in (3, 4)]
    plain = service.post("/generate", json={**guided, "seed": 3, "negative_prompt": None}).json()
    (first, _), (last, _), (without, _) = pixels(service, [*ends, plain])
    done = service.get(f"/jobs/{strip_job['id']}", params={"wait": 10}).json()
    assert done["status"] == "succeeded", done
    strip = decode_png(service.get(done["strip_url"]).content)
    side = strip.shape[0]
    assert np.array_equal(strip[:, :side], first) and np.array_equal(strip[:, -side:], last)
    assert not np.array_equal(first, without)
