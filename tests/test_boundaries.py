"""The import rules of DESIGN.md: `app` never imports torch or `diffusion`; `diffusion` imports nothing of ours."""

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = {"app", "worker", "diffusion", "model_store", "diffusetv", "bench"}


def imported_top_levels(package: str) -> dict[str, set[str]]:
    found = {}
    for file in (REPO / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(file.relative_to(REPO))] = names
    return found


def test_diffusion_imports_nothing_of_ours():
    for file, names in imported_top_levels("diffusion").items():
        assert not (names & (OURS - {"diffusion"})), f"{file} imports {names & OURS}"


def test_app_never_imports_torch_or_diffusion_or_worker():
    for file, names in imported_top_levels("app").items():
        assert not (names & {"torch", "diffusion", "worker", "safetensors"}), f"{file} imports {names}"


def test_app_core_imports_neither_fastapi_nor_torch():
    for file, names in imported_top_levels("app/core").items():
        assert not (names & {"fastapi", "starlette", "torch"}), f"{file} imports {names}"


def test_importing_the_api_loads_no_torch():
    code = (
        "import sys, app.main, app.core.png, model_store; "
        "bad = [m for m in ('torch', 'diffusion', 'worker', 'safetensors') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_app_core_loads_no_fastapi():
    code = (
        "import sys, app.core.jobs, app.core.keys, app.core.settings, app.core.png; assert 'fastapi' not in sys.modules"
    )
    code = code.replace("app.core.png; ", "app.core.png, app.core.redis; ")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_api_command_loads_no_torch():
    code = (
        "import sys; from diffusetv.cli import _parser; from diffusetv.errors import user_errors; "
        "import diffusetv.commands, app.main\n"
        "with user_errors(): _parser().parse_args(['api'])\n"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_api_reads_kind_modules_without_torch():
    """The registry and a kind's registering module are torch-free; only a worker imports a kind's engine."""
    code = (
        "import sys, app.main; from model_store import kinds; "
        "assert kinds.get('toy-linear').served and kinds.get('ddim-unet').served; "
        "bad = [m for m in ('torch', 'diffusion', 'worker', 'toy_kind_engine') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "DIFFUSETV_KIND_MODULES": "toy_kind"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)
