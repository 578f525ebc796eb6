"""Server-Sent Events and interpolation, against real processes, read with a plain HTTP client."""

import threading
import time

import numpy as np
import pytest

from app.core.events import preview_steps
from app.core.png import decode_png, read_parameters
from diffusion.grid import tile
from helpers import read_events

pytestmark = pytest.mark.slow


def test_events_in_order_with_previews_then_the_stream_closes(stack):
    with stack.client() as c:
        job = c.post("/generate", json={"seed": 501, "steps": 40, "previews": True}).json()
        evs = read_events(c, job["id"])
        names = [e for _, e, _ in evs]
        statuses = [d["status"] for _, e, d in evs if e == "status"]
        assert statuses == ["queued", "running", "succeeded"]
        assert names[0] == "status" and names[-1] == "status"
        assert "queue_position" in evs[0][2]
        steps = [d["step"] for _, e, d in evs if e == "progress"]
        assert steps == sorted(steps) and steps[-1] == 40
        previews = [d for _, e, d in evs if e == "preview"]
        assert [p["step"] for p in previews] == sorted(preview_steps(40))  # every 4th step and the last
        assert all(p["url"].startswith("data:image/png;base64,") for p in previews)
        ids = [i for i, _, _ in evs]
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
        # previews never change the bytes: the same seed without previews, computed afresh, matches
        png = c.get(f"/jobs/{job['id']}/image.png").content
    import redis

    conn = redis.Redis.from_url(stack.redis.url)
    conn.delete(*conn.keys("diffusetv:cache:*"))
    with stack.client() as c:
        plain = c.post("/generate", json={"seed": 501, "steps": 40}).json()
        assert c.get(f"/jobs/{plain['id']}/image.png", params={"wait": 30}).content == png
        assert [e for _, e, _ in read_events(c, plain["id"])].count("preview") == 0


def test_a_late_client_gets_the_full_replay_and_last_event_id_resumes(stack):
    with stack.client() as c:
        job = c.post("/generate", json={"seed": 502, "steps": 30, "previews": True}).json()
        live = read_events(c, job["id"])
        late = read_events(c, job["id"])  # the job is over: everything again, from the start
        strip = lambda evs: [(i, e, {k: v for k, v in d.items() if k != "queue_position"}) for i, e, d in evs]  # noqa: E731
        assert strip(late) == strip(live) and len(live) > 5
        middle = live[len(live) // 2][0]
        resumed = read_events(c, job["id"], headers={"Last-Event-ID": middle})
        assert [i for i, _, _ in resumed] == [i for i, _, _ in live][len(live) // 2 + 1 :]


def test_the_stream_follows_a_cancel_to_its_end(stack):
    with stack.client() as c:
        job = c.post("/generate", json={"seed": 503, "steps": 1000}).json()
        seen = []

        def cancel_when_running(event):
            if event[1] == "progress" and not seen:
                seen.append(event)
                threading.Thread(target=lambda: stack.client().delete(f"/jobs/{job['id']}")).start()

        started = time.monotonic()
        evs = read_events(c, job["id"], on_event=cancel_when_running)
        assert evs[-1][1:] == ("status", {"status": "canceled"})
        assert time.monotonic() - started < 30


def test_a_cache_hit_streams_only_its_final_status(stack):
    with stack.client() as c:
        first = c.post("/generate", json={"seed": 504, "steps": 10}).json()
        c.get(f"/jobs/{first['id']}", params={"wait": 30})
        hit = c.post("/generate", json={"seed": 504, "steps": 10}).json()
        assert hit["status"] == "succeeded"
        assert [(e, d) for _, e, d in read_events(c, hit["id"])] == [("status", {"status": "succeeded"})]


def test_interpolation_strip_and_animation_end_at_the_two_seeds(stack):
    with stack.client() as c:
        r = c.post("/interpolate", json={"seed_a": 11, "seed_b": 12, "frames": 8, "steps": 20})
        assert r.status_code == 202 and r.json()["kind"] == "interpolate"
        job = c.get(f"/jobs/{r.json()['id']}", params={"wait": 30}).json()
        assert job["status"] == "succeeded" and job["batch_size"] == 1 and job["params"]["frames"] == 8
        metrics = c.get("/metrics").text
        assert 'diffusetv_batch_size_total{size="1"} 1.0' in metrics  # the one run, as the job says
        assert "diffusetv_image_steps_total 160.0" in metrics  # 8 frames x 20 steps
        strip = c.get(job["strip_url"]).content
        pixels = decode_png(strip)
        assert pixels.shape == (16, 8 * 16, 3)
        ends = []
        for seed in (11, 12):
            g = c.post("/generate", json={"seed": seed, "steps": 20, "eta": 0}).json()
            ends.append(decode_png(c.get(f"/jobs/{g['id']}/image.png", params={"wait": 30}).content))
        assert np.array_equal(tile(pixels, 0, (16, 16), 8), ends[0])
        assert np.array_equal(tile(pixels, 7, (16, 16), 8), ends[1])
        assert not np.array_equal(tile(pixels, 3, (16, 16), 8), ends[0])
        apng = c.get(job["image_url"]).content
        import io

        from PIL import Image

        with Image.open(io.BytesIO(apng)) as im:
            assert im.format == "PNG" and getattr(im, "n_frames", 1) == 8
        assert read_parameters(strip)["frames"] == 8
        again = c.post("/interpolate", json={"seed_a": 11, "seed_b": 12, "frames": 8, "steps": 20}).json()
        assert c.get(f"/jobs/{again['id']}/strip.png", params={"wait": 30}).content == strip
        for bad in (
            {"seed_a": 1, "seed_b": 2, "frames": 1},
            {"seed_a": 1, "seed_b": 2, "frames": 33},
            {"seed_a": "1", "seed_b": 2},
            {"seed_a": 1, "seed_b": 2, "eta": 0.5},
        ):
            assert c.post("/interpolate", json=bad).status_code == 422, bad
        plain = c.post("/generate", json={"seed": 1, "steps": 2}).json()
        assert c.get(f"/jobs/{plain['id']}/strip.png", params={"wait": 30}).status_code == 404
