"""The docs run as written: every `console` example of README.md and docs/API.md, against a live local stack."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from docs_examples import matches, parse, run
from helpers import REPO, require_prerequisite
from model_store.store import BUNDLED
from stack import Stack, free_port, running_stack, stack_env

DOCS = ("README.md", "docs/API.md")
LOCAL = "127.0.0.1:8000"  # where the docs' stack listens (`make run`)


def examples():
    return [e for doc in DOCS for e in parse((REPO / doc).read_text(), doc)]


def test_the_docs_mark_their_runnable_examples():
    found = examples()
    assert {e.doc for e in found} == set(DOCS)
    assert any("/generate" in e.command for e in found if e.doc == "docs/API.md")


# Sentences that were once true and are not now: where they were, and what replaced them.
STALE = {
    "docs/OPERATIONS.md": [
        "until the API implements the `scope` parameter",  # /readyz?scope=api is implemented
        "hold one of the API's worker threads while they wait",  # idle long polls wait on app/waker.py
        "Whatever the hardware, no batch runs longer than",  # a model that records its FLOPs gets more time
    ],
    "app/headers.py": ["Swagger UI from a CDN"],  # served from the package's own files
    "app/clients.py": ["A client cannot pick its own identity"],  # it can pick its source address
}
TRUE_NOW = {
    "docs/OPERATIONS.md": [
        "`/readyz?scope=api`, asks only whether Redis answers",
        "hold no thread and no pooled",
        "timeout = max(JOB_TIMEOUT, ceil(FLOPs / (MIN_GFLOPS × 10⁹)))",  # app.core.timeouts.job_timeout
    ],
    "app/clients.py": ["the whole loopback range (127.0.0.0/8 and ::1) is one client"],
}


def test_the_docs_say_what_the_code_does_now():
    def flat(doc: str) -> str:
        return " ".join((REPO / doc).read_text().split())

    stale = [(doc, s) for doc, sentences in STALE.items() for s in sentences if s in flat(doc)]
    missing = [(doc, s) for doc, sentences in TRUE_NOW.items() for s in sentences if s not in flat(doc)]
    assert not stale and not missing, f"stale: {stale}; missing: {missing}"


@pytest.fixture
def bundled_stack(redis_server, tmp_path):
    """A worker and an API serving every bundled model, as `make run` does."""
    from app.models import every_served
    from model_store import Store

    models = ",".join(every_served(Store(BUNDLED), "emoji32"))
    with running_stack(redis_server, BUNDLED, tmp_path, timeout=120, model="emoji32", DIFFUSETV_MODELS=models) as s:
        yield s


def shell_env(stack: Stack, workdir: Path) -> dict[str, str]:
    """The shell a reader has: PATH with this venv's `diffusetv`, a fresh folder as the working directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSETV_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


@pytest.mark.slow
def test_every_runnable_example_runs_as_written(bundled_stack, tmp_path):
    require_prerequisite("curl")
    found = examples()
    port = f"127.0.0.1:{bundled_stack.port}"

    def rewrite(text: str) -> str:  # the docs' port and this stack's, both ways
        return text.replace(LOCAL, port) if LOCAL in text else re.sub(re.escape(port), LOCAL, text)

    outcomes = run(found, tmp_path, shell_env(bundled_stack, tmp_path), rewrite)
    failed = [o.report() for o in outcomes if not o.ok]
    assert not failed, f"{len(failed)} of {len(found)} doc examples differ:\n\n" + "\n\n".join(failed)


def test_an_example_with_a_wrong_field_fails(redis_server, tmp_path):
    """The check has teeth: the README's line with `sede` for `seed` is refused, prints the 422, exits non-zero."""
    line = next(e for e in parse((REPO / "README.md").read_text(), "README.md") if "/generate" in e.command)
    broken = parse("```console\n$ " + line.command.replace('"seed"', '"sede"') + "\n```\n", "broken.md")
    assert matches([], "") and not matches(["a…c"], "abd")
    s = Stack(stack_env(redis_server.url, BUNDLED, model="emoji32"), free_port(), tmp_path)
    s.start_api()
    try:
        s.wait_healthy()
        [outcome] = run(broken, tmp_path, shell_env(s, tmp_path), lambda t: t.replace(LOCAL, f"127.0.0.1:{s.port}"))
    finally:
        s.stop_all()
    assert not outcome.ok and outcome.status == 22
    assert not (tmp_path / "seed42.png").exists()
