"""The security headers, in process: no framing of the page or of /docs by other sites, a CSP that fits the page,
and `nosniff` on JSON responses."""

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app


@pytest.fixture
def client(tiny_store, redis_server):
    settings = Settings(redis_url=redis_server.url, model_store=tiny_store.root, model="tiny")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/style.css"])
def test_the_page_and_its_files_cannot_be_framed_and_carry_a_csp(client, path):
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["X-Frame-Options"] == "DENY"
    csp = {d.split()[0]: d.split()[1:] for d in r.headers["Content-Security-Policy"].split("; ")}
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"]
    assert {"data:", "blob:"} <= set(csp["img-src"])  # previews are data: URLs, results blob: URLs
    assert csp["connect-src"][0] == "'self'" and "*" not in csp["connect-src"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_the_api_docs_cannot_be_framed(client):
    r = client.get("/docs")  # its Authorize dialog holds the bearer key
    assert r.status_code == 200 and "swagger" in r.text.lower()
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Content-Security-Policy"] == "frame-ancestors 'none'"  # its inline start-up script still runs
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "X-Frame-Options" not in client.get("/openapi.json").headers


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/healthz", None, 200),
        ("GET", "/openapi.json", None, 200),
        ("GET", "/models", None, 200),
        ("GET", "/jobs/" + "0" * 32, None, 404),
        ("POST", "/generate", b'{"seed": "1"}', 422),
        ("POST", "/generate", b"x" * (8 * 2**20 + 1), 413),
        ("DELETE", "/jobs/" + "0" * 32, b"x" * 70_000, 413),
    ],
)
def test_json_responses_say_nosniff(client, method, path, body, status):
    r = client.request(method, path, content=body, headers={"Content-Type": "application/json"} if body else {})
    assert r.status_code == status and r.headers["Content-Type"].startswith("application/json"), r.text
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_a_body_refused_for_its_content_type_says_nosniff(client):
    r = client.post("/generate", content=b'{"seed": 1}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.headers["X-Content-Type-Options"] == "nosniff"


def test_the_page_starts_no_job_from_its_address_alone():
    from app.routes.page import STATIC

    script = (STATIC / "app.js").read_text()
    run_line = next(line for line in script.splitlines() if 'query.get("run")' in line)
    assert "generate()" not in run_line, run_line  # the browser test presses the button for real
