"""The image lock files (deploy/locks/): complete, hashed, within pyproject.toml's bounds, and installable.

The slow tests build each image's environment outside Docker, as its Dockerfile stage does: a fresh venv,
`pip install --require-hashes --no-deps -r LOCK`, the project with `--no-deps --no-build-isolation`, then
`pip check` and an import of the image's entry point.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from helpers import REPO, torch_build_check

LOCKS = REPO / "deploy" / "locks"
# Each image's extras (deploy/locks/generate.sh): [s3] in all, as the API and the workers both read and write results.
IMAGES = {"api": ["s3"], "worker-cpu": ["worker", "s3"], "worker-cuda": ["worker", "s3"]}
# The platform the locks are resolved for (deploy/locks/generate.sh): the images' Python on Linux x86_64.
IMAGE_PLATFORM = {
    **default_environment(),
    "python_version": "3.11",
    "python_full_version": "3.11.14",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
}


def lock_pins(name: str) -> dict[str, tuple[Version, list[str], str]]:
    """Package -> (version, its sha256 hashes, its marker) of one lock file."""
    text = (LOCKS / f"{name}.txt").read_text()
    entries = re.split(
        r"\n(?=[A-Za-z0-9])", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    pins = {}
    for entry in filter(str.strip, entries):
        head = entry.split("\\")[0].strip()
        requirement = Requirement(head)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{name}: {head} is not an exact pin"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", entry)
        pins[canonicalize_name(requirement.name)] = (Version(spec.version), hashes, str(requirement.marker or ""))
    return pins


def project_requirements(extras: list[str]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in extras:
        listed += project["optional-dependencies"][extra]
    return [Requirement(r) for r in listed]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_lock_pins_and_hashes_everything_within_the_project_bounds(image):
    pins = lock_pins(image)
    assert pins, f"{image}.txt is empty"
    for package, (_, hashes, _) in pins.items():
        assert hashes, f"{image}.txt: {package} has no hash (pip --require-hashes would refuse it)"
    for requirement in project_requirements(IMAGES[image]):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{image}.txt lacks {requirement}"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{image}.txt: {name}=={version} ∉ {requirement}"
        )
    assert "setuptools" in pins, "the build backend is locked too (the project installs with --no-build-isolation)"


def test_the_api_lock_has_no_torch():
    pins = lock_pins("api")
    assert not {"torch", "nvidia-cuda-runtime"} & pins.keys(), sorted(pins)
    # numpy and Pillow are the API's since it decodes pictures (app/core/pictures.py), safetensors its numpy half.
    assert {"numpy", "pillow", "safetensors"} <= pins.keys(), sorted(pins)
    # ...and app/ never imports torch: the API image is checked at build time by the same import.
    for path in (REPO / "app").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(torch|safetensors\.torch)\b", text, flags=re.MULTILINE), path


def test_every_image_can_reach_an_s3_result_store():
    """DIFFUSETV_RESULTS=s3://... needs boto3 in the API and in the workers; 1.36 brought the checksum setting
    (request_checksum_calculation) that S3-compatible servers may need, so the bound excludes anything older."""
    (boto3,) = [r for r in project_requirements(["s3"]) if r.name == "boto3"]
    assert not boto3.specifier.contains("1.35.99") and boto3.specifier.contains("1.36.0"), boto3
    for image in IMAGES:
        pins = lock_pins(image)
        assert {"boto3", "botocore", "s3transfer"} <= pins.keys(), image
        assert pins["boto3"][0] >= Version("1.36"), image
    dev = [r.name for r in project_requirements(["dev"])]
    assert "moto" in dev, "the tests start moto's standalone S3 server"
    makefile = (REPO / "Makefile").read_text()
    (install,) = re.findall(r"pip install -e '\.\[([a-z0-9,]+)\]'", makefile)
    assert {"worker", "dev", "embedded", "s3"} <= set(install.split(",")), install


def test_rq_is_bounded_to_the_release_whose_api_the_worker_calls():
    (rq,) = [r for r in project_requirements([]) if r.name == "rq"]
    assert not rq.specifier.contains("2.12.0"), "worker/main.py calls handle_job_failure(..., execution): rq 3"
    assert rq.specifier.contains("3.0.0")
    assert "execution" in (REPO / "worker" / "main.py").read_text()


def test_the_two_worker_locks_name_their_torch_build():
    makefile = (REPO / "Makefile").read_text()
    torch_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)", makefile, flags=re.MULTILINE).group(1)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(torch_spec)}$", dockerfile, flags=re.MULTILINE)
    cpu, cuda = lock_pins("worker-cpu"), lock_pins("worker-cuda")
    assert str(cpu["torch"][0]) == f"{torch_spec}+cpu"
    assert not [p for p in cpu if p.startswith(("nvidia-", "cuda-"))], "the CPU image carries no CUDA libraries"
    assert str(cuda["torch"][0]) == torch_spec
    runtime = cuda["nvidia-cuda-runtime"][0]
    # The CUDA version the GPU build is checked against (compose passes it as TORCH_CUDA) is the runtime's.
    compose = (REPO / "docker-compose.yml").read_text()
    assert re.search(rf"TORCH_CUDA: \"?{runtime.major}\.{runtime.minor}\"?", compose), runtime
    assert "COPY deploy/locks/api.txt " in dockerfile
    assert "COPY deploy/locks/worker-${TORCH_VARIANT}.txt " in dockerfile


def test_the_locks_apply_to_the_image_platform():
    """On the images' platform (Python 3.11, Linux x86_64) no marker leaves out what the image needs."""
    from packaging.markers import Marker

    for image in IMAGES:
        pins = lock_pins(image)
        applies = {p for p, (_, _, marker) in pins.items() if not marker or Marker(marker).evaluate(IMAGE_PLATFORM)}
        assert {"setuptools", "fastapi", "rq", "redis", "uvicorn"} <= applies, image
        if image.startswith("worker"):
            assert "torch" in applies
        if image == "worker-cuda":
            assert {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13"} <= applies


# ------------------------------------------------------------------------- building the environments


def image_environment(tmp_path: Path, lock: str, *, index_only: bool = False) -> Path:
    """A fresh venv with LOCK and the project installed the way the Dockerfile does; returns its python.

    index_only: install from the package index alone, as the CUDA image does (no local wheel folders, and no
    pip cache, so that the CUDA wheels are not kept twice).
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    if index_only:
        env |= {"PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1"}
    install = subprocess.run(
        [*pip, "install", "--require-hashes", "--no-deps", "--only-binary", ":all:", "-r", str(LOCKS / lock)],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    if install.returncode != 0 and ("No matching distribution" in install.stderr or "Could not find" in install.stderr):
        pytest.skip(f"{lock}: a locked file is not reachable from here:\n{install.stderr[-2000:]}")
    assert install.returncode == 0, install.stderr[-4000:]
    # What `COPY . /src` gets (.dockerignore keeps tests, docs and local state out).
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "tests",
            "docs",
            "deploy",
            "runs",
            "data",
            "build",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
        ),
    )
    project = subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", "--no-cache-dir", str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert project.returncode == 0, project.stderr[-4000:]
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, f"pip check in the {lock} environment:\n{check.stdout}{check.stderr}"
    return python


# A worker image's entry point and a bundled model, loaded on the CPU.
LOAD_A_MODEL = (
    "import torch, worker.main, app.core.png\n"
    "from worker.engine import load_engine\n"
    "torch.set_num_threads(1)\n"
    "print(torch.__version__, torch.version.cuda, load_engine('emoji32', device='cpu').manifest.ref)"
)


def run_in(python: Path, code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("DIFFUSETV_")}
    return subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**env, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_the_api_lock_builds_an_environment_that_serves(tmp_path):
    python = image_environment(tmp_path, "api.txt")
    proc = run_in(
        python,
        "import sys, app.main, diffusetv.cli\n"
        "app.main.create_app\n"
        "import app.core.pictures\n"
        "print(sorted({'torch', 'diffusion', 'worker'} & set(sys.modules)))\n"
        "import importlib.util as u; print([m for m in ('torch', 'numpy', 'PIL') if u.find_spec(m)])",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    # no torch imported or installed; numpy and Pillow installed (the API decodes pictures)
    assert proc.stdout.split("\n")[:2] == ["[]", "['numpy', 'PIL']"], proc.stdout
    help_ = subprocess.run(
        [str(python.parent / "diffusetv"), "api", "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_.returncode == 0 and "--port" in help_.stdout, help_.stderr


@pytest.mark.slow
def test_the_cpu_worker_lock_builds_an_environment_that_loads_a_model(tmp_path):
    python = image_environment(tmp_path, "worker-cpu.txt")
    proc = run_in(python, LOAD_A_MODEL, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split() == ["2.13.0+cpu", "None", "emoji32@1"], proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_cuda_worker_lock_builds_an_environment_that_loads_a_model(tmp_path):
    """The GPU image's environment (about 3 GB of CUDA wheels): torch's CUDA 13.0 build, the build check of the
    Dockerfile's worker stage, and a model loaded on the CPU (no GPU is needed to import CUDA torch)."""
    python = image_environment(tmp_path, "worker-cuda.txt", index_only=True)
    checked = torch_build_check(python, "2.13.0", "13.0")
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert checked.stdout.split() == ["torch", "2.13.0+cu130", "cuda", "13.0"], checked.stdout
    refused = torch_build_check(python, "2.13.0", "none")
    assert refused.returncode == 1 and "is not the build asked for" in refused.stderr, refused.stderr[-2000:]
    proc = run_in(python, LOAD_A_MODEL, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split() == ["2.13.0+cu130", "13.0", "emoji32@1"], proc.stdout
    shutil.rmtree(tmp_path / "venv")  # 3 GB: not kept among pytest's retained temporary folders
