"""The web page in a real browser (Debian's chromium driven by Playwright) against a real stack."""

import base64
import re

import numpy as np
import pytest

from app.core.png import decode_png
from diffusetv.prerequisites import chromium_path
from diffusion.grid import tile
from helpers import REPO, require, require_prerequisite, several_models
from stack import Stack, free_port, stack_env

pytestmark = pytest.mark.slow
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
FRESH_SEED = 2**53 - 1 - 8_675_309  # large, to show seeds survive the round trip exactly
KEY = "page-test-key-" + "k" * 20


@pytest.fixture(scope="module")
def browser():
    require_prerequisite("chromium")
    require_prerequisite("libatomic1")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "needs the playwright Python package")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=ARGS)
        yield b
        b.close()


def start_stack(store, redis_server, tmp_path, model="tiny", **env):
    s = Stack(stack_env(redis_server.url, store.root, model=model, **env), free_port(), tmp_path)
    s.start_worker()
    s.start_api()
    s.wait_ready()
    return s


def start_api_only(store, redis_server, tmp_path) -> Stack:
    """The API alone (the page and /docs need no worker), once it answers /healthz."""
    s = Stack(stack_env(redis_server.url, store.root), free_port(), tmp_path)
    s.start_api()
    s.wait_healthy()
    return s


def fetch_bytes(page, selector) -> bytes:
    """The bytes behind an <img> or a link (a blob URL), read inside the page."""
    b64 = page.evaluate(
        """async (sel) => {
            const element = document.querySelector(sel);
            const buf = await (await fetch(element.src || element.href)).arrayBuffer();
            let s = ""; for (const b of new Uint8Array(buf)) s += String.fromCharCode(b);
            return btoa(s);
        }""",
        selector,
    )
    return base64.b64decode(b64)


def generate_in_page(page, base, key=None):
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready='1']")
    if key:
        page.click("#key-box summary")
        page.fill("#api-key", key)
        page.click("#save-key")
    page.fill("#seed", str(FRESH_SEED))
    page.fill("#steps", "20")
    page.check("#previews")
    page.click("#generate")
    page.wait_for_selector("body[data-done]", timeout=60_000)
    return page.evaluate("document.body.dataset.jobId")


def check_generation(page, stack, headers=None):
    job_id = page.evaluate("document.body.dataset.jobId")
    progress = page.evaluate("window.diffusetv.progress")
    assert len(set(progress)) >= 3 and progress == sorted(progress), progress
    assert page.eval_on_selector("#progress", "p => p.value") == 1
    assert page.locator("#tvs li.tv img").count() >= 3
    assert page.locator("#tvs canvas").count() == 1  # the first television shows static
    with stack.client(headers=headers or {}) as c:
        job = c.get(f"/jobs/{job_id}").json()
        served = c.get(f"/jobs/{job_id}/image.png").content
    assert job["params"]["seed"] == FRESH_SEED
    assert fetch_bytes(page, "#result-image") == served
    alt = page.get_attribute("#result-image", "alt")
    assert str(FRESH_SEED) in alt
    assert f"seed={FRESH_SEED}" in page.get_attribute("#same-again", "href")
    assert page.locator("#history li").count() >= 1


def test_generate_with_previews_in_a_browser(browser, redis_server, tmp_path):
    from model_store import Store
    from model_store.store import BUNDLED

    stack = start_stack(Store(BUNDLED), redis_server, tmp_path, model="emoji32")  # the screenshot in the README
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        generate_in_page(page, stack.base)
        check_generation(page, stack)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(stack.base + "/")
        phone.wait_for_selector("body[data-ready='1']")
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        for input_id in ("seed", "steps", "eta", "model", "previews"):
            assert phone.locator(f"label[for='{input_id}']").count() == 1, input_id
        phone.keyboard.press("Tab")
        assert phone.evaluate("document.activeElement !== document.body")
    finally:
        stack.stop_all()


def test_interpolation_in_a_browser(browser, tiny_store, redis_server, tmp_path):
    stack = start_stack(tiny_store, redis_server, tmp_path)
    try:
        page = browser.new_page()
        page.goto(stack.base + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.click("#tab-interpolate")
        page.fill("#seed-a", "21")
        page.fill("#seed-b", "22")
        page.fill("#frames", "8")
        page.fill("#i-steps", "20")
        page.click("#interpolate")
        page.wait_for_selector("body[data-interpolation-done]", timeout=60_000)
        strip = decode_png(fetch_bytes(page, "#strip"))
        assert strip.shape == (16, 8 * 16, 3)
        assert page.eval_on_selector("#strip", "img => img.naturalWidth") == 8 * 16
        with stack.client() as c:
            ends = []
            for seed in (21, 22):
                job = c.post("/generate", json={"seed": seed, "steps": 20, "eta": 0}).json()
                ends.append(decode_png(c.get(f"/jobs/{job['id']}/image.png", params={"wait": 30}).content))
        assert np.array_equal(tile(strip, 0, (16, 16), 8), ends[0])
        assert np.array_equal(tile(strip, 7, (16, 16), 8), ends[1])
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-interpolate.png"), full_page=True)
    finally:
        stack.stop_all()


def test_the_page_with_an_api_key(browser, tiny_store, redis_server, tmp_path):
    stack = start_stack(tiny_store, redis_server, tmp_path, DIFFUSETV_API_KEYS=KEY)
    try:
        page = browser.new_page()
        page.goto(stack.base + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#seed", "5")
        page.click("#generate")
        # a locator, not wait_for_function: the page's CSP forbids the eval that a polled predicate needs
        page.locator("#status", has_text=re.compile(r"^Error")).wait_for()
        assert "key" in page.text_content("#status")
        generate_in_page(page, stack.base, key=KEY)
        check_generation(page, stack, headers={"Authorization": f"Bearer {KEY}"})
    finally:
        stack.stop_all()


def test_the_picker_offers_the_served_models_and_runs_either(browser, tiny_store, redis_server, tmp_path):
    """Two models of two kinds served, one stored without a worker: the page offers the two, and runs the toy."""
    stack = start_stack(tiny_store, redis_server, tmp_path, **several_models(tiny_store))
    try:
        page = browser.new_page()
        page.goto(stack.base + "/")
        page.wait_for_selector("body[data-ready='1']")
        for picker in ("#model", "#i-model"):
            options = page.eval_on_selector_all(f"{picker} option", "os => os.map(o => o.value)")
            assert options == ["tiny@1", "toy@1"], options  # not lonely@1: no worker serves it
        assert page.input_value("#model") == "tiny@1"
        page.select_option("#model", "toy@1")
        page.fill("#seed", "77")
        page.fill("#steps", "10")
        page.click("#generate")
        page.wait_for_selector("body[data-done]", timeout=60_000)
        assert page.eval_on_selector("#result-image", "img => [img.naturalWidth, img.naturalHeight]") == [10, 6]
        with stack.client() as c:
            job = c.get(f"/jobs/{page.evaluate('document.body.dataset.done')}").json()
        assert job["model"]["name"] == "toy" and job["params"]["steps"] == 10
    finally:
        stack.stop_all()


def test_a_link_fills_the_form_but_starts_nothing_until_generate_is_pressed(
    browser, tiny_store, redis_server, tmp_path
):
    import redis as redis_lib

    from app.core import keys

    stack = start_stack(tiny_store, redis_server, tmp_path, DIFFUSETV_API_KEYS=KEY)
    conn = redis_lib.Redis.from_url(redis_server.url)
    try:
        page = browser.new_page()
        page.goto(stack.base + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.click("#key-box summary")
        page.fill("#api-key", KEY)
        page.click("#save-key")  # the visitor's key is stored in the browser, as for a regular user
        page.goto(stack.base + "/?seed=4242&steps=7&eta=0.5&run=1")  # a link someone sent
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_timeout(1500)
        assert list(conn.scan_iter(match=keys.job("*"))) == [], "the link started a job with the visitor's key"
        assert page.input_value("#seed") == "4242" and page.input_value("#steps") == "7"
        page.click("#generate")
        page.wait_for_selector("body[data-done]", timeout=60_000)
        assert len(list(conn.scan_iter(match=keys.job("*")))) == 1
    finally:
        stack.stop_all()


def test_the_api_docs_render_with_the_network_blocked(browser, tiny_store, redis_server, tmp_path):
    """/docs is Swagger UI from the package's own files: nothing is fetched from anywhere but the API."""
    s = start_api_only(tiny_store, redis_server, tmp_path)
    try:
        page = browser.new_page()
        outside: list[str] = []

        def only_the_api(route):
            if route.request.url.startswith(s.base):
                return route.continue_()
            outside.append(route.request.url)
            return route.abort()

        page.route("**/*", only_the_api)
        page.goto(f"{s.base}/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
        assert "DiffuseTV" in page.inner_text(".swagger-ui .info .title")
        assert page.locator(".opblock-summary-path", has_text="/generate").count() >= 1
        assert outside == []
        page.close()
        with s.client() as c:
            icon = c.get("/favicon.ico")
            assert icon.status_code == 200 and icon.content.startswith(b"<svg")
    finally:
        s.stop_all()


def test_the_largest_seed_is_shown_whole(browser, tiny_store, redis_server, tmp_path):
    s = start_api_only(tiny_store, redis_server, tmp_path)
    try:
        for width in (1280, 800, 390):  # desktop, tablet, phone
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(f"{s.base}/?seed={2**53 - 1}")
            for box in ("#seed", "#seed-a", "#seed-b"):
                if box == "#seed-a":
                    page.click("#tab-interpolate")
                page.fill(box, str(2**53 - 1))
                scroll, client = page.eval_on_selector(box, "e => [e.scrollWidth, e.clientWidth]")
                assert scroll <= client, f"{box} at {width} px shows {client} of {scroll} px"
            page.close()
    finally:
        s.stop_all()


def test_a_prompt_typed_in_the_page_fills_the_televisions_and_gets_the_png(browser, tiny_store, redis_server, tmp_path):
    """A text model: the prompt box appears with suggestions, the typed prompt and guidance reach the job, the
    televisions fill, the PNG is the served one, the history names the prompt; interpolation takes a prompt pair."""
    from helpers import save_tiny_text

    save_tiny_text(tiny_store)
    stack = start_stack(tiny_store, redis_server, tmp_path, DIFFUSETV_MODELS="tiny,words")
    try:
        page = browser.new_page()
        page.goto(stack.base + "/")
        page.wait_for_selector("body[data-ready='1']")
        assert page.is_hidden("#text-fields")  # tiny, the default, takes no prompt
        page.select_option("#model", "words@1")
        page.wait_for_selector("#prompt-suggestions option", state="attached")  # (the CSP forbids eval)
        assert page.is_visible("#prompt") and page.get_attribute("#guidance", "placeholder") == "default 2.5"
        suggestions = page.eval_on_selector_all("#prompt-suggestions option", "os => os.map(o => o.value)")
        assert "red heart" in suggestions and "one o'clock" in suggestions
        page.fill("#seed", "31")
        page.fill("#steps", "12")
        page.check("#previews")
        page.fill("#prompt", "  Red   HEART ")
        page.fill("#guidance", "4")
        page.click("#generate")
        page.wait_for_selector("body[data-done]", timeout=60_000)
        assert page.locator("#tvs li.tv img").count() >= 3
        job_id = page.evaluate("document.body.dataset.done")
        with stack.client() as c:
            job = c.get(f"/jobs/{job_id}").json()
            served = c.get(f"/jobs/{job_id}/image.png").content
        assert (job["params"]["prompt"], job["params"]["guidance"]) == ("red heart", 4.0)
        assert fetch_bytes(page, "#result-image") == served
        assert "red heart" in page.get_attribute("#result-image", "alt")
        assert "“red heart” at guidance 4" in page.inner_text("#history")
        assert "prompt=red+heart" in page.get_attribute("#same-again", "href")

        page.fill("#prompt", "zebra")  # no known word: the field's error says so, and nothing is queued
        page.click("#generate")
        page.wait_for_selector("#prompt-error:has-text('known words')")

        page.click("#tab-interpolate")
        page.select_option("#i-model", "words@1")
        assert page.is_visible("#i-prompt")
        page.fill("#seed-a", "3")
        page.fill("#seed-b", "4")
        page.fill("#frames", "3")
        page.fill("#i-steps", "6")
        page.fill("#i-prompt", "cat face")
        page.fill("#i-prompt-b", "dog face")
        page.click("#interpolate")
        page.wait_for_selector("body[data-interpolation-done]", timeout=60_000)
        with stack.client() as c:
            done = c.get(f"/jobs/{page.evaluate('document.body.dataset.interpolationDone')}").json()
        assert (done["params"]["prompt"], done["params"]["prompt_b"]) == ("cat face", "dog face")
        assert "from “cat face” to “dog face”" in page.get_attribute("#strip", "alt")
    finally:
        stack.stop_all()


def picture_png(path, seed=29):
    """A 16×16 RGB picture of the tiny model's size, with no flat area: any changed pixel shows."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def data_url_pixels(url: str) -> np.ndarray:
    head, _, b64 = url.partition(",")
    assert head == "data:image/png;base64", head
    return decode_png(base64.b64decode(b64))


def distance_to_segment(shape, a, b) -> np.ndarray:
    """Each pixel centre's distance to the segment a–b, in pixels (canvas coordinates: x right, y down)."""
    ys, xs = np.mgrid[: shape[0], : shape[1]] + 0.5
    (ax, ay), (bx, by) = a, b
    t = np.clip(((xs - ax) * (bx - ax) + (ys - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
    return np.hypot(xs - ax - t * (bx - ax), ys - ay - t * (by - ay))


def test_a_picture_with_a_painted_mask_in_the_image_tab(browser, tiny_store, redis_server, tmp_path):
    """Upload a picture, paint a mask with the mouse, set the strength, press Generate from picture: the request holds
    the file's pixels, a black-and-white mask with white where the brush went, the slider's strength; the job succeeds
    and every pixel in the mask's kept region is the picture's."""
    file = tmp_path / "picture.png"
    picture = picture_png(file)
    stack = start_stack(tiny_store, redis_server, tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 1000})
        page.goto(stack.base + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.click("#tab-image")
        assert page.is_visible("#seed") and page.is_visible("#steps")  # the run settings follow the tab
        page.set_input_files("#picture-file", str(file))
        page.wait_for_selector("#mask", state="visible")
        assert page.is_hidden("#harmonize-field")  # no mask painted yet
        shown = page.eval_on_selector("#picture", "i => [i.width, i.height, i.naturalWidth, i.naturalHeight]")
        assert shown == [256, 256, 16, 16], shown

        page.focus("#brush")
        page.keyboard.press("End")  # the widest brush: 64 px
        page.focus("#strength")
        for _ in range(4):
            page.keyboard.press("ArrowLeft")  # 0.8 → 0.6
        assert page.text_content("#strength-value") == "0.6"
        mask = page.locator("#mask")
        mask.scroll_into_view_if_needed()
        box = mask.bounding_box()
        a, b = (64, 128), (192, 128)  # a horizontal stroke across the middle, in the canvas's pixels
        page.mouse.move(box["x"] + a[0], box["y"] + a[1])
        page.mouse.down()
        page.mouse.move(box["x"] + b[0], box["y"] + b[1], steps=12)
        page.mouse.up()
        assert page.is_visible("#harmonize")
        page.fill("#seed", "1234")
        page.fill("#steps", "10")

        with page.expect_response(lambda r: r.url == stack.base + "/generate") as answered:
            page.click("#image-generate")
        assert answered.value.request.method == "POST"
        body = answered.value.request.post_data_json
        assert answered.value.status == 202, answered.value.text()
        assert (body["seed"], body["steps"], body["strength"], body["harmonize"]) == (1234, 10, 0.6, 0)
        assert body["image"] == "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode()  # the file
        assert np.array_equal(data_url_pixels(body["image"]), picture)
        sent_mask = data_url_pixels(body["mask"])
        assert sent_mask.shape == (256, 256, 3), sent_mask.shape  # the picture's displayed size
        assert set(np.unique(sent_mask)) <= {0, 255}
        distance = distance_to_segment(sent_mask.shape[:2], a, b)
        assert (sent_mask[distance <= 30] == 255).all()  # the brush's 32 px radius, less its soft edge
        assert (sent_mask[distance >= 34] == 0).all()

        job_id = answered.value.json()["id"]
        page.wait_for_selector(f"body[data-ended='{job_id}']", timeout=60_000)
        with stack.client() as c:
            job = c.get(f"/jobs/{job_id}").json()
            assert job["status"] == "succeeded", job.get("error")
            png = c.get(f"/jobs/{job_id}/image.png").content
        served = decode_png(png)
        assert job["params"]["strength"] == 0.6 and job["params"]["image"] and job["params"]["mask"]
        # the API's mask: a box filter to 16×16, then ≥ 128 repaints. Blocks wholly black are kept, wholly white
        # repainted, whatever the filter's rounding
        blocks = sent_mask[..., 0].reshape(16, 16, 16, 16).swapaxes(1, 2).reshape(16, 16, 256)
        kept, repainted = (blocks == 0).all(axis=2), (blocks == 255).all(axis=2)
        assert kept.sum() >= 150 and repainted.sum() >= 20, (kept.sum(), repainted.sum())
        assert np.array_equal(served[kept], picture[kept])
        assert not np.array_equal(served[repainted], picture[repainted])  # 6 of 10 steps ran there
        assert fetch_bytes(page, "#result-image") == png
        assert "inpainting at strength 0.6" in page.get_attribute("#result-image", "alt")
        assert page.is_hidden("#same-again")  # a link cannot carry the picture
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-image.png"), full_page=True)
    finally:
        stack.stop_all()


def test_results_and_pictures_go_in_as_pictures_inverted_and_interpolated(browser, tiny_store, redis_server, tmp_path):
    """Two picked pictures are an interpolation's ends; "Use this result" makes a finished job the picture, sent as
    {"job": id}; Invert fills the televisions (the picture first), offers the latent, served as the API serves it,
    and Generate from this latent starts from it."""
    ends = [tmp_path / "a.png", tmp_path / "b.png"]
    for seed, path in enumerate(ends):
        picture_png(path, seed)
    stack = start_stack(tiny_store, redis_server, tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 1000})
        page.goto(stack.base + "/")
        page.wait_for_selector("body[data-ready='1']")

        page.click("#tab-interpolate")
        assert page.is_hidden("#tvs")  # the televisions belong to Generate and Image
        page.set_input_files("#picture-a", str(ends[0]))
        page.set_input_files("#picture-b", str(ends[1]))
        page.wait_for_selector("#picture-b-thumb", state="visible")
        assert page.is_disabled("#seed-a") and page.is_disabled("#seed-b")
        page.fill("#frames", "3")
        page.fill("#i-steps", "8")
        with page.expect_response(lambda r: r.url == stack.base + "/interpolate") as answered:
            page.click("#interpolate")
        assert answered.value.status == 202, answered.value.text()
        body = answered.value.request.post_data_json
        assert set(body) == {"image_a", "image_b", "frames", "steps", "model"}, body
        for end, path in zip(("image_a", "image_b"), ends, strict=True):
            assert body[end] == "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()

        page.click("#tab-generate")
        page.fill("#seed", "5")
        page.fill("#steps", "8")
        page.click("#generate")
        page.wait_for_selector("body[data-done]", timeout=60_000)
        generated = page.evaluate("document.body.dataset.done")
        page.click("#use-result")
        assert page.get_attribute("#tab-image", "aria-selected") == "true"
        page.wait_for_selector("#mask", state="visible")
        assert page.eval_on_selector("#picture", "i => [i.naturalWidth, i.width]") == [16, 256]
        page.click("#history li:first-child button.use")  # the same job, from the history
        page.wait_for_selector("#mask", state="visible")

        with page.expect_response(lambda r: r.url == stack.base + "/invert") as answered:
            page.click("#invert")
        assert answered.value.status == 202, answered.value.text()
        body = answered.value.request.post_data_json
        assert body == {"image": {"job": generated}, "steps": 8, "previews": True, "model": "tiny@1"}, body
        inversion = answered.value.json()["id"]
        page.wait_for_selector(f"body[data-ended='{inversion}']", timeout=60_000)
        with stack.client() as c:
            job = c.get(f"/jobs/{inversion}").json()
            assert job["status"] == "succeeded", job.get("error")
            latent = c.get(f"/jobs/{inversion}/latent").content
        tvs = page.eval_on_selector_all("#tvs li img", "imgs => imgs.map(i => i.alt)")
        assert tvs[0] == "the picture it starts from" and len(tvs) >= 4, tvs
        assert any("towards static" in alt for alt in tvs) and any("reconstruction" in alt for alt in tvs), tvs
        assert page.is_visible("#from-latent")
        assert page.get_attribute("#latent-download", "download") == f"diffusetv-{inversion}.safetensors"
        assert fetch_bytes(page, "#latent-download") == latent

        with page.expect_response(lambda r: r.url == stack.base + "/generate") as answered:
            page.click("#from-latent")
        assert answered.value.status == 202, answered.value.text()
        body = answered.value.request.post_data_json
        assert (body["latent"], body["steps"]) == ({"job": inversion}, 8) and "image" not in body, body
        page.wait_for_selector(f"body[data-done='{answered.value.json()['id']}']", timeout=60_000)
    finally:
        stack.stop_all()


def test_the_sampler_select_and_the_negative_prompt_box_reach_the_request(browser, redis_server, tmp_path):
    """The bundled emoji32 and emoji32-text served: the sampler select lists each model's samplers (GET /models), a
    sampler other than DDIM greys out eta and is sent with eta 0; the negative prompt box shows for the text model
    alone, and its text reaches the request, the job and the result's words."""
    from model_store import Store
    from model_store.store import BUNDLED

    stack = start_stack(
        Store(BUNDLED), redis_server, tmp_path, model="emoji32", DIFFUSETV_MODELS="emoji32,emoji32-text"
    )
    try:
        page = browser.new_page()
        page.goto(stack.base + "/")
        page.wait_for_selector("body[data-ready='1']")
        with stack.client() as c:
            offered = {m["ref"]: m["samplers"] for m in c.get("/models").json()["models"] if m["served"]}
        text_ref = next(ref for ref in offered if ref.startswith("emoji32-text@"))
        assert page.is_hidden("#negative-prompt")  # emoji32, the default, takes no prompt
        listed = page.eval_on_selector_all("#sampler option", "os => os.map(o => o.value)")
        assert listed == offered[page.input_value("#model")] and page.input_value("#sampler") == "ddim"
        page.select_option("#model", text_ref)
        assert page.is_visible("#negative-prompt") and page.is_visible("#prompt")
        assert page.eval_on_selector_all("#sampler option", "os => os.map(o => o.value)") == offered[text_ref]

        page.fill("#seed", "12")
        page.fill("#steps", "6")
        page.fill("#eta", "0.5")
        page.fill("#prompt", "heart")
        page.fill("#guidance", "3")
        page.fill("#negative-prompt", "  RED ")
        with page.expect_request(lambda r: r.url == stack.base + "/generate") as sent:
            page.click("#generate")
        body = sent.value.post_data_json
        assert body["negative_prompt"] == "RED" and body["prompt"] == "heart" and body["eta"] == 0.5, body
        assert "sampler" not in body  # DDIM, the default, is left out
        page.wait_for_selector("body[data-done]", timeout=60_000)
        with stack.client() as c:
            job = c.get(f"/jobs/{page.evaluate('document.body.dataset.done')}").json()
        assert (job["params"]["negative_prompt"], job["params"]["guidance"]) == ("red", 3.0)
        assert "“heart” away from “red” at guidance 3" in page.get_attribute("#result-image", "alt")
        assert "negative_prompt=red" in page.get_attribute("#same-again", "href")

        multistep = next(s for s in offered[text_ref] if s != "ddim")
        page.select_option("#sampler", multistep)
        assert page.is_disabled("#eta") and page.is_visible("#eta-hint")
        with page.expect_request(lambda r: r.url == stack.base + "/generate") as sent:
            page.click("#generate")
        body = sent.value.post_data_json  # what the API answers is the samplers' own tests' business
        assert (body["sampler"], body["eta"], body["negative_prompt"]) == (multistep, 0, "RED"), body
        page.select_option("#sampler", "ddim")
        assert page.is_enabled("#eta") and page.is_hidden("#eta-hint") and page.input_value("#eta") == "0.5"

        page.click("#tab-interpolate")
        page.select_option("#i-model", text_ref)
        assert page.is_visible("#i-negative-prompt")
        page.fill("#i-prompt", "heart")
        page.fill("#i-negative-prompt", "red")
        page.select_option("#i-sampler", multistep)
        page.route(stack.base + "/interpolate", lambda route: route.fulfill(status=422, json={"detail": "held"}))
        with page.expect_request(lambda r: r.url == stack.base + "/interpolate") as sent:
            page.click("#interpolate")
        body = sent.value.post_data_json
        assert (body["sampler"], body["negative_prompt"], body["prompt"]) == (multistep, "red", "heart"), body
    finally:
        stack.stop_all()
