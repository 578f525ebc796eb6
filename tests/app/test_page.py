"""The page's headers, in process: no framing by other sites, and a CSP that fits the page; /docs keeps its own."""

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


def test_the_api_docs_keep_their_own_policy(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    assert "Content-Security-Policy" not in r.headers  # its scripts come from a CDN: the page's CSP would block them
    assert "X-Frame-Options" not in client.get("/openapi.json").headers


def test_the_page_starts_no_job_from_its_address_alone():
    from app.routes.page import STATIC

    script = (STATIC / "app.js").read_text()
    run_line = next(line for line in script.splitlines() if 'query.get("run")' in line)
    assert "generate()" not in run_line, run_line  # the browser test presses the button for real
