"""Test helpers: tiny models and the CLI as a real process (importable as `helpers`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = {"image_size": 16, "widths": (8, 16), "block_depth": 1}


def make_tiny_net(seed: int = 0, image_size: int = 16):
    """A small U-Net whose zero-initialised head is randomised, so that it predicts non-trivial noise."""
    import torch

    from diffusion.unet import UNet, UNetConfig

    torch.manual_seed(seed)
    net = UNet(UNetConfig(image_size, widths=TINY["widths"], block_depth=TINY["block_depth"]))
    with torch.no_grad():
        net.head.weight.normal_(0, 0.3)
        net.head.bias.normal_(0, 0.1)
        for name, buf in net.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    return net.eval()


def generate_spec(manifest, seed: int, steps: int, eta: float, **fields):
    """The spec of a generation job (app.core.spec.GenerateSpec) for `manifest`'s model, as the API builds it."""
    from app.core.spec import GenerateSpec

    return GenerateSpec("0" * 32, manifest.ref, manifest.identity, seed=seed, steps=steps, eta=eta, **fields)


def run_cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `diffusetv ARGS` in a fresh interpreter, with this test's environment."""
    proc = subprocess.run(
        [sys.executable, "-m", "diffusetv.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"diffusetv {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def torch_build_check(python: str | Path, version: str, cuda: str) -> subprocess.CompletedProcess:
    """The Dockerfile worker stage's build-time torch check (`python -c "…" "$TORCH_VERSION" "$TORCH_CUDA"`),
    run with PYTHON: exit 0 when its torch is VERSION with CUDA CUDA ("none" for the CPU build)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    (code,) = re.findall(r'python -c "(import sys, torch;.+?)" "\$TORCH_VERSION" "\$TORCH_CUDA"', dockerfile)
    return subprocess.run([str(python), "-c", code, version, cuda], capture_output=True, text=True, timeout=300)


def require(condition: bool, reason: str) -> None:
    """Skip when a system dependency is missing; under CI=true, fail instead."""
    import pytest

    if condition:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"missing dependency in CI: {reason}")
    # Reported at the test's own location (as a skip marker is), so that the summary names the test.
    raise pytest.skip.Exception(reason, _use_item_location=True)


def require_prerequisite(name: str) -> None:
    """Skip (or, under CI=true, fail) when a system package of `diffusetv.prerequisites` is missing."""
    from diffusetv import prerequisites

    require(prerequisites.get(name).present(), prerequisites.skip_reason(name))


# The service's processes, as the end-to-end tests start them and as docker-compose.yml runs them.
API_COMMAND = ["diffusetv", "api"]
WORKER_COMMAND = ["diffusetv", "worker"]


def claim_as_worker(redis_url: str, ref: str = "tiny@1", engine: str = "cpu/fp32/in-process", ttl: int = 600) -> None:
    """The engine claim a live worker keeps renewed for each model it serves (worker.heartbeat), without a
    worker: API-only tests can then queue jobs for `ref`, which would otherwise be 503 (no live worker)."""
    import redis

    from app.core import keys

    redis.Redis.from_url(redis_url).set(keys.engine(ref), engine, ex=ttl)  # a TTL, as a heartbeat's claim has


def release_claim(redis_url: str, ref: str = "tiny@1") -> None:
    """Drop the stand-in claim of `claim_as_worker`, as its TTL would: a real worker then claims the model."""
    import redis

    from app.core import keys

    redis.Redis.from_url(redis_url).delete(keys.engine(ref))


def copy_version(store, name: str, version: int, **changes) -> Path:
    """name@version+1: the same weights file and manifest as name@version, with `changes` to its top-level fields."""
    import json

    source = store.root / name / str(version)
    target = store.root / name / str(version + 1)
    target.mkdir()
    data = json.loads((source / "model.json").read_text())
    data.update(version=version + 1, **changes)
    (target / "model.json").write_text(json.dumps(data))
    (target / data["weights"]["file"]).write_bytes((source / data["weights"]["file"]).read_bytes())
    return target


TESTS = Path(__file__).resolve().parent


def several_models(store) -> dict[str, str]:
    """Beside `tiny@1`: `toy@1` (the test-only kind toy-linear), `lonely@1` (a U-Net no worker is told to
    serve) and `odd@1` (a kind nobody registered). Returns the environment a stack serving tiny and toy needs."""
    from toy_kind_engine import save_toy

    from model_store.weights import save_model

    save_toy(store, "toy")
    save_model(store, "lonely", make_tiny_net(seed=1), "offset_cosine", [0.5] * 3, [0.25] * 3, {"steps": 0})
    save_model(store, "odd", make_tiny_net(seed=2), "offset_cosine", [0.5] * 3, [0.25] * 3, {}, kind="mystery-net")
    return {
        "DIFFUSETV_MODELS": "tiny,toy",
        "DIFFUSETV_KIND_MODULES": "toy_kind",
        "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p),
    }


TEXT_CAPTIONS = [
    "red heart", "blue heart", "green heart", "cat face", "dog face", "grinning face", "red apple",
    "green apple", "one o’clock", "grinning cat with smiling eyes", "face with tears of joy",
]  # fmt: skip


def make_tiny_text_net(seed: int = 0, tokens: int = 6):
    """A small prompt-conditioned U-Net over TEXT_CAPTIONS' words, its FiLM randomised so that prompts matter."""
    import torch

    from diffusion.unet import UNet, UNetConfig
    from model_store.vocabulary import Vocabulary

    vocabulary = Vocabulary.build(TEXT_CAPTIONS, tokens)
    torch.manual_seed(seed)
    config = UNetConfig(
        16, widths=TINY["widths"], block_depth=TINY["block_depth"],
        text_vocab=vocabulary.size, text_tokens=tokens, text_dims=8,
    )  # fmt: skip
    net = UNet(config)
    reference = make_tiny_net(seed)
    net.load_state_dict(reference.state_dict(), strict=False)  # the same U-Net as tiny's, plus the prompt layers
    with torch.no_grad():
        for name, param in net.named_parameters():
            if ".film." in name:
                param.normal_(0, 0.5)
    return net.eval(), vocabulary


def save_tiny_text(store, name: str = "words", default_guidance: float = 2.5):
    """`name@N`: a tiny `ddim-unet-text` model (TEXT_CAPTIONS) in `store`; returns its manifest."""
    from model_store.text import TEXT_FIELD, TextSpec
    from model_store.weights import TEXT_KIND, save_model

    net, vocabulary = make_tiny_text_net()
    text = TextSpec(vocabulary, tuple(TEXT_CAPTIONS), default_guidance)
    mean, std = [0.5, 0.45, 0.4], [0.25, 0.2, 0.3]
    return save_model(
        store, name, net, "offset_cosine", mean, std, {"steps": 0}, TEXT_KIND, {TEXT_FIELD: text.to_json()}
    )


def fill_redis(conn) -> None:
    """Make a test's Redis full: `noeviction`, and a `maxmemory` well below what it holds (so that no key expiring
    meanwhile makes room). Every write that could grow it is refused until `maxmemory` is set back to 0."""
    conn.config_set("maxmemory-policy", "noeviction")
    conn.config_set("maxmemory", conn.info("memory")["used_memory"] // 2)


def canceled_when_running(stack, client, job_id: str) -> list[tuple[str, str, dict]]:
    """The job's events, canceling it (from another connection) at its first progress event."""
    seen = []

    def cancel_when_running(event):
        if event[1] == "progress" and not seen:
            seen.append(event)
            threading.Thread(target=lambda: stack.client().delete(f"/jobs/{job_id}")).start()

    return read_events(client, job_id, on_event=cancel_when_running)


def read_events(client, job_id, headers=None, on_event=None, timeout=60):
    """All events of the stream until the server closes it: [(id, event, data)]."""
    out, current = [], {}
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers or {}, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if current:
                    out.append((current["id"], current["event"], json.loads(current["data"])))
                    if on_event:
                        on_event(out[-1])
                current = {}
                continue
            field, _, value = line.partition(": ")
            current[field] = value
    return out


# Stable Diffusion 1.5's FLOPs at 512x512 (2 per multiply-add), counted as docs/MODELS.md says ("A job's time").
SD15_FLOPS = {"unet_row": 803_273_441_280, "vae_decode": 2_514_518_933_504, "text_encoder": 13_298_503_680}


def save_sd_manifest(store, name: str = "sd", flops: dict | None = SD15_FLOPS, sizes=((512, 512), (768, 512))):
    """`name@1`: a `diffusers-sd` model.json as the import writes it, and its tokenizer.json, but no weights: what the
    API reads of such a model (its sizes, step bound, FLOPs and tokenizer), for tests that need no worker. Returns its
    manifest."""
    import hashlib
    import json
    import tempfile

    from sd_pipelines import write_tokenizer
    from transformers import CLIPTokenizer

    folder = store.root / name / "1"
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        CLIPTokenizer.from_pretrained(write_tokenizer(Path(tmp))).backend_tokenizer.save(str(folder / "tokenizer.json"))
    digest = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    manifest = {
        "format": "diffusetv-model/1",
        "kind": "diffusers-sd",
        "name": name,
        "version": 1,
        "config": {"in_channels": 4, "sample_size": 64},
        "schedule": "scaled_linear",
        "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
        "weights": {"file": "model.safetensors", "sha256": "0" * 64},
        "scheduler": {"num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "leading"},
        "tokenizer": {"file": "tokenizer.json", "sha256": digest, "model_max_length": 77, "pad_token": "<|endoftext|>"},
        "latent": {"channels": 4, "vae_scale_factor": 8, "scaling_factor": 0.18215, "shift_factor": None},
        "sizes": [list(size) for size in sizes],
        "default_guidance": 7.5,
        **({"flops": flops} if flops is not None else {}),
    }
    (folder / "model.json").write_text(json.dumps(manifest))
    return store.resolve(f"{name}@1")


def final_job(client, job_id: str, deadline_s: float = 300) -> dict:
    """The job once it has ended: long polls repeated until then, within one generous deadline (a busy machine may
    take longer than one long poll)."""
    end = time.monotonic() + deadline_s
    while True:
        job = client.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        if job["status"] not in ("queued", "running") or time.monotonic() > end:
            return job


def store_result(conn, kind: str, data: bytes, ttl: int = 600, store=None) -> str:
    """An object as a worker leaves it (app.core.objects): in `store` (default: the redis store on `conn`), registered
    live for `ttl` seconds. Returns its digest (what a job record names it by: sha256, strip_sha256, latent_sha256)."""
    import hashlib

    from app.core import objects
    from app.core.results.redis_store import RedisStore

    digest = hashlib.sha256(data).hexdigest()
    name = objects.name(kind, digest)
    objects.put(conn, store or RedisStore(conn), name, data, hold_s=ttl, window_s=1)
    assert objects.publish(conn, name, len(data), ttl)
    return digest


def registered(conn, kind: str) -> list[str]:
    """The names of the objects of `kind` (app.core.objects: PNG, LATENT, INPUT) that the registry knows."""
    from app.core import keys

    prefix = keys.object_entry("")
    return sorted(k.decode().removeprefix(prefix) for k in conn.scan_iter(match=keys.object_entry(f"{kind}/*")))


def expiry(conn, name: str) -> float | None:
    """When the registry may sweep an object (epoch s), or None for an object it does not know."""
    from app.core import keys

    return conn.zscore(keys.OBJECTS, name)


def stored_bytes(conn, name: str) -> bytes | None:
    """An object's bytes in the redis result store (the default)."""
    from app.core.results.redis_store import RedisStore

    return RedisStore(conn).get(name)


def cli_sample(store_root, out: Path, request: dict, model: str = "tiny") -> bytes:
    """`diffusetv sample` of a request's seed, steps and eta from the store at `store_root` (its models alone): the
    bytes the API must serve for it."""
    env = {"DIFFUSETV_MODEL_STORE": str(store_root), "DIFFUSETV_BUNDLED_MODELS": "0"}
    args = ["--seed", str(request["seed"]), "--steps", str(request["steps"]), "--eta", str(request["eta"])]
    run_cli("sample", "--model", model, *args, "--out", str(out), env=env)
    return out.read_bytes()


def wait_for(predicate, timeout: float, what: str):
    """The first truthy value of `predicate()`, polled every 20 ms; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
