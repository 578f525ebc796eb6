"""The Kubernetes manifests (deploy/k8s): valid against the Kubernetes schemas (`kubernetes-validate --strict`),
and, for what no schema knows (KEDA's kinds, and what the service needs), checked field by field here.

deploy/k8s/common holds settings, Redis and the API; deploy/k8s/cpu and deploy/k8s/gpu each add their workers
and the autoscaler (one or the other: one engine per model).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, require

try:
    import yaml
except ImportError:  # pragma: no cover - pyyaml comes with the dev extra
    yaml = None

K8S = REPO / "deploy" / "k8s"
VARIANTS = ("cpu", "gpu")
PREFIX = "DIFFUSETV_"
SECRET = "diffusetv-secrets"
S3 = K8S / "s3"  # the result store's overlay, applied after cpu/ or gpu/


def documents(path: Path) -> list[dict]:
    require(yaml is not None, "pyyaml is not installed: pip install -e '.[dev]'")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def variant(name: str) -> dict[tuple[str, str], dict]:
    """(kind, name) -> resource of what `kubectl apply -k deploy/k8s/NAME` applies."""
    resources = {}
    for folder in (K8S / "common", K8S / name):
        for path in sorted(folder.glob("*.yaml")):
            if path.name != "kustomization.yaml":
                for doc in documents(path):
                    resources[(doc["kind"], doc["metadata"]["name"])] = doc
    return resources


def containers(resources: dict) -> dict[str, dict]:
    found = {}
    for (kind, name), doc in resources.items():
        if kind in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                found[name] = container
    return found


def kubernetes_validate() -> str | None:
    folders = [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    return shutil.which("kubernetes-validate", path=os.pathsep.join(folders))


def test_the_manifests_pass_kubernetes_validate_strict():
    binary = kubernetes_validate()
    require(binary is not None, "kubernetes-validate is not installed: pip install -e '.[dev]'")
    files = manifests()
    assert len(files) >= 7
    proc = subprocess.run([binary, "--strict", *map(str, files)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = proc.stdout.count(" passed for resource ")
    schemaless = [line for line in proc.stdout.splitlines() if "Couldn't find schema" in line]
    # Only KEDA's kinds have no schema there: test_the_autoscaler_targets_the_model_queue checks them.
    assert all(("ScaledObject" in line or "TriggerAuthentication" in line) for line in schemaless), schemaless
    kinds = sum(len(documents(p)) for p in files)
    assert passed + len(schemaless) == kinds, proc.stdout


def test_each_kustomization_lists_its_folder():
    for folder in (K8S / "common", *(K8S / v for v in VARIANTS)):
        listed = documents(folder / "kustomization.yaml")[0]["resources"]
        files = {p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert files <= set(listed), f"{folder.name}: {sorted(files - set(listed))} not applied"
        if folder.name in VARIANTS:
            assert "../common" in listed


@pytest.mark.parametrize("name", VARIANTS)
def test_the_autoscaler_targets_the_model_queue(name):
    from app.core import keys
    from app.core.settings import Settings
    from model_store import Store

    resources = variant(name)
    settings = resources[("ConfigMap", "diffusetv-settings")]["data"]
    (scaled,) = [d for (k, _), d in resources.items() if k == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]["name"]
    deployment = resources[("Deployment", target)]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["command"] == ["diffusetv", "worker"]
    served = Settings(model=settings[f"{PREFIX}MODEL"], models=settings[f"{PREFIX}MODELS"] or None).served_models
    assert spec["minReplicaCount"] >= 1, "with no worker the API refuses the model, so its queue never grows"
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    store = Store()
    wanted = {f"rq:queue:{keys.queue_name(store.resolve(ref).ref)}" for ref in served}
    triggers = spec["triggers"]
    assert {t["metadata"]["listName"] for t in triggers} == wanted, "one trigger per served model's RQ queue"
    url = settings[f"{PREFIX}REDIS_URL"]
    for trigger in triggers:
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert f"redis://{meta['username']}@{meta['address']}/{meta['databaseIndex']}" == url
        assert int(meta["listLength"]) >= 1
        auth = resources[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
        (ref,) = auth["spec"]["secretTargetRef"]
        assert (ref["parameter"], ref["name"], ref["key"]) == ("password", "diffusetv-secrets", "redis_password")
    address = triggers[0]["metadata"]["address"].split(":")
    service = resources[("Service", address[0])]
    assert [p["port"] for p in service["spec"]["ports"]] == [int(address[1])]


@pytest.mark.parametrize("name", VARIANTS)
def test_probes_grace_and_gpus(name):
    from worker.health import MARGIN_S

    resources = variant(name)
    settings = resources[("ConfigMap", "diffusetv-settings")]["data"]
    by_name = containers(resources)
    api = by_name["diffusetv-api"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz?scope=api", "API pods: Redis only"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (worker_name,) = [n for n in by_name if n.startswith("diffusetv-worker")]
    worker = by_name[worker_name]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker[probe]["exec"]["command"] == ["diffusetv", "worker", "--check"], probe
    pod = resources[("Deployment", worker_name)]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= int(settings[f"{PREFIX}JOB_TIMEOUT"]) + MARGIN_S
    env = {e["name"]: e.get("value") for e in worker.get("env", [])}
    limits = worker["resources"]["limits"]
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == 1 and worker["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert env[f"{PREFIX}DEVICE"] == "cuda" and int(env[f"{PREFIX}MAX_BATCH_SIZE"]) >= 128
    else:
        assert "nvidia.com/gpu" not in limits and env[f"{PREFIX}DEVICE"] == "cpu"
    assert env[f"{PREFIX}PRECISION"] in ("fp32", "bf16")


def test_every_container_is_hardened_and_limited():
    for name in VARIANTS:
        resources = variant(name)
        for (kind, _), doc in resources.items():
            if kind not in ("Deployment", "StatefulSet"):
                continue
            pod = doc["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            for container in pod["containers"]:
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, container["name"]
                assert security["allowPrivilegeEscalation"] is False
                assert security["capabilities"]["drop"] == ["ALL"]
                assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
                assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, f"{container['name']}: /tmp"
                assert "@sha256:" in container["image"] or container["image"].startswith("diffusetv-")


def test_settings_match_compose_and_secrets_are_files():
    from test_deploy import SHARED

    settings = documents(K8S / "common" / "settings.yaml")[0]["data"]
    assert {f"{PREFIX}{s}" for s in SHARED} <= settings.keys()
    assert settings[f"{PREFIX}REDIS_URL"].startswith("redis://diffusetv@"), "the ACL user, no password"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["x-settings"]
    for key in ("RESULT_TTL", "JOB_TIMEOUT", "MIN_GFLOPS", "MAX_RETRIES", "HEARTBEAT_S"):
        assert compose[PREFIX + key].split(":-")[1].rstrip("}") == settings[PREFIX + key], key
    for name in VARIANTS:
        for container in containers(variant(name)).values():
            for env in container.get("env", []):
                assert "valueFrom" not in env and not env["name"].endswith(("PASSWORD", "API_KEYS")), env


def test_the_redis_start_script_is_the_compose_one():
    (config_map,) = [d for d in documents(K8S / "common" / "redis.yaml") if d["kind"] == "ConfigMap"]
    script = (REPO / "deploy" / "compose" / "redis-start.sh").read_text()
    assert config_map["data"]["redis-start.sh"] == script


def test_every_scanner_skip_says_why():
    """`make scan` (checkov) passes with skips only where a reason is written beside them."""
    import re

    skips = []
    for path in [*manifests(), REPO / "Dockerfile"]:
        for line in path.read_text().splitlines():
            if "checkov.io/skip" in line or "checkov:skip" in line:
                skips.append(line)
                assert re.search(r"CKV2?_[A-Z0-9]+_\d+\s*[=:]\s*\S.{15,}", line), f"{path.name}: no reason: {line}"
    assert skips, "the scan's skips live in the files"
    makefile = (REPO / "Makefile").read_text()
    assert "--framework dockerfile -f Dockerfile" in makefile and "--framework kubernetes -d deploy/k8s" in makefile
    assert "make scan" in (REPO / ".ci" / "run").read_text()


def test_the_notifier_runs_the_api_image_with_the_webhook_secrets_as_files():
    for name in VARIANTS:
        resources = variant(name)
        by_name = containers(resources)
        api, notifier = by_name["diffusetv-api"], by_name["diffusetv-notifier"]
        assert notifier["command"] == ["diffusetv", "notifier"]
        assert notifier["image"] == api["image"], "the API image: no torch"
        assert not notifier.get("ports"), "it takes no connections"
        api_env, env = ({e["name"]: e["value"] for e in c["env"]} for c in (api, notifier))
        for setting in ("WEBHOOK_SECRET_FILE", "WEBHOOK_SECRETS_FILE"):
            assert env[PREFIX + setting] == api_env[PREFIX + setting], setting
            assert env[PREFIX + setting].startswith("/run/secrets/diffusetv/")
        pod = resources[("Deployment", "diffusetv-notifier")]["spec"]["template"]["spec"]
        (secret,) = [v["secret"] for v in pod["volumes"] if "secret" in v]
        assert secret["secretName"] == "diffusetv-secrets"
        assert {i["key"] for i in secret["items"]} == {"redis_password", "webhook_secret", "webhook_secrets"}
        api_pod = resources[("Deployment", "diffusetv-api")]["spec"]["template"]["spec"]
        (api_secret,) = [v["secret"] for v in api_pod["volumes"] if v.get("secret", {}).get("secretName") == SECRET]
        assert {"webhook_secret", "webhook_secrets"} <= {i["key"] for i in api_secret["items"]}
        settings = resources[("ConfigMap", "diffusetv-settings")]["data"]
        assert settings[f"{PREFIX}WEBHOOK_ALLOW_NETS"] == "", "public receivers only, by default"


def test_the_notifiers_egress_is_dns_redis_and_public_receivers_only():
    import ipaddress

    from app.core.addresses import refusal

    resources = variant("cpu")
    policy = resources[("NetworkPolicy", "diffusetv-notifier")]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "diffusetv-notifier"}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and not policy.get("ingress"), "no connections in"
    dns, redis, receivers = policy["egress"]
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert redis["to"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "diffusetv-redis"}
    redis_port = resources[("Service", "diffusetv-redis")]["spec"]["ports"][0]["port"]
    assert [(p["port"], p["protocol"]) for p in redis["ports"]] == [(redis_port, "TCP")]
    assert {(p["port"], p["protocol"]) for p in receivers["ports"]} == {(443, "TCP"), (80, "TCP")}
    blocks = [b["ipBlock"] for b in receivers["to"]]
    assert {b["cidr"] for b in blocks} == {"0.0.0.0/0", "::/0"}

    def reachable(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(
            ip in ipaddress.ip_network(b["cidr"]) and not any(ip in ipaddress.ip_network(e) for e in b["except"])
            for b in blocks
        )

    assert "169.254.169.254/32" in blocks[0]["except"]
    for address in ("10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "127.0.0.1", "100.100.100.200"):
        assert refusal(ipaddress.ip_address(address), []) is not None  # the notifier refuses it, and so does this
        assert not reachable(address), address
    for address in ("fd00:ec2::254", "fe80::1", "::1"):
        assert refusal(ipaddress.ip_address(address), []) is not None and not reachable(address), address
    for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"):
        assert refusal(ipaddress.ip_address(address), []) is None and reachable(address), address


def test_the_s3_overlay_is_optional_for_the_api_and_the_workers():
    """deploy/k8s/s3 adds one ConfigMap; the API and the workers read it (and the Secret diffusetv-s3) when it is
    there and start without it, keeping results in Redis."""
    listed = documents(S3 / "kustomization.yaml")[0]["resources"]
    assert listed == ["results.yaml"] and "../common" not in listed, "applied beside cpu/ or gpu/, not instead"
    (results,) = documents(S3 / "results.yaml")
    assert (results["kind"], results["metadata"]["name"]) == ("ConfigMap", "diffusetv-results")
    assert results["metadata"]["namespace"] == "diffusetv"
    data = results["data"]
    key_file = Path(data[f"{PREFIX}S3_SECRET_ACCESS_KEY_FILE"])
    for name in VARIANTS:
        resources = variant(name)
        assert f"{PREFIX}RESULTS" not in resources[("ConfigMap", "diffusetv-settings")]["data"], "redis by default"
        for deployment, container in containers(resources).items():
            refs = [e["configMapRef"] for e in container.get("envFrom", [])]
            if deployment != "diffusetv-api" and not deployment.startswith("diffusetv-worker"):
                assert "diffusetv-results" not in {r["name"] for r in refs}, f"{deployment} reads no results"
                continue
            pod = resources[("Deployment", deployment)]["spec"]["template"]["spec"]
            # Last, so that its values win over the shared settings; optional, so that the pod starts without it.
            assert refs[-1] == {"name": "diffusetv-results", "optional": True}, deployment
            volumes = {v["name"]: v for v in pod["volumes"]}
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(key_file.parent)]
            assert mount["readOnly"] is True
            assert volumes[mount["name"]]["secret"] == {"secretName": "diffusetv-s3", "optional": True}, deployment
            secrets = [v["secret"] for v in volumes.values() if v.get("secret", {}).get("secretName") == SECRET]
            assert all("s3" not in i["key"] for s in secrets for i in s["items"]), "not in diffusetv-secrets"


def test_the_s3_overlay_names_valid_settings(tmp_path):
    from app.core.results import location
    from app.core.settings import Settings

    (results,) = documents(S3 / "results.yaml")
    data = dict(results["data"])
    key = tmp_path / "secret_access_key"
    key.write_text("0123456789abcdef0123\n")
    data[f"{PREFIX}S3_SECRET_ACCESS_KEY_FILE"] = str(key)
    fields = {k.removeprefix(PREFIX).lower(): v for k, v in data.items()}
    assert set(fields) <= Settings.model_fields.keys(), sorted(set(fields) - Settings.model_fields.keys())
    settings = Settings(**fields)
    assert location(settings.results)[0] == "s3"
    assert settings.s3_secret_access_key == "0123456789abcdef0123"
