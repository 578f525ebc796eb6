"""Prompts and guidance at the HTTP boundary (docs/API.md, "Prompts"), in process against a real Redis."""

import json

import pytest
from fastapi.testclient import TestClient

from app.core import keys
from app.core.settings import Settings
from app.main import create_app
from helpers import TEXT_CAPTIONS, claim_as_worker, save_tiny_text


@pytest.fixture
def client(tiny_store, redis_server):
    save_tiny_text(tiny_store)
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny")
    claim_as_worker(redis_server.url)
    claim_as_worker(redis_server.url, "words@1")
    with TestClient(create_app(settings)) as c:
        c.redis_url = redis_server.url
        yield c


def post(client, path="/generate", **body):
    return client.post(path, json={"model": "words", **body})


def errors(r) -> dict[str, str]:
    assert r.status_code == 422, r.text
    return {err["loc"][-1]: err["msg"] for err in r.json()["detail"]}


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"model": "tiny", "prompt": "red heart"}, "prompt", "does not take 'prompt'"),
        ({"model": "tiny", "guidance": 2.0}, "guidance", "does not take 'guidance'"),
        ({"model": "tiny", "prompt": None}, "prompt", "does not take 'prompt'"),
        ({"prompt": "zebra unicorn"}, "prompt", "known words include: "),
        ({"prompt": "!!! ???"}, "prompt", "no word"),
        ({"prompt": "red " * 60}, "prompt", "at most 200 characters after normalisation"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000 characters"),
        ({"guidance": 2.0}, "guidance", "guidance needs a prompt"),
        ({"prompt": "   ", "guidance": 2.0}, "guidance", "guidance needs a prompt"),
        ({"prompt": "red heart", "guidance": 20.5}, "guidance", "less than or equal to 20"),
        ({"prompt": "red heart", "guidance": -1}, "guidance", "greater than or equal to 0"),
        ({"prompt": "red heart", "guidance": "2"}, "guidance", "valid number"),
        ({"prompt": 5}, "prompt", "valid string"),
    ],
)
def test_refusals_are_422_naming_the_field(client, body, field, says):
    r = client.post("/generate", json={"seed": 1, "model": "words", **body})
    found = errors(r)
    assert field in found and says in found[field], found


def test_a_prompt_with_no_known_word_lists_a_few_known_ones(client):
    msg = errors(post(client, seed=1, prompt="zebra"))["prompt"]
    listed = msg.split("known words include: ")[1].split(", ")
    assert 1 < len(listed) <= 8 and {"face", "heart"} <= set(listed), msg  # the most frequent caption words


def test_the_job_holds_the_normalised_prompt_the_default_guidance_and_the_ignored_words(client):
    r = post(client, seed=1, prompt="  Red\u00a0 ZEBRA   Heart\t")
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    assert params == {
        "seed": 1, "steps": 50, "eta": 0.0, "previews": False,
        "prompt": "red zebra heart", "guidance": 2.5, "ignored_words": ["zebra"],
    }  # fmt: skip
    assert post(client, seed=1, prompt="one o’clock", guidance=7).json()["params"]["prompt"] == "one o'clock"


def test_a_prompt_that_normalises_the_same_joins_the_same_run_and_another_guidance_does_not(client):
    a = post(client, seed=5, prompt="Cat Face").json()
    b = post(client, seed=5, prompt=" cat   face ").json()
    c = post(client, seed=5, prompt="cat face", guidance=2.5).json()  # the default, sent: the same key
    d = post(client, seed=5, prompt="cat face", guidance=3.0).json()
    import redis

    conn = redis.Redis.from_url(client.redis_url)
    run = {j["id"]: conn.hget(keys.job(j["id"]), "run").decode() for j in (a, b, c, d)}
    assert run[b["id"]] == run[c["id"]] == run[a["id"]] == a["id"]
    assert run[d["id"]] == d["id"]


def test_an_empty_prompt_is_the_same_as_none(client):
    a = post(client, seed=9).json()
    b = post(client, seed=9, prompt=" \n ").json()
    assert a["params"] == b["params"] == {"seed": 9, "steps": 50, "eta": 0.0, "previews": False}
    import redis

    conn = redis.Redis.from_url(client.redis_url)
    assert conn.hget(keys.job(b["id"]), "run").decode() == a["id"]


def test_the_worker_gets_the_normalised_prompt_and_guidance(client):
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    job = post(client, seed=2, prompt="GREEN apple", guidance=4).json()
    conn = redis.Redis.from_url(client.redis_url)
    queued = Queue(keys.queue_name("words@1"), connection=conn, serializer=JSONSerializer).jobs
    kwargs = next(j.kwargs for j in queued if j.id == job["id"])
    assert (kwargs["prompt"], kwargs["guidance"]) == ("green apple", 4.0)


def test_interpolation_takes_a_prompt_and_moves_to_prompt_b(client):
    r = post(client, "/interpolate", seed_a=1, seed_b=2, frames=3, steps=4, prompt="Cat face", prompt_b="dog FACE")
    assert r.status_code == 202, r.text
    assert r.json()["params"] == {
        "seed_a": 1, "seed_b": 2, "frames": 3, "steps": 4,
        "prompt": "cat face", "prompt_b": "dog face", "guidance": 2.5,
    }  # fmt: skip
    found = errors(post(client, "/interpolate", seed_a=1, seed_b=2, prompt_b="dog face"))
    assert "needs a prompt" in found["prompt_b"]
    assert (
        "no word"
        in errors(post(client, "/interpolate", seed_a=1, seed_b=2, prompt="cat", prompt_b="zebra"))["prompt_b"]
    )
    tiny = client.post("/interpolate", json={"seed_a": 1, "seed_b": 2, "model": "tiny", "prompt_b": "x"})
    assert "prompt_b" in errors(tiny)


def test_models_say_conditioning_and_default_guidance_and_list_prompts(client):
    entries = {m["ref"]: m for m in client.get("/models").json()["models"]}
    assert entries["words@1"]["conditioning"] == "text" and entries["words@1"]["default_guidance"] == 2.5
    assert entries["tiny@1"]["conditioning"] == "none" and entries["tiny@1"]["default_guidance"] is None
    r = client.get("/models/words/prompts")
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "words@1"
    assert body["prompts"][0] == "red heart" and "one o'clock" in body["prompts"]
    assert len(body["prompts"]) == len(TEXT_CAPTIONS) and "grinning" in body["words"]
    for ref in ("tiny", "nope", "words@9", "..%2fetc"):
        assert client.get(f"/models/{ref}/prompts").status_code == 404, ref


def test_prompted_params_round_trip_through_the_job_view(client):
    job = post(client, seed=3, prompt="red heart", guidance=0).json()
    again = client.get(f"/jobs/{job['id']}").json()
    assert again["params"] == job["params"] and again["params"]["guidance"] == 0.0
    assert json.loads(json.dumps(again["params"]))["prompt"] == "red heart"


@pytest.mark.parametrize("control", ["\x00", "\x07", "\x1b", "\x7f", "\x9b"])
def test_a_control_character_in_a_prompt_is_422_naming_the_field(client, control):
    code = f"U+{ord(control):04X}"
    msg = errors(post(client, seed=1, prompt=f"red{control}heart"))["prompt"]
    assert "control characters" in msg and code in msg, msg
    both = {"seed_a": 1, "seed_b": 2, "prompt": "cat face"}
    msg = errors(post(client, "/interpolate", **both, prompt_b=f"dog {control}face"))["prompt_b"]
    assert code in msg, msg
    assert control not in msg  # named, not echoed into the message


def test_whitespace_controls_are_still_collapsed(client):
    r = post(client, seed=1, prompt="red\t\r\n\x0b\x0c\x85heart")
    assert r.status_code == 202, r.text
    assert r.json()["params"]["prompt"] == "red heart"


@pytest.mark.parametrize("mark", ["\u200b", "\u202e", "\u2066", "\u200f", "\ufeff"])
def test_invisible_marks_are_dropped_and_join_the_same_run(client, mark):
    plain = post(client, seed=8, prompt="red heart").json()
    marked = post(client, seed=8, prompt=f"{mark}red {mark}heart{mark}")
    assert marked.status_code == 202, marked.text
    assert marked.json()["params"]["prompt"] == plain["params"]["prompt"] == "red heart"
    import redis

    conn = redis.Redis.from_url(client.redis_url)
    assert conn.hget(keys.job(marked.json()["id"]), "run").decode() == plain["id"]  # the same engine key


def test_zwj_and_zwnj_stay_in_the_prompt(client):
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    r = post(client, seed=1, prompt=f"{family} red heart \u200c")
    assert r.status_code == 202, r.text
    assert r.json()["params"]["prompt"] == f"{family} red heart \u200c"


@pytest.fixture
def unserved(tiny_store, redis_server):
    """A client of an API whose Redis has no engine claim: no live worker serves any model."""
    save_tiny_text(tiny_store)
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/generate", {"seed": 1, "prompt": "zebra unicorn"}, "prompt"),
        ("/generate", {"seed": 1, "prompt": "red heart", "guidance": 20.5}, "guidance"),
        ("/generate", {"seed": 1, "guidance": 2.0}, "guidance"),
        ("/generate", {"seed": 1, "prompt": "red\x07heart"}, "prompt"),
        ("/interpolate", {"seed_a": 1, "seed_b": 2, "prompt": "zebra"}, "prompt"),
        ("/interpolate", {"seed_a": 1, "seed_b": 2, "prompt": "cat face", "prompt_b": "zebra"}, "prompt_b"),
        ("/interpolate", {"seed_a": 1, "seed_b": 2, "prompt_b": "dog face"}, "prompt_b"),
    ],
)
def test_a_bad_prompt_is_422_even_when_no_worker_serves_the_model(unserved, path, body, field):
    found = errors(post(unserved, path, **body))
    assert field in found, found


def test_a_good_request_is_503_when_no_worker_serves_the_model(unserved):
    for path, body in (
        ("/generate", {"seed": 1, "prompt": "red heart", "guidance": 3.0}),
        ("/interpolate", {"seed_a": 1, "seed_b": 2, "prompt": "cat face", "prompt_b": "dog face"}),
    ):
        r = post(unserved, path, **body)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
        assert "no live worker serves model words@1" in r.json()["detail"]
